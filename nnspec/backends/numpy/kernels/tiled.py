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
dy[m, p], tiled ``SUM_ROWS`` x ``SUM_COLUMNS`` with vectors along the positions, each tile
ending in sums across its lanes. From 32 channels and outputs a group it is a product like
the others (``_emit_gradient``): dy copied channels last, a position's outputs one to four
vectors, x's values broadcasts, the positions the loop (a 128-channel 16x16 layer's 200 ->
320 GFLOP/s).

A stride-1 convolution that keeps the map's size needs no frame at all: its reads are the
(C, H, W) map shifted by each tap's a * W + b, and a read past the map's edge is a masked
lane (``direct_products``; AVX-512 loads with a zeroing mask cost what plain ones do). A
vector there is 16 positions of one sample's plane and a tile's vectors may be of several
samples, so planes of any size fill the tiles (a 4x4 plane is one vector). Its weight
gradient masks each tap's reads by a table of bits (``direct_sums``).

The tiles are LLVM IR written here (``numba.extending.intrinsic``): numba vectorises loops but
does not keep a tile of sums in registers across a loop. The vectors are 16 floats where the
CPU has AVX-512 and 8 otherwise (LLVM splits them to what the CPU has), the tiles fitting
the registers either way (the 8-float build is tested by forcing it, not measured). Tiles
at the end of a row are masked, so no buffer needs slack. Every tile sums its reads in one
order whatever the split between the cores, so the parts give one core's bits.
"""

from __future__ import annotations

import functools
import math

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import blas, workers
from .blas import address
from .workers import part_range

_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)

LANES = 16 if llvmlite.binding.get_host_cpu_features().get("avx512f", False) else 8
# a product tile: ROWS output rows by VECTORS vectors of positions (24 sums in AVX-512's 32
# registers; 12 of 16 with AVX2)
ROWS = 8 if LANES == 16 else 4
VECTORS = 3
TILE = LANES * VECTORS
# a sum tile: SUM_ROWS reads of x by SUM_COLUMNS rows of dy; a narrow one for a single row
# of dy (a depthwise convolution's channel), NARROW_ROWS reads (a 3x3 kernel's taps)
SUM_ROWS, SUM_COLUMNS = (6, 4) if LANES == 16 else (3, 4)
NARROW_ROWS = 9
# positions per block of the sums: each tile then ends with a horizontal sum per entry
# (under 10% of its work) and its rows stay in the core's caches (256 to 4096 measured
# within 15%, 128 15-20% slower); in place, a small plane's samples go into one tile up to DIRECT_SUM_BLOCK
# positions together (a 64-channel 8x8 layer's weight gradient 1.75 -> 0.99 ms)
SUM_BLOCK = 512
DIRECT_SUM_BLOCK = 1024
# tiles per block of positions in the products: the block's rows of x stay in cache while
# every block of output rows reads them
PRODUCT_BLOCK_TILES = 8
# reads per pass over a block's tiles, each pass adding to the last's sums: the reads of
# many channels would not stay in the core's cache
READ_BLOCK = 576
# the most taps a convolution read in place may have (its masks are kept on the stack)
DIRECT_MAX_TAPS = 64
# a convolution read in place splits between the cores from this many vector multiply-adds
# (about 20 us on one core; a batch of one's 16-64 channel layers, forward, 60-80 -> 48-54
# us, backward 128-174 -> 110-147, where 2^18 had kept them on one core)
DIRECT_SPLIT_MIN_WORK = 1 << 17
# and reads transposed weights packed from this many vectors of positions
DIRECT_PACKED_MIN_UNITS = 64


class Emitter:
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

    def starting_sums(self, out, stride, rows, vectors, masks, accumulate):
        """A product tile's sums to start from: out's values (rows ``stride`` apart, lanes
        where ``masks``) where ``accumulate`` is not 0, else zeros."""
        builder = self.builder
        adding = builder.icmp_signed("!=", accumulate, self.int(0))
        starts = []
        for r in range(rows):
            row = builder.mul(stride, self.int(r))
            starts += [builder.select(adding, self.load(out, builder.add(
                row, self.int(v * LANES)), masks[v]), self.zero) for v in range(vectors)]
        return starts

    def multiply_add(self, weights, j, rows, reads, sums, step=None, row_step=None):
        """sums[r, v] + weights[j, r] * reads[v]: one read's step of a product tile, its
        weights (reads, rows), each read's rows ``step`` apart (an i64; C-ordered when
        None), a read's rows consecutive or ``row_step`` apart."""
        builder = self.builder
        first = builder.mul(j, self.int(rows) if step is None else step)
        updated = []
        for r in range(rows):
            row = self.int(r) if row_step is None else builder.mul(row_step, self.int(r))
            weight = self.splat(builder.load(self.at(weights, builder.add(first, row))))
            updated += [builder.call(self.fma, [weight, read, sums[r * len(reads) + v]])
                        for v, read in enumerate(reads)]
        return updated

    def store_rows(self, sums, out, stride, rows, vectors, masks):
        """A product tile's sums into out, rows ``stride`` apart, lanes where ``masks``."""
        builder = self.builder
        for r in range(rows):
            row = builder.mul(stride, self.int(r))
            for v in range(vectors):
                self.store(sums[r * vectors + v], out, builder.add(row, self.int(v * LANES)),
                           masks[v])

    def rows_at(self, base, offsets, count):
        """Pointers to base + offsets[i] for i < count, ``offsets`` an int64 address."""
        offsets = self.builder.inttoptr(offsets, _I64.as_pointer())
        return [self.at(base, self.builder.load(self.at(offsets, self.int(i))))
                for i in range(count)]

    def add_totals(self, sums, stride, totals, rows, columns):
        """sums[r, c] += the lanes of totals[r * columns + c] summed, rows ``stride`` apart."""
        builder = self.builder
        for r in range(rows):
            row = builder.mul(stride, self.int(r))
            for c in range(columns):
                pointer = self.at(sums, builder.add(row, self.int(c)))
                builder.store(builder.fadd(builder.load(pointer),
                                           self.total(totals[r * columns + c])), pointer)

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


def _emit_product(builder, rows, masked, out, stride, x, offsets, weights, reads, count,
                  accumulate, weights_step=None, vectors=VECTORS, row_step=None):
    """out[r, q] = sum_j weights[j, r] * x[offsets[j] + q] for r < rows, q < ``vectors`` *
    LANES (TILE), below ``count`` when ``masked``, added to out's values when
    ``accumulate`` is not 0; weights (reads, rows), C-ordered or with a read's rows
    ``weights_step`` apart (and a row's reads ``row_step``), out rows ``stride`` apart."""
    emit = Emitter(builder)
    x, weights, out = emit.floats(x), emit.floats(weights), emit.floats(out)
    offsets = builder.inttoptr(offsets, _I64.as_pointer())
    masks = [emit.mask(count, v * LANES) if masked else None for v in range(vectors)]
    starts = emit.starting_sums(out, stride, rows, vectors, masks, accumulate)

    def step(j, sums):
        offset = builder.load(emit.at(offsets, j))
        reads = [emit.load(x, builder.add(offset, emit.int(v * LANES)), masks[v])
                 for v in range(vectors)]
        return emit.multiply_add(weights, j, rows, reads, sums, weights_step, row_step)

    sums = emit.loop(reads, starts, step)
    emit.store_rows(sums, out, stride, rows, vectors, masks)


