"""Attention's forward and backward in compiled jobs on the register tiles, on both cores.

NumPy's forward makes each block of a few (sample, head) pairs in about twenty calls
(transposed copies, two batched products, the max, the exponentials, the context's
scatter), which hold the interpreter's lock between them: at 256 keys and more a block is
two pairs, and the calls, not the products, set the pace. Here a (sample, kv head) pair is
a unit of work for one core: its keys and values transposed once (with the row of ones
the backward reads), then per tile of ``TILE`` query rows the scores key-major on the
product tile (8 keys by 48 queries, the head's size the reads, the transposed keys read in
place), the softmax down the keys with each query a lane (``_softmax``: vectors of 16, a
vector exp), and the context as the values' product with the exponentials (8 of the head's
values by 48 queries, the keys the reads, the values read in place).

At 16 samples of 4 heads of 32, 256 keys, the forward went 6.3-6.8 -> 4.2-4.4 ms (torch's
flash attention: 3.6); 512 causal 8.4-9.2 -> 5.9, 1024 16.7 -> 10.8; a step of the ViT at
256 patches 184 -> 173 ms, of the GPT at T 512 208 -> 196 (Intel Xeon, 2 cores).

It writes what NumPy's forward wrote, as the backward reads it: the keys and values
transposed with a row of ones, each block's scaled queries with minus their rows'
log-sum-exps in the last column, and up to KEPT_PROBABILITIES_KEYS the probabilities
(past it the backward makes them again from those). Those copies are blocks of LANES x
LANES transposed in registers (``_transpose``); one float at a time they had been 60% of
the job at 64 keys (a GPT layer at T 64, 32 samples of 4 heads of 32: 1.45 ms, where
NumPy's forward took 1.2; now 0.81) and 20% at 196.

The backward job (``backward``) takes a (sample, kv head) pair at a time too, each of its
query blocks in turn: the probabilities the forward kept (up to KEPT_PROBABILITIES_KEYS),
or made again as exp(the scores minus each row's log-sum-exp, which the queries' last
column holds against kt's row of ones); the scores' gradient as the output gradients' rows
against the values (vt's ones row meeting minus each row's dC . C) times them; then dV, dK
and dQ as three more products, each operand read in place or from one transposed copy,
the gradients written through their steps (a packed projection's), dK and dV added to
over a layer's query blocks. Heads of 32 or 64 values and 64 queries would fill
three-vector tiles to two thirds: those products take two-vector ones
(``narrow_stepped_product``). NumPy's backward made four batched products of small
matrices a block (164 GFLOP/s at 64 keys) and some ten calls around them: 32 samples of 4
heads of 32, 64 keys, causal, 1.26 -> 0.87 ms; 16 of 8 heads at 196 keys 11.1 -> 8.5
(torch 10.0); 128 causal 5.1 -> 4.3; 8 of 6 heads of 64 at 256 causal 8.9 -> 7.9.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import fused, workers
from .blas import address
from .tiled import LANES, NARROW_TILE, ROWS, TILE, Emitter, narrow_stepped_product, stepped_product
from .workers import part_range

PARAMETERS = 33
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)


def _emit_softmax(builder, scores, seen, lanes, causal, positions, peaks, totals):
    """The exponentials of a tile's scores less each lane's max, down its ``seen`` rows
    (TILE floats each, in place), with each lane's max and sum into ``peaks`` and
    ``totals`` (TILE floats); with ``causal`` not 0, row j of lane p counts only when j <=
    positions[p] (int32), else its exponential is 0. Lanes from ``lanes`` on are read as
    zeros and their results are not used. NaN scores make NaN sums."""
    emit = Emitter(builder)
    vectors = TILE // LANES
    scores, peaks, totals = emit.floats(scores), emit.floats(peaks), emit.floats(totals)
    vector = emit.vector
    int_vector = ir.VectorType(_I32, LANES)
    module = builder.module
    floor = cgutils.get_or_insert_function(
        module, ir.FunctionType(vector, [vector]), f"llvm.floor.v{LANES}f32")
    masks = [emit.mask(lanes, v * LANES) for v in range(vectors)]
    integers = builder.inttoptr(positions, _I32.as_pointer())
    reach = [builder.load(builder.bitcast(builder.gep(integers, [emit.int(v * LANES)]),
                                          int_vector.as_pointer()), align=4)
             for v in range(vectors)]
    causal_on = _splat(builder, builder.icmp_signed("!=", causal, emit.int(0)))
    minus_infinity = ir.Constant(vector, [float("-inf")] * LANES)

    def constant(value):
        return ir.Constant(vector, [float(np.float32(value))] * LANES)

    def row_scores(j):
        """Row j's vectors, -inf where the causal mask hides them."""
        row = _splat(builder, builder.trunc(j, _I32))
        loaded = []
        for v in range(vectors):
            value = emit.load(scores, builder.add(builder.mul(j, emit.int(TILE)),
                                                  emit.int(v * LANES)), masks[v])
            hidden = builder.and_(builder.icmp_signed(">", row, reach[v]), causal_on)
            loaded.append(builder.select(hidden, minus_infinity, value))
        return loaded

    def exp_negative(x):
        """fused._exp_negative on a vector: exp(x) for x <= 0, 0 below -87, NaN kept."""
        lowest = constant(fused.EXP_LOWEST)
        clamped = builder.select(builder.fcmp_ordered(">", x, lowest), x, lowest)
        k = builder.call(floor, [builder.call(emit.fma, [clamped, constant(fused.LOG2_E),
                                                         constant(0.5)])])
        r = builder.call(emit.fma, [k, constant(-fused.LN2_HIGH), clamped])
        r = builder.call(emit.fma, [k, constant(-fused.LN2_LOW), r])
        p = constant(fused.EXP_POLYNOMIAL[0])
        for coefficient in fused.EXP_POLYNOMIAL[1:]:
            p = builder.call(emit.fma, [p, r, constant(coefficient)])
        p = builder.fadd(builder.call(emit.fma, [p, builder.fmul(r, r), r]), constant(1.0))
        exponent = builder.shl(builder.add(builder.fptosi(k, int_vector),
                                           ir.Constant(int_vector, [127] * LANES)),
                               ir.Constant(int_vector, [23] * LANES))
        value = builder.fmul(p, builder.bitcast(exponent, vector))
        value = builder.select(builder.fcmp_ordered("<", x, lowest), emit.zero, value)
        return builder.select(builder.fcmp_unordered("uno", x, x), x, value)

    def peak_step(j, carried):  # (a NaN score is passed over here, and spreads in the sums)
        return [builder.select(builder.fcmp_ordered(">", value, peak), value, peak)
                for peak, value in zip(carried, row_scores(j))]

    found = emit.loop(seen, [minus_infinity] * vectors, peak_step)

    def exp_step(j, carried):
        sums = []
        for v, (value, total) in enumerate(zip(row_scores(j), carried)):
            e = exp_negative(builder.fsub(value, found[v]))
            emit.store(e, scores, builder.add(builder.mul(j, emit.int(TILE)),
                                              emit.int(v * LANES)), masks[v])
            sums.append(builder.fadd(total, e))
        return sums

    sums = emit.loop(seen, [emit.zero] * vectors, exp_step)
    for v in range(vectors):
        emit.store(found[v], peaks, emit.int(v * LANES))
        emit.store(sums[v], totals, emit.int(v * LANES))


