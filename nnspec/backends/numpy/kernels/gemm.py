"""Large float32 matrix products on the register tiles where NumPy's BLAS runs narrower
vectors than the CPU has.

OpenBLAS picks its kernels by the CPU it finds, unless ``OPENBLAS_CORETYPE`` names one, and
some machines name an older core than they have (this project's AMD EPYC machines set
Haswell: AVX2 kernels on a CPU with AVX-512). NumPy's products then run at about half the
core's rate: 1024 x 1024 x 1024 at 230-260 GFLOP/s on two cores, against 415-506 with
OpenBLAS's own choice (SkylakeX); torch's kernels pick their vectors themselves. The
register tiles (``tiled.stepped_product``, ``tiled.strided_product``), which LLVM compiles
for the CPU at hand, run them at 390-455 GFLOP/s, the right operand copied into panels
each call (AMD EPYC, two cores: an LSTM's input projection, 2048 x 512 x 2048, 455 against
239; its weight gradient, 2048 x 2048 x 1026, 409 against 244; its input gradient 440
against 241). So where OpenBLAS runs without AVX-512 on a CPU that has it, the products
large enough to carry the copy (``MIN_MULTIPLY_ADDS``) and wide enough to fill the tiles'
vectors (``MIN_COLUMNS``) go to the tiles; everywhere else NumPy's BLAS keeps them (with
OpenBLAS's own choice the two are within 10% of each other either way).

The left operand is read where it lies, any strides: a transposed one (a weight
gradient's dy.T) a read's rows one run of floats, a C-ordered one each row a run of reads.
The right operand is read where it lies when its rows are short (``IN_PLACE_MOST_COLUMNS``),
else copied into panels of ``PANEL_WIDTH`` columns (a transposed one by ``blas.transpose``,
a panel at a time: NumPy's copy would walk it across its rows). Where a transposed right
operand is the longer one, the product runs turned (``_turn_pays``), and the tiles take a
product only where what they copy pays for itself (``_copies_pay``).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from . import blas, tiled, workers
from .blas import address
from .workers import part_range

# OpenBLAS's cores whose float32 kernels use AVX-512 (``openblas_get_corename``'s names)
AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
# below this the panels' copy and the call's Python (20-40 us) cost what the tiles save
MIN_MULTIPLY_ADDS = 1 << 22
# fewer columns than two of a tile's three vectors leave most of its lanes masked; from
# there the tiles beat the narrow BLAS (the parts then split the rows): 2048 x 512 by 512 x
# n at n = 32, 48, 64, 96, 128: 261, 377, 300, 460, 405 GFLOP/s against 203-245; 4608 x
# 512 by 512 x 32 (ResNet-18's 512-channel layers on 1x1 maps at batch 32) 235 against
# 142; at n = 16 within 20% either way
MIN_COLUMNS = 2 * tiled.LANES
# products narrower than a panel (``PANEL_WIDTH``) need four times the multiply-adds: their
# tiles do less a call for the same set-up (MobileNet's 1x1 weight gradients at batch 32,
# 256 x 512 by 512 x 64 and 192 x 2048 by 2048 x 32: 0.10 and 0.17 ms on the tiles against
# 0.08 and 0.14 on BLAS; its step 0.86-0.98 of torch's with them on BLAS, 0.96-1.01 on
# the tiles, over three interleaved runs)
MIN_NARROW_MULTIPLY_ADDS = 4 * MIN_MULTIPLY_ADDS
# columns per panel of the right operand (a tile's reads one run of 192 floats after
# another; a tile's own panels measured no faster)
PANEL_WIDTH = 4 * tiled.TILE
# the right operand is read where it lies when its rows are at most this long (a dense
# layer's weight gradient, 65 x 2048 x 256: 257 -> 355 GFLOP/s, no copy); longer rows, a
# page apart or more, read slower than panels (2048 x 2048 x 578: 392 -> 308)
IN_PLACE_MOST_COLUMNS = 256
# multiply-adds each copied float must take part in (the rows of a, for a copy of b) for the
# tiles to beat NumPy's narrow BLAS, which copies nothing whole: a C-ordered b into panels
# broke even at 24 rows for a 1024 x 1024 b, 50 for 3072 x 768, 90-128 for 2048 x 2048 to
# 4096 x 1024 and 150-190 for 4096 x 4096 and 25088 x 512; at 8-32 rows a transposed
# 4096 x 4096 b, copied twice, ran at a fifth to a third of BLAS's rate (a dense layer's
# forward at batch 8: VGG-16's classifier)
ROWS_PER_COPY = 32
ROWS_PER_LARGE_COPY = 128
LARGE_COPY = 1 << 21  # floats (8 MB): copies larger than this stream from memory
# rows a part runs over every tile of its columns before the next block of them: the block's
# reads of the left operand stay in the core's L2 while the tiles read theirs (an LSTM's
# weight gradient 2048 x 2048 x 1026: 357 -> 390-405 GFLOP/s, against one tile group of
# the panel at a time over all the rows)
ROW_BLOCK = 1024


@functools.cache
def blas_is_narrow() -> bool:
    """Whether NumPy's OpenBLAS runs kernels without AVX-512 on a CPU with it (the tiles'
    vectors are 16 floats only where the CPU has AVX-512)."""
    if tiled.LANES != 16:
        return False
    library = blas.library()
    corename = getattr(library, "scipy_openblas_get_corename64_", None)
    if corename is None:
        return False
    corename.argtypes = []
    corename.restype = ctypes.c_char_p
    return (corename() or b"").decode().strip().lower() not in AVX512_CORES


def _tiles_pay(a, b, out) -> bool:
    if a.ndim != 2 or b.ndim != 2:
        return False
    (m, k), n = a.shape, b.shape[1]
    return panels_pay(m, k, n) and _copies_pay(a, b) and \
        a.dtype == np.float32 and b.dtype == np.float32 and \
        (out is None or out.dtype == np.float32 and out.strides[1] == 4 and
         out.strides[0] % 4 == 0 and out.strides[0] >= 4 * n and out.flags.writeable)


_PARAMETERS = 14


@workers.Task
def _products_job(args, range_m, range_n, sa, sb, part):
    """params (parts, out, its stride, rows, panels, the panels' offsets, the left operand,
    the steps between its columns, reads, length, whether the products add to out, 1
    where the parts split the rows, not the columns, the step between its rows): out =
    a @ b on the tiles. A part runs a block of ``tiled.READ_BLOCK`` reads at a time, and in
    it ``ROW_BLOCK`` rows at a time over every tile of its columns."""
    params = workers.parameters(args, _PARAMETERS)
    out, stride, out_rows, x, offsets = params[1], params[2], params[3], params[4], params[5]
    weights, weights_step, reads, length = params[6], params[7], params[8], params[9]
    row_step, panel = params[12], params[13]
    tiles = (length + tiled.TILE - 1) // tiled.TILE
    first, end, row_start, row_end = 0, tiles, 0, out_rows
    if params[11]:
        blocks = (out_rows + tiled.ROWS - 1) // tiled.ROWS
        row_start, row_end = part_range(blocks, part, params[0], 1)
        row_start, row_end = row_start * tiled.ROWS, min(out_rows, row_end * tiled.ROWS)
    else:
        first, end = part_range(tiles, part, params[0], 1)
    for read in range(0, reads, tiled.READ_BLOCK):
        count = min(tiled.READ_BLOCK, reads - read)
        for chunk in range(row_start, row_end, ROW_BLOCK):
            chunk_end = min(row_end, chunk + ROW_BLOCK)
            for tile in range(first, end):
                position = tile * tiled.TILE
                index = position // panel
                tile_x = x + 4 * (index * panel * (reads - 1) + position)
                masked = position + tiled.TILE > length
                row = chunk
                while row < chunk_end:
                    rows = min(chunk_end - row, tiled.ROWS)
                    shape, tile_out = 2 * (rows - 1) + masked, out + 4 * (row * stride + position)
                    tile_weights = weights + 4 * (read * weights_step + row * row_step)
                    if row_step == 1:  # a transposed matrix: a read's rows one run of floats
                        tiled.stepped_product(shape, tile_out, stride, tile_x, offsets + 8 * read,
                                              tile_weights, weights_step, count,
                                              length - position, read + params[10])
                    else:
                        tiled.strided_product(shape, tile_out, stride, tile_x, offsets + 8 * read,
                                              tile_weights, weights_step, row_step, count,
                                              length - position, read + params[10])
                    row += rows
    return 0


def load() -> None:
    """Compile the job now (or load it from the cache), not on its first run."""
    _products_job.load()


def _split_rows(rows, tiles, parts) -> bool:
    """Whether the parts share the rows (each reading all of b) rather than the tiles of
    columns (each reading all of a): whichever leaves the busier part less to do."""
    blocks = -(-rows // tiled.ROWS)
    return -(-blocks // parts) * parts * tiles < -(-tiles // parts) * parts * blocks


def _copies_pay(a, b) -> bool:
    """Whether each float the tiles copy (``_copied_floats``, either way round) takes part
    in enough multiply-adds to repay its copy: ``ROWS_PER_COPY``, or ``ROWS_PER_LARGE_COPY``
    where the copies pass ``LARGE_COPY``."""
    (m, k), n = a.shape, b.shape[1]
    copied = _turned_floats(a, b) if _turn_pays(a, b) else \
        _copied_floats(k, n, _is_transposed(b))
    rows = ROWS_PER_LARGE_COPY if copied > LARGE_COPY else ROWS_PER_COPY
    return m * k * n >= rows * copied


def _copied_floats(rows, columns, transposed) -> int:
    """Floats ``_product`` copies of a right operand: into panels, or transposed."""
    return rows * columns * int(transposed or columns > IN_PLACE_MOST_COLUMNS)


def _is_transposed(matrix) -> bool:
    return matrix.strides[0] == 4 and not matrix.flags.c_contiguous


def _transposed_panels(b):
    """``tiled.panels`` of a transposed matrix, each panel transposed from its rows of b.T
    (``blas.transpose``): one copy, not a C-ordered one and then the panels (a
    convolution's weight gradient on 512-channel columns, 256 x 4608: its transient
    copies 9 -> 4.5 MB)."""
    reads, length = b.shape
    out = tiled.empty_panels(reads, length, PANEL_WIDTH)
    rows = b.T
    for index, first in enumerate(range(0, length, PANEL_WIDTH)):
        block = rows[first:first + PANEL_WIDTH]
        blas.transpose(block, out=out[index, :, :len(block)])
    return out


def _turn_pays(a, b) -> bool:
    """Whether out.T = b.T @ a.T copies fewer floats than out = a @ b, its output through a
    transposed copy and back (an accumulated one turned first): a transposed right operand
    longer than the left one (a convolution's weight gradient dy @ columns.T, 128 x 4096 x
    1152: its columns transposed and then in panels, two copies of 19 MB, 10.4 ms; turned,
    dy's 2 MB, 3.5 ms)."""
    (m, k), n = a.shape, b.shape[1]
    if not _is_transposed(b) or m < tiled.TILE:
        return False
    return _turned_floats(a, b) < _copied_floats(k, n, True)


def _turned_floats(a, b) -> int:
    """Floats copied turned: a.T's, then out's transposed copy and back."""
    (m, k), n = a.shape, b.shape[1]
    return _copied_floats(k, m, _is_transposed(a.T)) + 2 * m * n


def _tiles(a, b, out, accumulate):
    """out = a @ b (or out += it) on the tiles, turned where that copies less."""
    if not _turn_pays(a, b):
        _product(a, b, out, accumulate)
        return
    turned = np.empty(out.shape[::-1], np.float32)
    if accumulate:
        blas.transpose(out, out=turned)
    _product(b.T, a.T, turned, accumulate)
    blas.transpose(turned, out=out)


def _product(a, b, out, accumulate):
    """out = a @ b (or out += it) on the tiles, ``_products_job``'s way."""
    n = b.shape[1]
    if _is_transposed(b) and n > IN_PLACE_MOST_COLUMNS:
        panels, panel = _transposed_panels(b), PANEL_WIDTH
    else:
        if _is_transposed(b):  # C-ordered first (NumPy's copy walks it across its rows)
            b = blas.transpose(b.T)
        row = b.strides[0] // 4
        if b.strides[1] == 4 and b.strides[0] % 4 == 0 and n <= row <= IN_PLACE_MOST_COLUMNS:
            panels, panel = b, row  # read in place: one panel, b's rows
        else:
            panels, panel = tiled.panels(b, PANEL_WIDTH), PANEL_WIDTH
    del b  # a transposed matrix's copy, once in panels, is not kept through the product
    _on_panels(a, panels, panel, n, out, accumulate)


def _on_panels(a, panels, panel, n, out, accumulate):
    """out = a @ b (or out += it), b (k, n) read from ``panels`` of ``panel`` columns."""
    m, k = a.shape
    if a.strides[0] % 4 or a.strides[1] % 4 or min(a.strides) < 0:
        a = np.ascontiguousarray(a)
    offsets = np.arange(k, dtype=np.int64) * panel
    tiles = -(-n // tiled.TILE)
    parts = workers.parts()
    params = np.array([parts, address(out), out.strides[0] // 4, m, address(panels),
                       address(offsets), address(a), a.strides[1] // 4, k, n,
                       int(accumulate), int(_split_rows(m, tiles, parts)), a.strides[0] // 4,
                       panel], np.int64)
    workers.run(_products_job, params)


def panels_pay(m, k, n) -> bool:
    """Whether an (m, k) by (k, n) float32 product runs on the tiles when its right operand
    can be made straight into their panels (``matmul_on_panels``), so that nothing is
    copied (``_tiles_pay`` asks this and then whether its copies pay): where BLAS is narrow,
    the product wide and large enough (a weight gradient's columns,
    ``columns.gather_panels``: 256 x 1024 x 1152, a strided layer's, 1.64 -> 1.26 ms on two
    cores, 369 -> 479 GFLOP/s; 512 x 512 x 2304 3.21 -> 2.50)."""
    least = MIN_MULTIPLY_ADDS if n >= PANEL_WIDTH else MIN_NARROW_MULTIPLY_ADDS
    return blas_is_narrow() and n >= MIN_COLUMNS and m * k * n >= least


def matmul_on_panels(a, panels, n, out):
    """out = a @ b for float32 a (m, k) and b (k, n) given as ``tiled.empty_panels(k, n,
    PANEL_WIDTH)`` lays it out (``panels_pay``); out C-ordered (m, n) float32."""
    if panels.shape[1:] != (a.shape[1], PANEL_WIDTH) or len(panels) != -(-n // PANEL_WIDTH) \
            or out.shape != (a.shape[0], n) or out.strides[1] != 4 or a.dtype != np.float32 \
            or out.dtype != np.float32:
        raise ValueError(f"matmul_on_panels: a {a.shape}, panels {panels.shape} of {n} "
                         f"columns, out {out.shape}")
    _on_panels(a, panels, PANEL_WIDTH, n, out, accumulate=False)
    return out


def matmul(a, b, out=None):
    """a @ b (into ``out`` when given, which must not share memory with a or b)."""
    if not _tiles_pay(a, b, out):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), np.float32)
    _tiles(a, b, out, accumulate=False)
    return out


def add_product(a, b, out):
    """out += a @ b, as ``blas.add_product``."""
    if _tiles_pay(a, b, out):
        _tiles(a, b, out, accumulate=True)
    else:
        blas.add_product(a, b, out)
