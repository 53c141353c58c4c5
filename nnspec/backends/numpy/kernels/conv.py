"""Convolutions as matrix products with the batch folded into the columns.

Convolutions with 6 to 64 input channels skip the columns (``_shifted``): their products
read shifted slices of the flattened padded map (of its stride phases when strided); those
of fewer channels (stems) take per-sample columns in torch's layout; 1x1 and depthwise
ones have their own paths (depthwise in ``conv_depthwise``), and so do grouped ones (one
group at a time, or every group's columns in blocks of positions); the rest, im2col.
"""

from __future__ import annotations

import math

import numpy as np

from . import tiled
from .blas import accumulates, add_product, transpose
from .conv_depthwise import depthwise
from .windows import (
    check_spatial,
    crop_padding,
    crop_to_batch_first,
    gather_from_phases,
    kernel_offsets,
    offset_index,
    output_size,
    pad_into_phases,
    pad_spatial,
    phase_reads,
    scatter_windows,
)


def conv1d(x, weight, bias, *, stride, padding, dilation, groups, input_grad=True):
    """Convolve (N, C, L) with weight [out, C/groups, k]; backward gives (dx, dweight, dbias),
    dx None when ``input_grad`` is False."""
    check_spatial("conv1d", x, 1, stride=stride, padding=padding, dilation=dilation)
    return _conv(x, weight, bias, stride, padding, dilation, groups, input_grad)


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, input_grad=True):
    """Convolve (N, C, H, W) with weight [out, C/groups, kH, kW]; backward gives (dx, dweight,
    dbias), dx None when ``input_grad`` is False."""
    check_spatial("conv2d", x, 2, stride=stride, padding=padding, dilation=dilation)
    return _conv(x, weight, bias, stride, padding, dilation, groups, input_grad)


def _conv(x, weight, bias, stride, padding, dilation, groups, input_grad):
    """Any-rank convolution, on the path for its kind; the fallback is im2col, weight (O,
    C*K) times columns (C*K, N*P). Inside, maps are channels first and batch second, (C, N,
    *spatial), so the columns, the output's rows and the input gradient's kernel offsets are
    all contiguous runs; the layout at the boundary stays torch's."""
    n, channels = x.shape[:2]
    out_channels, group_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    if channels != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"conv with {groups} groups: input has {channels} channels, weight {weight.shape}"
        )
    if groups == channels > 1:
        return depthwise(x, weight, bias, stride, padding, dilation, input_grad)
    if groups > 1:
        if group_channels >= GROUP_BY_GROUP_CHANNELS:
            return _group_by_group(x, weight, bias, stride, padding, dilation, groups,
                                   input_grad)
        return _grouped_blocks(x, weight, bias, stride, padding, dilation, groups, input_grad)
    if all(k == 1 for k in kernel) and not any(lo or hi for lo, hi in padding):
        if all(s == 1 for s in stride):
            return _pointwise(x, weight, bias, input_grad)
        return _strided_pointwise(x, weight, bias, stride, input_grad)
    if _shifted_pays(channels, x.shape[2:], padding, kernel, stride, dilation):
        return _shifted(x, weight, bias, stride, padding, dilation, input_grad)
    if channels < SHIFTED_MIN_CHANNELS:
        return _per_sample_columns(x, weight, bias, stride, padding, dilation, input_grad)
    x_padded = pad_spatial(np.swapaxes(x, 0, 1), padding)
    out = output_size(x_padded.shape[2:], kernel, stride, dilation)
    weight_rows = weight.reshape(out_channels, -1)
    y_rows = weight_rows @ _im2col(x_padded, kernel, stride, dilation, out)
    if bias is not None:
        y_rows += bias[:, None]
    y = np.ascontiguousarray(np.swapaxes(y_rows.reshape(out_channels, n, *out), 0, 1))

    def backward(dy):
        # the columns are built again rather than kept from the forward: they are K times
        # the input, which a deep net holds for every layer until its backward (a U-Net
        # step's peak fell from 204 to 88 MiB), and building them is a few % of a step
        columns = _im2col(x_padded, kernel, stride, dilation, out)
        dy_rows = np.ascontiguousarray(np.swapaxes(dy, 0, 1)).reshape(out_channels, -1)
        # columns @ dy.T, then transposed: OpenBLAS runs this orientation about twice as
        # fast as dy @ columns.T when the inner dimension (N * P) is long
        dweight = transpose(columns @ dy_rows.T).reshape(weight.shape)
        dbias = None if bias is None else dy_rows.sum(axis=1)
        if not input_grad:
            return None, dweight, dbias
        reach = [(k - 1) * d for k, d in zip(kernel, dilation)]
        # at fewer than 8 input channels the flipped product's rows are too few for BLAS (3
        # channels: 3x slower than the column gradient)
        if channels >= 8 and all(s == 1 for s in stride) \
                and all(lo <= r and hi <= r for (lo, hi), r in zip(padding, reach)):
            dx = _unit_stride_input_grad(dy_rows.reshape(out_channels, n, *out), weight,
                                         padding, dilation, x.shape[2:])
            return np.ascontiguousarray(np.swapaxes(dx, 0, 1)), dweight, dbias
        if all(s == 1 for s in stride):
            dx_padded = _unit_stride_col2im(dy_rows.reshape(out_channels, n, *out),
                                            weight_rows, x_padded.shape, kernel, dilation)
        else:
            dcolumns = (weight_rows.T @ dy_rows).reshape(channels, *kernel, n, *out)
            dx_padded = scatter_windows(lambda offset: dcolumns[(slice(None), *offset)],
                                        x_padded.shape, kernel, stride, dilation, out, dy.dtype)
        dx = crop_to_batch_first(dx_padded, padding)
        return dx, dweight, dbias

    return y, backward


