"""Broadcasting arithmetic, comparisons, reductions and concat: the ops user-written fns and
merges are made of, with torch's gradient conventions.

Each kernel returns ``(out, backward)``; ``backward(d_out)`` returns one gradient per operand.
An operand gets ``None`` when it is not a float array: Python numbers (constants in a spec),
boolean masks and integer arrays. A gradient is summed back to its operand's shape when the
operand was broadcast, and may share memory with ``d_out`` or another gradient (``add`` passes
``d_out`` to both sides), so callers must not modify gradients in place.

``abs``, ``pow``, ``sum`` and ``max`` shadow Python builtins on purpose: every kernel is named
after its op in the catalogue. This module therefore never calls those builtins itself.
"""

from __future__ import annotations

import math

import numpy as np

from . import activations, fused, parallel


def _differentiable(operand):
    return isinstance(operand, np.ndarray) and operand.dtype.kind == "f"


def _float_dtype(*operands):
    """The float dtype an op computes in: its float array operands', else float32."""
    dtypes = [o.dtype for o in operands if _differentiable(o)]
    return np.result_type(*dtypes) if dtypes else np.dtype(np.float32)


def _as_arrays(*operands):
    """Operands as arrays; Python numbers become 0-d arrays of the op's float dtype, so that
    NumPy's scalar rules never widen float32 to float64."""
    dtype = _float_dtype(*operands)
    return tuple(o if isinstance(o, np.ndarray) else np.asarray(o, dtype=dtype) for o in operands)


def unbroadcast(grad, shape):
    """Sums a gradient over the axes along which an operand of ``shape`` was broadcast."""
    if grad.shape == tuple(shape):
        return grad
    leading = grad.ndim - len(shape)
    stretched = tuple(
        leading + i for i, size in enumerate(shape) if size == 1 and grad.shape[leading + i] != 1
    )
    return grad.sum(axis=tuple(range(leading)) + stretched).reshape(shape)


def _grad_for(operand, grad):
    """The gradient an operand receives: None if not differentiable, else un-broadcast."""
    return unbroadcast(grad, operand.shape) if _differentiable(operand) else None


def _grad_shape(operand):
    """What the backward of a sum needs of an operand: its shape when it gets a gradient
    (None when not), so the closure does not keep the operand's values alive."""
    return operand.shape if _differentiable(operand) else None


def _grad_to(shape, grad):
    return None if shape is None else unbroadcast(grad, shape)


# ---- binary arithmetic ------------------------------------------------------------------------


def add(a, b):
    out = sum_of(*_as_arrays(a, b))
    shape_a, shape_b = _grad_shape(a), _grad_shape(b)

    def backward(d_out):
        return _grad_to(shape_a, d_out), _grad_to(shape_b, d_out)

    return out, backward


def sum_of(a, b):
    """a + b of two arrays: a large float32 pair of one shape on both cores (a
    transformer's residual joins, and the gradients summed where a value feeds two ops:
    32 x 64 x 128 values 0.085 -> 0.030 ms), where NumPy's add runs on one."""
    if a.shape == b.shape and a.size >= parallel.MEMORY_MIN_VALUES and all(
            o.dtype == np.float32 and o.flags.c_contiguous for o in (a, b)):
        out = np.empty_like(a)
        parallel.add(a.reshape(-1), b.reshape(-1), out.reshape(-1))
        return out
    return np.add(a, b)


def add_relu(a, b):
    """relu(a + b): a residual join whose sum only a relu reads, which the interpreter runs
    as one op (the sum is never stored, and the relu keeps no mask: its output is the
    mask). Same-shape float32 operands take one compiled pass each way on both cores (a
    ResNet's joins and relus, 32/64/128 channels at batch 32: 9.0 -> 3.2 ms a step); others the two kernels in turn."""
    a, b = _as_arrays(a, b)
    shape_a, shape_b = _grad_shape(a), _grad_shape(b)
    if a.shape != b.shape or not all(o.dtype == np.float32 and o.flags.c_contiguous
                                     for o in (a, b)):
        total, total_backward = add(a, b)
        out, relu_backward = activations.relu(total)

        def composed_backward(d_out):
            return total_backward(*relu_backward(d_out))

        return out, composed_backward
    out = np.empty_like(a)
    parallel.add_relu(a.reshape(-1), b.reshape(-1), out.reshape(-1))

    def backward(d_out):
        d_in = np.empty_like(out)
        parallel.relu_gradient(np.ascontiguousarray(d_out, np.float32).reshape(-1),
                               out.reshape(-1), d_in.reshape(-1))
        return _grad_to(shape_a, d_in), _grad_to(shape_b, d_in)

    return out, backward


