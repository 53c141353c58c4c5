"""Batch normalisation over (N, C), (N, C, L) and (N, C, H, W), with torch's running statistics."""

from __future__ import annotations

import numpy as np


def batch_norm(x, weight, bias, running_mean, running_var, *, train, momentum=0.1, eps=1e-5):
    """Normalise each channel; backward gives (dx, dweight, dbias, None, None).

    Training normalises with the batch statistics and updates the running buffers in place,
    the variance buffer with the unbiased batch variance, as torch does; evaluation uses the
    running buffers. ``weight`` and ``bias`` are None without an affine transform; the running
    buffers may be None in training (torch's track_running_stats=False).
    """
    channels = x.shape[1]
    count = x.size // channels
    shape = (1, channels) + (1,) * (x.ndim - 2)
    if train:
        if count < 2:
            raise ValueError(
                f"batch_norm in training needs more than one value per channel, got shape {x.shape}"
            )
        mean = _channel_sum(x) / count
        centered = x - mean.reshape(shape)
        var = _channel_dot(centered, centered) / count
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean
            running_var *= 1.0 - momentum
            running_var += (momentum * count / (count - 1)) * var
    else:
        centered = x - running_mean.reshape(shape)
        var = running_var
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = inv_std if weight is None else inv_std * weight
    y = centered * scale.reshape(shape)
    if bias is not None:
        y += bias.reshape(shape)

    def backward(dy):
        # x_hat = centered * inv_std is never stored: every use folds inv_std into a
        # per-channel factor, which saves full-size passes over the activations.
        sum_dy = _channel_sum(dy)
        sum_dy_x_hat = _channel_dot(dy, centered) * inv_std
        dx = dy * scale.reshape(shape)
        if train:
            # the batch mean and variance depend on every x, which adds two terms
            dx -= centered * (scale * inv_std * sum_dy_x_hat / count).reshape(shape)
            dx -= (scale * sum_dy / count).reshape(shape)
        dweight = None if weight is None else sum_dy_x_hat
        dbias = None if bias is None else sum_dy
        return dx, dweight, dbias, None, None

    return y, backward


def _per_channel(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def _channel_sum(a):
    """Per-channel sum: contiguous (pairwise, vectorised) reduction first, batch axis second."""
    return _per_channel(a).sum(axis=2).sum(axis=0)


def _channel_dot(a, b):
    """Per-channel sum of a * b without a full-size temporary."""
    return np.einsum("nci,nci->nc", _per_channel(a), _per_channel(b)).sum(axis=0)
