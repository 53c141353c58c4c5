"""Convolutions as products over a flat frame of the input, without columns.

A float32 convolution of up to ``TILED_MAX_CHANNELS`` input channels per group (dense,
grouped or depthwise, of any rank and stride) runs on the register tiles (``_tiled``, over
``tiled``'s compiled products): each output is a sum over shifted reads of the flattened,
padded map (of its stride phases when strided), or of the map itself at stride 1 keeping its
size (up to ``DIRECT_MAX_CHANNELS`` then). 1x1 convolutions without padding take the
map as it is (``_pointwise``); one whose window is the whole map is a dense layer
(``_whole_map``); wide 3x3 "same" ones, Winograd's transforms (``winograd``). Wider
layers, and float64 (the gradient checks), take BLAS: one product per kernel offset over
the same frame (``_shifted``), one group at a time when grouped, or im2col where the frame
would waste too much.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import columns, frames, fused, gemm, gradient_slots, parallel, tiled, winograd
from .blas import accumulates, add_product, transpose
from .windows import (
    check_spatial,
    crop_to_batch_first,
    gather_from_phases,
    kernel_offsets,
    offset_index,
    output_size,
    pad_into_phases,
    pad_spatial,
    padded_output_size,
    phase_reads,
    scatter_windows,
)


def conv1d(x, weight, bias, *, stride, padding, dilation, groups, input_grad=True,
           activation=None):
    """Convolve (N, C, L) with weight [out, C/groups, k], then ``activation`` (``with_bias``);
    backward gives (dx, dweight, dbias), dx None when ``input_grad`` is False."""
    check_spatial("conv1d", x, 1, stride=stride, padding=padding, dilation=dilation)
    return with_bias(*_conv(x, weight, stride, padding, dilation, groups, input_grad), bias,
                     activation)


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, input_grad=True,
           activation=None):
    """Convolve (N, C, H, W) with weight [out, C/groups, kH, kW], then ``activation``
    (``with_bias``); backward gives (dx, dweight, dbias), dx None when ``input_grad`` is
    False."""
    check_spatial("conv2d", x, 2, stride=stride, padding=padding, dilation=dilation)
    return with_bias(*_conv(x, weight, stride, padding, dilation, groups, input_grad), bias,
                     activation)


def no_samples(x, weight, sample_shape):
    """A convolution of an empty batch (``x`` (0, C, ...)), as torch gives it: an empty
    output of samples shaped ``sample_shape``, and a backward giving an empty input gradient
    and a zero weight gradient."""
    y = np.empty((0, *sample_shape), x.dtype)
    return y, lambda dy: (np.zeros(x.shape, x.dtype), np.zeros(weight.shape, x.dtype))


# the activations a convolution applies to its output in its bias's pass: ones whose
# gradient its output tells (leaky ReLU's slope must not be negative)
ACTIVATIONS = {None: fused.NO_ACTIVATION, "relu": fused.RELU, "leaky_relu": fused.LEAKY_RELU}


def with_bias(y, backward, bias, activation=None):
    """A layer's output (N, C, *spatial), new and held by nothing else, given its per-channel
    ``bias`` and then ``activation`` (None, "relu" or ("leaky_relu", its slope >= 0)) in
    place, in one compiled pass (on both cores in float32); and its ``backward`` (dy ->
    (dx, dweight)) given the gradient the activation lets through, found from the output,
    with the bias gradient summed in the same pass (without an activation, dy passes on as
    it is and the bias gradient is its sums). A bias add, a relu's new output and mask, and
    the bias's and relu's gradients were five NumPy passes: 0.3-0.5 ms a 2 MB map."""
    code, slope = fused.activation_code(activation, ACTIVATIONS)
    if bias is None and activation is None:
        return y, lambda dy: (*backward(dy), None)
    y = np.ascontiguousarray(y)  # ``rows`` below must be a view of it
    rows = y.reshape(y.shape[0] * y.shape[1], math.prod(y.shape[2:]))
    slope = y.dtype.type(slope)
    bias_rows = np.zeros(y.shape[1], y.dtype) if bias is None else \
        np.ascontiguousarray(bias, y.dtype)
    if y.dtype == np.float32:
        parallel.channel_bias(rows, bias_rows, code, slope)
    else:  # float64 (the gradient checks): the loop on one core
        fused.channel_bias(rows, bias_rows, code, slope, 0, len(rows))

    def biased_backward(dy):
        dy = np.ascontiguousarray(dy, y.dtype)
        if activation is None:  # nothing to mask: dy passes on as it is, the bias its sums
            sums = dy.reshape(rows.shape).sum(axis=1)
            return (*backward(dy), sums.reshape(y.shape[:2]).sum(axis=0))
        d_in = np.empty_like(y)
        row_sums = np.empty(len(rows), y.dtype)
        if y.dtype == np.float32:
            parallel.channel_bias_gradient(dy.reshape(rows.shape), rows, code, slope,
                                           d_in.reshape(rows.shape), row_sums)
        else:
            fused.channel_bias_gradient(dy.reshape(rows.shape), rows, code, slope,
                                        d_in.reshape(rows.shape), row_sums, 0, len(rows))
        dbias = None if bias is None else row_sums.reshape(y.shape[:2]).sum(axis=0)
        return (*backward(d_in), dbias)

    return y, biased_backward


def _conv(x, weight, stride, padding, dilation, groups, input_grad):
    """Any-rank convolution, on the path for its kind; the fallback is im2col, weight (O,
    C*K) times columns (C*K, N*P). Inside, maps are channels first and batch second, (C, N,
    *spatial), so the columns, the output's rows and the input gradient's kernel offsets are
    all contiguous runs; the layout at the boundary stays torch's."""
    # tuples throughout: the paths' choices are cached per layer shape
    stride, dilation = tuple(stride), tuple(dilation)
    padding = tuple(tuple(pair) for pair in padding)
    n, channels = x.shape[:2]
    out_channels, group_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    if channels != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"conv with {groups} groups: input has {channels} channels, weight {weight.shape}"
        )
    if n == 0:  # as torch: no outputs, and no gradient to the weight
        return no_samples(x, weight, (out_channels, *padded_output_size(
            x.shape[2:], padding, kernel, stride, dilation)))
    unpadded = not any(lo or hi for lo, hi in padding)
    if groups == 1 and unpadded and kernel == x.shape[2:] and \
            all(k == 1 or d == 1 for k, d in zip(kernel, dilation)):
        return _whole_map(x, weight, input_grad)
    pointwise = all(k == 1 for k in kernel) and unpadded
    if pointwise and groups == 1:
        if columns.applies(x) and math.prod(padded_output_size(
                x.shape[2:], padding, kernel, stride, dilation)) <= FOLDED_MAX_POSITIONS:
            return _on_columns(x, weight, stride, padding, dilation, input_grad)
        if all(s == 1 for s in stride):
            return _pointwise(x, weight, input_grad)
        return _strided_pointwise(x, weight, stride, input_grad)
    if winograd.applies(x, weight, stride, padding, dilation, groups):
        if winograd.forward_pays(x, weight):
            return winograd.conv(x, weight, input_grad)
        y, _ = _direct(x, weight, stride, padding, dilation, groups, input_grad)
        return y, winograd.backward(x, weight, input_grad)
    return _direct(x, weight, stride, padding, dilation, groups, input_grad)