def _emit_transpose(builder, sources, rows, columns, destinations, row_scales):
    """A block of LANES x LANES floats transposed in registers: destination row c (c <
    ``columns``) gets lanes r < ``rows`` of source row r's lane c times row_scales[c].
    ``sources`` and ``destinations`` are the addresses of LANES row addresses (int64)
    each, ``row_scales`` of LANES floats; a source row past ``rows`` or a lane past
    ``columns`` is not read, a destination lane past ``rows`` or row past ``columns`` not
    written. Each of log2(LANES) rounds swaps one bit of the row number with the same bit
    of the lane number, one two-vector shuffle a row: the scalar copies it replaced moved
    an element in about 4 cycles."""
    emit = Emitter(builder)
    i64 = ir.IntType(64)
    source_rows = builder.inttoptr(sources, i64.as_pointer())
    destination_rows = builder.inttoptr(destinations, i64.as_pointer())
    factors = emit.floats(row_scales)
    in_columns = emit.mask(columns, 0)
    in_rows = emit.mask(rows, 0)
    no_lanes = ir.Constant(ir.VectorType(_I1, LANES), None)
    vectors = []
    for r in range(LANES):
        row = emit.floats(builder.load(emit.at(source_rows, emit.int(r))))
        mask = builder.select(builder.icmp_signed(">", rows, emit.int(r)), in_columns,
                              no_lanes)
        vectors.append(emit.load(row, emit.int(0), mask))
    bit = 1
    while bit < LANES:
        for i in range(LANES):
            if i & bit:
                continue
            j = i | bit
            low = [lane if not lane & bit else LANES + (lane ^ bit) for lane in range(LANES)]
            high = [lane ^ bit if not lane & bit else LANES + lane for lane in range(LANES)]
            vectors[i], vectors[j] = (
                builder.shuffle_vector(vectors[i], vectors[j],
                                       ir.Constant(ir.VectorType(_I32, LANES), low)),
                builder.shuffle_vector(vectors[i], vectors[j],
                                       ir.Constant(ir.VectorType(_I32, LANES), high)))
        bit *= 2
    for c in range(LANES):
        written = builder.icmp_signed(">", columns, emit.int(c))
        with builder.if_then(written):
            row = emit.floats(builder.load(emit.at(destination_rows, emit.int(c))))
            scaled = builder.fmul(vectors[c],
                                  emit.splat(builder.load(emit.at(factors, emit.int(c)))))
            emit.store(scaled, row, emit.int(0), in_rows)


