"""Register-tiled products over shifted reads, compiled, on both cores: the convolutions'
products without BLAS.

A convolution over a flattened frame (``conv._shifted``) is a product whose operand rows
are shifted reads of one buffer: out[m, p] = sum_j weights[m, j] * x[offsets[j] + p]. BLAS
can only take such rows as one product per kernel offset, each with as many rows as the
layer has channels, and OpenBLAS runs those skinny products (16 x 16 by 16 x 37k) at
110-140 GFLOP/s on two cores; the tile here keeps ``ROWS`` x ``VECTORS`` vectors of outputs in
registers while it runs over every (offset, channel) row, one vector load and ``ROWS``
broadcast multiply-adds per row and vector, and reaches the core's peak (157 GFLOP/s on one
core on ResNet-20's 16-channel layer, against 76 for the products on two). The weight
gradient is the other product, a sum over positions: sums[j, m] = sum_p x[offsets[j] + p] *
dy[m, p], tiled ``SUM_ROWS`` x ``SUM_COLUMNS`` with vectors along the positions.

The tiles are LLVM IR written here (``numba.extending.intrinsic``): numba vectorises loops but
does not keep a tile of sums in registers across a loop. The vectors are 16 floats where the
CPU has AVX-512 and 8 otherwise (LLVM splits them to what the CPU has), the tiles fitting
the registers either way. Tiles at the end of a row are masked, so no buffer needs slack.
"""

from __future__ import annotations

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import workers
from .workers import part_range

_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)

LANES = 16 if "+avx512f" in llvmlite.binding.get_host_cpu_features().flatten() else 8
# a product tile: ROWS output rows by VECTORS vectors of positions (24 sums in AVX-512's 32
# registers; 12 of 16 with AVX2)
ROWS = 8 if LANES == 16 else 4
VECTORS = 3
TILE = LANES * VECTORS
# a sum tile: SUM_ROWS reads of x by SUM_COLUMNS rows of dy
SUM_ROWS, SUM_COLUMNS = (6, 4) if LANES == 16 else (3, 4)
# positions per block of the sums: each tile then ends with a horizontal sum per entry
# (under 10% of its work) and its rows stay in the core's caches
SUM_BLOCK = 512
# tiles per block of positions in the products: the block's rows of x stay in cache while
# every block of output rows reads them
PRODUCT_BLOCK_TILES = 8


class _Emitter:
    """The IR of one tile, on numba's builder."""

    def __init__(self, builder):
        self.builder = builder
        self.vector = ir.VectorType(_F32, LANES)
        module = builder.module
        self.fma = cgutils.get_or_insert_function(
            module, ir.FunctionType(self.vector, [self.vector] * 3), f"llvm.fma.v{LANES}f32")
        mask = ir.VectorType(_I1, LANES)
        self.masked_load = cgutils.get_or_insert_function(
            module, ir.FunctionType(self.vector, [self.vector.as_pointer(), _I32, mask,
                                                  self.vector]),
            f"llvm.masked.load.v{LANES}f32.p0")
        self.masked_store = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [self.vector, self.vector.as_pointer(),
                                                    _I32, mask]),
            f"llvm.masked.store.v{LANES}f32.p0")
        self.zero = ir.Constant(self.vector, None)

    def int(self, value):
        return ir.Constant(_I64, value)

    def floats(self, address):
        return self.builder.inttoptr(address, _F32.as_pointer())

    def at(self, pointer, index):
        return self.builder.gep(pointer, [index])

    def vector_at(self, pointer, index):
        return self.builder.bitcast(self.at(pointer, index), self.vector.as_pointer())

    def mask(self, count, first):
        """Lanes first, first + 1, ... that lie below ``count``."""
        builder = self.builder
        lanes = ir.Constant(ir.VectorType(_I64, LANES), [first + lane for lane in range(LANES)])
        limit = builder.insert_element(ir.Constant(ir.VectorType(_I64, LANES), None), count,
                                       ir.Constant(_I32, 0))
        limit = builder.shuffle_vector(limit, limit, ir.Constant(ir.VectorType(_I32, LANES),
                                                                 [0] * LANES))
        return builder.icmp_signed("<", lanes, limit)

    def load(self, pointer, index, mask=None):
        if mask is None:
            return self.builder.load(self.vector_at(pointer, index), align=4)
        return self.builder.call(self.masked_load, [self.vector_at(pointer, index),
                                                    ir.Constant(_I32, 4), mask, self.zero])

    def store(self, value, pointer, index, mask=None):
        if mask is None:
            self.builder.store(value, self.vector_at(pointer, index), align=4)
        else:
            self.builder.call(self.masked_store, [value, self.vector_at(pointer, index),
                                                  ir.Constant(_I32, 4), mask])

    def splat(self, scalar):
        builder = self.builder
        one = builder.insert_element(ir.Constant(self.vector, ir.Undefined), scalar,
                                     ir.Constant(_I32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, LANES),
                                                            [0] * LANES))

    def total(self, value):
        """The sum of a vector's lanes, halving it (a tree, not in order)."""
        builder = self.builder
        width = LANES
        while width > 1:
            width //= 2
            low = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(_I32, width),
                                                                   list(range(width))))
            high = builder.shuffle_vector(value, value, ir.Constant(
                ir.VectorType(_I32, width), list(range(width, 2 * width))))
            value = builder.fadd(low, high)
        return builder.extract_element(value, ir.Constant(_I32, 0))

    def loop(self, count, carried, body):
        """``carried`` vectors through ``body(index, carried) -> carried`` for index in
        range(count); returns the last ones (``carried`` when count is 0)."""
        builder = self.builder
        entry = builder.block
        head = builder.append_basic_block("tile_loop")
        done = builder.append_basic_block("tile_done")
        builder.cbranch(builder.icmp_signed(">", count, self.int(0)), head, done)
        builder.position_at_end(head)
        index = builder.phi(_I64)
        index.add_incoming(self.int(0), entry)
        phis = []
        for value in carried:
            phi = builder.phi(value.type)
            phi.add_incoming(value, entry)
            phis.append(phi)
        results = body(index, phis)
        following = builder.add(index, self.int(1))
        tail = builder.block
        index.add_incoming(following, tail)
        for phi, value in zip(phis, results):
            phi.add_incoming(value, tail)
        builder.cbranch(builder.icmp_signed("<", following, count), head, done)
        builder.position_at_end(done)
        finals = []
        for start, value in zip(carried, results):
            phi = builder.phi(value.type)
            phi.add_incoming(start, entry)
            phi.add_incoming(value, tail)
            finals.append(phi)
        return finals


