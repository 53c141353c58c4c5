"""Max, average and adaptive average pooling over (N, C, L) and (N, C, H, W), torch's semantics.

``kernel`` and ``stride`` are tuples per spatial dim and ``padding`` is explicit (lo, hi) pairs,
as for the convolutions. Max pooling pads with -inf and routes each gradient to the first
maximum of its window; average pooling counts padded zeros (torch's count_include_pad=True).
"""

from __future__ import annotations

import math

import numpy as np

from .conv import crop_padding, output_size, pad_spatial, scatter_windows, windows


def max_pool1d(x, *, kernel, stride, padding):
    """Max over each window of (N, C, L); backward gives (dx,)."""
    _check_rank("max_pool1d", x, 3)
    return _max_pool(x, kernel, stride, padding)


def max_pool2d(x, *, kernel, stride, padding):
    """Max over each window of (N, C, H, W); backward gives (dx,)."""
    _check_rank("max_pool2d", x, 4)
    return _max_pool(x, kernel, stride, padding)


def avg_pool1d(x, *, kernel, stride, padding):
    """Mean over each window of (N, C, L), padded zeros included; backward gives (dx,)."""
    _check_rank("avg_pool1d", x, 3)
    return _avg_pool(x, kernel, stride, padding)


def avg_pool2d(x, *, kernel, stride, padding):
    """Mean over each window of (N, C, H, W), padded zeros included; backward gives (dx,)."""
    _check_rank("avg_pool2d", x, 4)
    return _avg_pool(x, kernel, stride, padding)


def adaptive_avg_pool1d(x, *, output_size):
    """Average (N, C, L) into ``output_size`` bins (a 1-tuple or int); backward gives (dx,)."""
    _check_rank("adaptive_avg_pool1d", x, 3)
    (length,) = _per_dim(output_size, 1)
    bins = _bin_matrix(x.shape[2], length, x.dtype)
    y = x @ bins.T

    def backward(dy):
        return (dy @ bins,)

    return y, backward


def adaptive_avg_pool2d(x, *, output_size):
    """Average (N, C, H, W) into ``output_size`` = (oH, oW) bins; backward gives (dx,)."""
    _check_rank("adaptive_avg_pool2d", x, 4)
    out_h, out_w = _per_dim(output_size, 2)
    rows = _bin_matrix(x.shape[2], out_h, x.dtype)
    cols = _bin_matrix(x.shape[3], out_w, x.dtype)
    y = rows @ (x @ cols.T)

    def backward(dy):
        return (rows.T @ (dy @ cols),)

    return y, backward


def _check_rank(name, x, rank):
    if x.ndim != rank:
        raise ValueError(f"{name} expects a {rank}-d input, got shape {x.shape}")


def _per_dim(size, nd):
    return (size,) * nd if isinstance(size, int) else tuple(size)


def _bin_matrix(length, bins, dtype):
    """(bins, length) averaging matrix with torch's bins [floor(i*L/n), ceil((i+1)*L/n)).

    Adaptive pooling is separable, so per-axis matrix products compute it and its gradient
    exactly, whatever the ratio of input to output size.
    """
    matrix = np.zeros((bins, length), dtype=dtype)
    for i in range(bins):
        start = (i * length) // bins
        end = -((-(i + 1) * length) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _max_pool(x, kernel, stride, padding):
    nd = len(kernel)
    x_padded = pad_spatial(x, padding, value=-np.inf)
    out = output_size(x_padded.shape[2:], kernel, stride, (1,) * nd)
    flat_windows = windows(x_padded, kernel, stride, (1,) * nd).reshape(
        *x.shape[:2], *out, math.prod(kernel)
    )
    argmax = flat_windows.argmax(axis=-1)  # first maximum, as torch picks it
    y = np.take_along_axis(flat_windows, argmax[..., None], axis=-1)[..., 0]

    def backward(dy):
        offsets = np.unravel_index(argmax, kernel)
        positions = tuple(
            np.arange(n).reshape((n,) + (1,) * (nd - 1 - axis)) * s + offset
            for axis, (n, s, offset) in enumerate(zip(out, stride, offsets))
        )
        plane = math.prod(x_padded.shape[2:])
        planes = np.arange(x.shape[0] * x.shape[1]).reshape(*x.shape[:2], *(1,) * nd) * plane
        flat_index = (planes + np.ravel_multi_index(positions, x_padded.shape[2:])).ravel()
        dx_padded = np.zeros(x_padded.size, dtype=x.dtype)
        if all(s >= k for s, k in zip(stride, kernel)):
            dx_padded[flat_index] = dy.ravel()  # disjoint windows: every target is distinct
        else:
            np.add.at(dx_padded, flat_index, dy.ravel())
        return (crop_padding(dx_padded.reshape(x_padded.shape), padding),)

    return y, backward


def _avg_pool(x, kernel, stride, padding):
    nd = len(kernel)
    x_padded = pad_spatial(x, padding)
    out = output_size(x_padded.shape[2:], kernel, stride, (1,) * nd)
    window_axes = tuple(range(2 + nd, 2 + 2 * nd))
    y = windows(x_padded, kernel, stride, (1,) * nd).mean(axis=window_axes)

    def backward(dy):
        share = dy / math.prod(kernel)
        dx_padded = scatter_windows(
            lambda offset: share, x_padded.shape, kernel, stride, (1,) * nd, out, x.dtype
        )
        return (crop_padding(dx_padded, padding),)

    return y, backward
