"""Activation kernels with torch's exact semantics, and the erf that exact GELU needs.

Each kernel returns ``(out, backward)``; ``backward(d_out)`` returns ``(d_x,)``. Backward reuses
what the forward computed (the sigmoid, the GELU's normal CDF) instead of recomputing it.
"""

from __future__ import annotations

import math

import numpy as np

# erf(x) = x * P(x^2) / Q(x^2) on |x| <= 4, coefficients lowest degree first. A (6, 5) rational
# fitted to erf(x)/x by iteratively reweighted least squares against 40-digit mpmath values;
# its largest relative error on [0, 4] is 2.0e-9, far below float32's 6e-8 half-ulp. Past 4,
# 1 - erf(x) < 1.6e-8 rounds away in float32, so |x| is clamped there.
_ERF_CLAMP = 4.0
_ERF_SATURATED = 3.9
_ERF_P = (
    1.1283791693774032,
    0.18520311595347408,
    0.054316904449994624,
    0.0038496081697562807,
    0.00037960904745963945,
    4.6847848887253624e-06,
    -1.3202262181540633e-08,
)
_ERF_Q = (
    1.0,
    0.49746540188477917,
    0.11395837872488279,
    0.015462083646608168,
    0.0013075694312427253,
    6.311064812990467e-05,
)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def _horner(coefficients, t):
    """Evaluates sum(c_k * t^k) in place on one fresh array."""
    acc = coefficients[-1] * t
    for coefficient in coefficients[-2:0:-1]:
        acc += coefficient
        acc *= t
    acc += coefficients[0]
    return acc


def _erf_rational(clamped, t):
    """x * P(x^2) / Q(x^2) for ``clamped`` = clip(x, -4, 4) and ``t`` = its square, both in
    the dtype to evaluate in; ``t`` is reused as the result's storage."""
    numerator = _horner(_ERF_P, t)
    denominator = _horner(_ERF_Q, t)
    numerator *= clamped
    numerator /= denominator
    return numerator


def erf(x):
    """The error function, elementwise, to within 1 float32 ulp (NumPy has none).

    Float32 input is evaluated in float64 and rounded once: float32 Horner steps alone would
    accumulate about 7 ulp near |x| = 4.
    """
    work_dtype = np.promote_types(x.dtype, np.float64)
    clamped = np.clip(x, -_ERF_CLAMP, _ERF_CLAMP, dtype=work_dtype)
    return _erf_rational(clamped, np.square(clamped)).astype(x.dtype, copy=False)


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
    # np.clip with an infinite cap: about 3x faster than np.maximum(x, 0) in NumPy 2
    out = np.clip(x, 0.0, np.inf)
    # a mask, a quarter of the output's size: a convolution next keeps a padded copy of
    # its input, so the output itself is often held by nothing else. NaN passes its
    # gradient, as in torch (whose test is x <= 0).
    positive = np.not_equal(out, 0)

    def backward(d_out):
        return (np.multiply(d_out, positive, dtype=d_out.dtype),)

    return out, backward


def sigmoid(x):
    out = _sigmoid(x)

    def backward(d_out):
        return (d_out * out * (1 - out),)

    return out, backward


def tanh(x):
    out = np.tanh(x)

    def backward(d_out):
        return (d_out * (1 - np.square(out)),)

    return out, backward


def softmax(x, *, dim=-1):
    """exp(x - max) / sum: shifting by the max keeps exp in (0, 1], so nothing overflows."""
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


def gelu(x, *, approximate="none"):
    """x * Phi(x) with the exact normal CDF (torch's default), or torch's tanh approximation.

    The erf inside is evaluated in the input's dtype, not widened as `erf` does: in float32
    that costs at most 7 ulp of erf (4e-7 absolute), far inside the 1e-4 agreement with
    torch, and is six times faster than a float64 pass with its conversions.
    """
    if approximate == "tanh":
        return _gelu_tanh(x)
    if approximate != "none":
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    for block in _blocks(x.size):
        _gelu_block(x.reshape(-1)[block], out.reshape(-1)[block])

    def backward(d_out):
        grad = np.empty_like(x)
        d_flat = np.ascontiguousarray(d_out).reshape(-1)
        for block in _blocks(x.size):
            _gelu_grad_block(x.reshape(-1)[block], out.reshape(-1)[block], d_flat[block],
                             grad.reshape(-1)[block])
        return (grad,)

    return out, backward


# GELU runs over blocks of this many values: a block's half-dozen temporaries stay in the
# core's cache, and none is the size of the whole activation (a transformer's largest)
_GELU_BLOCK = 1 << 16


def _blocks(size):
    return (slice(start, start + _GELU_BLOCK) for start in range(0, size, _GELU_BLOCK))


def _gelu_block(x, out):
    scaled = x * _SQRT_HALF
    half_square = np.square(scaled)  # x^2 / 2
    cdf = _erf_rational(scaled, np.minimum(half_square, _ERF_CLAMP**2))
    # Past |x / sqrt(2)| = 3.9 erf rounds to +-1 in float32; setting it exactly there (which
    # also covers the unclamped, meaningless rational beyond 4) keeps x * Phi(x) exactly 0 for
    # very negative x, where a float32 ulp of erf times a large |x| would show.
    np.copysign(1, scaled, out=cdf, where=half_square >= _ERF_SATURATED**2)
    cdf += 1
    cdf *= 0.5
    np.multiply(x, cdf, out=out)


def _gelu_grad_block(x, out, d_out, grad):
    """Phi(x) + x phi(x), times d_out. Phi(x) is read back from the output (out / x, 1/2 at
    0), which the next layer keeps anyway: the step holds no array of its own (the erf
    costs 7x this divide)."""
    density = np.square(x)
    density *= -0.5
    with np.errstate(under="ignore"):  # the density underflows to 0 for |x| > ~14
        np.exp(density, out=density)
    density *= _INV_SQRT_2PI
    density *= x
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 at x = 0, set below
        cdf = out / x
    np.copyto(cdf, 0.5, where=x == 0)
    density += cdf
    np.multiply(density, d_out, out=grad)


def _gelu_tanh(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch's approximate='tanh'."""
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


def leaky_relu(x, *, negative_slope=0.01):
    positive = x > 0
    out = np.where(positive, x, x * negative_slope)

    def backward(d_out):
        return (np.where(positive, d_out, d_out * negative_slope),)

    return out, backward


def elu(x, *, alpha=1.0):
    """alpha * (exp(x) - 1) below 0, via expm1 of min(x, 0) so large x never reaches exp."""
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


def silu(x):
    s = _sigmoid(x)
    out = x * s

    def backward(d_out):
        slope = 1 - s
        slope *= x
        slope += 1
        slope *= s
        slope *= d_out
        return (slope,)

    return out, backward
