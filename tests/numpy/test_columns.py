"""The compiled columns (im2col) and their sum back onto the map (col2im), against NumPy's
strided windows, at every stride, dilation and padding, 1-D and 2-D."""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from nnspec.backends.numpy.kernels import columns, tiled
from nnspec.backends.numpy.kernels.windows import output_size


def reference_columns(x, kernel, stride, padding, dilation):
    """(C * K, N * P) by padding the map and one strided view per kernel offset."""
    widths = ((0, 0), (0, 0), *padding)
    padded = np.pad(x.astype(np.float64), widths)
    out = output_size(padded.shape[2:], kernel, stride, dilation)
    rows = []
    for channel in range(x.shape[1]):
        for offset in np.ndindex(*kernel):
            index = tuple(slice(k * d, k * d + (o - 1) * s + 1, s)
                          for k, d, o, s in zip(offset, dilation, out, stride))
            rows.append(padded[(slice(None), channel, *index)].reshape(-1))
    return np.array(rows), out


@st.composite
def sweeps(draw):
    nd = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(nd))
    smallest = [max(1, (k - 1) * d + 1 - lo - hi)
                for k, d, (lo, hi) in zip(kernel, dilation, padding)]
    spatial = tuple(draw(st.integers(low, low + 10)) for low in smallest)
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), *spatial)
    return shape, kernel, stride, padding, dilation


@settings(max_examples=150, deadline=None)
@given(sweeps(), st.integers(0, 2**31))
def test_the_columns_are_the_strided_windows_and_their_sum_is_the_adjoint(sweep, seed):
    shape, kernel, stride, padding, dilation = sweep
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    expected, out = reference_columns(x, kernel, stride, padding, dilation)
    found = columns.gather(x, kernel, stride, padding, dilation, out)
    np.testing.assert_array_equal(found, expected.astype(np.float32))
    # col2im is im2col's transpose: <gather(x), c> == <x, scatter(c)> for every c
    c = rng.standard_normal(found.shape).astype(np.float32)
    summed = columns.scatter(c, shape, kernel, stride, padding, dilation, out)
    np.testing.assert_allclose((expected * c).sum(), (x.astype(np.float64) * summed).sum(),
                               rtol=1e-5, atol=1e-4)
    # and each map element is the sum of its own entries: scatter of the ones counts them
    counts = columns.scatter(np.ones_like(found), shape, kernel, stride, padding, dilation, out)
    positions = np.arange(math.prod(shape), dtype=np.float64).reshape(shape) + 1
    ids, _ = reference_columns(positions, kernel, stride, padding, dilation)
    expected_counts = np.bincount(ids.reshape(-1).astype(np.int64),
                                  minlength=positions.size + 1)[1:].reshape(shape)
    np.testing.assert_array_equal(counts, expected_counts)


@pytest.mark.parametrize("shape, kernel, padding, dilation", [
    ((2, 3, 4, 4), (3, 3), ((1, 1), (1, 1)), (1, 1)),   # a 4x4 map, rows of four
    ((1, 2, 5, 7), (5, 5), ((2, 2), (2, 2)), (1, 1)),   # offsets two rows and columns out
    ((2, 2, 6, 6), (3, 3), ((2, 2), (2, 2)), (2, 2)),   # dilated
    ((1, 3, 5, 6), (3, 3), ((0, 2), (2, 0)), (1, 1)),   # padding on one side
    ((1, 2, 2, 2), (5, 5), ((2, 2), (2, 2)), (1, 1)),   # offsets wholly outside the map
    ((3, 2, 9), (3,), ((1, 1),), (1,)),                 # 1-D
])
def test_same_size_columns_copy_the_rows_inside_as_one_run(shape, kernel, padding, dilation):
    """At unit strides with outputs as large as the map, an offset's rows inside the map are
    one run (``_rows_in_one_run``), its cells past the map's sides zeroed after: the first
    and last cells of the run would read past the map's ends."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    stride = (1,) * len(kernel)
    expected, out = reference_columns(x, kernel, stride, padding, dilation)
    assert out == shape[2:]
    found = columns.gather(x, kernel, stride, padding, dilation, out)
    np.testing.assert_array_equal(found, expected.astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(sweeps(), st.integers(0, 2**31), st.sampled_from([48, 192]))
def test_columns_made_into_panels_are_the_transposed_columns_panels(sweep, seed, width):
    """``gather_panels`` writes (N * P, C * K), the columns transposed, as ``tiled.panels``
    lays it out, the last panel's lanes past C * K zero (the tiles read them), from the
    same layouts as ``gather``: every stride, dilation and padding, 1-D and 2-D."""
    shape, kernel, stride, padding, dilation = sweep
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    expected, out = reference_columns(x, kernel, stride, padding, dilation)
    found = columns.gather_panels(x, kernel, stride, padding, dilation, out, width)
    np.testing.assert_array_equal(
        found, tiled.panels(np.ascontiguousarray(expected.T).astype(np.float32), width))


def test_large_maps_made_into_panels_on_both_cores():
    """A map large enough for both cores, its rows (C * K = 603) ending within a panel."""
    x = np.random.default_rng(2).standard_normal((8, 67, 9, 11)).astype(np.float32)
    sweep = ((3, 3), (2, 1), ((1, 1), (1, 1)), (1, 2), (5, 9))
    expected, _ = reference_columns(x, *sweep[:4])
    found = columns.gather_panels(x, *sweep, 192)
    assert expected.size >= 1 << 15 and expected.shape[0] % 192
    np.testing.assert_array_equal(
        found, tiled.panels(np.ascontiguousarray(expected.T).astype(np.float32), 192))


def test_large_maps_split_between_the_cores_agree_with_one_part():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 67, 9, 11)).astype(np.float32)
    sweep = ((3, 3), (2, 1), ((1, 1), (1, 1)), (1, 2), (5, 9))
    expected, _ = reference_columns(x, *sweep[:4])
    found = columns.gather(x, *sweep)
    assert found.size >= 1 << 15
    np.testing.assert_array_equal(found, expected.astype(np.float32))


def test_the_copies_refuse_what_they_do_not_lay_out():
    x = np.zeros((2, 3, 6, 6), np.float32)
    sweep = ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (6, 6))
    with pytest.raises(ValueError, match="C-ordered float32"):
        columns.gather(x[:, :, ::2], *sweep[:4], (3, 6))
    with pytest.raises(ValueError, match="C-ordered float32"):
        columns.gather(x.astype(np.float64), *sweep)
    with pytest.raises(ValueError, match="are not the columns"):
        columns.scatter(np.zeros((27, 10), np.float32), x.shape, *sweep)