def sub(a, b):
    out = np.subtract(*_as_arrays(a, b))
    shape_a, shape_b = _grad_shape(a), _grad_shape(b)

    def backward(d_out):
        d_b = None if shape_b is None else unbroadcast(-d_out, shape_b)
        return _grad_to(shape_a, d_out), d_b

    return out, backward


def mul(a, b):
    out = np.multiply(*_as_arrays(a, b))

    def backward(d_out):
        d_a = _product_grad(d_out, b, a) if _differentiable(a) else None
        d_b = _product_grad(d_out, a, b) if _differentiable(b) else None
        return d_a, d_b

    return out, backward


def _product_grad(d_out, other, operand):
    """``operand``'s gradient in a product with ``other``: d_out * other summed back to its
    shape. An operand of a full-shaped ``other`` broadcast along trailing axes (an SE gate's
    (N, C, 1, 1), a per-channel scale) takes dot products of d_out's and other's rows, not
    a full-size product then its sums (32 x 64 x 32 x 32: 0.70 -> 0.25 ms)."""
    shape = operand.shape
    if shape == d_out.shape:
        return d_out * other
    padded = (1,) * (d_out.ndim - len(shape)) + shape
    kept = len(padded)
    while kept and padded[kept - 1] == 1:
        kept -= 1
    if other.shape != d_out.shape or kept == len(padded) or d_out.dtype != other.dtype:
        return unbroadcast(d_out * other, shape)
    rows = math.prod(d_out.shape[:kept])
    dots = np.matmul(np.ascontiguousarray(d_out).reshape(rows, 1, -1),
                     np.ascontiguousarray(other).reshape(rows, -1, 1))
    return unbroadcast(dots.reshape(d_out.shape[:kept]), padded[:kept]).reshape(shape)


def silu_mul(a, b):
    """silu(a) * b: a gated feed-forward (SwiGLU: LLaMA's ``silu(gate_proj(x)) *
    up_proj(x)``), which the interpreter runs as one op when only the product reads the
    silu. Same-shape float32 operands take one compiled pass each way on both cores, the
    silu never stored (a mini-LLaMA layer's silu, product and their gradients: 4.0 -> 1.5
    ms); others the two kernels in turn."""
    a, b = _as_arrays(a, b)
    if a.shape != b.shape or not all(o.dtype == np.float32 and o.flags.c_contiguous
                                     for o in (a, b)):
        gate, gate_backward = activations.silu(a)
        out, product_backward = mul(gate, b)

        def composed_backward(d_out):
            d_gate, d_b = product_backward(d_out)
            return gate_backward(d_gate)[0], d_b

        return out, composed_backward
    out = np.empty_like(a)
    parallel.silu_mul(a.reshape(-1), b.reshape(-1), out.reshape(-1))

    def backward(d_out):
        d_a, d_b = np.empty_like(a), np.empty_like(b)
        parallel.silu_mul_gradient(np.ascontiguousarray(d_out, np.float32).reshape(-1),
                                   a.reshape(-1), b.reshape(-1), d_a.reshape(-1),
                                   d_b.reshape(-1))
        return d_a, d_b

    return out, backward


def div(a, b):
    array_a, array_b = _as_arrays(a, b)
    out = np.divide(array_a, array_b)

    def backward(d_out):
        d_numerator = d_out / array_b
        d_b = _grad_for(b, -(d_numerator * out)) if _differentiable(b) else None
        return _grad_for(a, d_numerator), d_b

    return out, backward


