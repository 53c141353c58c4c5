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
        var = _channel_sum(centered * centered) / count
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean
            running_var *= 1.0 - momentum
            running_var += (momentum * count / (count - 1)) * var
    else:
        centered = x - running_mean.reshape(shape)
        var = running_var
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centered * inv_std.reshape(shape)
    y = x_hat if weight is None else x_hat * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)

    def backward(dy):
        sum_dy = _channel_sum(dy)
        sum_dy_x_hat = _channel_sum(dy * x_hat)
        gain = inv_std if weight is None else inv_std * weight
        if train:
            # d(x_hat)/dx includes the batch mean and variance, which depend on every x
            dx = dy - (sum_dy / count).reshape(shape) - x_hat * (sum_dy_x_hat / count).reshape(shape)
            dx *= gain.reshape(shape)
        else:
            dx = dy * gain.reshape(shape)
        dweight = None if weight is None else sum_dy_x_hat
        dbias = None if bias is None else sum_dy
        return dx, dweight, dbias, None, None

    return y, backward


def _channel_sum(a):
    """Per-channel sum: contiguous (pairwise, vectorised) reduction first, batch axis second."""
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).sum(axis=0)