def _whole_map(x, weight, input_grad):
    """A convolution whose one window is the whole map (a DCGAN discriminator's last 4x4
    layer on 4x4 maps, LeNet-5's C5): a dense layer over each sample's flattened map, the
    weight's rows in its order. (512 -> 1 on 4x4 at batch 32, forward and backward, had
    taken 1.5 + 2.5 ms on the general paths; torch 0.3 + 0.6.)"""
    n, out_channels = len(x), len(weight)
    rows = np.ascontiguousarray(x).reshape(n, -1)
    weight_rows = weight.reshape(out_channels, -1)
    y = gemm.matmul(rows, weight_rows.T)

    def backward(dy):
        dy_rows = dy.reshape(n, out_channels)
        dweight = gradient_slots.empty(weight.shape, np.result_type(dy_rows, rows))
        gemm.matmul(dy_rows.T, rows, out=dweight.reshape(out_channels, -1))
        if not input_grad:
            return None, dweight
        # one output channel: an outer product, as a broadcast multiply (0.26 -> 0.015 ms
        # at batch 32 by 8192; NumPy's matmul is slow over a single shared axis)
        dx = dy_rows * weight_rows if out_channels == 1 else gemm.matmul(dy_rows, weight_rows)
        return dx.reshape(x.shape), dweight

    return y.reshape(n, out_channels, *(1,) * (x.ndim - 2)), backward


def _direct(x, weight, stride, padding, dilation, groups, input_grad):
    """``_conv`` without Winograd's transforms: the tiles, the columns or BLAS, as the
    layer's shape suits."""
    n, channels = x.shape[:2]
    out_channels, group_channels = weight.shape[:2]
    kernel = weight.shape[2:]
    if groups == 1 and _phases_take(x, kernel, stride, padding, dilation):
        return _on_phases(x, weight, stride, padding, dilation, input_grad)
    if x.dtype == np.float32 and _tiles_take(x, group_channels, kernel, stride, padding,
                                             dilation) and \
            not (groups == 1 and _columns_pay(x, kernel, stride, padding, dilation)):
        return _tiled(x, weight, stride, padding, dilation, groups, input_grad)
    if groups > 1:
        return _group_by_group(x, weight, stride, padding, dilation, groups, input_grad)
    if columns.applies(x):
        return _on_columns(x, weight, stride, padding, dilation, input_grad)
    if _shifted_pays(channels, x.shape[2:], padding, kernel, stride, dilation):
        return _shifted(x, weight, stride, padding, dilation, input_grad)
    x_padded = pad_spatial(np.swapaxes(x, 0, 1), padding)
    out = output_size(x_padded.shape[2:], kernel, stride, dilation)
    weight_rows = weight.reshape(out_channels, -1)
    y_rows = gemm.matmul(weight_rows, _im2col(x_padded, kernel, stride, dilation, out))
    y = np.ascontiguousarray(np.swapaxes(y_rows.reshape(out_channels, n, *out), 0, 1))

    def backward(dy):
        # the columns are built again rather than kept from the forward: they are K times
        # the input, which a deep net holds for every layer until its backward (a U-Net
        # step's peak fell from 204 to 88 MiB), and building them is a few % of a step
        columns = _im2col(x_padded, kernel, stride, dilation, out)
        dy_rows = np.ascontiguousarray(np.swapaxes(dy, 0, 1)).reshape(out_channels, -1)
        # columns @ dy.T, then transposed: OpenBLAS runs this orientation about twice as
        # fast as dy @ columns.T when the inner dimension (N * P) is long
        dweight = transpose(gemm.matmul(columns, dy_rows.T)).reshape(weight.shape)
        if not input_grad:
            return None, dweight
        reach = [(k - 1) * d for k, d in zip(kernel, dilation)]
        # at fewer than 8 input channels the flipped product's rows are too few for BLAS (3
        # channels: 3x slower than the column gradient)
        if channels >= 8 and all(s == 1 for s in stride) \
                and all(lo <= r and hi <= r for (lo, hi), r in zip(padding, reach)):
            dx = _unit_stride_input_grad(dy_rows.reshape(out_channels, n, *out), weight,
                                         padding, dilation, x.shape[2:])
            return np.ascontiguousarray(np.swapaxes(dx, 0, 1)), dweight
        if all(s == 1 for s in stride):
            dx_padded = _unit_stride_col2im(dy_rows.reshape(out_channels, n, *out),
                                            weight_rows, x_padded.shape, kernel, dilation)
        else:
            dcolumns = gemm.matmul(weight_rows.T, dy_rows).reshape(channels, *kernel, n, *out)
            dx_padded = scatter_windows(lambda offset: dcolumns[(slice(None), *offset)],
                                        x_padded.shape, kernel, stride, dilation, out, dy.dtype)
        return crop_to_batch_first(dx_padded, padding), dweight

    return y, backward


# 1x1 layers whose output maps have at most this many positions take one product with the
# batch folded into the columns (``_on_columns``: the map's channel rows, copied); the
# per-sample products over so few positions are skinny. Forward and backward, batch 8
# and 32 (AMD EPYC, BLAS as set, Haswell, and its own choice, SkylakeX): 2048 -> 512 on
# 2x2 maps 3.0 -> 1.06 ms and 5.0 -> 0.95, on 7x7 maps 14.1 -> 8.4 and 8.4 -> 6.8, 1024
# -> 256 on 4x4 1.27 -> 0.92 and 1.5 -> 0.64; onto 8x8 maps within 10% either way at unit
# stride, 1.15-1.2x faster from 16x16 at stride 2 (a projection shortcut), 0.6-0.9x onto
# 16x16 maps
FOLDED_MAX_POSITIONS = 64


