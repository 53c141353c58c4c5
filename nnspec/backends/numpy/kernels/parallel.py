"""``fused``'s loops split across the cores, each part a job on OpenBLAS's workers
(``workers``). Every function here has its loop's arguments and meaning; short loops (see
``ACTIVATION_MIN_VALUES``), or where there is one part, run as they are.

Each loop is split so that every output value is computed as the whole loop would compute
it: element-wise loops by runs of values, row loops (cross-entropy's softmax, layer norm) by
rows, and batch norm's column sums by columns. The results are the whole loop's to the bit,
but for sums along a row, which the jobs' compiled copy of a loop may vectorise in another
order (float32 rounding apart; tests/numpy/test_parallel.py), and for layer norm's weight
gradients, whose parts' row sums are added afterwards (one float32 rounding more).

Attention's column softmax stays whole: its blocks, at most 2^17 scores, measured slower
split, and attention splits its heads between the cores instead (``workers.in_parts``).
"""

from __future__ import annotations

import numba
import numpy as np

from . import fused, workers
from .blas import address
from .workers import doubles, floats, number, part_range

_F = np.float32


@numba.njit(inline="always")
def _flat_part(args, part):
    """An activation job's part of its flat arrays: params (parts, count, x, out, slope,
    with_slope); the slope is empty without ``with_slope``."""
    params = workers.parameters(args, 6)
    count = params[1]
    start, end = part_range(count, part, params[0], 16)
    with_slope = params[5] != 0
    x = floats(params, 2, (count,))
    out = floats(params, 3, (count,))
    slope = floats(params, 4, (count if with_slope else 0,))
    return (x[start:end], out[start:end], slope[start:end] if with_slope else slope,
            with_slope)


# one job per activation, each a function of its own: numba caches no job made in a closure
# (it compiled such jobs again in every process, adding to the cache each time)
@workers.Task
def _gelu_job(args, range_m, range_n, sa, sb, part):
    fused.gelu(*_flat_part(args, part))
    return 0


@workers.Task
def _gelu_tanh_job(args, range_m, range_n, sa, sb, part):
    fused.gelu_tanh(*_flat_part(args, part))
    return 0


@workers.Task
def _silu_job(args, range_m, range_n, sa, sb, part):
    fused.silu(*_flat_part(args, part))
    return 0


@workers.Task
def _sigmoid_job(args, range_m, range_n, sa, sb, part):
    fused.sigmoid(*_flat_part(args, part))
    return 0


@workers.Task
def _tanh_job(args, range_m, range_n, sa, sb, part):
    fused.tanh_activation(*_flat_part(args, part))
    return 0


@numba.njit(inline="always")
def _coefficient(args):
    """A parametrised activation's coefficient, its seventh parameter."""
    return _F(number(workers.parameters(args, 7), 6))


@workers.Task
def _leaky_relu_job(args, range_m, range_n, sa, sb, part):
    fused.leaky_relu(*_flat_part(args, part), _coefficient(args))
    return 0


@workers.Task
def _elu_job(args, range_m, range_n, sa, sb, part):
    fused.elu(*_flat_part(args, part), _coefficient(args))
    return 0


@workers.Task
def _relu_job(args, range_m, range_n, sa, sb, part):
    fused.relu(*_flat_part(args, part))
    return 0


_ACTIVATION_JOBS = {fused.gelu: _gelu_job, fused.gelu_tanh: _gelu_tanh_job,
                    fused.silu: _silu_job, fused.sigmoid: _sigmoid_job,
                    fused.tanh_activation: _tanh_job, fused.leaky_relu: _leaky_relu_job,
                    fused.elu: _elu_job, fused.relu: _relu_job}


# values from which a loop is split: a job's dispatch costs about 8 us, so an activation
# (about 1 ns a value on one core) pays from 2^15 values and the loops that mostly move
# memory (norms, softmax, batch norm, Adam: 0.15-0.6 ns a value) from 2^17. At 2^18 values
# on two cores (Intel Xeon): GELU with its slope 289 -> 177 us, layer norm forward 155 ->
# 77, backward 174 -> 145, the softmax's exp 100 -> 68, Adam 170 -> 117
ACTIVATION_MIN_VALUES = 1 << 15
MEMORY_MIN_VALUES = 1 << 17