def _product_tile(rows, masked):
    """out[r, q] = sum_j weights[j, r] * x[offsets[j] + q] for r < rows, q < TILE (below
    ``count`` when ``masked``); weights (reads, rows) C-ordered, out rows ``stride`` apart."""

    @intrinsic
    def tile(typingctx, out, stride, x, offsets, weights, reads, count):
        signature = types.void(*(types.int64,) * 7)

        def codegen(context, builder, signature, args):
            out, stride, x, offsets, weights, reads, count = args
            emit = _Emitter(builder)
            x, weights = emit.floats(x), emit.floats(weights)
            offsets = builder.inttoptr(offsets, _I64.as_pointer())
            masks = [emit.mask(count, v * LANES) if masked else None for v in range(VECTORS)]

            def step(j, sums):
                offset = builder.load(emit.at(offsets, j))
                reads = [emit.load(x, builder.add(offset, emit.int(v * LANES)), masks[v])
                         for v in range(VECTORS)]
                first = builder.mul(j, emit.int(rows))
                updated = []
                for r in range(rows):
                    weight = emit.splat(builder.load(emit.at(weights, builder.add(
                        first, emit.int(r)))))
                    updated += [builder.call(emit.fma, [weight, reads[v], sums[r * VECTORS + v]])
                                for v in range(VECTORS)]
                return updated

            sums = emit.loop(reads, [emit.zero] * (rows * VECTORS), step)
            out = emit.floats(out)
            for r in range(rows):
                row = builder.mul(stride, emit.int(r))
                for v in range(VECTORS):
                    emit.store(sums[r * VECTORS + v], out, builder.add(row, emit.int(v * LANES)),
                               masks[v])
            return context.get_dummy_value()

        return signature, codegen

    return tile


