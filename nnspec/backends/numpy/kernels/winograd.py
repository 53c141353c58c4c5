"""Wide 3x3 convolutions by Winograd's minimal filtering, F(2x2, 3x3) (Lavin and Gray, 2015).

A "same" 3x3 stride-1 convolution computes each 2x2 block of its output from a 4x4 tile of
the input, the tiles overlapping by two. With V = B^T d B of each input tile and U = G g G^T
of each 3x3 kernel, the block is A^T (U . V) A summed over the channels: sixteen products
(tiles x C) @ (C x O), one per position in the tile, do the direct convolution's work in
16/36 of its multiply-adds. The gradients are the same sixteen products transposed: with
dM = A dY A^T, dV = dM U gives the input's gradient (B dV B^T, added over the tiles each
input position is in) and dU = dM^T V the kernels' (G^T dU G).

The transforms' matrices hold 0, 1, -1 and 1/2, so float32 loses about what the direct sum
does (against torch in float64, within 1e-6 of the largest value, as torch's float32 is).
The transforms vectorise over the channels: each sample's maps are read channels last, and
a tile's sixteen transformed values are rows of channels. The cores split the work by
``workers.in_parts``: the forward by samples, each part transforming its own, running its
sixteen products single-threaded and transforming back, in blocks that stay in cache; the
backward by samples for the transforms and by tile positions for the products
(``_backward_by_positions``), or, where the whole batch's transforms would take too much
memory, by samples throughout (``_backward_by_samples``).

Forward and backward against the direct tiles and columns (``conv``), Intel Xeon, 2 cores:
0.65-0.73x at 256 channels on 8x8 and 14x14 maps (batch 8-16), 0.82-0.92x at 128-192 on
8x8 to 16x16 maps. Where the batch holds fewer tiles for its channels the forward is slower
(the kernels' transforms, 16 values for 9, grow with the channels, the products shrink with
the tiles: 256 channels on 4x4 maps, batch 32, 2.0 ms against 1.65) but the backward still
faster (3.0 against 4.3), so a layer may take the direct forward and this backward (0.79x
there); at 64 channels both are slower (1.1-1.2x), and so are maps the tiles overhang (7x7
in tiles covering 8x8: 512 channels, batch 8, 1.13x with this module's first backward).
``applies`` and ``forward_pays`` choose.
"""

from __future__ import annotations

import numba
import numpy as np

from . import gemm, gradient_slots, workers
from .blas import add_product

_compile = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_inline = numba.njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})

# the sixteen products' operands of a part's block of samples stay about this size (floats
# of V or M): the forward at 128 channels on 8x8 maps, batch 32, 2.4 ms in blocks of 2^17,
# 1.7 from 2^19 on
BLOCK_FLOATS = 1 << 19
# the backward takes the whole batch's transforms at once up to this many floats of them
# beyond the sum of dU it saves (``_backward_by_positions``)
BY_POSITIONS_MAX_FLOATS = 4 * BLOCK_FLOATS
# from this many channels in and out ...
MIN_CHANNELS = 128
# ... and this many tiles in the batch times the channels in times those out, the backward
# (the direct forward with it against the direct paths: 256 channels on 4x4 maps, batch 16,
# 0.91x; 128 on 8x8, batch 16, 0.95x; 192 on 8x8, batch 8, 0.87x; below: 128 channels on 4x4
# at batch 32 and on 8x8 at batch 8, 1.05-1.08x, 256 on 4x4 at batch 8, 1.14x) ...
MIN_TILE_KERNELS = 1 << 22
# ... and from this many the forward too (at 256 on 4x4 maps, batch 32, 2.0 ms against the
# direct tiles' 1.65; at 256 on 8x8, batch 16, 3.0 against 3.3)
FORWARD_MIN_TILE_CHANNELS = 1 << 16
# where the tiles cover no more than the map and this share again (odd maps: 7x7 in 4x4
# tiles of 8x8, 1.31)
MOST_OVERHANG = 1.1
# and the transformed kernels (and then their gradients), 16 floats a kernel, are at most
# this many: at 512 channels they are 16.8 MB, and a ResNet of 128/256/512 channels on 16x16
# maps, batch 16, peaked at 81 MiB with them against 68 without (torch: 70-100)
MOST_KERNEL_FLOATS = 16 * 256 * 256