def _split(count: int, *arrays, least: int = MEMORY_MIN_VALUES) -> int:
    """How many parts a loop over ``count`` values takes: one when it is shorter than
    ``least``, or when an array is not C-ordered float32 (the jobs see their arrays so)."""
    if count < least or not all(a.dtype == _F and a.flags.c_contiguous for a in arrays):
        return 1
    return workers.parts()


def _params(*values) -> np.ndarray:
    """A job's parameters: arrays as their addresses, floats as their float64 bits, the
    rest (counts, flags) as they are."""
    return np.array([address(value) if isinstance(value, np.ndarray)
                     else workers.float_bits(value) if isinstance(value, float | np.floating)
                     else int(value) for value in values], np.int64)


# the slope's stand-in when there is none: not ``out``, as arrays that alias are not vectorised
_NO_SLOPE = np.empty(0, _F)


def activation(kernel, x, out, slope, with_slope, *coefficient):
    """``kernel`` (an activation's loop in ``fused``) over flat float32 arrays; ``slope`` is
    None unless ``with_slope``; ``coefficient`` is leaky_relu's slope or elu's alpha."""
    slope = slope if with_slope else _NO_SLOPE
    parts = _split(x.size, x, out, slope, least=ACTIVATION_MIN_VALUES)
    if parts == 1:
        kernel(x, out, slope, with_slope, *(_F(c) for c in coefficient))
        return
    workers.run(_ACTIVATION_JOBS[kernel],
                _params(parts, x.size, x, out, slope, with_slope, *map(float, coefficient)))


@numba.njit(inline="always")
def _three_runs(args, part):
    """An element-wise job's part of its three flat arrays: params (parts, count, first,
    second, third)."""
    params = workers.parameters(args, 5)
    count = params[1]
    start, end = part_range(count, part, params[0], 16)
    return (floats(params, 2, (count,))[start:end], floats(params, 3, (count,))[start:end],
            floats(params, 4, (count,))[start:end])


@workers.Task
def _add_job(args, range_m, range_n, sa, sb, part):
    fused.add(*_three_runs(args, part))
    return 0


@workers.Task
def _add_relu_job(args, range_m, range_n, sa, sb, part):
    fused.add_relu(*_three_runs(args, part))
    return 0


@workers.Task
def _relu_gradient_job(args, range_m, range_n, sa, sb, part):
    fused.relu_gradient(*_three_runs(args, part))
    return 0


def _in_runs(loop, job, first, second, third):
    """``loop`` over three flat float32 arrays, in runs of values (``job`` its parts)."""
    parts = _split(third.size, first, second, third)
    if parts == 1:
        loop(first, second, third)
        return
    workers.run(job, _params(parts, third.size, first, second, third))


FILL_MIN_VALUES = 1 << 19


@workers.Task
def _fill_rows_job(args, range_m, range_n, sa, sb, part):
    """params (parts, rows, width, vector, out)."""
    params = workers.parameters(args, 5)
    rows, width = params[1], params[2]
    start, end = part_range(rows, part, params[0], 1)
    fused.fill_rows(floats(params, 3, (width,)), floats(params, 4, (rows, width))[start:end])
    return 0


def fill_rows(vector, out):
    """``fused.fill_rows``, its rows in parts from FILL_MIN_VALUES (a 2048 x 512 layer's bias
    took 0.15 ms on one core, a seventh of its forward: forward 1.05 -> 0.99 ms, 4096 x 1024
    7.3 -> 6.9; at 2048 x 128 the job's dispatch cost what it saved)."""
    parts = _split(out.size, vector, out, least=FILL_MIN_VALUES)
    if parts == 1:
        out[...] = vector  # (NumPy's broadcast beats the loop's row slices when short)
        return
    workers.run(_fill_rows_job, _params(parts, *out.shape, vector, out))


@numba.njit(inline="always")
def _row_blocks(args, part):
    """An up-sampling job's part: params (parts, rows, width, row repeats, column repeats,
    the rows (rows, width), the repeated rows (rows * row repeats, width * column
    repeats)); its share of the rows and of the repeated rows, and the repeats."""
    params = workers.parameters(args, 7)
    rows, width, row_repeats, column_repeats = params[1], params[2], params[3], params[4]
    start, end = part_range(rows, part, params[0], 1)
    small = floats(params, 5, (rows, width))[start:end]
    large = floats(params, 6, (rows * row_repeats, width * column_repeats))[
        start * row_repeats:end * row_repeats]
    return small, large, row_repeats, column_repeats


