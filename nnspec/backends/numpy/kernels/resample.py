"""Up-sampling (nearest, linear, bilinear) and pixel shuffles over (N, C, L) / (N, C, H, W).

Interpolation is separable: each spatial axis is resampled in turn by gathering at most two
source positions per output position with their weights, computed as torch computes them
(single precision, torch's source-index rules), so the outputs agree bit for bit in the
common cases. The source positions never decrease along an axis, so the gradient of each
axis is one ``np.add.reduceat`` over the runs of equal positions. Nearest up-sampling by
whole numbers, a U-Net's, repeats each value in one compiled pass instead (``_repeated``).
"""

from __future__ import annotations

import math

import numpy as np

from . import fused, parallel


def upsample(x, *, scale_factor=None, size=None, mode="nearest", align_corners=False):
    """Resample the spatial dims of (N, C, *spatial) to ``size`` or floor(size * scale), the
    size or scale one for all dims or one per dim; backward gives (dx,)."""
    spatial = x.shape[2:]
    if size is not None:
        out = (size,) * len(spatial) if isinstance(size, int) else tuple(size)
        scales = (None,) * len(spatial)
    else:
        scales = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else \
            (scale_factor,) * len(spatial)
        out = tuple(math.floor(length * scale) for length, scale in zip(spatial, scales))
    if len(out) != len(spatial) or len(scales) != len(spatial):
        raise ValueError(f"size {out} does not match input shape {x.shape}")
    plans = [(axis, length, _axis_plan(length, target, scale, mode, align_corners, x.dtype))
             for axis, (length, target, scale) in enumerate(zip(spatial, out, scales), start=2)]
    repeats = _whole_repeats(plans) if x.size else None
    if repeats is not None:
        return _repeated(x, *repeats)
    if mode != "nearest" and x.dtype == np.float32 and x.size:
        return _interpolated(x, [plan for _, _, plan in plans])
    y = x
    for axis, _, plan in plans:
        y = _resample(y, axis, plan)

    def backward(dy):
        for axis, length, plan in reversed(plans):
            dy = _resample_grad(dy, axis, length, plan)
        return (dy,)

    return y, backward