def _sum_tile():
    """sums[r, c] += sum_p x[x_offsets[r] + p] * dy[dy_offsets[c] + p] for p < count, r <
    SUM_ROWS, c < SUM_COLUMNS; sums' rows ``stride`` apart. The last part vector is masked."""

    @intrinsic
    def tile(typingctx, sums, stride, x, x_offsets, dy, dy_offsets, count):
        signature = types.void(*(types.int64,) * 7)

        def codegen(context, builder, signature, args):
            sums, stride, x, x_offsets, dy, dy_offsets, count = args
            emit = _Emitter(builder)
            x, dy, sums = emit.floats(x), emit.floats(dy), emit.floats(sums)
            x_offsets = builder.inttoptr(x_offsets, _I64.as_pointer())
            dy_offsets = builder.inttoptr(dy_offsets, _I64.as_pointer())
            x_rows = [emit.at(x, builder.load(emit.at(x_offsets, emit.int(r))))
                      for r in range(SUM_ROWS)]
            dy_rows = [emit.at(dy, builder.load(emit.at(dy_offsets, emit.int(c))))
                       for c in range(SUM_COLUMNS)]

            def accumulate(position, totals, mask=None):
                xs = [emit.load(row, position, mask) for row in x_rows]
                dys = [emit.load(row, position, mask) for row in dy_rows]
                return [builder.call(emit.fma, [xs[r], dys[c], totals[r * SUM_COLUMNS + c]])
                        for r in range(SUM_ROWS) for c in range(SUM_COLUMNS)]

            whole = builder.sdiv(count, emit.int(LANES))
            totals = emit.loop(whole, [emit.zero] * (SUM_ROWS * SUM_COLUMNS),
                               lambda i, t: accumulate(builder.mul(i, emit.int(LANES)), t))
            rest = builder.sub(count, builder.mul(whole, emit.int(LANES)))
            position = builder.mul(whole, emit.int(LANES))
            before = builder.block
            with builder.if_then(builder.icmp_signed(">", rest, emit.int(0))):
                masked = accumulate(position, totals, emit.mask(rest, 0))
                last = builder.block
            joined = []
            for unmasked, value in zip(totals, masked):
                phi = builder.phi(value.type)
                phi.add_incoming(unmasked, before)
                phi.add_incoming(value, last)
                joined.append(phi)
            for r in range(SUM_ROWS):
                row = builder.mul(stride, emit.int(r))
                for c in range(SUM_COLUMNS):
                    pointer = emit.at(sums, builder.add(row, emit.int(c)))
                    builder.store(builder.fadd(builder.load(pointer),
                                               emit.total(joined[r * SUM_COLUMNS + c])),
                                  pointer)
            return context.get_dummy_value()

        return signature, codegen

    return tile


_tile_8, _tile_8_masked = _product_tile(8, False), _product_tile(8, True)
_tile_4, _tile_4_masked = _product_tile(4, False), _product_tile(4, True)
_tile_2, _tile_2_masked = _product_tile(2, False), _product_tile(2, True)
_tile_1, _tile_1_masked = _product_tile(1, False), _product_tile(1, True)
_sum = _sum_tile()


@numba.njit(inline="always")
def _block_rows(left):
    """Rows of the next block of outputs: ROWS, then halves for the last few."""
    rows = ROWS
    while rows > left:
        rows //= 2
    return rows


@numba.njit(inline="always")
def _product(rows, masked, out, stride, x, offsets, weights, reads, count):
    if rows == 8:
        if masked:
            _tile_8_masked(out, stride, x, offsets, weights, reads, count)
        else:
            _tile_8(out, stride, x, offsets, weights, reads, count)
    elif rows == 4:
        if masked:
            _tile_4_masked(out, stride, x, offsets, weights, reads, count)
        else:
            _tile_4(out, stride, x, offsets, weights, reads, count)
    elif rows == 2:
        if masked:
            _tile_2_masked(out, stride, x, offsets, weights, reads, count)
        else:
            _tile_2(out, stride, x, offsets, weights, reads, count)
    elif masked:
        _tile_1_masked(out, stride, x, offsets, weights, reads, count)
    else:
        _tile_1(out, stride, x, offsets, weights, reads, count)


@workers.Task
def _products_job(args, range_m, range_n, sa, sb, part):
    """params (parts, out, stride, out rows, x, offsets, packed weights, reads, length)."""
    params = workers.parameters(args, 9)
    out, stride, out_rows, x = params[1], params[2], params[3], params[4]
    offsets, weights, reads, length = params[5], params[6], params[7], params[8]
    tiles = (length + TILE - 1) // TILE
    start, end = part_range(tiles, part, params[0], 1)
    for first in range(start, end, PRODUCT_BLOCK_TILES):
        last = min(first + PRODUCT_BLOCK_TILES, end)
        row = 0
        while row < out_rows:
            rows = _block_rows(out_rows - row)
            for tile in range(first, last):
                position = tile * TILE
                _product(rows, position + TILE > length, out + 4 * (row * stride + position),
                         stride, x + 4 * position, offsets, weights + 4 * row * reads, reads,
                         length - position)
            row += rows
    return 0


