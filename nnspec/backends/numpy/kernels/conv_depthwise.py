"""Depthwise convolutions (one group per input channel): per channel, a weighted sum of the
kernel's taps, computed as small matrix products over copies of the taps' windows.

Inside, a map is channels first and batch second, split into its stride phases and flattened
per channel: ``(phases, C, N * G)`` with G the cells of one phase's grid. Every kernel tap
then reads one phase at unit stride, and its windows for every sample are ONE contiguous run
per channel (the runs also cover positions between rows and samples, whose results are
never kept). A block of channels and a segment of the run is copied tap by tap into a
``(channels, taps, segment)`` buffer that stays in the core's cache, and one batched product
per block weights and sums the taps: a BLAS product reading each copy once, where a
multiply-add per tap made 2 passes per tap over the output. The input gradient is the same
weighted sum over the output gradient (the taps reversed, per phase), and the weight gradient
the product of the input with those same copies of the output gradient, in the same sweep.
"""

from __future__ import annotations

import math

import numpy as np

from .windows import output_size, phase_reads, phase_regions

_BLOCK_FLOATS = 1 << 17  # the tap copies of one block: 512 KiB of float32, inside L2


def depthwise(x, weight, bias, stride, padding, dilation, input_grad):
    """A depthwise convolution (one group per input channel, ``m`` outputs each); output
    channel ``c * m + j`` reads channel c, as in torch. Backward gives (dx, dweight, dbias),
    dx None when ``input_grad`` is False."""
    n, channels, *size = x.shape
    kernel = weight.shape[2:]
    multiplier = weight.shape[0] // channels
    plan = _Plan(n, size, kernel, stride, padding, dilation)
    source = plan.split(x)  # (phases, C, N * G)
    taps = weight.reshape(channels, multiplier, -1)
    reads = plan.taps  # per kernel offset: (phase, first cell)
    y_wide = np.empty((channels, multiplier, n * plan.cells), dtype=x.dtype)
    _weighted_taps([source[phase] for phase, _ in reads], [b for _, b in reads], taps,
                   y_wide, plan.length)
    y = plan.gather_output(y_wide.reshape(channels * multiplier, -1))
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(size))

    def backward(dy):
        # the output gradient in the wide layout, zero between rows and samples, after
        # `reach` zeros: the input gradient reads it up to `reach` cells back
        reach = max(begin for _, begin in reads)
        dy_wide = np.empty((channels, multiplier, reach + n * plan.cells), dtype=dy.dtype)
        dy_wide[:, :, :reach] = 0
        plan.scatter_output(dy, dy_wide[:, :, reach:].reshape(channels * multiplier, -1))
        dbias = None if bias is None else dy_wide.sum(axis=2, dtype=dy.dtype).reshape(-1)
        d_source = np.empty_like(source) if input_grad else None
        dweight = np.zeros_like(taps)
        for phase in range(len(source)):
            mine = [k for k, (p, _) in enumerate(reads) if p == phase]
            pairs = [(j, k) for j in range(multiplier) for k in mine]
            if not pairs:  # a phase no tap reads (a stride above the kernel's reach)
                if d_source is not None:
                    d_source[phase] = 0
                continue
            # d_source[c, q] = sum over (j, k) of w[c, j, k] * dy_wide[c, j, q - begin_k],
            # dweight[c, j, k] = sum over q of source[c, q] * dy_wide[c, j, q - begin_k]
            grads = _shifted_products(
                [dy_wide[:, j] for j, _ in pairs], [reach - reads[k][1] for _, k in pairs],
                taps[:, :, mine].reshape(channels, 1, -1), source[phase],
                None if d_source is None else d_source[phase][:, None], n * plan.cells)
            dweight[:, :, mine] += grads.reshape(channels, multiplier, len(mine))
        dweight = dweight.reshape(weight.shape)
        # (source.dtype, not x.dtype: the closure must not keep x alive)
        dx = None if d_source is None else plan.merge(d_source, source.dtype)
        return dx, dweight, dbias

    return y, backward


