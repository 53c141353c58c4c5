"""Large float32 matrix products on the register tiles where NumPy's BLAS runs narrower
vectors than the CPU has.

OpenBLAS picks its kernels by the CPU it finds, unless ``OPENBLAS_CORETYPE`` names one, and
some machines name an older core than they have (this project's AMD EPYC machines set
Haswell: AVX2 kernels on a CPU with AVX-512). NumPy's products then run at about half the
core's rate: 1024 x 1024 x 1024 at 230-260 GFLOP/s on two cores, against 415-506 with
OpenBLAS's own choice (SkylakeX) and 500 on ``tiled.Product``'s tiles, which LLVM compiles
for the CPU at hand; with their operands packed each call 430-480 (2048 x 513 x 2048, an
LSTM's input projection: 483 against 252). Torch's kernels pick their vectors themselves.
So where OpenBLAS runs without AVX-512 on a CPU that has it, the products large enough to
carry the packing (``MIN_MULTIPLY_ADDS``) and wide enough to split between the cores by
their columns (``MIN_COLUMNS``) go to the tiles; everywhere else, and with OpenBLAS's own
choice, NumPy's BLAS keeps them (there the two are within 10% of each other either way).
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
# below this the packing and the call's Python (20-40 us) cost what the tiles would save
MIN_MULTIPLY_ADDS = 1 << 22
# columns below this leave a core with a sliver (a product's parts split its columns by
# tiles of ``tiled.TILE``)
MIN_COLUMNS = 4 * tiled.TILE
# a part's own product (inside ``workers.in_parts``) wastes a masked tile's lanes only
MIN_COLUMNS_ONE_PART = 2 * tiled.TILE
# columns per panel of the right operand
PANEL_WIDTH = 4 * tiled.TILE


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
    if not blas_is_narrow() or a.ndim != 2 or b.ndim != 2:
        return False
    (m, k), n = a.shape, b.shape[1]
    return n >= (MIN_COLUMNS if workers.parts() > 1 else MIN_COLUMNS_ONE_PART) and m * k * n >= MIN_MULTIPLY_ADDS and \
        a.dtype == np.float32 and b.dtype == np.float32 and \
        (out is None or out.dtype == np.float32 and out.strides[1] == 4 and
         out.strides[0] % 4 == 0 and out.strides[0] >= 4 * n and out.flags.writeable)


_PARAMETERS = 11


@workers.Task
def _in_place_job(args, range_m, range_n, sa, sb, part):
    """params (parts, out, its stride, rows, panels, the panels' offsets, the left operand,
    the step between its columns, reads, length, whether the products add to out): a
    product whose left operand is a transposed matrix, read where it lies, its rows
    consecutive floats (``tiled.stepped_product``): its columns need no packing. Every
    part takes blocks of tiles within one panel and runs every row over them."""
    params = workers.parameters(args, _PARAMETERS)
    out, stride, out_rows, x, offsets = params[1], params[2], params[3], params[4], params[5]
    weights, weights_step, reads, length = params[6], params[7], params[8], params[9]
    panel = PANEL_WIDTH
    tiles = (length + tiled.TILE - 1) // tiled.TILE
    start, end = part_range(tiles, part, params[0], 1)
    first = start
    while first < end:
        index = first * tiled.TILE // panel
        last = min(end, (index + 1) * panel // tiled.TILE)
        block_x = x + 4 * index * panel * (reads - 1)
        for read in range(0, reads, tiled.READ_BLOCK):
            count = min(tiled.READ_BLOCK, reads - read)
            row = 0
            while row < out_rows:
                rows = min(out_rows - row, tiled.ROWS)
                position, block_end = first * tiled.TILE, min(last * tiled.TILE, length)
                while position < block_end:
                    tiled.stepped_product(
                        2 * (rows - 1) + (position + tiled.TILE > block_end),
                        out + 4 * (row * stride + position), stride, block_x + 4 * position,
                        offsets + 8 * read, weights + 4 * (read * weights_step + row),
                        weights_step, count, block_end - position, read + params[10])
                    position += tiled.TILE
                row += rows
        first = last
    return 0


def _tiles(a, b, out, accumulate):
    m, k = a.shape
    n = b.shape[1]
    if not b.flags.c_contiguous and b.strides[0] == 4:  # a transposed matrix: NumPy's copy
        b = blas.transpose(b.T)  # into panels would walk it across its rows
    panels = tiled.panels(b, PANEL_WIDTH)
    if a.strides[0] == 4 and a.strides[1] % 4 == 0:  # a transposed matrix, read in place
        offsets = np.arange(k, dtype=np.int64) * PANEL_WIDTH
        parts = min(workers.parts(), -(-n // tiled.TILE))
        params = np.array([parts, address(out), out.strides[0] // 4, m, address(panels),
                           address(offsets), address(a), a.strides[1] // 4, k, n,
                           int(accumulate)], np.int64)
        workers.run(_in_place_job, params)
        return
    packed = tiled.pack_rows(a)
    product = tiled.Product(m, out.strides[0] // 4, panels, n, accumulate=accumulate)
    product.add(address(out), address(packed))


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
