"""Transposed convolutions: the input gradient of a convolution, run forward.

Forward is one product per group, weight^T (C_out/g * K, C_in/g) times the input columns
(C_in/g, N * P), whose columns are then added into the output frame one strided view per
kernel offset (``scatter_windows``, as a convolution's input gradient is). Backward is a
convolution with the same weight and attributes: the input gradient is the convolution of
the output gradient, and the weight gradient is that convolution's weight gradient for an
upstream gradient equal to the input. Layouts are torch's: weight [C_in, C_out/g, *kernel].
"""

from __future__ import annotations

import numpy as np

from . import fused
from .conv import conv1d, conv2d, no_samples, with_bias
from .windows import check_spatial, crop_to_batch_first, scatter_windows

CONV = {1: conv1d, 2: conv2d}


def conv_transpose1d(x, weight, bias, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, input_grad=True):
    """Transposed convolution of (N, C, L) with weight [C, out/groups, k]; backward gives
    (dx, dweight, dbias), dx None when ``input_grad`` is False."""
    return _conv_transpose(1, x, weight, bias, stride, padding, output_padding, dilation,
                           groups, input_grad)


def conv_transpose2d(x, weight, bias, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, input_grad=True):
    """Transposed convolution of (N, C, H, W) with weight [C, out/groups, kH, kW]; backward
    gives (dx, dweight, dbias), dx None when ``input_grad`` is False."""
    return _conv_transpose(2, x, weight, bias, stride, padding, output_padding, dilation,
                           groups, input_grad)


def _per_dim(value, nd: int) -> tuple[int, ...]:
    """An attribute as one int per spatial dim (torch takes an int for all of them)."""
    return (value,) * nd if isinstance(value, int) else tuple(value)


def _conv_transpose(nd, x, weight, bias, stride, padding, output_padding, dilation, groups,
                    input_grad):
    stride, padding, output_padding, dilation = (
        _per_dim(v, nd) for v in (stride, padding, output_padding, dilation))
    check_spatial(f"conv_transpose{nd}d", x, nd, stride=stride, padding=padding,
                  output_padding=output_padding, dilation=dilation)
    n, channels, *size = x.shape
    group_channels = weight.shape[1]
    kernel = weight.shape[2:]
    if weight.shape[0] != channels or channels % groups:
        raise ValueError(f"conv_transpose with {groups} groups: input has {channels} channels, "
                         f"weight {weight.shape}")
    out_channels = group_channels * groups
    full = tuple((s - 1) * st + d * (k - 1) + 1 + extra
                 for s, st, d, k, extra in zip(size, stride, dilation, kernel, output_padding))
    pads = tuple((p, p) for p in padding)
    if any(f - 2 * p < 1 for f, p in zip(full, padding)):
        raise ValueError(f"conv_transpose: padding {padding} leaves no output of {tuple(full)}")
    if n == 0:
        sizes = tuple(f - 2 * p for f, p in zip(full, padding))
        return with_bias(*no_samples(x, weight, (out_channels, *sizes)), bias)
    # columns (groups, C_out/g * K, N * P): channels first, batch second inside
    rows = np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(groups, channels // groups, -1)
    weight_groups = weight.reshape(groups, channels // groups, -1)
    columns = np.matmul(weight_groups.transpose(0, 2, 1), rows)
    columns = columns.reshape(out_channels, *kernel, n, *size)
    if kernel == stride and all(d == 1 for d in dilation) and not any(padding) and \
            not any(output_padding):
        return with_bias(*_tiling(columns, rows, weight_groups, weight.shape, x.shape, input_grad),
                         bias)
    y_full = scatter_windows(lambda offset: columns[(slice(None), *offset)],
                             (out_channels, n, *full), kernel, stride, dilation, size, x.dtype)
    y = crop_to_batch_first(y_full, pads)

    def backward(dy):
        conv = CONV[nd]
        dx_wide, conv_backward = conv(dy, weight, None, stride=stride, padding=pads,
                                      dilation=dilation, groups=groups, input_grad=False)
        # An output_padding of at least the stride (allowed below the dilation) gives the
        # convolution positions past the input: they take no part.
        inside = (slice(None), slice(None), *(slice(0, s) for s in size))
        upstream = x
        if dx_wide.shape != x.shape:
            upstream = np.zeros_like(dx_wide)
            upstream[inside] = x
        # the weight gradient of that convolution for an upstream gradient equal to x
        _, dweight, _ = conv_backward(upstream)
        return (np.ascontiguousarray(dx_wide[inside]) if input_grad else None), dweight

    return with_bias(y, backward, bias)


def _tiling(columns, rows, weight_groups, weight_shape, x_shape, input_grad):
    """A transposed convolution whose windows tile the output (kernel = stride, no padding
    or dilation: a U-Net's 2x2 up-convolution): each input position's window is its own
    block of outputs, so the columns (C_out, *K, N, *P) are the output reordered
    (``fused.spread_windows``), and backward the output gradient reordered back is the
    columns' gradient, of which the input's and the weight's are one product each (the
    frames' scatter and a convolution's forward and backward were three passes and two
    products more: 64 -> 32 channels 2x2/2 on 32x32 maps, batch 2, forward 0.66 -> 0.35 ms,
    backward 0.73 -> 0.56; torch 0.34 and 0.65)."""
    nd = len(x_shape) - 2
    out_channels, kernel = columns.shape[0], columns.shape[1:1 + nd]
    n, size = x_shape[0], x_shape[2:]
    # as 2-D: (C_out, K_1, K_2, N, P_1, P_2), 1-D with K_1 = P_1 = 1
    windows = (out_channels, *(1,) * (2 - nd), *kernel, n, *(1,) * (2 - nd), *size)
    blocks = (n, out_channels, windows[4], windows[1], windows[5], windows[2])
    y = np.empty(blocks, columns.dtype)
    fused.spread_windows(columns.reshape(windows), y)
    y = y.reshape(n, out_channels, *(p * k for p, k in zip(size, kernel)))

    def backward(dy):
        d_columns = np.empty(windows, dy.dtype)
        fused.gather_windows(np.ascontiguousarray(dy).reshape(blocks), d_columns)
        d_columns = d_columns.reshape(len(weight_groups), -1, rows.shape[-1])
        dweight = np.matmul(rows, d_columns.transpose(0, 2, 1)).reshape(weight_shape)
        if not input_grad:
            return None, dweight
        dx = np.matmul(weight_groups, d_columns).reshape(x_shape[1], n, *size)
        return np.ascontiguousarray(np.swapaxes(dx, 0, 1)), dweight

    return y, backward
