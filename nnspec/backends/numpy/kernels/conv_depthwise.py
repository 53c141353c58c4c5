"""Depthwise convolutions (one group per input channel): per-channel multiply-adds over
the stride phases of the padded map, since their matrix products would have an inner
dimension of one."""

from __future__ import annotations

import math

import numpy as np

from .windows import crop_padding, kernel_offsets, output_size, pad_spatial

_CACHE_FLOATS = 1 << 16  # 256 KiB of float32: a working set that stays in L2


def depthwise(x, weight, bias, stride, padding, dilation, input_grad):
    """A depthwise convolution (one group per input channel, ``m`` outputs each) as one
    per-channel multiply-add per kernel offset: its matrix products would have an inner
    dimension of one, which BLAS wastes its time on. Output channel ``c * m + j`` reads
    channel c, as in torch.

    The padded input is split into its stride phases (``_phases``), so every offset reads one
    phase at unit stride; with each spatial plane flattened, an offset's windows are then one
    contiguous stretch per (sample, channel), long runs for NumPy's loops. The stretch also
    covers the positions between rows, whose results are cropped away (forward) or zero
    (backward)."""
    n, channels = x.shape[:2]
    kernel = weight.shape[2:]
    multiplier = weight.shape[0] // channels
    x_padded = pad_spatial(x, padding)
    padded = x_padded.shape[2:]
    out = output_size(padded, kernel, stride, dilation)
    phases, grid = _phases(x_padded, stride)
    grid_strides = [math.prod(grid[i + 1:]) for i in range(len(grid))]
    length = 1 + sum((o - 1) * f for o, f in zip(out, grid_strides))
    wide = out[0] * grid_strides[0]  # the output's rows at the grid's row length
    reads = []  # per offset: (phase number, start of the stretch in the flattened phase)
    for offset in kernel_offsets(kernel):
        steps = [k * d for k, d in zip(offset, dilation)]
        phase = 0
        for step, s in zip(steps, stride):
            phase = phase * s + step % s
        reads.append((phase, sum(step // s * f for step, s, f in zip(steps, stride, grid_strides))))
    taps = weight.reshape(channels, multiplier, len(reads))

    def stretch(source, number):
        phase, begin = reads[number]
        return source[phase, :, :, None, begin:begin + length]  # (N, C, 1, length)

    y_wide = np.empty((n, channels, multiplier, wide), dtype=x.dtype)
    # a few samples at a time, so the sum and the product stay in the core's cache
    chunk = max(1, _CACHE_FLOATS // (channels * multiplier * length))
    product = np.empty((min(chunk, n), channels, multiplier, length), dtype=x.dtype)
    for first in range(0, n, chunk):
        rows = slice(first, first + chunk)
        y_rows = y_wide[rows, ..., :length]
        for number in range(len(reads)):
            tap = taps[:, :, number, None]
            window = stretch(phases, number)[rows]
            if number == 0:
                np.multiply(window, tap, out=y_rows)
            else:
                y_rows += np.multiply(window, tap, out=product[:len(window)])
    crop = (Ellipsis, *(slice(0, o) for o in out[1:]))
    y = np.ascontiguousarray(y_wide.reshape(n, channels * multiplier, out[0], *grid[1:])[crop])
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(out))

    def backward(dy):
        dy_wide = np.zeros((n, channels * multiplier, out[0], *grid[1:]), dtype=dy.dtype)
        dy_wide[crop] = dy
        dy_wide = dy_wide.reshape(n, channels, multiplier, wide)[..., :length]
        dweight = np.empty_like(taps)
        for number in range(len(reads)):
            dweight[:, :, number] = np.einsum("ncmp,ncmp->cm", dy_wide, stretch(phases, number))
        dweight = dweight.reshape(weight.shape)
        dbias = None if bias is None else dy.sum(axis=(0, *range(2, dy.ndim)))
        if not input_grad:
            return None, dweight, dbias
        d_phases = np.zeros(phases.shape, dtype=dy.dtype)
        for first in range(0, n, chunk):
            rows = slice(first, first + chunk)
            dy_rows = dy_wide[rows]
            for number in range(len(reads)):
                part = np.multiply(dy_rows, taps[:, :, number, None], out=product[:len(dy_rows)])
                stretch(d_phases, number)[rows, :, 0] += (part[:, :, 0] if multiplier == 1
                                                         else part.sum(axis=2))
        dx_padded = _unphase(d_phases, grid, stride, padded)
        return np.ascontiguousarray(crop_padding(dx_padded, padding)), dweight, dbias

    return y, backward


def _phases(x_padded, stride):
    """The stride phases of a padded (N, C, *padded) map, (prod(stride), N, C, prod(grid)):
    phase (r_1, ..., r_d) (row-major) holds the elements at r_i + s_i * g_i; the map is
    zero-padded up to a multiple of the stride first. Unit stride: one phase, no copy."""
    n, channels, *padded = x_padded.shape
    grid = [-(-p // s) for p, s in zip(padded, stride)]
    if all(s == 1 for s in stride):
        return x_padded.reshape(1, n, channels, -1), grid
    fitted = pad_spatial(x_padded, [(0, g * s - p) for g, s, p in zip(grid, stride, padded)])
    split = fitted.reshape(n, channels, *(d for g, s in zip(grid, stride) for d in (g, s)))
    nd = len(grid)
    order = (*(3 + 2 * i for i in range(nd)), 0, 1, *(2 + 2 * i for i in range(nd)))
    return np.ascontiguousarray(split.transpose(order)).reshape(-1, n, channels,
                                                                math.prod(grid)), grid


def _unphase(d_phases, grid, stride, padded):
    """Undo ``_phases``: the (N, C, *padded) map of gradients gathered by phase."""
    _, n, channels, _ = d_phases.shape
    nd = len(grid)
    split = d_phases.reshape(*stride, n, channels, *grid)
    order = (nd, nd + 1, *(i for d in range(nd) for i in (nd + 2 + d, d)))
    fitted = split.transpose(order).reshape(n, channels, *(g * s for g, s in zip(grid, stride)))
    return fitted[(Ellipsis, *(slice(0, p) for p in padded))]