def _emit_direct(builder, rows, vectors, in_buffer, out, stride, x, plane, channels, weights,
                 row_step, channel_step, tap_step, taps_a, taps_b, taps_base, taps, units,
                 heights, widths, height, width, accumulate):
    """A tile of a stride-1 convolution read straight from (C, H, W) maps, no frame: out[r,
    v, q] = sum over taps k and channels c < ``channels`` of weights[r * row_step + c *
    channel_step + k * tap_step] * x[x_v + base_k + c * plane + a_k * width + b_k + q],
    zero where the read falls outside the map (base_k: where tap k's map starts, a stride
    phase's; 0 for a map read in place), for each of the tile's vectors v, whose (x offset
    x_v, out offset, first position) are ``units[3 v:3 v + 3]``: a vector is LANES positions of
    one sample's plane, and a tile's vectors may be of several samples (a 4x4 plane is one
    vector). ``heights[q]``, ``widths[q]`` are the positions' rows and columns (rows below
    zero past the plane: not written, and never read). The taps are the outer loop: a tap's
    masks are worked out once, and the loop over its channels is a frame tile's with a
    masked load; or, where every read of the tile lies in x's buffer (``in_buffer``: the
    caller knows), a plain load whose lanes outside the map the multiply-adds leave out (merge
    masking): a masked load costs a second micro-op on the ports the multiply-adds use, a
    masked multiply-add none (a 256-channel layer on 8x8 maps 344 -> 373 GFLOP/s). The
    weights are read where they lie, through their steps: the block's rows of a pass (ROWS x
    576 values) stay in the core's cache as packed ones would."""
    emit = Emitter(builder)
    i32 = ir.VectorType(_I32, LANES)
    x, weights, out = emit.floats(x), emit.floats(weights), emit.floats(out)
    taps_a = builder.inttoptr(taps_a, _I64.as_pointer())
    taps_base = builder.inttoptr(taps_base, _I64.as_pointer())
    taps_b = builder.inttoptr(taps_b, _I64.as_pointer())
    units = builder.inttoptr(units, _I64.as_pointer())
    heights = builder.inttoptr(heights, _I32.as_pointer())
    widths = builder.inttoptr(widths, _I32.as_pointer())

    def unit(v, field):
        return builder.load(emit.at(units, emit.int(3 * v + field)))

    def integers(pointer, v):
        return builder.load(builder.bitcast(emit.at(pointer, unit(v, 2)), i32.as_pointer()),
                            align=4)

    def splat32(value):
        one = builder.insert_element(ir.Constant(i32, ir.Undefined),
                                     builder.trunc(value, _I32), ir.Constant(_I32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(i32, [0] * LANES))

    zero32 = ir.Constant(i32, None)
    x_vectors = [emit.at(x, unit(v, 0)) for v in range(vectors)]
    out_vectors = [emit.at(out, unit(v, 1)) for v in range(vectors)]
    position_rows = [integers(heights, v) for v in range(vectors)]
    position_columns = [integers(widths, v) for v in range(vectors)]
    written = [builder.icmp_signed(">=", h, zero32) for h in position_rows]
    rows_limit, columns_limit = splat32(height), splat32(width)
    adding = builder.icmp_signed("!=", accumulate, emit.int(0))
    starts = [builder.select(adding, emit.load(out_vectors[v], builder.mul(stride, emit.int(r)),
                                               written[v]), emit.zero)
              for r in range(rows) for v in range(vectors)]

    def tap(k, sums):
        a, b = builder.load(emit.at(taps_a, k)), builder.load(emit.at(taps_b, k))
        a32, b32 = splat32(a), splat32(b)
        masks = []
        for v in range(vectors):
            h = builder.add(position_rows[v], a32)
            w = builder.add(position_columns[v], b32)
            inside = builder.and_(builder.icmp_signed(">=", h, zero32),
                                  builder.icmp_signed("<", h, rows_limit))
            inside = builder.and_(inside, builder.icmp_signed(">=", w, zero32))
            masks.append(builder.and_(inside, builder.icmp_signed("<", w, columns_limit)))
        shift = builder.add(builder.load(emit.at(taps_base, k)),
                            builder.add(builder.mul(a, width), b))
        x_taps = [emit.at(x_vector, shift) for x_vector in x_vectors]
        weights_tap = emit.at(weights, builder.mul(k, tap_step))

        def channel(c, sums):
            at = builder.mul(c, plane)
            reads = [emit.load(x_tap, at, None if in_buffer else mask)
                     for x_tap, mask in zip(x_taps, masks)]
            weights_channel = emit.at(weights_tap, builder.mul(c, channel_step))
            updated = []
            for r in range(rows):
                weight = emit.splat(builder.load(emit.at(
                    weights_channel, builder.mul(row_step, emit.int(r)))))
                for v, read in enumerate(reads):
                    total = sums[r * vectors + v]
                    added = builder.call(emit.fma, [weight, read, total])
                    updated.append(builder.select(masks[v], added, total) if in_buffer
                                   else added)
            return updated

        return emit.loop(channels, sums, channel)

    sums = emit.loop(taps, starts, tap)
    for r in range(rows):
        for v in range(vectors):
            emit.store(sums[r * vectors + v], out_vectors[v], builder.mul(stride, emit.int(r)),
                       written[v])


def _sum_tile(tile_rows, tile_columns):
    """sums[r, c] += sum_p x[x_offsets[r] + p] * dy[dy_offsets[c] + p] for p < count, r <
    tile_rows, c < tile_columns; sums' rows ``stride`` apart. The last part vector is
    masked."""

    @intrinsic
    def tile(typingctx, sums, stride, x, x_offsets, dy, dy_offsets, count):
        signature = types.void(*(types.int64,) * 7)

        def codegen(context, builder, signature, args):
            sums, stride, x, x_offsets, dy, dy_offsets, count = args
            emit = Emitter(builder)
            x, dy, sums = emit.floats(x), emit.floats(dy), emit.floats(sums)
            x_rows = emit.rows_at(x, x_offsets, tile_rows)
            dy_rows = emit.rows_at(dy, dy_offsets, tile_columns)

            def accumulate(position, totals, mask=None):
                xs = [emit.load(row, position, mask) for row in x_rows]
                dys = [emit.load(row, position, mask) for row in dy_rows]
                return [builder.call(emit.fma, [xs[r], dys[c], totals[r * tile_columns + c]])
                        for r in range(tile_rows) for c in range(tile_columns)]

            whole = builder.sdiv(count, emit.int(LANES))
            totals = emit.loop(whole, [emit.zero] * (tile_rows * tile_columns),
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
            emit.add_totals(sums, stride, joined, tile_rows, tile_columns)
            return context.get_dummy_value()

        return signature, codegen

    return tile


def _masked_sum_tile(tile_rows, tile_columns):
    """sums[r, c] += sum over the samples n and the LANES-position vectors i < vectors of
    x[n * x_sample + x_offsets[r] + i * LANES:][:LANES] * dy[n * dy_sample + dy_offsets[c] +
    i * LANES:][:LANES], x's lanes where bits masks[mask_rows[r] + i] are set and dy's where
    masks[valid + i] are (zero elsewhere, and not read): the weight gradient of a
    convolution read in place, a row's mask its tap's. The samples go inside the tile, so
    that a small plane's few vectors do not each end in a sum across the lanes."""
    mask_int = ir.IntType(LANES)

    @intrinsic
    def tile(typingctx, sums, stride, x, x_offsets, dy, dy_offsets, vectors, masks, mask_rows,
             valid, samples, x_sample, dy_sample):
        signature = types.void(*(types.int64,) * 13)

        def codegen(context, builder, signature, args):
            (sums, stride, x, x_offsets, dy, dy_offsets, vectors, masks, mask_rows,
             valid, samples, x_sample, dy_sample) = args
            emit = Emitter(builder)
            mask_type = ir.VectorType(_I1, LANES)
            x, dy, sums = emit.floats(x), emit.floats(dy), emit.floats(sums)
            masks = builder.inttoptr(masks, mask_int.as_pointer())
            x_rows = emit.rows_at(x, x_offsets, tile_rows)
            dy_rows = emit.rows_at(dy, dy_offsets, tile_columns)
            row_masks = emit.rows_at(masks, mask_rows, tile_rows)
            valid_masks = emit.at(masks, valid)

            def mask(pointer, i):
                return builder.bitcast(builder.load(emit.at(pointer, i)), mask_type)

            def sample(n, totals):
                x_start = builder.mul(n, x_sample)
                dy_start = builder.mul(n, dy_sample)

                def accumulate(i, totals):
                    position = builder.mul(i, emit.int(LANES))
                    x_position = builder.add(x_start, position)
                    dy_position = builder.add(dy_start, position)
                    dy_mask = mask(valid_masks, i)
                    xs = [emit.load(row, x_position, mask(row_mask, i))
                          for row, row_mask in zip(x_rows, row_masks)]
                    dys = [emit.load(row, dy_position, dy_mask) for row in dy_rows]
                    return [builder.call(emit.fma, [xs[r], dys[c], totals[r * tile_columns + c]])
                            for r in range(tile_rows) for c in range(tile_columns)]

                return emit.loop(vectors, totals, accumulate)

            totals = emit.loop(samples, [emit.zero] * (tile_rows * tile_columns), sample)
            emit.add_totals(sums, stride, totals, tile_rows, tile_columns)
            return context.get_dummy_value()

        return signature, codegen

    return tile


def _emit_gradient(builder, rows, vectors, whole, sums, stride, x, x_offsets, dy, dy_step,
                   lanes, samples, x_sample, dy_sample, first, row_count, row_length, width):
    """The weight gradient as a product, its sums in registers: sums[r, q] += sum over the
    samples n < samples, the rows i < row_count and the positions t < row_length of
    x[x_offsets[r] + p] * dy[(n * dy_sample + p') * dy_step + q], for q < LANES * vectors
    (dy's lanes from ``lanes`` on not read; every lane, plain loads, where ``whole``), p = n *
    x_sample + first + i * width + t, p' the same without x's sample step. ``dy`` is
    channels last, a position's outputs a vector; each x value is a broadcast. The rows of
    a tile share one tap, so that each position
    range it reads lies inside the map (no masks), a run of whole rows of the plane or the
    same columns of several."""
    emit = Emitter(builder)
    x, dy, sums = emit.floats(x), emit.floats(dy), emit.floats(sums)
    x_rows = emit.rows_at(x, x_offsets, rows)
    masks = [None if whole else emit.mask(lanes, v * LANES) for v in range(vectors)]
    starts = emit.starting_sums(sums, stride, rows, vectors, [None] * vectors, emit.int(1))

    def sample(n, carried):
        x_sample_first = builder.add(builder.mul(n, x_sample), first)
        dy_sample_first = builder.mul(builder.add(builder.mul(n, dy_sample), first), dy_step)

        def row(i, carried):
            along = builder.mul(i, width)
            x_row = builder.add(x_sample_first, along)
            dy_row = builder.add(dy_sample_first, builder.mul(along, dy_step))

            def position(t, carried):
                outputs = builder.add(dy_row, builder.mul(t, dy_step))
                dys = [emit.load(dy, builder.add(outputs, emit.int(v * LANES)), masks[v])
                       for v in range(vectors)]
                at = builder.add(x_row, t)
                updated = []
                for r, base in enumerate(x_rows):  # each broadcast used at once
                    value = emit.splat(builder.load(emit.at(base, at)))
                    updated += [builder.call(emit.fma, [value, dys[v], carried[r * vectors + v]])
                                for v in range(vectors)]
                return updated

            return emit.loop(row_length, carried, position)

        return emit.loop(row_count, carried, row)

    final = emit.loop(samples, starts, sample)
    emit.store_rows(final, sums, stride, rows, vectors, [None] * vectors)


def _shape_switch(name, shapes, emit_tile):
    """The codegen of an intrinsic of (shape, *operands): ``emit_tile(builder,
    *shapes[shape], *operands)``, the last shape for any other ``shape``; one branch a tile,
    each shape's code its own."""

    def codegen(context, builder, signature, args):
        shape, *operands = args
        cases = [builder.append_basic_block(f"{name}_shape_{index}")
                 for index in range(len(shapes))]
        done = builder.append_basic_block(f"{name}_done")
        switch = builder.switch(shape, cases[-1])
        for index, (dimensions, case) in enumerate(zip(shapes, cases)):
            if index < len(cases) - 1:
                switch.add_case(ir.Constant(_I64, index), case)
            builder.position_at_end(case)
            emit_tile(builder, *dimensions, *operands)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return codegen


# the product tiles' (rows, masked): every row count to ROWS, so that a block of outputs
# is one pass over the reads whatever its rows (an LSTM step of 3 or 7 samples read its
# weights in 2 or 3 passes: B 7 H 512, T 64, forward 12.3 -> 8.8 ms)
PRODUCT_SHAPES = tuple((rows, masked) for rows in range(1, ROWS + 1) for masked in (0, 1))


@intrinsic
def _product(typingctx, shape, out, stride, x, offsets, weights, reads, count, accumulate):
    """``_emit_product``'s tile of PRODUCT_SHAPES[shape]."""
    return types.void(*(types.int64,) * 9), _shape_switch("product", PRODUCT_SHAPES,
                                                          _emit_product)


def _stepped_codegen(name, vectors):
    """The codegen of a stepped product intrinsic: ``_emit_product``'s tiles of
    PRODUCT_SHAPES on ``vectors`` vectors of positions, weights ``weights_step`` apart."""
    return _shape_switch(
        name, PRODUCT_SHAPES,
        lambda builder, rows, masked, out, stride, x, offsets, weights, weights_step, reads,
        count, accumulate: _emit_product(builder, rows, masked, out, stride, x, offsets,
                                         weights, reads, count, accumulate, weights_step,
                                         vectors))


@intrinsic
def stepped_product(typingctx, shape, out, stride, x, offsets, weights, weights_step, reads,
                     count, accumulate):
    """``_emit_product``'s tile of PRODUCT_SHAPES[shape] whose weights' reads are
    ``weights_step`` apart (a matrix's rows read in place), added to out's values where
    ``accumulate`` is not 0."""
    return types.void(*(types.int64,) * 10), _stepped_codegen("stepped_product", VECTORS)


@intrinsic
def strided_product(typingctx, shape, out, stride, x, offsets, weights, weights_step,
                    row_step, reads, count, accumulate):
    """``stepped_product`` whose weights' rows are ``row_step`` apart too: weight (j, r) at
    weights[j * weights_step + r * row_step] (a C-ordered matrix's rows, read in place)."""
    return types.void(*(types.int64,) * 11), _shape_switch(
        "strided_product", PRODUCT_SHAPES,
        lambda builder, rows, masked, out, stride, x, offsets, weights, weights_step,
        row_step, reads, count, accumulate: _emit_product(
            builder, rows, masked, out, stride, x, offsets, weights, reads, count,
            accumulate, weights_step, VECTORS, row_step))


# positions of a narrow product tile: two vectors, for runs of 32 or 64 (a head of 32 or 64
# values, 64 queries or keys), which three-vector tiles would fill to two thirds
NARROW_TILE = 2 * LANES


@intrinsic
def narrow_stepped_product(typingctx, shape, out, stride, x, offsets, weights, weights_step,
                           reads, count, accumulate):
    """``stepped_product`` on NARROW_TILE positions."""
    return types.void(*(types.int64,) * 10), _stepped_codegen("narrow_stepped_product",
                                                             NARROW_TILE // LANES)


_sum = _sum_tile(SUM_ROWS, SUM_COLUMNS)
_sum_narrow = _sum_tile(NARROW_ROWS, 1)
_masked_sum = _masked_sum_tile(SUM_ROWS, SUM_COLUMNS)
_masked_sum_narrow = _masked_sum_tile(NARROW_ROWS, 1)
# the gradient tiles' (vectors, rows): 24 sums in AVX-512's registers (12 with AVX2), and
# the widest that fits the outputs; one vector only where there are no more outputs, as
# it makes a broadcast a multiply-add
GRADIENT_SHAPES = ((4, 6), (3, 8), (2, 12), (1, 24), (1, 16)) if LANES == 16 else \
    ((4, 3), (3, 4), (2, 6), (1, 12), (1, 8))


# each with its last vector's lanes masked (a run of outputs that ends inside the tile) and
# whole (a masked load costs a second micro-op on the multiply-adds' ports: a 128-channel
# 16x16 layer's weight gradient 4.2 -> 3.5 ms)
GRADIENT_TILES = tuple((vectors, rows, whole) for whole in (0, 1)
                       for vectors, rows in GRADIENT_SHAPES)


@intrinsic
def _gradient(typingctx, shape, sums, stride, x, x_offsets, dy, dy_step, lanes, samples,
              x_sample, dy_sample, first, row_count, row_length, width):
    """``_emit_gradient``'s tile of GRADIENT_TILES[shape]."""
    return types.void(*(types.int64,) * 15), _shape_switch(
        "gradient", GRADIENT_TILES,
        lambda builder, vectors, rows, whole, *operands: _emit_gradient(
            builder, rows, vectors, whole, *operands))


@numba.njit(inline="always")
def _block_rows(left, most=ROWS):
    """Rows of the next block of outputs: ``most``, then halves for the last few."""
    rows = most
    while rows > left:
        rows //= 2
    return rows


@numba.njit(inline="always")
def _product_rows(left):
    """Rows of a product's next block of outputs: ROWS, then the rest in one block."""
    return min(left, ROWS)


@workers.Task
def _products_job(args, range_m, range_n, sa, sb, part):
    """params (parts, out, stride, out rows, x, offsets, weights, reads, length, items,
    the items' steps through out, x and the weights, whether the products add to out's
    values, the positions per panel of x, or 0 when its positions run on unbroken, and
    the weights' row stride where they are read in place, or 0 where they are packed
    (``_pack``'s product blocks))."""
    products_part(workers.parameters(args, PRODUCT_PARAMETERS), part)
    return 0


PRODUCT_PARAMETERS = 16
# positions per panel of a matrix the products read (``Product``): a tile's, so that a tile
# reads its panel front to back (a block of 8 tiles a panel: 175-184 us, against 135)
PANEL = TILE


@numba.njit(inline="always")
def products_part(params, part):
    """Part ``part`` of the products ``params`` describes (``_products_job``'s): for a job
    that makes a product and then works on its results on the same core. Parts from
    ``params[0]`` on have none of it (a job of more parts than the products have tiles)."""
    if part >= params[0]:
        return
    out, stride, out_rows, x = params[1], params[2], params[3], params[4]
    offsets, weights, reads, length = params[5], params[6], params[7], params[8]
    out_step, x_step, weights_step = params[10], params[11], params[12]
    panel, row_stride = params[14], params[15]
    tiles = (length + TILE - 1) // TILE
    start, end = part_range(params[9] * tiles, part, params[0], 1)
    unit = start
    while unit < end:  # a unit is one item's tile
        item, first = unit // tiles, unit % tiles
        last = min(first + PRODUCT_BLOCK_TILES, tiles, first + end - unit)
        item_out, item_x = out + 4 * item * out_step, x + 4 * item * x_step
        if panel:  # the block's positions within its panel: (reads, panel) floats on end
            index = first * TILE // panel
            last = min(last, (index + 1) * panel // TILE)
            item_x += 4 * index * panel * (reads - 1)
        item_weights = weights + 4 * item * weights_step
        for read in range(0, reads, READ_BLOCK):
            count = min(READ_BLOCK, reads - read)
            row = 0
            while row < out_rows:
                rows = _product_rows(out_rows - row)
                position, block_end = first * TILE, min(last * TILE, length)
                while position < block_end:
                    shape = 2 * (rows - 1) + (position + TILE > block_end)
                    tile_out = item_out + 4 * (row * stride + position)
                    if row_stride:
                        strided_product(shape, tile_out, stride, item_x + 4 * position,
                                        offsets + 8 * read,
                                        item_weights + 4 * (row * row_stride + read), 1,
                                        row_stride, count, block_end - position,
                                        read + params[13])
                    else:
                        _product(shape, tile_out, stride, item_x + 4 * position,
                                 offsets + 8 * read,
                                 item_weights + 4 * (row * reads + read * rows), count,
                                 block_end - position, read + params[13])
                    position += TILE
                row += rows
        unit += last - first


@numba.njit(inline="always")
def _sum_block(narrow, sums, stride, x, x_offsets, dy, dy_offsets, count):
    if narrow:
        _sum_narrow(sums, stride, x, x_offsets, dy, dy_offsets, count)
    else:
        _sum(sums, stride, x, x_offsets, dy, dy_offsets, count)


@workers.Task
def _sums_job(args, range_m, range_n, sa, sb, part):
    """params (parts, sums, columns, x, x offsets, dy, dy offsets, rows, length, items, the
    items' steps through sums (0: one sum over them all), x and dy, narrow); rows and
    columns are multiples of the tile's. A unit is one tile of sums (of one item's, when
    the items have their own); the parts take runs of units."""
    params = workers.parameters(args, 14)
    sums, columns, x, x_offsets = params[1], params[2], params[3], params[4]
    dy, dy_offsets, rows, length, items = params[5], params[6], params[7], params[8], params[9]
    sums_step, x_step, dy_step, narrow = params[10], params[11], params[12], params[13] != 0
    tile_rows, tile_columns = (NARROW_ROWS, 1) if narrow else (SUM_ROWS, SUM_COLUMNS)
    across = columns // tile_columns
    units = (rows // tile_rows) * across
    own = sums_step != 0
    start, end = part_range(units * (items if own else 1), part, params[0], 1)
    for item in range(items):
        first_unit, last_unit = start, end
        if own:
            first_unit, last_unit = max(start - item * units, 0), min(end - item * units, units)
            if first_unit >= last_unit:
                continue
        item_sums = sums + 4 * item * sums_step
        for first in range(0, length, SUM_BLOCK):
            count = min(SUM_BLOCK, length - first)
            item_x = x + 4 * (item * x_step + first)
            item_dy = dy + 4 * (item * dy_step + first)
            for unit in range(first_unit, last_unit):
                row, column = unit // across * tile_rows, unit % across * tile_columns
                _sum_block(narrow, item_sums + 4 * (row * columns + column), columns, item_x,
                           x_offsets + 8 * row, item_dy, dy_offsets + 8 * column, count)
    return 0


# tiles of WIDE_VECTORS vectors and at most WIDE_ROWS rows, 24 sums as the others: for
# outputs that come in whole blocks of 6 and not of 8 (90 outputs: 15 blocks, where 8-row
# tiles end in a 2-row one)
WIDE_VECTORS, WIDE_ROWS = 4, (6 if LANES == 16 else 3)
WIDE_TILE = LANES * WIDE_VECTORS
# the direct tiles' (rows, vectors, reads inside x's buffer): ROWS x VECTORS and the wide
# ones, each with the smaller blocks ``_block_rows`` leaves at the end of the outputs, and
# each with masked loads (reads that may fall outside the buffer) and with plain ones
DIRECT_SHAPES = tuple((rows, VECTORS, in_buffer) for in_buffer in (0, 1)
                      for rows in (ROWS, ROWS // 2, ROWS // 4, 1)) + \
    tuple((rows, WIDE_VECTORS, in_buffer) for in_buffer in (0, 1)
          for rows in (WIDE_ROWS, WIDE_ROWS // 2, 1))


@numba.njit(inline="always")
def _direct_shape(wide, rows, in_buffer):
    """The index in DIRECT_SHAPES of the tile of ``rows`` rows, its reads ``in_buffer`` (0
    or 1) x's buffer."""
    if wide:
        return 8 + 3 * in_buffer + (0 if rows == WIDE_ROWS else (1 if rows == WIDE_ROWS // 2
                                                               else 2))
    return 4 * in_buffer + (0 if rows == ROWS else (1 if rows == ROWS // 2 else (
        2 if rows == ROWS // 4 else 3)))


@numba.njit(inline="always")
def _reads_in_buffer(units, tile, vectors, first, last, shifts, x_size):
    """1 when every read of a direct tile (x offsets ``units[3 v]`` of its vectors, a
    pass's channel offsets ``first`` to ``last``, the taps' shifts (least, most)) lies in
    x's ``x_size`` floats, else 0 (a first or last row of the buffer, a vector past the
    plane)."""
    low, high = units[3 * tile * vectors], units[3 * tile * vectors]
    for v in range(1, vectors):
        offset = units[3 * (tile * vectors + v)]
        low, high = min(low, offset), max(high, offset)
    return 1 if first + low + shifts[0] >= 0 and \
        last + high + shifts[1] + LANES <= x_size else 0


@intrinsic
def _direct(typingctx, shape, out, stride, x, plane, channels, weights, row_step,
            channel_step, tap_step, taps_a, taps_b, taps_base, taps, units, heights, widths,
            height, width, accumulate):
    """``_emit_direct``'s tile of DIRECT_SHAPES[shape]."""
    return types.void(*(types.int64,) * 20), _shape_switch("direct", DIRECT_SHAPES,
                                                           _emit_direct)


@workers.Task
def _direct_job(args, range_m, range_n, sa, sb, part):
    """params (parts, out, out rows, x, channels, taps' row and column shifts, taps,
    weights, their steps along groups, rows, channels and taps, groups, the units (x offset,
    out offset, position), units a group, the positions' rows and columns, height, width,
    group step through x, group step through out, wide, 1 to split the output rows between
    the parts instead of the tiles, 1 for weights as ``_pack`` lays them out (then the group
    step alone), x's size in floats, each tap's first read in a sample's x, the least and
    the most a tap shifts a read); per block of a group's tiles, the channels in passes
    of whole channels, each pass's reads a tap at a time, every block of output rows in
    turn, whose weights stay in cache while each tile of the block reads them. A tile whose
    reads all lie in x's buffer loads them plainly (``_emit_direct``)."""
    params = workers.parameters(args, 29)
    out, out_rows, x, channels = params[1], params[2], params[3], params[4]
    taps_a, taps_b, taps, weights = params[5], params[6], params[7], params[8]
    group_step, row_step, channel_step, tap_step = params[9], params[10], params[11], \
        params[12]
    groups, units, unit_count = params[13], params[14], params[15]
    heights, widths, height, width = params[16], params[17], params[18], params[19]
    x_group, out_group, wide, by_rows = params[20], params[21], params[22] != 0, params[23] != 0
    packed, x_size = params[24] != 0, params[25]
    vectors, most = (WIDE_VECTORS, WIDE_ROWS) if wide else (VECTORS, ROWS)
    plane = height * width
    reads = channels * taps
    tile_units = workers.integers(params, 14, 3 * unit_count)
    taps_base, shifts = params[26], (params[27], params[28])
    tiles = (unit_count + vectors - 1) // vectors
    chunk = max(1, READ_BLOCK // taps)  # channels per pass
    if by_rows:  # every tile, a part of the blocks of output rows
        start, end = 0, groups * tiles
        first_block, last_block = part_range((out_rows + most - 1) // most, part, params[0], 1)
        first_row, last_row = first_block * most, min(last_block * most, out_rows)
    else:
        start, end = part_range(groups * tiles, part, params[0], 1)
        first_row, last_row = 0, out_rows
    work = start
    while work < end:  # blocks of a group's tiles, whose reads stay in the core's cache
        group, first = work // tiles, work % tiles
        last = min(first + PRODUCT_BLOCK_TILES, tiles, first + end - work)
        group_out, group_x = out + 4 * group * out_group, x + 4 * group * x_group
        group_weights = weights + 4 * group * group_step
        for channel in range(0, channels, chunk):
            count = min(chunk, channels - channel)
            row = first_row
            while row < last_row:
                rows = _block_rows(last_row - row, most)
                if packed:  # the pass's block: taps, then channels, then rows
                    block = group_weights + 4 * (row * reads + channel * taps * rows)
                    steps = (1, rows, count * rows)
                else:
                    block = group_weights + 4 * (row * row_step + channel * channel_step)
                    steps = (row_step, channel_step, tap_step)
                for tile in range(first, last):
                    in_buffer = _reads_in_buffer(
                        tile_units, tile, vectors, group * x_group + channel * plane,
                        group * x_group + (channel + count - 1) * plane, shifts, x_size)
                    _direct(_direct_shape(wide, rows, in_buffer), group_out + 4 * row * plane,
                            plane, group_x + 4 * channel * plane, plane, count, block,
                            steps[0], steps[1], steps[2], taps_a, taps_b, taps_base, taps,
                            units + 8 * 3 * tile * vectors, heights, widths, height, width,
                            channel)
                row += rows
        work += last - first
    return 0


@functools.lru_cache(maxsize=64)  # per map size: bounded for inputs of many lengths
def _positions(height, width):
    """Each position's row and column in a (height, width) plane, then a tile's worth of
    rows far below zero: positions past the plane, never written, and never read whatever
    a tap's shift (rows of -1 would read past the map's end at a shift of a row)."""
    count = height * width
    heights = np.full(count + WIDE_TILE, -(1 << 30), np.int32)
    widths = np.zeros(count + WIDE_TILE, np.int32)
    heights[:count] = np.repeat(np.arange(height, dtype=np.int32), width)
    widths[:count] = np.tile(np.arange(width, dtype=np.int32), height)
    return heights, widths


@functools.lru_cache(maxsize=256)  # per layer shape: a small batch's step asks per layer
def _tap_shifts(taps):
    """Each tap's row shifts and column shifts, int64 arrays (read-only)."""
    return _read_only(np.array([a for a, _ in taps], np.int64)), \
        _read_only(np.array([b for _, b in taps], np.int64))


@functools.lru_cache(maxsize=256)
def _tap_bases(sources, step):
    """Where each tap's reads start in a sample's x: its source (a stride phase) times
    ``step`` floats, int64 (read-only)."""
    return _read_only(np.array(sources, np.int64) * step)


def _read_only(array):
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=64)  # per batch and map size (up to 1.5 MB each at 256 x 64x64)
def _direct_units(samples, plane, x_sample, out_sample, vectors):
    """The direct tiles' vectors, (x offset, out offset, first position) each, int64:
    ``samples`` planes of ``plane`` positions cut into vectors of LANES, one after the
    other, and as many more as fill the last tile, reading and writing nothing."""
    per_plane = -(-plane // LANES)
    count = -(-samples * per_plane // vectors) * vectors
    units = np.zeros((count, 3), np.int64)
    units[:, 2] = per_plane * LANES  # the rows below zero past the plane
    sample, first = np.divmod(np.arange(samples * per_plane, dtype=np.int64), per_plane)
    units[:len(sample), 0] = sample * x_sample + first * LANES
    units[:len(sample), 1] = sample * out_sample + first * LANES
    units[:len(sample), 2] = first * LANES
    return _read_only(units)


def _tap_reads(taps, channels, height, width):
    """A map read in place, read j = channel * taps + tap (the weights' (M, C * taps) order):
    each read's offset in a sample's (C, H, W) map and its tap, int64."""
    shifts = np.array([a * width + b for a, b in taps], np.int64)
    offsets = (np.arange(channels, dtype=np.int64)[:, None] * (height * width)
               + shifts[None, :]).ravel()
    return offsets, np.tile(np.arange(len(taps), dtype=np.int64), channels)


# taps (reads) a row from which ``_pack`` reads each row's in order rather than writing the
# packed weights in order: a product's (1024, 322) weights 0.21 -> 0.13 ms; a convolution's
# 9 taps written in order, (256, 256, 9) 0.39-0.52 -> 0.28, transposed 0.55 -> 0.32
PACK_READ_RUN = 64


@workers.Task
def _pack_job(args, range_m, range_n, sa, sb, part):
    """params (parts, weights, their extent, their steps along groups, rows, channels and
    taps, groups, rows, channels, taps, most rows a block, packed, 1 for the products'
    blocks (``_product_rows``, else ``_block_rows``)): the weights, read through their
    steps (a transposed view as it is), as ``_direct_job`` or the products read them: per
    group, each block of rows one after the other, in it the channels' passes, each a tap
    at a time, rows fastest."""
    params = workers.parameters(args, 14)
    source = workers.floats(params, 1, (params[2],))
    group_step, row_step, channel_step, tap_step = params[3], params[4], params[5], params[6]
    groups, out_rows, channels, taps, most = params[7], params[8], params[9], params[10], \
        params[11]
    reads = channels * taps
    packed = workers.floats(params, 12, (groups * out_rows * reads,))
    chunk = max(1, READ_BLOCK // taps)
    blocks = (out_rows + most - 1) // most
    start, end = part_range(groups * blocks, part, params[0], 1)
    for unit in range(start, end):
        group, block = unit // blocks, unit % blocks
        row, block_end = block * most, min(block * most + most, out_rows)
        while row < block_end:
            rows = _product_rows(block_end - row) if params[13] != 0 else \
                _block_rows(block_end - row, most)
            for first in range(0, channels, chunk):
                count = min(chunk, channels - first)
                at = group * out_rows * reads + row * reads + first * taps * rows
                corner = group * group_step + row * row_step + first * channel_step
                if tap_step == 1 and taps >= PACK_READ_RUN:  # each row's taps read in order
                    for r in range(rows):
                        for c in range(count):
                            read = corner + r * row_step + c * channel_step
                            for k in range(taps):
                                packed[at + (k * count + c) * rows + r] = source[read + k]
                    continue
                for k in range(taps):  # written in order
                    for c in range(count):
                        read = corner + c * channel_step + k * tap_step
                        for r in range(rows):
                            packed[at + r] = source[read + r * row_step]
                        at += rows
            row += rows
    return 0


def _pack(weights, most=ROWS, product=False):
    """(groups, M, C, taps) float32 weights, any steps, as the tiles read them, on both
    cores, (groups, M * C * taps): per group each block of rows (``_block_rows`` with
    ``most``) one after the other, in it the channels' passes (``_direct_job``), each a tap
    at a time, the rows fastest; (items, M, 1, reads) weights with ``product`` are the
    product tiles' (reads, rows) blocks, of ``_product_rows``. NumPy's transposes took 0.15
    ms on a 128-channel layer's weights and 3 ms on a 512-channel one's (twice that for the
    input gradient's transposed weights): a fifth of the layer's time on 4x4 maps; a
    depthwise layer's 192 items packed one at a time, 0.3 ms, ten times its product."""
    weights = np.asarray(weights, np.float32)
    if min(weights.strides) < 0:
        weights = np.ascontiguousarray(weights)
    groups, out_rows, channels, taps = weights.shape
    steps = [step // 4 for step in weights.strides]
    extent = 1 + sum((size - 1) * step for size, step in zip(weights.shape, steps))
    packed = np.empty((groups, out_rows * channels * taps), np.float32)
    parts = workers.parts() if weights.size >= 1 << 16 else 1
    params = np.array([parts, address(weights), extent, *steps, groups, out_rows,
                       channels, taps, most, address(packed), int(product)], np.int64)
    workers.run(_pack_job, params)
    return packed


def direct_products(out, x, taps, weights, groups=1, sources=None):
    """A stride-1 convolution of maps whose output has the input's size, read straight from
    them: out[n, g * M + m, p] = sum over taps (a, b) and the group's channels c of
    weights[g * M + m, c, k] * x[n, g * C + c, p + a * W + b], zero where that lies outside
    the map. ``out`` (N, groups * M, H, W) and ``x`` (N, groups * C, H, W) C-ordered
    float32, ``taps`` [(a, b)], ``weights`` (groups * M, C, taps) or (groups, M, C, taps)
    float32 with any steps (the input gradient's transposed weights as they are). With
    ``sources`` (one group), x is (N, S * C, H, W), S maps of C channels each (a strided
    convolution's input by its stride phases), and tap k reads map sources[k]."""
    samples, _, height, width = x.shape
    for array in (out, x):
        _check_float32("direct_products", array)
    if len(taps) > DIRECT_MAX_TAPS:
        raise ValueError(f"direct_products: {len(taps)} taps, at most {DIRECT_MAX_TAPS}")
    if weights.ndim == 3 and weights.shape[0] % groups == 0:
        weights = weights.reshape(groups, -1, *weights.shape[1:])
    maps = 1 if sources is None or weights.ndim != 4 else \
        x.shape[1] // max(1, weights.shape[2])
    if weights.ndim != 4 or len(weights) != groups or out.shape[2:] != x.shape[2:] or \
            x.shape[1] != maps * groups * weights.shape[2] or weights.shape[3] != len(taps) or \
            out.shape[:2] != (samples, groups * weights.shape[1]) or \
            (sources is not None and (groups != 1 or len(sources) != len(taps) or
                                      not 0 <= min(sources) <= max(sources) < maps)):
        raise ValueError(f"direct_products: out {out.shape}, x {x.shape}, weights "
                         f"{weights.shape} in {groups} groups")
    out_rows, channels = weights.shape[1:3]
    plane = height * width
    taps_a, taps_b = _tap_shifts(tuple(taps))
    taps_base = _tap_bases(tuple(sources or [0] * len(taps)), channels * plane)
    shifts = taps_base + taps_a * width + taps_b
    # 8-row tiles unless the outputs come in whole blocks of 6 and not of 8 (90 outputs):
    # then the wide ones (fewer rows, more vectors)
    wide = out_rows % ROWS != 0 and out_rows % WIDE_ROWS == 0
    vectors, most = (WIDE_VECTORS, WIDE_ROWS) if wide else (VECTORS, ROWS)
    heights, widths = _positions(height, width)
    units = _direct_units(samples, plane, x.shape[1] * plane, groups * out_rows * plane,
                          vectors)
    # the weights are read where they lie (a 256-channel layer's packing took 0.27 ms, a
    # third of its forward at batch 8, 0.85 -> 0.59 ms without it), but for a transposed
    # view (the input gradient's) over many tiles: its rows a few floats apart, each
    # channel's far from the last, cost 4-5% more than packed from 128 vectors of positions
    packed = weights.strides[-3] < weights.strides[-2] and len(units) >= DIRECT_PACKED_MIN_UNITS
    if packed:
        weights = _pack(weights, most)
        weight_steps = (weights.shape[1], 0, 0, 0)
    else:
        weights = np.asarray(weights, np.float32)
        if min(weights.strides) < 0:
            weights = np.ascontiguousarray(weights)
        weight_steps = tuple(step // 4 for step in weights.strides)
    parts = workers.parts() if groups * len(units) * out_rows * channels * len(taps) >= \
        DIRECT_SPLIT_MIN_WORK else 1
    # few tiles (small maps, few samples) and many outputs: each part takes every tile and
    # a share of the output rows, so that it reads only its share of the weights, and
    # reads those from its cache for every tile (256 channels at 4x4, batch 32: 2.8 -> 2.6
    # ms; at batch 8, three tiles, one core had done it all: 0.94 -> 0.48)
    by_rows = groups * len(units) < parts * PRODUCT_BLOCK_TILES * vectors and \
        out_rows >= parts * most
    params = np.array([parts, address(out), out_rows, address(x), channels,
                       address(taps_a), address(taps_b), len(taps), address(weights),
                       *weight_steps, groups, address(units),
                       len(units), address(heights), address(widths), height, width,
                       channels * plane, out_rows * plane, wide, by_rows, packed, x.size,
                       address(taps_base), min(shifts), max(shifts)], np.int64)
    workers.run(_direct_job, params)


@numba.njit(inline="always")
def _masked_sum_block(narrow, sums, stride, x, x_offsets, dy, dy_offsets, vectors, masks,
                      mask_rows, valid, samples, x_sample, dy_sample):
    if narrow:
        _masked_sum_narrow(sums, stride, x, x_offsets, dy, dy_offsets, vectors, masks,
                           mask_rows, valid, samples, x_sample, dy_sample)
    else:
        _masked_sum(sums, stride, x, x_offsets, dy, dy_offsets, vectors, masks, mask_rows,
                    valid, samples, x_sample, dy_sample)


@workers.Task
def _direct_sums_job(args, range_m, range_n, sa, sb, part):
    """params (parts, sums, columns, x, x offsets, dy, dy offsets, rows, plane, samples,
    groups, the steps through x and dy of a sample and of a group, masks, the x rows' first
    masks, the first valid mask, narrow); sums (groups, rows, columns), a group's summed
    over the samples. A unit is one tile of one group's sums."""
    params = workers.parameters(args, 20)
    sums, columns, x, x_offsets = params[1], params[2], params[3], params[4]
    dy, dy_offsets, rows, plane = params[5], params[6], params[7], params[8]
    samples, groups, x_sample, x_group = params[9], params[10], params[11], params[12]
    dy_sample, dy_group, masks, mask_rows = params[13], params[14], params[15], params[16]
    valid, narrow = params[17], params[18] != 0
    tile_rows, tile_columns = (NARROW_ROWS, 1) if narrow else (SUM_ROWS, SUM_COLUMNS)
    across = columns // tile_columns
    per_group = (rows // tile_rows) * across
    start, end = part_range(per_group * groups, part, params[0], 1)
    mask_bytes = LANES // 8
    # a block: positions of one sample, or whole planes of a few samples, about SUM_BLOCK
    # together (their rows stay in the core's cache while every unit reads them)
    chunk = max(1, DIRECT_SUM_BLOCK // plane)
    for sample in range(0, samples, chunk):
        count = min(chunk, samples - sample)
        for first in range(0, plane, SUM_BLOCK):
            vectors = (min(SUM_BLOCK, plane - first) + LANES - 1) // LANES
            block_masks = masks + mask_bytes * (first // LANES)
            for unit in range(start, end):
                group, within = unit // per_group, unit % per_group
                row, column = within // across * tile_rows, within % across * tile_columns
                _masked_sum_block(
                    narrow, sums + 4 * ((group * rows + row) * columns + column), columns,
                    x + 4 * (sample * x_sample + group * x_group + first), x_offsets + 8 * row,
                    dy + 4 * (sample * dy_sample + group * dy_group + first),
                    dy_offsets + 8 * column, vectors, block_masks, mask_rows + 8 * row, valid,
                    count, x_sample, dy_sample)
    return 0


@workers.Task
def _gradient_job(args, range_m, range_n, sa, sb, part):
    """params (parts, sums, columns, x, x offsets, channels-last dy, dy's outputs a position,
    samples, x's step a sample, height, width, taps' row and column shifts, taps, padded
    channels, outputs a group, groups, x's step a group, tile shape, its vectors and rows);
    sums (groups, padded channels, taps, columns). A unit is one tile: a tap's run of
    channels against a run of a group's outputs. A block of positions (a few samples' planes,
    a band of a large plane's rows, or a run of a long row's columns) is read by every unit
    before the next block."""
    params = workers.parameters(args, 21)
    sums, columns, x, x_offsets = params[1], params[2], params[3], params[4]
    dy, dy_step, samples, x_sample = params[5], params[6], params[7], params[8]
    height, width, taps = params[9], params[10], params[13]
    taps_a, taps_b = workers.integers(params, 11, taps), workers.integers(params, 12, taps)
    padded, group_outputs, groups, x_group = params[14], params[15], params[16], params[17]
    shape, vectors, rows = params[18], params[19], params[20]
    tile_width = vectors * LANES
    output_tiles = (group_outputs + tile_width - 1) // tile_width
    channel_tiles = padded // rows
    start, end = part_range(groups * output_tiles * taps * channel_tiles, part, params[0], 1)
    plane = height * width
    chunk, band = (1, max(1, GRADIENT_BLOCK // width)) if plane >= GRADIENT_BLOCK else \
        (GRADIENT_BLOCK // plane, height)
    span = min(width, GRADIENT_BLOCK)  # the columns of a block: a long 1-D map's in runs
    for sample in range(0, samples, chunk):
        count = min(chunk, samples - sample)
        for top in range(0, height, band):
            bottom = min(height, top + band)
            for left in range(0, width, span):
                right = min(width, left + span)
                for unit in range(start, end):
                    channels = unit % channel_tiles * rows
                    tap = unit // channel_tiles % taps
                    outputs = unit // (channel_tiles * taps) % output_tiles * tile_width
                    group = unit // (channel_tiles * taps * output_tiles)
                    a, b = taps_a[tap], taps_b[tap]
                    row_first, row_end = max(top, -a), min(bottom, height - a)
                    column_first, column_end = max(left, -b), min(right, width - b)
                    if row_end <= row_first or column_end <= column_first:
                        continue
                    if column_first == 0 and column_end == width:  # whole rows: one run
                        row_count, row_length = 1, (row_end - row_first) * width
                    else:
                        row_count, row_length = row_end - row_first, column_end - column_first
                    sums_row = (group * padded + channels) * taps + tap
                    lanes = min(tile_width, group_outputs - outputs)
                    _gradient(shape + (len(GRADIENT_SHAPES) if lanes == tile_width else 0),
                              sums + 4 * (sums_row * columns + outputs), taps * columns,
                              x + 4 * (sample * x_sample + group * x_group),
                              x_offsets + 8 * (tap * padded + channels),
                              dy + 4 * (sample * plane * dy_step + group * group_outputs
                                        + outputs),
                              dy_step, lanes, count,
                              x_sample, plane, row_first * width + column_first, row_count,
                              row_length, width)
    return 0


# the fewest channels and outputs a group for which the gradient products (with dy's copy)
# measured faster than the sums: 1.4-1.6x at 64 or more of each, 1.25x at 32 -> 64
# channels and 64 -> 32, 1.4x at 48 -> 48; even at 32 -> 32 and 16 -> 64, 0.75-0.85x at 16
# -> 16 and 16 -> 32 (rows of spare channels)
GRADIENT_MIN_CHANNELS, GRADIENT_MIN_OUTPUTS = 32, 32
# and a group of one vector of outputs from whole 16-row tiles of channels (a U-Net's
# decoder layers to 16 channels): 32 -> 16 at 64x64 b8 1.77 -> 1.47 ms, 64 -> 16 at 16x16
# b32 0.77 -> 0.61, 128 -> 16 at 8x8 0.44 -> 0.30; not from 48 channels (24-row tiles:
# 0.58 -> 0.62) nor to 8 or 24 outputs (1.1-1.7x slower)
GRADIENT_VECTOR_OUTPUTS = LANES
# and the fewest reads (channels x taps) a group: each reads dy's copy once more, and a 1x1
# layer's products paid at 144 and 192 channels (1.2-1.8x), not at 32 (0.4x)
GRADIENT_MIN_READS = 128
# positions per block of the gradient products: a tile's outputs there, 1024 x 64 floats,
# stay in the core's cache while each tap and run of channels reads them (512 and 2048
# within 5%, 256 up to 10% slower)
GRADIENT_BLOCK = 1024


@workers.Task
def _channels_last_job(args, range_m, range_n, sa, sb, part):
    """params (parts, source, target, items, rows, length): target (items, length, rows)
    = source (items, rows, length) with its last two axes swapped, in 16 x 16 blocks."""
    params = workers.parameters(args, 6)
    items, rows, length = params[3], params[4], params[5]
    source = workers.floats(params, 1, (items, rows, length))
    target = workers.floats(params, 2, (items, length, rows))
    blocks = (length + 15) // 16
    start, end = part_range(items * blocks, part, params[0], 1)
    for unit in range(start, end):
        item, first = unit // blocks, unit % blocks * 16
        last = min(first + 16, length)
        for row_first in range(0, rows, 16):
            for position in range(first, last):
                for row in range(row_first, min(row_first + 16, rows)):
                    target[item, position, row] = source[item, row, position]
    return 0


def _channels_last(maps):
    """(N, C, *spatial) C-ordered float32 maps as (N, positions, C), copied on both cores
    (NumPy's copy of the swapped view: 1.4-2.9x slower on 2 MB maps, as fast on 0.5 MB),
    from a cache line's start (the weight gradient's vector loads of it: a 128-channel 16x16
    layer's 3.5 ms, 4.1 where NumPy's allocation started 48 bytes into a line)."""
    samples, channels = maps.shape[:2]
    positions = math.prod(maps.shape[2:])
    out = aligned_array((samples, positions, channels))
    params = np.array([workers.parts(), address(maps), address(out), samples, channels,
                       positions], np.int64)
    workers.run(_channels_last_job, params)
    return out


@functools.lru_cache(maxsize=256)
def _gradient_shape(group_outputs, channels):
    """The gradient tile that wastes least of its lanes and rows on a group's outputs and
    channels, the widest of those, and of those the fewest rows (16-row tiles measured 5-15%
    faster than 24-row ones on 48 and 96 channels to 16 outputs); (index in
    GRADIENT_SHAPES, vectors, rows)."""
    def waste(index):
        vectors, rows = GRADIENT_SHAPES[index]
        return (-(-group_outputs // (vectors * LANES)) * vectors * LANES
                * -(-channels // rows) * rows)

    usable = [i for i, (vectors, _) in enumerate(GRADIENT_SHAPES)
              if (vectors == 1) == (group_outputs <= LANES)
              and group_outputs > (vectors - 1) * LANES]
    index = min(usable, key=lambda i: (waste(i), -GRADIENT_SHAPES[i][0], GRADIENT_SHAPES[i][1]))
    return (index, *GRADIENT_SHAPES[index])


def _gradient_products(x, dy, taps, groups, result=None, sources=None):
    """``direct_sums`` as products (``_emit_gradient``): dy made channels last, each of a
    position's outputs a lane, each x value a broadcast; into ``result`` where given. The
    sums come out (C * taps, M) a group, so that one transposed copy (``blas.transpose``)
    lays them out as (M, C, taps): NumPy's copy of them from (taps, C, M) took 0.79 ms at
    256 channels, 5.4 at 512, this 0.09 and 0.46. With ``sources`` (one group, ``result``
    given), tap k reads map sources[k] of x's maps of ``result``'s C channels."""
    samples, all_channels, height, width = x.shape
    out_channels = dy.shape[1]
    channels = all_channels // groups if sources is None else result.shape[1]
    group_outputs = out_channels // groups
    shape, vectors, rows = _gradient_shape(group_outputs, channels)
    tile_width = vectors * LANES
    padded = -(-channels // rows) * rows
    plane = height * width
    taps = tuple(taps)
    taps_a, taps_b = _tap_shifts(taps)
    x_offsets = _gradient_reads(taps, padded, channels, height, width,
                                None if sources is None else tuple(sources))
    columns = -(-group_outputs // tile_width) * tile_width
    out = np.zeros((groups, padded, len(taps), columns), np.float32)
    dy_last = _channels_last(dy)
    units = groups * (columns // tile_width) * len(taps) * (padded // rows)
    params = np.array([max(1, min(workers.parts(), units)), address(out), columns,
                       address(x), address(x_offsets), address(dy_last), out_channels,
                       samples, all_channels * plane, height, width, address(taps_a),
                       address(taps_b), len(taps), padded, group_outputs, groups,
                       channels * plane, shape, vectors, rows], np.int64)
    workers.run(_gradient_job, params)
    if result is None:
        result = np.empty((out_channels, channels, len(taps)), np.float32)
    # a group's (C * taps, M) sums, transposed, are its (M, C, taps) gradient
    targets = result.reshape(groups, group_outputs, channels * len(taps))
    for group in range(groups):
        sums_rows = out[group, :channels].reshape(channels * len(taps), columns)
        blas.transpose(sums_rows[:, :group_outputs], out=targets[group])
    return result


@functools.lru_cache(maxsize=256)
def _gradient_reads(taps, padded, channels, height, width, sources=None):
    """Where each (tap, channel) read of ``_gradient_products`` starts in a sample's maps,
    (taps, padded) int64 (read-only), each tap's in map sources[k] of ``channels`` channels
    where given; spare rows past ``channels`` read the first channel again."""
    shifts = np.array([a * width + b for a, b in taps], np.int64)
    if sources is not None:
        shifts += np.array(sources, np.int64) * channels * height * width
    read_channels = np.arange(padded, dtype=np.int64)
    read_channels[channels:] = 0
    return _read_only(np.ascontiguousarray(shifts[:, None]
                                           + read_channels[None, :] * (height * width)))


@functools.lru_cache(maxsize=64)  # per map size: bounded for inputs of many lengths
def _tap_masks(height, width, taps):
    """Per tap (a, b), then for the plane itself, bit masks of the positions whose read lies
    inside the (height, width) map, LANES positions a word; and the words per row of them."""
    plane = height * width
    words = -(-plane // LANES)
    positions = np.arange(words * LANES)
    row, column = positions // width, positions % width
    inside = [(row + a >= 0) & (row + a < height) & (column + b >= 0) & (column + b < width)
              & (positions < plane) for a, b in taps] + [positions < plane]
    bits = np.packbits(np.stack(inside).reshape(len(inside), words, LANES), axis=2,
                       bitorder="little")
    return np.ascontiguousarray(bits).reshape(-1), words


def direct_sums(x, dy, taps, groups=1, out=None, sources=None):
    """The weight gradient of ``direct_products``: sums (groups * M, C, taps) of x's reads
    (zero outside the map) against dy, over the samples and positions, into ``out`` where
    given (a C-ordered float32 array of that shape). ``x`` (N, groups * C, H, W) and ``dy``
    (N, groups * M, H, W) C-ordered float32. With ``sources`` (one group, ``out`` given,
    its C the channels of a map), x is (N, S * C, H, W), S maps of C channels each, and tap
    k reads map sources[k], as ``direct_products`` reads them (a strided convolution's
    input by its stride phases); only where the sums run as products
    (``sums_are_products``)."""
    if sources is not None:
        return _sums_over_maps(x, dy, taps, out, sources)
    found = _direct_sums(x, dy, taps, groups, out)
    if out is None or found is out:
        return found
    out[...] = found
    return out


def sums_are_products(channels, outputs, taps) -> bool:
    """Whether ``direct_sums`` of a group of ``channels`` and ``outputs`` over ``taps``
    taps run as products (``_gradient_products``), as the ``GRADIENT_MIN_...`` limits
    say."""
    one_vector = outputs == GRADIENT_VECTOR_OUTPUTS and channels % LANES == 0
    return channels >= GRADIENT_MIN_CHANNELS and \
        (outputs >= GRADIENT_MIN_OUTPUTS or one_vector) and \
        channels * taps >= GRADIENT_MIN_READS


def _sums_over_maps(x, dy, taps, out, sources):
    for array in (x, dy):
        _check_float32("direct_sums", array)
    channels = 0 if out is None else out.shape[1]
    if out is None or out.dtype != np.float32 or not out.flags.c_contiguous or \
            out.shape != (dy.shape[1], channels, len(taps)) or not channels or \
            x.shape[1] % channels or dy.shape[0] != x.shape[0] or \
            dy.shape[2:] != x.shape[2:] or len(sources) != len(taps) or \
            not 0 <= min(sources) <= max(sources) < x.shape[1] // channels or \
            not sums_are_products(channels, dy.shape[1], len(taps)):
        raise ValueError(f"direct_sums: x {x.shape}, dy {dy.shape}, out "
                         f"{None if out is None else out.shape} over maps {sources}")
    return _gradient_products(x, dy, taps, 1, out, sources)


def _direct_sums(x, dy, taps, groups, result):
    samples, all_channels, height, width = x.shape
    out_channels = dy.shape[1]
    channels, out_rows = all_channels // groups, out_channels // groups
    for array in (x, dy):
        _check_float32("direct_sums", array)
    if dy.shape[0] != samples or dy.shape[2:] != x.shape[2:] or all_channels % groups or \
            out_channels % groups:
        raise ValueError(f"direct_sums: x {x.shape}, dy {dy.shape} in {groups} groups")
    if sums_are_products(channels, out_rows, len(taps)):
        return _gradient_products(x, dy, taps, groups, result)
    plane = height * width
    if groups == 1 and list(taps) == [(0, 0)]:  # a 1x1 convolution: plain rows
        return sums(dy.reshape(-1), np.arange(out_rows) * plane, x.reshape(-1),
                    np.arange(channels) * plane, plane, items=samples,
                    x_step=out_rows * plane, dy_step=channels * plane).reshape(
            out_rows, channels, 1)
    narrow = out_rows == 1
    offsets, taps_of = _tap_reads(taps, channels, height, width)
    # spare rows read the first again
    x_reads = _padded_reads(offsets, NARROW_ROWS if narrow else SUM_ROWS)
    dy_reads = _padded_reads(np.arange(out_rows, dtype=np.int64) * plane,
                             1 if narrow else SUM_COLUMNS)
    masks, words = _tap_masks(height, width, tuple(taps))
    mask_rows = np.full(len(x_reads), 0, np.int64)
    mask_rows[:len(taps_of)] = taps_of * words
    rows, columns = len(x_reads), len(dy_reads)
    out = np.zeros((groups, rows, columns), np.float32)
    tiles = rows * columns // (NARROW_ROWS if narrow else SUM_ROWS * SUM_COLUMNS)
    parts = max(1, min(workers.parts(), tiles * groups))
    params = np.array([parts, address(out), columns, address(x), address(x_reads),
                       address(dy), address(dy_reads), rows, plane, samples, groups,
                       all_channels * plane, channels * plane, out_channels * plane,
                       out_rows * plane, address(masks), address(mask_rows),
                       len(taps) * words, narrow, 0], np.int64)
    workers.run(_direct_sums_job, params)
    # (groups, C * taps, M) -> (groups * M, C, taps)
    found = out[:, :channels * len(taps), :out_rows].reshape(groups, channels, len(taps),
                                                              out_rows)
    return np.ascontiguousarray(found.transpose(0, 3, 1, 2)).reshape(out_channels, channels,
                                                                     len(taps))


def _check_reads(buffer, offsets, length, items, step):
    """Every item's reads stay inside ``buffer`` (the tiles read raw memory)."""
    if len(offsets) and (offsets.min() < 0 or
                         offsets.max() + (items - 1) * step + length > buffer.size):
        raise ValueError(f"reads at {offsets.min()}..{offsets.max()} + {length} (items "
                         f"{items}, {step} apart) outside {buffer.size} floats")


def _check_float32(name, array):
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-ordered float32")


_LINE_FLOATS = 16  # a 64-byte cache line


def aligned_array(shape):
    """A new C-ordered float32 array that starts on a cache line (a view of a larger one)."""
    count = math.prod(shape)
    storage = np.empty(count + _LINE_FLOATS, np.float32)
    start = (-address(storage) // 4) % _LINE_FLOATS
    return storage[start:start + count].reshape(shape)


def aligned_empty(rows, width):
    """A float32 (rows, >= width) array whose rows start at 64-byte boundaries: the sums
    read such rows 10-15% faster than rows that straddle cache lines."""
    return aligned_array((rows, -(-width // _LINE_FLOATS) * _LINE_FLOATS))


def products(out, x, offsets, weights, length, x_step=0):
    """out[..., m, p] = sum_j weights[..., m, j] * x.flat[i * x_step + offsets[j] + p] for p <
    length and each item i of the leading dim, if any: ``out`` (..., M, >= length) float32,
    unit stride along its rows, ``x`` C-ordered float32, ``offsets`` int64 (reads,),
    ``weights`` (M, reads), or (items, M, reads) for weights of their own."""
    if out.ndim == 2:
        out = out[None]
    items = out.shape[0]
    if out.dtype != np.float32 or out.strides[2] != 4 or out.shape[2] < length:
        raise ValueError("products: out must be float32 rows with unit stride")
    _check_float32("products: x", x)
    offsets = np.ascontiguousarray(offsets, np.int64)
    _check_reads(x, offsets, length, items, x_step)
    weights = np.asarray(weights, np.float32)
    if weights.shape[-2:] != (out.shape[1], len(offsets)) or \
            (weights.ndim == 3 and len(weights) != items):
        raise ValueError(f"products: weights {weights.shape} for {items} items of "
                         f"{out.shape[1]} rows and {len(offsets)} reads")
    packed = _pack((weights if weights.ndim == 3 else weights[None])[:, :, None, :],
                   product=True)
    parts = workers.parts() if items * length >= 2 * TILE else 1
    params = np.array([parts, address(out), out.strides[1] // 4, out.shape[1], address(x),
                       address(offsets), address(packed), len(offsets), length, items,
                       out.strides[0] // 4, x_step, packed.shape[1] if len(packed) > 1 else 0,
                       0, 0, 0], np.int64)
    workers.run(_products_job, params)


class Product:
    """out (M, >= length) += weights (M, reads) times a (reads, length) matrix, made again
    and again with new out and weights (a recurrent layer's steps): its parameters are made
    once, and the weights are read where they lie, C-ordered rows ``weight_stride`` floats
    apart (a step's states or gate gradients as the step's arithmetic wrote them), so no
    step packs or checks (packed as ``_pack`` lays them out, a copy of every value a step:
    an H 512 LSTM's 128 backward steps at batch 16 took 12.3-13.1 ms on two cores, in
    place 11.6-11.8; at batch 256, H 256, 31.7 and 26.3). The matrix
    comes as panels (``panels``, ``empty_panels``), each (reads, PANEL) of its columns on
    end: a tile then reads one run of memory, where the matrix's rows would have it read
    three cache lines from each of ``reads`` pages (M 16 by 2048 positions of 513 reads, an
    H 512 LSTM's step: 340 -> 135 us on two cores, 250 GFLOP/s; NumPy's BLAS took 300 us,
    torch's 183). Without ``accumulate``, out gets the product instead, its old values never
    read. With ``items``, the rows are that many equal items, each a part's (so a part's
    rows stay on its core, with the whole of the matrix); else the parts split the
    positions."""

    def __init__(self, rows, stride, panels, length, weight_stride, items=1, parts=None,
                 accumulate=True):
        if rows % items:
            raise ValueError(f"Product: {rows} rows in {items} equal items")
        if panels.dtype != np.float32 or not panels.flags.c_contiguous or \
                panels.shape[0] != -(-length // PANEL) or panels.shape[2] != PANEL:
            raise ValueError(f"Product: panels {panels.shape} for {length} columns")
        reads = panels.shape[1]
        if weight_stride < reads:
            raise ValueError(f"Product: weight rows {weight_stride} apart for {reads} reads")
        self.panels = panels  # read by address
        self.offsets = np.arange(reads, dtype=np.int64) * PANEL
        item_rows = rows // items
        parts = min(parts or workers.parts(), max(1, items * -(-length // TILE)))
        self.params = np.array([parts, 0, stride, item_rows, address(self.panels),
                                address(self.offsets), 0, reads, length, items,
                                item_rows * stride, 0, item_rows * weight_stride,
                                int(accumulate), PANEL, weight_stride], np.int64)

    def add(self, out, weights):
        """out += the product (out = it, made without ``accumulate``), by addresses: out's
        rows ``stride`` floats apart, the weights' ``weight_stride``."""
        self.bind(out, weights)
        workers.run(_products_job, self.params)

    def bind(self, out, weights):
        """Set the addresses ``add`` takes, for a job that runs ``products_part`` itself on
        these parameters."""
        self.params[1], self.params[6] = out, weights


def empty_panels(reads, length, width=PANEL):
    """Panels of ``width`` columns (a multiple of ``TILE``) for a (reads, length) matrix
    (``Product`` takes PANEL's, ``gemm`` wider ones), to be filled: the last one's
    columns past the matrix are zeros (its tiles read them, and store none of them). They
    start on a cache line, so that no vector the tiles load spans two (NumPy's arrays start
    16 bytes into one, or 32 or 48: a 2048 x 128 by 128 x 512 product 2-3% slower)."""
    panels = aligned_array((-(-length // width), reads, width))
    if length % width:
        panels[-1, :, length % width:] = 0
    return panels


def panels(matrix, width=PANEL):
    """A (reads, length) matrix as ``Product`` reads it, in panels of ``width`` columns."""
    reads, length = matrix.shape
    whole = length // width
    out = empty_panels(reads, length, width)
    out[:whole] = matrix[:, :whole * width].reshape(reads, whole, width).transpose(1, 0, 2)
    out[whole:, :, :length - whole * width] = matrix[:, whole * width:]
    return out


def _padded_reads(offsets, multiple):
    """``offsets`` padded to a multiple of a tile's side: the spare rows read the first
    one's positions again."""
    padded = np.full(-(-len(offsets) // multiple) * multiple, offsets[0] if len(offsets) else 0,
                     np.int64)
    padded[:len(offsets)] = offsets
    return padded


def sums(x, x_offsets, dy, dy_offsets, length, items=1, x_step=0, dy_step=0, each=False):
    """sums[j, m] = sum_i sum_p x.flat[i * x_step + x_offsets[j] + p] * dy.flat[i * dy_step +
    dy_offsets[m] + p] for p < length over the ``items``, (reads, M) float32; with ``each``,
    each item's own, (items, reads, M). ``x`` and ``dy`` C-ordered float32."""
    _check_float32("sums: x", x)
    _check_float32("sums: dy", dy)
    narrow = len(dy_offsets) == 1
    x_reads = _padded_reads(x_offsets, NARROW_ROWS if narrow else SUM_ROWS)
    dy_reads = _padded_reads(dy_offsets, 1 if narrow else SUM_COLUMNS)
    _check_reads(x, x_reads, length, items, x_step)
    _check_reads(dy, dy_reads, length, items, dy_step)
    rows, columns = len(x_reads), len(dy_reads)
    out = np.zeros((items if each else 1, rows, columns), np.float32)
    tiles = rows * columns // (NARROW_ROWS if narrow else SUM_ROWS * SUM_COLUMNS)
    parts = max(1, min(workers.parts(), tiles * (items if each else 1)))
    params = np.array([parts, address(out), columns, address(x), address(x_reads),
                       address(dy), address(dy_reads), rows, length, items,
                       rows * columns if each else 0, x_step, dy_step, narrow], np.int64)
    workers.run(_sums_job, params)
    out = out[:, :len(x_offsets), :len(dy_offsets)]
    return out if each else out[0]


def load() -> None:
    """Compile the jobs now (or load them from the cache), not on their first run."""
    _products_job.load()
    _sums_job.load()
    _direct_job.load()
    _pack_job.load()
    _direct_sums_job.load()
    _gradient_job.load()
    _channels_last_job.load()
