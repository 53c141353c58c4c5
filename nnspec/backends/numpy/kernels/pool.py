"""Max, average and adaptive average pooling over (N, C, L) and (N, C, H, W), torch's semantics.

``kernel`` and ``stride`` are tuples per spatial dim and ``padding`` is explicit (lo, hi) pairs,
as for the convolutions. Max pooling pads with -inf and routes each gradient to the first
maximum of its window; average pooling counts padded zeros (torch's count_include_pad=True).
"""

from __future__ import annotations

import functools

import numpy as np

from .conv import (
    check_spatial,
    crop_padding,
    kernel_offsets,
    offset_index,
    output_size,
    pad_spatial,
    scatter_windows,
)


def max_pool1d(x, *, kernel, stride, padding):
    """Max over each window of (N, C, L); backward gives (dx,)."""
    check_spatial("max_pool1d", x, 1, kernel=kernel, stride=stride, padding=padding)
    return _max_pool(x, kernel, stride, padding)


def max_pool2d(x, *, kernel, stride, padding):
    """Max over each window of (N, C, H, W); backward gives (dx,)."""
    check_spatial("max_pool2d", x, 2, kernel=kernel, stride=stride, padding=padding)
    return _max_pool(x, kernel, stride, padding)


def avg_pool1d(x, *, kernel, stride, padding):
    """Mean over each window of (N, C, L), padded zeros included; backward gives (dx,)."""
    check_spatial("avg_pool1d", x, 1, kernel=kernel, stride=stride, padding=padding)
    return _avg_pool(x, kernel, stride, padding)


def avg_pool2d(x, *, kernel, stride, padding):
    """Mean over each window of (N, C, H, W), padded zeros included; backward gives (dx,)."""
    check_spatial("avg_pool2d", x, 2, kernel=kernel, stride=stride, padding=padding)
    return _avg_pool(x, kernel, stride, padding)


def adaptive_avg_pool1d(x, *, output_size):
    """Average (N, C, L) into ``output_size`` = (oL,) or oL bins; backward gives (dx,)."""
    check_spatial("adaptive_avg_pool1d", x, 1)
    return _adaptive_avg_pool(x, output_size)


def adaptive_avg_pool2d(x, *, output_size):
    """Average (N, C, H, W) into ``output_size`` = (oH, oW) bins (an int for both); backward
    gives (dx,). Global average pooling is output_size 1."""
    check_spatial("adaptive_avg_pool2d", x, 2)
    return _adaptive_avg_pool(x, output_size)


def _adaptive_avg_pool(x, output_size):
    """One matrix product over each flattened (N*C) plane: pooling is linear and separable, so
    the pooling matrix is the Kronecker product of per-axis bin-averaging matrices."""
    spatial = x.shape[2:]
    if isinstance(output_size, int):
        output_size = (output_size,) * len(spatial)
    if len(output_size) != len(spatial):
        raise ValueError(f"output_size {tuple(output_size)} does not match input shape {x.shape}")
    pooling = functools.reduce(
        np.kron, (_bin_matrix(size, bins, x.dtype) for size, bins in zip(spatial, output_size))
    )
    planes = x.reshape(-1, pooling.shape[1])
    y = (planes @ pooling.T).reshape(*x.shape[:2], *output_size)

    def backward(dy):
        dy_planes = dy.reshape(-1, pooling.shape[0])
        # With one bin (global pooling) the product is an outer product, which BLAS does
        # about ten times slower than a broadcast multiply.
        dx = dy_planes * pooling if pooling.shape[0] == 1 else dy_planes @ pooling
        return (dx.reshape(x.shape),)

    return y, backward


def _bin_matrix(length, bins, dtype):
    """(bins, length) averaging matrix with torch's bins [floor(i*L/n), ceil((i+1)*L/n))."""
    matrix = np.zeros((bins, length), dtype=dtype)
    for i in range(bins):
        start = (i * length) // bins
        end = -((-(i + 1) * length) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _max_pool(x, kernel, stride, padding):
    """Running maximum over the kernel offsets; backward finds each window's first maximum."""
    unit = (1,) * len(kernel)
    x_padded = pad_spatial(x, padding, value=-np.inf)
    out = output_size(x_padded.shape[2:], kernel, stride, unit)
    offsets = kernel_offsets(kernel)
    y = x_padded[offset_index(offsets[0], stride, unit, out)].copy()
    for offset in offsets[1:]:
        np.maximum(y, x_padded[offset_index(offset, stride, unit, out)], out=y)

    def backward(dy):
        # Scanning offsets in torch's order, the first element equal to the maximum wins the
        # window's gradient; ``claimed`` keeps later ties from taking a share.
        claimed = np.zeros(y.shape, dtype=bool)

        def routed(offset):
            wins = x_padded[offset_index(offset, stride, unit, out)] == y
            wins &= ~claimed
            np.logical_or(claimed, wins, out=claimed)
            return dy * wins

        dx_padded = scatter_windows(routed, x_padded.shape, kernel, stride, unit, out, x.dtype)
        return (crop_padding(dx_padded, padding),)

    return y, backward


def _avg_pool(x, kernel, stride, padding):
    """Sum of the strided views at every kernel offset, divided by the window size."""
    unit = (1,) * len(kernel)
    x_padded = pad_spatial(x, padding)
    out = output_size(x_padded.shape[2:], kernel, stride, unit)
    offsets = kernel_offsets(kernel)
    y = x_padded[offset_index(offsets[0], stride, unit, out)].copy()
    for offset in offsets[1:]:
        y += x_padded[offset_index(offset, stride, unit, out)]
    y *= 1.0 / len(offsets)

    def backward(dy):
        share = dy * (1.0 / len(offsets))
        dx_padded = scatter_windows(
            lambda offset: share, x_padded.shape, kernel, stride, unit, out, x.dtype
        )
        return (crop_padding(dx_padded, padding),)

    return y, backward
