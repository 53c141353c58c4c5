"""The window sweeps that convolution and pooling share: padding, output sizes, kernel
offsets, and the strided views and adds that read and write every window at one offset:
one strided view per kernel offset of the padded map, no Python loop over samples or
output pixels."""

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


def crop_to_batch_first(padded, padding):
    """The interior of a channels-first (C, N, *padded) map as a contiguous (N, C, *spatial)
    array, in one copy (cropping first, then transposing, were two)."""
    index = (slice(None), slice(None)) + tuple(
        slice(lo, size - hi) for (lo, hi), size in zip(padding, padded.shape[2:]))
    return np.ascontiguousarray(np.swapaxes(padded[index], 0, 1))


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


def padded_output_size(spatial, padding, kernel, stride, dilation):
    """``output_size`` of a sweep over ``spatial`` padded by (lo, hi) pairs."""
    return output_size([size + lo + hi for size, (lo, hi) in zip(spatial, padding)], kernel,
                       stride, dilation)


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


def pad_into_phases(x, padding, stride, value=0.0):
    """The stride phases of a (A, B, *spatial) map padded by (lo, hi) pairs, in one copy:
    (prod(stride), A, B, *grid), phase (r_1, ..., r_d) (row-major) holding the padded map's
    elements at r_i + s_i * g_i (``value`` where that is padding or past the padded end). A
    window's element at a kernel offset then reads one phase at unit stride."""
    a, b, *spatial = x.shape
    padded = [size + lo + hi for size, (lo, hi) in zip(spatial, padding)]
    grid = [-(-p // s) for p, s in zip(padded, stride)]
    phases = np.full((math.prod(stride), a, b, *grid), value, dtype=x.dtype)
    for number, (phase, source) in enumerate(phase_regions(spatial, padding, stride)):
        phases[(number, Ellipsis, *phase)] = x[(Ellipsis, *source)]
    return phases, grid


def phase_reads(kernel, stride, dilation, grid):
    """Per kernel offset (row-major), the stride phase its elements lie in and its first
    cell in that phase's flattened ``grid``: offset k of the window at output position o
    reads phase (k * d) % s at cell o + (k * d) // s, per dim."""
    grid_strides = [math.prod(grid[i + 1:]) for i in range(len(grid))]
    reads = []
    for offset in kernel_offsets(kernel):
        steps = [k * d for k, d in zip(offset, dilation)]
        phase = 0
        for step, s in zip(steps, stride):
            phase = phase * s + step % s
        reads.append((phase, sum(step // s * g for step, s, g in zip(steps, stride, grid_strides))))
    return reads


def gather_from_phases(d_phases, padding, stride, out):
    """Undo ``pad_into_phases``: write the unpadded interior of gradients held by phase into
    ``out``, a (possibly strided) (A, B, *spatial) view, one strided copy per phase."""
    for number, (phase, target) in enumerate(phase_regions(out.shape[2:], padding, stride)):
        out[(Ellipsis, *target)] = d_phases[(number, Ellipsis, *phase)]
    return out


def phase_regions(spatial, padding, stride):
    """Per phase (row-major), the slices of its grid and of the unpadded map that hold the
    same elements: padded position r + s * j is map position r + s * j - lo."""
    per_dim = []
    for size, (lo, _), s in zip(spatial, padding, stride):
        regions = []
        for r in range(s):
            first = max(0, -(-(lo - r) // s))
            last = (size - 1 + lo - r) // s
            count = max(0, last - first + 1)
            start = r + s * first - lo
            regions.append((slice(first, first + count),
                            slice(start, start + s * (count - 1) + 1 if count else start, s)))
        per_dim.append(regions)
    for combination in itertools.product(*per_dim):
        yield tuple(c[0] for c in combination), tuple(c[1] for c in combination)


def check_spatial(name, x, nd, **attrs):
    """Reject an input without ``nd`` spatial dims, or an attribute without one entry per dim."""
    if x.ndim != nd + 2:
        raise ValueError(f"{name} expects a {nd + 2}-d input, got shape {x.shape}")
    for key, value in attrs.items():
        if isinstance(value, int) or len(value) != nd:
            raise ValueError(f"{name}: {key} needs one entry per spatial dim ({nd}), got {value!r}")
