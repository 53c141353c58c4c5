"""Batch normalisation over (N, C), (N, C, L) and (N, C, H, W), with torch's running statistics.

Every pass works on the (N, C * L) view of the activations with per-column coefficients (a
channel's value repeated over its L positions): runs of C * L contiguous values broadcast
over the batch, whatever the map size. Reductions go over the batch first, as matrix-vector
products (BLAS), then over each channel's L columns; passes go block by block over the batch
so that a block's temporary stays in the core's cache (where one sample is longer than a
block, over ranges of its columns in groups of a few samples). While training, the
statistics' pass writes x - shift (the shift is close to the mean), which the normalisation
and the backward read instead of x: no pass centres x again, and the backward keeps that
array, not x.
Against centring x again in each of those (A/B in one process): MobileNet's training step
224 -> 217 ms (its batch norms 77 -> 70 ms), ResNet-20's 221 -> 210, the digits residual
CNN's 26.3 -> 25.8.
"""

from __future__ import annotations

import numpy as np

_BLOCK_FLOATS = 1 << 16  # a block's temporary: 256 KiB of float32
# samples per block where one sample is longer than a block: a 16x96x48x48 batch norm's
# forward and backward 22.4 ms in one-sample blocks, 16.8 in blocks of 8 samples over 8k
# columns (32x96x32x32: 18.9 -> 15.7; 32 samples at once, 26.8); MobileNet's step at 96x96
# 270 -> 266 ms, at 32x32 213 -> 211 (A/B in one process)
_WIDE_ROWS = 8


def batch_norm(x, weight, bias, running_mean, running_var, *, train, momentum=0.1, eps=1e-5):
    """Normalise each channel; backward gives (dx, dweight, dbias, None, None).

    Training normalises with the batch statistics and updates the running buffers in place,
    the variance buffer with the unbiased batch variance, as torch does; evaluation uses the
    running buffers. ``weight`` and ``bias`` are None without an affine transform; the running
    buffers may be None in training (torch's track_running_stats=False).
    """
    n, channels = x.shape[:2]
    count = x.size // channels
    has_bias = bias is not None
    if train and count < 2:
        raise ValueError(
            f"batch_norm in training needs more than one value per channel, got shape {x.shape}"
        )
    rows = x.reshape(n, -1)
    x_shape = x.shape  # the backward keeps the shape, not x
    positions = rows.shape[1] // channels
    dtype = x.dtype
    y = np.empty_like(rows)
    if train:
        # x - shift, from the statistics' pass: the normalisation and the backward read it
        # (kept instead of x), so no pass centres x again
        kept = np.empty_like(rows)
        shift, mean, var = _statistics(rows, channels, count, kept)
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
            running_var *= 1.0 - momentum
            running_var += (momentum * count / (count - 1)) * var.astype(running_var.dtype)
        mean, var = mean.astype(dtype), var.astype(dtype)
        gap = mean - shift  # the kept values are x - mean + gap
    else:
        mean, var = running_mean.astype(dtype), running_var.astype(dtype)
        kept, gap = rows, None
    inv_std = (1.0 / np.sqrt(var + eps)).astype(dtype)
    scale = inv_std if weight is None else inv_std * weight
    scale_columns = _columns(scale, positions)
    bias = np.zeros_like(scale) if bias is None else bias.astype(dtype)
    if train:  # y = (x - shift) * scale + bias - gap * scale
        offset_columns = _columns(bias - gap * scale, positions)
        for block in _blocks(rows):
            columns = block[1]
            np.multiply(kept[block], scale_columns[columns], out=y[block])
            y[block] += offset_columns[columns]
    else:
        mean_columns, bias_columns = _columns(mean, positions), _columns(bias, positions)
        for block in _blocks(rows):
            columns = block[1]
            np.subtract(rows[block], mean_columns[columns], out=y[block])
            y[block] *= scale_columns[columns]
            y[block] += bias_columns[columns]
    del rows  # the backward holds `kept` only

    def backward(dy):
        dy_rows = dy.reshape(kept.shape)
        # remade, not kept from the forward: each is 1/N of an activation
        scale_columns = _columns(scale, positions)
        # sums over the batch of dy and of dy * (x - mean): x_hat is never stored, inv_std
        # is folded into per-channel factors
        mean_columns = None if train else _columns(mean, positions)
        sum_dy, sum_dy_centered = (s.reshape(channels, positions).sum(axis=1)
                                   for s in _gradient_sums(dy_rows, kept, mean_columns))
        if train:
            sum_dy_centered -= gap * sum_dy
        sum_dy_x_hat = sum_dy_centered * inv_std
        dx = np.empty_like(dy_rows)
        if not train:
            np.multiply(dy_rows, scale_columns, out=dx)
        else:
            # the batch mean and variance depend on every x, which adds two terms:
            # dx = scale * dy + b * (x - mean) + c per channel, with x - mean = kept - gap
            b = -scale * inv_std * sum_dy_x_hat / count
            c = -scale * sum_dy / count - b * gap
            b, c = _columns(b, positions), _columns(c, positions)
            scratch = _scratch(kept)
            for block in _blocks(kept):
                columns = block[1]
                part = dx[block]
                term = scratch[:part.shape[0], :part.shape[1]]
                np.multiply(dy_rows[block], scale_columns[columns], out=part)
                np.multiply(kept[block], b[columns], out=term)
                part += term
                part += c[columns]
        dweight = None if weight is None else sum_dy_x_hat
        dbias = sum_dy if has_bias else None
        return dx.reshape(x_shape), dweight, dbias, None, None

    return y.reshape(x_shape), backward


