"""The per-channel kernels of conv nets against torch: depthwise convolution (strides, dilations,
multipliers, uneven padding, 1d and 2d, blocks split every way) and batch normalisation on
blocks of one row and of many."""

import tracemalloc

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import fused
from nnspec.backends.numpy.kernels.activations import relu, relu6
from nnspec.backends.numpy.kernels.conv import conv1d, conv2d
from nnspec.backends.numpy.kernels.norm_batch import batch_norm
from tests.numpy.helpers import F, as_torch, assert_close, torch

CONV = {1: conv1d, 2: conv2d}

DEPTHWISE = [
    # batch, channels, multiplier, size, kernel, stride, dilation, padding
    (4, 6, 1, (9, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
    (3, 5, 1, (10, 11), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))),   # stride 2, even/odd
    (2, 4, 1, (9, 12), (3, 3), (2, 2), (1, 1), ((1, 0), (1, 2))),    # columns split at once
    (2, 4, 1, (7, 7), (3, 3), (2, 2), (1, 1), ((0, 0), (0, 0))),     # no padding
    (2, 3, 2, (12, 9), (3, 2), (2, 1), (1, 2), ((2, 1), (0, 2))),    # multiplier 2, uneven
    (1, 4, 1, (13, 13), (5, 5), (3, 3), (1, 1), ((3, 3), (3, 3))),   # 5x5, stride 3
    (2, 3, 1, (11, 10), (3, 3), (1, 2), (2, 2), ((2, 2), (2, 2))),   # dilated
    (2, 8, 1, (4, 4), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),     # a small map
    (2, 3, 1, (6, 6), (1, 1), (2, 2), (1, 1), ((0, 0), (0, 0))),     # 1x1, strided: phases no tap reads
    (3, 5, 1, (11,), (3,), (2,), (1,), ((1, 1),)),                   # 1d
    (2, 4, 3, (15,), (4,), (3,), (2,), ((0, 3),)),                   # 1d, multiplier 3
    # unit stride, the output the input's size: maps framed whole, not split
    (3, 4, 1, (7, 9), (5, 5), (1, 1), (1, 1), ((2, 2), (2, 2))),     # 5x5
    (2, 3, 2, (8, 6), (3, 3), (1, 1), (2, 2), ((2, 2), (2, 2))),     # dilated, multiplier 2
    (2, 5, 1, (6, 7), (4, 2), (1, 1), (1, 1), ((1, 2), (1, 0))),     # even kernels, uneven
    (2, 3, 1, (5, 3), (3, 7), (1, 1), (1, 1), ((1, 1), (3, 3))),     # wider than the map
    (3, 4, 1, (12,), (5,), (1,), (1,), ((2, 2),)),                   # 1d
    (2, 3, 2, (9,), (3,), (1,), (3,), ((4, 2),)),                    # 1d, dilated, uneven
    # every stride phase the output's size: the phases framed the same way
    (3, 4, 1, (8, 10), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))),    # stride 2, even map
    (2, 3, 2, (12, 8), (5, 5), (2, 2), (1, 1), ((2, 2), (2, 2))),    # 5x5, multiplier 2
    (2, 5, 1, (6, 8), (3, 3), (2, 2), (1, 1), ((0, 1), (0, 1))),     # TF's 'same'
    (2, 4, 1, (9, 9), (3, 3), (3, 3), (1, 1), ((0, 0), (0, 0))),     # stride 3, no padding
    (3, 4, 1, (14,), (3,), (2,), (1,), ((1, 1),)),                   # 1d, stride 2
]


