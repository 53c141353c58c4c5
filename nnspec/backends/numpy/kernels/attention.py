"""Multi-head attention: self- and cross-attention, grouped-query heads, masks, attention
dropout and rotary position embeddings, with torch's parameter layouts (nn.MultiheadAttention's
packed or separate projections, or LLaMA's q_proj/k_proj/v_proj/o_proj)."""

from __future__ import annotations

import math

import numpy as np

# Causal attention runs over blocks of this many queries, each against the keys up to its
# last query only: at T 512 that skips 44% of the score products and softmax passes, which
# a full masked score matrix would compute and then throw away.
CAUSAL_BLOCK = 64
# Other attention runs over blocks of queries whose scores fill at most this many floats (and
# at least CAUSAL_BLOCK queries): the backward's score gradients are one block's, not the
# whole (N, heads, T, S) matrix, a long sequence's largest temporary.
SCORE_BLOCK_FLOATS = 1 << 21


def rotary_tables(steps: int, dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (steps, dim), of LLaMA's rotary embedding: frequency i of the first
    half repeats in the second (transformers' `rotate_half` convention)."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(steps, dtype=np.float64)[:, None] * inv_freq
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope(x, *, theta):
    """Rotary position embedding of ``x`` (N, T, heads, head_dim), positions along T:
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)`` over the
    halves of head_dim, as transformers' ``apply_rotary_pos_emb``. Backward gives ``(dx,)``."""
    steps, dim = x.shape[1], x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary embeddings need an even head size, got {dim}")
    cos, sin = rotary_tables(steps, dim, theta, x.dtype)
    cos, sin = cos[:, None, :], sin[:, None, :]
    half = dim // 2
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[..., :half]
    out[..., half:] += x[..., :half] * sin[..., half:]

    def backward(dy):
        # the transpose of the rotation: dx = dy * cos + rotate_half^T(dy * sin)
        dx = dy * cos
        dx[..., :half] += dy[..., half:] * sin[..., half:]
        dx[..., half:] -= dy[..., :half] * sin[..., :half]
        return (dx,)

    return out, backward


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
    # (N, KVH, S, d) views; query head h = kv * group + g, queries stored (N, T, KVH, G, d)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    q5 = q.reshape(batch, steps, kv_heads, group, dim)
    step = CAUSAL_BLOCK if causal else max(CAUSAL_BLOCK,
                                           SCORE_BLOCK_FLOATS // (batch * heads * keys_total))
    blocks = [(s, min(s + step, steps)) for s in range(0, steps, step)]
    blocks = [(s, e, e if causal else keys_total) for s, e in blocks]
    dropping = train and dropout > 0
    context = np.empty((batch, steps, kv_heads, group, dim), dtype)
    saved = []
    for start, end, keys in blocks:
        width = end - start
        # this block's queries, scaled, as (N, KVH, G * Tq, d): one score product per kv head
        if group == 1 and scale == 1:  # a view, no copy
            qb = q5[:, start:end, :, 0].transpose(0, 2, 1, 3)
        else:
            qb = np.empty((batch, kv_heads, group, width, dim), dtype)
            np.multiply(q5[:, start:end].transpose(0, 2, 3, 1, 4), scale, out=qb)
            qb = qb.reshape(batch, kv_heads, group * width, dim)
        # Scores are stored key-major, probs[key, n, kv, g * query]: the softmax then reduces
        # over the first axis, which NumPy vectorises across whole rows, about twice as fast
        # as reducing many short last-axis rows.
        probs = np.empty((keys, batch, kv_heads, group * width), dtype)
        np.matmul(kt[:, :, :keys], qb.transpose(0, 1, 3, 2), out=probs.transpose(1, 2, 0, 3))
        bias = _block_bias(padding, mask, causal, start, end, keys, dtype)
        if bias is not None and group == 1:
            probs += bias[:, :, None]
        elif bias is not None:
            probs.reshape(keys, batch, kv_heads, group, width)[...] += bias[:, :, None, None]
        probs -= probs.max(axis=0)
        np.exp(probs, out=probs)
        probs *= 1 / probs.sum(axis=0)
        used, keep = probs, None
        if dropping:
            keep = (rng.random(probs.shape, dtype=np.float32) >= dropout) / dtype.type(1 - dropout)
            used = probs * keep
        if group == 1:  # straight into (N, heads, T, d)
            np.matmul(used.transpose(1, 2, 3, 0), vt[:, :, :keys],
                      out=context[:, :, :, 0].transpose(0, 2, 1, 3)[:, :, start:end])
        else:
            out = used.transpose(1, 2, 3, 0) @ vt[:, :, :keys]
            context[:, start:end] = out.reshape(batch, kv_heads, group, width, dim).transpose(
                0, 3, 1, 2, 4)
        saved.append((qb, probs, used, keep))

    def backward(d_context):
        d_context = d_context.reshape(batch, steps, kv_heads, group, dim)
        dq = np.empty((batch, steps, kv_heads, group, dim), dtype)
        # with several blocks the keys of a block are also every later block's
        several = len(blocks) > 1 or blocks[0][2] != keys_total
        # (N, S, KVH, d) like k and v, written through (N, KVH, S, d) views
        dk_rows = (np.zeros if several else np.empty)((batch, keys_total, kv_heads, dim), dtype)
        dv_rows = (np.zeros if several else np.empty)((batch, keys_total, kv_heads, dim), dtype)
        dk, dv = dk_rows.transpose(0, 2, 1, 3), dv_rows.transpose(0, 2, 1, 3)
        d_padding = np.zeros_like(padding) if padding_grad else None
        d_mask = np.zeros_like(mask) if mask_grad else None
        for (start, end, keys), (qb, probs, used, keep) in zip(blocks, saved):
            width = end - start
            if group == 1:
                dcb = d_context[:, start:end, :, 0].transpose(0, 2, 1, 3)
            else:
                dcb = np.ascontiguousarray(d_context[:, start:end].transpose(0, 2, 3, 1, 4))
                dcb = dcb.reshape(batch, kv_heads, group * width, dim)
            d_scores = np.empty_like(probs)  # key-major, like probs
            np.matmul(vt[:, :, :keys], dcb.transpose(0, 1, 3, 2),
                      out=d_scores.transpose(1, 2, 0, 3))
            if several:
                dv[:, :, :keys] += used.transpose(1, 2, 0, 3) @ dcb
            else:
                np.matmul(used.transpose(1, 2, 0, 3), dcb, out=dv)
            if keep is not None:
                d_scores *= keep
            # softmax backward: p * (dp - sum(dp * p)); masked positions have p = 0 (the sum
            # is an einsum row dot: no temporary the size of the scores)
            d_scores -= np.einsum("k...,k...->...", d_scores, probs)
            d_scores *= probs
            if padding_grad or mask_grad:
                d_bias = d_scores.reshape(keys, batch, kv_heads, group, width).sum(axis=(2, 3))
                _accumulate_mask_grads(d_bias, d_padding, d_mask, start, end, keys)
            if group == 1:
                np.matmul(d_scores.transpose(1, 2, 3, 0), kt[:, :, :keys],
                          out=dq[:, :, :, 0].transpose(0, 2, 1, 3)[:, :, start:end])
            else:
                dqb = d_scores.transpose(1, 2, 3, 0) @ kt[:, :, :keys]
                dq[:, start:end] = dqb.reshape(batch, kv_heads, group, width, dim).transpose(
                    0, 3, 1, 2, 4)
            if several:
                dk[:, :, :keys] += d_scores.transpose(1, 2, 0, 3) @ qb
            else:
                np.matmul(d_scores.transpose(1, 2, 0, 3), qb, out=dk)
        if scale != 1:
            dq *= scale
        return (dq.reshape(q.shape), dk_rows, dv_rows,
                d_padding, d_mask)

    return context.reshape(batch, steps, heads, dim), backward


def _block_bias(padding, mask, causal, start, end, keys, dtype):
    """What is added to a block's scores, (keys, N or 1, queries); None when nothing is."""
    terms = []
    if causal:  # key j is hidden from query start + c when j > start + c
        terms.append(np.tril(np.full((keys, end - start), -np.inf, dtype), -start - 1)[:, None])
    if mask is not None:
        block = mask[..., start:end, :keys]
        terms.append(block.T[:, None] if block.ndim == 2 else block.transpose(2, 0, 1))
    if padding is not None:
        block = padding[..., :keys]
        terms.append(block[:, None, None] if block.ndim == 1 else block.T[:, :, None])
    if not terms:
        return None
    bias = terms[0]
    for term in terms[1:]:
        bias = bias + term
    return bias


def _accumulate_mask_grads(d_bias, d_padding, d_mask, start, end, keys):
    """Add a block's score gradients, d_bias (keys, N, queries), to the float masks'."""
    if d_mask is not None:
        if d_mask.ndim == 2:
            d_mask[start:end, :keys] += d_bias.sum(axis=1).T
        else:
            d_mask[:, start:end, :keys] += d_bias.transpose(1, 2, 0)
    if d_padding is not None:
        if d_padding.ndim == 1:
            d_padding[:keys] += d_bias.sum(axis=(1, 2))
        else:
            d_padding[:, :keys] += d_bias.sum(axis=2).T


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
    if memory is None and nq == nk == nv == "in_proj_weight":  # one GEMM for q, k and v
        qkv = x_rows @ np.concatenate([wq, wk, wv]).T
        if bq is not None:
            qkv += np.concatenate([bq, bk, bv])
        q, k, v = (qkv[:, i * embed:(i + 1) * embed] for i in range(3))
    else:
        q, k, v = (_linear(rows, w, b) for rows, w, b in ((x_rows, wq, bq), (src_rows, wk, bk),
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
    y = _linear(context_rows, wo, bo)

    def backward(dy):
        dy_rows = dy.reshape(-1, embed)
        grads = {}
        _weight_grads(grads, no, None, dy_rows, context_rows, bo is not None)
        d_context = (dy_rows @ wo).reshape(batch, steps, heads, head_dim)
        dq, dk, dv, d_padding, d_mask = attend_back(d_context)
        if rope_theta is not None:
            (dq,) = q_rope_back(dq)
            (dk,) = k_rope_back(dk)
        dq, dk, dv = (d.reshape(-1, d.shape[2] * head_dim) for d in (dq, dk, dv))
        dx = dq @ wq
        d_source = dk @ wk
        d_source += dv @ wv
        for d, rows, name, part, b, factor in (
                (dq, x_rows, nq, sq, bq, scale), (dk, src_rows, nk, sk, bk, 1),
                (dv, src_rows, nv, sv, bv, 1)):
            _weight_grads(grads, name, part, d, rows, b is not None, weights, factor)
        if memory is None:
            dx += d_source
            return dx.reshape(x.shape), None, grads, d_padding, d_mask
        return dx.reshape(x.shape), d_source.reshape(memory.shape), grads, d_padding, d_mask

    return y.reshape(batch, steps, embed), backward


def _linear(rows, weight, bias):
    out = rows @ weight.T
    if bias is not None:
        out += bias
    return out


def _weight_grads(grads, name, rows, d_out, inputs, has_bias, weights=None, factor=1):
    """A projection's weight and bias gradients (times `factor`, a scale folded into the
    projection) under its parameter names: `q_proj.weight` and `q_proj.bias`,
    `q_proj_weight`, or `rows` of the packed `in_proj_weight`; the biases of
    nn.MultiheadAttention's projections are `rows` of `in_proj_bias`."""
    d_weight = d_out.T @ inputs
    d_bias = d_out.sum(axis=0) if has_bias else None
    if factor != 1:
        d_weight *= factor
        d_bias = None if d_bias is None else d_bias * factor
    if rows is None:
        grads[f"{name}.weight"] = d_weight
        if has_bias:
            grads[f"{name}.bias"] = d_bias
        return
    if name == "in_proj_weight":
        grads.setdefault(name, np.zeros_like(weights[name]))[rows] = d_weight
    else:
        grads[name] = d_weight
    if has_bias:
        grads.setdefault("in_proj_bias", np.zeros_like(weights["in_proj_bias"]))[rows] = d_bias
