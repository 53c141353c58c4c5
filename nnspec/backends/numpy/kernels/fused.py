"""Fused loops, compiled by numba, for the kernels whose NumPy form is a chain of passes.

A NumPy pass costs about the same whether its operands are in cache or not (0.2-0.4 ns a
value here), so a kernel of twenty passes, like the exact GELU with its slope, costs twenty
times one pass however it is blocked. Compiled, the chain is one loop that reads its input
once and writes its outputs once, vectorised by LLVM: the exact GELU with its slope over 2^20
float32 values 3.9 -> 1.3 ms, and layer norm's forward and backward over 2,048 x 128 values
1.27 -> 0.27 ms (Intel Xeon, AVX-512, one core).

The loops are the kernels' arithmetic only; the kernels around them keep the meaning (shapes,
absent affine parameters, float64 for the gradient checks). Compiled with:

- ``error_model="numpy"``: a float division by zero gives inf as in NumPy, instead of
  numba's Python-style ZeroDivisionError check, which also stops LLVM vectorising the loop;
- fast-math flags only as far as each kind of loop needs: element-wise loops may fuse
  multiply-adds, row reductions may also reorder their sums (so that they vectorise), and
  the optimizer's and the embedding gradient's loops take none (their bits are NumPy's);
  never ``nnan``/``ninf``: NaN and inf still flow through as in torch (a NaN loss must stop
  training, not vanish);
- ``cache=True``: compiled once per machine into ``__pycache__``, loaded in milliseconds.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# element-wise loops: multiply-adds may fuse, nothing is reordered (a loop's variants with
# and without the slope give the same outputs to the bit, which a test checks)
_compile = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_inline = numba.njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
# row reductions: sums may be reordered (vectorised) and multiply-adds fused
_reducing = numba.njit(cache=True, nogil=True, error_model="numpy",
                       fastmath={"contract", "nsz", "reassoc"})

_F = np.float32
_I = np.int32

# exp in float32 as Cephes' expf, for x <= 0 only (every caller's exponent is, so nothing
# overflows): x = k ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so k ln 2 is exact),
# exp(r) by a degree-7 polynomial, 2^k built in the exponent bits. Relative error under
# 3e-7; 0 below -87, where float32's own exp is subnormal or 0
LOG2_E = _F(1.4426950408889634)
LN2_HIGH = _F(0.693359375)
LN2_LOW = _F(-2.12194440e-4)
EXP_LOWEST = _F(-87.0)
# the polynomial's coefficients, highest degree first (also attention_tiles' vector exp)
EXP_POLYNOMIAL = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                  1.6666665459e-1, 5.0000001201e-1)
_P0, _P1, _P2, _P3, _P4, _P5 = (_F(c) for c in EXP_POLYNOMIAL)


@_inline
def _exp_negative(x):
    clamped = max(x, EXP_LOWEST)
    k = np.floor(clamped * LOG2_E + _F(0.5))
    r = clamped - k * LN2_HIGH - k * LN2_LOW
    p = _P0
    p = p * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * r * r + r + _F(1.0)
    power = _I(_I(_I(k) + _I(127)) << _I(23)).view(_F)
    if np.isnan(x):  # NaN stays NaN (the clamp would have made it -87)
        return x
    return _F(0.0) if x < EXP_LOWEST else p * power


# tanh(x) = x P(x^2) / Q(x^2) on [-9, 9], P of degree 6 and Q of degree 3, both with a
# constant term of 1 (so that small x lose nothing): fitted by reweighted least squares
# against float64 tanh for the largest absolute error, 1e-8 in float64 (float32's rounding
# of the evaluation makes it 3.2e-7). Past 9, float32's tanh is 1 to within an ulp. One
# division and ten multiply-adds: the LSTM step's five tanh over 128 samples x 256 units
# 179 -> 106 us against the exp-based form (Intel Xeon, one core)
_TANH_SATURATED = _F(9.0)
_TANH_P1, _TANH_P2, _TANH_P3, _TANH_P4, _TANH_P5, _TANH_P6 = (
    _F(0.13086748123168945), _F(0.003106992691755295), _F(1.118545787903713e-05),
    _F(-2.034780521853463e-08), _F(5.3348568618272196e-11), _F(-8.62935956957682e-14))
_TANH_Q1, _TANH_Q2, _TANH_Q3 = (
    _F(0.4642007648944855), _F(0.02450733073055744), _F(0.00025505313533358276))


@_inline
def tanh(x):
    """tanh by the rational fit above, exactly 1 (-1) from 9 (-9) on; NaN stays NaN (the
    clamps' comparisons are false for it)."""
    # written out, not min and max: these keep NaN, whichever way numba orders min's operands
    c = _TANH_SATURATED if x > _TANH_SATURATED else x  # noqa: FURB136
    c = -_TANH_SATURATED if c < -_TANH_SATURATED else c  # noqa: FURB136
    s = c * c
    p = (((((_TANH_P6 * s + _TANH_P5) * s + _TANH_P4) * s + _TANH_P3) * s + _TANH_P2) * s
         + _TANH_P1) * s + _F(1.0)
    q = ((_TANH_Q3 * s + _TANH_Q2) * s + _TANH_Q1) * s + _F(1.0)
    t = c * p / q
    t = _F(1.0) if c == _TANH_SATURATED else t
    return _F(-1.0) if c == -_TANH_SATURATED else t


@_inline
def _sigmoid(z):
    """1 / (1 + exp(-z)) from exp(-|z|) in (0, 1]: no overflow, and no cancellation for
    negative z (e / (1 + e) there)."""
    e = _exp_negative(-abs(z))
    return (_F(1.0) if z >= 0 else e) / (_F(1.0) + e)


# The exact GELU's normal CDF: Phi(x) = (1 + tanh(x g(x^2))) / 2 = sigmoid(2 x g(x^2)),
# where g is the degree-6 polynomial (the coefficients below are 2 g's,
# lowest degree first) for which tanh(x g(x^2)) is closest to erf(x / sqrt 2): fitted by
# reweighted least squares against float64 erf for the largest error of Phi on [0, 6.5],
# 2.9e-8, under float32's half-ulp of 1 (6e-8). g's positive leading term keeps the sigmoid
# saturated past 6.5
_G0, _G1, _G2, _G3, _G4, _G5, _G6 = (
    _F(0.7978849414622557 * 2), _F(0.03633308456436552 * 2), _F(-3.259496350868289e-05 * 2),
    _F(-5.5306199420768116e-05 * 2), _F(3.964745581826159e-06 * 2),
    _F(-1.322634414335892e-07 * 2), _F(1.7561738313659805e-09 * 2))
_INV_SQRT_2PI = _F(0.3989422804014327)


@_inline
def _normal_cdf(v, square):
    return _sigmoid(((((((_G6 * square + _G5) * square + _G4) * square + _G3) * square + _G2)
                      * square + _G1) * square + _G0) * v)


@_compile
def gelu(x, out, slope, with_slope):
    """out = x Phi(x) and, ``with_slope``, slope = Phi(x) + x phi(x), over flat float32
    arrays (one loop either way, so that the output is the same to the bit)."""
    for i in range(x.size):
        v = x[i]
        square = v * v
        cdf = _normal_cdf(v, square)
        out[i] = v * cdf
        if with_slope:
            slope[i] = cdf + v * _INV_SQRT_2PI * _exp_negative(_F(-0.5) * square)


_SQRT_2_OVER_PI = _F(0.7978845608028654)
_GELU_TANH_CUBIC = _F(0.044715)


@_compile
def gelu_tanh(x, out, slope, with_slope):
    """torch's approximate="tanh" GELU, x (1 + tanh(u)) / 2 with u = sqrt(2 / pi) (x +
    0.044715 x^3), as x sigmoid(2 u), and, ``with_slope``, its derivative
    s + x s (1 - s) 2 u', over flat float32 arrays."""
    for i in range(x.size):
        v = x[i]
        square = v * v
        s = _sigmoid(_F(2.0) * _SQRT_2_OVER_PI * (v + _GELU_TANH_CUBIC * square * v))
        y = v * s
        out[i] = y
        if with_slope:
            du = _F(2.0) * _SQRT_2_OVER_PI * (_F(1.0) + _F(3.0) * _GELU_TANH_CUBIC * square)
            slope[i] = s + y * (_F(1.0) - s) * du


@_compile
def silu(x, out, slope, with_slope):
    """out = x s and, ``with_slope``, slope = s + x s (1 - s), s = sigmoid(x), over flat
    float32 arrays."""
    for i in range(x.size):
        v = x[i]
        s = _sigmoid(v)
        y = v * s
        out[i] = y
        if with_slope:
            slope[i] = s + y * (_F(1.0) - s)


@_compile
def sigmoid(x, out, slope, with_slope):
    """out = s = sigmoid(x) and, ``with_slope``, slope = s (1 - s), over flat float32 arrays."""
    for i in range(x.size):
        s = _sigmoid(x[i])
        out[i] = s
        if with_slope:
            slope[i] = s * (_F(1.0) - s)


@_compile
def tanh_activation(x, out, slope, with_slope):
    """out = t = tanh(x) and, ``with_slope``, slope = 1 - t^2, over flat float32 arrays (the
    loop of the tanh activation; ``tanh`` is the scalar the recurrent steps share)."""
    for i in range(x.size):
        t = tanh(x[i])
        out[i] = t
        if with_slope:
            slope[i] = _F(1.0) - t * t


@_compile
def leaky_relu(x, out, slope, with_slope, negative_slope):
    """out = x above 0, else negative_slope x, and, ``with_slope``, slope = 1 or
    negative_slope, over flat float32 arrays; as in torch, the test is x > 0 (so 0 and NaN
    take negative_slope)."""
    for i in range(x.size):
        v = x[i]
        positive = v > 0
        out[i] = v if positive else v * negative_slope
        if with_slope:
            slope[i] = _F(1.0) if positive else negative_slope


# exp(x) - 1 on [-1/2, 0] by its Taylor series to degree 8 (the remainder, under 5.4e-9, is a
# seventieth of float32's half-ulp there): the coefficients 1/n! of x^n, n = 2 to 8
_E2, _E3, _E4, _E5, _E6, _E7, _E8 = (_F(1.0 / math.factorial(n)) for n in range(2, 9))


@_inline
def _expm1_negative(c, exp_c):
    """exp(c) - 1 for c <= 0, given exp(c), without the cancellation of exp(c) - 1 near 0:
    the series above to -1/2, exp(c) - 1 below (no cancellation there, -0.39 and less)."""
    p = (((((_E8 * c + _E7) * c + _E6) * c + _E5) * c + _E4) * c + _E3) * c + _E2
    return c + c * c * p if c > _F(-0.5) else exp_c - _F(1.0)


@_compile
def elu(x, out, slope, with_slope, alpha):
    """out = x above 0, else alpha (exp(x) - 1), and, ``with_slope``, slope = 1 or alpha
    exp(x) (not from the output: exp(x) - 1 + 1 is 0 in float32 from x = -17), over flat
    float32 arrays; as in torch, the test is x <= 0 (NaN passes as x)."""
    for i in range(x.size):
        v = x[i]
        negative = v <= 0
        c = v if negative else _F(0.0)
        exp_c = _exp_negative(c)
        out[i] = alpha * _expm1_negative(c, exp_c) if negative else v
        if with_slope:
            slope[i] = alpha * exp_c if negative else _F(1.0)


@_compile
def silu_mul(a, b, out):
    """out = silu(a) b over flat float32 arrays (a gated feed-forward's two projections)."""
    for i in range(a.size):
        v = a[i]
        out[i] = v * _sigmoid(v) * b[i]


@_compile
def silu_mul_gradient(d_out, a, b, d_a, d_b):
    """The gradients of ``silu_mul``: d_b = d_out silu(a), d_a = d_out b silu'(a)."""
    for i in range(a.size):
        v = a[i]
        s = _sigmoid(v)
        y = v * s
        d_b[i] = d_out[i] * y
        d_a[i] = d_out[i] * b[i] * (s + y * (_F(1.0) - s))


@_reducing
def layer_norm_forward(rows, weight, bias, affine, eps, x_hat, out, inv_std):
    """Each row centred and scaled (two-pass variance) into x_hat; out = x_hat * weight +
    bias when ``affine`` (out may be x_hat otherwise); inv_std gets each row's 1 / std.
    weight and bias are (k, size): row i takes row i % k of them (layer norm has one, group
    norm one per group, its channels' values repeated over their positions)."""
    count, size = rows.shape
    one = rows.dtype.type(1)
    per_value = one / rows.dtype.type(size)
    eps = rows.dtype.type(eps)
    for i in range(count):
        # about the row's first value: x - pivot is exact where x is near it, so a mean far
        # from zero against the spread (683 +- 1) loses nothing to float32's sum
        # (each difference stored before the next is taken: reassociation, allowed here
        # for the sums, would otherwise fold pivot and offset together first)
        row, normed = rows[i], x_hat[i]
        pivot = row[0]
        total = rows.dtype.type(0)
        for j in range(size):
            normed[j] = row[j] - pivot
            total += normed[j]
        offset = total * per_value  # mean - pivot
        squares = rows.dtype.type(0)
        for j in range(size):
            centred = normed[j] - offset
            squares += centred * centred
        scale = one / np.sqrt(squares * per_value + eps)
        inv_std[i] = scale
        for j in range(size):
            normed[j] = (normed[j] - offset) * scale
        if affine:
            target, factor, shift = out[i], weight[i % len(weight)], bias[i % len(bias)]
            for j in range(size):
                target[j] = normed[j] * factor[j] + shift[j]


@_reducing
def group_norm_forward(x, weight, bias, eps, out, means, inv_stds):
    """Group norm over ``x`` (R, Cg, P), a row r for each (sample, group): each row's mean
    and 1 / std (two passes about its first value, as ``layer_norm_forward``), then out =
    (x - mean) / std * weight + bias per channel, weight and bias (G, Cg) (row r takes
    their row r % G). x is kept, not normalised copies: torch's memory."""
    rows, channels, positions = x.shape
    per_value = _F(1.0) / _F(channels * positions)
    for r in range(rows):
        block = x[r]
        pivot = block[0, 0]
        total = _F(0.0)
        for c in range(channels):
            for p in range(positions):
                total += block[c, p] - pivot
        offset = total * per_value  # mean - pivot
        squares = _F(0.0)
        for c in range(channels):
            for p in range(positions):
                centred = (block[c, p] - pivot) - offset
                squares += centred * centred
        inv_std = _F(1.0) / np.sqrt(squares * per_value + _F(eps))
        means[r], inv_stds[r] = pivot + offset, inv_std
        group_weight, group_bias = weight[r % len(weight)], bias[r % len(bias)]
        for c in range(channels):
            scale, shift, line, target = inv_std * group_weight[c], group_bias[c], block[c], \
                out[r, c]
            for p in range(positions):
                target[p] = ((line[p] - pivot) - offset) * scale + shift


@_reducing
def group_norm_backward(d_out, x, weight, means, inv_stds, d_x, d_centred, d_sums):
    """``group_norm_forward``'s input gradient, and per row and channel the sums the weight
    gradients take: d_sums (R, Cg) of d_out, d_centred of d_out (x - mean) (the weight's
    gradient is their sum over the samples times 1 / std). torch's formula, with x - mean
    where it has x and -mean apart: dx = s w dy - s^3 / M (x - mean) sum(w dy (x - mean))
    - s / M sum(w dy), s = 1 / std, M the row's values."""
    rows, channels, positions = x.shape
    per_value = _F(1.0) / _F(channels * positions)
    for r in range(rows):
        mean, inv_std = means[r], inv_stds[r]
        group_weight = weight[r % len(weight)]
        weighted_centred = _F(0.0)
        weighted_sum = _F(0.0)
        for c in range(channels):
            line, gradient = x[r, c], d_out[r, c]
            centred = _F(0.0)
            total = _F(0.0)
            for p in range(positions):
                centred += gradient[p] * (line[p] - mean)
                total += gradient[p]
            d_centred[r, c], d_sums[r, c] = centred, total
            weighted_centred += centred * group_weight[c]
            weighted_sum += total * group_weight[c]
        slope = weighted_centred * inv_std * inv_std * inv_std * per_value
        shift = weighted_sum * inv_std * per_value
        for c in range(channels):
            scale, line, gradient, target = inv_std * group_weight[c], x[r, c], d_out[r, c], \
                d_x[r, c]
            for p in range(positions):
                target[p] = scale * gradient[p] - slope * (line[p] - mean) - shift


@_reducing
def layer_norm_backward(d_out, x_hat, weight, affine, inv_std, d_x, d_weight, d_bias):
    """dx of each row from d(x_hat) = d_out * weight, less its mean and its projection on
    x_hat (x_hat has zero mean and unit variance per row, which removes those directions);
    with ``affine``, d_weight and d_bias (k, size, as the weights of the forward) accumulate
    the column sums of d_out * x_hat and d_out of their rows (both zeroed here)."""
    count, size = d_out.shape
    per_value = d_out.dtype.type(1) / d_out.dtype.type(size)
    if affine:
        d_weight[:] = 0
        d_bias[:] = 0
    for i in range(count):
        dy, normed, dx = d_out[i], x_hat[i], d_x[i]
        total = d_out.dtype.type(0)
        projection = d_out.dtype.type(0)
        if affine:
            factor = weight[i % len(weight)]
            d_factor, d_shift = d_weight[i % len(weight)], d_bias[i % len(weight)]
            for j in range(size):
                g = dy[j] * factor[j]
                total += g
                projection += g * normed[j]
                d_factor[j] += dy[j] * normed[j]
                d_shift[j] += dy[j]
        else:
            for j in range(size):
                total += dy[j]
                projection += dy[j] * normed[j]
        mean = total * per_value
        projection *= per_value
        scale = inv_std[i]
        if affine:
            factor = weight[i % len(weight)]
            for j in range(size):
                dx[j] = (dy[j] * factor[j] - mean - normed[j] * projection) * scale
        else:
            for j in range(size):
                dx[j] = (dy[j] - mean - normed[j] * projection) * scale


@_reducing
def rms_norm_forward(rows, weight, affine, eps, normed, out, inv_rms):
    """normed = each row / its root mean square (+ eps); out = normed * weight when
    ``affine``; inv_rms gets each row's scale."""
    count, size = rows.shape
    one = rows.dtype.type(1)
    per_value = one / rows.dtype.type(size)
    eps = rows.dtype.type(eps)
    for i in range(count):
        row = rows[i]
        squares = rows.dtype.type(0)
        for j in range(size):
            squares += row[j] * row[j]
        scale = one / np.sqrt(squares * per_value + eps)
        inv_rms[i] = scale
        target = normed[i]
        for j in range(size):
            target[j] = row[j] * scale
        if affine:
            scaled = out[i]
            for j in range(size):
                scaled[j] = target[j] * weight[j]


@_reducing
def rms_norm_backward(d_out, normed, weight, affine, inv_rms, d_x, d_weight):
    """dx of each row from d(normed) less its projection on normed (unit mean square per
    row); with ``affine``, d_weight accumulates the column sums of d_out * normed."""
    count, size = d_out.shape
    per_value = d_out.dtype.type(1) / d_out.dtype.type(size)
    if affine:
        d_weight[:] = 0
    for i in range(count):
        dy, row_normed, dx = d_out[i], normed[i], d_x[i]
        projection = d_out.dtype.type(0)
        if affine:
            for j in range(size):
                projection += dy[j] * weight[j] * row_normed[j]
                d_weight[j] += dy[j] * row_normed[j]
        else:
            for j in range(size):
                projection += dy[j] * row_normed[j]
        projection *= per_value
        scale = inv_rms[i]
        if affine:
            for j in range(size):
                dx[j] = (dy[j] * weight[j] - row_normed[j] * projection) * scale
        else:
            for j in range(size):
                dx[j] = (dy[j] - row_normed[j] * projection) * scale


@_compile
def rotate_halves(x, out, cos, sin, heads, first, last):
    """Rows first..last of ``x`` (positions, heads * d), any row step, turned into ``out``:
    at position t = row % T (``cos``, ``sin`` (T, d / 2)), each head's halves (a, b) become
    (a cos - b sin, b cos + a sin), the rotary embedding; with -sin, its transpose."""
    steps, half = cos.shape
    for row in range(first, last):
        step = row % steps
        cosines, sines = cos[step], sin[step]
        for head in range(heads):
            low, high = head * 2 * half, head * 2 * half + half
            for j in range(half):
                a, b = x[row, low + j], x[row, high + j]
                out[row, low + j] = a * cosines[j] - b * sines[j]
                out[row, high + j] = b * cosines[j] + a * sines[j]


# a row's max where a NaN in the row makes the result NaN whatever the max: the maximum
# reduction vectorises only if LLVM may ignore NaN (``nnan``), and NumPy's took 0.33 ms
# over 2^20 values, three times the softmax's own loop
@numba.njit(cache=True, nogil=True, error_model="numpy",
            fastmath={"nnan", "nsz", "reassoc", "contract"})
def _peak(row):
    peak = row[0]
    for j in range(1, row.size):
        peak = max(peak, row[j])
    return peak


@_reducing
def exp_rows(rows, out, peaks, totals):
    """out = exp(row - peak) for each row of (count, size) float32 values, with the rows'
    peaks (maxima, ``_peak``) and the sums of out: the softmax's max, subtract, exp and sum
    in two reads of each row (NumPy's max alone took 1.2 ms over 65,536 rows of 21 here)."""
    count, size = rows.shape
    for i in range(count):
        row, target = rows[i], out[i]
        peak = _peak(row)
        peaks[i] = peak
        total = _F(0.0)
        for j in range(size):
            e = _exp_negative(row[j] - peak)
            target[j] = e
            total += e
        totals[i] = total


@_reducing
def softmax_rows(rows, out, logarithm):
    """The softmax of each row of (count, size) float32 values, or with ``logarithm`` its
    log, (row - peak) - log of the sum: the row's peak, its exponentials and their sum in
    two reads, then the outputs while the row is in the core's cache (NumPy's passes took
    1.2 ms for 2^20 values here). A NaN in a row makes the sum, and so every output of the
    row, NaN, as torch's; so do +inf (inf - inf) and a row of -inf only."""
    count, size = rows.shape
    for i in range(count):
        row, target = rows[i], out[i]
        peak = _peak(row)
        total = _F(0.0)
        for j in range(size):
            e = _exp_negative(row[j] - peak)
            target[j] = e
            total += e
        if logarithm:
            log_total = np.log(total)
            for j in range(size):
                target[j] = (row[j] - peak) - log_total
        else:
            for j in range(size):
                target[j] = target[j] / total


@_reducing
def softmax_rows_gradient(out, d_out, d_rows, logarithm):
    """``softmax_rows``' gradient from its output: out (d - sum(d out)), or with
    ``logarithm`` d - exp(out) sum(d) (the log-softmax is at most 0, so its exp is
    ``_exp_negative``'s)."""
    count, size = out.shape
    for i in range(count):
        o, d, target = out[i], d_out[i], d_rows[i]
        total = _F(0.0)
        if logarithm:
            for j in range(size):
                total += d[j]
            for j in range(size):
                target[j] = d[j] - _exp_negative(o[j]) * total
        else:
            for j in range(size):
                total += d[j] * o[j]
            for j in range(size):
                target[j] = o[j] * (d[j] - total)


@_reducing
def exp_columns(scores, peaks, totals, normalise, first, last):
    """scores (rows, M) <- exp(scores - peaks) down each column from ``first`` to ``last``
    (peaks (M,) the columns' maxima, from NumPy), totals (M,) the columns' sums; with
    ``normalise`` the scores are then scaled by 1 / total: attention's softmax over its keys
    (the rows) in one pass, and one more for the normalisation, where NumPy made four and
    one. (Column ranges are arguments, not slices: a slice of columns would be a strided
    array, whose loops numba does not vectorise.)"""
    rows = scores.shape[0]
    # zero-based slices: a loop indexed from ``first`` is not vectorised
    column_peaks, column_totals = peaks[first:last], totals[first:last]
    column_totals[:] = 0
    for r in range(rows):
        row = scores[r, first:last]
        for j in range(row.size):
            e = _exp_negative(row[j] - column_peaks[j])
            row[j] = e
            column_totals[j] += e
    if normalise:
        inverse = 1 / column_totals
        for r in range(rows):
            row = scores[r, first:last]
            for j in range(row.size):
                row[j] *= inverse[j]


# exact IEEE arithmetic in source order, not even multiply-adds fused: the optimizers'
# updates give the bits of the NumPy passes they replace (and so stay with torch's)
_exact = numba.njit(cache=True, nogil=True, error_model="numpy")


@_exact
def add_rows(indices, values, out):
    """out[indices[i]] += values[i] for every row i in turn (repeats accumulate in that
    order, as NumPy's add.at does): an embedding's weight gradient. Indices are checked
    by the caller (the forward refuses any outside the table)."""
    for i in range(len(indices)):
        target, source = out[indices[i]], values[i]
        for j in range(source.size):
            target[j] += source[j]


@_exact
def adam_update(data, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, decay,
                one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
                step_size):
    """torch's single-tensor Adam (AdamW: ``decay`` = 1 - lr weight_decay) over flat arrays,
    each operation in the order of its code path: the parameters decay, exp_avg.lerp_(grad,
    1 - beta1), exp_avg_sq = exp_avg_sq beta2 + grad (1 - beta2) grad, its running maximum
    with AMSGrad (NaN kept, as np.maximum), then param += exp_avg step_size / (sqrt(second
    moment) / sqrt(bias correction 2) + eps). Scalars come in the arrays' dtype."""
    for i in range(data.size):
        g = grad[i]
        m = exp_avg[i]
        m = m + (g - m) * one_minus_beta1
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + g * one_minus_beta2 * g
        exp_avg_sq[i] = v
        if amsgrad:
            highest = max_exp_avg_sq[i]
            v = highest if highest >= v or np.isnan(highest) else v
            max_exp_avg_sq[i] = v
        data[i] = data[i] * decay + m * step_size / (np.sqrt(v) / bias_correction2_sqrt + eps)


@_exact
def sgd_update(data, grad, velocity, momentum_on, first, momentum, one_minus_dampening,
               nesterov, step):
    """torch's single-tensor SGD over flat arrays, each operation in the order of its code
    path: with momentum, the buffer starts as the gradient, then buf = buf momentum + grad
    (1 - dampening) (Nesterov: the gradient plus buf momentum); param += that step (-lr).
    Scalars come in the arrays' dtype."""
    for i in range(data.size):
        g = grad[i]
        if momentum_on:
            v = g if first else velocity[i] * momentum + g * one_minus_dampening
            velocity[i] = v
            g = g + v * momentum if nesterov else v
        data[i] = data[i] + g * step


# the activation a batch norm's (or a convolution's bias's) loops apply to their output and
# differentiate: none, max(y, 0), min(max(y, 0), 6) with the gradient inside (0, 6) and at
# NaN, as torch, or y where y > 0 else y times the loops' ``slope`` (leaky ReLU, whose
# gradient is times the slope at 0 and NaN, as torch's)
NO_ACTIVATION, RELU, RELU6, LEAKY_RELU = 0, 1, 2, 3


def activation_code(activation, codes):
    """(the loops' activation, slope) for an activation as the interpreter's fusion plan
    names it: None, a name in ``codes`` or ("leaky_relu", its slope)."""
    name, slope = activation if isinstance(activation, tuple) else (activation, 0.0)
    return codes[name], slope


@_inline
def _activate(value, activation, slope):
    """The activation of ``value``; NaN stays NaN. (The float32 constants take the dtype
    of ``value``, float64 in the gradient checks.)"""
    if activation == NO_ACTIVATION:
        return value
    if activation != LEAKY_RELU:
        if value <= 0:
            return _F(0.0)
        if activation == RELU6 and value >= 6:
            return _F(6.0)
        return value
    return value if value > 0 else value * slope


@_inline
def _through(g, value, activation, slope):
    """The gradient ``g`` of the activation's output as its input's, at that input
    ``value``: as it is, 0 where the activation passes none, or times the slope."""
    if activation == NO_ACTIVATION:
        return g
    if activation == RELU6:
        return _F(0.0) if value <= 0 or value >= 6 else g
    if activation == RELU:
        return _F(0.0) if value <= 0 else g
    return g if value > 0 else g * slope


# Batch norm's loops read (N, W) rows, W = C * L: each row holds a sample's C channels of L
# positions side by side. A part takes a run of whole channels [first, last) and goes over it
# a chunk of channels at a time (about ``span`` columns, COLUMN_SPAN): down every row of the
# batch for the chunk's sums (``span`` columns at a time: their sums, 16 KiB, stay in the
# core's first-level cache while the rows stream past, whatever the map size), then the
# chunk's per-channel coefficients, then down the rows again for the output, which finds the
# chunk's rows still in the core's cache (the second pass had read them from memory). The
# loops read per-column coefficients (``_spread``), so that rows of one position a channel,
# a dense layer's batch norm, vectorise; maps go a channel at a time instead where that
# reads faster (``_by_channel``).
COLUMN_SPAN = 4096
# the rows of a batch norm's per-channel coefficients (5, C), which its backward reuses:
# y = (x - shift) * scale + offset, scale = weight * inv_std, and gap = mean - shift
SHIFT, SCALE, OFFSET, INV_STD, GAP = range(5)
# the rows of its backward's per-channel results (4, C): dweight, dbias, and the two training
# terms of dx = g * scale + (x - shift) * row_scale + row_offset
D_WEIGHT, D_BIAS, ROW_SCALE, ROW_OFFSET = range(4)


@_inline
def _spread(values, index, first, last, positions, out):
    """out[(c - first) * positions + l] = values[index, c] for channels [first, last)."""
    for c in range(first, last):
        value = values[index, c]
        at = (c - first) * positions
        run = out[at:at + positions]  # a slice: indexed by a signed ``at + position``, the
        for position in range(positions):  # stores were a vector scatter
            run[position] = value


@_inline
def _chunks(rows, channels, span):
    """(samples, positions a channel, values a channel, channels a chunk) of (N, C * L)
    rows: whole channels up to ``span`` columns a chunk, or one."""
    count, width = rows.shape
    positions = width // channels
    return count, positions, count * positions, max(1, span // positions)


@_inline
def _fold(column_sums, begin, end, positions, totals, index):
    """Add the float32 sums of columns [begin, end) to their channels' float64
    totals[index, c]."""
    c = begin // positions
    while c * positions < end:
        low, high = max(begin, c * positions), min(end, (c + 1) * positions)
        part = column_sums[low - begin:high - begin]  # a loop over a slice vectorises
        total = 0.0
        for j in range(part.size):
            total += np.float64(part[j])
        totals[index, c] += total
        c += 1


# from this many positions a channel, batch norm's loops go a channel at a time, down its
# run of positions in each sample with the channel's coefficients as scalars and float64
# sums: the chunks' per-column coefficients (``_spread``) and float32 column sums pay where
# runs are short (a dense layer's are one position), and over long ones cost passes of
# their own. Forward and backward on one core: 96 channels of 32x32 at batch 1 293 -> 31
# us, 32 of 16x16 at batch 32 190 -> 97, 16 of 32x32 at batch 64 699 -> 336, 64 of 8x8 at
# batch 8 30 -> 19; from 16 positions the chunks stayed faster below 64 (32 channels of 7x7
# at batch 64: 59 against 94 a channel at a time). Runs shorter than BY_CHANNEL_LONG_RUN
# go a channel at a time up to BY_CHANNEL_MOST_SAMPLES samples: a channel's many short runs
# far apart read slower than the chunks' long rows (on both cores, 192 channels of 8x8 at
# batch 128: 0.78-1.14 ms against 1.11-1.33 a channel at a time; below, the channels' way
# stays faster: 64 of 8x8 at batch 32 79-84 against 69-76 us (113 once), 64 of 12x12 at
# batch 64 258-282 against 201-205 (273 once))
BY_CHANNEL_MIN_POSITIONS = 64
BY_CHANNEL_LONG_RUN = 256
BY_CHANNEL_MOST_SAMPLES = 64


@_inline
def _by_channel(count, positions):
    """Whether batch norm's loops over (count, C * positions) rows go a channel at a time."""
    return positions >= BY_CHANNEL_LONG_RUN or (
        positions >= BY_CHANNEL_MIN_POSITIONS and count <= BY_CHANNEL_MOST_SAMPLES)


@_inline
def _first_sample_mean(rows, c, positions):
    """Channel c's mean over the first sample (float64): the shift its statistics are
    taken about."""
    first_sample = rows[0, c * positions:(c + 1) * positions]
    total = 0.0
    for position in range(first_sample.size):
        total += np.float64(first_sample[position])
    return total / positions


@_inline
def _set_coefficients(c, total, total_squares, values, weight, bias, eps, coefficients,
                      moments):
    """Channel c's moments (mean - shift, biased variance) and coefficients from the float64
    sums of its values less the shift and of their squares."""
    mean_offset = total / values
    variance = max(total_squares / values - mean_offset * mean_offset, 0.0)
    moments[0, c], moments[1, c] = mean_offset, variance
    coefficients[GAP, c] = mean_offset
    coefficients[INV_STD, c] = 1.0 / np.sqrt(variance + eps)
    coefficients[SCALE, c] = coefficients[INV_STD, c] * weight
    coefficients[OFFSET, c] = bias - coefficients[GAP, c] * coefficients[SCALE, c]


@_inline
def _set_gradient_terms(c, sum_dy, sum_dy_centred, values, train, coefficients, results):
    """Channel c's dweight, dbias and dx's two training terms from the float64 sums of g and
    of g * (x - shift)."""
    scale, inv_std, gap = coefficients[SCALE, c], coefficients[INV_STD, c], \
        coefficients[GAP, c]
    sum_dy_x_hat = (sum_dy_centred - gap * sum_dy) * inv_std
    results[D_WEIGHT, c] = sum_dy_x_hat
    results[D_BIAS, c] = sum_dy
    # in training the batch mean and variance depend on every x: two more terms
    row_scale = -scale * inv_std * sum_dy_x_hat / values if train else 0.0
    results[ROW_SCALE, c] = row_scale
    results[ROW_OFFSET, c] = -scale * sum_dy / values - row_scale * gap if train else 0.0


@_inline
def _channel_statistics(rows, c, positions, weight, bias, eps, coefficients, moments):
    """Channel c's batch statistics into ``moments`` and its coefficients, as
    ``batch_norm_forward``'s chunks make them: about the first sample's mean, in float64."""
    coefficients[SHIFT, c] = _first_sample_mean(rows, c, positions)
    shift = coefficients[SHIFT, c]
    total = 0.0
    total_squares = 0.0
    for i in range(rows.shape[0]):
        run = rows[i, c * positions:(c + 1) * positions]
        for j in range(run.size):
            centred = np.float64(run[j] - shift)
            total += centred
            total_squares += centred * centred
    _set_coefficients(c, total, total_squares, rows.shape[0] * positions, weight, bias, eps,
                      coefficients, moments)


@_inline
def _normalise_channel(rows, c, positions, coefficients, activation, slope, out):
    """out = the activation of (rows - shift) * scale + offset over channel c."""
    shift, scale, offset = coefficients[SHIFT, c], coefficients[SCALE, c], \
        coefficients[OFFSET, c]
    for i in range(rows.shape[0]):
        run = rows[i, c * positions:(c + 1) * positions]
        target = out[i, c * positions:(c + 1) * positions]
        for j in range(run.size):
            target[j] = _activate((run[j] - shift) * scale + offset, activation, slope)


@_inline
def _channel_gradient(d_out, rows, c, positions, coefficients, train, activation, slope,
                      results, totals, out):
    """``batch_norm_backward`` over channel c."""
    shift, scale, offset = coefficients[SHIFT, c], coefficients[SCALE, c], \
        coefficients[OFFSET, c]
    sum_dy = 0.0
    sum_dy_centred = 0.0
    for i in range(rows.shape[0]):
        dy = d_out[i, c * positions:(c + 1) * positions]
        run = rows[i, c * positions:(c + 1) * positions]
        for j in range(run.size):
            centred = run[j] - shift
            g = _through(dy[j], centred * scale + offset, activation, slope)
            sum_dy += np.float64(g)
            sum_dy_centred += np.float64(g * centred)
    totals[0, c], totals[1, c] = sum_dy, sum_dy_centred
    _set_gradient_terms(c, sum_dy, sum_dy_centred, rows.shape[0] * positions, train,
                        coefficients, results)
    row_scale, row_offset = results[ROW_SCALE, c], results[ROW_OFFSET, c]
    for i in range(rows.shape[0]):
        dy = d_out[i, c * positions:(c + 1) * positions]
        run = rows[i, c * positions:(c + 1) * positions]
        target = out[i, c * positions:(c + 1) * positions]
        for j in range(run.size):
            centred = run[j] - shift
            g = _through(dy[j], centred * scale + offset, activation, slope)
            target[j] = g * scale + centred * row_scale + row_offset


@_reducing
def batch_norm_forward(rows, coefficients, moments, weight, bias, eps, train, activation,
                       slope, out, scratch, span, first, last):
    """out = the activation of (rows - shift) * scale + offset for channels [first, last).
    In training first the batch statistics, about a shift (the first sample's channel mean,
    so that nothing cancels away when the mean is large against the spread): moments (2, C)
    float64 gets each channel's mean - shift and biased variance, and ``coefficients`` (5,
    C) its values from them, ``weight`` and ``bias``; otherwise ``coefficients`` is given.
    ``scratch`` (5, >= the most columns of a chunk): the loops' per-column values."""
    count, positions, values, chunk = _chunks(rows, coefficients.shape[1], span)
    if _by_channel(count, positions):
        for c in range(first, last):
            if train:
                _channel_statistics(rows, c, positions, weight[c], bias[c], eps, coefficients,
                                    moments)
            _normalise_channel(rows, c, positions, coefficients, activation, slope, out)
        return
    shift_columns, scale_columns, offset_columns = scratch[0], scratch[1], scratch[2]
    sums, squares = scratch[3], scratch[4]
    for low in range(first, last, chunk):
        high = min(low + chunk, last)
        columns = (high - low) * positions
        base = low * positions
        if train:
            for c in range(low, high):
                coefficients[SHIFT, c] = _first_sample_mean(rows, c, positions)
                moments[0, c] = 0.0
                moments[1, c] = 0.0
            _spread(coefficients, SHIFT, low, high, positions, shift_columns)
            for begin in range(0, columns, span):
                end = min(begin + span, columns)
                centre, total, total_squares = shift_columns[begin:end], sums[begin:end], \
                    squares[begin:end]
                total[:] = 0
                total_squares[:] = 0
                for i in range(count):
                    row = rows[i, base + begin:base + end]
                    for j in range(row.size):
                        centred = row[j] - centre[j]
                        total[j] += centred
                        total_squares[j] += centred * centred
                _fold(total, base + begin, base + end, positions, moments, 0)
                _fold(total_squares, base + begin, base + end, positions, moments, 1)
            for c in range(low, high):
                _set_coefficients(c, moments[0, c], moments[1, c], values, weight[c], bias[c],
                                  eps, coefficients, moments)
        else:
            _spread(coefficients, SHIFT, low, high, positions, shift_columns)
        _spread(coefficients, SCALE, low, high, positions, scale_columns)
        _spread(coefficients, OFFSET, low, high, positions, offset_columns)
        for i in range(count):
            row, target = rows[i, base:base + columns], out[i, base:base + columns]
            for j in range(columns):
                target[j] = _activate((row[j] - shift_columns[j]) * scale_columns[j]
                                      + offset_columns[j], activation, slope)


@_reducing
def batch_norm_backward(d_out, rows, coefficients, train, activation, slope, results, totals,
                        out, scratch, span, first, last):
    """out = batch norm's dx for channels [first, last), from the forward's ``coefficients``;
    g = d_out where the activation of the forward's output (found again from rows) passes its
    gradient, else 0. totals (2, C) float64 gets the sums of g and of g * (rows - shift),
    ``results`` (4, C) dweight, dbias and dx's training terms from them. ``scratch`` (7, >=
    the most columns of a chunk)."""
    count, positions, values, chunk = _chunks(rows, coefficients.shape[1], span)
    if _by_channel(count, positions):
        for c in range(first, last):
            _channel_gradient(d_out, rows, c, positions, coefficients, train, activation,
                              slope, results, totals, out)
        return
    shift_columns, scale_columns, offset_columns = scratch[0], scratch[1], scratch[2]
    row_scales, row_offsets, sums, products = scratch[3], scratch[4], scratch[5], scratch[6]
    for low in range(first, last, chunk):
        high = min(low + chunk, last)
        columns = (high - low) * positions
        base = low * positions
        _spread(coefficients, SHIFT, low, high, positions, shift_columns)
        _spread(coefficients, SCALE, low, high, positions, scale_columns)
        _spread(coefficients, OFFSET, low, high, positions, offset_columns)
        for c in range(low, high):
            totals[0, c] = 0.0
            totals[1, c] = 0.0
        for begin in range(0, columns, span):
            end = min(begin + span, columns)
            centre, factor, add = shift_columns[begin:end], scale_columns[begin:end], \
                offset_columns[begin:end]
            total, total_products = sums[begin:end], products[begin:end]
            total[:] = 0
            total_products[:] = 0
            for i in range(count):
                dy, row = d_out[i, base + begin:base + end], rows[i, base + begin:base + end]
                for j in range(row.size):
                    centred = row[j] - centre[j]
                    g = _through(dy[j], centred * factor[j] + add[j], activation, slope)
                    total[j] += g
                    total_products[j] += g * centred
            _fold(total, base + begin, base + end, positions, totals, 0)
            _fold(total_products, base + begin, base + end, positions, totals, 1)
        for c in range(low, high):
            _set_gradient_terms(c, totals[0, c], totals[1, c], values, train, coefficients,
                                results)
        _spread(results, ROW_SCALE, low, high, positions, row_scales)
        _spread(results, ROW_OFFSET, low, high, positions, row_offsets)
        for i in range(count):
            dy, row = d_out[i, base:base + columns], rows[i, base:base + columns]
            target = out[i, base:base + columns]
            for j in range(columns):
                centred = row[j] - shift_columns[j]
                factor = scale_columns[j]
                g = _through(dy[j], centred * factor + offset_columns[j], activation, slope)
                target[j] = g * factor + centred * row_scales[j] + row_offsets[j]


@_compile
def exp_in_place(values):
    """values = exp(values) for values <= 0 (``_exp_negative``): attention's probabilities
    made again in its backward's job (its own loops did not vectorise)."""
    for i in range(values.size):
        values[i] = _exp_negative(values[i])


@_compile
def multiply_in_place(values, factors):
    """values *= factors over flat arrays (the scores' gradient times the probabilities)."""
    for i in range(values.size):
        values[i] *= factors[i]


@_compile
def scaled(values, factor, out):
    """out = values * factor over flat arrays (attention's queries, scaled as copied)."""
    for i in range(out.size):
        out[i] = values[i] * factor


@_compile
def multiply(a, b, out):
    """out = a * b over flat arrays (a tile's exponentials times its rows' inverse sums)."""
    for i in range(out.size):
        out[i] = a[i] * b[i]


@_reducing
def dot(a, b):
    """The float32 dot product of two flat arrays (a row of output gradients and its
    output's)."""
    total = _F(0.0)
    for i in range(a.size):
        total += a[i] * b[i]
    return total


@_compile
def add(a, b, out):
    """out = a + b over flat arrays (a residual join: its parts on both cores)."""
    for i in range(out.size):
        out[i] = a[i] + b[i]


@_compile
def add_relu(a, b, out):
    """out = relu(a + b) over flat arrays: a residual join and the relu that alone reads it,
    in one pass (NaN stays NaN, as in torch's relu)."""
    for i in range(out.size):
        out[i] = _activate(a[i] + b[i], RELU, _F(0.0))


@_compile
def fill_rows(vector, out):
    """Every row of ``out`` (rows, n) set to ``vector`` (n,): a dense layer's bias, which its
    product then adds to (BLAS's beta = 1)."""
    for r in range(out.shape[0]):
        out[r] = vector


@_compile
def repeat_rows(rows, row_repeats, column_repeats, out):
    """Nearest up-sampling by whole numbers: row r of ``rows`` (R, W), each value repeated
    ``column_repeats`` times, is rows r * row_repeats to (r + 1) * row_repeats - 1 of
    ``out`` (R * row_repeats, W * column_repeats). NumPy's two gathers, one an axis, took 0.8
    ms over 2 x 32 x 64 x 64 values; this loop 0.18."""
    width = rows.shape[1]
    for r in range(rows.shape[0]):
        first, values = out[r * row_repeats], rows[r]
        if column_repeats == 2:  # the common case, as stores LLVM interleaves in vectors
            for w in range(width):
                first[2 * w] = values[w]
                first[2 * w + 1] = values[w]
        else:
            for w in range(width):
                for j in range(column_repeats):
                    first[w * column_repeats + j] = values[w]
        for i in range(1, row_repeats):
            out[r * row_repeats + i] = first


@_compile
def sum_row_blocks(d_out, row_repeats, column_repeats, out):
    """``repeat_rows``' gradient: each value of ``out`` (R, W) the sum of its block of
    ``d_out`` (R * row_repeats, W * column_repeats), each of the block's rows summed first,
    then the rows in order."""
    width = out.shape[1]
    for r in range(out.shape[0]):
        sums = out[r]
        first = d_out[r * row_repeats]
        if column_repeats == 2:
            for w in range(width):
                sums[w] = first[2 * w] + first[2 * w + 1]
        else:
            for w in range(width):
                total = first[w * column_repeats]
                for j in range(1, column_repeats):
                    total += first[w * column_repeats + j]
                sums[w] = total
        for i in range(1, row_repeats):
            row = d_out[r * row_repeats + i]
            if column_repeats == 2:
                for w in range(width):
                    sums[w] += row[2 * w] + row[2 * w + 1]
            else:
                for w in range(width):
                    total = row[w * column_repeats]
                    for j in range(1, column_repeats):
                        total += row[w * column_repeats + j]
                    sums[w] += total


@_compile
def interpolate(planes, rows, row_weights, columns, column_weights, out):
    """Linear interpolation of ``planes`` (P, H, W) into ``out`` (P, OH, OW): output (i, j)
    mixes the columns columns[:, j] by column_weights[:, j] in the rows rows[:, i], and
    those two by row_weights[:, i], as torch orders it; ``rows`` None: one row (1-D, H 1),
    not mixed (a zero weight times inf would be NaN)."""
    for p in range(planes.shape[0]):
        plane, target = planes[p], out[p]
        for i in range(out.shape[1]):
            top = plane[0 if rows is None else rows[0, i]]
            bottom = plane[0 if rows is None else rows[1, i]]
            line = target[i]
            for j in range(out.shape[2]):
                left, right = columns[0, j], columns[1, j]
                left_weight, right_weight = column_weights[0, j], column_weights[1, j]
                mixed = left_weight * top[left] + right_weight * top[right]
                if rows is not None:
                    mixed = mixed * row_weights[0, i] + (
                        left_weight * bottom[left] + right_weight * bottom[right]) \
                        * row_weights[1, i]
                line[j] = mixed


@_compile
def interpolate_gradient(d_out, rows, row_weights, columns, column_weights, d_planes):
    """``interpolate``'s gradient: each output's share added back to its sources, a plane at
    a time (no two planes share a source, so parts by planes never meet)."""
    for p in range(d_out.shape[0]):
        plane, source = d_planes[p], d_out[p]
        plane[:] = 0
        for i in range(d_out.shape[1]):
            top = plane[0 if rows is None else rows[0, i]]
            bottom = plane[0 if rows is None else rows[1, i]]
            line = source[i]
            for j in range(d_out.shape[2]):
                left, right = columns[0, j], columns[1, j]
                upper = line[j] if rows is None else row_weights[0, i] * line[j]
                top[left] += column_weights[0, j] * upper
                top[right] += column_weights[1, j] * upper
                if rows is not None:
                    lower = row_weights[1, i] * line[j]
                    bottom[left] += column_weights[0, j] * lower
                    bottom[right] += column_weights[1, j] * lower


# the (input, output) channel block ``gather_taps`` goes through at a time: its reads,
# BLOCK rows of BLOCK taps' lines, stay within a few dozen pages
GATHER_BLOCK = 64


@_compile
def gather_taps(weight, taps, out):
    """A transposed convolution's phase weight (``conv_transpose._on_phases``): out[o, c, t]
    = weight[c, o, taps[t]] for weight (C, O, K) and out (O, C, T), by blocks of channels,
    so that the reads, each weight[c, o]'s K taps in one line, are not 16 KB apart one after
    another (a 512 -> 256 4x4 layer's NumPy transposing copy and four gathers took 4.1 ms)."""
    channels, outputs = weight.shape[:2]
    count = taps.size
    for c0 in range(0, channels, GATHER_BLOCK):
        c1 = min(c0 + GATHER_BLOCK, channels)
        for o0 in range(0, outputs, GATHER_BLOCK):
            for o in range(o0, min(o0 + GATHER_BLOCK, outputs)):
                for c in range(c0, c1):
                    line, target = weight[c, o], out[o, c]
                    for t in range(count):
                        target[t] = line[taps[t]]


@_compile
def stride_phases(x, out, first, last):
    """A strided convolution's input by its stride phases (``conv._on_phases``): for planes
    (sample, channel) first..last - 1 of x (N, C, H, W), out[n, i * s_c + j, c] = the rows
    i, i + s_r, ... and columns j, j + s_c, ... of x[n, c], with out (N, s_r * s_c, C, H /
    s_r, W / s_c). NumPy's six-axis transposing copy took 1.2 ms at 32 x 64 x 32 x 32 by 2,
    this loop 0.67 on one core."""
    channels, height, width = x.shape[1:]
    out_height, out_width = out.shape[3:]
    row_stride, column_stride = height // out_height, width // out_width
    for plane in range(first, last):
        n, c = plane // channels, plane % channels
        for r in range(out_height):
            for i in range(row_stride):
                source = x[n, c, r * row_stride + i]
                if column_stride == 2:  # the common case, as loads LLVM de-interleaves
                    even, odd = out[n, 2 * i, c, r], out[n, 2 * i + 1, c, r]
                    for q in range(out_width):
                        even[q] = source[2 * q]
                        odd[q] = source[2 * q + 1]
                else:
                    for j in range(column_stride):
                        target = out[n, i * column_stride + j, c, r]
                        for q in range(out_width):
                            target[q] = source[q * column_stride + j]


@_compile
def spread_windows(columns, out):
    """A transposed convolution's output where its windows tile it (``conv_transpose``):
    ``columns`` (O, K1, K2, N, H, W), each input position's window, to ``out`` (N, O, H,
    K1, W, K2), each window's block in place (NumPy's six-axis transposing copy took 0.40
    ms at 32 x 2 x 2 x 2 x 32 x 32). With N = 1 and O the planes, a pixel shuffle
    (``resample``)."""
    outputs, window_rows, window_columns, samples, height, width = columns.shape
    for n in range(samples):
        for o in range(outputs):
            for h in range(height):
                for i in range(window_rows):
                    line = out[n, o, h, i]
                    if window_columns == 2:  # the common case, as stores LLVM interleaves
                        first, second = columns[o, i, 0, n, h], columns[o, i, 1, n, h]
                        for w in range(width):
                            line[w, 0] = first[w]
                            line[w, 1] = second[w]
                    else:
                        for j in range(window_columns):
                            source = columns[o, i, j, n, h]
                            for w in range(width):
                                line[w, j] = source[w]


@_compile
def gather_windows(d_out, d_columns):
    """``spread_windows``' inverse, for the gradients: ``d_out`` (N, O, H, K1, W, K2) to
    ``d_columns`` (O, K1, K2, N, H, W)."""
    outputs, window_rows, window_columns, samples, height, width = d_columns.shape
    for n in range(samples):
        for o in range(outputs):
            for h in range(height):
                for i in range(window_rows):
                    line = d_out[n, o, h, i]
                    if window_columns == 2:
                        first, second = d_columns[o, i, 0, n, h], d_columns[o, i, 1, n, h]
                        for w in range(width):
                            first[w] = line[w, 0]
                            second[w] = line[w, 1]
                    else:
                        for j in range(window_columns):
                            target = d_columns[o, i, j, n, h]
                            for w in range(width):
                                target[w] = line[w, j]


@_compile
def select(mask, a, b, out):
    """out = a where mask else b over flat arrays (``where`` of same-shape operands): NumPy's
    np.where over a mask of random values took 3.7 ns a value here."""
    for i in range(out.size):
        out[i] = a[i] if mask[i] else b[i]


@_compile
def select_gradient(mask, d_out, d_a, d_b):
    """``select``'s gradients in one pass: d_a = d_out where mask else 0, d_b the rest."""
    for i in range(d_out.size):
        g = d_out[i]
        chosen = mask[i]
        d_a[i] = g if chosen else _F(0.0)
        d_b[i] = _F(0.0) if chosen else g


@_compile
def relu(x, out, slope, with_slope):
    """out = relu(x) over flat arrays (NaN stays NaN). It writes no slope, whatever
    ``with_slope`` says: its output is its mask (``relu_gradient``); the arguments are the
    activations' (``parallel.activation``)."""
    for i in range(x.size):
        out[i] = _activate(x[i], RELU, _F(0.0))


@_compile
def relu_gradient(d_out, out, d_in):
    """d_in = d_out where the relu's output ``out`` passed its input, else 0 (torch's test
    is out <= 0, so NaN passes the gradient)."""
    for i in range(out.size):
        d_in[i] = _through(d_out[i], out[i], RELU, _F(0.0))


@_compile
def channel_bias(rows, bias, activation, slope, first, last):
    """rows[r] = the activation of rows[r] + bias[r % C] in place, for rows first..last - 1 of
    an (N * C, positions) map: a convolution's bias, and the relu that alone reads its
    output, in one pass."""
    channels = bias.size
    for r in range(first, last):
        add, row = bias[r % channels], rows[r]
        for j in range(row.size):
            row[j] = _activate(row[j] + add, activation, slope)


@_reducing
def channel_bias_gradient(d_out, out, activation, slope, d_in, row_sums, first, last):
    """For rows first..last - 1: d_in = d_out where the activation let the gradient through
    at its output ``out``, else 0, and row_sums[r] the sum of d_in's row r (the bias
    gradient, summed over the samples afterwards)."""
    for r in range(first, last):
        dy, row, target = d_out[r], out[r], d_in[r]
        total = _F(0.0)
        for j in range(row.size):
            g = _through(dy[j], row[j], activation, slope)
            target[j] = g
            total += g
        row_sums[r] = total


def warm_up() -> None:
    """Run every loop once on a few float32 values: loads its compiled code (compiles it, on
    a machine's first run) and starts numba's runtime, which takes about 60 MB and 0.3 s
    the first time any loop runs in a process. Benchmarks call it so that what they measure
    is training steps, as they measure torch's steps after its import."""
    flat = np.ones(4, _F)
    for kernel in (gelu, gelu_tanh, silu, sigmoid, tanh_activation):
        kernel(flat, np.empty_like(flat), np.empty_like(flat), True)
    for kernel in (leaky_relu, elu):
        kernel(flat, np.empty_like(flat), np.empty_like(flat), True, _F(0.5))
    rows, column = np.ones((2, 4), _F), np.ones(4, _F)
    inverse = np.empty(2, _F)
    affine = rows[:1]  # (k, size) weights
    layer_norm_forward(rows, affine, affine, True, 1e-5, np.empty_like(rows),
                       np.empty_like(rows), inverse)
    layer_norm_backward(rows, rows, affine, True, inverse, np.empty_like(rows),
                        np.empty_like(affine), np.empty_like(affine))
    rms_norm_forward(rows, column, True, 1e-5, np.empty_like(rows), np.empty_like(rows),
                     inverse)
    rms_norm_backward(rows, rows, column, True, inverse, np.empty_like(rows),
                      np.empty_like(column))
    exp_rows(rows, np.empty_like(rows), inverse, np.empty_like(inverse))
    for logarithm in (False, True):
        softmax_rows(rows, np.empty_like(rows), logarithm)
        softmax_rows_gradient(rows, rows, np.empty_like(rows), logarithm)
    groups = rows.reshape(2, 2, 2)
    group_norm_forward(groups, affine, affine, 1e-5, np.empty_like(groups), inverse,
                       np.empty_like(inverse))
    group_norm_backward(groups, groups, affine, inverse, inverse, np.empty_like(groups),
                        np.empty((2, 2), _F), np.empty((2, 2), _F))
    ends, halves = np.zeros((2, 2), np.int64), np.full((2, 2), 0.5, _F)
    for table in (ends, None):
        interpolate(groups, table, halves, ends, halves, np.empty_like(groups))
        interpolate_gradient(groups, table, halves, ends, halves, np.empty_like(groups))
    gather_taps(groups, np.zeros(2, np.int64), np.empty((2, 2, 2), _F))
    exp_columns(np.ones((2, 4), _F), column, np.empty_like(column), True, 0, 4)
    add_rows(np.zeros(2, np.int64), rows, np.zeros_like(rows))
    one = _F(1.0)
    adam_update(np.zeros(4, _F), flat, np.zeros(4, _F), np.zeros(4, _F), flat, False, one, one,
                one, one, one, one, one)
    coefficients, pair = np.ones((5, 2), _F), column[:2]
    batch_norm_forward(rows, coefficients, np.empty((2, 2)), pair, pair, 1e-5, True, RELU, one,
                       np.empty_like(rows), np.empty((5, 4), _F), COLUMN_SPAN, 0, 2)
    batch_norm_backward(rows, rows, coefficients, True, RELU, one, np.empty((4, 2), _F),
                        np.empty((2, 2)), np.empty_like(rows), np.empty((7, 4), _F),
                        COLUMN_SPAN, 0, 2)
    add(flat, flat, np.empty_like(flat))
    exp_in_place(-flat)
    multiply_in_place(np.ones(4, _F), flat)
    scaled(flat, _F(2.0), np.empty_like(flat))
    multiply(flat, flat, np.empty_like(flat))
    dot(flat, flat)
    add_relu(flat, flat, np.empty_like(flat))
    relu(flat, np.empty_like(flat), flat, False)
    choices = np.zeros(4, np.bool_)
    select(choices, flat, flat, np.empty_like(flat))
    select_gradient(choices, flat, np.empty_like(flat), np.empty_like(flat))
    fill_rows(column, np.empty((2, 4), _F))
    repeat_rows(rows, 2, 2, np.empty((4, 8), _F))
    sum_row_blocks(np.ones((4, 8), _F), 2, 2, np.empty_like(rows))
    for stride in (2, 3):
        stride_phases(np.ones((1, 1, stride, stride), _F),
                      np.empty((1, stride * stride, 1, 1, 1), _F), 0, 1)
    windows = np.ones((1, 1, 2, 1, 1, 2), _F)
    spread_windows(windows, np.empty((1, 1, 1, 1, 2, 2), _F))
    gather_windows(np.ones((1, 1, 1, 1, 2, 2), _F), windows)
    relu_gradient(flat, flat, np.empty_like(flat))
    channel_bias(np.ones((2, 4), _F), column[:2], RELU, one, 0, 2)
    channel_bias_gradient(rows, rows, RELU, one, np.empty_like(rows), np.empty_like(inverse), 0,
                          2)