def run_depthwise_against_torch(batch, channels, multiplier, size, kernel, stride, dilation,
                                padding, input_grad=True):
    rng = np.random.default_rng(len(size) * 100 + channels)
    x = rng.standard_normal((batch, channels, *size), np.float32)
    weight = rng.standard_normal((channels * multiplier, 1, *kernel), np.float32)
    bias = rng.standard_normal(channels * multiplier, np.float32)
    y, backward = CONV[len(size)](x, weight, bias, stride=stride, padding=padding,
                                  dilation=dilation, groups=channels, input_grad=input_grad)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    pads = [p for pair in reversed(padding) for p in pair]
    conv = F.conv1d if len(size) == 1 else F.conv2d
    ty = conv(F.pad(tx, pads), tweight, tbias, stride=stride, dilation=dilation,
              groups=channels)
    assert_close(y, ty)
    dy = rng.standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias = backward(dy)
    if input_grad:
        assert_close(dx, tx.grad)
    else:
        assert dx is None
    assert_close(dweight, tweight.grad, atol=1e-4)
    assert_close(dbias, tbias.grad, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_convolution_matches_torch(case):
    run_depthwise_against_torch(*case)


@pytest.mark.torch
def test_depthwise_convolution_without_input_gradient_still_gives_the_weight_gradient():
    run_depthwise_against_torch(*DEPTHWISE[1], input_grad=False)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_backward_keeps_its_padded_phases_and_not_its_input(stride):
    """Between forward and backward the kernel holds the padded copy it reads (16x16 maps
    padded to 18x18 here; at stride 1 the input itself, read in place), nothing of the
    input's or the output's size besides."""
    weight = np.ones((16, 1, 3, 3), np.float32)
    # once first: loading the compiled jobs allocates far more than any map here
    conv2d(np.ones((8, 16, 16, 16), np.float32), weight, None, stride=(stride,) * 2,
           padding=((1, 1), (1, 1)), dilation=(1, 1), groups=16)
    tracemalloc.start()
    try:
        x = np.ones((8, 16, 16, 16), np.float32)
        y, backward = conv2d(x, weight, None, stride=(stride,) * 2, padding=((1, 1), (1, 1)),
                             dilation=(1, 1), groups=16)
        input_bytes = x.nbytes
        del x, y
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held <= input_bytes * 18 * 18 / (16 * 16) * 1.05
    dx = backward(np.ones((8, 16, 16 // stride, 16 // stride), np.float32))[0]
    assert dx.shape == (8, 16, 16, 16)


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(6, 3), (5, 4, 7), (3, 5, 6, 4), (1, 3, 5, 5), (11, 2, 3, 4),
                                   (2, 3, 9, 9), (1, 2, 80), (70, 2, 8, 8)])
@pytest.mark.parametrize("span", [1, 7, 1 << 12])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_matches_torch_over_column_spans_of_any_width(shape, span, train,
                                                                 monkeypatch):
    """The loops go down the batch a span of columns at a time: spans of one column, of a
    part of a channel's positions, and wider than every row; on maps of 64 positions and
    more a channel at a time (9x9 and 80 positions), but for runs shorter than 256 in
    batches of more than 64 (70 samples of 8x8)."""
    monkeypatch.setattr(fused, "COLUMN_SPAN", span)
    rng = np.random.default_rng(21)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 3 - 2).astype(np.float32)
    weight, bias = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    running_mean = rng.standard_normal(channels).astype(np.float32)
    running_var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    torch_mean, torch_var = torch.tensor(running_mean), torch.tensor(running_var)
    y, backward = batch_norm(x, weight, bias, running_mean, running_var, train=train)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    ty = F.batch_norm(tx, torch_mean, torch_var, tweight, tbias, training=train)
    assert_close(y, ty)
    np.testing.assert_allclose(running_mean, torch_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(running_var, torch_var.numpy(), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias, _, _ = backward(dy)
    assert_close(dx, tx.grad, atol=1e-4)
    assert_close(dweight, tweight.grad, atol=1e-4)
    assert_close(dbias, tbias.grad, atol=1e-4)


@pytest.mark.torch
def test_batch_norm_gradient_stays_accurate_in_float32_on_large_offset_batches():
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((16, 3, 12, 12)) * 0.1 + 50).astype(np.float32)
    y, backward = batch_norm(x, None, None, None, None, train=True)
    tx = as_torch(x)
    ty = F.batch_norm(tx, None, None, training=True)
    assert_close(y, ty, atol=1e-3)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    assert_close(backward(dy)[0], tx.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.torch
@pytest.mark.parametrize("kernel, torch_name", [(relu, "relu"), (relu6, "relu6")])
def test_relus_match_torch_at_their_kinks_and_keep_nan(kernel, torch_name):
    x = np.array([[-1.0, 0.0, 1e-30, 3.0, 6.0, 6.5, np.nan, -np.inf, np.inf]], np.float32)
    y, backward = kernel(x)
    tx = as_torch(x)
    ty = getattr(F, torch_name)(tx)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    ty.backward(torch.ones_like(ty))
    np.testing.assert_array_equal(backward(np.ones_like(x))[0], tx.grad.numpy())
    assert y.dtype == backward(np.ones_like(x))[0].dtype == np.float32


@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (3, 4, 9, 9)])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kernel, name", [(relu, "relu"), (relu6, "relu6")])
def test_batch_norm_applying_its_activation_equals_the_activation_after_it(kernel, name,
                                                                         train, shape):
    """Bit for bit, forward and backward, across the kinks (outputs spread over (-9, 9)),
    with a NaN channel; the activation's gradient comes from the output found again. On
    5x5 maps the chunks' loops, on 9x9 a channel at a time."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[2, 3, 1, 1] = np.nan
    weight = np.array([3.0, -2.0, 0.5, 1.0], np.float32)
    bias = np.array([1.0, 0.0, 5.9, -0.5], np.float32)
    stats = [np.zeros(4, np.float32), np.ones(4, np.float32)]
    plain, plain_backward = batch_norm(x, weight, bias, *(s.copy() for s in stats), train=train)
    activated, activation_backward = kernel(plain)
    fused_out, fused_backward = batch_norm(x, weight, bias, *(s.copy() for s in stats),
                                           train=train, activation=name)
    np.testing.assert_array_equal(fused_out, activated)
    assert np.isnan(fused_out[:, 3]).all() == train  # the batch statistics spread the NaN
    dy = rng.standard_normal(x.shape).astype(np.float32)
    want = plain_backward(activation_backward(dy)[0])
    got = fused_backward(dy)
    for ours, theirs in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(ours, theirs)
