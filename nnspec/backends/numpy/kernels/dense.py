"""Fully connected layer over the last axis, with torch's weight layout [out, in]."""

from __future__ import annotations

import numpy as np

from . import gemm, gradient_slots, parallel


def linear(x, weight, bias):
    """y = x @ weight.T + bias for x of shape (..., in); backward gives (dx, dweight, dbias)."""
    in_features = weight.shape[1]
    if x.shape[-1] != in_features:
        raise ValueError(f"linear expects {in_features} input features, got shape {x.shape}")
    rows = x.reshape(-1, in_features)
    y = affine(rows, weight, bias)

    def backward(dy):
        dy_rows = dy.reshape(-1, weight.shape[0])
        dx = gemm.matmul(dy_rows, weight).reshape(x.shape)
        dweight = gemm.matmul(dy_rows.T, rows, out=gradient_slots.empty(
            weight.shape, np.result_type(dy_rows, rows)))
        dbias = None if bias is None else column_sums(dy_rows)
        return dx, dweight, dbias

    return y.reshape(*x.shape[:-1], weight.shape[0]), backward


def affine(rows, weight, bias):
    """rows @ weight.T + bias (None: none): the bias written first and the product added to
    it by BLAS (gemm with beta = 1), where a product and then a pass adding the bias read
    and wrote the output twice (2048 x 128 -> 384: 0.79 -> 0.69 ms)."""
    if bias is None:
        return gemm.matmul(rows, weight.T)
    out = np.empty((len(rows), len(weight)), np.result_type(rows, weight))
    if out.dtype == bias.dtype == np.float32 and bias.flags.c_contiguous:
        parallel.fill_rows(bias, out)
    else:
        out[...] = bias
    gemm.add_product(rows, weight.T, out)
    return out


def column_sums(rows):
    """Sums over the rows of a matrix (bias gradients) as a matrix-vector product: 3x faster
    than ``rows.sum(axis=0)``, which walks the rows one at a time."""
    return np.ones(len(rows), rows.dtype) @ rows