def applies(x, weight, stride, padding, dilation, groups) -> bool:
    """Whether this convolution's backward runs here: float32, 2-D, 3x3 at stride 1 with
    padding 1, dense, and wide and large enough (``MIN_CHANNELS``, ``MIN_TILE_KERNELS``,
    ``MOST_OVERHANG``) but not too wide (``MOST_KERNEL_FLOATS``)."""
    if gemm.blas_is_narrow():  # its products at half the rate the direct tiles run at
        return False
    if not (x.dtype == np.float32 and weight.dtype == np.float32 and x.ndim == 4 and
            groups == 1 and weight.shape[2:] == (3, 3) and stride == (1, 1) and
            dilation == (1, 1) and padding == ((1, 1), (1, 1))):
        return False
    height, width = x.shape[2:]
    least = min(x.shape[1], weight.shape[0])
    tiles = _tiles(height, width)
    return least >= MIN_CHANNELS and \
        _batch_tiles(x) * x.shape[1] * weight.shape[0] >= MIN_TILE_KERNELS and \
        4 * tiles <= MOST_OVERHANG * height * width and \
        16 * x.shape[1] * weight.shape[0] <= MOST_KERNEL_FLOATS


def forward_pays(x, weight) -> bool:
    """Whether a convolution ``applies`` accepts runs its forward here too
    (``FORWARD_MIN_TILE_CHANNELS``)."""
    return _batch_tiles(x) * min(x.shape[1], weight.shape[0]) >= FORWARD_MIN_TILE_CHANNELS


def _batch_tiles(x):
    return x.shape[0] * _tiles(*x.shape[2:])


def conv(x, weight, input_grad):
    """The convolution of ``x`` (N, C, H, W) with ``weight`` (O, C, 3, 3), padding 1: the
    output (N, O, H, W) and its backward (dy -> (dx, dweight))."""
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    n, channels, height, width = x.shape
    out_channels = weight.shape[0]
    tiles = _tiles(height, width)
    y = np.empty((n, out_channels, height, width), np.float32)
    blocks = _blocks(n, tiles, max(channels, out_channels))
    # each part's products read U as (C, O) matrices: V (tiles, C) @ U_k.T
    kernel_tiles = np.empty((16, channels, out_channels), np.float32)
    _in_ranges(_transposed_weight_tiles, weight, kernel_tiles, channels, len(blocks))
    scratch = _scratch(blocks, tiles, channels, out_channels)

    def forward_part(part):
        v, m = scratch[part]
        for first, end in blocks[part]:
            count = (end - first) * tiles
            _input_tiles(x[first:end], v, 0)
            for k in range(16):
                np.matmul(_matrix(v, k, count, channels), kernel_tiles[k],
                          out=_matrix(m, k, count, out_channels))
            _output_tiles(m, y[first:end], 0)

    workers.in_parts(forward_part, len(blocks))
    return y, backward(x, weight, input_grad)


def backward(x, weight, input_grad):
    """The backward (dy -> (dx, dweight)) of the convolution of ``x`` (N, C, H, W) with
    ``weight`` (O, C, 3, 3), padding 1, by the transforms (whichever way made the output)."""
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    n, channels, height, width = x.shape
    out_channels = weight.shape[0]
    tiles = _tiles(height, width)

    def of(dy):
        dy = np.ascontiguousarray(dy, np.float32)
        if 16 * n * tiles * (channels + out_channels) <= \
                BY_POSITIONS_MAX_FLOATS + 16 * out_channels * channels:
            return _backward_by_positions(x, weight, dy, input_grad)
        blocks = _blocks(n, tiles, max(channels, out_channels))
        return _backward_by_samples(x, weight, dy, input_grad, blocks)

    return of


