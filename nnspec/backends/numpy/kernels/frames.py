"""Copies between a 1-D or 2-D map (N, C, H, W) and the flat frame a column-free convolution
reads (``conv._shifted``), compiled, on both cores.

A frame holds, per stride phase (r, q) and channel, one row: ``margin`` zeros, then per
sample a grid of (rows, columns) cells, cell (i, j) holding the map's element (r + i * sh -
top, q + j * sw - left) or zero where that lies outside the map, then zeros to the row's end.
At unit stride there is one phase and the grid is the map with its shared padding
(``conv._shared_padding_frame``); at stride s the phases are ``windows.pad_into_phases``'.
The same cells map a convolution's output into its output frame and back. NumPy made each
such copy as strided assignments after a pass of zeros (a 32x96x32x32 map into its stride-2
phases: 2.6-3.4 ms, against 0.9 for a plain copy of it); the loop here writes each cell once,
its rows split between the cores.
"""

from __future__ import annotations

import numba
import numpy as np

from . import workers
from .blas import address
from .workers import floats, part_range


@numba.njit(inline="always")
def _columns(phase_column, stride, left, width, columns):
    """The grid columns whose map column lies inside the map: [first, last)."""
    first = max(0, -((phase_column - left) // stride)) if phase_column < left else 0
    last = max(first, min(columns, (width - 1 + left - phase_column) // stride + 1))
    return first, last


# the loops index with unsigned integers: numba then drops its negative-index wraparound,
# and LLVM vectorises them (a row copy 1.3-1.6 -> 0.9 ms per 12 MB, at rows of 8-32 values)
@numba.njit(inline="always")
def _zero(frame, start, count):
    start = np.uint64(start)
    for j in range(np.uint64(count)):
        frame[start + j] = 0


@numba.njit(inline="always")
def _line(values, frame, to_frame, source, target, first, last, stride):
    """One grid row: cells [first, last) of frame[target:] and every ``stride``-th value
    from values[source:]."""
    source, target = np.uint64(source), np.uint64(target + first)
    count = np.uint64(last - first)
    if to_frame:
        if stride == 1:
            for j in range(count):
                frame[target + j] = values[source + j]
        elif stride == 2:
            for j in range(count):
                frame[target + j] = values[source + np.uint64(2) * j]
        else:
            for j in range(count):
                frame[target + j] = values[source + np.uint64(stride) * j]
    elif stride == 1:
        for j in range(count):
            values[source + j] = frame[target + j]
    else:
        for j in range(count):
            values[source + np.uint64(stride) * j] = frame[target + j]


@workers.Task
def _frame_job(args, range_m, range_n, sa, sb, part):
    """params (parts, map, frame, to_frame, samples, channels, height, width, row stride,
    column stride, top, left, grid rows, grid columns, margin, frame row length)."""
    params = workers.parameters(args, 16)
    samples, channels, height, width = params[4], params[5], params[6], params[7]
    row_stride, column_stride, top, left = params[8], params[9], params[10], params[11]
    rows, columns, margin, length = params[12], params[13], params[14], params[15]
    to_frame = params[3] != 0
    phases = row_stride * column_stride
    values = floats(params, 1, (samples * channels * height * width,))
    frame = floats(params, 2, (phases * channels * length,))
    start, end = part_range(channels, part, params[0], 1)
    # a channel at a time (its map, read once per column phase, stays in the core's cache)
    for channel in range(start, end):
        if column_stride == 2 and _grid_holds_row(left, width, columns):
            _both_column_phases(values, frame, to_frame, params, channel)
            continue
        for q in range(column_stride):
            first, last = _columns(q, column_stride, left, width, columns)
            for r in range(row_stride):
                row_start = ((r * column_stride + q) * channels + channel) * length
                if to_frame:
                    _zero(frame, row_start, margin)
                    _zero(frame, row_start + margin + samples * rows * columns,
                          length - margin - samples * rows * columns)
                for sample in range(samples):
                    target = row_start + margin + sample * rows * columns
                    source = (sample * channels + channel) * height * width + \
                        q + first * column_stride - left
                    for i in range(rows):
                        h = r + i * row_stride - top
                        if h < 0 or h >= height:
                            if to_frame:
                                _zero(frame, target, columns)
                        else:
                            if to_frame:
                                _zero(frame, target, first)
                                _zero(frame, target + last, columns - last)
                            _line(values, frame, to_frame, source + h * width, target, first,
                                  last, column_stride)
                        target += columns
    return 0


@numba.njit(inline="always")
def _grid_holds_row(left, width, columns):
    """Whether each column phase's grid row holds all of its map row's values (as a
    convolution's padded grid does), at column stride 2."""
    return (width + left + 1) // 2 <= columns


@numba.njit(inline="always")
def _both_column_phases(values, frame, to_frame, params, channel):
    """``_frame_job``'s channel at column stride 2: both column phases of a map row at
    once, each pair of its values to the two phases' cells (one value a phase, LLVM's
    loads and shuffles; a phase at a time, every other value, is a gather, which AMD's
    cores run a value at a time: a 128 x 96 x 32 x 32 map into its phases 13.3 -> 5.3 ms on
    two cores, back out 5.2 -> 3.2, a plain copy of it 2.2; 128 x 144 x 16 x 16 5.5 -> 1.6
    and 2.2 -> 1.2)."""
    samples, channels, height, width = params[4], params[5], params[6], params[7]
    row_stride, top, left = params[8], params[10], params[11]
    rows, columns, margin, length = params[12], params[13], params[14], params[15]
    cells = samples * rows * columns
    # map column 2m goes to phase ``even``'s cell m + even_first, 2m + 1 to the other's
    even, odd = left % 2, (left + 1) % 2
    even_first, odd_first = left // 2, (left + 1) // 2
    pairs = width // 2
    for r in range(row_stride):
        even_row = ((r * 2 + even) * channels + channel) * length
        odd_row = ((r * 2 + odd) * channels + channel) * length
        if to_frame:
            for row_start in (even_row, odd_row):
                _zero(frame, row_start, margin)
                _zero(frame, row_start + margin + cells, length - margin - cells)
        even_first_cell, even_last = _columns(even, 2, left, width, columns)
        odd_first_cell, odd_last = _columns(odd, 2, left, width, columns)
        for sample in range(samples):
            grid = margin + sample * rows * columns
            even_at, odd_at = even_row + grid, odd_row + grid
            source = (sample * channels + channel) * height * width
            for i in range(rows):
                h = r + i * row_stride - top
                if h < 0 or h >= height:
                    if to_frame:
                        _zero(frame, even_at, columns)
                        _zero(frame, odd_at, columns)
                else:
                    if to_frame:
                        _zero(frame, even_at, even_first_cell)
                        _zero(frame, even_at + even_last, columns - even_last)
                        _zero(frame, odd_at, odd_first_cell)
                        _zero(frame, odd_at + odd_last, columns - odd_last)
                    _pairs(values, frame, to_frame, source + h * width, even_at + even_first,
                           odd_at + odd_first, pairs)
                    if width % 2:  # the last column, an even one
                        line, cell = source + h * width + width - 1, even_at + even_first + pairs
                        if to_frame:
                            frame[cell] = values[line]
                        else:
                            values[line] = frame[cell]
                even_at += columns
                odd_at += columns


@numba.njit(inline="always")
def _pairs(values, frame, to_frame, line, even_cell, odd_cell, count):
    """Map values line + 2m and line + 2m + 1, m < count, and frame cells even_cell + m and
    odd_cell + m: copied into the frame, or out of it."""
    line, even_cell, odd_cell = np.uint64(line), np.uint64(even_cell), np.uint64(odd_cell)
    two, one = np.uint64(2), np.uint64(1)
    if to_frame:
        for m in range(np.uint64(count)):
            frame[even_cell + m] = values[line + two * m]
            frame[odd_cell + m] = values[line + two * m + one]
    else:
        for m in range(np.uint64(count)):
            values[line + two * m] = frame[even_cell + m]
            values[line + two * m + one] = frame[odd_cell + m]


def applies(map_array) -> bool:
    """Whether the job copies this map: 1-D or 2-D (N, C, ...) float32."""
    return map_array.dtype == np.float32 and map_array.ndim in (3, 4)


def copy(map_array, frame, to_frame, stride, corner, grid, margin):
    """Copy a C-ordered (N, C, [H,] W) float32 map into ``frame`` (``to_frame``, every cell
    written, zeros outside the map) or out of it into the map. ``frame`` is C-ordered
    float32 (phases, C, length); ``stride`` the phases per dim, ``corner`` the map position
    of cell 0 of phase 0 negated (the low padding), ``grid`` the cells per sample and phase,
    all per spatial dim."""
    if not (map_array.flags.c_contiguous and frame.flags.c_contiguous and applies(map_array)
            and frame.dtype == np.float32):
        raise ValueError("frames.copy: C-ordered float32 maps and frames of 1 or 2 dims")
    if map_array.ndim == 3:  # 1-D: one row
        map_array = map_array[:, :, None]
        stride, corner, grid = (1, *stride), (0, *corner), (1, *grid)
    samples, channels, height, width = map_array.shape
    phases, frame_channels, length = frame.shape
    if phases != stride[0] * stride[1] or frame_channels != channels or \
            margin + samples * grid[0] * grid[1] > length:
        raise ValueError(f"frames.copy: frame {frame.shape} does not hold map "
                         f"{map_array.shape} at stride {stride}, grid {grid}")
    parts = workers.parts() if map_array.size >= 1 << 15 else 1
    params = np.array([parts, address(map_array), address(frame), to_frame, samples,
                       channels, height, width, stride[0], stride[1], corner[0], corner[1],
                       grid[0], grid[1], margin, length], np.int64)
    workers.run(_frame_job, params)


def load() -> None:
    """Compile the job now (or load it from the cache), not on its first run."""
    _frame_job.load()
