"""Group and instance normalisation over (N, C, *spatial), as torch computes them.

Group norm is layer norm over each (sample, group) row followed by a per-channel affine
transform; instance norm is batch norm over a batch of one whose channels are every
(sample, channel) pair, with the running statistics averaged over the samples, which is how
torch's F.instance_norm is defined.
"""

from __future__ import annotations

import numpy as np

from .norm_batch import batch_norm
from .norm_layer import normalise_rows, normalise_rows_backward


def group_norm(x, weight, bias, *, groups, eps=1e-5):
    """Normalise each sample over each group of channels and all positions; backward gives
    (dx, dweight, dbias), the weight ones None without an affine transform. Each (sample,
    group) is a row of layer norm's compiled loops, which apply the channels' weight and
    bias (repeated over their positions) in the same pass."""
    n, channels = x.shape[:2]
    if channels % groups:
        raise ValueError(f"group_norm: {groups} groups do not divide {channels} channels")
    positions = x[0, 0].size
    shape = x.shape  # the backward keeps the shape, not x
    rows = np.ascontiguousarray(x).reshape(n * groups, -1)
    dtype = rows.dtype
    affine = weight is not None or bias is not None

    def per_group(parameter, default):
        values = np.full(channels, default, dtype) if parameter is None else parameter
        return np.repeat(values.astype(dtype, copy=False), positions).reshape(groups, -1)

    scale, shift = per_group(weight, 1), per_group(bias, 0)
    y, x_hat, inv_std = normalise_rows(rows, scale, shift, affine, eps)

    def backward(dy):
        dx, d_scale, d_shift = normalise_rows_backward(dy, x_hat, scale, affine, inv_std)
        dweight = None if weight is None else d_scale.reshape(channels, positions).sum(axis=1)
        dbias = None if bias is None else d_shift.reshape(channels, positions).sum(axis=1)
        return dx.reshape(shape), dweight, dbias

    return y.reshape(shape), backward


def instance_norm(x, weight, bias, running_mean, running_var, *, use_input_stats,
                  momentum=0.1, eps=1e-5):
    """Normalise each (sample, channel) over its positions; backward gives
    (dx, dweight, dbias, None, None).

    With ``use_input_stats`` (training, or no running statistics) the instance statistics
    are used and the running buffers, when given, move towards their mean over the batch
    (the variance unbiased); otherwise the running buffers normalise.
    """
    n, channels = x.shape[:2]
    folded = x.reshape(1, n * channels, *x.shape[2:])

    def tiled(a):
        return None if a is None else np.tile(a, n)

    mean, var = tiled(running_mean), tiled(running_var)
    y, folded_backward = batch_norm(folded, tiled(weight), tiled(bias), mean, var,
                                    train=use_input_stats, momentum=momentum, eps=eps)
    if use_input_stats and running_mean is not None:
        running_mean[...] = mean.reshape(n, channels).mean(axis=0)
        running_var[...] = var.reshape(n, channels).mean(axis=0)

    def backward(dy):
        dx, dweight, dbias, _, _ = folded_backward(dy.reshape(folded.shape))
        per_channel = (lambda g: None if g is None else g.reshape(n, channels).sum(axis=0))
        return dx.reshape(x.shape), per_channel(dweight), per_channel(dbias), None, None

    return y.reshape(x.shape), backward