@workers.Task
def _repeat_rows_job(args, range_m, range_n, sa, sb, part):
    rows, repeated, row_repeats, column_repeats = _row_blocks(args, part)
    fused.repeat_rows(rows, row_repeats, column_repeats, repeated)
    return 0


@workers.Task
def _sum_row_blocks_job(args, range_m, range_n, sa, sb, part):
    sums, d_out, row_repeats, column_repeats = _row_blocks(args, part)
    fused.sum_row_blocks(d_out, row_repeats, column_repeats, sums)
    return 0


def repeat_rows(rows, row_repeats, column_repeats, out):
    """``fused.repeat_rows``, its rows in parts."""
    _in_row_blocks(fused.repeat_rows, _repeat_rows_job, rows, out, rows, out, row_repeats,
                   column_repeats)


def sum_row_blocks(d_out, row_repeats, column_repeats, out):
    """``fused.sum_row_blocks``, its rows in parts."""
    _in_row_blocks(fused.sum_row_blocks, _sum_row_blocks_job, d_out, out, out, d_out,
                   row_repeats, column_repeats)


def _in_row_blocks(loop, job, source, target, rows, repeated, row_repeats, column_repeats):
    """``loop(source, row_repeats, column_repeats, target)``, ``rows`` (R, W) and their
    ``repeated`` ones (R * row_repeats, W * column_repeats) split by rows (``_row_blocks``)
    from MEMORY_MIN_VALUES."""
    parts = _split(repeated.size, rows, repeated)
    if parts == 1:
        loop(source, row_repeats, column_repeats, target)
        return
    workers.run(job, _params(parts, *rows.shape, row_repeats, column_repeats, rows, repeated))


@numba.njit(inline="always")
def _interpolation_part(args, part):
    """An interpolation job's part: params (parts, planes, height, width, out height, out
    width, planes (P, H, W), rows (2, OH) int64, row weights (2, OH), columns (2, OW) int64,
    column weights (2, OW), out (P, OH, OW), whether the rows are mixed); its share of the
    planes and the tables."""
    params = workers.parameters(args, 13)
    planes, height, width, out_height, out_width = params[1], params[2], params[3], \
        params[4], params[5]
    start, end = part_range(planes, part, params[0], 1)
    return (floats(params, 6, (planes, height, width))[start:end],
            workers.integers(params, 7, 2 * out_height).reshape((2, out_height)),
            floats(params, 8, (2, out_height)),
            workers.integers(params, 9, 2 * out_width).reshape((2, out_width)),
            floats(params, 10, (2, out_width)),
            floats(params, 11, (planes, out_height, out_width))[start:end], params[12] != 0)


@workers.Task
def _interpolate_job(args, range_m, range_n, sa, sb, part):
    planes, rows, row_weights, columns, column_weights, out, mixed = \
        _interpolation_part(args, part)
    if mixed:
        fused.interpolate(planes, rows, row_weights, columns, column_weights, out)
    else:
        fused.interpolate(planes, None, row_weights, columns, column_weights, out)
    return 0


@workers.Task
def _interpolate_gradient_job(args, range_m, range_n, sa, sb, part):
    d_planes, rows, row_weights, columns, column_weights, d_out, mixed = \
        _interpolation_part(args, part)
    if mixed:
        fused.interpolate_gradient(d_out, rows, row_weights, columns, column_weights, d_planes)
    else:
        fused.interpolate_gradient(d_out, None, row_weights, columns, column_weights, d_planes)
    return 0


def interpolate(planes, rows, row_weights, columns, column_weights, out):
    """``fused.interpolate``, its planes in parts."""
    _by_planes(fused.interpolate, _interpolate_job, planes, out,
               (planes, rows, row_weights, columns, column_weights, out))


def interpolate_gradient(d_out, rows, row_weights, columns, column_weights, d_planes):
    """``fused.interpolate_gradient``, its planes in parts."""
    _by_planes(fused.interpolate_gradient, _interpolate_gradient_job, d_planes, d_out,
               (d_out, rows, row_weights, columns, column_weights, d_planes))