def _pointwise(x, weight, input_grad):
    """A 1x1 convolution at unit stride without padding: per sample, the weight matrix
    times the (C, P) map, in torch's layout as it is (no copy in or out of a column
    buffer); on maps of more positions than ``FOLDED_MAX_POSITIONS``, where these products
    are wide enough."""
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    positions = math.prod(x.shape[2:])
    if x.dtype == np.float32 and positions >= TILED_POINTWISE_MIN_POSITIONS and \
            n * positions * channels * out_channels >= TILED_POINTWISE_MIN_WORK:
        return _tiled_pointwise(x, weight, input_grad)
    rows = x.reshape(n, channels, -1)
    matrix = weight.reshape(out_channels, channels)
    y = _sample_products(matrix, rows)

    def backward(dy):
        dy_rows = dy.reshape(n, out_channels, -1)
        dweight = _summed_sample_products(dy_rows, rows)
        dx = _sample_products(matrix.T, dy_rows).reshape(x.shape) if input_grad else None
        return dx, dweight.reshape(weight.shape)

    return y.reshape(n, out_channels, *x.shape[2:]), backward


def _sample_products(matrix, rows):
    """matrix (M, K) @ rows (N, K, P) per sample; with K = 1 an outer product, as a
    broadcast multiply: NumPy's matmul took 0.6 ms over a single shared axis (a U-Net's 16
    -> 1 output layer's input gradient at 64x64, batch 8), the multiply 0.06."""
    if matrix.shape[1] == 1:
        return matrix[None] * rows
    return np.matmul(matrix, rows)


# maps of fewer positions leave most of a tile's 48 lanes masked: at 4x4 (MobileNet's last
# layers) the tiles were 1.2-1.5x slower than the per-sample products, at 8x8 even
TILED_POINTWISE_MIN_POSITIONS = 2 * tiled.TILE
# and fewer multiply-adds than this cost less in the per-sample products than the tiles'
# packing and set-up (MobileNetV2's 1x1 layers at batch 1, forward and backward, 2-3x
# faster on BLAS: 32 -> 16 at 32x32 116 -> 51 us; at batch 4 within 10% either way)
TILED_POINTWISE_MIN_WORK = 1 << 21


def _tiled_pointwise(x, weight, input_grad):
    """``_pointwise`` on the register tiles, per sample: the weight matrix times the map's
    (C, P) rows, its transpose times dy's, and the weight gradient summed over the samples'
    positions. MobileNetV2's 1x1 layers at 16x16 and 32x32, batch 32: forward 1.5-1.8x,
    backward 1.3-1.8x faster than the per-sample BLAS products."""
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    x = np.ascontiguousarray(x)
    positions = math.prod(x.shape[2:])
    matrix = weight.reshape(out_channels, channels)
    y = np.empty((n, out_channels, positions), x.dtype)
    tiled.products(y, x.reshape(-1), np.arange(channels) * positions, matrix, positions,
                   x_step=channels * positions)

    def backward(dy):
        dy = np.ascontiguousarray(dy)
        dweight = tiled.direct_sums(x.reshape(n, channels, 1, positions),
                                    dy.reshape(n, out_channels, 1, positions), [(0, 0)])
        if not input_grad:
            return None, dweight.reshape(weight.shape)
        dx = np.empty((n, channels, positions), x.dtype)
        tiled.products(dx, dy.reshape(-1), np.arange(out_channels) * positions,
                       np.ascontiguousarray(matrix.T), positions, x_step=out_channels * positions)
        return dx.reshape(x.shape), dweight.reshape(weight.shape)

    return y.reshape(n, out_channels, *x.shape[2:]), backward


def _strided_pointwise(x, weight, stride, input_grad):
    """A 1x1 convolution at a stride over 1 without padding (a ResNet's projection
    shortcut): ``_pointwise`` over the input's strided sample, whose input gradient is zero
    between the sampled positions. Against im2col's strided gather and the (C, N) layouts
    in and out, forward and backward: 1.5-2.1x faster on ResNet-20's two projections and a
    ResNet-50's 64 -> 128 at 56x56, 1.1-1.3x on 256 -> 512 at 28x28 and 512 -> 1024 at
    14x14 (slower forward there, faster backward)."""
    sampled = (slice(None), slice(None), *(slice(None, None, s) for s in stride))
    y, sampled_backward = _pointwise(np.ascontiguousarray(x[sampled]), weight, input_grad)
    x_shape = x.shape  # the backward keeps no reference to x

    def backward(dy):
        d_sampled, dweight = sampled_backward(dy)
        if d_sampled is None:
            return None, dweight
        dx = np.zeros(x_shape, dtype=dy.dtype)
        dx[sampled] = d_sampled
        return dx, dweight

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


# float32 layers of at most this many input channels per group run on the tiles; wider ones
# on BLAS (``_shifted``), whose products are no longer skinny there. Forward + backward,
# tiles against the BLAS paths they replaced: 1.1x faster on a 3x3 stem of 3 channels,
# 1.5-3.4x at 1-64 channels otherwise (LeNet's layers 2.5-3.4x, a 7x7 stride-2 stem 2.2x),
# 3-4x on grouped layers, even to 1.14x faster at 96-128 channels, 1.1x slower at 192 and
# 1.3-1.8x slower at 256-512 (Intel Xeon, 2 cores)
TILED_MAX_CHANNELS = 128
# and up to this many when read in place (``tiled.direct_products``), at stride 1 keeping
# the map's size: forward and input gradient 1.05-1.2x faster than the columns at 160-256
# channels on 4x4 to 16x16 maps; with the tiles' masked multiply-adds, forward and backward
# 0.86-0.95x the columns' time at 384-512 channels on 4x4 and 8x8 maps, even at 320-384 on
# 14x14 and 16x16 ones, 1.01-1.07x at 512 there (so up to DIRECT_LARGE_MAX_CHANNELS on planes
# of more than DIRECT_SMALL_PLANE positions). Their weight gradient takes the direct sums
# (``tiled.direct_sums``) where those run as products (``tiled.GRADIENT_MIN_OUTPUTS``
# outputs a group and more): since the products' sums leave in one transposed copy (NumPy's
# copy had been most of their time on small maps), they beat the columns (made into
# panels) everywhere measured, AMD EPYC, two cores: 0.56-0.89x from 256 to 512 channels on
# 4x4 to 16x16 maps at batch 4 to 64, 256 -> 512 on 8x8 included. With fewer outputs the
# sums are the plain tiles': on the columns past DIRECT_SUMS_MAX_CHANNELS (against them,
# Intel Xeon: 0.84x at 224 channels on 8x8 maps, 1.3x at 256), but for planes of
# DIRECT_SUMS_LARGE_PLANE positions and more up to DIRECT_SUMS_LARGE_MAX_CHANNELS (0.82-0.94x
# at 256 on 16x16 maps, 0.87x at 320 on 14x14; 1.05x at 384 on 14x14)
DIRECT_MAX_CHANNELS = 512
DIRECT_SMALL_PLANE = 64
DIRECT_LARGE_MAX_CHANNELS = 384
DIRECT_SUMS_MAX_CHANNELS = 224
DIRECT_SUMS_LARGE_PLANE = 196
DIRECT_SUMS_LARGE_MAX_CHANNELS = 320
# where their planes fill this much of the tiles' vectors (a vector holds one sample's
# positions: 4x4 and 8x8 planes fill theirs, 14x14 94%, 7x7 77%, 6x6 75%); planes that fill
# DIRECT_PARTIAL_MIN_LANES up to DIRECT_PARTIAL_MAX_CHANNELS (192 channels on 6x6 and 7x7
# maps, forward and backward, 0.82-0.92x the columns' time; 256 even; 384-512 1.01-1.14x)
DIRECT_WIDE_MIN_LANES = 0.9
DIRECT_PARTIAL_MIN_LANES = 0.7
DIRECT_PARTIAL_MAX_CHANNELS = 256


