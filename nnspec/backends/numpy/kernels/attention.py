"""Multi-head attention: self- and cross-attention, grouped-query heads, masks, attention
dropout and rotary position embeddings, with torch's parameter layouts (nn.MultiheadAttention's
packed or separate projections, or LLaMA's q_proj/k_proj/v_proj/o_proj)."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from nnspec.backends.numpy.kernels import (
    attention_tiles,
    fused,
    gemm,
    gradient_slots,
    parallel,
    workers,
)
from nnspec.backends.numpy.kernels.dense import affine, column_sums

# Attention runs over blocks of (sample, kv head) pairs and queries whose scores fill at most
# about this many floats (512 KiB): a block's scores, probabilities and their gradients stay
# in the core's cache across the half-dozen passes over them. 2^16 to 2^18 measured within
# 10% of it from T 64 to 512, smaller and larger blocks up to 35% slower. Past
# KEPT_PROBABILITIES_KEYS keys the backward recomputes the probabilities from the saved rows'
# log-sum-exps (as flash attention does) instead of keeping every probability matrix, the
# largest thing a long sequence would hold.
SCORE_BLOCK_FLOATS = 1 << 17
# Up to this many keys the forward keeps its probabilities for the backward instead: there a
# head's score products are too small for BLAS to redo them cheaply (recomputing measured
# 1.2-1.4x slower at 32-64 keys; with the heads split between the cores, 1.06-1.12x at
# 100-128, causal or not), and the probabilities take about the memory of the layer's
# queries, keys and values at a head size of 32 (torch's attention keeps them too). Past it
# the backward recomputes them, from 100 keys (a step at 128 keys 1-2% faster than with them
# kept, at 100 keys and heads of 16 3%; at 65 keys 0.6-1.6% slower; measured with NumPy's
# backward, before ``attention_tiles``' backward job)
KEPT_PROBABILITIES_KEYS = 96
# The forward is ``attention_tiles``' compiled job from this many queries and keys, keeping
# the probabilities or not (32 samples of 4 heads of 32, causal: 64 keys 1.01 -> 0.81 ms,
# 48 0.86 -> 0.47; 64 samples of 4 heads of 16 at 24 keys 0.51 -> 0.29), NumPy's below (at
# 16 keys the job's 48-query tiles run a third full: 0.22 -> 0.28 ms)
COMPILED_MIN_KEYS = 24
# A block's queries, where not causal: as many as keep its scores under QUERY_BLOCK_FLOATS
# (256 KiB), so that the backward job's three arrays of a block's scores stay in a core's
# L2 (2 MiB here), but at least QUERY_BLOCK_LEAST: 32 samples of 4 heads of 32 at 512 keys,
# backward, 68.7 ms in blocks of 256 queries (3 MiB of arrays), 58.2 in blocks of 128; at
# 1024 keys, forward and backward, blocks of 64 29.8 + 59.9 ms, 128 22.1 + 65.0, 256 22.8 +
# 82.1 (torch 19.0 + 44.7)
QUERY_BLOCK_FLOATS = 1 << 16
QUERY_BLOCK_LEAST = 128
# Causal attention takes its queries CAUSAL_BLOCK at a time, each block against the keys up
# to its last query only: at T 512 that skips 44% of the score products and softmax passes,
# which a full masked score matrix would compute and then throw away.
CAUSAL_BLOCK = 64


def rotary_tables(steps: int, dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (steps, dim / 2), of LLaMA's rotary embedding: frequency i of
    dimension i and of i + dim / 2 (transformers' `rotate_half` convention)."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(steps, dtype=np.float64)[:, None] * inv_freq
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope(x, *, theta):
    """Rotary position embedding of ``x`` (N, T, heads, head_dim), positions along T:
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)`` over the
    halves of head_dim, as transformers' ``apply_rotary_pos_emb``. Backward gives ``(dx,)``,
    into ``into`` when given (an array of x's shape, such as a view into a larger one).

    One compiled pass over each position's heads (``fused.rotate_halves``), reading ``x``
    with its row steps as it is (the queries' and keys' columns of one projection): NumPy's
    product with a signed permutation, two multiplies and an add, after a copy of the
    strided input, took 0.63 ms on a mini-LLaMA layer's queries (16 x 128 x 8 x 32), this
    0.14."""
    steps, heads, dim = x.shape[1:]
    if dim % 2:
        raise ValueError(f"rotary embeddings need an even head size, got {dim}")
    cos, sin, back_sin = _rope_tables(steps, dim, float(theta), x.dtype)
    out = np.empty(x.shape, x.dtype)
    parallel.rotate_halves(_position_rows(x, may_copy=True), _position_rows(out), cos, sin,
                           heads)
    shape, dtype = x.shape, x.dtype  # the backward keeps these, not x

    def backward(dy, into=None):
        # the transpose of the rotation: the turn by the negated angles
        dx = np.empty(shape, dtype) if into is None else into
        parallel.rotate_halves(_position_rows(np.asarray(dy, dtype), may_copy=True),
                               _position_rows(dx), cos, back_sin, heads)
        return (dx,)

    return out, backward


def _position_rows(a, may_copy=False):
    """(N, T, heads, d) as (N * T, heads * d): a view, or (``may_copy``, for an array only
    read) a copy where ``a``'s steps allow none; an array written into must be a view (an
    error otherwise)."""
    shape = (a.shape[0] * a.shape[1], a.shape[2] * a.shape[3])
    if may_copy:
        return a.reshape(shape)
    rows = a.view()
    rows.shape = shape
    return rows


@functools.lru_cache(maxsize=8)
def _rope_tables(steps, dim, theta, dtype):
    """``rotary_tables`` and the sines negated, read-only."""
    cos, sin = rotary_tables(steps, dim, theta, dtype)
    tables = (cos, sin, -sin)
    for table in tables:
        table.flags.writeable = False
    return tables


def _additive(mask):
    """A boolean mask (True = masked out, as nn.MultiheadAttention) as -inf/0; a float mask
    is added as it is (and gets a gradient)."""
    if mask is None or mask.dtype != np.bool_:
        return mask, mask is not None
    return np.where(mask, np.float32(-np.inf), np.float32(0)), False


def scaled_dot_product(q, k, v, key_padding_mask=None, attn_mask=None, *, causal=False,
                       dropout=0.0, train=False, rng=None, scale=None):
    """softmax(q k^T / sqrt(d) + masks) v per head, with ``q`` (N, T, H, d) and ``k``, ``v``
    (N, S, KVH, d); query head h reads key/value head h // (H / KVH) (grouped-query).

    ``key_padding_mask`` is (N, S) or (S,), ``attn_mask`` (T, S) or (N, T, S); either is
    boolean (True hides the key) or float (added to the scores). With ``causal``, query t
    sees keys up to t. ``scale`` multiplies the scores (None: 1/sqrt(d), as torch's
    scaled_dot_product_attention). Returns the context (N, T, H, d); backward gives
    ``(dq, dk, dv, d_key_padding_mask, d_attn_mask)`` (None for boolean or absent masks).
    """
    batch, steps, heads, dim = q.shape
    keys_total, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = 1 / math.sqrt(dim) if scale is None else scale
    dtype = q.dtype
    padding, padding_grad = _additive(key_padding_mask)
    mask, mask_grad = _additive(attn_mask)
    # Keys and values as (N, KVH, d + 1, S) copies and each block's queries as a
    # (n, kv, G * Tq, d + 1) copy: every product below then reads both operands transposed or
    # both not, which OpenBLAS runs up to 2.5x faster than a product with one of them
    # transposed. The keys' and values' last row is ones; it meets a last column of per-row
    # constants (minus the row's log-sum-exp in the queries, minus sum(dP * P) in the output
    # gradients), so the backward's products subtract those themselves instead of two passes
    # over every block of scores.
    # (filled per head block by the forward's parts: a serial copy was a quarter of a GPT
    # layer's attention forward on two cores)
    kt, vt = (np.empty((batch, kv_heads, dim + 1, keys_total), dtype) for _ in (k, v))
    # query head h = kv * group + g, queries stored (N, T, KVH, G, d)
    q5 = q.reshape(batch, steps, kv_heads, group, dim)
    head_blocks, query_blocks = _plan(batch, kv_heads, group, steps, keys_total, causal,
                                      workers.parts())
    dropping = train and dropout > 0
    keep_probs = keys_total <= KEPT_PROBABILITIES_KEYS
    context = np.empty((batch, steps, kv_heads, group, dim), dtype)

    def queries(samples, kvs, start, end):
        """The block's queries, scaled, as (n, kv, G * Tq, d + 1): one score product per kv
        head (the last column, the row constant, is set once the forward knows it)."""
        block = q5[samples, start:end, kvs].transpose(0, 2, 3, 1, 4)
        scaled = np.empty((*block.shape[:-1], dim + 1), dtype)
        np.multiply(block, scale, out=scaled[..., :dim])
        return scaled.reshape(*scaled.shape[:2], -1, dim + 1)

    def exp_scores(samples, kvs, qb, start, end, keys, shifted):
        """exp(scores + masks - shift) of the block, key-major: probs[key, n, kv, g * query],
        so the softmax reduces over the first axis, which NumPy vectorises across whole rows
        (about twice as fast as reducing many short last-axis rows). The shift is each row's
        log-sum-exp in the queries' last column when ``shifted``, else its max; then the
        rows' max and sum are returned too, and the probabilities are normalised when the
        backward keeps them (in float32 one compiled loop, ``fused.exp_columns``)."""
        used = slice(None) if shifted else slice(dim)
        scores = np.empty((keys, *qb.shape[:2], qb.shape[2]), dtype)
        np.matmul(kt[samples, kvs, used, :keys].transpose(0, 1, 3, 2),
                  qb[..., used].transpose(0, 1, 3, 2), out=scores.transpose(1, 2, 0, 3))
        bias, first = _block_bias(padding, mask, causal, samples, start, end, keys, dtype)
        if bias is not None:
            grouped = scores.reshape(keys, *qb.shape[:2], group, end - start)
            grouped[first:] += bias[:, :, None, None]
        if shifted:
            np.exp(scores, out=scores)
            return scores, None, None
        peak = scores.max(axis=0)
        if dtype == np.float32:
            total = np.empty_like(peak)
            columns = scores.reshape(keys, -1)
            fused.exp_columns(columns, peak.reshape(-1), total.reshape(-1), keep_probs, 0,
                              columns.shape[1])
            return scores, peak, total
        scores -= peak
        np.exp(scores, out=scores)
        total = scores.sum(axis=0)
        if keep_probs:  # normalised for the backward
            scores *= 1 / total
        return scores, peak, total

    # per (head block, query block), what the backward needs of it
    saved: list = [None] * (len(head_blocks) * len(query_blocks))
    # the head blocks split between the cores (``workers.in_parts``), unless dropout draws
    # random numbers (their order would be the threads')
    parts = 1 if dropping else _parts(head_blocks, batch * heads * steps * keys_total)

    def forward_blocks(part):
        for index in range(part, len(head_blocks), parts):
            samples, kvs = head_blocks[index]
            for rows, source in ((kt, k), (vt, v)):
                _with_ones_row(source[samples, :, kvs].transpose(0, 2, 3, 1),
                               rows[samples, kvs])
            for number, (start, end, keys) in enumerate(query_blocks):
                qb = queries(samples, kvs, start, end)
                probs, peak, total = exp_scores(samples, kvs, qb, start, end, keys, False)
                keep = None
                used = probs
                if dropping:
                    keep = (rng.random(probs.shape, dtype=np.float32) >= dropout) / dtype.type(
                        1 - dropout)
                    used = probs * keep if keep_probs else np.multiply(probs, keep, out=probs)
                out = used.transpose(1, 2, 3, 0) @ vt[samples, kvs, :dim, :keys].transpose(
                    0, 1, 3, 2)
                if not keep_probs:  # normalised after the product, on (Tq, d), not (S, Tq)
                    out /= total[..., None]
                width = end - start
                context[samples, start:end, kvs] = out.reshape(
                    *out.shape[:2], group, width, dim).transpose(0, 3, 1, 2, 4)
                np.log(total, out=total)
                total += peak  # the rows' log-sum-exp
                np.negative(total, out=qb[..., dim])
                saved[index * len(query_blocks) + number] = (
                    qb, keep, probs if keep_probs else None)

    compiled = dtype == np.float32 and not dropping and padding is None and mask is None \
        and min(steps, keys_total) >= COMPILED_MIN_KEYS and attention_tiles.applies(q, k, v)
    if compiled:  # one compiled job
        saved = [(queries_block, None, probs) for queries_block, probs in zip(
            *attention_tiles.forward(q, k, v, causal=causal, scale=scale,
                                     head_blocks=head_blocks, query_blocks=query_blocks,
                                     kt=kt, vt=vt, context=context, keep=keep_probs))]
    else:
        workers.in_parts(forward_blocks, parts)
    # the backward keeps the shapes of q, k and v, not them: its own copies (kt, vt, the
    # queries' blocks) hold what it reads, but for the compiled job's keys, which it reads
    # as rows (a copy where they are columns of one projection's output, a third of its
    # size: the projection's output, often only held here, is then freed: a ViT layer's
    # 3 MiB at batch 32, d 128, T 64)
    shapes = (q.shape, k.shape, v.shape)
    key_rows = np.ascontiguousarray(k) if compiled else None

    def backward(d_context, into=None):
        """``into``: arrays shaped as q, k and v (views into one buffer, say; None for a
        new one) to write the gradients to."""
        d_context = d_context.reshape(batch, steps, kv_heads, group, dim)
        dq_out, dk_rows, dv_rows = (np.empty(shape, dtype) if given is None else given
                                    for shape, given in zip(shapes, into or (None,) * 3))
        dq = dq_out.reshape(batch, steps, kv_heads, group, dim)
        several = len(query_blocks) > 1 or query_blocks[0][2] != keys_total

        def compiled_backward(*outputs):
            """Whether ``attention_tiles``' job takes the backward: where the compiled
            forward ran (no masks or dropout, float32, from COMPILED_MIN_KEYS), writing
            gradients it can write as they are."""
            return compiled and attention_tiles.applies(*outputs)

        # (N, S, KVH, d) like k and v, written through (N, KVH, S, d) views
        dk, dv = dk_rows.transpose(0, 2, 1, 3), dv_rows.transpose(0, 2, 1, 3)
        d_padding = np.zeros_like(padding) if padding_grad else None
        d_mask = np.zeros_like(mask) if mask_grad else None
        # the head blocks between the cores as forward, unless the masks take gradients
        # (every block adds to them)
        back_parts = 1 if padding_grad or mask_grad else parts

        def backward_blocks(part):
            for index in range(part, len(head_blocks), back_parts):
                for number, query_block in enumerate(query_blocks):
                    backward_block(head_blocks[index], query_block,
                                   saved[index * len(query_blocks) + number])

        def backward_block(head_block, query_block, saved_block):
            (samples, kvs), (start, end, keys), (qb, keep, probs) = \
                head_block, query_block, saved_block
            width = end - start
            if probs is None:
                probs, _, _ = exp_scores(samples, kvs, qb, start, end, keys, True)
            used = probs if keep is None else probs * keep
            # softmax backward: p * (dp - sum(dp * p)), the sum in the gradients' last column
            # (when no dropout mask must scale dp first); masked positions have p = 0
            dcb = np.empty(qb.shape, dtype)
            grads = dcb.reshape(*qb.shape[:2], group, width, dim + 1)
            grads[..., :dim] = d_context[samples, start:end, kvs].transpose(0, 2, 3, 1, 4)
            dots = row_dots[samples, kvs, :, start:end]
            if keep is None:
                np.negative(dots, out=grads[..., dim])
            else:
                grads[..., dim] = 0
            if several:
                dv[samples, kvs, :keys] += used.transpose(1, 2, 0, 3) @ dcb[..., :dim]
            else:
                np.matmul(used.transpose(1, 2, 0, 3), dcb[..., :dim], out=dv[samples, kvs])
            d_scores = np.empty_like(probs)  # key-major, like probs
            np.matmul(vt[samples, kvs, :, :keys].transpose(0, 1, 3, 2), dcb.transpose(0, 1, 3, 2),
                      out=d_scores.transpose(1, 2, 0, 3))
            if keep is not None:
                d_scores *= keep
                d_scores -= dots.reshape(qb.shape[:3])
            d_scores *= probs
            if padding_grad or mask_grad:
                d_bias = d_scores.reshape(keys, *qb.shape[:2], group, width).sum(axis=(2, 3))
                _accumulate_mask_grads(d_bias, d_padding, d_mask, samples, start, end, keys)
            dqb = d_scores.transpose(1, 2, 3, 0) @ kt[samples, kvs, :dim, :keys].transpose(
                0, 1, 3, 2)
            dq[samples, start:end, kvs] = dqb.reshape(
                *dqb.shape[:2], group, width, dim).transpose(0, 3, 1, 2, 4)
            if several:
                dk[samples, kvs, :keys] += d_scores.transpose(1, 2, 0, 3) @ qb[..., :dim]
            else:
                np.matmul(d_scores.transpose(1, 2, 0, 3), qb[..., :dim], out=dk[samples, kvs])

        if compiled_backward(dq_out, dk_rows, dv_rows):
            attention_tiles.backward(
                key_rows, dq_out, dk_rows, dv_rows, kt=kt, vt=vt, d_context=d_context,
                context=context, head_blocks=head_blocks, query_blocks=query_blocks,
                queries=[block[0] for block in saved],
                probabilities=[block[2] for block in saved], causal=causal)
        else:
            # sum(d_probs * probs) of each row is d_context . context (as flash attention has
            # it) (einsum lays it out as its operands are, (n, t, kv, g): made (n, kv, g, t)
            # so that a block's rows are contiguous and subtract from its scores at full
            # speed)
            row_dots = np.ascontiguousarray(np.einsum("ntkgd,ntkgd->nkgt", d_context,
                                                      context))
            if several:  # key and value gradients gather over query blocks
                dk_rows[...] = 0
                dv_rows[...] = 0
            workers.in_parts(backward_blocks, back_parts)
        if scale != 1:
            dq *= scale
        return dq_out, dk_rows, dv_rows, d_padding, d_mask

    return context.reshape(batch, steps, heads, dim), backward


def _with_ones_row(rows, out):
    """``rows`` (..., d, S) copied into ``out`` (..., d + 1, S), the last row ones."""
    out[..., :-1, :] = rows
    out[..., -1, :] = 1


# scores (over all heads and samples) below which one core runs every block: splitting them
# costs about 50 us
PARALLEL_MIN_SCORES = 1 << 18


def _parts(head_blocks, scores):
    """How many cores share the head blocks of a layer with this many scores."""
    if len(head_blocks) < 2 or scores < PARALLEL_MIN_SCORES:
        return 1
    return min(len(head_blocks), workers.parts())


@functools.lru_cache(maxsize=32)
def _plan(batch, kv_heads, group, steps, keys_total, causal, cores):
    """The blocks attention runs over: (samples, kv heads) slices, and (start, end, keys)
    query ranges with the keys they read. Queries come whole where one head's scores fit
    QUERY_BLOCK_FLOATS (so each block's key and value gradients come from one product over
    all its queries), and as many heads join a block as fit SCORE_BLOCK_FLOATS beside them, fewer where the
    ``cores`` parts' shares (every cores-th block each) would be uneven. Read-only."""
    if causal:
        width = min(steps, CAUSAL_BLOCK)
    else:
        width = min(steps, max(QUERY_BLOCK_LEAST, QUERY_BLOCK_FLOATS // (group * keys_total)))
    query_blocks = [(s, min(s + width, steps)) for s in range(0, steps, width)]
    query_blocks = [(s, e, e if causal else keys_total) for s, e in query_blocks]
    pairs = max(1, SCORE_BLOCK_FLOATS // (group * width * keys_total))
    plain = _head_blocks(batch, kv_heads, min(kv_heads, pairs), pairs // kv_heads)
    if _even_shares(plain, cores) or \
            batch * kv_heads * group * steps * keys_total < PARALLEL_MIN_SCORES:  # one core
        return plain, query_blocks
    # uneven shares on two cores: blocks down to half as large, of fewer heads if need be,
    # where that evens them (32 samples of 3 heads at T 65 made blocks of 30, 30, 30 and 6
    # pairs, one core taking 60 and the other 36: in blocks of 24 a ViT layer's attention,
    # forward and backward, 5.1 -> 4.5 ms; 3 samples of 8 heads made 16 and 8, in two of 3
    # samples by 4 heads a GPT layer's 1.86 -> 1.60). Smaller blocks cost more in calls
    # than the uneven shares did (3 samples of 8 heads in six of 4 pairs: 1.86 -> 2.3)
    for fewer in range(pairs, (pairs + 1) // 2 - 1, -1):
        for kv_step in range(min(kv_heads, fewer), 0, -1):
            if kv_heads % kv_step:
                continue
            head_blocks = _head_blocks(batch, kv_heads, kv_step, fewer // kv_step)
            if _even_shares(head_blocks, cores):
                return head_blocks, query_blocks
    return plain, query_blocks


def _head_blocks(batch, kv_heads, kv_step, sample_step):
    """(samples, kv heads) slices of ``sample_step`` samples by ``kv_step`` heads (at least
    one sample)."""
    sample_step = max(1, sample_step)
    return [(slice(n, min(n + sample_step, batch)), slice(h, min(h + kv_step, kv_heads)))
            for n in range(0, batch, sample_step) for h in range(0, kv_heads, kv_step)]


def _even_shares(head_blocks, cores):
    """Whether the cores' shares of the blocks (every ``cores``-th each, as the parts take
    them) are within a fifth of each other."""
    sizes = [(s.stop - s.start) * (k.stop - k.start) for s, k in head_blocks]
    shares = [sum(sizes[part::cores]) for part in range(cores)]
    return max(shares) <= 1.2 * min(shares)


def _block_bias(padding, mask, causal, samples, start, end, keys, dtype):
    """What is added to a block's scores from key ``first`` on, as ``(bias (keys - first, n
    or 1, queries), first)``; (None, 0) when nothing is. A causal mask alone hides no key
    before the block's first query, so it covers the keys from there only."""
    first = start if causal and mask is None and padding is None else 0
    terms = []
    if causal:  # key j is hidden from query start + c when j > start + c
        terms.append(_causal_bias(keys - first, end - start, first - start - 1,
                                  np.dtype(dtype))[:, None])
    if mask is not None:
        block = mask[..., start:end, :keys]
        terms.append(block.T[:, None] if block.ndim == 2 else block[samples].transpose(2, 0, 1))
    if padding is not None:
        block = padding[..., :keys]
        terms.append(block[:, None, None] if block.ndim == 1 else block[samples].T[:, :, None])
    if not terms:
        return None, 0
    bias = terms[0]
    for term in terms[1:]:
        bias = bias + term
    return bias, first


@functools.lru_cache(maxsize=16)
def _causal_bias(keys, queries, diagonal, dtype):
    """-inf above ``diagonal`` (as np.tril keeps), 0 elsewhere, (keys, queries), read-only:
    every head block of a layer adds the same one for a query block (a GPT with heads of 16
    at T 100 built it 14 times a layer, 10% of its attention's time)."""
    bias = np.tril(np.full((keys, queries), -np.inf, dtype), diagonal)
    bias.flags.writeable = False
    return bias


def _accumulate_mask_grads(d_bias, d_padding, d_mask, samples, start, end, keys):
    """Add a block's score gradients, d_bias (keys, n, queries), to the float masks'."""
    if d_mask is not None:
        if d_mask.ndim == 2:
            d_mask[start:end, :keys] += d_bias.sum(axis=1).T
        else:
            d_mask[samples, start:end, :keys] += d_bias.transpose(1, 2, 0)
    if d_padding is not None:
        if d_padding.ndim == 1:
            d_padding[:keys] += d_bias.sum(axis=(1, 2))
        else:
            d_padding[samples, :keys] += d_bias.sum(axis=2).T


# ---- the layer: projections around scaled_dot_product ---------------------------------------


def _projections(weights: dict, embed: int):
    """(query, key, value, output) as (weight, bias, parameter name, rows) in whichever
    layout the layer has: LLaMA's `q_proj.weight`..., or nn.MultiheadAttention's packed
    `in_proj_weight` or separate `q_proj_weight`... (keys/values of another size), whose
    biases are rows of one `in_proj_bias`."""
    if "o_proj.weight" in weights:
        return tuple((weights[f"{p}.weight"], weights.get(f"{p}.bias"), p, None)
                     for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    bias = weights.get("in_proj_bias")
    parts = []
    for i, name in enumerate(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
        rows = slice(i * embed, (i + 1) * embed)
        if "in_proj_weight" in weights:
            name = "in_proj_weight"
        weight = weights[name][rows] if name == "in_proj_weight" else weights[name]
        parts.append((weight, None if bias is None else bias[rows], name, rows))
    out = (weights["out_proj.weight"], weights.get("out_proj.bias"), "out_proj", None)
    return (*parts, out)


def attention(x, memory, weights, key_padding_mask=None, attn_mask=None, *, heads, kv_heads,
              causal, dropout, rope_theta=None, train=False, rng=None):
    """Attention of ``x`` (N, T, E) over ``memory`` (N, S, M) (over ``x`` itself when None),
    as ``nn.MultiheadAttention(E, heads, batch_first=True)(x, memory, memory, ...)`` or
    transformers' LlamaAttention compute it, by the layout of ``weights`` (local names).
    ``rope_theta`` (None: no rotary embedding) rotates queries and keys after projection.
    Backward gives ``(dx, d_memory, d_weights, d_key_padding_mask, d_attn_mask)``; d_memory
    is None for self-attention (its gradient is in dx)."""
    batch, steps, embed = x.shape
    head_dim = embed // heads
    source = x if memory is None else memory
    keys = source.shape[1]
    (wq, bq, nq, sq), (wk, bk, nk, sk), (wv, bv, nv, sv), (wo, bo, no, _) = _projections(
        weights, embed)
    # the 1/sqrt(head_dim) score scale is folded into the query projection (rope is linear)
    scale = 1 / math.sqrt(head_dim)
    wq = wq * scale
    bq = None if bq is None else bq * scale
    x_rows = x.reshape(-1, embed)
    src_rows = source.reshape(-1, source.shape[-1])
    projections = ((wq, bq, nq, sq, scale), (wk, bk, nk, sk, 1), (wv, bv, nv, sv, 1))
    if memory is None:  # one product for q, k and v forward, and one for each gradient back
        stacked = np.concatenate([wq, wk, wv])
        ends = np.cumsum([0, len(wq), len(wk), len(wv)])
        spans = [slice(start, end) for start, end in itertools.pairwise(ends)]
        has_bias = [b is not None for b in (bq, bk, bv)]
        qkv = affine(x_rows, stacked, np.concatenate([
            b if b is not None else np.zeros(len(w), w.dtype)
            for w, b in ((wq, bq), (wk, bk), (wv, bv))]) if any(has_bias) else None)
        q, k, v = (qkv[:, span] for span in spans)
    else:
        q, k, v = (affine(rows, w, b) for rows, w, b in ((x_rows, wq, bq), (src_rows, wk, bk),
                                                         (src_rows, wv, bv)))
    q = q.reshape(batch, steps, heads, head_dim)
    k = k.reshape(batch, keys, kv_heads, head_dim)
    v = v.reshape(batch, keys, kv_heads, head_dim)
    if rope_theta is not None:
        q, q_rope_back = rope(q, theta=rope_theta)
        k, k_rope_back = rope(k, theta=rope_theta)
    context, attend_back = scaled_dot_product(q, k, v, key_padding_mask, attn_mask,
                                              causal=causal, dropout=dropout, train=train,
                                              rng=rng, scale=1.0)
    context_rows = context.reshape(-1, embed)
    y = affine(context_rows, wo, bo)
    # the backward keeps the projections' shapes, not their outputs (``scaled_dot_product``
    # keeps what it reads of them)
    qkv_shape = (len(x_rows), ends[-1]) if memory is None else None
    part_shapes = (q.shape, k.shape, v.shape)

    def backward(dy):
        dy_rows = dy.reshape(-1, embed)
        grads = {}
        _weight_grads(grads, no, None, dy_rows, context_rows, bo is not None)
        d_context = gemm.matmul(dy_rows, wo).reshape(batch, steps, heads, head_dim)
        if memory is None:
            dx, mask_grads = self_attention_backward(grads, d_context)
            return dx, None, grads, *mask_grads
        dq, dk, dv, *mask_grads = attend_back(d_context)
        dq, dk = unrotate(dq, dk)
        dq, dk, dv = (d.reshape(-1, d.shape[2] * head_dim) for d in (dq, dk, dv))
        dx = gemm.matmul(dq, wq)
        d_source = gemm.matmul(dk, wk)
        gemm.add_product(dv, wv, d_source)
        for d, rows, (_, b, name, part, factor) in zip((dq, dk, dv), (x_rows, src_rows, src_rows),
                                                       projections):
            _weight_grads(grads, name, part, d, rows, b is not None, weights, factor)
        return dx.reshape(x.shape), d_source.reshape(memory.shape), grads, *mask_grads

    def self_attention_backward(grads, d_context):
        """dx and the masks' gradients, with the projections' gradients (into `grads`) from
        one product each over [dq, dk, dv]."""
        d_qkv = np.empty(qkv_shape, np.result_type(x_rows, stacked))
        parts = [d_qkv[:, span].reshape(shape) for span, shape in zip(spans, part_shapes)]
        if rope_theta is None:  # straight into their columns
            mask_grads = attend_back(d_context, into=parts)[3:]
        else:  # dv straight into its columns, dq and dk turned back into theirs
            dq, dk, _, *mask_grads = attend_back(d_context, into=[None, None, parts[2]])
            q_rope_back(dq, into=parts[0])
            k_rope_back(dk, into=parts[1])
        # into the model's slot for the packed projection where there is one
        d_weight = gemm.matmul(d_qkv.T, x_rows, out=gradient_slots.empty(
            (len(stacked), x_rows.shape[1]), np.result_type(d_qkv, x_rows)))
        d_bias = column_sums(d_qkv) if any(has_bias) else None
        if all(name == "in_proj_weight" for _, _, name, _, _ in projections):
            # nn.MultiheadAttention's packed layout: the gradients are its, as they are
            for span, (_, b, _, _, factor) in zip(spans, projections):
                _scale(d_weight[span], None if b is None else d_bias[span], factor)
            grads["in_proj_weight"] = d_weight
            if d_bias is not None:
                grads["in_proj_bias"] = d_bias
        else:
            for span, (_, b, name, part, factor) in zip(spans, projections):
                _store_grads(grads, name, part, d_weight[span],
                             None if b is None else d_bias[span], weights, factor)
        return gemm.matmul(d_qkv, stacked).reshape(x.shape), mask_grads

    def unrotate(dq, dk):
        if rope_theta is None:
            return dq, dk
        return q_rope_back(dq)[0], k_rope_back(dk)[0]

    return y.reshape(batch, steps, embed), backward


def _weight_grads(grads, name, rows, d_out, inputs, has_bias, weights=None, factor=1):
    """A projection's weight and bias gradients, stored as `_store_grads` does (the weight's
    into the model's slot for it where it is a whole parameter, ``gradient_slots``)."""
    shape = (d_out.shape[1], inputs.shape[1])
    d_weight = gemm.matmul(d_out.T, inputs, out=gradient_slots.empty(
        shape, np.result_type(d_out, inputs)) if rows is None else None)
    _store_grads(grads, name, rows, d_weight, column_sums(d_out) if has_bias else None,
                 weights, factor)


def _scale(d_weight, d_bias, factor):
    """A projection's gradients times ``factor`` (a scale folded into it), in place: they
    are the backward's own arrays."""
    if factor != 1:
        d_weight *= factor
        if d_bias is not None:
            d_bias *= factor


def _store_grads(grads, name, rows, d_weight, d_bias, weights, factor):
    """A projection's weight and bias gradients (times `factor`, a scale folded into the
    projection) under its parameter names: `q_proj.weight` and `q_proj.bias`,
    `q_proj_weight`, or `rows` of the packed `in_proj_weight`; the biases of
    nn.MultiheadAttention's projections are `rows` of `in_proj_bias`."""
    _scale(d_weight, d_bias, factor)
    if rows is None:
        grads[f"{name}.weight"] = d_weight
        if d_bias is not None:
            grads[f"{name}.bias"] = d_bias
        return
    if name == "in_proj_weight":
        grads.setdefault(name, np.zeros_like(weights[name]))[rows] = d_weight
    else:
        grads[name] = d_weight
    if d_bias is not None:
        grads.setdefault("in_proj_bias", np.zeros_like(weights["in_proj_bias"]))[rows] = d_bias
