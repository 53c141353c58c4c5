"""Convolutions as im2col + one batched matrix product, and the sliding-window helpers pooling shares.

The window view comes from ``sliding_window_view`` (no Python loop over output pixels); the
backward scatters window gradients back with one strided add per kernel offset (col2im).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Largest per-chunk weight-gradient intermediate, in elements: bounds memory on wide layers
# while letting small layers (LeNet) do the whole batch in one batched product.
_WEIGHT_GRAD_CHUNK_ELEMENTS = 1 << 20


def pad_spatial(x, padding, value=0.0):
    """Pad the trailing spatial dims of (N, C, *spatial) by explicit (lo, hi) pairs."""
    if all(lo == 0 and hi == 0 for lo, hi in padding):
        return x
    widths = ((0, 0), (0, 0), *((lo, hi) for lo, hi in padding))
    return np.pad(x, widths, mode="constant", constant_values=value)


def crop_padding(x_padded, padding):
    """Undo ``pad_spatial``: the gradient of the unpadded input, as a contiguous array."""
    if all(lo == 0 and hi == 0 for lo, hi in padding):
        return x_padded
    index = (slice(None), slice(None)) + tuple(
        slice(lo, size - hi) for (lo, hi), size in zip(padding, x_padded.shape[2:])
    )
    return np.ascontiguousarray(x_padded[index])


def output_size(padded, kernel, stride, dilation):
    """Output length per spatial dim of a window sweep over an already padded input."""
    sizes = tuple(
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(padded, kernel, stride, dilation)
    )
    if min(sizes) < 1:
        raise ValueError(
            f"window {tuple(kernel)} (dilation {tuple(dilation)}) does not fit "
            f"the padded input {tuple(padded)}"
        )
    return sizes


def windows(x_padded, kernel, stride, dilation):
    """A view (N, C, *out, *kernel) of every window; copies nothing."""
    nd = len(kernel)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    view = sliding_window_view(x_padded, spans, axis=tuple(range(2, 2 + nd)))
    step = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)
    step += tuple(slice(None, None, d) for d in dilation)
    return view[step]


def kernel_offsets(kernel):
    """Every position inside a window, in row-major order (torch's scan order)."""
    return list(itertools.product(*(range(k) for k in kernel)))


def offset_index(offset, stride, dilation, out):
    """Index of the (N, C, *out) strided view of the input element at ``offset`` of every window."""
    return (slice(None), slice(None)) + tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s)
        for o, d, s, n in zip(offset, dilation, stride, out)
    )


def scatter_windows(grad_at_offset, padded_shape, kernel, stride, dilation, out, dtype):
    """Sum window gradients back into the padded input: one strided add per kernel offset.

    ``grad_at_offset(offset)`` gives the (N, C, *out) gradient that flows to the input element
    at ``offset`` inside every window.
    """
    grad = np.zeros(padded_shape, dtype=dtype)
    for offset in kernel_offsets(kernel):
        grad[offset_index(offset, stride, dilation, out)] += grad_at_offset(offset)
    return grad


def conv1d(x, weight, bias, *, stride, padding, dilation, groups):
    """Convolve (N, C, L) with weight [out, C/groups, k]; backward gives (dx, dweight, dbias)."""
    check_spatial("conv1d", x, 1, stride=stride, padding=padding, dilation=dilation)
    return _conv(x, weight, bias, stride, padding, dilation, groups)


def conv2d(x, weight, bias, *, stride, padding, dilation, groups):
    """Convolve (N, C, H, W) with weight [out, C/groups, kH, kW]; backward gives (dx, dweight, dbias)."""
    check_spatial("conv2d", x, 2, stride=stride, padding=padding, dilation=dilation)
    return _conv(x, weight, bias, stride, padding, dilation, groups)


def check_spatial(name, x, nd, **attrs):
    """Reject an input without ``nd`` spatial dims, or an attribute without one entry per dim."""
    if x.ndim != nd + 2:
        raise ValueError(f"{name} expects a {nd + 2}-d input, got shape {x.shape}")
    for key, value in attrs.items():
        if isinstance(value, int) or len(value) != nd:
            raise ValueError(f"{name}: {key} needs one entry per spatial dim ({nd}), got {value!r}")


def _conv(x, weight, bias, stride, padding, dilation, groups):
    """Any-rank convolution: columns (N, groups, C/groups * K, P) times weight (groups, O/groups, ...)."""
    n, channels = x.shape[:2]
    out_channels, group_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    if channels != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"conv with {groups} groups: input has {channels} channels, weight {weight.shape}"
        )
    x_padded = pad_spatial(x, padding)
    out = output_size(x_padded.shape[2:], kernel, stride, dilation)
    nd = len(kernel)
    window_view = windows(x_padded, kernel, stride, dilation)
    to_columns = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    columns = window_view.transpose(to_columns).reshape(
        n, groups, group_channels * math.prod(kernel), math.prod(out)
    )
    weight_matrix = weight.reshape(groups, out_channels // groups, -1)
    y = np.matmul(weight_matrix, columns).reshape(n, out_channels, *out)
    if bias is not None:
        y += bias.reshape(out_channels, *(1,) * nd)

    def backward(dy, input_grad=True):
        """`input_grad=False` skips dx (None): a first layer's input needs no gradient."""
        dy_groups = dy.reshape(n, groups, out_channels // groups, -1)
        dweight = _weight_grad(dy_groups, columns).reshape(weight.shape)
        dbias = None if bias is None else dy.sum(axis=(0, *range(2, 2 + nd)))
        if not input_grad:
            return None, dweight, dbias
        dx_padded = _input_grad(dy, weight_matrix, kernel, x_padded.shape, stride, dilation,
                                groups)
        return np.ascontiguousarray(crop_padding(dx_padded, padding)), dweight, dbias

    return y, backward


def _input_grad(dy, weight_matrix, kernel, padded_shape, stride, dilation, groups):
    """col2im with the batch innermost: one product for every group's columns, then one
    strided add per kernel offset whose rows are contiguous runs of the batch (three times
    faster than adding (N, C, *out) blocks). Returns a (N, C, *padded) view."""
    n, out_channels, *out = dy.shape
    channels = padded_shape[1]
    batch_last = np.ascontiguousarray(np.moveaxis(dy, 0, -1))
    dcolumns = np.matmul(weight_matrix.transpose(0, 2, 1),
                         batch_last.reshape(groups, out_channels // groups, -1))
    dcolumns = dcolumns.reshape(channels, *kernel, *out, n)
    grad = np.zeros((channels, *padded_shape[2:], n), dtype=dy.dtype)
    for offset in kernel_offsets(kernel):
        target = (slice(None),) + tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                                        for o, d, s, m in zip(offset, dilation, stride, out))
        grad[target] += dcolumns[(slice(None), *offset)]
    return np.moveaxis(grad, -1, 0)


def _weight_grad(dy_groups, columns):
    """Sum over the batch of dy[n] @ columns[n].T, in batch chunks that bound the intermediate."""
    n, groups, out_per_group = dy_groups.shape[:3]
    per_sample = groups * out_per_group * columns.shape[2]
    chunk = max(1, _WEIGHT_GRAD_CHUNK_ELEMENTS // per_sample)
    total = None
    for start in range(0, n, chunk):
        part = np.matmul(
            dy_groups[start:start + chunk], columns[start:start + chunk].transpose(0, 1, 3, 2)
        ).sum(axis=0)
        if total is None:
            total = part
        else:
            total += part
    return total
