"""Activation kernels with torch's exact semantics.

Each kernel returns ``(out, backward)``; ``backward(d_out)`` returns ``(d_x,)``. Backward reuses
what the forward computed (the sigmoid, the GELU's slope) instead of recomputing it.
"""

from __future__ import annotations

import math

import numpy as np

from nnspec.backends.numpy.kernels import fused, parallel

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def _sigmoid(x):
    """1 / (1 + exp(-x)) in four in-place passes.

    exp(-x) overflows to inf for x below about -88 (float32), and 1 / (1 + inf) is exactly the
    limit 0, so overflow (and underflow for large x) is harmless here and silenced.
    """
    with np.errstate(over="ignore", under="ignore"):
        s = np.negative(x)
        np.exp(s, out=s)
        s += 1
        np.reciprocal(s, out=s)
    return s


def relu(x):
    """max(x, 0), NaN kept, as torch. float32 in one compiled loop (both cores from 2^15
    values), the backward masked by the output (held by the layer that reads it, mostly, as
    torch keeps it), where NumPy's clip and mask took three passes: 2^21 values 0.48 + 0.57
    ms -> 0.18 + 0.41 (torch 0.37 + 0.48)."""
    if x.dtype == np.float32:
        return _compiled_relu(x)
    # np.clip with an infinite cap: about 3x faster than np.maximum(x, 0) in NumPy 2
    out = np.clip(x, 0.0, np.inf)
    # a mask, a quarter of the output's size: a convolution next keeps a padded copy of
    # its input, so the output itself is often held by nothing else. NaN passes its
    # gradient, as in torch (whose test is x <= 0).
    positive = np.not_equal(out, 0)

    def backward(d_out):
        return (np.multiply(d_out, positive, dtype=d_out.dtype),)

    return out, backward


def _compiled_relu(x):
    out = np.empty_like(x)  # a dense x's strides; a gappy one's order, without the gaps
    parallel.activation(fused.relu, x.ravel(order="K"), out.ravel(order="K"), None, False)

    def backward(d_out):
        if out.flags.c_contiguous and d_out.flags.c_contiguous:
            d_in = np.empty_like(out)
            parallel.relu_gradient(d_out.astype(np.float32, copy=False).reshape(-1),
                                   out.reshape(-1), d_in.reshape(-1))
            return (d_in,)
        return (np.multiply(d_out, np.not_equal(out, 0), dtype=d_out.dtype),)

    return out, backward


def sigmoid(x, *, input_grad=True):
    """1 / (1 + exp(-x)); float32 in one compiled loop that (while training) also writes the
    slope s (1 - s), float64 (the gradient checks) in NumPy passes."""
    if x.dtype != np.float64:
        return _compiled_with_slope(x, fused.sigmoid, input_grad)
    out = _sigmoid(x)

    def backward(d_out):
        return (d_out * out * (1 - out),)

    return out, backward


def tanh(x, *, input_grad=True):
    """float32 in one compiled loop that (while training) also writes the slope 1 - t^2."""
    if x.dtype != np.float64:
        return _compiled_with_slope(x, fused.tanh_activation, input_grad)
    out = np.tanh(x)

    def backward(d_out):
        return (d_out * (1 - np.square(out)),)

    return out, backward


def softmax(x, *, dim=-1):
    """exp(x - max) / sum: shifting by the max keeps exp in (0, 1], so nothing overflows.
    Over the last axis of float32 values, one compiled loop each way (``_softmax_rows``)."""
    if _rows_take(x, dim):
        return _softmax_rows(x, logarithm=False)
    out = x - x.max(axis=dim, keepdims=True)
    with np.errstate(under="ignore"):  # far-below-max entries underflow to their limit, 0
        np.exp(out, out=out)
    out /= out.sum(axis=dim, keepdims=True)

    def backward(d_out):
        d_x = d_out * out
        d_x -= out * d_x.sum(axis=dim, keepdims=True)
        return (d_x,)

    return out, backward


