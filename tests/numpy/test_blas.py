"""The BLAS extensions: ``add_product`` (out += a @ b through gemm with beta = 1) and
``transpose`` (omatcopy), against NumPy's own; ``address``, against ``ndarray.ctypes``."""

from __future__ import annotations

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import blas


def test_numpys_bundled_openblas_is_used_where_numpy_has_it():
    """A silent fall back to NumPy's product and add would only show as a slower step."""
    name = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    if name != "scipy-openblas":
        pytest.skip(f"NumPy's BLAS here is {name}")
    assert blas.accumulates()
    assert ("omatcopy", np.dtype(np.float32)) in blas._openblas()


def test_the_quick_address_is_numpys_own_for_every_kind_of_array(tmp_path):
    """Every job reads memory at these addresses: one off would read another array."""
    if np.dtype(np.intp).itemsize == 8:  # CPython's standard 64-bit build: the field read
        assert blas.address is blas._address_by_field
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    arrays = [base, base[1:], base[:, 2:, 1:], base.T, base[..., ::2], base.ravel()[7:],
              np.empty(0, np.float32), np.zeros((2, 3)), np.asfortranarray(base),
              np.float32(3) * np.ones(1, np.float32), base.view(np.int32),
              np.memmap(tmp_path / "mapped", np.float32, "w+", shape=(4, 4))[1:]]
    for array in arrays:
        assert blas.address(array) == array.ctypes.data


def operand(rng, shape, dtype, layout):
    """A (rows, columns) array whose rows are unit-stride runs ('rows'), whose columns are
    ('columns': a transposed view), or a block of columns of a wider array ('block')."""
    rows, columns = shape
    if layout == "columns":
        return rng.standard_normal((columns, rows)).astype(dtype).T
    if layout == "block":
        return rng.standard_normal((rows, columns + 7)).astype(dtype)[:, 3:3 + columns]
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout_a", ["rows", "columns", "block"])
@pytest.mark.parametrize("layout_b", ["rows", "columns", "block"])
@pytest.mark.parametrize("through_blas", [True, False])
def test_adds_the_product_into_its_output(monkeypatch, dtype, layout_a, layout_b,
                                          through_blas):
    if through_blas:  # small products would take NumPy's way
        monkeypatch.setattr(blas, "SMALL_PRODUCT", 0)
    rng = np.random.default_rng(0)
    a = operand(rng, (13, 9), dtype, layout_a)
    b = operand(rng, (9, 11), dtype, layout_b)
    wide = rng.standard_normal((13, 20)).astype(dtype)
    out = wide[:, 4:15]  # a block of columns: rows 20 apart
    expected = wide.copy()
    expected[:, 4:15] += a @ b
    blas.add_product(a, b, out)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(wide, expected, rtol=tolerance, atol=tolerance)


def test_layouts_blas_cannot_read_and_empty_products_take_numpys_way(monkeypatch):
    monkeypatch.setattr(blas, "SMALL_PRODUCT", 0)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 4)).astype(np.float32)[::-1]  # negative row stride
    b = np.broadcast_to(rng.standard_normal(3).astype(np.float32), (4, 3))  # zero stride
    out = np.ones((5, 3), np.float32)
    blas.add_product(a, b, out)
    np.testing.assert_allclose(out, 1 + a @ b, rtol=1e-6)
    buffer = np.zeros(4 * 20 + 1, np.uint8)[1:].view(np.float32).reshape(4, 5)  # unaligned
    buffer[...] = rng.standard_normal((4, 5))
    out = np.ones((5, 5), np.float32)
    blas.add_product(a, buffer, out)
    np.testing.assert_allclose(out, 1 + a @ buffer, rtol=1e-6)
    empty = np.ones((5, 3), np.float32)
    blas.add_product(np.zeros((5, 0), np.float32), np.zeros((0, 3), np.float32), empty)
    assert (empty == 1).all()
    read_only = np.ones((5, 3), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError):
        blas.add_product(rng.standard_normal((5, 4)).astype(np.float32),
                         rng.standard_normal((4, 3)).astype(np.float32), read_only)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["rows", "block"])
@pytest.mark.parametrize("through_blas", [True, False])
@pytest.mark.parametrize("given_out", [False, "whole", "block"])
def test_transpose_copies_every_element_exactly(monkeypatch, dtype, layout, through_blas,
                                                given_out):
    if through_blas:  # small matrices would take NumPy's way
        monkeypatch.setattr(blas, "SMALL_TRANSPOSE", 0)
    rng = np.random.default_rng(1)
    matrix = operand(rng, (37, 23), dtype, layout)
    matrix[3, 5], matrix[7, 2], matrix[0, 0] = np.nan, -np.inf, -0.0
    # "block": rows of a larger array (a time step of a batch-first sequence), whose other
    # columns stay as they are
    larger = np.full((23, 50), 7, dtype)
    out = {False: None, "whole": np.full((23, 37), 7, dtype), "block": larger[:, 5:42]}[
        given_out]
    result = blas.transpose(matrix, out)
    assert result.dtype == dtype
    if given_out:
        assert result is out
    else:
        assert result.flags.c_contiguous
    np.testing.assert_array_equal(result, matrix.T)
    assert np.signbit(result[0, 0])  # -0.0 stays negative: a copy, not arithmetic
    if given_out == "block":
        assert (larger[:, :5] == 7).all() and (larger[:, 42:] == 7).all()

