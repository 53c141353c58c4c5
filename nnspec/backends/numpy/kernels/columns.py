"""A float32 1-D or 2-D map's columns (im2col) and their sum back onto the map (col2im),
compiled, on both cores: the copies of the wide convolutions' single large products
(``conv._on_columns``).

The columns of an (N, C, H, W) map are (C * K, N * P): row (c, kh, kw) holds, per sample and
output position (oh, ow), the map's element (oh * sh + kh * dh - top, ow * sw + kw * dw -
left), zero where that lies outside the map. NumPy made them as one strided copy per kernel
offset after padding the map (a 16x512x4x4 map's 3x3 columns, rows of four values: 2.05
ms); here each channel's rows are written once, the channels split between the cores (0.79
ms). ``gather_panels`` writes the columns transposed, (N * P, C * K), straight into the
panels the register tiles read a product's right operand from (``gemm.matmul_on_panels``):
a weight gradient's dy @ columns.T then copies nothing more.
"""

from __future__ import annotations

import numba
import numpy as np

from . import tiled, workers
from .blas import address
from .workers import floats, part_range


@numba.njit(inline="always")
def _inside(offset, stride, size, count):
    """The output positions [first, last) whose input position offset + i * stride lies in
    [0, size)."""
    first = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = min(count, (size - 1 - offset) // stride + 1) if offset < size else 0
    return first, max(first, last)


@workers.Task
def _columns_job(args, range_m, range_n, sa, sb, part):
    """params (parts, map, columns, to_columns, samples, channels, height, width, kernel
    rows, kernel columns, row stride, column stride, top, left, row dilation, column
    dilation, output rows, output columns, panel width or 0): with a panel width, the
    columns are written transposed into panels of it (``gather_panels``), else as they
    are."""
    params = workers.parameters(args, 19)
    to_columns = params[3] != 0
    samples, channels, height, width = params[4], params[5], params[6], params[7]
    kernel_rows, kernel_columns = params[8], params[9]
    row_stride, column_stride, top, left = params[10], params[11], params[12], params[13]
    row_dilation, column_dilation = params[14], params[15]
    out_rows, out_columns, panel = params[16], params[17], params[18]
    plane = height * width
    positions = out_rows * out_columns
    values = floats(params, 1, (samples * channels * plane,))
    rows = channels * kernel_rows * kernel_columns
    size = rows * samples * positions if panel == 0 else \
        (rows + panel - 1) // panel * panel * samples * positions
    columns = floats(params, 2, (size,))
    step = 1 if panel == 0 else panel  # between a row's cells
    start, end = part_range(channels, part, params[0], 1)
    for channel in range(start, end):
        if not to_columns:  # the sum starts from zero
            for sample in range(samples):
                base = np.uint64((sample * channels + channel) * plane)
                for j in range(np.uint64(plane)):
                    values[base + j] = 0
        for kh in range(kernel_rows):
            row_offset = kh * row_dilation - top
            first_row, last_row = _inside(row_offset, row_stride, height, out_rows)
            for kw in range(kernel_columns):
                column_offset = kw * column_dilation - left
                first, last = _inside(column_offset, column_stride, width, out_columns)
                row = (channel * kernel_rows + kh) * kernel_columns + kw
                # unit strides and rows as long as the map's: the rows inside are one run
                whole = to_columns and row_stride == 1 and column_stride == 1 and \
                    out_columns == width and last_row > first_row and last > first
                for sample in range(samples):
                    if panel == 0:
                        target = (row * samples + sample) * positions
                    else:  # the row's panel, and in it the sample's cells, a lane each
                        target = ((row // panel) * samples + sample) * positions * panel + \
                            row % panel
                    source = (sample * channels + channel) * plane + column_offset
                    if whole:
                        _rows_in_one_run(values, columns, target, step, source, row_offset,
                                         width, out_rows, first_row, last_row, first, last)
                        continue
                    for oh in range(out_rows):
                        cells = np.uint64(target + oh * out_columns * step)
                        if oh < first_row or oh >= last_row or first >= last:
                            if to_columns:
                                _zeros(columns, cells, step, 0, out_columns)
                            continue
                        line = np.uint64(source + (oh * row_stride + row_offset) * width)
                        if to_columns:
                            _zeros(columns, cells, step, 0, first)
                            _zeros(columns, cells, step, last, out_columns)
                        _run(values, columns, to_columns, line, cells, step, first, last,
                             column_stride)
    if to_columns and panel and rows % panel:  # the last panel's lanes past the rows
        _zero_lanes(columns, rows, panel, samples * positions, part, params[0])
    return 0


@numba.njit(inline="always")
def _zeros(columns, cells, step, first, end):
    """Zero cells [first, end) of a row, ``step`` apart."""
    if step == 1:
        for j in range(np.uint64(first), np.uint64(end)):
            columns[cells + j] = 0
    else:
        for j in range(first, end):
            columns[cells + np.uint64(j * step)] = 0


@numba.njit(inline="always")
def _zero_lanes(columns, rows, panel, cells, part, parts):
    """Zero the last panel's lanes past the last row, in every cell (the tiles read them,
    and store nothing from them), a part's share of the cells."""
    base = (rows // panel) * cells * panel
    lane = rows % panel
    start, end = part_range(cells, part, parts, 1)
    for cell in range(start, end):
        at = base + cell * panel
        columns[at + lane:at + panel] = 0


@numba.njit(inline="always")
def _rows_in_one_run(values, columns, target, step, source, row_offset, width, out_rows,
                     first_row, last_row, first, last):
    """A kernel offset's columns of one sample at unit strides, output rows as long as the
    map's: rows [first_row, last_row) copied as one run from the map (a cell outside the
    map's columns reads the row beside it, and is zeroed after), the rest zero. Row by row
    a 4x4 map's rows were runs of four (a 32x256x4x4 map's 3x3 columns 0.77 -> 0.60 ms,
    a 16x256x8x8 map's 0.76 -> 0.45)."""
    start = np.uint64(target + first_row * width * step)
    line = np.uint64(source + (first_row + row_offset) * width)
    count = (last_row - first_row) * width
    # the first row's cells before ``first`` and the last's from ``last`` would read past
    # the map's ends
    if step == 1:
        for j in range(np.uint64(first), np.uint64(count - (width - last))):
            columns[start + j] = values[line + j]
    else:
        for j in range(first, count - (width - last)):
            columns[start + np.uint64(j * step)] = values[line + np.uint64(j)]
    for oh in range(first_row, last_row):
        cells = np.uint64(target + oh * width * step)
        _zeros(columns, cells, step, 0, first)
        _zeros(columns, cells, step, last, width)
    for oh in range(out_rows):
        if oh < first_row or oh >= last_row:
            _zeros(columns, np.uint64(target + oh * width * step), step, 0, width)


@numba.njit(inline="always")
def _run(values, columns, to_columns, line, cells, cell_step, first, last, stride):
    """Cells [first, last) of one output row (``cell_step`` apart in the columns): copied
    from the map's line, or added onto it."""
    step = np.uint64(stride)
    if to_columns:
        if cell_step != 1:
            for j in range(first, last):
                columns[cells + np.uint64(j * cell_step)] = values[line + step * np.uint64(j)]
        elif stride == 1:
            for j in range(np.uint64(first), np.uint64(last)):
                columns[cells + j] = values[line + j]
        else:
            for j in range(np.uint64(first), np.uint64(last)):
                columns[cells + j] = values[line + step * j]
    elif stride == 1:
        for j in range(np.uint64(first), np.uint64(last)):
            values[line + j] += columns[cells + j]
    else:
        for j in range(np.uint64(first), np.uint64(last)):
            values[line + step * j] += columns[cells + j]


def applies(map_array) -> bool:
    """Whether the job copies this map: 1-D or 2-D (N, C, ...) float32."""
    return map_array.dtype == np.float32 and map_array.ndim in (3, 4)


def _run_job(map_array, columns, to_columns, kernel, stride, padding, dilation, out,
             panel=0):
    if not (map_array.flags.c_contiguous and columns.flags.c_contiguous
            and applies(map_array) and columns.dtype == np.float32):
        raise ValueError("columns: C-ordered float32 maps and columns of 1 or 2 dims")
    if map_array.ndim == 3:  # 1-D: one row
        map_array = map_array[:, :, None]
        kernel, stride, dilation, out = (1, *kernel), (1, *stride), (1, *dilation), (1, *out)
        padding = ((0, 0), *padding)
    samples, channels, height, width = map_array.shape
    rows = channels * kernel[0] * kernel[1]
    if columns.size != (-(-rows // panel) * panel if panel else rows) * samples * out[0] * out[1]:
        raise ValueError(f"columns: {columns.shape} are not the columns of {map_array.shape}")
    parts = workers.parts() if columns.size >= 1 << 15 else 1
    params = np.array([parts, address(map_array), address(columns), to_columns,
                       samples, channels, height, width, kernel[0], kernel[1], stride[0],
                       stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1],
                       out[0], out[1], panel], np.int64)
    workers.run(_columns_job, params)


def gather(x, kernel, stride, padding, dilation, out):
    """The columns (C * K, N * P) of the C-ordered float32 map ``x`` (N, C, *spatial) for a
    window sweep of ``kernel`` whose outputs are ``out``, padding (lo, hi) per dim."""
    channels, samples = x.shape[1], x.shape[0]
    columns = np.empty((channels * int(np.prod(kernel)), samples * int(np.prod(out))), x.dtype)
    _run_job(x, columns, True, kernel, stride, padding, dilation, out)
    return columns


def gather_panels(x, kernel, stride, padding, dilation, out, width):
    """``gather``'s columns transposed, (N * P, C * K), as ``tiled.empty_panels(N * P, C *
    K, width)`` lays them out: the right operand of a product by the output gradient's rows
    (``gemm.matmul_on_panels``), the lanes past C * K zero."""
    channels, samples = x.shape[1], x.shape[0]
    panels = tiled.aligned_array((-(-channels * int(np.prod(kernel)) // width),
                                  samples * int(np.prod(out)), width))
    _run_job(x, panels, True, kernel, stride, padding, dilation, out, width)
    return panels


def scatter(columns, shape, kernel, stride, padding, dilation, out):
    """The map of ``shape`` (N, C, *spatial) whose every element is the sum of its entries in
    ``columns`` (C-ordered float32, as ``gather`` lays them out): the input gradient of the
    sweep, from its columns' gradient."""
    x = np.empty(shape, np.float32)
    _run_job(x, columns, False, kernel, stride, padding, dilation, out)
    return x


def load() -> None:
    """Compile the job now (or load it from the cache), not on its first run."""
    _columns_job.load()
