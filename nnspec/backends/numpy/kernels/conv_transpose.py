"""Transposed convolutions: the input gradient of a convolution, run forward.

Forward is one stride-1 convolution per output phase (``_on_phases``: the outputs a stride
apart take the kernel offsets that land on them), or, where those convolutions would mostly
read padding (maps of 1x1 or 2x2), one product per group, weight^T (C_out/g * K, C_in/g)
times the input columns (C_in/g, N * P), whose columns are then added into the output frame
one strided view per kernel offset (``scatter_windows``, as a convolution's input gradient
is); where the windows tile the output, the columns are the output reordered (``_tiling``).
Backward is a convolution with the same weight and attributes: the input gradient is the
convolution of the output gradient, and the weight gradient is that convolution's weight
gradient for an upstream gradient equal to the input. Layouts are torch's: weight [C_in,
C_out/g, *kernel].
"""

from __future__ import annotations

import itertools

import numpy as np

from . import fused, gemm
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
    if any(f - 2 * p < 1 for f, p in zip(full, padding)):
        raise ValueError(f"conv_transpose: padding {padding} leaves no output of {tuple(full)}")
    out_size = tuple(f - 2 * p for f, p in zip(full, padding))
    if n == 0:
        return with_bias(*no_samples(x, weight, (out_channels, *out_size)), bias)
    if kernel == stride and all(d == 1 for d in dilation) and not any(padding) and \
            not any(output_padding):
        rows, weight_groups = _rows(x, weight, groups)
        return with_bias(*_tiling(_columns(rows, weight_groups, kernel, x.shape), rows,
                                  weight_groups, weight.shape, x.shape, input_grad), bias)
    phases = [_phase_taps(*dims) for dims in zip(size, out_size, kernel, stride, padding,
                                                  dilation)]
    if _phases_pay(phases, size, kernel, stride, padding, dilation):
        y = _on_phases(x, weight, stride, groups, phases, out_size)
    else:
        columns = _columns(*_rows(x, weight, groups), kernel, x.shape)
        y_full = scatter_windows(lambda offset: columns[(slice(None), *offset)],
                                 (out_channels, n, *full), kernel, stride, dilation, size,
                                 x.dtype)
        y = crop_to_batch_first(y_full, tuple((p, p) for p in padding))
    return with_bias(y, _as_convolution_backward(x, weight, stride, padding, dilation, groups,
                                                 input_grad), bias)


