"""Wide 3x3 convolutions by Winograd's transforms: torch as the oracle for the output and both
gradients, and the rules that choose them."""

import math

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import conv as conv_module
from nnspec.backends.numpy.kernels import gradient_slots, winograd
from nnspec.backends.numpy.kernels.conv import conv2d
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = pytest.mark.strict_numerics

SAME = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}


def layer(batch, channels, out_channels, height, width, seed=0):
    """An input, a weight at a layer's scale and an output gradient, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    weight = (rng.standard_normal((out_channels, channels, 3, 3))
              / math.sqrt(9 * channels)).astype(np.float32)
    dy = rng.standard_normal((batch, out_channels, height, width)).astype(np.float32)
    return x, weight, dy


def check_against_torch(x, weight, dy, y, backward, input_grad=True):
    tx, tw = as_torch(x), as_torch(weight)
    ty = F.conv2d(tx, tw, padding=1)
    ty.backward(as_torch(dy))
    assert_close(y, ty)
    dx, dweight = backward(dy)
    assert_close(dweight, tw.grad)
    if input_grad:
        assert_close(dx, tx.grad)
    else:
        assert dx is None


@pytest.mark.torch
@pytest.mark.parametrize("batch, channels, out_channels, height, width", [
    (2, 8, 8, 8, 8),
    (3, 5, 7, 5, 7),      # odd maps: the last tiles overhang, odd batch: uneven parts
    (1, 4, 6, 6, 5),      # one sample: one part
    (2, 3, 2, 1, 1),      # a 1x1 map: one tile, three of its rows and columns padding
    (2, 6, 4, 2, 9),
    (4, 24, 40, 4, 4),    # more outputs than inputs
    (4, 40, 24, 8, 8),    # fewer
])
@pytest.mark.parametrize("input_grad", [True, False])
def test_the_transforms_match_torch(batch, channels, out_channels, height, width, input_grad):
    x, weight, dy = layer(batch, channels, out_channels, height, width)
    y, backward = winograd.conv(x, weight, input_grad)
    check_against_torch(x, weight, dy, y, backward, input_grad)


@pytest.mark.torch
def test_blocks_of_samples_within_a_part_match_torch(monkeypatch):
    # blocks of one sample: each part's products add into its weight-gradient sums
    monkeypatch.setattr(winograd, "BLOCK_FLOATS", 1)
    x, weight, dy = layer(5, 6, 10, 6, 6, seed=1)
    assert [len(part) for part in winograd._blocks(5, 9, 10)] in ([2, 3], [5])
    y, backward = winograd.conv(x, weight, True)
    check_against_torch(x, weight, dy, y, backward)


@pytest.mark.torch
@pytest.mark.parametrize("batch, channels, out_channels, size", [
    (24, 128, 128, 8),   # ResNet's stage of 128 on 8x8 maps
    (8, 256, 128, 14),   # a decoder's 256 -> 128 on 14x14
])
def test_wide_layers_take_the_transforms_and_match_torch(monkeypatch, batch, channels,
                                                         out_channels, size):
    """At real widths, as a model's layer calls it, against torch in float64: the weight
    gradient's sums of 1,500 products cancel to small values here and there, where float32
    (torch's own too) is off by more than 1e-4 of the value; so each result is held to 1e-4
    of its value plus 2e-6 of its largest (torch's float32 weight gradient: 2.8e-6 of it)."""
    calls = []
    transforms = winograd.conv
    monkeypatch.setattr(winograd, "conv", lambda *args: calls.append(1) or transforms(*args))
    x, weight, dy = layer(batch, channels, out_channels, size, size, seed=2)
    y, backward = conv2d(x, weight, None, **SAME)
    dx, dweight, dbias = backward(dy)
    assert calls == [1] and dbias is None
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, weight))
    ty = F.conv2d(tx, tw, padding=1)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    for ours, theirs in [(y, ty), (dx, tx.grad), (dweight, tw.grad)]:
        theirs = theirs.detach().numpy()
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-6 * np.abs(theirs).max())


@pytest.mark.torch
def test_a_routed_layer_with_its_bias_and_relu_matches_torch(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_TILE_CHANNELS", 1)
    x, weight, dy = layer(3, 6, 5, 6, 8, seed=3)
    bias = np.linspace(-0.5, 0.5, 5).astype(np.float32)
    assert winograd.applies(x, weight, **SAME)
    y, backward = conv2d(x, weight, bias, **SAME, relu=True)
    dx, dweight, dbias = backward(dy)
    tx, tw, tb = as_torch(x), as_torch(weight), as_torch(bias)
    ty = F.relu(F.conv2d(tx, tw, tb, padding=1))
    ty.backward(as_torch(dy))
    for ours, theirs in [(y, ty), (dx, tx.grad), (dweight, tw.grad), (dbias, tb.grad)]:
        assert_close(ours, theirs)


def test_the_weight_gradient_goes_into_the_offered_slot():
    x, weight, dy = layer(2, 4, 4, 4, 4)
    slot = np.full(weight.shape, np.nan, np.float32)
    _, backward = winograd.conv(x, weight, True)
    with gradient_slots.offered([slot]):
        _, dweight = backward(dy)
    assert dweight is slot and np.isfinite(slot).all()


@pytest.mark.parametrize("change, expected", [
    ({}, True),
    ({"stride": (2, 2)}, False),
    ({"dilation": (2, 2)}, False),
    ({"padding": ((0, 0), (0, 0))}, False),
    ({"padding": ((1, 1), (0, 2))}, False),
    ({"groups": 2}, False),
    ({"channels": 96}, False),       # below MIN_CHANNELS in
    ({"out_channels": 96}, False),   # or out
    ({"batch": 8}, False),           # too few tiles for the channels: 8 x 16 x 128
    ({"size": 7}, False),            # 4x4 tiles of 8x8 over 7x7: overhang 1.31
    ({"size": 14}, True),
    ({"dtype": np.float64}, False),  # the gradient checks stay on the direct sums
])
def test_which_convolutions_take_the_transforms(change, expected):
    shape = {"batch": 32, "channels": 128, "out_channels": 128, "size": 8,
             "dtype": np.float32, **{k: v for k, v in change.items() if k not in SAME}}
    attrs = {**SAME, **{k: v for k, v in change.items() if k in SAME}}
    x = np.zeros((shape["batch"], shape["channels"], shape["size"], shape["size"]),
                 shape["dtype"])
    weight = np.zeros((shape["out_channels"], shape["channels"] // attrs["groups"], 3, 3),
                      shape["dtype"])
    assert winograd.applies(x, weight, **attrs) is expected


def test_a_5x5_kernel_stays_on_the_direct_paths():
    x = np.zeros((32, 128, 8, 8), np.float32)
    weight = np.zeros((128, 128, 5, 5), np.float32)
    assert not winograd.applies(x, weight, (1, 1), ((2, 2), (2, 2)), (1, 1), 1)


def test_conv_routes_only_what_the_rules_accept(monkeypatch):
    taken = []
    monkeypatch.setattr(winograd, "conv", lambda *args: taken.append(1))
    x, weight, _ = layer(2, 8, 8, 4, 4)
    conv_module._conv(x, weight, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True)
    assert taken == []