def _backward_by_positions(x, weight, dy, input_grad):
    """The backward with the whole batch's transforms at once: the cores split the samples
    to transform them, then the sixteen tile positions, each position's two products over
    every tile (dV_k = dM_k U_k, then dU_k = dM_k^T V_k in U_k's place, dV_k copied into
    V_k's), then the samples again for the input's gradient and the kernels for theirs.
    One sum of dU, and products over all the tiles: ``_backward_by_samples``' parts each
    sum their own dU, which for few tiles (small maps, small batches) costs more than the
    products."""
    n, channels, height, width = x.shape
    out_channels = weight.shape[0]
    tiles = _tiles(height, width)
    count = n * tiles
    parts = min(workers.parts(), n)
    v, dm = (np.empty((16, count * width_ + _SKEW), np.float32)
             for width_ in (channels, out_channels))
    # U, then dU position by position, as (1, 16, O, C): ``_weight_gradient``'s parts' sums
    kernel_tiles = np.empty((1, 16, out_channels, channels), np.float32)
    dv = [np.empty((count, channels), np.float32) for _ in range(parts)] if input_grad else []
    dx = np.empty(x.shape, np.float32) if input_grad else None
    dweight = gradient_slots.empty(weight.shape, np.float32)  # the model's slot

    def transform(part):
        first, end = _share(n, part, parts)
        _gradient_tiles(dy[first:end], dm, first * tiles)
        _input_tiles(x[first:end], v, first * tiles)
        if input_grad:
            _weight_tiles(weight, kernel_tiles[0], *_share(out_channels, part, parts))

    def products(part):
        for k in range(*_share(16, part, parts)):
            dm_k, v_k = _matrix(dm, k, count, out_channels), _matrix(v, k, count, channels)
            if input_grad:
                np.matmul(dm_k, kernel_tiles[0, k], out=dv[part])
            np.matmul(dm_k.T, v_k, out=kernel_tiles[0, k])
            if input_grad:
                v_k[...] = dv[part]

    def gradients(part):
        if input_grad:
            first, end = _share(n, part, parts)
            _input_gradient(v, dx[first:end], first * tiles)
        _weight_gradient(kernel_tiles, dweight, *_share(out_channels, part, parts))

    for phase in (transform, products, gradients):
        workers.in_parts(phase, parts)
    return dx, dweight


def _backward_by_samples(x, weight, dy, input_grad, blocks):
    """The backward in blocks of samples, each part its own: dM and dV = dM U, the input's
    gradient, V again and dU = dM^T V summed over the part's blocks; then the parts' sums
    to the kernels' gradient."""
    channels, height, width = x.shape[1:]
    out_channels = weight.shape[0]
    tiles = _tiles(height, width)
    dx = np.empty(x.shape, np.float32) if input_grad else None
    sums = np.empty((len(blocks), 16, out_channels, channels), np.float32)
    transformed = None  # U as (O, C) matrices, for dV = dM U
    if input_grad:
        transformed = np.empty((16, out_channels, channels), np.float32)
        _in_ranges(_weight_tiles, weight, transformed, out_channels, len(blocks))
    scratch = _scratch(blocks, tiles, channels, out_channels)

    def backward_part(part):
        v, dm = scratch[part]
        for number, (first, end) in enumerate(blocks[part]):
            count = (end - first) * tiles
            dm_k = [_matrix(dm, k, count, out_channels) for k in range(16)]
            v_k = [_matrix(v, k, count, channels) for k in range(16)]
            _gradient_tiles(dy[first:end], dm, 0)
            if input_grad:
                for k in range(16):
                    np.matmul(dm_k[k], transformed[k], out=v_k[k])
                _input_gradient(v, dx[first:end], 0)
            _input_tiles(x[first:end], v, 0)
            for k in range(16):
                if number == 0:
                    np.matmul(dm_k[k].T, v_k[k], out=sums[part, k])
                else:
                    add_product(dm_k[k].T, v_k[k], sums[part, k])

    workers.in_parts(backward_part, len(blocks))
    dweight = gradient_slots.empty(weight.shape, np.float32)  # the model's slot
    _in_ranges(_weight_gradient, sums, dweight, out_channels, len(blocks))
    return dx, dweight


