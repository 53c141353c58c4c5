"""Convolutions as im2col + one matrix product per group, and the window helpers pooling shares.

Every window sweep (im2col, col2im, pooling) is one strided view per kernel offset of the
padded map (no Python loop over samples or output pixels); gradients go back through
``scatter_windows``, one strided add per offset.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


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

    ``grad_at_offset(offset)`` gives the gradient that flows to the input element at
    ``offset`` inside every window, shaped like the two leading dims of ``padded_shape``
    (batch and channels, in either order) and ``out``.
    """
    grad = np.zeros(padded_shape, dtype=dtype)
    for offset in kernel_offsets(kernel):
        grad[offset_index(offset, stride, dilation, out)] += grad_at_offset(offset)
    return grad


def conv1d(x, weight, bias, *, stride, padding, dilation, groups, input_grad=True):
    """Convolve (N, C, L) with weight [out, C/groups, k]; backward gives (dx, dweight, dbias),
    dx None when ``input_grad`` is False."""
    check_spatial("conv1d", x, 1, stride=stride, padding=padding, dilation=dilation)
    return _conv(x, weight, bias, stride, padding, dilation, groups, input_grad)


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, input_grad=True):
    """Convolve (N, C, H, W) with weight [out, C/groups, kH, kW]; backward gives (dx, dweight,
    dbias), dx None when ``input_grad`` is False."""
    check_spatial("conv2d", x, 2, stride=stride, padding=padding, dilation=dilation)
    return _conv(x, weight, bias, stride, padding, dilation, groups, input_grad)


def check_spatial(name, x, nd, **attrs):
    """Reject an input without ``nd`` spatial dims, or an attribute without one entry per dim."""
    if x.ndim != nd + 2:
        raise ValueError(f"{name} expects a {nd + 2}-d input, got shape {x.shape}")
    for key, value in attrs.items():
        if isinstance(value, int) or len(value) != nd:
            raise ValueError(f"{name}: {key} needs one entry per spatial dim ({nd}), got {value!r}")


def _conv(x, weight, bias, stride, padding, dilation, groups, input_grad):
    """Any-rank convolution as one product per group with the batch folded into the columns:
    weight (O/g, C/g*K) times columns (C/g*K, N*P). Inside, maps are channels first and
    batch second, (C, N, *spatial), so the columns, the output's rows and the input
    gradient's kernel offsets are all contiguous runs; the layout at the boundary stays
    torch's."""
    n, channels = x.shape[:2]
    out_channels, group_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    if channels != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"conv with {groups} groups: input has {channels} channels, weight {weight.shape}"
        )
    x_padded = pad_spatial(np.swapaxes(x, 0, 1), padding)
    out = output_size(x_padded.shape[2:], kernel, stride, dilation)
    columns = _im2col(x_padded, kernel, stride, dilation, out)
    weight_groups = weight.reshape(groups, out_channels // groups, -1)
    y_rows = _grouped_product(weight_groups, columns.reshape(groups, -1, columns.shape[1]))
    if bias is not None:
        y_rows += bias[:, None]
    y = np.ascontiguousarray(np.swapaxes(y_rows.reshape(out_channels, n, *out), 0, 1))

    def backward(dy):
        dy_rows = np.ascontiguousarray(np.swapaxes(dy, 0, 1)).reshape(groups, -1, columns.shape[1])
        # columns @ dy.T, then transposed: OpenBLAS runs this orientation about twice as
        # fast as dy @ columns.T when the inner dimension (N * P) is long
        dweight_t = _grouped_product(columns.reshape(groups, -1, columns.shape[1]), dy_rows,
                                     transpose_b=True)
        dweight = np.ascontiguousarray(
            dweight_t.reshape(groups, -1, out_channels // groups).transpose(0, 2, 1)
        ).reshape(weight.shape)
        dbias = None if bias is None else dy_rows.reshape(out_channels, -1).sum(axis=1)
        if not input_grad:
            return None, dweight, dbias
        if all(s == 1 for s in stride):
            dx_padded = _unit_stride_col2im(dy_rows.reshape(out_channels, n, *out),
                                            weight_groups, x_padded.shape, kernel, dilation)
        else:
            dcolumns = _grouped_product(weight_groups, dy_rows, transpose_a=True)
            dcolumns = dcolumns.reshape(channels, *kernel, n, *out)
            dx_padded = scatter_windows(lambda offset: dcolumns[(slice(None), *offset)],
                                        x_padded.shape, kernel, stride, dilation, out, dy.dtype)
        dx = np.ascontiguousarray(np.swapaxes(crop_padding(dx_padded, padding), 0, 1))
        return dx, dweight, dbias

    return y, backward


def _im2col(x_padded, kernel, stride, dilation, out):
    """Columns (C * K, N * P) of a (C, N, *padded) map: one strided copy per kernel offset."""
    channels, n = x_padded.shape[:2]
    columns = np.empty((channels, math.prod(kernel), n, *out), dtype=x_padded.dtype)
    for number, offset in enumerate(kernel_offsets(kernel)):
        columns[:, number] = x_padded[offset_index(offset, stride, dilation, out)]
    return columns.reshape(channels * math.prod(kernel), -1)


def _unit_stride_col2im(dy, weight_groups, padded_shape, kernel, dilation):
    """The input gradient of a stride-1 convolution, (C, N, *padded), with one add of long
    contiguous runs per kernel offset. ``dy`` (O, N, *out) is placed at its positions in the
    padded frame (zeros between rows), so every offset's window gradients form one
    contiguous stretch of each flattened (c, n) plane; the zeros add nothing."""
    out_channels, n, *out = dy.shape
    channels, padded = padded_shape[0], padded_shape[2:]
    wide = np.zeros((out_channels, n, out[0], *padded[1:]), dtype=dy.dtype)
    wide[(slice(None), slice(None), slice(None), *(slice(0, o) for o in out[1:]))] = dy
    groups = weight_groups.shape[0]
    dcolumns = _grouped_product(weight_groups, wide.reshape(groups, out_channels // groups, -1),
                                transpose_a=True).reshape(channels, -1, n, wide[0, 0].size)
    flat_strides = [math.prod(padded[i + 1:]) for i in range(len(padded))]
    length = 1 + sum((o - 1) * f for o, f in zip(out, flat_strides))
    grad = np.zeros((channels, n, math.prod(padded)), dtype=dy.dtype)
    for number, offset in enumerate(kernel_offsets(kernel)):
        start = sum(k * d * f for k, d, f in zip(offset, dilation, flat_strides))
        grad[:, :, start:start + length] += dcolumns[:, number, :, :length]
    return grad.reshape(padded_shape)


def _grouped_product(a, b, *, transpose_a=False, transpose_b=False):
    """a[g] @ b[g] for every group g (one BLAS call each) as a (rows of all groups, columns)
    matrix; a transposed operand is a view, which BLAS reads as it is."""
    if transpose_a:
        a = a.transpose(0, 2, 1)
    if transpose_b:
        b = b.transpose(0, 2, 1)
    if a.shape[0] == 1:
        return a[0] @ b[0]
    # an inner dimension of one (a depthwise input gradient) is an outer product per group,
    # which a broadcast multiply does many times faster than stacked matrix products
    product = a * b if a.shape[2] == 1 else np.matmul(a, b)
    return product.reshape(-1, product.shape[2])
