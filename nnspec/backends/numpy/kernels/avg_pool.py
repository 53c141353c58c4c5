"""2-D (and 1-D) average pooling of float32 maps as compiled loops, planes split between the
cores. A window is a box: its sum is the sum over its columns of its rows' sums, so each
row of outputs first adds its window's input rows into one line (vectors along the row),
then sums each window's stretch of that line; the backward spreads each output's share
over its stretch of a line, then adds the line to each of its window's input rows.

NumPy added one strided view of the padded input per kernel offset, and spread the
gradient back the same way: a 3x3/2 pool over 32 x 64 x 32 x 32 took 2.7 ms forward and
4.1 backward (torch 1.9 and 2.2), a 3x3/1 one 5.5 and 9.7 (torch 7.1 and 7.0).
"""

from __future__ import annotations

import numba
import numpy as np

from . import workers
from .blas import address
from .workers import floats, part_range


@numba.njit(inline="always")
def _part(args, part):
    """A job's arrays and its run of planes: params (parts, x, y, planes, height, width, out
    height, out width, rows (2, out height) and columns (2, out width) of each window inside
    the input as [start, end), scales (out height, out width) 1 / each window's divisor,
    lines (parts, width)); the backward's dx in x's place and dy in y's."""
    params = workers.parameters(args, 12)
    planes, height, width = params[3], params[4], params[5]
    out_height, out_width = params[6], params[7]
    start, end = part_range(planes, part, params[0], 1)
    return (floats(params, 1, (planes, height, width)),
            floats(params, 2, (planes, out_height, out_width)),
            workers.integers(params, 8, 2 * out_height).reshape((2, out_height)),
            workers.integers(params, 9, 2 * out_width).reshape((2, out_width)),
            floats(params, 10, (out_height, out_width)),
            floats(params, 11, (params[0], width))[part], start, end)


@workers.Task
def _forward_job(args, range_m, range_n, sa, sb, part):
    x, y, rows, columns, scales, line, start, end = _part(args, part)
    for plane in range(start, end):
        for i in range(y.shape[1]):
            line[:] = 0
            for h in range(rows[0, i], rows[1, i]):
                source = x[plane, h]
                for w in range(line.size):
                    line[w] += source[w]
            for j in range(y.shape[2]):
                total = np.float32(0.0)
                for w in range(columns[0, j], columns[1, j]):
                    total += line[w]
                y[plane, i, j] = total * scales[i, j]
    return 0


@workers.Task
def _backward_job(args, range_m, range_n, sa, sb, part):
    dx, dy, rows, columns, scales, line, start, end = _part(args, part)
    dx[start:end] = 0
    for plane in range(start, end):
        for i in range(dy.shape[1]):
            line[:] = 0
            for j in range(dy.shape[2]):
                share = dy[plane, i, j] * scales[i, j]
                for w in range(columns[0, j], columns[1, j]):
                    line[w] += share
            for h in range(rows[0, i], rows[1, i]):
                target = dx[plane, h]
                for w in range(line.size):
                    target[w] += line[w]
    return 0


def applies(x) -> bool:
    """Whether the loops pool this input: float32, 1-D or 2-D."""
    return x.dtype == np.float32 and x.ndim in (3, 4)


def avg_pool(x, windows, scales):
    """Mean over the windows of a (N, C, [H,] W) float32 map: ``windows`` per spatial dim
    (2, outputs) int64, each window's [start, end) inside the input, ``scales`` (*outputs)
    1 / each window's divisor; backward gives (dx,)."""
    x = np.ascontiguousarray(x)
    shape = x.shape
    out = tuple(w.shape[1] for w in windows)
    if x.ndim == 3:  # one row
        windows = (np.array([[0], [1]]), *windows)
    rows, columns = (np.ascontiguousarray(w, np.int64) for w in windows)
    scales = np.ascontiguousarray(np.broadcast_to(scales, out), np.float32)
    planes = shape[0] * shape[1]
    height, width = shape[-2] if x.ndim == 4 else 1, shape[-1]
    parts = workers.parts() if x.size >= 1 << 15 else 1
    lines = np.empty((parts, width), np.float32)
    y = np.empty((*shape[:2], *out), np.float32)

    def run(job, full, pooled):
        workers.run(job, np.array(
            [parts, address(full), address(pooled), planes, height, width, len(rows[0]),
             len(columns[0]), address(rows), address(columns), address(scales),
             address(lines)], np.int64))

    run(_forward_job, x, y)

    def backward(dy):
        dx = np.empty(shape, np.float32)
        run(_backward_job, dx, np.ascontiguousarray(dy, np.float32))
        return (dx,)

    return y, backward


def load() -> None:
    """Compile the jobs now (or load them from the cache), not on their first run."""
    _forward_job.load()
    _backward_job.load()