def _by_planes(loop, job, planes, out, arguments):
    """``loop(*arguments)`` (one side, the tables, the other), split by the planes (P, H, W)
    and their interpolations ``out`` (P, OH, OW) from MEMORY_MIN_VALUES; rows None for one
    row not mixed (1-D: the jobs are told so, and read the columns' table in its place)."""
    _, rows, row_weights, columns, column_weights, _ = arguments
    parts = min(_split(out.size, planes, row_weights, column_weights, out), len(planes))
    if parts <= 1:
        loop(*arguments)
        return
    workers.run(job, _params(parts, *planes.shape, *out.shape[1:], planes,
                             columns if rows is None else rows, row_weights, columns,
                             column_weights, out, rows is not None))


def add(a, b, out):
    """``fused.add`` over flat float32 arrays, in runs of values."""
    _in_runs(fused.add, _add_job, a, b, out)


def add_relu(a, b, out):
    """``fused.add_relu`` over flat float32 arrays, in runs of values."""
    _in_runs(fused.add_relu, _add_relu_job, a, b, out)


def relu_gradient(d_out, out, d_in):
    """``fused.relu_gradient`` over flat float32 arrays, in runs of values."""
    _in_runs(fused.relu_gradient, _relu_gradient_job, d_out, out, d_in)


@workers.Task
def _silu_mul_job(args, range_m, range_n, sa, sb, part):
    fused.silu_mul(*_three_runs(args, part))
    return 0


def silu_mul(a, b, out):
    """``fused.silu_mul`` over flat float32 arrays, in runs of values."""
    _in_runs(fused.silu_mul, _silu_mul_job, a, b, out)


@workers.Task
def _silu_mul_gradient_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, d_out, a, b, d_a, d_b)."""
    params = workers.parameters(args, 7)
    count = params[1]
    start, end = part_range(count, part, params[0], 16)
    fused.silu_mul_gradient(floats(params, 2, (count,))[start:end],
                            floats(params, 3, (count,))[start:end],
                            floats(params, 4, (count,))[start:end],
                            floats(params, 5, (count,))[start:end],
                            floats(params, 6, (count,))[start:end])
    return 0


def silu_mul_gradient(d_out, a, b, d_a, d_b):
    """``fused.silu_mul_gradient`` over flat float32 arrays, in runs of values."""
    parts = _split(a.size, d_out, a, b, d_a, d_b, least=ACTIVATION_MIN_VALUES)
    if parts == 1:
        fused.silu_mul_gradient(d_out, a, b, d_a, d_b)
        return
    workers.run(_silu_mul_gradient_job, _params(parts, a.size, d_out, a, b, d_a, d_b))


@workers.Task
def _layer_norm_forward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, size, k, rows, weight, bias, affine, eps, x_hat, out,
    inv_std); the parts' rows start at multiples of k (weight row i % k)."""
    params = workers.parameters(args, 12)
    count, size, k = params[1], params[2], params[3]
    start, end = part_range(count, part, params[0], k)
    rows = floats(params, 4, (count, size))
    weight = floats(params, 5, (k, size))
    bias = floats(params, 6, (k, size))
    x_hat = floats(params, 9, (count, size))
    out = floats(params, 10, (count, size))
    inv_std = floats(params, 11, (count,))
    fused.layer_norm_forward(rows[start:end], weight, bias, params[7] != 0,
                             number(params, 8), x_hat[start:end], out[start:end],
                             inv_std[start:end])
    return 0


def layer_norm_forward(rows, weight, bias, affine, eps, x_hat, out, inv_std):
    """``fused.layer_norm_forward``, its rows in parts."""
    parts = _split(rows.size, rows, weight, bias, x_hat, out, inv_std)
    if parts == 1:
        fused.layer_norm_forward(rows, weight, bias, affine, eps, x_hat, out, inv_std)
        return
    count, size = rows.shape
    workers.run(_layer_norm_forward_job, _params(
        parts, count, size, len(weight), rows, weight, bias, affine, eps, x_hat, out,
        inv_std))