def pow(a, b):
    """a ** b with torch's gradients: zero base-gradient where b == 0, and zero exponent-gradient
    where a == 0 and b >= 0 (where log(a) would give 0 * -inf)."""
    array_a, array_b = _as_arrays(a, b)
    out = _power(array_a, array_b)

    def backward(d_out):
        d_a = d_b = None
        if _differentiable(a):
            # b * a^(b - 1) with b = 0 rewritten as 0 * a^0, so 0^-1 is never formed.
            slope = array_b * _power(array_a, np.where(array_b == 0, 1, array_b) - 1)
            d_a = _grad_for(a, d_out * slope)
        if _differentiable(b):
            with np.errstate(divide="ignore", invalid="ignore"):  # torch's -inf/nan for a <= 0
                slope = out * np.log(array_a)
            slope = np.where((array_a == 0) & (array_b >= 0), 0, slope)
            d_b = _grad_for(b, d_out * slope)
        return d_a, d_b

    return out, backward


# the scalar exponents taken by products: integers up to this size, and +-0.5 by a square
# root, as torch's kernel takes 2, 3, 0.5, -0.5, -1 and -2 (C's pow differs from a root or
# product only at infinities and signed zeros for the other halves: those keep np.power).
# The C library's powf took 40-70 ns a value for x ** 3 of float32 values of either sign
# (70 ms for 2^20 of them, x * x * x 0.5 ms)
_PRODUCT_MAX_EXPONENT = 4


def _power(base, exponent):
    """np.power(base, exponent), by products where the exponent is one number: an integer
    of at most _PRODUCT_MAX_EXPONENT in size, or +-0.5."""
    if exponent.ndim != 0 or base.dtype.kind != "f":
        return np.power(base, exponent)
    value = float(exponent)
    if value in (0.5, -0.5):
        out = np.sqrt(base)  # NaN for a negative base, as powf gives
    elif value.is_integer() and -_PRODUCT_MAX_EXPONENT <= value <= _PRODUCT_MAX_EXPONENT:
        out = np.ones_like(base)  # exponent 0: 1 everywhere, NaN and inf bases too
        for _ in range(int(value) if value > 0 else -int(value)):
            np.multiply(out, base, out=out)
    else:
        return np.power(base, exponent)
    if value < 0:
        np.reciprocal(out, out=out)
    return out.astype(np.result_type(base, exponent), copy=False)


def maximum(a, b):
    """Elementwise max; like torch, a tie sends half the gradient to each side."""
    return _pick_one(a, b, np.maximum, np.greater)


def minimum(a, b):
    """Elementwise min; like torch, a tie sends half the gradient to each side."""
    return _pick_one(a, b, np.minimum, np.less)


def _pick_one(a, b, pick, a_wins):
    array_a, array_b = _as_arrays(a, b)
    out = pick(array_a, array_b)

    def backward(d_out):
        share_a = np.where(array_a == array_b, 0.5, a_wins(array_a, array_b)).astype(d_out.dtype)
        d_a = _grad_for(a, d_out * share_a) if _differentiable(a) else None
        d_b = _grad_for(b, d_out * (1 - share_a)) if _differentiable(b) else None
        return d_a, d_b

    return out, backward


def where(cond, a, b):
    """a where cond holds, else b; cond is a mask and gets no gradient. Same-shape float32
    operands take one compiled pass each way (``fused.select``: a Huber-style loss's where
    over 2^21 values, 7.2 + 14.4 ms in NumPy's np.where, torch 3.5 + 7.2)."""
    mask = np.asarray(cond, dtype=bool)
    array_a, array_b = _as_arrays(a, b)
    if mask.shape == array_a.shape == array_b.shape and all(
            o.dtype == np.float32 and o.flags.c_contiguous for o in (array_a, array_b)) and \
            mask.flags.c_contiguous:
        return _selected(mask, array_a, array_b)
    out = np.where(mask, array_a, array_b)

    def backward(d_out):
        d_a = _grad_for(a, np.where(mask, d_out, 0)) if _differentiable(a) else None
        d_b = _grad_for(b, np.where(mask, 0, d_out)) if _differentiable(b) else None
        return None, d_a, d_b

    return out, backward


def _selected(mask, a, b):
    out = np.empty_like(a)
    fused.select(mask.reshape(-1), a.reshape(-1), b.reshape(-1), out.reshape(-1))

    def backward(d_out):
        d_out = np.ascontiguousarray(d_out, np.float32).reshape(out.shape)  # 0-d stays 0-d
        d_a, d_b = np.empty_like(d_out), np.empty_like(d_out)
        fused.select_gradient(mask.reshape(-1), d_out.reshape(-1), d_a.reshape(-1),
                              d_b.reshape(-1))
        return None, d_a, d_b

    return out, backward