def log_softmax(x, *, dim=-1):
    """(x - max) - log(sum(exp(x - max))): the log-sum-exp form never takes log of 0."""
    if _rows_take(x, dim):
        return _softmax_rows(x, logarithm=True)
    out = x - x.max(axis=dim, keepdims=True)
    with np.errstate(under="ignore"):
        out -= np.log(np.exp(out).sum(axis=dim, keepdims=True))

    def backward(d_out):
        with np.errstate(under="ignore"):
            d_x = np.exp(out)
        d_x *= -d_out.sum(axis=dim, keepdims=True)
        d_x += d_out
        return (d_x,)

    return out, backward


def _rows_take(x, dim):
    """Whether a softmax over ``dim`` runs on ``fused.softmax_rows``: float32 over the
    last axis."""
    return x.dtype == np.float32 and x.ndim > 0 and dim in (-1, x.ndim - 1) and x.size > 0


def _softmax_rows(x, logarithm):
    """The softmax (or log-softmax) over the last axis by rows, forward and backward each one
    compiled pass (four and three NumPy passes before: 32 x 128 x 256 values 1.2 + 0.6 ms
    here, torch 0.2 + 0.1)."""
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    parallel.softmax_rows(rows, out, logarithm)

    def backward(d_out):
        d_rows = np.empty_like(out)
        parallel.softmax_rows_gradient(
            out, np.ascontiguousarray(d_out, np.float32).reshape(out.shape), d_rows, logarithm)
        return (d_rows.reshape(x.shape),)

    return out.reshape(x.shape), backward


def gelu(x, *, approximate="none", input_grad=True):
    """x * Phi(x) with the exact normal CDF (torch's default), or torch's tanh approximation.

    In float32 it is one compiled loop (``fused.gelu``) whose Phi is within 2.9e-8
    of the true value, closer than torch's own float32 GELU; float64 input (gradient checks)
    takes math.erf per element. While training, the forward also writes the slope
    Phi(x) + x phi(x), and the backward is one product. ``input_grad`` False skips the slope.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    if x.dtype == np.float64:
        if approximate == "tanh":
            return _gelu_tanh(x)
        return _with_slope(x, _gelu_block_exact, input_grad)
    return _compiled_with_slope(x, fused.gelu_tanh if approximate == "tanh" else fused.gelu,
                                input_grad)


def _compiled_with_slope(x, kernel, input_grad, *coefficient):
    """A compiled float32 activation over all of ``x`` in the order of its memory (a
    transposed x is read in place, and the output takes its layout), with (while training)
    its slope, so that the backward is one product; other float dtypes are computed in
    float32. ``coefficient``: the loop's own (leaky_relu's slope, elu's alpha)."""
    dtype = x.dtype  # the backward keeps this, not x
    x = x.astype(np.float32, copy=False)
    out = np.empty_like(x)  # a dense x's strides; a gappy one's order, without the gaps
    slope = np.empty_like(out) if input_grad else None
    parallel.activation(kernel, x.ravel(order="K"), out.ravel(order="K"),
                        None if slope is None else slope.ravel(order="K"), input_grad,
                        *coefficient)

    def backward(d_out):
        if slope is None:
            return (None,)
        # into the slope, whose layout may not be d_out's: NumPy then reads d_out across,
        # 3 ms for 2^21 values here, where a new output in a third order took 16
        return (np.multiply(d_out, slope, out=slope).astype(dtype, copy=False),)

    return out.astype(dtype, copy=False), backward