@workers.Task
def _layer_norm_backward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, size, k, d_out, x_hat, weight, affine, inv_std, d_x,
    d_weight, d_bias); d_weight and d_bias are (parts, k, size), one per part."""
    params = workers.parameters(args, 12)
    parts, count, size, k = params[0], params[1], params[2], params[3]
    start, end = part_range(count, part, parts, k)
    d_out = floats(params, 4, (count, size))
    x_hat = floats(params, 5, (count, size))
    weight = floats(params, 6, (k, size))
    inv_std = floats(params, 8, (count,))
    d_x = floats(params, 9, (count, size))
    d_weight = floats(params, 10, (parts, k, size))
    d_bias = floats(params, 11, (parts, k, size))
    fused.layer_norm_backward(d_out[start:end], x_hat[start:end], weight, params[7] != 0,
                              inv_std[start:end], d_x[start:end], d_weight[part],
                              d_bias[part])
    return 0


def layer_norm_backward(d_out, x_hat, weight, affine, inv_std, d_x, d_weight, d_bias):
    """``fused.layer_norm_backward``, its rows in parts (and the weight gradients' row sums
    in parts, then added)."""
    parts = _split(d_out.size, d_out, x_hat, weight, inv_std, d_x)
    if parts == 1:
        fused.layer_norm_backward(d_out, x_hat, weight, affine, inv_std, d_x, d_weight, d_bias)
        return
    count, size = d_out.shape
    partial_weight = np.empty((parts, *weight.shape), _F)
    partial_bias = np.empty((parts, *weight.shape), _F)
    workers.run(_layer_norm_backward_job, _params(
        parts, count, size, len(weight), d_out, x_hat, weight, affine, inv_std, d_x,
        partial_weight, partial_bias))
    if affine:
        np.sum(partial_weight, axis=0, out=d_weight)
        np.sum(partial_bias, axis=0, out=d_bias)


@workers.Task
def _group_norm_forward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, rows, channels, positions, groups, x, weight, bias, eps, out, means,
    inv_stds)."""
    params = workers.parameters(args, 12)
    rows, channels, positions, groups = params[1], params[2], params[3], params[4]
    start, end = part_range(rows, part, params[0], 1)
    shape = (rows, channels, positions)
    fused.group_norm_forward(floats(params, 5, shape)[start:end],
                             floats(params, 6, (groups, channels)),
                             floats(params, 7, (groups, channels)), number(params, 8),
                             floats(params, 9, shape)[start:end],
                             floats(params, 10, (rows,))[start:end],
                             floats(params, 11, (rows,))[start:end])
    return 0


@workers.Task
def _group_norm_backward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, rows, channels, positions, groups, d_out, x, weight, means, inv_stds,
    d_x, d_centred, d_sums)."""
    params = workers.parameters(args, 13)
    rows, channels, positions, groups = params[1], params[2], params[3], params[4]
    start, end = part_range(rows, part, params[0], 1)
    shape = (rows, channels, positions)
    fused.group_norm_backward(floats(params, 5, shape)[start:end],
                              floats(params, 6, shape)[start:end],
                              floats(params, 7, (groups, channels)),
                              floats(params, 8, (rows,))[start:end],
                              floats(params, 9, (rows,))[start:end],
                              floats(params, 10, shape)[start:end],
                              floats(params, 11, (rows, channels))[start:end],
                              floats(params, 12, (rows, channels))[start:end])
    return 0


def group_norm_forward(x, weight, bias, eps, out, means, inv_stds):
    """``fused.group_norm_forward``, its rows (sample, group) in parts."""
    parts = min(_split(x.size, x, weight, bias, out, means, inv_stds), len(x))
    if parts <= 1:
        fused.group_norm_forward(x, weight, bias, eps, out, means, inv_stds)
        return
    workers.run(_group_norm_forward_job, _params(parts, *x.shape, len(weight), x, weight, bias,
                                                 float(eps), out, means, inv_stds))


def group_norm_backward(d_out, x, weight, means, inv_stds, d_x, d_centred, d_sums):
    """``fused.group_norm_backward``, its rows (sample, group) in parts."""
    parts = min(_split(x.size, d_out, x, weight, means, inv_stds, d_x, d_centred, d_sums),
                len(x))
    if parts <= 1:
        fused.group_norm_backward(d_out, x, weight, means, inv_stds, d_x, d_centred, d_sums)
        return
    workers.run(_group_norm_backward_job, _params(parts, *x.shape, len(weight), d_out, x,
                                                  weight, means, inv_stds, d_x, d_centred,
                                                  d_sums))


@workers.Task
def _exp_rows_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, size, rows, out, peaks, totals)."""
    params = workers.parameters(args, 7)
    count, size = params[1], params[2]
    start, end = part_range(count, part, params[0], 1)
    rows = floats(params, 3, (count, size))
    out = floats(params, 4, (count, size))
    peaks = floats(params, 5, (count,))
    totals = floats(params, 6, (count,))
    fused.exp_rows(rows[start:end], out[start:end], peaks[start:end], totals[start:end])
    return 0