@intrinsic
def _transpose(typingctx, sources, rows, columns, destinations, row_scales):
    """``_emit_transpose`` (addresses and counts as int64)."""
    def codegen(context, builder, signature, args):
        _emit_transpose(builder, *args)
        return context.get_dummy_value()
    return types.void(*(types.int64,) * 5), codegen


@numba.njit(inline="always")
def _transposed_copy(source, source_step, rows, columns, destination, destination_step,
                     scratch):
    """destination[c * destination_step + r] = source[r * source_step + c] for r < rows and
    c < columns (float32 addresses, steps in floats), by ``_transpose``'s blocks; ``scratch``
    (addresses of LANES int64 source rows, LANES int64 destination rows, LANES ones)."""
    sources_at, destinations_at, ones_at = scratch
    sources, destinations = workers.int64s(sources_at, LANES), \
        workers.int64s(destinations_at, LANES)
    for first_row in range(0, rows, LANES):
        block_rows = min(LANES, rows - first_row)
        for first_column in range(0, columns, LANES):
            block_columns = min(LANES, columns - first_column)
            for r in range(LANES):
                sources[r] = source + 4 * (
                    (first_row + min(r, block_rows - 1)) * source_step + first_column)
                destinations[r] = destination + 4 * (
                    (first_column + min(r, block_columns - 1)) * destination_step + first_row)
            _transpose(sources_at, block_rows, block_columns, destinations_at, ones_at)


def _splat(builder, scalar):
    """An integer (an i1 or i32) as a vector of LANES copies."""
    vector = ir.VectorType(scalar.type, LANES)
    one = builder.insert_element(ir.Constant(vector, None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, LANES),
                                                        [0] * LANES))


@intrinsic
def _softmax(typingctx, scores, seen, lanes, causal, positions, peaks, totals):
    """``_emit_softmax`` (addresses and counts as int64)."""
    def codegen(context, builder, signature, args):
        _emit_softmax(builder, *args)
        return context.get_dummy_value()
    return types.void(*(types.int64,) * 7), codegen


