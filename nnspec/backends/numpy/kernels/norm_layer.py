"""Layer normalisation over the trailing dimensions, as torch's F.layer_norm computes it."""

from __future__ import annotations

import math

import numpy as np


def layer_norm(x, weight, bias, *, normalized_ndim=1, eps=1e-5):
    """Normalise each sample over its last ``normalized_ndim`` axes (biased variance).

    ``weight`` and ``bias`` have the normalised shape, or are None without an affine
    transform. Backward gives ``(dx, dweight, dbias)``.
    """
    normalized_shape = x.shape[x.ndim - normalized_ndim:]
    size = math.prod(normalized_shape)
    rows = x.reshape(-1, size)
    mean = rows.mean(axis=1, keepdims=True)
    centered = rows - mean
    var = np.mean(centered * centered, axis=1, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = centered
    x_hat *= inv_std
    y = x_hat.copy() if weight is None else x_hat * weight.reshape(size)
    if bias is not None:
        y += bias.reshape(size)

    def backward(dy):
        dy_rows = dy.reshape(-1, size)
        d_x_hat = dy_rows if weight is None else dy_rows * weight.reshape(size)
        # x_hat has zero mean and unit variance per row, which removes those two directions
        d_mean = d_x_hat.mean(axis=1, keepdims=True)
        d_scale = np.mean(d_x_hat * x_hat, axis=1, keepdims=True)
        dx = d_x_hat - d_mean
        dx -= x_hat * d_scale
        dx *= inv_std
        dweight = None if weight is None else (dy_rows * x_hat).sum(axis=0).reshape(weight.shape)
        dbias = None if bias is None else dy_rows.sum(axis=0).reshape(bias.shape)
        return dx.reshape(x.shape), dweight, dbias

    return y.reshape(x.shape), backward