# ---- comparisons: boolean masks, like torch; no gradient ---------------------------------------


def _comparison(ufunc):
    def compare(a, b):
        def backward(d_out):
            return None, None

        return ufunc(a, b), backward

    compare.__name__ = ufunc.__name__
    compare.__doc__ = f"Elementwise `{ufunc.__name__}` as a boolean mask (no gradient)."
    return compare


lt = _comparison(np.less)
le = _comparison(np.less_equal)
gt = _comparison(np.greater)
ge = _comparison(np.greater_equal)
eq = _comparison(np.equal)
ne = _comparison(np.not_equal)


# ---- unary math ---------------------------------------------------------------------------------


def neg(x):
    def backward(d_out):
        return (-d_out,)

    return np.negative(x), backward


def abs(x):
    """|x|; the gradient at 0 is 0, as torch's sign()."""

    def backward(d_out):
        return (d_out * np.sign(x),)

    return np.abs(x), backward


def exp(x):
    out = np.exp(x)

    def backward(d_out):
        return (d_out * out,)

    return out, backward


def log(x):
    def backward(d_out):
        return (d_out / x,)

    return np.log(x), backward


def sqrt(x):
    out = np.sqrt(x)

    def backward(d_out):
        d_x = d_out / out
        d_x *= 0.5
        return (d_x,)

    return out, backward


def clip(x, *, lo=None, hi=None):
    """Clamps into [lo, hi] (either bound may be None); like torch, values on a bound keep
    their gradient."""
    if lo is None and hi is None:
        raise ValueError("clip needs at least one of lo and hi")
    out = np.clip(x, lo, hi)

    def backward(d_out):
        inside = np.ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x <= hi
        return (d_out * inside,)

    return out, backward


# ---- reductions -------------------------------------------------------------------------------


def _reduced_axes(axis, ndim):
    """``axis`` (None, an int or a tuple, negatives allowed) as a sorted tuple of axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _kept_shape(shape, axes):
    return tuple(1 if i in axes else size for i, size in enumerate(shape))


def sum(x, *, axis=None, keepdims=False):
    axes = _reduced_axes(axis, x.ndim)
    out = np.asarray(np.sum(x, axis=axes, keepdims=keepdims))

    def backward(d_out):
        return (np.broadcast_to(d_out.reshape(_kept_shape(x.shape, axes)), x.shape),)

    return out, backward


def mean(x, *, axis=None, keepdims=False):
    axes = _reduced_axes(axis, x.ndim)
    out = np.asarray(np.mean(x, axis=axes, keepdims=keepdims))
    count = math.prod(x.shape[i] for i in axes)

    def backward(d_out):
        d_kept = d_out.reshape(_kept_shape(x.shape, axes)) / count
        return (np.broadcast_to(d_kept, x.shape),)

    return out, backward


def max(x, *, axis=None, keepdims=False):
    """Largest value over ``axis``; the gradient goes to the first maximum, as torch.max(dim)."""
    axes = _reduced_axes(axis, x.ndim)
    out = np.asarray(np.max(x, axis=axes, keepdims=keepdims))

    def backward(d_out):
        # Reduced axes moved last and flattened: one argmax finds the first maximum in C order.
        order = [i for i in range(x.ndim) if i not in axes] + list(axes)
        moved_shape = [x.shape[i] for i in order]
        rows = np.transpose(x, order).reshape(*moved_shape[: x.ndim - len(axes)], -1)
        first = np.argmax(rows, axis=-1)[..., None]
        d_rows = np.zeros_like(rows)
        np.put_along_axis(d_rows, first, d_out.reshape(first.shape), axis=-1)
        return (np.transpose(d_rows.reshape(moved_shape), np.argsort(order)),)

    return out, backward


def concat(xs, *, axis):
    """Joins arrays along ``axis``; backward returns one gradient (a view of d_out) per input."""
    out = np.concatenate(xs, axis=axis)
    boundaries = np.cumsum([x.shape[axis] for x in xs])[:-1]

    def backward(d_out):
        return tuple(np.split(d_out, boundaries, axis=axis))

    return out, backward