@workers.Task
def _forward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, q, its steps a sample, a step and a head, k and its three steps, v and
    its three steps, context (N, T, KVH, G, d) C-ordered, samples, kv heads, group, d,
    steps, keys, causal, scale's bits, kt and vt (N, KVH, d + 1, S) C-ordered, each (head
    block, query block)'s queries' address, the query blocks' (start, end, keys), their
    count, samples and kv heads a head block, offsets (j * TILE), scratch, its floats a
    part)."""
    params = workers.parameters(args, PARAMETERS)
    q_sample, q_step, q_head = params[2], params[3], params[4]
    k_sample, k_step, k_head = params[6], params[7], params[8]
    v_sample, v_step, v_head = params[10], params[11], params[12]
    batch, kv_heads, group, dim = params[14], params[15], params[16], params[17]
    steps, keys_total, causal = params[18], params[19], params[20]
    scale = np.float32(workers.number(params, 21))
    block_count, sample_step, kv_step = params[26], params[27], params[28]
    offsets, per_part = params[29], params[31]
    heads = kv_heads * group
    kv_blocks = (kv_heads + kv_step - 1) // kv_step
    qf = workers.floats(params, 1, ((batch - 1) * q_sample + (steps - 1) * q_step
                                    + (heads - 1) * q_head + dim,))
    rows_width = dim + 1
    kt = workers.floats(params, 22, (batch * kv_heads * rows_width * keys_total,))
    vt = workers.floats(params, 23, (batch * kv_heads * rows_width * keys_total,))
    queries_table = workers.integers(params, 24, (batch + sample_step - 1) // sample_step
                                     * kv_blocks * block_count)
    query_blocks = workers.integers(params, 25, 3 * block_count)
    # the part's scratch, in floats from its start: the queries transposed (d, TILE), the
    # scores (S, TILE), the context transposed (d, TILE), the lanes' maxima, sums, query
    # positions and inverse sums (TILE each), the lanes' context rows (TILE int64), a
    # transpose's source and destination rows (LANES int64 each) and LANES ones; the tiles
    # take addresses, the loops views
    scratch = workers.floats(params, 30, (params[0] * per_part,))
    queries_from = part * per_part
    scores_from = queries_from + dim * TILE
    out_from = scores_from + keys_total * TILE
    peaks_from = out_from + dim * TILE
    totals_from, positions_from = peaks_from + TILE, peaks_from + 2 * TILE
    queries_at, scores_at = params[30] + 4 * queries_from, params[30] + 4 * scores_from
    out_at, peaks_at = params[30] + 4 * out_from, params[30] + 4 * peaks_from
    totals_at, positions_at = params[30] + 4 * totals_from, params[30] + 4 * positions_from
    peaks = scratch[peaks_from:totals_from]
    scores = scratch[scores_from:out_from]
    totals = scratch[totals_from:positions_from]
    positions = workers.int32s(positions_at, TILE)
    inverses_at = positions_at + 4 * TILE
    inverses = workers.floats_at(inverses_at, TILE)
    context_rows_at = inverses_at + 4 * TILE
    context_rows = workers.int64s(context_rows_at, TILE)
    sources_at = context_rows_at + 8 * TILE
    sources = workers.int64s(sources_at, LANES)
    destinations_at = sources_at + 8 * LANES
    destinations = workers.int64s(destinations_at, LANES)
    ones_at = destinations_at + 8 * LANES
    workers.floats_at(ones_at, LANES)[:] = 1
    transposing = (sources_at, destinations_at, ones_at)
    # each (head block, query block)'s kept probabilities (none where not kept)
    probability_blocks = workers.int64s(params[32], len(queries_table) if params[32] else 0)
    start_pair, end_pair = part_range(batch * kv_heads, part, params[0], 1)
    for pair in range(start_pair, end_pair):
        sample, kv = pair // kv_heads, pair % kv_heads
        pair_rows = pair * rows_width * keys_total
        # keys and values transposed, with a row of ones, for the backward (and the keys
        # for the scores' tiles)
        k_pair = sample * k_sample + kv * k_head
        v_pair = sample * v_sample + kv * v_head
        _transposed_copy(params[5] + 4 * k_pair, k_step, keys_total, dim,
                         params[22] + 4 * pair_rows, keys_total, transposing)
        _transposed_copy(params[9] + 4 * v_pair, v_step, keys_total, dim,
                         params[23] + 4 * pair_rows, keys_total, transposing)
        kt[pair_rows + dim * keys_total:pair_rows + rows_width * keys_total] = 1
        vt[pair_rows + dim * keys_total:pair_rows + rows_width * keys_total] = 1
        head_block, block_samples, block_kvs, local = _in_head_block(
            sample, kv, batch, kv_heads, sample_step, kv_step)
        for number in range(block_count):
            start, keys, width, block_rows, block = _query_block(
                query_blocks, number, group, head_block, block_count)
            queries = workers.floats(queries_table, block,
                                     (block_samples * block_kvs * block_rows * rows_width,))
            pair_queries = local * block_rows * rows_width
            for first in range(0, block_rows, TILE):
                lanes = min(TILE, block_rows - first)
                last_position = 0
                for p in range(lanes):
                    row = first + p
                    g, t = row // width, start + row % width
                    positions[p] = t
                    last_position = max(last_position, t)
                    q_row = sample * q_sample + t * q_step + (kv * group + g) * q_head
                    at = pair_queries + row * rows_width
                    fused.scaled(qf[q_row:q_row + dim], scale, queries[at:at + dim])
                    context_rows[p] = params[13] + 4 * (
                        (((sample * steps + t) * kv_heads + kv) * group + g) * dim)
                # the tile's queries transposed: qt[c, p]
                _transposed_copy(queries_table[block] + 4 * (pair_queries + first * rows_width),
                                 rows_width, lanes, dim, queries_at, TILE, transposing)
                seen = min(keys, last_position + 1) if causal else keys
                masked = lanes < TILE
                # scores[j, p] = sum over c of keys[j, c] * queries[p, c]: the transposed
                # keys' rows read in place, ROWS keys a tile
                j = 0
                while j < seen:
                    rows = min(ROWS, seen - j)
                    stepped_product(2 * (rows - 1) + masked, scores_at + 4 * j * TILE, TILE,
                                     queries_at, offsets, params[22] + 4 * (pair_rows + j),
                                     keys_total, dim, lanes, 0)
                    j += rows
                _softmax(scores_at, seen, lanes, causal, positions_at, peaks_at, totals_at)
                for p in range(lanes):
                    inverses[p] = 1 / totals[p]
                if params[32]:  # probs[j, n, kv, row], kept for the backward
                    block_probabilities = workers.floats_at(
                        probability_blocks[block], keys * block_samples * block_kvs * block_rows)
                    key_step = block_samples * block_kvs * block_rows
                    at = local * block_rows + first
                    for j in range(keys):
                        row = block_probabilities[j * key_step + at:j * key_step + at + lanes]
                        if j < seen:
                            fused.multiply(scores[j * TILE:j * TILE + lanes], inverses[:lanes],
                                           row)
                        else:
                            row[:] = 0
                # out[e, p] = sum over j of values[j, e] * exp scores[j, p]: the values'
                # rows read in place, ROWS of the head's values a tile
                e = 0
                while e < dim:
                    rows = min(ROWS, dim - e)
                    stepped_product(2 * (rows - 1) + masked, out_at + 4 * e * TILE, TILE,
                                     scores_at, offsets, params[9] + 4 * (v_pair + e), v_step,
                                     seen, lanes, 0)
                    e += rows
                for p in range(lanes):
                    row = first + p
                    queries[pair_queries + row * rows_width + dim] = \
                        -(peaks[p] + np.log(totals[p]))
                # the context rows: out[c, p] / totals[p], transposed
                for p in range(0, lanes, LANES):
                    columns = min(LANES, lanes - p)
                    for c in range(0, dim, LANES):
                        rows = min(LANES, dim - c)
                        for r in range(LANES):
                            sources[r] = out_at + 4 * ((c + min(r, rows - 1)) * TILE + p)
                            destinations[r] = context_rows[p + min(r, columns - 1)] + 4 * c
                        _transpose(sources_at, rows, columns, destinations_at,
                                   inverses_at + 4 * p)
    return 0


def applies(q, k, v) -> bool:
    """Whether the job reads these as they are: float32, each head's values one run."""
    return all(a.dtype == np.float32 and a.strides[-1] == 4 and min(a.strides) >= 0 and
               all(step % 4 == 0 for step in a.strides) for a in (q, k, v))


