"""The register-tiled products (kernels/tiled.py) against float64 NumPy: every block of output
rows the tiles take (full, halved, single), masked tails of every length, reads anywhere in
the buffer, and the same values however many parts the positions are split into. The
convolutions that run on them are checked against torch in test_kernels_conv.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import tiled, workers

F = np.float32


def _reads(x, offsets, length):
    return np.stack([x[o:o + length] for o in offsets]).astype(np.float64) if len(offsets) \
        else np.zeros((0, length))


def _one_part():
    _, get_threads, set_threads = workers._openblas() or (None, None, None)
    return get_threads, set_threads


@settings(max_examples=60, deadline=None)
@given(out_rows=st.integers(1, 2 * tiled.ROWS + 3), reads=st.integers(1, 40),
       length=st.integers(1, 5 * tiled.TILE + 7), slack=st.integers(0, 20),
       seed=st.integers(0, 2**31))
def test_products_match_float64(out_rows, reads, length, slack, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(length + 300, dtype=F)
    offsets = rng.integers(0, 301, reads)
    weights = rng.standard_normal((out_rows, reads), dtype=F)
    out = np.full((out_rows, length + slack), 7, F)
    tiled.products(out, x, offsets, weights, length)
    expected = weights.astype(np.float64) @ _reads(x, offsets, length)
    np.testing.assert_allclose(out[:, :length], expected, rtol=1e-5, atol=1e-5 * reads)
    assert (out[:, length:] == 7).all()  # nothing written past ``length``


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 2 * tiled.SUM_ROWS + 3), columns=st.integers(1, 2 * tiled.SUM_COLUMNS + 3),
       length=st.integers(0, 3 * tiled.SUM_BLOCK + 37), seed=st.integers(0, 2**31))
def test_sums_match_float64(rows, columns, length, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(length + 200, dtype=F)
    dy = rng.standard_normal(columns * (length + 5), dtype=F)
    x_offsets = rng.integers(0, 201, rows)
    dy_offsets = np.arange(columns) * (length + 5) + rng.integers(0, 6, columns)
    got = tiled.sums(x, x_offsets, dy, dy_offsets, length)
    expected = _reads(x, x_offsets, length) @ _reads(dy, dy_offsets, length).T
    assert got.shape == (rows, columns)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(length, 1) ** 0.5)


@settings(max_examples=40, deadline=None)
@given(items=st.integers(1, 5), out_rows=st.integers(1, 12), reads=st.integers(1, 12),
       length=st.integers(1, 3 * tiled.TILE + 5), own_weights=st.booleans(),
       seed=st.integers(0, 2**31))
def test_products_of_items(items, out_rows, reads, length, own_weights, seed):
    rng = np.random.default_rng(seed)
    step = length + 40
    x = rng.standard_normal(items * step, dtype=F)
    offsets = rng.integers(0, 41, reads)
    weights = rng.standard_normal((items, out_rows, reads) if own_weights else (out_rows, reads),
                                  dtype=F)
    out = np.empty((items, out_rows, length), F)
    tiled.products(out, x, offsets, weights, length, x_step=step)
    for item in range(items):
        w = weights[item] if own_weights else weights
        expected = w.astype(np.float64) @ _reads(x[item * step:], offsets, length)
        np.testing.assert_allclose(out[item], expected, rtol=1e-5, atol=1e-5 * reads)


@settings(max_examples=40, deadline=None)
@given(items=st.integers(1, 5), rows=st.integers(1, 20), columns=st.integers(1, 9),
       length=st.integers(0, tiled.SUM_BLOCK + 37), each=st.booleans(),
       seed=st.integers(0, 2**31))
def test_sums_of_items(items, rows, columns, length, each, seed):
    """Summed over the items, or each item's own; one column takes the narrow tile."""
    rng = np.random.default_rng(seed)
    x_step, dy_step = length + 30, columns * length + 3
    x = rng.standard_normal(items * x_step, dtype=F)
    dy = rng.standard_normal(items * dy_step, dtype=F)
    x_offsets = rng.integers(0, 31, rows)
    dy_offsets = np.arange(columns) * length
    got = tiled.sums(x, x_offsets, dy, dy_offsets, length, items=items, x_step=x_step,
                     dy_step=dy_step, each=each)
    per_item = np.stack([_reads(x[i * x_step:], x_offsets, length)
                         @ _reads(dy[i * dy_step:], dy_offsets, length).T for i in range(items)])
    expected = per_item if each else per_item.sum(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5,
                               atol=1e-5 * max(length * items, 1) ** 0.5)