def _share(count, part, parts):
    """Part ``part``'s range of ``count`` items split into ``parts``."""
    return count * part // parts, count * (part + 1) // parts


def _in_ranges(loop, source, target, count, parts):
    """``loop(source, target, first, end)`` over ``count`` rows split into ``parts``."""
    workers.in_parts(lambda part: loop(source, target, *_share(count, part, parts)), parts)


# floats between one tile position's matrix and the next in a block's scratch, so that the
# sixteen rows a transform writes at once are not a power of two of bytes apart (at 128
# channels on 8x8 maps, batch 16, the input and gradient transforms 0.21 -> 0.19 and 0.20 ->
# 0.16 ms with it; elsewhere within 10% either way)
_SKEW = 16


def _scratch(blocks, tiles, channels, out_channels):
    """Each part's transformed input and output for its largest block: sixteen matrices of
    (tiles, channels) and of (tiles, out channels), one a row, _SKEW floats apart. Made
    here, not in the parts: memory a worker thread allocates stays in its own heap (glibc's
    arena), out of reach of the main thread's next allocations (a ResNet of 128/256/512
    channels on 16x16 maps, batch 16: its step's peak 84 MiB against 76)."""
    most = tiles * max(end - first for part in blocks for first, end in part)
    return [tuple(np.empty((16, most * width + _SKEW), np.float32)
                  for width in (channels, out_channels)) for _ in blocks]


def _matrix(scratch, k, count, channels):
    """Position k's (count, channels) matrix in a block's scratch."""
    return scratch[k, :count * channels].reshape(count, channels)