def _columns(per_channel, positions):
    """A per-channel vector repeated over each channel's positions, (C * L,)."""
    return per_channel if positions == 1 else np.repeat(per_channel, positions)


def _blocks(rows):
    """(row slice, column slice) blocks of (N, C * L) of about _BLOCK_FLOATS values each:
    whole rows (samples) a few at a time, or, when one row is longer than a block (large
    maps), groups of _WIDE_ROWS rows over a range of columns, so that a block's temporaries
    stay in the core's cache and its column sums reduce several rows at once."""
    count, width = rows.shape
    if width <= _BLOCK_FLOATS or count == 1:
        step = max(1, _BLOCK_FLOATS // max(1, width))
        return [(slice(first, first + step), slice(None)) for first in range(0, count, step)]
    group = min(count, _WIDE_ROWS)
    span = max(1, _BLOCK_FLOATS // group)
    return [(slice(top, top + group), slice(first, first + span))
            for top in range(0, count, group) for first in range(0, width, span)]


def _scratch(rows):
    """A temporary of the largest block's shape."""
    shape = rows[_blocks(rows)[0]].shape
    return np.empty(shape, dtype=rows.dtype)


def _statistics(rows, channels, count, shifted):
    """Per-channel shift, mean and (biased) variance of (N, C * L) in one read of the input,
    which writes x - shift into ``shifted``: sums of x - shift and of its square, with the
    first sample's channel means as the shift, so the variance does not cancel away when the
    mean is large against the spread."""
    positions = rows.shape[1] // channels
    shift = rows[0].reshape(channels, positions).mean(axis=1, dtype=rows.dtype)
    shift_columns = _columns(shift, positions)
    sums = np.zeros(rows.shape[1], dtype=rows.dtype)
    squares = np.zeros(rows.shape[1], dtype=rows.dtype)
    ones = np.ones(len(_scratch(rows)), dtype=rows.dtype)
    for block in _blocks(rows):
        columns = block[1]
        part = shifted[block]
        np.subtract(rows[block], shift_columns[columns], out=part)
        _add_rows(sums[columns], part, ones)
        squares[columns] += np.einsum("ij,ij->j", part, part)
    # float64 from here on: per-channel values only
    mean_offset = sums.reshape(channels, positions).sum(axis=1, dtype=np.float64) / count
    square_mean = squares.reshape(channels, positions).sum(axis=1, dtype=np.float64) / count
    var = np.maximum(square_mean - mean_offset**2, 0.0)
    return shift, shift + mean_offset, var


def _gradient_sums(dy_rows, rows, mean_columns):
    """Column sums over the batch of dy and of dy * (rows - mean), (C * L,) each, in one read
    of each; of dy * rows when ``mean_columns`` is None."""
    sums = np.zeros(rows.shape[1], dtype=dy_rows.dtype)
    products = np.zeros(rows.shape[1], dtype=dy_rows.dtype)
    scratch = _scratch(rows)
    ones = np.ones(len(scratch), dtype=rows.dtype)
    for block in _blocks(rows):
        columns, x_block = block[1], rows[block]
        part = scratch[:x_block.shape[0], :x_block.shape[1]]
        if mean_columns is None:
            np.multiply(x_block, dy_rows[block], out=part)
        else:
            np.subtract(x_block, mean_columns[columns], out=part)
            part *= dy_rows[block]
        _add_rows(products[columns], part, ones)
        _add_rows(sums[columns], dy_rows[block], ones)
    return sums, products


def _add_rows(total, block, ones):
    """total += the sum of the block's rows: a matrix-vector product, save for one row
    (which OpenBLAS takes ten times longer over than an add)."""
    if len(block) == 1:
        total += block[0]
    else:
        total += ones[:len(block)] @ block