def exp_rows(rows, out, peaks, totals):
    """``fused.exp_rows``, its rows in parts."""
    parts = _split(rows.size, rows, out, peaks, totals)
    if parts == 1:
        fused.exp_rows(rows, out, peaks, totals)
        return
    count, size = rows.shape
    workers.run(_exp_rows_job, _params(parts, count, size, rows, out, peaks, totals))


@workers.Task
def _softmax_rows_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, size, rows, out, logarithm)."""
    params = workers.parameters(args, 6)
    start, end = part_range(params[1], part, params[0], 1)
    shape = (params[1], params[2])
    fused.softmax_rows(floats(params, 3, shape)[start:end], floats(params, 4, shape)[start:end],
                       params[5] != 0)
    return 0


@workers.Task
def _softmax_rows_gradient_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, size, out, d_out, d_rows, logarithm)."""
    params = workers.parameters(args, 7)
    start, end = part_range(params[1], part, params[0], 1)
    shape = (params[1], params[2])
    fused.softmax_rows_gradient(floats(params, 3, shape)[start:end],
                                floats(params, 4, shape)[start:end],
                                floats(params, 5, shape)[start:end], params[6] != 0)
    return 0


def softmax_rows(rows, out, logarithm):
    """``fused.softmax_rows``, its rows in parts."""
    parts = _split(rows.size, rows, out)
    if parts == 1:
        fused.softmax_rows(rows, out, logarithm)
        return
    workers.run(_softmax_rows_job, _params(parts, *rows.shape, rows, out, logarithm))


def softmax_rows_gradient(out, d_out, d_rows, logarithm):
    """``fused.softmax_rows_gradient``, its rows in parts."""
    parts = _split(out.size, out, d_out, d_rows)
    if parts == 1:
        fused.softmax_rows_gradient(out, d_out, d_rows, logarithm)
        return
    workers.run(_softmax_rows_gradient_job,
                _params(parts, *out.shape, out, d_out, d_rows, logarithm))


@workers.Task
def _rotate_halves_job(args, range_m, range_n, sa, sb, part):
    """params (parts, rows, width, x, its row step, out, its row step, cos, sin, steps,
    half, heads); the parts' rows in runs."""
    params = workers.parameters(args, 12)
    rows, width, steps, half = params[1], params[2], params[9], params[10]
    start, end = part_range(rows, part, params[0], 1)
    x = floats(params, 3, (rows, params[4]))[:, :width]
    out = floats(params, 5, (rows, params[6]))[:, :width]
    fused.rotate_halves(x, out, floats(params, 7, (steps, half)),
                        floats(params, 8, (steps, half)), params[11], start, end)
    return 0