def _pointwise(x, weight, bias, input_grad):
    """A 1x1 convolution at unit stride without padding: per sample, the weight matrix
    times the (C, P) map, in torch's layout as it is (no copy in or out of a column
    buffer). Measured against one product with the batch folded into the columns, this
    was 1.2-3x faster at maps of 16 to 1024 pixels."""
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    rows = x.reshape(n, channels, -1)
    matrix = weight.reshape(out_channels, channels)
    y = np.matmul(matrix, rows)
    if bias is not None:
        y += bias[:, None]

    def backward(dy):
        dy_rows = dy.reshape(n, out_channels, -1)
        dweight = _summed_sample_products(dy_rows, rows)
        dbias = None if bias is None else dy_rows.sum(axis=2).sum(axis=0)
        dx = np.matmul(matrix.T, dy_rows).reshape(x.shape) if input_grad else None
        return dx, dweight.reshape(weight.shape), dbias

    return y.reshape(n, out_channels, *x.shape[2:]), backward


def _strided_pointwise(x, weight, bias, stride, input_grad):
    """A 1x1 convolution at a stride over 1 without padding (a ResNet's projection
    shortcut): ``_pointwise`` over the input's strided sample, whose input gradient is zero
    between the sampled positions. Against im2col's strided gather and the (C, N) layouts
    in and out, forward and backward: 1.5-2.1x faster on ResNet-20's two projections and a
    ResNet-50's 64 -> 128 at 56x56, 1.1-1.3x on 256 -> 512 at 28x28 and 512 -> 1024 at
    14x14 (slower forward there, faster backward)."""
    sampled = (slice(None), slice(None), *(slice(None, None, s) for s in stride))
    y, sampled_backward = _pointwise(np.ascontiguousarray(x[sampled]), weight, bias,
                                     input_grad)
    x_shape = x.shape  # the backward keeps no reference to x

    def backward(dy):
        d_sampled, dweight, dbias = sampled_backward(dy)
        if d_sampled is None:
            return None, dweight, dbias
        dx = np.zeros(x_shape, dtype=dy.dtype)
        dx[sampled] = d_sampled
        return dx, dweight, dbias

    return y, backward


def _per_sample_columns(x, weight, bias, stride, padding, dilation, input_grad):
    """A convolution of few input channels (a stem) as im2col in torch's layout: columns
    (N, C*K, P) gathered from the padded (N, C, *padded) input, then one (O, C*K) @
    (C*K, P) product per sample, whose (N, O, P) result is the output as it is (no copy
    out), and per-sample products summed for the weight gradient. Against the
    batch-folded columns, 1.4-2x faster at 1-3 channels with 3x3 kernels and about 1.1x
    with 5x5 and 7x7 ones. Kernels ROW_WIDE_KERNEL or more wide take the column-free
    forward instead, a kernel row at a time (``_shifted``): a 3 -> 32 7x7 stride-2 stem at
    64x64 5.3 -> 3.7 ms at batch 32 (21.6 -> 14.0 at 224x224, batch 8), 3 -> 32 5x5 1.23 ->
    0.95, LeNet's 1 -> 6 5x5 0.68 -> 0.61 (3x3 stems: 0.95-1.08x, not taken). The backward
    gathers the columns again rather than keep them (K times the input: 12x for a 7x7
    stride-2 stem)."""
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    x_padded = pad_spatial(x, padding)
    out = output_size(x_padded.shape[2:], kernel, stride, dilation)

    def gather_columns():
        columns = np.empty((n, channels, math.prod(kernel), *out), dtype=x_padded.dtype)
        for number, offset in enumerate(kernel_offsets(kernel)):
            columns[:, :, number] = x_padded[offset_index(offset, stride, dilation, out)]
        return columns.reshape(n, channels * math.prod(kernel), -1)

    matrix = weight.reshape(out_channels, -1)
    if kernel[-1] >= ROW_WIDE_KERNEL:
        y, _ = _shifted(x, weight, bias, stride, padding, dilation, False)
    else:
        y = np.matmul(matrix, gather_columns())
        if bias is not None:
            y += bias[:, None]
        y = y.reshape(n, out_channels, *out)

    def backward(dy):
        dy_rows = dy.reshape(n, out_channels, -1)
        columns = gather_columns()
        dweight = _summed_sample_products(dy_rows, columns)
        del columns
        dbias = None if bias is None else dy.sum(axis=(0, *range(2, dy.ndim)))
        if not input_grad:
            return None, dweight.reshape(weight.shape), dbias
        dcolumns = np.matmul(matrix.T, dy_rows).reshape(n, channels, *kernel, *out)
        dx_padded = scatter_windows(lambda offset: dcolumns[(slice(None), slice(None), *offset)],
                                    x_padded.shape, kernel, stride, dilation, out, dy.dtype)
        return crop_padding(dx_padded, padding), dweight.reshape(weight.shape), dbias

    return y, backward


def _summed_sample_products(dy_rows, columns):
    """The weight gradient of per-sample products, sum over samples of dy[s] @ columns[s].T,
    summed as it goes: no (N, O, C*K) temporary."""
    dweight = np.zeros((dy_rows.shape[1], columns.shape[1]), dtype=dy_rows.dtype)
    for dy_sample, sample_columns in zip(dy_rows, columns):
        add_product(dy_sample, sample_columns.T, dweight)
    return dweight