class _Plan:
    """The geometry of one depthwise convolution: stride phases, their grid, the output
    inside the wide layout and where each kernel tap reads."""

    def __init__(self, n, size, kernel, stride, padding, dilation):
        self.n, self.size, self.stride = n, size, stride
        padded = [s + lo + hi for s, (lo, hi) in zip(size, padding)]
        self.out = output_size(padded, kernel, stride, dilation)
        self.grid = [-(-p // s) for p, s in zip(padded, stride)]
        self.cells = math.prod(self.grid)
        self.padding = padding
        self.taps = phase_reads(kernel, stride, dilation, self.grid)  # (phase, first cell)
        grid_strides = [math.prod(self.grid[i + 1:]) for i in range(len(self.grid))]
        # every kept output lies in the first `length` cells of the wide layout
        self.length = (n - 1) * self.cells + 1 + sum(
            (o - 1) * g for o, g in zip(self.out, grid_strides))

    def _phase_slices(self):
        """Per phase: (its index into the input, its index into the (C, N, *grid) phase)."""
        for grid_index, x_index in phase_regions(self.size, self.padding, self.stride):
            yield (slice(None), slice(None), *x_index), (slice(None), slice(None), *grid_index)

    def split(self, x):
        """(N, C, *size) -> the zero-padded phases, (phases, C, N * G)."""
        channels = x.shape[1]
        phases = np.empty((math.prod(self.stride), channels, self.n * self.cells), x.dtype)
        classes = self._column_classes(x)
        for number, (x_index, grid_index) in enumerate(self._phase_slices()):
            grid = phases[number].reshape(channels, self.n, *self.grid)
            if classes is None:
                source = x[x_index]
            else:  # the phase's columns are every s-th, the rows are picked here
                source = classes[x_index[-1].start][(*x_index[:-1], slice(None))]
            _copy(grid[grid_index], np.swapaxes(source, 0, 1))
            _zero_outside(grid, grid_index[2:])
        return phases

    def _column_classes(self, x):
        """Given a stride s > 1 along the last dim that divides its size: per residue r, x's
        columns r, r + s, ... as a (N, C, ..., W / s) array. One strided copy over the whole
        of x makes each, where copying the phases straight from x runs one short inner loop
        per row (2-3x slower at s = 2)."""
        stride, width = self.stride[-1], self.size[-1]
        if stride == 1 or width % stride:
            return None
        interleaved = x.reshape(-1, stride)
        shape = (*x.shape[:-1], width // stride)
        return [np.ascontiguousarray(interleaved[:, r]).reshape(shape) for r in range(stride)]

    def merge(self, d_phases, dtype):
        """Undo ``split``: the (N, C, *size) gradient of the input from its phases'."""
        channels = d_phases.shape[1]
        dx = np.empty((self.n, channels, *self.size), dtype=dtype)
        for number, (x_index, grid_index) in enumerate(self._phase_slices()):
            grid = d_phases[number].reshape(channels, self.n, *self.grid)
            _copy(dx[x_index], np.swapaxes(grid[grid_index], 0, 1))
        return dx

    def _kept(self, wide):
        """The view of the kept outputs, (C, N, *out), of a wide (C, N * G) array."""
        grid = wide[:, :self.n * self.cells].reshape(wide.shape[0], self.n, *self.grid)
        return grid[(slice(None), slice(None), *(slice(0, o) for o in self.out))]

    def gather_output(self, wide):
        """The kept outputs of a wide (C, N * G) array as (N, C, *out)."""
        y = np.empty((self.n, wide.shape[0], *self.out), dtype=wide.dtype)
        _copy(np.swapaxes(y, 0, 1), self._kept(wide))
        return y

    def scatter_output(self, dy, wide):
        """Write dy (N, C, *out) into a wide (C, N * G) array, zero elsewhere."""
        grid = wide.reshape(wide.shape[0], self.n, *self.grid)
        kept = tuple(slice(0, o) for o in self.out)
        _copy(grid[(slice(None), slice(None), *kept)], np.swapaxes(dy, 0, 1))
        _zero_outside(grid, kept)


def _copy(target, source):
    """target[...] = source; where both have unit-stride rows, each row is copied as one
    element of a row-sized void dtype, which NumPy moves several times faster than the
    floats of short rows (a 4x4 map's) one inner loop per row."""
    if target.dtype == source.dtype and target.shape[-1] > 1 and \
            target.strides[-1] == source.strides[-1] == target.itemsize:
        row = np.dtype((np.void, target.shape[-1] * target.itemsize))
        target.view(row)[...] = source.view(row)
    else:
        target[...] = source


def _zero_outside(grid, inside):
    """Zero a (C, N, *grid) array outside the box ``inside`` (one slice per grid dim): a
    strip before and after the box along each dim, cheaper than zeroing all of it first."""
    for axis, box in enumerate(inside, start=2):
        for strip in (slice(0, box.start), slice(box.stop, None)):
            index = [slice(None)] * grid.ndim
            index[axis] = strip
            grid[tuple(index)] = 0


def _blocks(channels, taps, length, dtype):
    """A buffer for the tap copies of one block, and the blocks: (channel slice, segment
    start, segment length), each block's copies within the cache."""
    segment = max(1, min(length, _BLOCK_FLOATS // taps))
    group = max(1, min(channels, _BLOCK_FLOATS // (taps * segment)))
    copies = np.empty((group, taps, segment), dtype=dtype)
    blocks = [(slice(first, min(channels, first + group)), start, min(segment, length - start))
              for first in range(0, channels, group) for start in range(0, length, segment)]
    return copies, blocks


def _weighted_taps(runs, begins, weights, out, length):
    """out[c, j, r] = sum over k of weights[c, j, k] * runs[k][c, begins[k] + r], r < length:
    per block, the taps' runs copied side by side, then one batched product."""
    channels, _, count = weights.shape
    copies, blocks = _blocks(channels, count, length, out.dtype)
    for rows, start, width in blocks:
        block = copies[:rows.stop - rows.start, :, :width]
        for k, begin in enumerate(begins):
            block[:, k] = runs[k][rows, start + begin:start + begin + width]
        np.matmul(weights[rows], block, out=out[rows, :, start:start + width])


def _shifted_products(runs, begins, weights, values, out, length):
    """The input and weight gradients in one sweep over the shifted output gradients
    ``runs[t][c, begins[t] + q]``: out[c, 0, q] = sum over t of weights[c, 0, t] times them
    (when ``out`` is given), and the returned (C, taps) sums over q < length of
    values[c, q] times them."""
    channels, _, count = weights.shape
    grad = np.zeros((channels, 1, count), dtype=values.dtype)
    copies, blocks = _blocks(channels, count, length, values.dtype)
    for rows, start, width in blocks:
        block = copies[:rows.stop - rows.start, :, :width]
        for t, begin in enumerate(begins):
            block[:, t] = runs[t][rows, start + begin:start + begin + width]
        if out is not None:
            np.matmul(weights[rows], block, out=out[rows, :, start:start + width])
        grad[rows] += np.matmul(values[rows, None, start:start + width],
                                block.transpose(0, 2, 1))
    return grad[:, 0]