def rotate_halves(x, out, cos, sin, heads):
    """``fused.rotate_halves`` of every row, in parts; ``x`` and ``out`` float32 with
    unit-stride rows, ``cos`` and ``sin`` C-ordered."""
    rows, width = x.shape
    parts = _split(x.size, cos, sin)
    if parts == 1 or x.strides[1] != 4 or out.strides[1] != 4 or x.dtype != _F or \
            out.dtype != _F:
        fused.rotate_halves(x, out, cos, sin, heads, 0, rows)
        return
    workers.run(_rotate_halves_job, _params(parts, rows, width, x, x.strides[0] // 4, out,
                                            out.strides[0] // 4, cos, sin, *cos.shape, heads))


@workers.Task
def _adam_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, data, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, and
    the float32 scalars as float64: decay, one_minus_beta1, beta2, one_minus_beta2,
    bias_correction2_sqrt, eps, step_size)."""
    params = workers.parameters(args, 15)
    count = params[1]
    start, end = part_range(count, part, params[0], 16)
    data = floats(params, 2, (count,))
    grad = floats(params, 3, (count,))
    exp_avg = floats(params, 4, (count,))
    exp_avg_sq = floats(params, 5, (count,))
    amsgrad = params[7] != 0
    highest = floats(params, 6, (count if amsgrad else 0,))
    fused.adam_update(data[start:end], grad[start:end], exp_avg[start:end],
                      exp_avg_sq[start:end], highest[start:end] if amsgrad else highest,
                      amsgrad, _F(number(params, 8)), _F(number(params, 9)),
                      _F(number(params, 10)), _F(number(params, 11)), _F(number(params, 12)),
                      _F(number(params, 13)), _F(number(params, 14)))
    return 0


def adam_update(data, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, *scalars):
    """``fused.adam_update`` over float32 arrays, in runs of values."""
    parts = _split(data.size, data, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    if parts == 1:
        fused.adam_update(data, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, *scalars)
        return
    workers.run(_adam_job, _params(
        parts, data.size, data, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, *scalars))


@workers.Task
def _sgd_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, data, grad, velocity, momentum on, first step, nesterov, and
    the float32 scalars as float64: momentum, one_minus_dampening, step)."""
    params = workers.parameters(args, 11)
    count = params[1]
    start, end = part_range(count, part, params[0], 16)
    data = floats(params, 2, (count,))
    grad = floats(params, 3, (count,))
    momentum_on = params[5] != 0
    velocity = floats(params, 4, (count if momentum_on else 0,))
    fused.sgd_update(data[start:end], grad[start:end],
                     velocity[start:end] if momentum_on else velocity, momentum_on,
                     params[6] != 0, _F(number(params, 8)), _F(number(params, 9)),
                     params[7] != 0, _F(number(params, 10)))
    return 0


def sgd_update(data, grad, velocity, momentum_on, first, momentum, one_minus_dampening,
               nesterov, step):
    """``fused.sgd_update`` over float32 arrays, in runs of values."""
    parts = _split(data.size, data, grad, velocity)
    if parts == 1:
        fused.sgd_update(data, grad, velocity, momentum_on, first, momentum,
                         one_minus_dampening, nesterov, step)
        return
    workers.run(_sgd_job, _params(parts, data.size, data, grad, velocity, momentum_on, first,
                                  nesterov, momentum, one_minus_dampening, step))


@workers.Task
def _batch_norm_forward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, width, channels, rows, coefficients, moments, weight, bias,
    eps, train, activation, out, scratch (parts, 5, scratch width), scratch width, span,
    slope)."""
    params = workers.parameters(args, 17)
    count, width, channels, scratch_width = params[1], params[2], params[3], params[14]
    first, last = part_range(channels, part, params[0], 1)
    fused.batch_norm_forward(
        floats(params, 4, (count, width)), floats(params, 5, (5, channels)),
        doubles(params, 6, (2, channels)), floats(params, 7, (channels,)),
        floats(params, 8, (channels,)), number(params, 9), params[10] != 0, params[11],
        _F(number(params, 16)), floats(params, 12, (count, width)),
        floats(params, 13, (params[0], 5, scratch_width))[part], params[15], first, last)
    return 0


def batch_norm_forward(rows, coefficients, moments, weight, bias, eps, train, activation, slope,
                       out, span):
    """``fused.batch_norm_forward``, its channels in parts."""
    channels = coefficients.shape[1]
    parts = min(channels, _split(rows.size, rows, coefficients, weight, bias, out))
    scratch = np.empty((parts, 5, _chunk_columns(rows.shape[1] // max(1, channels), span)),
                       rows.dtype)
    if parts == 1:
        fused.batch_norm_forward(rows, coefficients, moments, weight, bias, eps, train,
                                 activation, slope, out, scratch[0], span, 0, channels)
        return
    count, width = rows.shape
    workers.run(_batch_norm_forward_job, _params(
        parts, count, width, channels, rows, coefficients, moments, weight, bias, float(eps),
        train, activation, out, scratch, scratch.shape[2], span, slope))


@workers.Task
def _batch_norm_backward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, count, width, channels, d_out, rows, coefficients, train, activation,
    results, totals, out, scratch (parts, 7, scratch width), scratch width, span, slope)."""
    params = workers.parameters(args, 16)
    count, width, channels, scratch_width = params[1], params[2], params[3], params[13]
    first, last = part_range(channels, part, params[0], 1)
    fused.batch_norm_backward(
        floats(params, 4, (count, width)), floats(params, 5, (count, width)),
        floats(params, 6, (5, channels)), params[7] != 0, params[8], _F(number(params, 15)),
        floats(params, 9, (4, channels)), doubles(params, 10, (2, channels)),
        floats(params, 11, (count, width)),
        floats(params, 12, (params[0], 7, scratch_width))[part], params[14], first, last)
    return 0