def _whole_repeats(plans):
    """(row repeats, column repeats) where the plans repeat every value a whole number of
    times along one or two axes (nearest up-sampling by 2, 3, ...; 1-D as one row a plane),
    else None."""
    repeats = []
    for _, length, plan in plans:
        positions, weights = plan[0]
        count = len(positions) // length
        if len(plan) != 1 or weights is not None or count < 1 or \
                count * length != len(positions) or \
                not np.array_equal(positions, np.arange(len(positions)) // count):
            return None
        repeats.append(count)
    return tuple(repeats) if len(repeats) == 2 else (1, *repeats) if len(repeats) == 1 else None


def _repeated(x, row_repeats, column_repeats):
    """Nearest up-sampling by whole numbers as one compiled pass each way
    (``parallel.repeat_rows``), where the gathers along each axis were two (2 x 32 x 64 x 64
    by 2: forward 0.82 -> 0.15 ms, backward 0.68 -> 0.12)."""
    width = x.shape[-1]
    rows = np.ascontiguousarray(x).reshape(-1, width)
    repeats = (row_repeats, column_repeats)[2 - (x.ndim - 2):]
    y = np.empty((*x.shape[:2], *(size * k for size, k in zip(x.shape[2:], repeats))), x.dtype)
    parallel.repeat_rows(rows, row_repeats, column_repeats, y.reshape(-1, width * column_repeats))

    def backward(dy):
        dx = np.empty(x.shape, dy.dtype)
        parallel.sum_row_blocks(np.ascontiguousarray(dy).reshape(-1, width * column_repeats),
                                row_repeats, column_repeats, dx.reshape(-1, width))
        return (dx,)

    return y, backward


def _interpolated(x, plans):
    """Linear and bilinear up-sampling in one compiled pass each way, by planes on both
    cores (``parallel.interpolate``): NumPy's gathers, weightings and sums an axis at a
    time, and their ``np.add.reduceat`` backward along the rows, took 15.5 + 82 ms for 32 x
    64 x 32 x 32 by 2 (torch 13.7 + 11)."""
    tables = [(np.stack([low, high]).astype(np.int64), np.stack([lower, upper]))
              for (low, lower), (high, upper) in plans]
    if len(tables) == 1:  # 1-D: one row a plane
        tables.insert(0, (None, np.ones((2, 1), np.float32)))
    (rows, row_weights), (columns, column_weights) = tables
    n, c, *spatial = x.shape
    planes = np.ascontiguousarray(x).reshape(n * c, -1, spatial[-1])
    out = np.empty((n * c, row_weights.shape[1], column_weights.shape[1]), np.float32)
    parallel.interpolate(planes, rows, row_weights, columns, column_weights, out)

    def backward(dy):
        d_planes = np.empty(planes.shape, np.float32)
        parallel.interpolate_gradient(np.ascontiguousarray(dy, np.float32).reshape(out.shape),
                                      rows, row_weights, columns, column_weights, d_planes)
        return (d_planes.reshape(x.shape),)

    return out.reshape(n, c, *((out.shape[1],) if len(spatial) == 2 else ()), out.shape[2]), \
        backward


def _axis_plan(length, target, scale, mode, align_corners, dtype):
    """Source positions and weights along one axis: [(positions, weights or None), ...]."""
    outputs = np.arange(target, dtype=np.float32)
    if mode == "nearest":
        if target == length:
            return [(np.arange(target), None)]
        step = np.float32(1.0 / scale) if scale else np.float32(length) / np.float32(target)
        source = np.floor(outputs * step).astype(np.int64)
        return [(np.minimum(source, length - 1), None)]
    if align_corners:
        step = np.float32(length - 1) / np.float32(target - 1) if target > 1 else np.float32(0)
        source = outputs * step
    else:
        step = np.float32(1.0 / scale) if scale else np.float32(length) / np.float32(target)
        source = np.maximum(step * (outputs + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    low = source.astype(np.int64)
    high = low + (low < length - 1)
    upper = np.clip(source - low.astype(np.float32), 0, 1)
    lower = np.float32(1) - upper
    return [(low, lower.astype(dtype)), (high, upper.astype(dtype))]


def _along(weights, axis, ndim):
    return weights.reshape((-1,) + (1,) * (ndim - axis - 1))


def _resample(x, axis, plan):
    out = None
    for positions, weights in plan:
        part = np.take(x, positions, axis=axis)
        if weights is not None:
            part *= _along(weights, axis, x.ndim)
        out = part if out is None else np.add(out, part, out=out)
    return out


def _resample_grad(dy, axis, length, plan):
    positions, weights = plan[0]
    repeats = dy.shape[axis] // length
    if len(plan) == 1 and weights is None and repeats * length == dy.shape[axis] and \
            np.array_equal(positions, np.arange(dy.shape[axis]) // repeats):
        # whole-number nearest up-sampling: each input position's copies are every
        # `repeats`-th output position, so the gradient is a sum of strided views
        def every(j):
            return dy[(slice(None),) * axis + (slice(j, None, repeats),)]

        dx = every(0).copy()
        for j in range(1, repeats):
            dx += every(j)
        return dx
    shape = list(dy.shape)
    shape[axis] = length
    dx = np.zeros(shape, dtype=dy.dtype)
    for positions, weights in plan:
        contribution = dy if weights is None else dy * _along(weights, axis, dy.ndim)
        targets, starts = np.unique(positions, return_index=True)
        span = slice(targets[0], targets[-1] + 1) if \
            targets[-1] - targets[0] + 1 == len(targets) else targets
        dx[(slice(None),) * axis + (span,)] += np.add.reduceat(contribution, starts, axis=axis)
    return dx


def pixel_shuffle(x, *, upscale):
    """(N, C * r * r, H, W) -> (N, C, H * r, W * r), channel c * r * r + i * r + j going to
    row offset i and column offset j as in torch; backward gives (dx,). Each way one
    compiled copy (``fused.spread_windows``, a transposed convolution's whose windows tile
    its output: the same reordering, its planes the shuffle's)."""
    n, channels, height, width = x.shape
    r = upscale
    planes = n * (channels // (r * r))
    blocks = np.ascontiguousarray(x).reshape(planes, r, r, 1, height, width)
    y = np.empty((1, planes, height, r, width, r), x.dtype)
    fused.spread_windows(blocks, y)

    def backward(dy):
        dx = np.empty_like(blocks)
        fused.gather_windows(np.ascontiguousarray(dy).reshape(y.shape), dx)
        return (dx.reshape(x.shape),)

    return y.reshape(n, channels // (r * r), height * r, width * r), backward


def pixel_unshuffle(x, *, downscale):
    """(N, C, H * r, W * r) -> (N, C * r * r, H, W), the inverse of ``pixel_shuffle``, by
    the inverse copy (``fused.gather_windows``); backward gives (dx,)."""
    n, channels, height, width = x.shape
    r = downscale
    planes = n * channels
    rows = np.ascontiguousarray(x).reshape(1, planes, height // r, r, width // r, r)
    y = np.empty((planes, r, r, 1, height // r, width // r), x.dtype)
    fused.gather_windows(rows, y)

    def backward(dy):
        dx = np.empty_like(rows)
        fused.spread_windows(np.ascontiguousarray(dy).reshape(y.shape), dx)
        return (dx.reshape(x.shape),)

    return y.reshape(n, channels * r * r, height // r, width // r), backward
