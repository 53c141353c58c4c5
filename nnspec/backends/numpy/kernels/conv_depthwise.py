"""Depthwise convolutions (one group per input channel): per channel, a weighted sum of the
kernel's taps, computed as small matrix products over copies of the taps' windows.

Inside, a map is channels first and batch second, split into its stride phases and flattened
per channel: ``(phases, C, N * G)`` with G the cells of one phase's grid. Every kernel tap
then reads one phase at unit stride, and its windows for every sample are ONE contiguous run
per channel (the runs also cover positions between rows and samples, whose results are
never kept). A block of channels and a segment of the run is copied (a kernel row's taps at
once) into a ``(channels, taps, segment)`` buffer that stays in the core's cache, and one
batched product per block weights and sums the taps: a BLAS product reading each copy once,
where a multiply-add per tap made 2 passes per tap over the output. The input gradient is the
same weighted sum over the output gradient (the taps reversed, per phase), and the weight
gradient the product of the input with those same copies of the output gradient, in the
same sweep. A convolution whose stride phases all have the output's size (unit stride
keeping the map's size, stride 2 with 'same' padding on even maps) frames whole maps
instead of padding them (``_FramedPlan``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .windows import output_size, phase_reads, phase_regions

_BLOCK_FLOATS = 1 << 17  # the tap copies of one block: 512 KiB of float32, inside L2
_PHASE_CHUNK_FLOATS = 1 << 17  # the map's values a range of channels of strided copies spans


def depthwise(x, weight, bias, stride, padding, dilation, input_grad):
    """A depthwise convolution (one group per input channel, ``m`` outputs each); output
    channel ``c * m + j`` reads channel c, as in torch. Backward gives (dx, dweight, dbias),
    dx None when ``input_grad`` is False."""
    n, channels, *size = x.shape
    kernel = weight.shape[2:]
    multiplier = weight.shape[0] // channels
    if _FramedPlan.applies(size, kernel, stride, padding, dilation):
        plan = _FramedPlan(n, size, kernel, stride, padding, dilation)
    else:
        plan = _Plan(n, size, kernel, stride, padding, dilation)
    source = plan.split(x)  # (phases, C, plan.span)
    taps = weight.reshape(channels, multiplier, -1)
    reads = plan.taps  # per kernel offset: (phase, first cell)
    y_wide = np.empty((channels, multiplier, n * plan.cells), dtype=x.dtype)
    # the taps in the kernel's order, which sums as torch does: copying a strided layer's
    # taps by phase (fewer copies, its forward 7-16% faster) changed the roundings enough
    # to flip a ReLU6 in a 224x224 MobileNetV2, whose gradients then left torch's by 8e-4
    _weighted_taps([source[phase] for phase, _ in reads], [b for _, b in reads], taps,
                   y_wide, plan.length, plan.output_masks)
    y = plan.gather_output(y_wide.reshape(channels * multiplier, -1))
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(size))

    def backward(dy):
        # the output gradient in the wide layout, zero between rows and samples, after
        # `reach` zeros: the input gradient reads it up to `reach` cells back, and up to
        # the source's span on
        reach = max(begin for _, begin in reads)
        dy_wide = np.empty((channels, multiplier, reach + plan.span), dtype=dy.dtype)
        dy_wide[:, :, :reach] = 0
        dy_wide[:, :, reach + n * plan.cells:] = 0
        plan.scatter_output(dy, dy_wide[:, :, reach:reach + n * plan.cells]
                            .reshape(channels * multiplier, -1))
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
                None if d_source is None else d_source[phase][:, None], plan.span,
                [plan.source_masks[k] for _, k in pairs])
            dweight[:, :, mine] += grads.reshape(channels, multiplier, len(mine))
        dweight = dweight.reshape(weight.shape)
        # (source.dtype, not x.dtype: the closure must not keep x alive)
        dx = None if d_source is None else plan.merge(d_source, source.dtype)
        return dx, dweight, dbias

    return y, backward


class _FramedPlan:
    """A depthwise convolution (1-d or 2-d) whose every stride phase has the output's size
    (unit stride keeping the map's size; stride 2 with 'same' padding on even maps): no
    padded copy is needed. Each phase of a sample goes into a frame of the output's rows
    followed by ``gap`` zero rows, which serve as the bottom padding of one sample and the
    top padding of the next, so a tap reads its phase at a fixed shift. A tap's reads that
    cross the side of a row land on the neighbouring row instead of padding, and are
    zeroed in the tap's copy (``output_masks`` / ``source_masks``: per tap, the residues
    of those positions). The output keeps its own positions, so it and its gradient move
    as whole maps, not row by row. Against the padded phases, forward and backward:
    0.63-0.92x the time on MobileNet's unit-stride 3x3 layers (4x4 to 32x32 maps), 0.68x
    for a 7x7 one; MobileNet's step 213 -> 201 ms (A/B in one process), of which the
    stride-2 layers 1%, and 216 -> 212 more once their phases came straight from strided
    views (``_phases``)."""

    @staticmethod
    def applies(size, kernel, stride, padding, dilation):
        if len(size) > 2:
            return False
        for extent, k, s, (lo, hi), d in zip(size, kernel, stride, padding, dilation):
            out = (extent + lo + hi - d * (k - 1) - 1) // s + 1
            if out < 1 or any(-(-(extent - r) // s) != out for r in range(s)):
                return False
        return True

    def __init__(self, n, size, kernel, stride, padding, dilation):
        self.n, self.size = n, size
        self.out = [-(-extent // s) for extent, s in zip(size, stride)]
        # a 1-d map is a 2-d one of one column
        kernel, stride, dilation, self.size2, self.out2 = (
            (*t, 1)[:2] for t in (kernel, stride, dilation, size, self.out))
        self.stride2 = stride
        (top, _), (left, _) = (*padding, (0, 0))[:2]
        rows, width = self.out2
        self.map_cells = rows * width
        # per tap: its phase (row-major) and its shift in phase cells, per dim
        reads = []
        for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
            (ry, dy), (rx, dx) = (divmod(k * d - lo, s)[::-1] for k, d, lo, s in
                                  zip((ky, kx), dilation, (top, left), stride))
            reads.append((ry * stride[1] + rx, dy, dx))
        shifts_y, shifts_x = [dy for _, dy, _ in reads], [dx for _, _, dx in reads]
        gap = max(0, -min(shifts_y), max(shifts_y))
        self.cells = (rows + gap) * width  # a sample's frame
        self.margin = max(0, -min(shifts_y)) * width + max(0, -min(shifts_x))
        self.length = (n - 1) * self.cells + self.map_cells
        self.span = self.margin + n * self.cells + max(0, max(shifts_x))
        self.taps = [(phase, self.margin + dy * width + dx) for phase, dy, dx in reads]
        # output column j of a tap reads its phase's column j + dx; the gradient reaches
        # source column j (positions q with (q - margin) mod width = j) from j - dx
        self.output_masks = [(width, [j for j in range(width) if not 0 <= j + dx < width])
                             for _, _, dx in reads]
        self.source_masks = [(width, [(j + self.margin) % width for j in range(width)
                                      if not 0 <= j - dx < width]) for _, _, dx in reads]

    def _maps(self, framed):
        """The (C, N, rows, width) view of the maps inside a framed (C, >= N * cells)
        array."""
        maps = framed[:, :self.n * self.cells].reshape(len(framed), self.n, self.cells)[
            :, :, :self.map_cells]
        return maps.reshape(len(framed), self.n, *self.out2)

    def _body(self, framed):
        """The samples' frames of a framed phase (C, span), after its margin."""
        return framed[:, self.margin:self.margin + self.n * self.cells]

    def _phases(self, x):
        """Per phase (row-major), the (N, C, rows, width) view of the map's elements in it.
        (NumPy copies these strided views into the frames faster than it copies the
        contiguous column phases of a first strided pass, row by row: 2.9 against 5.2 ms
        for a 32x96x32x32 input at stride 2.)"""
        stride = self.stride2
        x = x.reshape(*x.shape[:2], *self.size2)
        return [x[:, :, ry::stride[0], rx::stride[1]]
                for ry in range(stride[0]) for rx in range(stride[1])]

    def split(self, x):
        """(N, C, *size) -> (phases, C, span): the framed phases after ``margin`` zeros."""
        channels = x.shape[1]
        phases = self._phases(x)
        source = np.empty((len(phases), channels, self.span), dtype=x.dtype)
        source[:, :, :self.margin] = 0
        source[:, :, self.margin + self.n * self.cells:] = 0
        frames = []
        for framed in source:
            body = self._body(framed)
            body.reshape(channels, self.n, self.cells)[:, :, self.map_cells:] = 0
            frames.append(self._maps(body))
        for chunk in self._chunks(channels, len(phases)):
            for frame, phase in zip(frames, phases):
                _copy(frame[chunk], np.swapaxes(phase, 0, 1)[chunk])
        return source

    def _chunks(self, channels, phases):
        """Channel ranges for the phases' strided copies: with several phases, each reads
        (or writes) every s-th value of the map, so they go a range of channels at a time,
        all phases of a range while its cache lines are in cache. (Phase by phase over the
        whole map, MobileNet's 32x96x32x32 stride-2 layer spent 8.8 ms of a training step
        writing its input gradient, 3 ms when timed alone.)"""
        if phases == 1:
            return [slice(None)]
        step = max(1, _PHASE_CHUNK_FLOATS // (self.n * math.prod(self.size)))
        return [slice(first, first + step) for first in range(0, channels, step)]

    def merge(self, d_source, dtype):
        """Undo ``split``: the (N, C, *size) gradient of the input from the framed
        phases'."""
        channels = d_source.shape[1]
        dx = np.empty((self.n, channels, *self.size), dtype=dtype)
        phases = self._phases(dx)
        frames = [self._maps(self._body(framed)) for framed in d_source]
        for chunk in self._chunks(channels, len(phases)):
            for phase, frame in zip(phases, frames):
                _copy(np.swapaxes(phase, 0, 1)[chunk], frame[chunk])
        return dx

    def gather_output(self, wide):
        """The outputs of a wide (C, N * cells) array as (N, C, *out)."""
        y = np.empty((self.n, wide.shape[0], *self.out2), dtype=wide.dtype)
        _copy(np.swapaxes(y, 0, 1), self._maps(wide))
        return y.reshape(self.n, wide.shape[0], *self.out)

    def scatter_output(self, dy, wide):
        """Write dy (N, C, *out) into a wide (C, N * cells) array, zero elsewhere."""
        wide.reshape(len(wide), self.n, self.cells)[:, :, self.map_cells:] = 0
        _copy(self._maps(wide), np.swapaxes(
            dy.reshape(self.n, len(wide), *self.out2), 0, 1))


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
        self.span = n * self.cells  # of each phase
        # every tap reads padding where its window leaves the map: nothing to zero
        self.output_masks = self.source_masks = [(1, ())] * len(self.taps)

    def _phase_slices(self):
        """Per phase: (its index into the input, its index into the (C, N, *grid) phase)."""
        for grid_index, x_index in phase_regions(self.size, self.padding, self.stride):
            yield (slice(None), slice(None), *x_index), (slice(None), slice(None), *grid_index)

    def split(self, x):
        """(N, C, *size) -> the zero-padded phases, (phases, C, N * G)."""
        channels = x.shape[1]
        phases = np.empty((math.prod(self.stride), channels, self.n * self.cells), x.dtype)
        # straight from strided views of x: faster than making the column phases
        # contiguous first (3.6 against 5.7-7.3 ms for a 32x96x32x32 input at stride 2)
        for number, (x_index, grid_index) in enumerate(self._phase_slices()):
            grid = phases[number].reshape(channels, self.n, *self.grid)
            _copy(grid[grid_index], np.swapaxes(x[x_index], 0, 1))
            _zero_outside(grid, grid_index[2:])
        return phases

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
    """target[...] = source; where both have unit-stride rows, each row (with the rows
    after it while both are contiguous across them: a whole map) is copied as one element
    of a row-sized void dtype, which NumPy moves several times faster than the floats of
    short rows (a 4x4 map's) one inner loop per row."""
    item = target.itemsize
    if target.shape != source.shape or target.dtype != source.dtype or target.ndim == 0 \
            or target.strides[-1] != item or source.strides[-1] != item:
        target[...] = source
        return
    dims = 1  # trailing dims both arrays hold as one contiguous run
    while dims < target.ndim and all(
            a.strides[-dims - 1] == a.strides[-dims] * a.shape[-dims] for a in (target, source)):
        dims += 1
    length = math.prod(target.shape[-dims:])
    if length == 1:
        target[...] = source
        return
    row = np.dtype((np.void, length * item))
    runs = (*target.shape[:-dims], length)
    target.reshape(runs).view(row)[...] = source.reshape(runs).view(row)


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


def _weighted_taps(runs, begins, weights, out, length, masks):
    """out[c, j, r] = sum over k of weights[c, j, k] * runs[k][c, begins[k] + r], r < length,
    the terms ``masks`` names counting as zero (``_zero_masked``): per block, the taps' runs
    copied side by side, then one batched product."""
    channels, _, count = weights.shape
    copies, blocks = _blocks(channels, count, length, out.dtype)
    groups, masked = _tap_groups(runs, begins, length), _masked_taps(masks)
    for rows, start, width in blocks:
        block = copies[:rows.stop - rows.start, :, :width]
        for first, taps in groups:
            block[:, first:first + taps.shape[1]] = taps[rows, :, start:start + width]
        _zero_masked(block, start, masked)
        np.matmul(weights[rows], block, out=out[rows, :, start:start + width])


def _shifted_products(runs, begins, weights, values, out, length, masks):
    """The input and weight gradients in one sweep over the shifted output gradients
    ``runs[t][c, begins[t] + q]`` (zero where ``masks`` says, ``_zero_masked``):
    out[c, 0, q] = sum over t of weights[c, 0, t] times them (when ``out`` is given), and
    the returned (C, taps) sums over q < length of values[c, q] times them."""
    channels, _, count = weights.shape
    grad = np.zeros((channels, 1, count), dtype=values.dtype)
    copies, blocks = _blocks(channels, count, length, values.dtype)
    groups, masked = _tap_groups(runs, begins, length), _masked_taps(masks)
    for rows, start, width in blocks:
        block = copies[:rows.stop - rows.start, :, :width]
        for first, taps in groups:
            block[:, first:first + taps.shape[1]] = taps[rows, :, start:start + width]
        _zero_masked(block, start, masked)
        if out is not None:
            np.matmul(weights[rows], block, out=out[rows, :, start:start + width])
        grad[rows] += np.matmul(values[rows, None, start:start + width],
                                block.transpose(0, 2, 1))
    return grad[:, 0]


def _tap_groups(runs, begins, length):
    """The taps' reads, runs[t][c, begins[t] + r] for r < length, as (first tap, view)
    pairs: consecutive taps that read one run at a fixed step apart (a kernel row, at unit
    stride) share one (C, taps, length) strided view, so a block copies them in one call
    (a 7x7 kernel's block took 49 copies, each mostly call overhead)."""
    groups, first = [], 0
    while first < len(begins):
        run, count = runs[first], 1
        step = begins[first + 1] - begins[first] if first + 1 < len(begins) else 0
        while first + count < len(begins) and _same_array(runs[first + count], run) and \
                begins[first + count] - begins[first + count - 1] == step:
            count += 1
        column = run.strides[1]
        groups.append((first, as_strided(run[:, begins[first]:], (len(run), count, length),
                                          (run.strides[0], step * column, column),
                                          writeable=False)))
        first += count
    return groups


def _same_array(a, b):
    return a.__array_interface__ == b.__array_interface__


def _masked_taps(masks):
    """Per tap (period, residues) -> (taps, period, residue) for each residue, the taps
    that share it gathered, so a block zeroes each in one call."""
    shared = {}
    for tap, (period, residues) in enumerate(masks):
        for residue in residues:
            shared.setdefault((period, residue), []).append(tap)
    return [(_as_index(taps), period, residue) for (period, residue), taps in shared.items()]


def _as_index(taps):
    """An index of the taps: a slice where they are evenly spaced (basic indexing, several
    times cheaper per call than an index array)."""
    steps = {b - a for a, b in itertools.pairwise(taps)}
    if len(steps) <= 1:
        step = steps.pop() if steps else 1
        return slice(taps[0], taps[-1] + 1, step)
    return np.array(taps)


def _zero_masked(block, start, masked):
    """Zero the (taps, period, residue) entries of ``masked`` in a block of tap copies
    (channels, taps, width) of the positions from ``start``."""
    for taps, period, residue in masked:
        block[:, taps, (residue - start) % period::period] = 0