def batch_norm_backward(d_out, rows, coefficients, train, activation, slope, results, totals,
                        out, span):
    """``fused.batch_norm_backward``, its channels in parts."""
    channels = coefficients.shape[1]
    parts = min(channels, _split(rows.size, d_out, rows, coefficients, results, out))
    scratch = np.empty((parts, 7, _chunk_columns(rows.shape[1] // max(1, channels), span)),
                       rows.dtype)
    if parts == 1:
        fused.batch_norm_backward(d_out, rows, coefficients, train, activation, slope,
                                  results, totals, out, scratch[0], span, 0, channels)
        return
    count, width = rows.shape
    workers.run(_batch_norm_backward_job, _params(
        parts, count, width, channels, d_out, rows, coefficients, train, activation, results,
        totals, out, scratch, scratch.shape[2], span, slope))


def _chunk_columns(positions, span):
    """The most columns of a batch norm's chunk of channels: whole channels up to ``span``
    columns, or one channel."""
    return max(1, span // max(1, positions)) * positions


@workers.Task
def _channel_bias_job(args, range_m, range_n, sa, sb, part):
    """params (parts, rows, length, map, bias, channels, activation, slope)."""
    params = workers.parameters(args, 8)
    count, length = params[1], params[2]
    start, end = part_range(count, part, params[0], 1)
    fused.channel_bias(floats(params, 3, (count, length)), floats(params, 4, (params[5],)),
                       params[6], _F(number(params, 7)), start, end)
    return 0


def channel_bias(rows, bias, activation, slope):
    """``fused.channel_bias`` over all of ``rows`` (N * C, positions), its rows in parts."""
    parts = _split(rows.size, rows, bias)
    if parts == 1:
        fused.channel_bias(rows, bias, activation, slope, 0, len(rows))
        return
    workers.run(_channel_bias_job, _params(parts, *rows.shape, rows, bias, bias.size,
                                           activation, slope))


@workers.Task
def _channel_bias_gradient_job(args, range_m, range_n, sa, sb, part):
    """params (parts, rows, length, d_out, out, activation, d_in, row sums, slope)."""
    params = workers.parameters(args, 9)
    count, length = params[1], params[2]
    start, end = part_range(count, part, params[0], 1)
    fused.channel_bias_gradient(floats(params, 3, (count, length)),
                                floats(params, 4, (count, length)), params[5],
                                _F(number(params, 8)), floats(params, 6, (count, length)),
                                floats(params, 7, (count,)), start, end)
    return 0


def channel_bias_gradient(d_out, out, activation, slope, d_in, row_sums):
    """``fused.channel_bias_gradient`` over all rows, in parts."""
    parts = _split(out.size, d_out, out, d_in, row_sums)
    if parts == 1:
        fused.channel_bias_gradient(d_out, out, activation, slope, d_in, row_sums, 0,
                                    len(out))
        return
    workers.run(_channel_bias_gradient_job, _params(parts, *out.shape, d_out, out, activation,
                                                    d_in, row_sums, slope))


@workers.Task
def _stride_phases_job(args, range_m, range_n, sa, sb, part):
    """params (parts, samples, channels, height, width, phases, out height, out width, x,
    out)."""
    params = workers.parameters(args, 10)
    n, channels, height, width, phases, out_height, out_width = params[1:8]
    start, end = part_range(n * channels, part, params[0], 1)
    fused.stride_phases(floats(params, 8, (n, channels, height, width)),
                        floats(params, 9, (n, phases, channels, out_height, out_width)),
                        start, end)
    return 0


def stride_phases(x, out):
    """``fused.stride_phases`` over all of x's planes, in parts."""
    planes = x.shape[0] * x.shape[1]
    parts = min(_split(x.size, x, out), planes)
    if parts == 1:
        fused.stride_phases(x, out, 0, planes)
        return
    workers.run(_stride_phases_job, _params(parts, *x.shape, out.shape[1], *out.shape[3:], x,
                                            out))


def warm_up() -> None:
    """``fused.warm_up``, then load every job (compile it, on a machine's first run): about
    25 MB resident for them all, a library's load like numba's runtime. Benchmarks call it
    so that what they measure is training steps."""
    fused.warm_up()
    jobs = [job for job in globals().values() if isinstance(job, workers.Task)]
    for job in jobs:
        job.load()
