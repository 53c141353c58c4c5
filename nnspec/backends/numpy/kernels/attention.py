"""Multi-head self-attention with the packed projections of torch's nn.MultiheadAttention."""

from __future__ import annotations

import math

import numpy as np

# Causal attention runs over blocks of this many queries, each against the keys up to its
# last query only: at T 512 that skips 44% of the score products and softmax passes, which
# a full masked score matrix would compute and then throw away.
CAUSAL_BLOCK = 64


def multi_head_attention(
    x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, *, heads, causal
):
    """Self-attention over ``x`` (N, T, E), as ``nn.MultiheadAttention(E, heads,
    batch_first=True)(x, x, x, attn_mask=causal_mask, need_weights=False)`` computes it.

    ``in_proj_weight`` (3E, E) packs the query, key and value projections; either bias may be
    None. With ``causal``, a position attends only to itself and earlier ones. Backward gives
    ``(dx, d_in_proj_weight, d_in_proj_bias, d_out_proj_weight, d_out_proj_bias)``.
    """
    batch, steps, embed = x.shape
    if embed % heads:
        raise ValueError(f"attention needs heads ({heads}) to divide the embedding size ({embed})")
    head_dim = embed // heads
    # the 1/sqrt(head_dim) score scale is folded into the query rows of the projection
    row_scale = np.ones((3 * embed, 1), x.dtype)
    row_scale[:embed] = 1 / math.sqrt(head_dim)
    in_weight = in_proj_weight * row_scale
    rows = x.reshape(-1, embed)
    qkv = rows @ in_weight.T
    if in_proj_bias is not None:
        qkv += in_proj_bias * row_scale[:, 0]
    # (N, T, 3, heads, d) viewed as three (N, heads, T, d) stacks, no copies
    q, k, v = qkv.reshape(batch, steps, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    # (first query, end of queries, number of keys seen) per block of queries
    step = CAUSAL_BLOCK if causal else steps
    blocks = [(s, min(s + step, steps)) for s in range(0, steps, step)]
    blocks = [(s, e, e if causal else steps) for s, e in blocks]
    context = np.empty((batch, steps, heads, head_dim), x.dtype)
    context_by_head = context.transpose(0, 2, 1, 3)
    probs_of_blocks = []
    for start, end, keys in blocks:
        # Scores are stored key-major, probs[key, n, head, query]: the softmax then reduces
        # over the first axis, which NumPy vectorises across whole rows, about twice as fast
        # as reducing many short last-axis rows.
        probs = np.empty((keys, batch, heads, end - start), x.dtype)
        np.matmul(k[:, :, :keys], q[:, :, start:end].transpose(0, 1, 3, 2),
                  out=probs.transpose(1, 2, 0, 3))
        if causal:  # key j is hidden from query start + c when j > start + c
            hidden = np.tril(np.full((keys, end - start), -np.inf, x.dtype), -start - 1)
            probs += hidden[:, None, None, :]
        probs -= probs.max(axis=0)
        np.exp(probs, out=probs)
        probs *= 1 / probs.sum(axis=0)
        np.matmul(probs.transpose(1, 2, 3, 0), v[:, :, :keys],
                  out=context_by_head[:, :, start:end])
        probs_of_blocks.append(probs)
    context_rows = context.reshape(-1, embed)
    y = context_rows @ out_proj_weight.T
    if out_proj_bias is not None:
        y += out_proj_bias

    def backward(dy):
        dy_rows = dy.reshape(-1, embed)
        d_out_weight = dy_rows.T @ context_rows
        d_out_bias = None if out_proj_bias is None else dy_rows.sum(axis=0)
        d_context = (dy_rows @ out_proj_weight).reshape(batch, steps, heads, head_dim)
        d_context = d_context.transpose(0, 2, 1, 3)
        d_qkv = (np.zeros if len(blocks) > 1 else np.empty)(
            (batch, steps, 3, heads, head_dim), x.dtype)
        d_q, d_k, d_v = d_qkv.transpose(2, 0, 3, 1, 4)
        for (start, end, keys), probs in zip(blocks, probs_of_blocks):
            d_scores = np.empty_like(probs)  # key-major, like probs
            np.matmul(v[:, :, :keys], d_context[:, :, start:end].transpose(0, 1, 3, 2),
                      out=d_scores.transpose(1, 2, 0, 3))
            # softmax backward: p * (dp - sum(dp * p)); masked positions have p = 0 (the sum
            # is an einsum row dot: no temporary the size of the scores)
            d_scores -= np.einsum("k...,k...->...", d_scores, probs)
            d_scores *= probs
            np.matmul(d_scores.transpose(1, 2, 3, 0), k[:, :, :keys], out=d_q[:, :, start:end])
            if len(blocks) == 1:
                np.matmul(d_scores.transpose(1, 2, 0, 3), q, out=d_k)
                np.matmul(probs.transpose(1, 2, 0, 3), d_context, out=d_v)
            else:  # the keys of a block are also the keys of every later block
                d_k[:, :, :keys] += d_scores.transpose(1, 2, 0, 3) @ q[:, :, start:end]
                d_v[:, :, :keys] += probs.transpose(1, 2, 0, 3) @ d_context[:, :, start:end]
        d_rows = d_qkv.reshape(-1, 3 * embed)
        dx = (d_rows @ in_weight).reshape(x.shape)
        d_in_weight = d_rows.T @ rows
        d_in_weight *= row_scale
        d_in_bias = None if in_proj_bias is None else d_rows.sum(axis=0) * row_scale[:, 0]
        return dx, d_in_weight, d_in_bias, d_out_weight, d_out_bias

    return y.reshape(batch, steps, embed), backward