@pytest.mark.skipif(workers.parts() < 2, reason="OpenBLAS runs one thread here")
def test_parts_give_the_values_of_one_part():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50_000, dtype=F)
    offsets = rng.integers(0, 10_000, 50)
    weights = rng.standard_normal((19, 50), dtype=F)
    dy = rng.standard_normal(19 * 40_000, dtype=F)
    dy_offsets = np.arange(19) * 40_000

    def both():
        out = np.empty((19, 39_999), F)
        tiled.products(out, x, offsets, weights, 39_999)
        return out, tiled.sums(x, offsets, dy, dy_offsets, 39_999)

    split = both()
    get_threads, set_threads = _one_part()
    threads = get_threads()
    set_threads(1)
    try:
        assert workers.parts() == 1
        whole = both()
    finally:
        set_threads(threads)
    for a, b in zip(split, whole):
        np.testing.assert_array_equal(a, b)


def test_reads_outside_the_buffer_are_refused():
    x = np.zeros(100, F)
    out = np.empty((2, 10), F)
    with pytest.raises(ValueError, match="outside"):
        tiled.products(out, x, np.array([91]), np.ones((2, 1), F), 10)
    with pytest.raises(ValueError, match="outside"):
        tiled.products(out, x, np.array([-1]), np.ones((2, 1), F), 10)
    with pytest.raises(ValueError, match="outside"):
        tiled.sums(x, np.array([0]), x, np.array([95]), 10)
    with pytest.raises(ValueError, match="float32"):
        tiled.products(out, x.astype(np.float64), np.array([0]), np.ones((2, 1), F), 10)
    with pytest.raises(ValueError, match="weights"):  # more reads than weights: refused
        tiled.products(out, x, np.array([0, 1]), np.ones((2, 1), F), 10)
    maps = np.zeros((1, 2, 3, 4), F)
    with pytest.raises(ValueError, match="direct_products"):
        tiled.direct_products(np.zeros((1, 3, 3, 4), F), maps, [(0, 0)], np.ones((2, 2, 1), F))
    with pytest.raises(ValueError, match="direct_sums"):
        tiled.direct_sums(maps, np.zeros((2, 2, 3, 4), F), [(0, 0)])


