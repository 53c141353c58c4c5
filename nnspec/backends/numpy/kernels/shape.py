"""Moving values around: transpose, permute, slicing, stack, pad, and the matrix product.

Each kernel returns ``(out, backward)``; ``backward(d_out)`` returns one gradient per input.
Axes are array axes (the rules in ``rules.py`` turn per-sample dims into them, batch first),
so no kernel loops over samples.
"""

from __future__ import annotations

import numpy as np

from nnspec.backends.numpy.kernels.elementwise import unbroadcast


def transpose(x, *, axis0, axis1):
    """Swaps two axes; the gradient swaps them back."""

    def backward(d_out):
        return (np.swapaxes(d_out, axis0, axis1),)

    return np.swapaxes(x, axis0, axis1), backward


def permute(x, *, axes):
    """Reorders the axes; the gradient applies the inverse order."""
    inverse = tuple(np.argsort(axes))

    def backward(d_out):
        return (np.transpose(d_out, inverse),)

    return np.transpose(x, axes), backward


def matmul(a, b):
    """np.matmul (torch.matmul's rule: a 1-d operand is a row on the left, a column on the
    right, broadcast leading dims); gradients summed back over what was broadcast."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    out = np.asarray(np.matmul(a, b))

    def backward(d_out):
        d2 = d_out
        if a.ndim == 1:
            d2 = np.expand_dims(d2, -2 if b.ndim > 1 else -1)
        if b.ndim == 1:
            d2 = np.expand_dims(d2, -1)
        d_a = unbroadcast(np.matmul(d2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        d_b = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), d2), b2.shape).reshape(b.shape)
        return d_a, d_b

    return out, backward


def slice_axis(x, *, axis, start, stop, step):
    """`x[..., start:stop:step, ...]` along one axis; the gradient is zero elsewhere."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop, step)
    index = tuple(index)

    def backward(d_out):
        dx = np.zeros_like(x)
        dx[index] = d_out
        return (dx,)

    return x[index], backward


def stack(xs, *, axis):
    """Joins same-shaped arrays along a new axis; each gradient is its slice of d_out."""

    def backward(d_out):
        return tuple(np.take(d_out, i, axis=axis) for i in range(len(xs)))

    return np.stack(xs, axis=axis), backward


def pad(x, *, widths, value):
    """Constant padding, `widths` one (before, after) pair per axis; the gradient is the
    unpadded middle of d_out."""
    inner = tuple(slice(before, size + before) for (before, _), size in zip(widths, x.shape))

    def backward(d_out):
        return (d_out[inner],)

    return np.pad(x, widths, constant_values=np.asarray(value, dtype=x.dtype)), backward