def _shifted_pays(channels, spatial, padding, kernel, stride, dilation):
    """Whether ``_shifted`` measured faster than im2col for this convolution. With BLAS
    adding the products (``accumulates``) it did at 6 to 512 channels, at unit stride and
    strided, on maps of 1x1 to 32x32 (1.0-1.7x; 1x1 maps even); the limits below are those
    of NumPy's product and add."""
    if math.prod(kernel) > 1 and channels >= SHIFTED_MIN_CHANNELS and accumulates():
        return True
    padded = [size + lo + hi for size, (lo, hi) in zip(spatial, padding)]
    out = output_size(padded, kernel, stride, dilation)
    if all(s == 1 for s in stride):
        frame = _shared_padding_periods(spatial, padding, kernel, dilation)
        most_channels, most_waste = SHIFTED_MAX_CHANNELS, SHIFTED_MAX_WASTE
    else:
        frame = [-(-p // s) for p, s in zip(padded, stride)]
        most_channels, most_waste = STRIDED_SHIFTED_MAX_CHANNELS, STRIDED_SHIFTED_MAX_WASTE
    return math.prod(kernel) > 1 and SHIFTED_MIN_CHANNELS <= channels <= most_channels and \
        math.prod(frame) <= most_waste * math.prod(out)


# measured against im2col, fwd + both gradients (the frame's positions against the
# output's are the waste): at unit stride 0.56x at 6 input channels, 1.5x at 3-4;
# 0.8-0.9x at 96-160 channels on 4x4 to 16x16 maps, 1.14x at 256; 0.6-0.9x on 2x2 maps
# (waste 2.25). Strided (3x3, stride 2, over the phases' grid): 0.63-0.67x at 8-32
# channels on 16x16 and 32x32 maps, 1.0x at 64 on 8x8 ones (waste 1.56), 0.9-1.3x at 96-128
SHIFTED_MIN_CHANNELS = 6
SHIFTED_MAX_CHANNELS = 160
SHIFTED_MAX_WASTE = 2.3
STRIDED_SHIFTED_MAX_CHANNELS = 64
STRIDED_SHIFTED_MAX_WASTE = 1.5
# columns per block of the shifted products: the block of the output (or of the input
# gradient) that the offsets' products add into, not the layer's whole output
SHIFTED_BLOCK = 1 << 17
# below 16 input channels each product is cheap and the output's block is the cost: blocks
# this long keep it in the core's cache (LeNet's 6 -> 16 5x5 layer at batch 64: forward
# 2.9 -> 1.8 ms, backward 4.4 -> 2.7, measured when each product still wrote a term; at
# 16-32 channels such blocks were 0-20% slower, the products then being the cost). The
# forwards and input gradients of such layers now go a kernel row at a time unless the
# kernel is one wide, which still takes these blocks
SHIFTED_BLOCK_FEW_CHANNELS = 1 << 13
SHIFTED_FEW_CHANNELS = 16


def _tiled(x, weight, bias, stride, padding, dilation, input_grad):
    """tiled shifted"""
    channels = x.shape[1]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    flat, reads, frame_shape, unframe, out, length = _framed(x, kernel, stride, padding,
                                                             dilation)
    sources, _, total = flat.shape
    frame = math.prod(frame_shape)
    x_shape = x.shape
    taps = _taps(weight)  # (K, O, C)
    offsets = np.array([source * channels * total + c * total + start
                        for source, start in reads for c in range(channels)], np.int64)
    y_frame = np.empty((out_channels, frame), dtype=x.dtype)
    tiled.products(y_frame, flat, offsets, taps.transpose(1, 0, 2).reshape(out_channels, -1),
                   length)
    y = _outputs_of_frame(y_frame, frame_shape, out)
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(out))

    def backward(dy):
        margin = -(-max(start for _, start in reads) // 16) * 16
        dy_rows = tiled.aligned_zeros(out_channels, margin + total)
        width = dy_rows.shape[1]
        _onto_frame(dy, dy_rows[:, margin:margin + frame], frame_shape)
        dtaps = tiled.sums(flat, offsets, dy_rows,
                           np.arange(out_channels, dtype=np.int64) * width + margin, length)
        dweight = _weight_from_taps(dtaps.reshape(len(reads), channels, out_channels),
                                    weight.shape)
        dbias = None if bias is None else dy.sum(axis=(0, *range(2, dy.ndim)))
        if not input_grad:
            return None, dweight, dbias
        d_flat = np.empty(flat.shape, dtype=dy.dtype)
        for source in range(sources):
            numbers = [k for k, (s, _) in enumerate(reads) if s == source]
            if not numbers:
                d_flat[source] = 0
                continue
            shifts = np.array([margin - reads[k][1] + o * width for k in numbers
                               for o in range(out_channels)], np.int64)
            weights = taps[numbers].transpose(2, 0, 1).reshape(channels, -1)
            tiled.products(d_flat[source], dy_rows, shifts, weights, total)
        del dy_rows
        dx = np.empty(x_shape, dtype=dy.dtype)
        unframe(d_flat, np.swapaxes(dx, 0, 1))
        return dx, dweight, dbias

    return y, backward


USE_TILED = True


def _shifted(x, weight, bias, stride, padding, dilation, input_grad):
    if USE_TILED and x.dtype == np.float32:
        return _tiled(x, weight, bias, stride, padding, dilation, input_grad)
    """A convolution without columns. The input is laid out flat, channels first, in a
    frame where every kernel offset's inputs for all output positions are one contiguous
    slice, shifted by the offset's flat start (``_shared_padding_frame`` at unit stride,
    ``_phase_frames`` otherwise), so the output is a sum of K products weight_k (O, C) @
    slice_k (C, L), computed over the whole frame (the positions between the outputs are
    cropped). The weight gradient is K products of the slices with the output gradient,
    zero at those positions, taken a kernel row at a time (``_tap_weight_grads``), as is the
    forward of layers with few input channels (``_few_channel_forward``); the input gradient
    adds weight_k.T @ that gradient into each shifted slice (a kernel row at a time for few
    channels or wide kernels, ``_row_input_grad``). Each product adds into the output's
    block (``add_product``, BLAS with beta = 1) rather than writing a term that a second pass
    adds: a 16-channel layer's forward 3.3 -> 1.4 ms, ResNet-20's step 208 -> 167 ms. No
    K-times-the-input column buffer is written or read: 1.2-2.7x faster than im2col's
    product at 8-32 channels (before the adds went into BLAS), and a stride-2 layer skips
    im2col's stride-2 element gathers and the strided scatter of its input gradient."""
    channels = x.shape[1]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    flat, reads, frame_shape, unframe, out, length = _framed(x, kernel, stride, padding,
                                                             dilation)
    frame = math.prod(frame_shape)
    x_shape = x.shape  # the backward keeps no reference to x
    taps = _taps(weight)
    block = SHIFTED_BLOCK if channels >= SHIFTED_FEW_CHANNELS else \
        min(SHIFTED_BLOCK, SHIFTED_BLOCK_FEW_CHANNELS)
    y_frame = np.empty((out_channels, frame), dtype=x.dtype)
    if channels < SHIFTED_FEW_CHANNELS and kernel[-1] > 1:
        _few_channel_forward(flat, reads, taps, kernel[-1], length, y_frame)
    else:
        for first in range(0, length, block):  # a block of columns stays in cache across taps
            end = min(first + block, length)
            y_rows = y_frame[:, first:end]
            for number, (source, start) in enumerate(reads):
                window = flat[source, :, start + first:start + end]
                if number == 0:
                    np.matmul(taps[0], window, out=y_rows)
                else:
                    add_product(taps[number], window, y_rows)
    y = _outputs_of_frame(y_frame, frame_shape, out)
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(out))

    def backward(dy):
        # the gradient on the frame, zero between the outputs, in both orientations: the
        # weight gradient's products read it as (L, O) rows, 1.6x faster than a transposed
        # view
        dy_frame = np.zeros((*frame_shape, out_channels), dtype=dy.dtype)
        dy_frame[(slice(None), *(slice(0, o) for o in out))] = np.moveaxis(dy, 1, -1)
        dy_columns = dy_frame.reshape(frame, out_channels)[:length]
        dtaps = _tap_weight_grads(flat, reads, kernel[-1], dy_columns, length)
        dweight = _weight_from_taps(dtaps, weight.shape)
        dbias = None if bias is None else dy.sum(axis=(0, *range(2, dy.ndim)))
        if not input_grad:
            return None, dweight, dbias
        del dy_frame, dy_columns
        # the gradient on the frame, zero between the outputs, as (O, L) rows this time
        dy_rows = np.zeros((out_channels, frame), dtype=dy.dtype)
        _onto_frame(dy, dy_rows, frame_shape)
        d_flat = np.zeros(flat.shape, dtype=dy.dtype)
        if kernel[-1] > 1 and (channels < SHIFTED_FEW_CHANNELS or kernel[-1] >= ROW_WIDE_KERNEL):
            _row_input_grad(dy_rows, reads, taps, kernel[-1], length, d_flat)
        else:
            for first in range(0, length, block):
                end = min(first + block, length)
                for number, (source, start) in enumerate(reads):
                    add_product(taps[number].T, dy_rows[:, first:end],
                                d_flat[source, :, start + first:start + end])
        del dy_rows  # freed before the copy out
        dx = np.empty(x_shape, dtype=dy.dtype)
        unframe(d_flat, np.swapaxes(dx, 0, 1))
        return dx, dweight, dbias

    return y, backward


def _group_by_group(x, weight, bias, stride, padding, dilation, groups, input_grad):
    """A grouped convolution as one ungrouped convolution per group, each on its paths for
    that many channels, the results joined along the channels."""
    group_channels = x.shape[1] // groups
    group_out = weight.shape[0] // groups
    inputs = [slice(i * group_channels, (i + 1) * group_channels) for i in range(groups)]
    outputs = [slice(i * group_out, (i + 1) * group_out) for i in range(groups)]
    parts = [_conv(x[:, rows], weight[columns], None if bias is None else bias[columns], stride,
                   padding, dilation, 1, input_grad) for rows, columns in zip(inputs, outputs)]
    y = np.concatenate([part for part, _ in parts], axis=1)

    def backward(dy):
        grads = [part_backward(dy[:, columns])
                 for (_, part_backward), columns in zip(parts, outputs)]
        dx = np.concatenate([g[0] for g in grads], axis=1) if input_grad else None
        dweight = np.concatenate([g[1] for g in grads])
        dbias = None if bias is None else np.concatenate([g[2] for g in grads])
        return dx, dweight, dbias

    return y, backward


def _grouped_blocks(x, weight, bias, stride, padding, dilation, groups, input_grad):
    """A grouped convolution (1 < groups < channels) in blocks of positions, over the frames
    of ``_shifted``. The forward builds each block's columns for every group in the cache,
    (groups, C/g * K, positions), and takes one stacked product, weight[g] (O/g, C/g * K)
    times columns[g]. The weight gradient takes a kernel row at a time over shifted copies
    (``_kernel_row_reads``), the input gradient gathers (``_grouped_input_grad``).

    Whole columns (im2col) would be K times the input, written out and read back once per
    product. At 4-16 channels per group the products are too small for OpenBLAS to hide
    that traffic: a 64 -> 64, 8-group 3x3 layer at 32x32 and batch 32 spent 18 ms in its
    forward that way. Against this block's columns, the row copies made the weight gradient
    5-17% faster (the forward, which must add the rows' terms, 5-15% slower at 8 channels a
    group, so it keeps the columns)."""
    channels = x.shape[1]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    taps = math.prod(kernel)
    group_channels, group_out = channels // groups, out_channels // groups
    flat, reads, frame_shape, unframe, out, length = _framed(x, kernel, stride, padding,
                                                             dilation)
    frame = math.prod(frame_shape)
    x_shape = x.shape
    weight_groups = weight.reshape(groups, group_out, group_channels * taps)
    block = max(GROUPED_MIN_POSITIONS, GROUPED_COLUMN_FLOATS // (channels * taps))
    columns = np.empty((groups, group_channels, taps, min(block, length)), dtype=x.dtype)
    y_frame = np.empty((out_channels, frame), dtype=x.dtype)
    for begin in range(0, length, block):
        end = min(begin + block, length)
        view = columns[..., :end - begin]
        for number, (source, start) in enumerate(reads):
            view[:, :, number] = flat[source, :, start + begin:start + end].reshape(
                groups, group_channels, -1)
        np.matmul(weight_groups, view.reshape(groups, group_channels * taps, -1),
                  out=y_frame[:, begin:end].reshape(groups, group_out, -1))
    del columns
    y = _outputs_of_frame(y_frame, frame_shape, out)
    del y_frame
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(out))

    def backward(dy):
        # the gradient on the frame, zero between the outputs, after a margin of zeros as
        # long as the farthest read: the input gradient reads it that far back
        margin = max(start for _, start in reads)
        dy_padded = np.zeros((out_channels, margin + flat.shape[2]), dtype=dy.dtype)
        dy_rows = dy_padded[:, margin:margin + frame]
        _onto_frame(dy, dy_rows, frame_shape)
        width = kernel[-1]
        # per kernel row, (groups, O/g, C/g * width), the columns (channel, offset in the row)
        row_grads = np.zeros((taps // width, groups, group_out, group_channels * width),
                             dtype=dy.dtype)
        for begin, end, row_reads in _kernel_row_reads(flat, reads, width, length, groups):
            dy_block = dy_rows[:, begin:end].reshape(groups, group_out, -1)
            for row, matrix in row_reads:
                row_grads[row] += np.matmul(dy_block, matrix.transpose(0, 2, 1))
        dweight = np.ascontiguousarray(row_grads.reshape(
            -1, groups, group_out, group_channels, width).transpose(1, 2, 3, 0, 4)).reshape(
            weight.shape)
        dbias = None if bias is None else dy.sum(axis=(0, *range(2, dy.ndim)))
        if not input_grad:
            return None, dweight, dbias
        d_flat = _grouped_input_grad(dy_padded, margin, reads, weight_groups, flat.shape, block)
        del dy_padded, dy_rows
        dx = np.empty(x_shape, dtype=dy.dtype)
        unframe(d_flat, np.swapaxes(dx, 0, 1))
        return dx, dweight, dbias

    return y, backward


def _grouped_input_grad(dy_padded, margin, reads, weight_groups, flat_shape, block):
    """The gradient of ``_grouped_blocks``' frames, (sources, C, positions), gathered rather
    than scattered. Position q of a source gets W_k.T dy[q - start_k] from each offset k that
    reads that source at start_k: per source, a forward product over columns of the shifted
    ``dy_padded`` (O, margin + positions), the output gradient after ``margin`` zeros. Each
    block of the gradient is written once, with no add per offset."""
    groups, group_out, row_length = weight_groups.shape
    taps = len(reads)
    group_channels = row_length // taps
    sources, _, positions = flat_shape
    per_tap = weight_groups.reshape(groups, group_out, group_channels, taps)
    d_flat = np.empty(flat_shape, dtype=dy_padded.dtype)
    for source in range(sources):
        numbers = [k for k, (read_source, _) in enumerate(reads) if read_source == source]
        if not numbers:
            d_flat[source] = 0
            continue
        # (groups, C/g, O/g * taps of this source), columns (output channel, tap)
        weights = np.ascontiguousarray(per_tap[..., numbers].transpose(0, 2, 1, 3)).reshape(
            groups, group_channels, -1)
        columns = np.empty((groups, group_out, len(numbers), min(block, positions)),
                           dtype=dy_padded.dtype)
        for begin in range(0, positions, block):
            end = min(begin + block, positions)
            view = columns[..., :end - begin]
            for j, number in enumerate(numbers):
                first = margin + begin - reads[number][1]
                view[:, :, j] = dy_padded[:, first:first + end - begin].reshape(
                    groups, group_out, -1)
            np.matmul(weights, view.reshape(groups, group_out * len(numbers), -1),
                      out=d_flat[source, :, begin:end].reshape(groups, group_channels, -1))
    return d_flat


# a block's columns in ``_grouped_blocks``: about this many floats (1 MiB), and no fewer
# positions than the minimum (2^16 to 2^21 floats measured alike, within 5%)
GROUPED_COLUMN_FLOATS = 1 << 18
GROUPED_MIN_POSITIONS = 512
# groups of at least this many channels go one group at a time through the ungrouped paths
# (64 -> 64 channels in 4 groups at 32x32, batch 32: 15.5 + 31.8 -> 9.7 + 19.8 ms forward +
# backward; 256 -> 256 in 8 groups at 8x8: 6.1 + 12.1 -> 5.2 + 8.8), fewer together in
# blocks (64 -> 64 in 8 groups: 9.3 + 17.3 against 10.0 + 21.7 one group at a time)
GROUP_BY_GROUP_CHANNELS = 16


def _taps(weight):
    """A convolution's weight (O, C, *kernel) per kernel offset, (K, O, C)."""
    out_channels, channels = weight.shape[:2]
    return transpose(weight.reshape(out_channels * channels, -1)).reshape(
        -1, out_channels, channels)


def _weight_from_taps(dtaps, shape):
    """Per-offset weight gradients (K, C, O) as torch's (O, C, *kernel): each offset's (C, O)
    transposed, then the offsets moved last (two tiled transposes; reversing the axes of a
    (9, 512, 512) array in one NumPy copy took 17.9 ms, these 1.4)."""
    taps, channels, out_channels = dtaps.shape
    per_offset = np.empty((taps, out_channels, channels), dtaps.dtype)
    for number in range(taps):
        transpose(dtaps[number], per_offset[number])
    return transpose(per_offset.reshape(taps, -1)).reshape(shape)


# positions per block of the kernel rows' shifted copies (``_kernel_row_reads``): a block of
# (kernel width * channels) rows of about this many floats (4 MiB); 2k to 32k positions
# measured alike
ROW_COPY_FLOATS = 1 << 20
ROW_COPY_MIN_POSITIONS = 2048
# kernels at least this wide take their input gradient a row at a time at any channel count
ROW_WIDE_KERNEL = 5


def _kernel_row_patterns(reads, width):
    """The kernel rows grouped by how they read: per group, the sources and starts of its
    taps relative to a row's first, its rows as (row, first start), the lowest first start
    and how far the others reach past it."""
    patterns: dict = {}
    for row in range(len(reads) // width):
        row_reads = reads[row * width:(row + 1) * width]
        first = row_reads[0][1]
        pattern = tuple((source, start - first) for source, start in row_reads)
        patterns.setdefault(pattern, []).append((row, first))
    grouped = []
    for pattern, rows in patterns.items():
        firsts = [first for _, first in rows]
        grouped.append((pattern, rows, min(firsts), max(firsts) - min(firsts)))
    return grouped


def _row_weights(taps, width):
    """The (K, O, C) offsets' weights a kernel row at a time: (rows, O, width * C), the
    columns in the order of ``_kernel_row_reads``' buffer rows (offset, channel)."""
    out_channels, channels = taps.shape[1:]
    return np.ascontiguousarray(
        taps.reshape(-1, width, out_channels, channels).transpose(0, 2, 1, 3)
    ).reshape(-1, out_channels, width * channels)


def _row_block(width, channels):
    """Positions per block of a kernel row's (width * C, positions) buffer."""
    return max(ROW_COPY_MIN_POSITIONS, ROW_COPY_FLOATS // (width * channels))


def _kernel_row_reads(flat, reads, width, length, groups=None):
    """The reads of ``_shifted`` a kernel row at a time. Offset k of the kernel reads
    flat[source_k, :, start_k + p] for positions p < length; the ``width`` offsets of a
    kernel row (the last dim's) read the same positions shifted by a few places, so a block
    of positions is copied ``width`` times, shifted, into one (width * C, positions) buffer,
    which serves every kernel row that reads alike (every row at unit stride, the rows of one
    stride phase otherwise). Yields (begin, end, [(row, columns)]) per block of positions,
    ``columns`` the row's (width * C, end - begin) matrix: a product over it does the work of
    ``width`` products over C rows, which OpenBLAS runs slowly when C is small. With
    ``groups`` (``_grouped_blocks``), the copies are laid out (C, width, positions) and
    ``columns`` is (groups, C/g * width, end - begin), each group's rows one matrix."""
    channels = flat.shape[1]
    if groups is None:
        block, layout = _row_block(width, channels), (width, channels)
    else:
        block = max(GROUPED_MIN_POSITIONS, GROUPED_COLUMN_FLOATS // (channels * width))
        layout = (channels, width)
    copies = [(pattern, rows, lowest, reach,
               np.empty((*layout, min(block, length) + reach), dtype=flat.dtype))
              for pattern, rows, lowest, reach in _kernel_row_patterns(reads, width)]
    for begin in range(0, length, block):
        end = min(begin + block, length)
        row_columns = []
        for pattern, rows, lowest, reach, buffer in copies:
            span = end - begin + reach
            by_tap = buffer if groups is None else buffer.swapaxes(0, 1)  # (width, C, ...)
            for tap, (source, offset) in enumerate(pattern):
                origin = lowest + offset + begin
                by_tap[tap, :, :span] = flat[source, :, origin:origin + span]
            matrix = buffer.reshape(*(() if groups is None else (groups,)), -1,
                                    buffer.shape[-1])
            row_columns += [(row, matrix[..., first - lowest:first - lowest + end - begin])
                            for row, first in rows]
        yield begin, end, row_columns


def _few_channel_forward(flat, reads, taps, width, length, y_frame):
    """``_shifted``'s forward a kernel row at a time over shifted copies
    (``_kernel_row_reads``), for layers of few input channels: one product per kernel row
    with width * C rows against one per offset with C rows, where each of those adds a term
    to the whole output block. LeNet's 6 -> 16 5x5 layer 1.28 -> 0.56 ms at batch 64; 6 ->
    16 3x3 0.48 -> 0.29, 8 -> 16 1.27 -> 0.94 (at 16 channels, 1.47 -> 1.91: not taken)."""
    row_weights = _row_weights(taps, width)
    for begin, end, row_columns in _kernel_row_reads(flat, reads, width, length):
        y_rows = y_frame[:, begin:end]
        for number, (row, columns) in enumerate(row_columns):
            if number == 0:
                np.matmul(row_weights[row], columns, out=y_rows)
            else:
                add_product(row_weights[row], columns, y_rows)


def _row_input_grad(dy_rows, reads, taps, width, length, d_flat):
    """``_shifted``'s input gradient a kernel row at a time, for layers of few input
    channels or wide kernels: a row's (width * C, O) weights times dy (O, positions) give its
    taps' gradients as one (width * C, positions) block, added into a buffer at the row's
    shift; the buffer's ``width`` parts are then added into ``d_flat`` at their taps' shifts.
    Against one product per offset (C rows each, each adding into the frame): LeNet's 6 ->
    16 5x5 layer 0.89 -> 0.71 ms at batch 64, 8 -> 16 3x3 1.54 -> 1.09; 5x5 layers of 16-64
    channels 4-22% faster, 7x7 at 32 channels 6%; 3x3 layers of 16 channels and more
    1.1-1.3x slower (not taken)."""
    channels = taps.shape[2]
    row_weights = _row_weights(taps, width)
    block = _row_block(width, channels)
    for pattern, rows, lowest, reach in _kernel_row_patterns(reads, width):
        buffer = np.empty((width, channels, min(block, length) + reach), dtype=d_flat.dtype)
        matrix = buffer.reshape(width * channels, -1)
        for begin in range(0, length, block):
            end = min(begin + block, length)
            span = end - begin + reach
            buffer[:, :, :span] = 0
            for row, first in rows:
                add_product(row_weights[row].T, dy_rows[:, begin:end],
                            matrix[:, first - lowest:first - lowest + end - begin])
            for tap, (source, offset) in enumerate(pattern):
                origin = lowest + offset + begin
                d_flat[source, :, origin:origin + span] += buffer[tap, :, :span]


def _tap_weight_grads(flat, reads, width, dy_columns, length):
    """The weight gradient of ``_shifted`` per kernel offset, (K, C, O): offset k's is its
    reads (C, L) times dy_columns (L, O), taken a kernel row at a time over shifted copies
    (``_kernel_row_reads``): K / width products of width * C rows instead of K products of C
    rows, which OpenBLAS runs slowly (16 x 16 outputs over 35k positions: 60 GFLOP/s on two
    cores). ResNet-20's 3x3 layers' weight gradients: 16 channels 2.8 -> 2.0 ms, 32
    channels 2.5 -> 1.5, 64 channels 1.6 -> 1.1; 16 -> 32 channels 6.4 -> 2.9. Layers with
    more input channels than output channels (and more than 16) keep one product per offset:
    a row at a time was 1.1-1.2x slower there (32 -> 16, 64 -> 32, 128 -> 64)."""
    channels, out_channels = flat.shape[1], dy_columns.shape[1]
    dtaps = np.empty((len(reads), channels, out_channels), dtype=dy_columns.dtype)
    if width == 1 or channels > max(out_channels, SHIFTED_FEW_CHANNELS):
        for number, (source, start) in enumerate(reads):
            np.matmul(flat[source, :, start:start + length], dy_columns, out=dtaps[number])
        return dtaps
    rows_grads = dtaps.reshape(-1, width * channels, out_channels)
    for begin, end, row_columns in _kernel_row_reads(flat, reads, width, length):
        for row, columns in row_columns:
            if begin == 0:
                np.matmul(columns, dy_columns[begin:end], out=rows_grads[row])
            else:
                add_product(columns, dy_columns[begin:end], rows_grads[row])
    return dtaps


def _outputs_of_frame(y_frame, frame_shape, out):
    """The outputs (N, O, *out) held in an (O, frame) array laid out as ``frame_shape``."""
    valid = (slice(None), slice(None), *(slice(0, o) for o in out))
    return np.ascontiguousarray(np.swapaxes(y_frame.reshape(len(y_frame), *frame_shape)[valid],
                                            0, 1))


def _onto_frame(dy, rows, frame_shape):
    """Write dy (N, O, *out) to its positions in ``rows``, an (O, frame) array laid out as
    ``frame_shape`` (the rest is left as it is)."""
    rows.reshape(len(rows), *frame_shape)[
        (slice(None), slice(None), *(slice(0, o) for o in dy.shape[2:]))] = np.swapaxes(dy, 0, 1)


def _framed(x, kernel, stride, padding, dilation):
    """The input of a column-free convolution in its frame (``_shared_padding_frame`` at unit
    stride, ``_phase_frames`` otherwise): (flat, reads, frame_shape, unframe) as those
    give them, the output's size, and the frame position just past the last output."""
    n = x.shape[0]
    padded = [size + lo + hi for size, (lo, hi) in zip(x.shape[2:], padding)]
    out = output_size(padded, kernel, stride, dilation)
    if all(s == 1 for s in stride):
        framed = _shared_padding_frame(x, padding, kernel, dilation)
    else:
        framed = _phase_frames(x, padding, stride, kernel, dilation)
    frame_shape = framed[2]
    length = 1 + sum((o - 1) * math.prod(frame_shape[i + 2:])
                     for i, o in enumerate(out)) + (n - 1) * math.prod(frame_shape[1:])
    return (*framed, out, length)


def _shared_padding_periods(spatial, padding, kernel, dilation):
    """Per spatial dim, the period of ``_shared_padding_frame``: the map's size plus one gap
    of zeros that serves as the high padding of one row (or plane, or sample) and the low
    padding of the next, wide enough that no two outputs share a position."""
    return [size + max(lo, hi, lo + hi - (k - 1) * d)
            for size, (lo, hi), k, d in zip(spatial, padding, kernel, dilation)]


def _shared_padding_frame(x, padding, kernel, dilation):
    """A unit-stride convolution's input laid out flat: (1, C, total), each sample a block of
    (*periods) whose leading corner holds the map, zeros elsewhere (``_shared_padding_periods``:
    a 32x32 map padded by 1 takes 33x33 positions, not 34x34), after a margin of zeros for
    the first sample's low padding. Output position p of a sample lies at the block's flat
    index of p, and reads its offset-k input at that index plus the offset's flat start.
    Returns (flat, reads, frame_shape, unframe): the reads as (0, start) per kernel offset,
    the (N, *periods) frame that the outputs lie in, and the function that writes the
    gradient of the map from the flat one into a (C, N, *spatial) view."""
    n, channels, *spatial = x.shape
    periods = _shared_padding_periods(spatial, padding, kernel, dilation)
    strides = [math.prod(periods[i + 1:]) for i in range(len(periods))]
    block = math.prod(periods)
    margin = sum(lo * f for (lo, _), f in zip(padding, strides))
    reads = [(0, sum(k * d * f for k, d, f in zip(offset, dilation, strides)))
             for offset in kernel_offsets(kernel)]
    total = margin + n * block + reads[-1][1]  # room for the last offset's slice
    flat = np.zeros((1, channels, total), dtype=x.dtype)
    interior = (slice(None), slice(None), *(slice(0, size) for size in spatial))

    def maps(buffer):
        return buffer[0, :, margin:margin + n * block].reshape(channels, n, *periods)[interior]

    maps(flat)[...] = np.swapaxes(x, 0, 1)

    def unframe(d_flat, out):
        out[...] = maps(d_flat)

    return flat, reads, (n, *periods), unframe


def _phase_frames(x, padding, stride, kernel, dilation):
    """A strided convolution's input as its stride phases (``pad_into_phases``), each
    flattened to (C, N * prod(grid)): every kernel offset reads one phase at unit stride.
    Returns (flat, reads, frame_shape, unframe) as ``_shared_padding_frame`` does, the
    reads as (phase, start)."""
    n, channels = x.shape[:2]
    phases, grid = pad_into_phases(np.swapaxes(x, 0, 1), padding, stride)
    reads = phase_reads(kernel, stride, dilation, grid)
    shape = phases.shape

    def unframe(d_flat, out):
        gather_from_phases(d_flat.reshape(shape), padding, stride, out)

    return phases.reshape(len(phases), channels, -1), reads, (n, *grid), unframe


def _im2col(x_padded, kernel, stride, dilation, out):
    """Columns (C * K, N * P) of a (C, N, *padded) map: one strided copy per kernel offset."""
    channels, n = x_padded.shape[:2]
    columns = np.empty((channels, math.prod(kernel), n, *out), dtype=x_padded.dtype)
    for number, offset in enumerate(kernel_offsets(kernel)):
        columns[:, number] = x_padded[offset_index(offset, stride, dilation, out)]
    return columns.reshape(channels * math.prod(kernel), -1)


def _unit_stride_input_grad(dy, weight, padding, dilation, spatial):
    """The input gradient of a stride-1 convolution, (C, N, *spatial), as a forward
    convolution of ``dy`` (O, N, *out) with the flipped, transposed kernel: the product
    then has the forward's shape, C by (O*K, N*P), which OpenBLAS runs 1.3-2x faster than
    the column gradient (C*K, O) by (O, N*P) at 8-32 channels, and the columns of ``dy``
    are gathered instead of scattering 9 column gradients. Needs each padding side no wider
    than the kernel's reach, (k - 1) * dilation."""
    out_channels, n = dy.shape[:2]
    kernel = weight.shape[2:]
    reach = [(k - 1) * d for k, d in zip(kernel, dilation)]
    dy_padded = pad_spatial(dy, [(r - lo, r - hi) for (lo, hi), r in zip(padding, reach)])
    flipped = weight[(Ellipsis, *(slice(None, None, -1) for _ in kernel))]
    weight_t = np.ascontiguousarray(
        flipped.reshape(out_channels, -1, math.prod(kernel)).transpose(1, 0, 2)).reshape(
        flipped.shape[1], -1)
    columns = _im2col(dy_padded, kernel, (1,) * len(kernel), dilation, spatial)
    return (weight_t @ columns).reshape(-1, n, *spatial)


def _unit_stride_col2im(dy, weight_rows, padded_shape, kernel, dilation):
    """The input gradient of a stride-1 convolution, (C, N, *padded), with one add of long
    contiguous runs per kernel offset. ``dy`` (O, N, *out) is placed at its positions in the
    padded frame (zeros between rows), so every offset's window gradients form one
    contiguous stretch of each flattened (c, n) plane; the zeros add nothing."""
    out_channels, n, *out = dy.shape
    channels, padded = padded_shape[0], padded_shape[2:]
    wide = np.zeros((out_channels, n, out[0], *padded[1:]), dtype=dy.dtype)
    wide[(slice(None), slice(None), slice(None), *(slice(0, o) for o in out[1:]))] = dy
    dcolumns = (weight_rows.T @ wide.reshape(out_channels, -1)).reshape(
        channels, -1, n, wide[0, 0].size)
    flat_strides = [math.prod(padded[i + 1:]) for i in range(len(padded))]
    length = 1 + sum((o - 1) * f for o, f in zip(out, flat_strides))
    grad = np.zeros((channels, n, math.prod(padded)), dtype=dy.dtype)
    for number, offset in enumerate(kernel_offsets(kernel)):
        start = sum(k * d * f for k, d, f in zip(offset, dilation, flat_strides))
        grad[:, :, start:start + length] += dcolumns[:, number, :, :length]
    return grad.reshape(padded_shape)