def _with_slope(x, block_kernel, input_grad):
    """``block_kernel(x, out, slope)`` over cache-sized blocks of ``x``, writing the output
    and (while training, else None) the derivative; the backward is then one product. The
    float64 activations (gradient checks) take this NumPy path."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    slope = np.empty_like(x) if input_grad else None
    flat, out_flat = x.reshape(-1), out.reshape(-1)
    slope_flat = None if slope is None else slope.reshape(-1)
    for block in _blocks(x.size):
        block_kernel(flat[block], out_flat[block],
                     None if slope_flat is None else slope_flat[block])

    def backward(d_out):
        if slope is None:
            return (None,)
        return (np.multiply(d_out, slope, out=slope),)

    return out, backward


# float64 GELU and SiLU run over blocks of this many values: a block's few temporaries stay
# in the core's cache, and none is the size of the whole activation
_BLOCK = 1 << 16


def _blocks(size):
    return (slice(start, start + _BLOCK) for start in range(0, size, _BLOCK))


def _gelu_block_exact(x, out, slope):
    """x Phi(x), Phi from math.erf per element, and its slope (float64: the gradient checks)."""
    cdf = np.frompyfunc(math.erf, 1, 1)(x * _SQRT_HALF).astype(x.dtype)
    cdf += 1
    cdf *= 0.5
    np.multiply(x, cdf, out=out)
    if slope is not None:
        _add_x_times_density(x, np.square(x), cdf, slope)


def _add_x_times_density(x, square, cdf, slope):
    """slope = cdf + x phi(x), phi the normal density; overwrites ``square`` (x^2)."""
    square *= -0.5
    with np.errstate(under="ignore"):  # the density underflows to 0 for |x| > ~14
        density = np.exp(square, out=square)
    density *= _INV_SQRT_2PI
    density *= x
    np.add(density, cdf, out=slope)


def _gelu_tanh(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch's approximate='tanh', in
    float64 (the gradient checks; float32 takes ``fused.gelu_tanh``)."""
    x_squared = np.square(x)
    inner = x_squared * _GELU_TANH_CUBIC
    inner += 1
    inner *= x
    inner *= _SQRT_2_OVER_PI
    t = np.tanh(inner, out=inner)
    out = t + 1
    out *= x
    out *= 0.5

    def backward(d_out):
        # x^2 and x / 2 again rather than kept: two cheap passes for two fewer saved arrays
        d_inner = np.square(x)
        d_inner *= 3 * _GELU_TANH_CUBIC
        d_inner += 1
        d_inner *= _SQRT_2_OVER_PI
        d_inner *= x
        d_inner *= 0.5
        d_inner *= 1 - np.square(t)
        d_inner += 0.5 * (1 + t)
        d_inner *= d_out
        return (d_inner,)

    return out, backward


def leaky_relu(x, *, negative_slope=0.01, input_grad=True):
    """float32 in one compiled loop that (while training) also writes the slope, 1 or
    ``negative_slope``: NumPy's np.where over a mask of random signs took 8 ms for 2^21
    values (torch 0.4) here, the compiled loop 0.26."""
    if x.dtype != np.float64:
        return _compiled_with_slope(x, fused.leaky_relu, input_grad, negative_slope)
    positive = x > 0
    out = np.where(positive, x, x * negative_slope)

    def backward(d_out):
        return (np.where(positive, d_out, d_out * negative_slope),)

    return out, backward


def elu(x, *, alpha=1.0, input_grad=True):
    """alpha * (exp(x) - 1) below 0: float32 in one compiled loop with its slope (see
    ``leaky_relu``), float64 via expm1 of min(x, 0), so large x never reaches exp."""
    if x.dtype != np.float64:
        return _compiled_with_slope(x, fused.elu, input_grad, alpha)
    positive = x > 0
    negative_branch = np.expm1(np.minimum(x, 0))
    negative_branch *= alpha
    out = np.where(positive, x, negative_branch)

    def backward(d_out):
        slope = negative_branch + alpha  # d/dx alpha * (exp(x) - 1) = alpha * exp(x)
        slope *= d_out
        return (np.where(positive, d_out, slope),)

    return out, backward


def relu6(x):
    """min(max(x, 0), 6); like torch, the gradient is 1 strictly inside (0, 6), and at NaN."""
    out = np.clip(x, 0, 6)
    inside = np.not_equal(out, 0)  # out is in [0, 6] or NaN
    inside &= np.not_equal(out, 6)

    def backward(d_out):
        return (np.multiply(d_out, inside, dtype=d_out.dtype),)

    return out, backward


def silu(x, *, input_grad=True):
    """x * sigmoid(x). Like GELU it is one compiled loop in float32, and while training the
    forward writes the slope s (1 + x (1 - s)), so that the backward is one product.
    ``input_grad`` False skips the slope."""
    if x.dtype == np.float64:
        return _with_slope(x, _silu_block, input_grad)
    return _compiled_with_slope(x, fused.silu, input_grad)


def _silu_block(x, out, slope):
    s = _sigmoid(x)
    np.multiply(x, s, out=out)
    if slope is not None:  # s + x s (1 - s) = s + out (1 - s)
        np.subtract(1, s, out=slope)
        slope *= out
        slope += s