# scores (over all pairs) below which one core does them all: the second core's dispatch
# costs about what a core takes for these (not tuned; the job runs from 97 keys, where
# even two pairs pass it)
SPLIT_MIN_SCORES = 1 << 16


def forward(q, k, v, *, causal, scale, head_blocks, query_blocks, kt, vt, context,
            keep=False):
    """``attention.scaled_dot_product``'s forward without masks or dropout: fills
    ``context`` (N, T, KVH, G, d), ``kt`` and ``vt`` (N, KVH, d + 1, S), and returns each
    (head block, query block)'s scaled queries with minus their rows' log-sum-exps last,
    (n, kv, G * Tq, d + 1), in that order, and with ``keep`` its probabilities as the
    backward keeps them, (keys, n, kv, G * Tq) (else None each). ``head_blocks`` are the
    plan's grid of (samples, kv heads) slices."""
    batch, steps, heads, dim = q.shape
    keys_total, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    samples, kvs = head_blocks[0]
    queries = [np.empty((s.stop - s.start, h.stop - h.start, group * (end - start), dim + 1),
                        np.float32)
               for s, h in head_blocks for start, end, _ in query_blocks]
    table = np.array([address(block) for block in queries], np.int64)
    probabilities = [np.empty((keys, s.stop - s.start, h.stop - h.start,
                               group * (end - start)), np.float32) if keep else None
                     for s, h in head_blocks for start, end, keys in query_blocks]
    probabilities_table = np.array([address(block) for block in probabilities], np.int64) \
        if keep else None
    blocks = np.array(query_blocks, np.int64).reshape(-1)
    offsets = np.arange(max(keys_total, dim), dtype=np.int64) * TILE
    # the job's scratch
    per_part = -(-((2 * dim + keys_total + 6) * TILE + 5 * LANES) // 16) * 16
    pairs = batch * kv_heads
    parts = min(workers.parts(), pairs) if pairs * group * steps * keys_total >= \
        SPLIT_MIN_SCORES else 1
    scratch = np.empty(parts * per_part, np.float32)
    params = np.array([
        parts, address(q), *(step // 4 for step in q.strides[:3]),
        address(k), *(step // 4 for step in k.strides[:3]),
        address(v), *(step // 4 for step in v.strides[:3]),
        address(context), batch, kv_heads, group, dim, steps, keys_total, int(causal),
        workers.float_bits(scale), address(kt), address(vt), address(table),
        address(blocks), len(query_blocks), samples.stop - samples.start,
        kvs.stop - kvs.start, address(offsets), address(scratch), per_part,
        0 if probabilities_table is None else address(probabilities_table)], np.int64)
    workers.run(_forward_job, params)
    return queries, probabilities


BACKWARD_PARAMETERS = 42


@numba.njit(inline="always")
def _in_head_block(sample, kv, batch, kv_heads, sample_step, kv_step):
    """A (sample, kv head) pair's head block of the plan's grid (blocks of ``sample_step``
    samples by ``kv_step`` kv heads, row-major), the block's samples and kv heads, and the
    pair's index within it."""
    first_sample, first_kv = sample - sample % sample_step, kv - kv % kv_step
    kv_blocks = (kv_heads + kv_step - 1) // kv_step
    block_kvs = min(kv_step, kv_heads - first_kv)
    return (sample // sample_step * kv_blocks + kv // kv_step,
            min(sample_step, batch - first_sample), block_kvs,
            (sample - first_sample) * block_kvs + kv - first_kv)


@numba.njit(inline="always")
def _query_block(query_blocks, number, group, head_block, block_count):
    """Query block ``number`` of a pair (the (start, end, keys) rows of ``query_blocks``):
    its first query, the keys it reads, its queries, its rows (a query's ``group`` heads
    each) and its index among all (head block, query block)s."""
    start, end = query_blocks[3 * number], query_blocks[3 * number + 1]
    width = end - start
    return (start, query_blocks[3 * number + 2], width, group * width,
            head_block * block_count + number)


@numba.njit(inline="always")
def _stepped_products(out, out_step, x, offsets, weights, weights_step, reads, rows,
                      positions, accumulate=0):
    """out[r * out_step + p] = sum over j < reads of weights[j * weights_step + r] *
    x[offsets[j] + p] for r < rows, p < positions (float32 addresses, steps in floats),
    added to out's values where ``accumulate`` is not 0: ``stepped_product``'s tiles of
    ROWS rows by TILE positions, or by NARROW_TILE where those cover the positions with
    fewer lanes (64 of them: 64 lanes against 96)."""
    narrow = (positions + NARROW_TILE - 1) // NARROW_TILE * NARROW_TILE < \
        (positions + TILE - 1) // TILE * TILE
    width = NARROW_TILE if narrow else TILE
    r = 0
    while r < rows:
        tile_rows = min(ROWS, rows - r)
        p = 0
        while p < positions:
            shape = 2 * (tile_rows - 1) + (p + width > positions)
            if narrow:
                narrow_stepped_product(shape, out + 4 * (r * out_step + p), out_step, x + 4 * p,
                                       offsets, weights + 4 * r, weights_step, reads,
                                       positions - p, accumulate)
            else:
                stepped_product(shape, out + 4 * (r * out_step + p), out_step, x + 4 * p,
                                offsets, weights + 4 * r, weights_step, reads, positions - p,
                                accumulate)
            p += width
        r += tile_rows


@workers.Task
def _backward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, k and its three steps, dq and its three steps, dk and its three steps,
    dv and its three steps, samples, kv heads, group, d, steps, keys, kt, vt, d_context,
    context, each (head block, query block)'s queries and kept probabilities (address
    tables; no probabilities: 0), samples and kv heads a head block, the query blocks'
    (start, end, keys), their count, causal, the most rows a block (R), offsets j * R,
    offsets e * S, offsets row * (d + 1), each block's rows' places in a pair's rows of
    d_context and where each block's start, scratch, its floats a part): a (sample, kv
    head) pair a unit, its query blocks in turn."""
    params = workers.parameters(args, BACKWARD_PARAMETERS)
    k_sample, k_step, k_head = params[2], params[3], params[4]
    dq_sample, dq_step, dq_head = params[6], params[7], params[8]
    dk_sample, dk_step, dk_head = params[10], params[11], params[12]
    dv_sample, dv_step, dv_head = params[14], params[15], params[16]
    batch, kv_heads, group, dim = params[17], params[18], params[19], params[20]
    steps, keys_total = params[21], params[22]
    rows_width = dim + 1
    sample_step, kv_step = params[29], params[30]
    block_count, causal, most_rows = params[32], params[33] != 0, params[34]
    kv_blocks = (kv_heads + kv_step - 1) // kv_step
    tables = (batch + sample_step - 1) // sample_step * kv_blocks * block_count
    queries_table = workers.integers(params, 27, tables)
    kept = params[28] != 0
    probabilities_table = workers.integers(params, 28, tables if kept else 0)
    query_blocks = workers.integers(params, 31, 3 * block_count)
    by_rows, by_keys, by_widths = params[35], params[36], params[37]
    row_starts = workers.integers(params, 39, block_count + 1)
    row_offsets = workers.int64s(params[38], row_starts[block_count])
    row_step = kv_heads * group * dim
    values = batch * steps * row_step
    d_context = workers.floats_at(params[25], values)
    context = workers.floats_at(params[26], values)
    # dK and dV gather over a pair's query blocks (zeroed first, each block's products
    # added to them)
    several = 1 if block_count > 1 or query_blocks[2] != keys_total else 0
    # the part's scratch, in floats: the output gradients' rows transposed (d + 1, R), the
    # queries transposed (d + 1, R), the probabilities and the scores' gradient query-major
    # (R, S each), the scores key-major (S, R), the queries' gradient transposed (d, R),
    # then a transpose's rows and ones
    per_part = params[41]
    gradients_t = params[40] + 4 * part * per_part
    queries_t = gradients_t + 4 * rows_width * most_rows
    probabilities = queries_t + 4 * rows_width * most_rows
    scores = probabilities + 4 * most_rows * keys_total
    scores_t = scores + 4 * most_rows * keys_total
    d_queries_t = scores_t + 4 * keys_total * most_rows
    sources_at = d_queries_t + 4 * dim * most_rows
    destinations_at = sources_at + 8 * LANES
    ones_at = destinations_at + 8 * LANES
    workers.floats_at(ones_at, LANES)[:] = 1
    transposing = (sources_at, destinations_at, ones_at)
    minus_sums = workers.floats_at(gradients_t + 4 * dim * most_rows, most_rows)
    scores_view = workers.floats_at(scores, most_rows * keys_total)
    probabilities_view = workers.floats_at(probabilities, most_rows * keys_total)
    scores_t_view = workers.floats_at(scores_t, keys_total * most_rows)
    start_pair, end_pair = part_range(batch * kv_heads, part, params[0], 1)
    for pair in range(start_pair, end_pair):
        sample, kv = pair // kv_heads, pair % kv_heads
        head_block, block_samples, block_kvs, local = _in_head_block(
            sample, kv, batch, kv_heads, sample_step, kv_step)
        k_pair = params[1] + 4 * (sample * k_sample + kv * k_head)
        kt_pair = params[23] + 4 * pair * rows_width * keys_total
        vt_pair = params[24] + 4 * pair * rows_width * keys_total
        dk_pair = params[9] + 4 * (sample * dk_sample + kv * dk_head)
        dv_pair = params[13] + 4 * (sample * dv_sample + kv * dv_head)
        # the pair's rows of d_context: (g, t) at pair_rows + t * row_step + g * d
        pair_rows = (sample * steps * kv_heads + kv) * group * dim
        if several:
            for target, target_step in ((dk_pair, dk_step), (dv_pair, dv_step)):
                for j in range(keys_total):
                    workers.floats_at(target + 4 * j * target_step, dim)[:] = 0
        for number in range(block_count):
            start, keys, width, rows, block = _query_block(query_blocks, number, group,
                                                           head_block, block_count)
            queries = queries_table[block] + 4 * local * rows * rows_width
            offsets = params[38] + 8 * row_starts[number]
            # the output gradients' rows transposed, with minus each row's dC . C (its sum
            # of dP * P) last
            for g in range(group):
                _transposed_copy(params[25] + 4 * (pair_rows + start * row_step + g * dim),
                                 row_step, width, dim, gradients_t + 4 * g * width, most_rows,
                                 transposing)
            for row in range(rows):
                at = pair_rows + row_offsets[row_starts[number] + row]
                minus_sums[row] = -fused.dot(d_context[at:at + dim], context[at:at + dim])
            if kept:  # the forward's probabilities, key-major
                key_step = block_samples * block_kvs * rows
                _transposed_copy(probabilities_table[block] + 4 * local * rows, key_step, keys,
                                 rows, probabilities, keys_total, transposing)
            else:  # made again: exp(scores minus each row's log-sum-exp), which the queries'
                # last column holds against kt's row of ones
                _transposed_copy(queries, rows_width, rows, rows_width, queries_t, most_rows,
                                 transposing)
                _stepped_products(scores_t, most_rows, queries_t, by_rows, kt_pair, keys_total,
                                  rows_width, keys, rows)
                for j in range(keys):
                    row = scores_t_view[j * most_rows:j * most_rows + rows]
                    fused.exp_in_place(row)
                    hidden = min(width, j - start) if causal else 0
                    for g in range(group if hidden > 0 else 0):  # queries before key j
                        row[g * width:g * width + hidden] = 0
                _transposed_copy(scores_t, most_rows, keys, rows, probabilities, keys_total,
                                 transposing)
            # dP - sum(dP * P): the output gradients' rows against the values, their minus
            # sums meeting vt's row of ones; times P, the scores' gradient (and key-major)
            _stepped_products(scores, keys_total, vt_pair, by_keys, gradients_t, most_rows,
                              rows_width, rows, keys)
            for row in range(rows):
                at = row * keys_total
                fused.multiply_in_place(scores_view[at:at + keys],
                                        probabilities_view[at:at + keys])
            _transposed_copy(scores, keys_total, rows, keys, scores_t, most_rows, transposing)
            # dV[j, e] = sum over rows of P[row, j] dC[row, e]; dK[j, e] of dS[row, j]
            # Q[row, e]: straight into dV and dK, added to them over several blocks (a
            # block's sums added key by key afterwards took 13 of a layer's 74 ms at 512
            # keys, 32 samples of 4 heads)
            for target, target_step, weights, x, x_offsets in (
                    (dv_pair, dv_step, probabilities, params[25] + 4 * pair_rows, offsets),
                    (dk_pair, dk_step, scores, queries, by_widths)):
                _stepped_products(target, target_step, x, x_offsets, weights, keys_total,
                                  rows, keys, dim, several)
            # dQ transposed: dQ^T[e, row] = sum over keys of K[j, e] dS^T[j, row]
            _stepped_products(d_queries_t, most_rows, scores_t, by_rows, k_pair, k_step, keys,
                              dim, rows)
            for g in range(group):
                _transposed_copy(d_queries_t + 4 * g * width, most_rows, dim, width,
                                 params[5] + 4 * (sample * dq_sample + start * dq_step
                                                  + (kv * group + g) * dq_head),
                                 dq_step, transposing)
    return 0


def backward(k, dq, dk, dv, *, kt, vt, d_context, context, head_blocks, query_blocks,
             queries, probabilities, causal):
    """``attention.scaled_dot_product``'s backward without masks or dropout: fills ``dq``
    (N, T, H, d), ``dk`` and ``dv`` (N, S, KVH, d) (any steps, each head's values one run)
    from ``d_context`` (N, T, KVH, G, d), the forward's ``context`` (C-ordered, as it),
    ``kt`` and ``vt``, and per (head block, query block) its ``queries`` (minus their
    rows' log-sum-exps last) and kept ``probabilities`` (None each where not kept: the job
    makes them again)."""
    batch, keys, kv_heads, dim = k.shape
    steps, group = d_context.shape[1], d_context.shape[3]
    row_step = kv_heads * group * dim
    d_context = np.ascontiguousarray(d_context)
    samples, kvs = head_blocks[0]
    most_rows = group * max(end - start for start, end, _ in query_blocks)
    queries_table = np.array([address(block) for block in queries], np.int64)
    kept = probabilities[0] is not None
    probabilities_table = np.array([address(block) for block in probabilities], np.int64) \
        if kept else None
    blocks = np.array(query_blocks, np.int64).reshape(-1)
    by_rows = np.arange(max(keys, dim + 1), dtype=np.int64) * most_rows
    by_keys = np.arange(dim + 1, dtype=np.int64) * keys
    by_widths = np.arange(most_rows, dtype=np.int64) * (dim + 1)
    # each block's rows (g, t) as places in a pair's rows of d_context
    row_offsets = np.concatenate([
        ((start + np.arange(end - start, dtype=np.int64))[None, :] * row_step
         + np.arange(group, dtype=np.int64)[:, None] * dim).reshape(-1)
        for start, end, _ in query_blocks])
    row_starts = np.concatenate([[0], np.cumsum([group * (end - start)
                                                 for start, end, _ in query_blocks])])
    row_starts = row_starts.astype(np.int64)
    per_part = -(-(2 * (dim + 1) * most_rows + 3 * most_rows * keys + dim * most_rows
                   + 5 * LANES) // 16) * 16
    pairs = batch * kv_heads
    parts = min(workers.parts(), pairs) if pairs * group * steps * keys >= SPLIT_MIN_SCORES \
        else 1
    scratch = np.empty(parts * per_part, np.float32)
    params = np.array([
        parts, address(k), *(step // 4 for step in k.strides[:3]),
        address(dq), *(step // 4 for step in dq.strides[:3]),
        address(dk), *(step // 4 for step in dk.strides[:3]),
        address(dv), *(step // 4 for step in dv.strides[:3]),
        batch, kv_heads, group, dim, steps, keys, address(kt), address(vt),
        address(d_context), address(context), address(queries_table),
        0 if probabilities_table is None else address(probabilities_table),
        samples.stop - samples.start, kvs.stop - kvs.start, address(blocks),
        len(query_blocks), int(causal), most_rows, address(by_rows), address(by_keys),
        address(by_widths), address(row_offsets), address(row_starts), address(scratch),
        per_part], np.int64)
    workers.run(_backward_job, params)


def load() -> None:
    """Compile the jobs now (or load them from the cache), not on their first run."""
    _forward_job.load()
    _backward_job.load()