def _rows(x, weight, groups):
    """The input's rows (groups, C_in/g, N * P), channels first and batch second inside,
    and the weight's (groups, C_in/g, C_out/g * K)."""
    channels = x.shape[1]
    rows = np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(groups, channels // groups, -1)
    return rows, weight.reshape(groups, channels // groups, -1)


def _columns(rows, weight_groups, kernel, x_shape):
    """Each input position's window of outputs, (C_out, *K, N, *P), one product per group."""
    if len(rows) == 1:  # the register tiles where they pay
        columns = gemm.matmul(weight_groups[0].T, rows[0])
    else:
        columns = np.matmul(weight_groups.transpose(0, 2, 1), rows)
    return columns.reshape(-1, *kernel, x_shape[0], *x_shape[2:])


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


def _phase_taps(size, out_size, kernel, stride, padding, dilation):
    """One spatial dim of ``_on_phases``: for each output phase r (the positions q s + r),
    the kernel offsets whose products land there, in the order a stride-1 convolution of
    the input reads them, that convolution's dilation and padding (lo, hi), the input's
    crop (lo, hi) where a padding would be negative, and the phase's positions.

    Offset k of input i reaches output i s + k d - p, so phase r takes the offsets with
    (r + p - k d) divisible by s, reading input q + m_k, m_k = (r + p - k d) / s: the
    offsets by m ascending (k descending), spaced d / gcd(s, d) apart in m."""
    phases = []
    for r in range(stride):
        count = len(range(r, out_size, stride))
        offsets = sorted((k for k in range(kernel) if (r + padding - k * dilation) % stride == 0),
                         reverse=True)
        if not count or not offsets:
            phases.append((tuple(offsets), 1, (0, 0), (0, 0), count))
            continue
        shifts = [(r + padding - k * dilation) // stride for k in offsets]
        step = shifts[1] - shifts[0] if len(shifts) > 1 else 1
        reach = step * (len(shifts) - 1)
        lo = -shifts[0]
        crop_lo = max(0, -lo)
        lo = max(0, lo)
        hi = count - (size - crop_lo) - lo + reach
        crop_hi = max(0, -hi)
        phases.append((tuple(offsets), step, (lo, max(0, hi)), (crop_lo, crop_hi), count))
    return phases


# the least share of the phases' products that read the input (not their padding) for
# which they pay, measured forward at batch 32 against the columns (their product on the
# tiles): 100 -> 512 channels 4x4 from 1x1 (a DCGAN's first layer, share 0.06) 6.2 ms against
# 0.6; 4x4/2 512 -> 256 from 2x2 (0.56) 7.6 against 4.7, from 4x4 (0.77) 10.4-13.2 against
# 11.2-11.4, 128 -> 128 from 7x7 (0.86) 3.7 against 8.0, 128 -> 64 from 16x16 7.0 against 51
PHASES_MIN_SHARE = 0.7


def _phases_pay(phases, size, kernel, stride, padding, dilation):
    """Whether at least PHASES_MIN_SHARE of the phases' products read the input, not their
    padding: per dim, the phases compute count * offsets products a phase, of which those
    of an input position and offset whose output is inside the map read the input."""
    computed = inside = 1
    for dim_phases, length, k, s, p, d in zip(phases, size, kernel, stride, padding, dilation):
        out_size = sum(count for *_, count in dim_phases)
        computed *= sum(count * len(offsets) for offsets, *_, count in dim_phases)
        inside *= sum(0 <= i * s + j * d - p < out_size for i in range(length) for j in range(k))
    return inside >= PHASES_MIN_SHARE * computed


def _on_phases(x, weight, stride, groups, phases, out_size):
    """A transposed convolution's output as one stride-1 convolution per output phase (the
    positions a stride apart), each over the whole input with the kernel offsets that land
    on its phase (``_phase_taps``, per dim), written into the output a stride apart: a
    4x4/2 layer (a DCGAN generator's) takes four 2x2 convolutions that keep the input's
    size, the tiles' fastest route. The columns' product and the scatter of their windows
    had run on NumPy's BLAS and written the output sixteen times: 256 -> 128 channels from
    8x8 to 16x16, batch 32, 21.8 -> 7.4 ms (torch 6.0); 3x3/2 128 -> 64 onto 64x64, batch 8,
    11.9 -> 4.1 (8.7); a 3x3 stride-1 one, 64 channels on 16x16, batch 16, 3.8 -> 0.8."""
    nd = x.ndim - 2
    n = len(x)
    out_channels = weight.shape[1] * groups
    y = np.empty((n, out_channels, *out_size), x.dtype)
    for phase in itertools.product(*(range(s) for s in stride)):
        taps = [phases[d][r] for d, r in enumerate(phase)]
        where = (slice(None), slice(None), *(slice(r, None, s) for r, s in zip(phase, stride)))
        if any(count == 0 for *_, count in taps):
            continue
        if any(not offsets for offsets, *_ in taps):  # no offset lands here: only the bias
            y[where] = 0
            continue
        crop = (slice(None), slice(None), *(slice(lo, length - hi) for (*_, (lo, hi), _), length
                                            in zip(taps, x.shape[2:])))
        phase_weight = _phase_weight(weight, groups, [offsets for offsets, *_ in taps])
        y_phase, _ = CONV[nd](x[crop], phase_weight, None, stride=(1,) * nd,
                              padding=tuple(pads for _, _, pads, _, _ in taps),
                              dilation=tuple(step for _, step, *_ in taps), groups=groups,
                              input_grad=False)
        y[where] = y_phase
    return y


def _phase_weight(weight, groups, offsets):
    """A phase's convolution weight, C-ordered [C_out, C_in / g, *its offsets]: one blocked
    compiled gather from the transposed weight in float32 with one group
    (``fused.gather_taps``), else NumPy's index of the convolution's layout."""
    channels, group_outputs, *kernel = weight.shape
    if groups > 1 or weight.dtype != np.float32:
        conv_weight = weight.reshape(groups, channels // groups, group_outputs, *kernel) \
            .swapaxes(1, 2).reshape(group_outputs * groups, channels // groups, *kernel)
        return np.ascontiguousarray(conv_weight[(slice(None), slice(None), *np.ix_(*offsets))])
    taps = np.ravel_multi_index(np.ix_(*offsets), kernel).reshape(-1).astype(np.int64)
    out = np.empty((weight.shape[1], weight.shape[0], *(len(o) for o in offsets)), np.float32)
    fused.gather_taps(np.ascontiguousarray(weight).reshape(*weight.shape[:2], -1), taps,
                      out.reshape(*out.shape[:2], -1))
    return out


def _as_convolution_backward(x, weight, stride, padding, dilation, groups, input_grad):
    """The backward of a transposed convolution as the convolution it transposes: the input
    gradient is the convolution of the output gradient, and the weight gradient is that
    convolution's weight gradient for an upstream gradient equal to the input. (On the
    phases, four 4x4/2 layers' backward measured 0.9-1.3x this one's time, 3.5x with
    three outputs.)"""
    size = x.shape[2:]
    pads = tuple((p, p) for p in padding)

    def backward(dy):
        dx_wide, conv_backward = CONV[x.ndim - 2](dy, weight, None, stride=stride,
                                                  padding=pads, dilation=dilation,
                                                  groups=groups, input_grad=False)
        # An output_padding of at least the stride (allowed below the dilation) gives the
        # convolution positions past the input: they take no part.
        inside = (slice(None), slice(None), *(slice(0, s) for s in size))
        upstream = x
        if dx_wide.shape != x.shape:
            upstream = np.zeros_like(dx_wide)
            upstream[inside] = x
        _, dweight, _ = conv_backward(upstream)
        return (np.ascontiguousarray(dx_wide[inside]) if input_grad else None), dweight

    return backward