@workers.Task
def _sums_job(args, range_m, range_n, sa, sb, part):
    """params (parts, sums, columns, x, x offsets, dy, dy offsets, rows, length); rows and
    columns are multiples of SUM_ROWS and SUM_COLUMNS."""
    params = workers.parameters(args, 9)
    sums, columns, x, x_offsets = params[1], params[2], params[3], params[4]
    dy, dy_offsets, rows, length = params[5], params[6], params[7], params[8]
    start, end = part_range(rows // SUM_ROWS, part, params[0], 1)
    mine = numba.carray(workers._pointer(sums + 4 * start * SUM_ROWS * columns),
                        ((end - start) * SUM_ROWS * columns,), dtype=np.float32)
    mine[:] = 0
    for first in range(0, length, SUM_BLOCK):
        count = min(SUM_BLOCK, length - first)
        for block in range(start, end):
            for column in range(0, columns, SUM_COLUMNS):
                _sum(sums + 4 * (block * SUM_ROWS * columns + column), columns, x + 4 * first,
                     x_offsets + 8 * block * SUM_ROWS, dy + 4 * first,
                     dy_offsets + 8 * column, count)
    return 0


def _pack(weights):
    """(M, reads) weights as the product tiles read them: each block of rows (``_block_rows``)
    transposed, (reads, rows), one after the other."""
    out_rows, reads = weights.shape
    packed = np.empty(out_rows * reads, np.float32)
    row = 0
    while row < out_rows:
        rows = ROWS
        while rows > out_rows - row:
            rows //= 2
        packed[row * reads:(row + rows) * reads] = weights[row:row + rows].T.ravel()
        row += rows
    return packed


def _check_reads(buffer, offsets, length):
    """The reads stay inside ``buffer`` (the tiles read raw memory)."""
    if len(offsets) and (offsets.min() < 0 or offsets.max() + length > buffer.size):
        raise ValueError(f"reads at {offsets.min()}..{offsets.max()} + {length} outside "
                         f"{buffer.size} floats")


def aligned_zeros(rows, width):
    """Zeros (rows, >= width) whose rows start at 64-byte boundaries: the sums read such
    rows 10-15% faster than rows that straddle cache lines."""
    padded = -(-width // 16) * 16
    buffer = np.zeros(rows * padded + 16, np.float32)
    start = (-buffer.ctypes.data % 64) // 4
    return buffer[start:start + rows * padded].reshape(rows, padded)


def products(out, x, offsets, weights, length):
    """out[m, p] = sum_j weights[m, j] * x.flat[offsets[j] + p] for p < length: ``out`` an
    (M, >= length) float32 array with unit stride along its rows, ``x`` C-ordered float32,
    ``offsets`` int64 (reads,), ``weights`` (M, reads)."""
    if out.strides[1] != 4 or out.shape[1] < length or out.dtype != np.float32:
        raise ValueError("products: out must be float32 rows with unit stride")
    if not x.flags.c_contiguous or x.dtype != np.float32:
        raise ValueError("products: x must be C-ordered float32")
    offsets = np.ascontiguousarray(offsets, np.int64)
    _check_reads(x, offsets, length)
    packed = _pack(np.asarray(weights, np.float32))
    parts = workers.parts() if length >= 2 * TILE else 1
    params = np.array([parts, out.ctypes.data, out.strides[0] // 4, out.shape[0], x.ctypes.data,
                       offsets.ctypes.data, packed.ctypes.data, len(offsets), length], np.int64)
    workers.run(_products_job, params)


def sums(x, x_offsets, dy, dy_offsets, length):
    """sums[j, m] = sum_p x.flat[x_offsets[j] + p] * dy.flat[dy_offsets[m] + p] for p <
    length, (reads, M) float32; ``x`` and ``dy`` C-ordered float32."""
    for array in (x, dy):
        if not array.flags.c_contiguous or array.dtype != np.float32:
            raise ValueError("sums: x and dy must be C-ordered float32")
    rows = -(-len(x_offsets) // SUM_ROWS) * SUM_ROWS
    columns = -(-len(dy_offsets) // SUM_COLUMNS) * SUM_COLUMNS
    # the tiles' spare rows and columns read the first ones' positions again
    x_reads = np.full(rows, x_offsets[0] if len(x_offsets) else 0, np.int64)
    x_reads[:len(x_offsets)] = x_offsets
    dy_reads = np.full(columns, dy_offsets[0] if len(dy_offsets) else 0, np.int64)
    dy_reads[:len(dy_offsets)] = dy_offsets
    _check_reads(x, x_reads, length)
    _check_reads(dy, dy_reads, length)
    out = np.empty((rows, columns), np.float32)
    parts = min(workers.parts(), rows // SUM_ROWS)
    params = np.array([max(parts, 1), out.ctypes.data, columns, x.ctypes.data,
                       x_reads.ctypes.data, dy.ctypes.data, dy_reads.ctypes.data, rows, length],
                      np.int64)
    workers.run(_sums_job, params)
    return out[:len(x_offsets), :len(dy_offsets)]


def load() -> None:
    """Compile the jobs now (or load them from the cache), not on their first run."""
    _products_job.load()
    _sums_job.load()