def _tiles_take(x, group_channels, kernel, stride, padding, dilation):
    """Whether the tiles can take a layer of this many channels a group: up to
    TILED_MAX_CHANNELS, or up to DIRECT_MAX_CHANNELS read in place where its planes fill
    the vectors (DIRECT_LARGE_MAX_CHANNELS on large planes, DIRECT_PARTIAL_MAX_CHANNELS where
    they fill them partly)."""
    if group_channels <= TILED_MAX_CHANNELS:
        return True
    plane = math.prod(x.shape[2:])
    filled = _lanes_filled(plane)
    fills = filled >= DIRECT_WIDE_MIN_LANES or (
        filled >= DIRECT_PARTIAL_MIN_LANES and group_channels <= DIRECT_PARTIAL_MAX_CHANNELS)
    most = DIRECT_MAX_CHANNELS if plane <= DIRECT_SMALL_PLANE else \
        min(DIRECT_MAX_CHANNELS, DIRECT_LARGE_MAX_CHANNELS)
    return group_channels <= most and fills and \
        _direct_taps(x.shape[2:], kernel, stride, padding, dilation) is not None


def _direct_sums_take(x, group_channels, out_channels, groups):
    """Whether a layer read in place (``_tiled``) takes its weight gradient on the direct
    sums, not the columns: where they run as products, and with fewer outputs as
    DIRECT_SUMS_MAX_CHANNELS and after it say."""
    plane = math.prod(x.shape[2:])
    return groups > 1 or out_channels >= tiled.GRADIENT_MIN_OUTPUTS or \
        group_channels <= DIRECT_SUMS_MAX_CHANNELS or (
            group_channels <= DIRECT_SUMS_LARGE_MAX_CHANNELS and
            plane >= DIRECT_SUMS_LARGE_PLANE)