def test_products_of_more_reads_than_one_pass_add_the_passes():
    """Past READ_BLOCK reads the tiles take the reads in passes, each adding to the last's."""
    rng = np.random.default_rng(5)
    reads = 2 * tiled.READ_BLOCK + 5
    x = rng.standard_normal(3000, dtype=F)
    offsets = rng.integers(0, 1000, reads)
    weights = rng.standard_normal((11, reads), dtype=F) / np.sqrt(reads)
    out = np.empty((11, 1001), F)
    tiled.products(out, x, offsets, weights, 1001)
    expected = weights.astype(np.float64) @ _reads(x, offsets, 1001)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("samples, channels, out_channels, height, width, kernel, groups", [
    (2, 3, 5, 7, 9, 3, 1), (3, 8, 12, 5, 6, 5, 2), (2, 70, 19, 6, 7, 3, 1),
    (1, 4, 4, 9, 1, 3, 1), (2, 12, 12, 10, 7, 3, 12), (5, 16, 16, 8, 8, 3, 1),
    (3, 6, 6, 40, 30, 3, 1),
    # the gradient products: every tile shape, channels and outputs that fill no whole
    # tile, planes in bands of rows, rows shorter than a tap's reach, groups
    (3, 40, 64, 5, 7, 3, 1), (2, 33, 97, 40, 30, 3, 1), (2, 64, 96, 6, 6, 3, 2),
    (1, 32, 50, 9, 11, 5, 1), (2, 35, 48, 1, 50, 3, 1), (5, 48, 130, 4, 4, 3, 1),
    (2, 32, 200, 3, 2, 3, 1), (3, 40, 50, 6, 6, 1, 1), (2, 150, 64, 5, 5, 1, 1),
    (2, 32, 40, 1, 2500, 3, 1), (1, 32, 33, 3, 1100, 3, 1),
])
@pytest.mark.parametrize("as_products", [False, True])
def test_direct_sums_are_the_weight_gradient_of_torch(samples, channels, out_channels, height,
                                                      width, kernel, groups, as_products,
                                                      monkeypatch):
    """Planes larger and smaller than a block of positions (several samples a block), one
    dy row a group (depthwise: the narrow tile), taps reaching past every edge, 1x1 layers;
    each case both as sums and as products (whichever the ``GRADIENT_MIN_...`` thresholds
    would pick)."""
    import torch
    import torch.nn.functional as torch_functional

    rng = np.random.default_rng(11)
    x = rng.standard_normal((samples, channels, height, width), dtype=F)
    weight = rng.standard_normal((out_channels, channels // groups, kernel, kernel), dtype=F)
    pad = kernel // 2
    taps = [(a - pad, b - pad) for a in range(kernel) for b in range(kernel)]
    tweight = torch.tensor(weight, requires_grad=True)
    y = torch_functional.conv2d(torch.tensor(x), tweight, padding=pad, groups=groups)
    dy = rng.standard_normal(y.shape, dtype=F)
    y.backward(torch.tensor(dy))
    least = 0 if as_products else 1 << 30
    for threshold in ("GRADIENT_MIN_CHANNELS", "GRADIENT_MIN_OUTPUTS", "GRADIENT_MIN_READS"):
        monkeypatch.setattr(tiled, threshold, least)
    got = tiled.direct_sums(x, dy, taps, groups)
    expected = tweight.grad.numpy().reshape(out_channels, channels // groups, -1)
    # float32 sums of thousands of terms: their rounding grows as the root of the count
    positions = samples * height * width
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1, positions / 1000) ** 0.5)


@pytest.mark.parametrize("channels, outputs, as_products", [
    (32, 16, True), (48, 16, True), (64, 64, True), (16, 16, False), (40, 16, False),
    (48, 8, False), (48, 24, False)])
def test_the_weight_gradient_takes_the_products_where_they_measured_faster(
        channels, outputs, as_products, monkeypatch):
    """Products from 32 channels to 32 outputs, and to one vector of outputs from whole
    16-row tiles of channels (on 16-row tiles, the narrowest that wastes no rows)."""
    taken = []
    products = tiled._gradient_products
    monkeypatch.setattr(tiled, "_gradient_products",
                        lambda *args: taken.append(args[1].shape[1]) or products(*args))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, channels, 6, 6), dtype=F)
    dy = rng.standard_normal((2, outputs, 6, 6), dtype=F)
    taps = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    tiled.direct_sums(x, dy, taps)
    assert bool(taken) == as_products
    if outputs == 16 and channels % 16 == 0:
        assert tiled._gradient_shape(outputs, channels)[1:] == (1, 16)


@pytest.mark.parametrize("samples, channels, out_channels, height, width, maps", [
    (2, 32, 64, 8, 8, 4), (3, 40, 50, 5, 7, 4), (1, 64, 33, 4, 4, 2), (2, 48, 16, 6, 6, 4)])