def _tiles(height, width):
    return -(-height // 2) * -(-width // 2)


def _blocks(n, tiles, channels):
    """Each part's runs of samples: the batch halved between the cores, each half in blocks
    of about BLOCK_FLOATS transformed values."""
    parts = min(workers.parts(), n)
    per_block = max(1, BLOCK_FLOATS // (16 * channels * tiles))
    result = []
    for part in range(parts):
        start, end = n * part // parts, n * (part + 1) // parts
        result.append([(first, min(first + per_block, end))
                       for first in range(start, end, per_block)])
    return result


# The kernels' transforms run row by row, each loop writing one row from at most four: LLVM
# vectorises a loop only when it can check at run time that its arrays do not overlap, and
# gives up past a few pairs (written as one loop of sixteen outputs, 13 ns a kernel)


@_inline
def _sum_and_difference(plus, minus, a, b, c):
    """plus = (a + b + c) / 2, minus = (a - b + c) / 2."""
    half = np.float32(0.5)
    for l in range(plus.shape[0]):
        plus[l] = half * (a[l] + b[l] + c[l])
        minus[l] = half * (a[l] - b[l] + c[l])


@_inline
def _copies(first, second, a, b):
    for l in range(first.shape[0]):
        first[l] = a[l]
        second[l] = b[l]


@_inline
def _plus_half_sum(out, a, b, c):
    """out = a + (b + c) / 2."""
    half = np.float32(0.5)
    for l in range(out.shape[0]):
        out[l] = a[l] + half * (b[l] + c[l])


@_inline
def _half_difference(out, a, b):
    half = np.float32(0.5)
    for l in range(out.shape[0]):
        out[l] = half * (a[l] - b[l])


@_inline
def _kernel_tiles(g, middle, out, index):
    """U = G g G^T of a run of kernels, ``g`` (9, L) their taps as rows (row-major), into
    rows ``out[k, index]`` (k = 0 to 15), ``middle`` (6, L) scratch; G = [[1, 0, 0], [1/2,
    1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    for j in range(3):  # G g's middle two rows; its first and last are g's
        _sum_and_difference(middle[j], middle[3 + j], g[j], g[3 + j], g[6 + j])
    for i in range(4):  # then each row times G^T
        rows = g[0:3] if i == 0 else middle[0:3] if i == 1 else middle[3:6] if i == 2 \
            else g[6:9]
        _copies(out[4 * i, index], out[4 * i + 3, index], rows[0], rows[2])
        _sum_and_difference(out[4 * i + 1, index], out[4 * i + 2, index], rows[0], rows[1],
                            rows[2])


@_inline
def _kernel_gradient(d, scratch, taps):
    """g's gradient G^T dU G of a run of kernels, ``d`` (16, L), into ``taps`` (9, L);
    ``scratch`` (12, L)."""
    for i in range(4):  # dU G, row by row
        _plus_half_sum(scratch[3 * i], d[4 * i], d[4 * i + 1], d[4 * i + 2])
        _half_difference(scratch[3 * i + 1], d[4 * i + 1], d[4 * i + 2])
        _plus_half_sum(scratch[3 * i + 2], d[4 * i + 3], d[4 * i + 1], d[4 * i + 2])
    for v in range(3):  # then G^T times
        _plus_half_sum(taps[v], scratch[v], scratch[3 + v], scratch[6 + v])
        _half_difference(taps[3 + v], scratch[3 + v], scratch[6 + v])
        _plus_half_sum(taps[6 + v], scratch[9 + v], scratch[3 + v], scratch[6 + v])


@_compile
def _weight_tiles(weight, out, first, end):
    """U = G g G^T of the kernels of outputs ``first`` to ``end`` of ``weight`` (O, C, 3,
    3), into ``out`` (16, O, C)."""
    channels = weight.shape[1]
    g = np.empty((9, channels), np.float32)
    middle = np.empty((6, channels), np.float32)
    for o in range(first, end):
        kernels = weight[o]
        for c in range(channels):
            for tap in range(9):
                g[tap, c] = kernels[c, tap // 3, tap % 3]
        _kernel_tiles(g, middle, out, o)


@_compile
def _transposed_weight_tiles(weight, out, first, end):
    """``_weight_tiles`` as (16, C, O), for input channels ``first`` to ``end``."""
    out_channels = weight.shape[0]
    g = np.empty((9, out_channels), np.float32)
    middle = np.empty((6, out_channels), np.float32)
    for c in range(first, end):
        for o in range(out_channels):
            for tap in range(9):
                g[tap, o] = weight[o, c, tap // 3, tap % 3]
        _kernel_tiles(g, middle, out, c)


@_compile
def _weight_gradient(sums, out, first, end):
    """g's gradient G^T dU G for outputs ``first`` to ``end``, dU the sum over ``sums``
    (parts, 16, O, C), into ``out`` (O, C, 3, 3)."""
    channels = out.shape[1]
    d = np.empty((16, channels), np.float32)
    scratch = np.empty((12, channels), np.float32)
    taps = np.empty((9, channels), np.float32)
    for o in range(first, end):
        for k in range(16):
            row = d[k]
            row[:] = sums[0, k, o]
            for part in range(1, sums.shape[0]):
                row += sums[part, k, o]
        _kernel_gradient(d, scratch, taps)
        kernels = out[o]
        for c in range(channels):
            for tap in range(9):
                kernels[c, tap // 3, tap % 3] = taps[tap, c]


@_compile
def _to_channels_last(planes, out, top, left):
    """``planes`` (C, H, W) into ``out`` (rows, columns, C) from row ``top`` and column
    ``left``, sixteen channels at a time (each a run of ``out``)."""
    channels, height, width = planes.shape
    for first in range(0, channels, 16):
        last = min(first + 16, channels)
        for h in range(height):
            for w in range(width):
                target = out[top + h, left + w]
                for c in range(first, last):
                    target[c] = planes[c, h, w]


@_compile
def _from_channels_last(values, top, left, planes):
    """``_to_channels_last``'s inverse: ``planes`` (C, H, W) from ``values`` (rows,
    columns, C) at row ``top`` and column ``left``."""
    channels, height, width = planes.shape
    for first in range(0, channels, 16):
        last = min(first + 16, channels)
        for h in range(height):
            for w in range(width):
                source = values[top + h, left + w]
                for c in range(first, last):
                    planes[c, h, w] = source[c]


@_compile
def _input_tiles(x, out, first):
    """V = B^T d B of each 4x4 tile d of ``x`` (N, C, H, W) padded by a zero on each side,
    tile (i, j) at rows 2i to 2i + 3 and columns 2j to 2j + 3 of the padded map, into
    ``out`` (16, (first + N * tiles) * C + ...), tile (n, i, j)'s channels at run first + n
    * tiles + i * columns + j. B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0,
    -1]]."""
    n, channels, height, width = x.shape
    tile_rows, tile_columns = (height + 1) // 2, (width + 1) // 2
    padded = np.zeros((2 * tile_rows + 2, 2 * tile_columns + 2, channels), np.float32)
    rows = np.empty((4, 2 * tile_columns + 2, channels), np.float32)
    for s in range(n):
        _to_channels_last(x[s], padded, 1, 1)
        t = first + s * tile_rows * tile_columns
        for i in range(tile_rows):
            d0, d1, d2, d3 = padded[2 * i], padded[2 * i + 1], padded[2 * i + 2], \
                padded[2 * i + 3]
            for q in range(2 * tile_columns + 2):  # B^T d, every column of the tile row
                for c in range(channels):
                    rows[0, q, c] = d0[q, c] - d2[q, c]
                    rows[1, q, c] = d1[q, c] + d2[q, c]
                    rows[2, q, c] = d2[q, c] - d1[q, c]
                    rows[3, q, c] = d1[q, c] - d3[q, c]
            for j in range(tile_columns):  # then times B
                for a in range(4):
                    r0, r1, r2, r3 = rows[a, 2 * j], rows[a, 2 * j + 1], rows[a, 2 * j + 2], \
                        rows[a, 2 * j + 3]
                    o0 = out[4 * a, t * channels:(t + 1) * channels]
                    o1 = out[4 * a + 1, t * channels:(t + 1) * channels]
                    o2 = out[4 * a + 2, t * channels:(t + 1) * channels]
                    o3 = out[4 * a + 3, t * channels:(t + 1) * channels]
                    for c in range(channels):
                        o0[c] = r0[c] - r2[c]
                        o1[c] = r1[c] + r2[c]
                        o2[c] = r2[c] - r1[c]
                        o3[c] = r1[c] - r3[c]
                t += 1


@_compile
def _output_tiles(m, y, first):
    """Y = A^T M A of each tile of ``m`` (16, (first + N * tiles) * O + ...) into its 2x2
    block of ``y`` (N, O, H, W), as ``_input_tiles`` numbers them; A^T = [[1, 1, 1, 0], [0,
    1, -1, -1]]."""
    n, channels, height, width = y.shape
    tile_rows, tile_columns = (height + 1) // 2, (width + 1) // 2
    block = np.empty((2 * tile_rows, 2 * tile_columns, channels), np.float32)
    r = np.empty((2, 4, channels), np.float32)
    for s in range(n):
        t = first + s * tile_rows * tile_columns
        for i in range(tile_rows):
            for j in range(tile_columns):
                run = slice(t * channels, (t + 1) * channels)
                for b in range(4):  # A^T M, column by column
                    m0, m1, m2, m3 = m[b, run], m[4 + b, run], m[8 + b, run], m[12 + b, run]
                    for c in range(channels):
                        r[0, b, c] = m0[c] + m1[c] + m2[c]
                        r[1, b, c] = m1[c] - m2[c] - m3[c]
                for a in range(2):  # then times A
                    left, right = block[2 * i + a, 2 * j], block[2 * i + a, 2 * j + 1]
                    for c in range(channels):
                        left[c] = r[a, 0, c] + r[a, 1, c] + r[a, 2, c]
                        right[c] = r[a, 1, c] - r[a, 2, c] - r[a, 3, c]
                t += 1
        _from_channels_last(block, 0, 0, y[s])


@_compile
def _gradient_tiles(dy, out, first):
    """dM = A dY A^T of each 2x2 block of ``dy`` (N, O, H, W) (zero past an odd edge), into
    ``out`` (16, (first + N * tiles) * O + ...) as ``_input_tiles`` numbers the tiles."""
    n, channels, height, width = dy.shape
    tile_rows, tile_columns = (height + 1) // 2, (width + 1) // 2
    block = np.zeros((2 * tile_rows, 2 * tile_columns, channels), np.float32)
    e = np.empty((4, 2, channels), np.float32)
    for s in range(n):
        _to_channels_last(dy[s], block, 0, 0)
        t = first + s * tile_rows * tile_columns
        for i in range(tile_rows):
            for j in range(tile_columns):
                for b in range(2):  # A dY, column by column
                    y0, y1 = block[2 * i, 2 * j + b], block[2 * i + 1, 2 * j + b]
                    for c in range(channels):
                        e[0, b, c] = y0[c]
                        e[1, b, c] = y0[c] + y1[c]
                        e[2, b, c] = y0[c] - y1[c]
                        e[3, b, c] = -y1[c]
                for a in range(4):  # then times A^T
                    o0 = out[4 * a, t * channels:(t + 1) * channels]
                    o1 = out[4 * a + 1, t * channels:(t + 1) * channels]
                    o2 = out[4 * a + 2, t * channels:(t + 1) * channels]
                    o3 = out[4 * a + 3, t * channels:(t + 1) * channels]
                    for c in range(channels):
                        o0[c] = e[a, 0, c]
                        o1[c] = e[a, 0, c] + e[a, 1, c]
                        o2[c] = e[a, 0, c] - e[a, 1, c]
                        o3[c] = -e[a, 1, c]
                t += 1


@_compile
def _input_gradient(dv, dx, first):
    """The input's gradient from each tile's dV in ``dv`` (16, (first + N * tiles) * C +
    ...): B dV B^T added into the tile's 4x4 window of the padded map, the padding dropped,
    into ``dx`` (N, C, H, W)."""
    n, channels, height, width = dx.shape
    tile_rows, tile_columns = (height + 1) // 2, (width + 1) // 2
    padded = np.empty((2 * tile_rows + 2, 2 * tile_columns + 2, channels), np.float32)
    p = np.empty((4, 4, channels), np.float32)
    for s in range(n):
        padded[:] = 0
        t = first + s * tile_rows * tile_columns
        for i in range(tile_rows):
            for j in range(tile_columns):
                run = slice(t * channels, (t + 1) * channels)
                for b in range(4):  # B dV, column by column
                    v0, v1, v2, v3 = dv[b, run], dv[4 + b, run], dv[8 + b, run], dv[12 + b, run]
                    for c in range(channels):
                        p[0, b, c] = v0[c]
                        p[1, b, c] = v1[c] - v2[c] + v3[c]
                        p[2, b, c] = v1[c] + v2[c] - v0[c]
                        p[3, b, c] = -v3[c]
                for a in range(4):  # then times B^T, added into the window
                    w0, w1 = padded[2 * i + a, 2 * j], padded[2 * i + a, 2 * j + 1]
                    w2, w3 = padded[2 * i + a, 2 * j + 2], padded[2 * i + a, 2 * j + 3]
                    for c in range(channels):
                        w0[c] += p[a, 0, c]
                        w1[c] += p[a, 1, c] - p[a, 2, c] + p[a, 3, c]
                        w2[c] += p[a, 1, c] + p[a, 2, c] - p[a, 0, c]
                        w3[c] -= p[a, 3, c]
                t += 1
        _from_channels_last(padded, 1, 1, dx[s])


def load() -> None:
    """Compile the loops now (or load them from the cache), not on their first run: a
    convolution of one 2x2 map, and its backward."""
    x = np.zeros((1, 1, 2, 2), np.float32)
    _, backward = conv(x, np.zeros((1, 1, 3, 3), np.float32), True)
    backward(np.zeros_like(x))
