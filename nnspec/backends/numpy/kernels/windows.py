"""The window sweeps that convolution and pooling share: padding, output sizes, kernel
offsets, and the strided views and adds that read and write every window at one offset:
one strided view per kernel offset of the padded map, no Python loop over samples or
output pixels."""

from __future__ import annotations

import itertools

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


def check_spatial(name, x, nd, **attrs):
    """Reject an input without ``nd`` spatial dims, or an attribute without one entry per dim."""
    if x.ndim != nd + 2:
        raise ValueError(f"{name} expects a {nd + 2}-d input, got shape {x.shape}")
    for key, value in attrs.items():
        if isinstance(value, int) or len(value) != nd:
            raise ValueError(f"{name}: {key} needs one entry per spatial dim ({nd}), got {value!r}")