def _lanes_filled(plane):
    """The share of the direct tiles' vector lanes a plane of this many positions fills (a
    vector holds one sample's positions)."""
    return plane / max(1, -(-plane // tiled.LANES) * tiled.LANES)


def _tiled(x, weight, stride, padding, dilation, groups, input_grad):
    """A convolution on the register tiles (``tiled``). Stride 1 keeping the map's size (a
    "same" convolution) reads the map as it is (``tiled.direct_products``: a tap's reads
    outside the map are masked lanes) and writes the output in place, and so do its input
    gradient (the taps reversed) and weight gradient (``tiled.direct_sums``, each tap's
    reads masked by a table of bits; with few outputs past DIRECT_SUMS_MAX_CHANNELS, but on
    large planes, on the columns); others
    go over the input's frame (``_framed``): output o at frame position p is the sum over
    taps k and the group's channels c of weight[o, c, k] * frame[c, start_k + p]
    (``tiled.products``, every group at once, a depthwise layer's groups single rows),
    cropped to the outputs, and the input gradient, per stride phase, the products of the
    flipped taps with the output gradient read backwards from a margin of zeros: a gather,
    each input position written once. The weight gradient is
    ``tiled.sums`` of the frame's reads against the output gradient on its frame (zero
    between the outputs). ResNet-20's step 124 -> 83 ms on frames, MobileNetV2's 116 -> 78;
    read in place, a 16-channel 32x32 layer's forward 0.87 -> 0.62 ms, its weight gradient
    with the frames it needed 1.0 -> 0.9, at 32 channels 16x16 1.18 -> 0.88."""
    out_channels, group_channels = weight.shape[:2]
    group_outputs = out_channels // groups
    kernel = weight.shape[2:]
    taps = _direct_taps(x.shape[2:], kernel, stride, padding, dilation)
    if taps is None:
        return _tiled_on_frames(x, weight, stride, padding, dilation, groups, input_grad)
    # 1-D: one row (the rows counted, not -1: an empty batch has no size to divide)
    maps = np.ascontiguousarray(x).reshape(*x.shape[:2], math.prod(x.shape[2:-1]), x.shape[-1])
    y = np.empty((x.shape[0], out_channels, *maps.shape[2:]), x.dtype)
    tiled.direct_products(y, maps, taps, weight.reshape(out_channels, group_channels, -1),
                          groups)
    y = y.reshape(x.shape[0], out_channels, *x.shape[2:])

    def backward(dy):
        dy_maps = np.ascontiguousarray(dy).reshape(maps.shape[0], out_channels, *maps.shape[2:])
        if _direct_sums_take(x, group_channels, out_channels, groups):
            dweight = gradient_slots.empty(weight.shape, np.float32)  # the model's slot
            tiled.direct_sums(maps, dy_maps, taps, groups,
                              out=dweight.reshape(out_channels, group_channels, -1))
        else:
            dweight = _weight_grad_on_columns(maps.reshape(x.shape), _output_rows(dy),
                                              weight.shape, (kernel, stride, padding,
                                                             dilation, x.shape[2:]))
        if not input_grad:
            return None, dweight
        # dx[c, p] = sum over o and k of weight[o, c, k] * dy[o, p - shift_k]
        flipped = weight.reshape(groups, group_outputs, group_channels, -1).transpose(0, 2, 1, 3)
        dx = np.empty(maps.shape, dy.dtype)
        tiled.direct_products(dx, dy_maps, _reversed_taps(taps), flipped, groups)
        return dx.reshape(x.shape), dweight

    return y, backward


@functools.lru_cache(maxsize=256)  # per layer shape, as _columns_pay_for
def _direct_taps(spatial, kernel, stride, padding, dilation):
    """The (row, column) shift of each kernel offset of a stride-1, 1-D or 2-D convolution
    whose output has the input's size, read in place (``tiled.direct_products``), a tuple;
    None for the others."""
    if len(kernel) > 2 or any(s != 1 for s in stride) or \
            math.prod(kernel) > tiled.DIRECT_MAX_TAPS or \
            any(lo + hi != (k - 1) * d for (lo, hi), k, d in zip(padding, kernel, dilation)):
        return None
    rows = [k * dilation[0] - padding[0][0] for k in range(kernel[0])] if len(kernel) == 2 \
        else [0]
    columns = [k * dilation[-1] - padding[-1][0] for k in range(kernel[-1])]
    return tuple((a, b) for a in rows for b in columns)


@functools.lru_cache(maxsize=256)
def _reversed_taps(taps):
    return tuple((-a, -b) for a, b in taps)


def _tiled_on_frames(x, weight, stride, padding, dilation, groups, input_grad):
    """``_tiled`` over the input's frame."""
    channels = x.shape[1]
    out_channels, group_channels = weight.shape[:2]
    group_outputs = out_channels // groups
    kernel = weight.shape[2:]
    flat, reads, frame_shape, unframe, out, length = _framed(x, kernel, stride, padding,
                                                             dilation)
    sources, _, total = flat.shape
    frame = math.prod(frame_shape)
    x_shape = x.shape
    # per group, (group outputs, taps, group channels)
    weights = weight.reshape(groups, group_outputs, group_channels, -1).transpose(0, 1, 3, 2)
    offsets = _frame_offsets(reads, channels, group_channels, total)
    y_frame = np.empty((out_channels, frame), dtype=x.dtype)
    tiled.products(y_frame.reshape(groups, group_outputs, frame), flat, offsets,
                   weights.reshape(groups, group_outputs, -1), length,
                   x_step=group_channels * total)
    y = _outputs_of_frame(y_frame, frame_shape, out)

    def backward(dy):
        dy_rows, margin = _gradient_frame(dy, reads, total, frame_shape, out)
        width = dy_rows.shape[1]
        dweight = _frame_weight_grad(flat, reads, frame_shape, out, length, dy, weight.shape,
                                     groups, (dy_rows, margin))
        if not input_grad:
            return None, dweight
        dy_flat = dy_rows.reshape(-1)
        d_flat = np.empty(flat.shape, dtype=dy.dtype)
        for source in range(sources):
            numbers = [k for k, (s, _) in enumerate(reads) if s == source]
            if not numbers:
                d_flat[source] = 0
                continue
            shifts = np.array([margin - reads[k][1] + o * width for k in numbers
                               for o in range(group_outputs)], np.int64)
            # per group, (group channels, taps of this source, group outputs)
            source_weights = weights[:, :, numbers].transpose(0, 3, 2, 1).reshape(
                groups, group_channels, -1)
            tiled.products(d_flat[source].reshape(groups, group_channels, total), dy_flat,
                           shifts, source_weights, total, x_step=group_outputs * width)
        del dy_rows, dy_flat
        dx = np.empty(x_shape, dtype=dy.dtype)
        unframe(d_flat, dx)
        return dx, dweight

    return y, backward


def _frame_offsets(reads, channels, group_channels, total):
    """Where each (kernel offset, group channel) read of the frame starts, in the first
    group's channels."""
    return np.array([source * channels * total + c * total + start
                     for source, start in reads for c in range(group_channels)], np.int64)


def _gradient_frame(dy, reads, total, frame_shape, out):
    """The output gradient on the output's frame, zero between the outputs, after a margin
    of zeros as wide as the reads reach (rounded to 16 floats, and each row at a 64-byte
    boundary): (O, margin + total) rows and the margin."""
    out_channels = dy.shape[1]
    frame = math.prod(frame_shape)
    margin = -(-max(start for _, start in reads) // 16) * 16
    dy_rows = tiled.aligned_empty(out_channels, margin + total)
    if len(out) <= 2:
        frames.copy(np.ascontiguousarray(dy), dy_rows[None], True, (1,) * len(out),
                    (0,) * len(out), frame_shape[1:], margin)
    else:
        dy_rows[...] = 0
        _onto_frame(dy, dy_rows[:, margin:margin + frame], frame_shape)
    return dy_rows, margin


def _frame_weight_grad(flat, reads, frame_shape, out, length, dy, shape, groups,
                       gradient=None):
    """The weight gradient (O, C/g, *kernel) of a convolution over the input's frame: the
    frame's reads summed against the output gradient on its frame (``gradient``, as
    ``_gradient_frame`` gives it, or made here)."""
    out_channels, group_channels = shape[:2]
    group_outputs = out_channels // groups
    total = flat.shape[2]
    dy_rows, margin = gradient or _gradient_frame(dy, reads, total, frame_shape, out)
    width = dy_rows.shape[1]
    dtaps = tiled.sums(flat, _frame_offsets(reads, flat.shape[1], group_channels, total),
                       dy_rows.reshape(-1),
                       np.arange(group_outputs, dtype=np.int64) * width + margin, length,
                       items=groups, x_step=group_channels * total,
                       dy_step=group_outputs * width, each=True)
    # (groups, taps, group channels, group outputs) -> (O, C/g, *kernel)
    return np.ascontiguousarray(
        dtaps.reshape(groups, len(reads), group_channels, group_outputs).transpose(0, 3, 2, 1)
    ).reshape(shape)




def _shifted(x, weight, stride, padding, dilation, input_grad):
    """A convolution without columns, on BLAS: over the input's frame (``_framed``), the
    output is a sum of K products weight_k (O, C) @ slice_k (C, L), one per kernel offset,
    each adding into the output's block (``add_product``, BLAS with beta = 1); the weight
    gradient is K products of the slices with the output gradient on the frame, zero between
    the outputs, and the input gradient adds weight_k.T @ that gradient into each shifted
    slice. No K-times-the-input column buffer is written or read (1.2-2.7x faster than
    im2col's product), and a stride-2 layer skips im2col's strided gathers and scatters.
    For layers wider than the tiles take, and float64."""
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    flat, reads, frame_shape, unframe, out, length = _framed(x, kernel, stride, padding,
                                                             dilation)
    frame = math.prod(frame_shape)
    x_shape = x.shape  # the backward keeps no reference to x
    taps = _taps(weight)
    y_frame = np.empty((out_channels, frame), dtype=x.dtype)
    for first in range(0, length, SHIFTED_BLOCK):  # a block of columns stays in cache
        end = min(first + SHIFTED_BLOCK, length)
        y_rows = y_frame[:, first:end]
        for number, (source, start) in enumerate(reads):
            window = flat[source, :, start + first:start + end]
            if number == 0:
                np.matmul(taps[0], window, out=y_rows)
            else:
                add_product(taps[number], window, y_rows)
    y = _outputs_of_frame(y_frame, frame_shape, out)

    def backward(dy):
        # the gradient on the frame, zero between the outputs, in both orientations: the
        # weight gradient's products read it as (L, O) rows, 1.6x faster than a transposed
        # view
        dy_frame = np.zeros((*frame_shape, out_channels), dtype=dy.dtype)
        dy_frame[(slice(None), *(slice(0, o) for o in out))] = np.moveaxis(dy, 1, -1)
        dy_columns = dy_frame.reshape(frame, out_channels)[:length]
        dtaps = np.empty((len(reads), x_shape[1], out_channels), dtype=dy.dtype)
        for number, (source, start) in enumerate(reads):
            np.matmul(flat[source, :, start:start + length], dy_columns, out=dtaps[number])
        dweight = _weight_from_taps(dtaps, weight.shape)
        if not input_grad:
            return None, dweight
        del dy_frame, dy_columns
        dy_rows = np.zeros((out_channels, frame), dtype=dy.dtype)
        _onto_frame(dy, dy_rows, frame_shape)
        d_flat = np.zeros(flat.shape, dtype=dy.dtype)
        for first in range(0, length, SHIFTED_BLOCK):
            end = min(first + SHIFTED_BLOCK, length)
            for number, (source, start) in enumerate(reads):
                add_product(taps[number].T, dy_rows[:, first:end],
                            d_flat[source, :, start + first:start + end])
        del dy_rows  # freed before the copy out
        dx = np.empty(x_shape, dtype=dy.dtype)
        unframe(d_flat, dx)
        return dx, dweight

    return y, backward


def _columns_pay(x, kernel, stride, padding, dilation):
    """Whether a float32 layer the tiles could take runs faster on the columns: small
    strided output maps (whose frames waste the most), and the smallest maps at the tiles'
    widest. Forward and backward, batch 32: 128 -> 256 channels 3x3 stride 2 on 16x16 maps
    13.4 -> 7.9 ms, 48 -> 96 on 8x8 1.7 -> 1.2, even at 32 -> 64 to 8x8; 0.7-0.8x on wider
    maps or fewer channels. At stride 1, 128 channels on 3x3 maps 2.0 -> 1.75 ms, on 2x2
    1.9 -> 1.1, where 4x4 maps read in place are faster (2.6 on the columns, 2.2)."""
    return columns.applies(x) and _columns_pay_for(*x.shape[:2], x.shape[2:], kernel, stride,
                                                   padding, dilation)


@functools.lru_cache(maxsize=256)  # per layer shape: a small batch's step calls it per layer
def _columns_pay_for(samples, channels, spatial, kernel, stride, padding, dilation):
    if samples <= COLUMNS_STRIDED_MAX_SAMPLES and any(s > 1 for s in stride):
        return True
    if channels < COLUMNS_MIN_CHANNELS:
        return False
    positions = math.prod(padded_output_size(spatial, padding, kernel, stride, dilation))
    if any(s > 1 for s in stride):
        return positions <= COLUMNS_MAX_STRIDED_POSITIONS
    return channels >= TILED_MAX_CHANNELS and positions <= COLUMNS_MAX_POSITIONS


COLUMNS_MIN_CHANNELS = 32
# and any strided layer of a batch this small, whose frames' copies and phases cost more
# than the few columns (forward and backward, batch 1: 16 -> 32 channels 3x3/2 at 32x32
# 375 -> 159 us, 3 -> 16 229 -> 55, a 7x7/2 stem on 64x64 996 -> 568; batch 2 455 -> 271,
# 8 -> 16 337 -> 144; from batch 3 the 16-channel layer was slower on the columns)
COLUMNS_STRIDED_MAX_SAMPLES = 2
COLUMNS_MAX_STRIDED_POSITIONS = 64
COLUMNS_MAX_POSITIONS = 9


def _on_columns(x, weight, stride, padding, dilation, input_grad):
    """im2col on BLAS, the columns made and summed back by compiled copies (``columns``):
    one product of weight (O, C*K) by columns (C*K, N*P) per step, and one per gradient."""
    n = x.shape[0]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    out = padded_output_size(x.shape[2:], padding, kernel, stride, dilation)
    sweep = (kernel, stride, padding, dilation, out)
    x = np.ascontiguousarray(x)
    weight_rows = weight.reshape(out_channels, -1)
    y_rows = gemm.matmul(weight_rows, columns.gather(x, *sweep))
    y = np.ascontiguousarray(np.swapaxes(y_rows.reshape(out_channels, n, *out), 0, 1))
    return y, _columns_backward(x, weight, sweep, input_grad)


def _columns_backward(x, weight, sweep, input_grad, weight_grad=None):
    """The backward on the columns of a convolution of C-ordered ``x`` over ``sweep``; its
    weight gradient by ``weight_grad(dy)`` where given, x then not kept (only its shape)."""
    weight_rows = weight.reshape(len(weight), -1)
    shape = x.shape
    x_read = x if weight_grad is None else None

    def backward(dy):
        dy_rows = _output_rows(dy) if input_grad or weight_grad is None else None
        dweight = _weight_grad_on_columns(x_read, dy_rows, weight.shape, sweep) \
            if weight_grad is None else weight_grad(dy)
        if not input_grad:
            return None, dweight
        return columns.scatter(gemm.matmul(weight_rows.T, dy_rows), shape, *sweep), dweight

    return backward


def _phases_take(x, kernel, stride, padding, dilation):
    """Whether a strided float32 layer runs on the direct tiles over its input's stride
    phases (``_on_phases``): 2-D, its output the input's size over the stride, from
    COLUMNS_MIN_CHANNELS to DIRECT_MAX_CHANNELS input channels, its output planes filling
    DIRECT_WIDE_MIN_LANES of the tiles' vectors. Forward and backward against the paths
    they had: 0.88-0.94x at 32 -> 64 and 64 -> 128 channels on 16x16 and 32x32 maps and 128
    -> 256 on 8x8 (the forward 1.64 -> 1.30 ms at 64 -> 128, batch 32); 1.45x at 256 -> 512
    on 4x4 maps (2x2 planes), 1.2-1.3x at 3 and 16 channels, whose frames' backward is the
    faster."""
    if x.dtype != np.float32 or not columns.applies(x) or \
            not COLUMNS_MIN_CHANNELS <= x.shape[1] <= DIRECT_MAX_CHANNELS or \
            _phase_taps(x.shape[2:], kernel, stride, padding, dilation) is None:
        return False
    out_plane = math.prod(size // s for size, s in zip(x.shape[2:], stride))
    return _lanes_filled(out_plane) >= DIRECT_WIDE_MIN_LANES


@functools.lru_cache(maxsize=256)
def _phase_taps(spatial, kernel, stride, padding, dilation):
    """A strided 2-D convolution whose output is (H / s, W / s) as the direct tiles read it
    over the input's stride phases (s_r * s_c maps of (H / s_r, W / s_c), phase (i, j) the
    rows i, i + s_r, ... and columns j, j + s_c, ...): each kernel offset's (row shift,
    column shift) within its phase's map and its phase, as two tuples; None for the
    others."""
    if len(kernel) != 2 or all(s == 1 for s in stride) or \
            math.prod(kernel) > tiled.DIRECT_MAX_TAPS or \
            any(size % s for size, s in zip(spatial, stride)) or \
            padded_output_size(spatial, padding, kernel, stride, dilation) != \
            tuple(size // s for size, s in zip(spatial, stride)):
        return None
    taps, sources = [], []
    for ka in range(kernel[0]):
        row = ka * dilation[0] - padding[0][0]
        for kb in range(kernel[1]):
            column = kb * dilation[1] - padding[1][0]
            taps.append((row // stride[0], column // stride[1]))
            sources.append(row % stride[0] * stride[1] + column % stride[1])
    return tuple(taps), tuple(sources)


def _on_phases(x, weight, stride, padding, dilation, input_grad):
    """A strided convolution's forward on the direct tiles, over a copy of its input by
    stride phases (``_phase_taps``): each tap reads its phase's map shifted, as a stride-1
    convolution does its map. The backward is the columns' (``_on_columns``), but for the
    weight gradient where the direct sums over the phases pay (``_phase_sums_take``):
    those read the forward's copy of the phases, kept in place of the input (making it
    again took 0.7-1.2 ms of a DCGAN discriminator's 4x4/2 layers' 13-15 ms backward)."""
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    kernel = weight.shape[2:]
    out = tuple(size // s for size, s in zip(x.shape[2:], stride))
    taps, sources = _phase_taps(x.shape[2:], kernel, stride, padding, dilation)
    x = np.ascontiguousarray(x)
    phases = _stride_phases(x, stride, out)
    y = np.empty((n, out_channels, *out), np.float32)
    tiled.direct_products(y, phases, taps, weight.reshape(out_channels, channels, -1),
                          sources=sources)
    weight_grad = None
    if _phase_sums_take(channels, out_channels, len(taps), n * math.prod(out)):
        def weight_grad(dy):
            dweight = gradient_slots.empty(weight.shape, np.float32)  # the model's slot
            tiled.direct_sums(phases, np.ascontiguousarray(dy, np.float32), taps,
                              out=dweight.reshape(out_channels, channels, -1),
                              sources=sources)
            return dweight
    return y, _columns_backward(x, weight, (kernel, stride, padding, dilation, out),
                                input_grad, weight_grad)


def _phase_sums_take(channels, out_channels, taps, positions):
    """Whether a layer on the phases takes its weight gradient on the direct sums over
    them: where those run as products, with PHASE_SUMS_MIN_POSITIONS output positions in
    the batch, or fewer but at most PHASE_SUMS_FEW_POSITIONS_MAX_OUTPUTS outputs (the sums'
    transposed copy out grows with the outputs times the channels, the work they save with
    the positions too)."""
    return tiled.sums_are_products(channels, out_channels, taps) and (
        positions >= PHASE_SUMS_MIN_POSITIONS or
        out_channels <= PHASE_SUMS_FEW_POSITIONS_MAX_OUTPUTS)


# measured against the columns (made into panels), a 3x3/2 layer's whole backward, two
# cores, interleaved (best of 11, ms): 32 -> 64 on 16x16 at batch 128 4.06 -> 3.14, 64 ->
# 128 at 32 2.43 -> 2.06, 128 -> 256 at 32 8.32 -> 7.59, 128 -> 128 at 16 2.34 -> 2.00,
# 64 -> 128 on 32x32 at 8 2.22 -> 2.04; on 8x8 128 -> 256 at 32 2.12 -> 1.91, 256 -> 512
# at 64 14.29 -> 13.88, 256 -> 256 at 16 (256 positions) 2.20 -> 1.99; within 3% either
# way 128 -> 256 on 16x16 at 16, 256 -> 512 on 8x8 at 32 and on 16x16 at 8, 192 -> 384
# on 8x8 at 16; slower 256 -> 512 on 8x8 at 16 and 8 (3.9-4.3 -> 4.2-4.4, 1.84 -> 2.29)
PHASE_SUMS_MIN_POSITIONS = 512
PHASE_SUMS_FEW_POSITIONS_MAX_OUTPUTS = 256


def _stride_phases(x, stride, out):
    """C-ordered float32 (N, C, H, W) as (N, s_r * s_c * C, H / s_r, W / s_c): its stride
    phases, phase (i, j) the rows i, i + s_r, ... and columns j, j + s_c, ... of every
    channel (``fused.stride_phases``)."""
    n, channels = x.shape[:2]
    phases = np.empty((n, math.prod(stride), channels, *out), np.float32)
    parallel.stride_phases(x, phases)
    return phases.reshape(n, -1, *out)


def _output_rows(dy):
    """(N, O, *spatial) as (O, N * positions), the columns' order."""
    return np.ascontiguousarray(np.swapaxes(dy, 0, 1)).reshape(dy.shape[1], -1)


def _weight_grad_on_columns(x, dy_rows, weight_shape, sweep):
    """The weight gradient as one product of the output gradient's rows (``_output_rows``)
    by x's columns, into the model's slot for it (``gradient_slots``); ``x`` C-ordered. On
    the tiles the columns are made transposed, straight into the panels they read
    (``columns.gather_panels``), not made and then copied into them: columns and product,
    two cores, over three interleaved runs, 128 -> 256 channels 3x3/2 on 16x16 at batch 16
    2.2-2.6 -> 2.1-2.4 ms, 512 on 4x4 at batch 16 3.5-3.7 -> 3.2-3.3, at batch 32 7.0-7.6
    -> 6.4-6.8, 256 on 8x8 at batch 8 1.8-2.1 -> 1.7 (the columns into panels, a lane at
    a time, take 0.04-0.16 ms more; the product 0.2-0.5 ms less)."""
    reads = math.prod(weight_shape[1:])
    if dy_rows.dtype == np.float32 and gemm.panels_pay(len(dy_rows), dy_rows.shape[1], reads):
        panels = columns.gather_panels(x, *sweep, gemm.PANEL_WIDTH)
        dweight = gradient_slots.empty(weight_shape, np.float32)
        gemm.matmul_on_panels(dy_rows, panels, reads, dweight.reshape(len(dy_rows), -1))
        return dweight
    x_columns = columns.gather(x, *sweep)
    dweight = gradient_slots.empty(weight_shape, np.result_type(dy_rows, x_columns))
    gemm.matmul(dy_rows, x_columns.T, out=dweight.reshape(len(dy_rows), -1))
    return dweight


def _group_by_group(x, weight, stride, padding, dilation, groups, input_grad):
    """A grouped convolution as one ungrouped convolution per group, each on its paths for
    that many channels, the results joined along the channels."""
    group_channels = x.shape[1] // groups
    group_out = weight.shape[0] // groups
    inputs = [slice(i * group_channels, (i + 1) * group_channels) for i in range(groups)]
    outputs = [slice(i * group_out, (i + 1) * group_out) for i in range(groups)]
    parts = [_conv(x[:, rows], weight[columns], stride, padding, dilation, 1, input_grad)
             for rows, columns in zip(inputs, outputs)]
    y = np.concatenate([part for part, _ in parts], axis=1)

    def backward(dy):
        grads = [part_backward(dy[:, columns])
                 for (_, part_backward), columns in zip(parts, outputs)]
        dx = np.concatenate([g[0] for g in grads], axis=1) if input_grad else None
        return dx, np.concatenate([g[1] for g in grads])

    return y, backward


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


def _outputs_of_frame(y_frame, frame_shape, out):
    """The outputs (N, O, *out) held in an (O, frame) array laid out as ``frame_shape``."""
    if y_frame.dtype == np.float32 and len(out) <= 2 and y_frame.flags.c_contiguous:
        y = np.empty((frame_shape[0], len(y_frame), *out), y_frame.dtype)
        frames.copy(y, y_frame[None], False, (1,) * len(out), (0,) * len(out), frame_shape[1:],
                    0)
        return y
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
    out = padded_output_size(x.shape[2:], padding, kernel, stride, dilation)
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
    if frames.applies(x):
        flat = np.empty((1, channels, total), dtype=x.dtype)
        frames.copy(np.ascontiguousarray(x), flat, True, (1,) * len(spatial),
                    (0,) * len(spatial), periods, margin)

        def unframe(d_flat, dx):
            frames.copy(dx, d_flat, False, (1,) * len(spatial), (0,) * len(spatial), periods,
                        margin)

        return flat, reads, (n, *periods), unframe
    flat = np.zeros((1, channels, total), dtype=x.dtype)
    interior = (slice(None), slice(None), *(slice(0, size) for size in spatial))

    def maps(buffer):
        return buffer[0, :, margin:margin + n * block].reshape(channels, n, *periods)[interior]

    maps(flat)[...] = np.swapaxes(x, 0, 1)

    def unframe(d_flat, dx):
        np.swapaxes(dx, 0, 1)[...] = maps(d_flat)

    return flat, reads, (n, *periods), unframe


def _phase_frames(x, padding, stride, kernel, dilation):
    """A strided convolution's input as its stride phases (``pad_into_phases``), each
    flattened to (C, N * prod(grid)): every kernel offset reads one phase at unit stride.
    Returns (flat, reads, frame_shape, unframe) as ``_shared_padding_frame`` does, the
    reads as (phase, start)."""
    n, channels, *spatial = x.shape
    if frames.applies(x):
        padded = [size + lo + hi for size, (lo, hi) in zip(spatial, padding)]
        grid = [-(-p // s) for p, s in zip(padded, stride)]
        corner = [lo for lo, _ in padding]
        flat = np.empty((math.prod(stride), channels, n * math.prod(grid)), dtype=x.dtype)
        frames.copy(np.ascontiguousarray(x), flat, True, stride, corner, grid, 0)

        def unframe(d_flat, dx):
            frames.copy(dx, d_flat, False, stride, corner, grid, 0)

        return flat, phase_reads(kernel, stride, dilation, grid), (n, *grid), unframe
    phases, grid = pad_into_phases(np.swapaxes(x, 0, 1), padding, stride)
    reads = phase_reads(kernel, stride, dilation, grid)
    shape = phases.shape

    def unframe(d_flat, dx):
        gather_from_phases(d_flat.reshape(shape), padding, stride, np.swapaxes(dx, 0, 1))

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
    return gemm.matmul(weight_t, columns).reshape(-1, n, *spatial)


def _unit_stride_col2im(dy, weight_rows, padded_shape, kernel, dilation):
    """The input gradient of a stride-1 convolution, (C, N, *padded), with one add of long
    contiguous runs per kernel offset. ``dy`` (O, N, *out) is placed at its positions in the
    padded frame (zeros between rows), so every offset's window gradients form one
    contiguous stretch of each flattened (c, n) plane; the zeros add nothing."""
    out_channels, n, *out = dy.shape
    channels, padded = padded_shape[0], padded_shape[2:]
    wide = np.zeros((out_channels, n, out[0], *padded[1:]), dtype=dy.dtype)
    wide[(slice(None), slice(None), slice(None), *(slice(0, o) for o in out[1:]))] = dy
    dcolumns = gemm.matmul(weight_rows.T, wide.reshape(out_channels, -1)).reshape(
        channels, -1, n, wide[0, 0].size)
    flat_strides = [math.prod(padded[i + 1:]) for i in range(len(padded))]
    length = 1 + sum((o - 1) * f for o, f in zip(out, flat_strides))
    grad = np.zeros((channels, n, math.prod(padded)), dtype=dy.dtype)
    for number, offset in enumerate(kernel_offsets(kernel)):
        start = sum(k * d * f for k, d, f in zip(offset, dilation, flat_strides))
        grad[:, :, start:start + length] += dcolumns[:, number, :, :length]
    return grad.reshape(padded_shape)