def test_direct_sums_over_maps_read_each_taps_map(samples, channels, out_channels, height,
                                                  width, maps):
    """With ``sources`` (a strided layer's stride phases), tap k's reads come from map
    sources[k], masked at its edges as a stride-1 map's: each tap's sums those of its map
    alone, in float64."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((samples, maps * channels, height, width), dtype=F)
    dy = rng.standard_normal((samples, out_channels, height, width), dtype=F)
    taps = [(a, b) for a in (-1, 0) for b in (-1, 0, 1)] + [(1, 1)]
    sources = [k % maps for k in range(len(taps))]
    out = np.empty((out_channels, channels, len(taps)), F)
    assert tiled.direct_sums(x, dy, taps, out=out, sources=sources) is out
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    padded = np.pad(x64, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for k, ((a, b), source) in enumerate(zip(taps, sources)):
        block = padded[:, source * channels:(source + 1) * channels]
        shifted = block[:, :, 1 + a:1 + a + height, 1 + b:1 + b + width]
        expected = np.einsum("nmhw,nchw->mc", dy64, shifted)
        np.testing.assert_allclose(out[:, :, k], expected, rtol=1e-4, atol=1e-4)


def test_direct_sums_over_maps_refuse_what_they_cannot_read():
    """Over maps the sums need ``out`` (its channels are a map's), a source per tap within
    the maps, and a layer wide enough for the products."""
    x = np.zeros((1, 4 * 32, 4, 4), F)
    dy = np.zeros((1, 64, 4, 4), F)
    taps = [(0, 0), (0, -1)]
    for out, sources in [(None, [0, 1]), (np.zeros((64, 32, 2), F), [0, 4]),
                         (np.zeros((64, 32, 2), F), [0]), (np.zeros((64, 30, 2), F), [0, 1]),
                         (np.zeros((64, 32, 3), F), [0, 1])]:
        with pytest.raises(ValueError, match="direct_sums"):
            tiled.direct_sums(x, dy, taps, out=out, sources=sources)
    with pytest.raises(ValueError, match="direct_sums"):  # 8 outputs: the plain sums' layer
        tiled.direct_sums(x, dy[:, :8], taps, out=np.zeros((8, 32, 2), F), sources=[0, 1])


def _direct_reference(x, taps, weights, groups):
    """out[n, g * M + m, h, w] = sum over taps (a, b) and the group's channels of
    weights[g * M + m, c, k] * x[n, g * C + c, h + a, w + b], zero outside the map, in
    float64."""
    samples, _, height, width = x.shape
    channels, out_rows = weights.shape[1], weights.shape[0] // groups
    reach = max(max(abs(a), abs(b)) for a, b in taps)
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (reach, reach), (reach, reach)))
    out = np.zeros((samples, weights.shape[0], height, width))
    for g in range(groups):
        group = padded[:, g * channels:(g + 1) * channels]
        for k, (a, b) in enumerate(taps):
            shifted = group[:, :, reach + a:reach + a + height, reach + b:reach + b + width]
            out[:, g * out_rows:(g + 1) * out_rows] += np.einsum(
                "mc,nchw->nmhw", weights[g * out_rows:(g + 1) * out_rows, :, k], shifted)
    return out


@settings(max_examples=40, deadline=None)
@given(samples=st.integers(1, 7), channels=st.integers(1, 12), out_rows=st.integers(1, 20),
       height=st.integers(1, 9), width=st.integers(1, 20), depthwise=st.booleans(),
       kernel=st.sampled_from([(3, 3), (1, 3), (5, 5)]), seed=st.integers(0, 2**31))
def test_direct_products_match_float64(samples, channels, out_rows, height, width, depthwise,
                                       kernel, seed):
    """Planes of every size against the tiles' vectors: one vector a plane and several,
    tiles whose vectors are of several samples, tiles past the last sample's end, the
    8-row and the wide tiles with every smaller block, groups."""
    rng = np.random.default_rng(seed)
    groups = channels if depthwise else 1
    x = rng.standard_normal((samples, channels, height, width), dtype=F)
    taps = [(a - kernel[0] // 2, b - kernel[1] // 2)
            for a in range(kernel[0]) for b in range(kernel[1])]
    outputs = groups * out_rows if depthwise else out_rows
    weights = rng.standard_normal((outputs, channels // groups, len(taps)), dtype=F)
    out = np.full((samples, outputs, height, width), np.nan, F)
    tiled.direct_products(out, x, taps, weights, groups)
    np.testing.assert_allclose(out, _direct_reference(x, taps, weights, groups),
                               rtol=1e-4, atol=1e-5 * len(taps) * (channels // groups))


@pytest.mark.parametrize("samples, height", [(2, 5), (12, 16)])
def test_direct_products_read_transposed_weights_in_place_or_packed(samples, height):
    """The input gradient's weights, a transposed view: read where they lie over a few
    tiles, packed over many (``DIRECT_PACKED_MIN_UNITS``), the same products either way."""
    rng = np.random.default_rng(samples)
    channels, out_rows = 12, 10
    x = rng.standard_normal((samples, channels, height, height), dtype=F)
    taps = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    weights = rng.standard_normal((channels, out_rows, len(taps)), dtype=F).transpose(1, 0, 2)
    out = np.empty((samples, out_rows, height, height), F)
    tiled.direct_products(out, x, taps, weights)
    np.testing.assert_allclose(out, _direct_reference(x, taps, weights, 1), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.skipif(workers.parts() < 2, reason="OpenBLAS runs one thread here")
@pytest.mark.parametrize("samples, channels, out_rows, height, width", [
    (7, 20, 16, 4, 4), (3, 70, 12, 16, 16), (2, 8, 48, 13, 11)])
def test_direct_products_of_parts_give_the_values_of_one_part(samples, channels, out_rows,
                                                              height, width):
    rng = np.random.default_rng(samples)
    x = rng.standard_normal((samples, channels, height, width), dtype=F)
    taps = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    weights = rng.standard_normal((out_rows, channels, 9), dtype=F)
    split, whole = np.empty((samples, out_rows, height, width), F), np.empty(
        (samples, out_rows, height, width), F)
    tiled.direct_products(split, x, taps, weights)
    get_threads, set_threads = _one_part()
    threads = get_threads()
    set_threads(1)
    try:
        assert workers.parts() == 1
        tiled.direct_products(whole, x, taps, weights)
    finally:
        set_threads(threads)
    np.testing.assert_array_equal(split, whole)


# x's floats end on a page that cannot be read, and start right after one: a direct tile
# loading plainly where its reads pass x's buffer (``_reads_in_buffer``) stops the process
_GUARDED_READS = """
import ctypes, mmap, numpy as np
from nnspec.backends.numpy.kernels import tiled
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
rng = np.random.default_rng(0)
for samples, channels, out_rows, height, width in [(3, 70, 16, 8, 8), (2, 20, 24, 16, 16),
                                                   (5, 9, 12, 6, 6), (1, 300, 8, 4, 4)]:
    size = samples * channels * height * width
    pages = -(-size * 4 // page)
    memory = mmap.mmap(-1, (pages + 2) * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    for guard in (base, base + (pages + 1) * page):
        assert libc.mprotect(guard, page, 0) == 0
    for end in ("start", "end"):
        offset = page if end == "start" else (pages + 1) * page - size * 4
        x = np.frombuffer(memory, np.float32, size, offset).reshape(
            samples, channels, height, width)
        x[...] = rng.standard_normal(x.shape, dtype=np.float32)
        weights = rng.standard_normal((out_rows, channels, 9), dtype=np.float32)
        out = np.empty((samples, out_rows, height, width), np.float32)
        tiled.direct_products(out, x, [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)],
                              weights)
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        expected = sum(np.einsum("mc,nchw->nmhw", weights[:, :, 3 * a + b],
                                 padded[:, :, a:a + height, b:b + width])
                       for a in range(3) for b in range(3))
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)
        del x
print("ok")
"""


def test_only_the_direct_tiles_at_the_buffers_ends_mask_their_loads():
    """``_reads_in_buffer`` on 3 samples of 70 channels, 8x8, 3x3 taps (shifts -9 to 9): the
    first tile's first pass reads before x and the last tile's last pass past it; every
    other tile and pass loads plainly."""
    samples, channels, plane, vectors = 3, 70, 64, tiled.VECTORS
    units = tiled._direct_units(samples, plane, channels * plane, channels * plane, vectors)
    tiles = len(units) // vectors
    passes = [(0, 63), (64, 69)]  # channel passes: first and last channel
    plain = [[tiled._reads_in_buffer(units.ravel(), tile, vectors, first * plane,
                                     last * plane, (-9, 9), samples * channels * plane)
              for first, last in passes] for tile in range(tiles)]
    masked = {(tile, number) for tile in range(tiles) for number in range(2)
              if not plain[tile][number]}
    assert masked == {(0, 0), (tiles - 1, 1)}


def test_direct_tiles_read_nothing_outside_the_maps_buffer():
    """Only the direct tiles whose reads all lie in x's buffer load them plainly (their
    lanes outside the map left out by masked multiply-adds); the others mask their loads,
    which read no memory there: x between two pages that fault when read, at its start and
    at its end, gives the products and no crash."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _GUARDED_READS], check=False,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


