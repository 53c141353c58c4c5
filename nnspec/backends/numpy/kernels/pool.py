"""Max, average and adaptive pooling over (N, C, L) and (N, C, H, W), torch's semantics.

``kernel`` and ``stride`` are tuples per spatial dim and ``padding`` is explicit (lo, hi) pairs,
as for the convolutions. Max pooling pads with -inf and routes each gradient to the first
maximum of its window. Average pooling divides by the window's size, padded zeros included
(torch's count_include_pad=True) or only the input's own positions (False). With
``ceil_mode`` a last, partial window counts when it starts inside the input or its left
padding: the input is padded further on the high side, and that padding never counts.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import avg_pool, max_pool
from .windows import (
    check_spatial,
    crop_padding,
    gather_from_phases,
    kernel_offsets,
    offset_index,
    output_size,
    pad_into_phases,
    pad_spatial,
    padded_output_size,
    phase_reads,
    scatter_windows,
)


def max_pool1d(x, *, kernel, stride, padding, ceil_mode=False):
    """Max over each window of (N, C, L); backward gives (dx,)."""
    check_spatial("max_pool1d", x, 1, kernel=kernel, stride=stride, padding=padding)
    return _max_pool(x, kernel, stride, padding, ceil_mode)


def max_pool2d(x, *, kernel, stride, padding, ceil_mode=False):
    """Max over each window of (N, C, H, W); backward gives (dx,)."""
    check_spatial("max_pool2d", x, 2, kernel=kernel, stride=stride, padding=padding)
    return _max_pool(x, kernel, stride, padding, ceil_mode)


def avg_pool1d(x, *, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    """Mean over each window of (N, C, L); backward gives (dx,)."""
    check_spatial("avg_pool1d", x, 1, kernel=kernel, stride=stride, padding=padding)
    return _avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad)


def avg_pool2d(x, *, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    """Mean over each window of (N, C, H, W); backward gives (dx,)."""
    check_spatial("avg_pool2d", x, 2, kernel=kernel, stride=stride, padding=padding)
    return _avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad)


def adaptive_avg_pool1d(x, *, output_size):
    """Average (N, C, L) into ``output_size`` = (oL,) or oL bins; backward gives (dx,)."""
    check_spatial("adaptive_avg_pool1d", x, 1)
    return _adaptive_avg_pool(x, output_size)


def adaptive_avg_pool2d(x, *, output_size):
    """Average (N, C, H, W) into ``output_size`` = (oH, oW) bins (an int for both); backward
    gives (dx,). Global average pooling is output_size 1."""
    check_spatial("adaptive_avg_pool2d", x, 2)
    return _adaptive_avg_pool(x, output_size)


def adaptive_max_pool1d(x, *, output_size):
    """Max of (N, C, L) over ``output_size`` bins; backward gives (dx,)."""
    check_spatial("adaptive_max_pool1d", x, 1)
    return _adaptive_max_pool(x, output_size)


def adaptive_max_pool2d(x, *, output_size):
    """Max of (N, C, H, W) over ``output_size`` = (oH, oW) bins; backward gives (dx,)."""
    check_spatial("adaptive_max_pool2d", x, 2)
    return _adaptive_max_pool(x, output_size)


def _ceil_padding(size, kernel, stride, padding, ceil_mode):
    """(lo, hi) padding per spatial dim with the high side grown so that ceil_mode's last
    window fits (torch's output length rule)."""
    pads = []
    for length, k, s, (lo, hi) in zip(size, kernel, stride, padding):
        extra = 0
        if ceil_mode:
            out = (length + lo + hi - k + s - 1) // s + 1
            if (out - 1) * s >= length + lo:
                out -= 1
            extra = max(0, (out - 1) * s + k - (length + lo + hi))
        pads.append((lo, hi + extra))
    return tuple(pads)


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
    """(bins, length) averaging matrix over torch's bins (``_bin_edges``)."""
    matrix = np.zeros((bins, length), dtype=dtype)
    for i, (start, end) in enumerate(zip(*_bin_edges(length, bins))):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _bin_edges(length, bins):
    """torch's adaptive bins of ``length`` positions: (2, bins) int64, bin i's [floor(i * L
    / n), ceil((i + 1) * L / n))."""
    starts = (np.arange(bins) * length) // bins
    return np.stack([starts, -((-np.arange(1, bins + 1) * length) // bins)])


def _max_pool(x, kernel, stride, padding, ceil_mode):
    """Running maximum over the kernel offsets; backward finds each window's first maximum."""
    unit = (1,) * len(kernel)
    padding = _ceil_padding(x.shape[2:], kernel, stride, padding, ceil_mode)
    if max_pool.applies(x, padding, kernel):
        return max_pool.max_pool(x, kernel, stride, padding,
                                 padded_output_size(x.shape[2:], padding, kernel, stride, unit))
    if any(k > s for k, s in zip(kernel, stride)):
        return _overlapping_max_pool(x, kernel, stride, padding)
    x_padded = pad_spatial(x, padding, value=-np.inf)
    out = output_size(x_padded.shape[2:], kernel, stride, unit)
    offsets = kernel_offsets(kernel)
    y = x_padded[offset_index(offsets[0], stride, unit, out)].copy()
    for offset in offsets[1:]:
        np.maximum(y, x_padded[offset_index(offset, stride, unit, out)], out=y)

    # windows that do not overlap (kernel <= stride, as in the usual 2x2 stride 2) each own
    # their inputs, so the gradient is written into place rather than added up; when they
    # also cover the whole padded input nothing needs zeros first (LeNet's 6x28x28 pool at
    # batch 64: 0.76 -> 0.58 ms, the U-Net's 16x64x64 one at batch 32: 6.7 -> 3.8 ms)
    covered = all(k == s and o * s == size for k, s, o, size in
                  zip(kernel, stride, out, x_padded.shape[2:]))

    def backward(dy):
        claimed = np.zeros(y.shape, dtype=bool)
        dx_padded = (np.empty if covered else np.zeros)(x_padded.shape, dtype=x.dtype)
        for offset in offsets:
            index = offset_index(offset, stride, unit, out)
            np.multiply(dy, _first_maxima(x_padded[index], y, claimed), out=dx_padded[index])
        return (crop_padding(dx_padded, padding),)

    return y, backward


def _first_maxima(candidates, maxima, claimed):
    """Where ``candidates`` (one kernel offset of every window) hold their window's maximum
    and no earlier offset did: scanning offsets in torch's order, the first element equal to
    the maximum wins the window's gradient. Updates ``claimed``."""
    wins = np.equal(candidates, maxima)
    np.greater(wins, claimed, out=wins)  # and not claimed by an earlier offset
    claimed |= wins
    return wins


def _overlapping_max_pool(x, kernel, stride, padding):
    """Max pooling whose windows overlap (a ResNet stem's 3x3 stride 2), over the input's
    stride phases (``pad_into_phases``, padded with -inf), every (sample, channel) plane of a
    phase one after another: each kernel offset reads one slice of a phase at unit stride,
    across all planes at once, and the positions between the outputs (the grid's last rows
    and columns) are computed and dropped, as in the column-free convolution. With the
    strided views of the disjoint path, a 32x32x32x32 input's 3x3 stride-2 pool took 4.4 ms
    forward and 13.2 backward inside a training step (torch: 4.0 and 1.2); this takes 3.5
    and 7.6, and 162 -> 107 ms forward and backward at 32x64x56x56 (a ResNet stem's). The
    stride-2 copies into and out of the phases are most of what is left."""
    unit = (1,) * len(kernel)
    out = padded_output_size(x.shape[2:], padding, kernel, stride, unit)
    phases, grid = pad_into_phases(x, padding, stride, value=-np.inf)
    flat = phases.reshape(len(phases), -1)
    reads = phase_reads(kernel, stride, unit, grid)
    planes, cells = x.shape[0] * x.shape[1], math.prod(grid)
    # one past the last output's cell: every output lies before it, and every read inside
    length = (planes - 1) * cells + 1 + sum(
        (o - 1) * math.prod(grid[i + 1:]) for i, o in enumerate(out))
    on_grid = np.empty(planes * cells, x.dtype)  # the maxima at every cell of the grid
    maxima = on_grid[:length]
    phase, first = reads[0]
    np.copyto(maxima, flat[phase, first:first + length])
    for phase, first in reads[1:]:
        np.maximum(maxima, flat[phase, first:first + length], out=maxima)
    grid_view = on_grid.reshape(*x.shape[:2], *grid)
    valid = (slice(None), slice(None), *(slice(0, o) for o in out))
    y = np.ascontiguousarray(grid_view[valid])
    # the cells between the outputs never win a gradient
    on_grid[length:] = np.nan
    for axis, o in enumerate(out):
        grid_view[(slice(None), slice(None), *(slice(None),) * axis, slice(o, None))] = np.nan

    def backward(dy):
        dy_on_grid = np.zeros(on_grid.shape, dy.dtype)
        dy_on_grid.reshape(grid_view.shape)[valid] = dy
        dy_on_grid = dy_on_grid[:length]
        claimed = np.zeros(length, dtype=bool)
        d_flat = np.zeros_like(flat)
        share = np.empty_like(dy_on_grid)
        for phase, first in reads:
            window = slice(first, first + length)
            np.multiply(dy_on_grid, _first_maxima(flat[phase, window], maxima, claimed),
                        out=share)
            d_flat[phase, window] += share
        return (gather_from_phases(d_flat.reshape(phases.shape), padding, stride,
                                   np.empty_like(x)),)

    return y, backward


def _avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad):
    """In float32 the compiled loops' sums (``avg_pool``); else (float64, the gradient
    checks) the sum of the strided views at every kernel offset; divided by each window's
    count."""
    unit = (1,) * len(kernel)
    size = x.shape[2:]
    grown = _ceil_padding(size, kernel, stride, padding, ceil_mode)
    out = padded_output_size(size, grown, kernel, stride, unit)
    if grown == padding and count_include_pad:
        scale = np.asarray(1.0 / math.prod(kernel), dtype=x.dtype)
    else:
        scale = _inverse_counts(size, kernel, stride, padding, out, count_include_pad, x.dtype)
    if avg_pool.applies(x):
        return avg_pool.avg_pool(x, [_window_edges(length, k, s, lo, n) for length, k, s, (lo, _),
                                     n in zip(size, kernel, stride, grown, out)], scale)
    x_padded = pad_spatial(x, grown)
    offsets = kernel_offsets(kernel)
    y = x_padded[offset_index(offsets[0], stride, unit, out)].copy()
    for offset in offsets[1:]:
        y += x_padded[offset_index(offset, stride, unit, out)]
    y *= scale

    def backward(dy):
        share = dy * scale
        dx_padded = scatter_windows(
            lambda offset: share, x_padded.shape, kernel, stride, unit, out, x.dtype
        )
        return (crop_padding(dx_padded, grown),)

    return y, backward


def _window_edges(length, kernel, stride, low, windows):
    """(2, windows) int64: each window's [start, end) inside the input of ``length``
    positions, the input padded by ``low`` before it."""
    starts = np.arange(windows) * stride - low
    return np.stack([np.maximum(starts, 0), np.minimum(starts + kernel, length)])


def _inverse_counts(size, kernel, stride, padding, out, count_include_pad, dtype):
    """1 / the divisor of every window, (*out): per spatial dim the window clipped to the
    padded input (torch's count_include_pad) or to the input itself, then the outer product
    (windows are boxes, so counts multiply)."""
    counts = np.ones((), dtype=np.float64)
    for length, k, s, (lo, hi), n in zip(size, kernel, stride, padding, out):
        start = np.arange(n) * s - lo
        if count_include_pad:
            count = np.minimum(start + k, length + hi) - start
        else:
            count = np.minimum(start + k, length) - np.maximum(start, 0)
        counts = np.multiply.outer(counts, count)
    return (1.0 / counts).astype(dtype)


def _adaptive_max_pool(x, output_size):
    """Bins that divide the map are max pooling's windows; others, in float32, the compiled
    loops' (``max_pool.adaptive_max_pool``). Else (float64, the gradient checks) every bin
    gathered as a (…, bins, width) block: a bin narrower than the widest repeats its last
    position (the maximum and the first maximum stay the same), so one fancy index per
    spatial dim reads every window; the gradient goes back by ``np.bincount``."""
    spatial = x.shape[2:]
    if isinstance(output_size, int):
        output_size = (output_size,) * len(spatial)
    if len(output_size) != len(spatial):
        raise ValueError(f"output_size {tuple(output_size)} does not match input shape {x.shape}")
    if all(length % bins == 0 for length, bins in zip(spatial, output_size)):
        # bins of one width, a stride apart: max pooling (32x32 maps into 4x4 bins, 32 x 64
        # of them: 22 ms gathered as below, torch 1.4)
        kernel = tuple(length // bins for length, bins in zip(spatial, output_size))
        return _max_pool(x, kernel, kernel, ((0, 0),) * len(kernel), False)
    edges = [_bin_edges(length, bins) for length, bins in zip(spatial, output_size)]
    if x.dtype == np.float32:
        return max_pool.adaptive_max_pool(x, edges)
    nd = len(spatial)
    index = []  # per dim: (bins, width) positions, laid out for broadcasting across dims
    for axis, (starts, ends) in enumerate(edges):
        bins = len(starts)
        width = int((ends - starts).max())
        positions = np.minimum(starts[:, None] + np.arange(width), ends[:, None] - 1)
        shape = [1] * (2 * nd)
        shape[2 * axis], shape[2 * axis + 1] = bins, width
        index.append(positions.reshape(shape))
    # flat position of every window element within one (n, c) plane, (oH, kH, oW, kW)
    flat = functools.reduce(lambda acc, pair: acc * pair[0] + pair[1],
                            zip(spatial[1:], index[1:]), index[0])
    planes = x.reshape(-1, int(np.prod(spatial)))
    window_order = [2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)]
    flat = flat.transpose(window_order).reshape(*output_size, -1)  # (*out, window) row-major
    windows = planes[:, flat]  # (N*C, *out, window)
    first_max = windows.argmax(axis=-1)
    chosen = np.take_along_axis(flat[None], first_max[..., None], axis=-1)[..., 0]
    y = np.take_along_axis(windows, first_max[..., None], axis=-1)[..., 0]
    y = y.reshape(*x.shape[:2], *output_size)

    def backward(dy):
        plane = planes.shape[1]
        targets = (chosen + plane * np.arange(planes.shape[0]).reshape(
            (-1,) + (1,) * nd)).ravel()
        dx = np.bincount(targets, weights=dy.ravel(), minlength=planes.size)
        return (dx.astype(x.dtype).reshape(x.shape),)

    return y, backward