_EIGHT_LANES = """
import llvmlite.binding, numpy as np
features = llvmlite.binding.get_host_cpu_features()
features["avx512f"] = False
llvmlite.binding.get_host_cpu_features = lambda: features
from nnspec.backends.numpy.kernels import conv, tiled
assert tiled.LANES == 8 and tiled.ROWS == 4
rng = np.random.default_rng(0)
for shape, kernel, stride, groups, outputs in [
        ((2, 6, 9, 10), 3, 1, 1, 10), ((2, 8, 11, 9), 3, 2, 1, 10), ((3, 12, 8, 8), 3, 1, 12, 12),
        ((2, 70, 7, 8), 3, 1, 1, 10), ((2, 40, 7, 8), 3, 1, 1, 57)]:
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((outputs, shape[1] // groups, kernel, kernel)) / 10).astype(
        np.float32)
    y, backward = conv.conv2d(x, w, None, stride=(stride, stride), padding=((1, 1), (1, 1)),
                              dilation=(1, 1), groups=groups)
    dx, dw, _ = backward(np.ones_like(y))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y64, backward64 = conv.conv2d(x64, w64, None, stride=(stride, stride),
                                  padding=((1, 1), (1, 1)), dilation=(1, 1), groups=groups)
    dx64, dw64, _ = backward64(np.ones_like(y64))
    for ours, blas in ((y, y64), (dx, dx64), (dw, dw64)):
        np.testing.assert_allclose(ours, blas, rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_the_tiles_for_eight_float_vectors_give_the_same_convolutions(tmp_path):
    """The AVX2-sized build (LANES 8, tiles of 4 rows), compiled into a cache of its own,
    against the float64 BLAS paths: frames, strided phases, in place, depthwise, passes,
    the weight gradient as products."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _EIGHT_LANES], env=environment, check=False,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_many_tiles_of_many_taps_in_one_job_keep_the_stack_bounded():
    """A long 1-D map read in place: 16,000 tiles of 31 taps in one job. The taps' masks
    once took stack space every tile until the job returned, and this crashed."""
    length, taps = 100_000, [(0, b - 15) for b in range(31)]
    x = np.ones((8, 2, 1, length), F)
    out = np.empty_like(x)
    tiled.direct_products(out, x, taps, np.ones((2, 2, 31), F))
    assert out[0, 0, 0, 15:-15].min() == out[0, 0, 0, 15:-15].max() == 62  # 2 channels x 31
    np.testing.assert_array_equal(out[0, 0, 0, :3], [32, 34, 36])  # taps past the start masked


@pytest.mark.parametrize("rows, items, length", [(1, 1, 100), (13, 1, 100), (32, 2, 100),
                                                 (26, 2, 900), (12, 3, 100), (16, 2, 768),
                                                 (9, 1, 1000), (3, 1, 0)])
def test_a_product_made_again_reads_its_weights_where_they_lie(rows, items, length):
    """``Product`` (a recurrent layer's steps) reads its weights in place, rows further
    apart than their reads (a step's rows: its input and state side by side), each item's
    from its own rows, and each ``add`` adds the product to out, as many times as it is
    run, over matrices of one panel and of several; and it reads past 576 reads (its block
    of reads) in place too."""
    rng = np.random.default_rng(rows)
    for reads in (7, 600):
        stride = reads + 5
        lying = rng.standard_normal((rows, stride)).astype(np.float32)
        weights = lying[:, 2:2 + reads]
        x = rng.standard_normal((reads, length)).astype(np.float32)
        out = rng.standard_normal((rows, length + 5)).astype(np.float32)
        expected = out.astype(np.float64)
        expected[:, :length] += 2 * (weights.astype(np.float64) @ x)
        # a transposed view makes the same panels
        product = tiled.Product(rows, length + 5, tiled.panels(
            np.ascontiguousarray(x.T).T if rows % 2 else x), length, stride, items)
        for _ in range(2):
            product.add(out.ctypes.data, weights.ctypes.data)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)  # the last 5 untouched
    with pytest.raises(ValueError, match="equal items"):
        tiled.Product(2 * rows + 1, length, tiled.panels(x), length, reads, 2)
    with pytest.raises(ValueError, match="apart"):
        tiled.Product(rows, length, tiled.panels(x), length, reads - 1)


def test_every_direct_tile_shape_is_found_by_its_rows():
    """``_direct_shape`` (numba-compiled, so written out) names each tile of DIRECT_SHAPES
    by its rows, width and reads, as ``_block_rows`` leaves them at the end of the outputs."""
    for index, (rows, vectors, in_buffer) in enumerate(tiled.DIRECT_SHAPES):
        assert tiled._direct_shape(vectors == tiled.WIDE_VECTORS, rows, in_buffer) == index


@pytest.mark.parametrize("shape", [(1,), (5, 7), (3, 4, 48)])
def test_aligned_arrays_start_on_a_cache_line(shape):
    """``aligned_array`` and ``empty_panels`` (the tiles' panels and the LSTM's product
    outputs) start on a 64-byte line whatever NumPy's allocation gave, C-ordered float32 of
    the shape asked; the panels' spare columns are zeros."""
    for _ in range(4):  # allocations land at different offsets
        array = tiled.aligned_array(shape)
        assert array.shape == shape and array.dtype == np.float32
        assert array.flags.c_contiguous and array.ctypes.data % 64 == 0
    for _ in range(4):  # memory freed with NaNs in it, which the spare columns may reuse
        dirty = np.full(2 * 3 * tiled.PANEL + 16, np.nan, np.float32)
        del dirty
        panels = tiled.empty_panels(3, 50)
        assert panels.shape == (2, 3, tiled.PANEL) and panels.ctypes.data % 64 == 0
        assert not panels[-1, :, 2:].any()
