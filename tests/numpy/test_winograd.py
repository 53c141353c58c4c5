"""Wide 3x3 convolutions by Winograd's transforms: torch as the oracle for the output and both
gradients, and the rules that choose them."""

import math

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import conv as conv_module
from nnspec.backends.numpy.kernels import gemm, gradient_slots, winograd
from nnspec.backends.numpy.kernels.conv import conv2d
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = pytest.mark.strict_numerics

SAME = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}


@pytest.fixture(autouse=True)
def wide_blas(monkeypatch):
    """The rules as they stand where NumPy's BLAS runs the CPU's widest vectors (where it
    does not, the transforms are off: ``test_narrow_blas_keeps_the_direct_paths``)."""
    monkeypatch.setattr(gemm, "blas_is_narrow", lambda: False)


def layer(batch, channels, out_channels, height, width, seed=0):
    """An input, a weight at a layer's scale and an output gradient, float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    weight = (rng.standard_normal((out_channels, channels, 3, 3))
              / math.sqrt(9 * channels)).astype(np.float32)
    dy = rng.standard_normal((batch, out_channels, height, width)).astype(np.float32)
    return x, weight, dy


def check_against_torch(x, weight, dy, y, backward, input_grad=True):
    """Against torch in float64: each result within 1e-4 of its value plus 2e-6 of its
    largest. The weight gradient's long sums cancel to small values here and there, where
    float32 is off by more than 1e-4 of the value (torch's own, by up to 2.8e-6 of the
    largest at 128 channels on 8x8 maps, batch 24), and the transforms spread their rounding
    differently over the kernels' nine taps than the direct sums do."""
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, weight))
    ty = F.conv2d(tx, tw, padding=1)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    dx, dweight = backward(dy)
    pairs = [(y, ty), (dweight, tw.grad)] + ([(dx, tx.grad)] if input_grad else [])
    for ours, theirs in pairs:
        theirs = theirs.detach().numpy()
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-6 * np.abs(theirs).max())
    if not input_grad:
        assert dx is None


# the backward's two ways: the whole batch's transforms at once, or blocks of samples
BACKWARDS = {"by positions": 10 ** 12, "by samples": -10 ** 12}


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
@pytest.mark.parametrize("way", BACKWARDS)
def test_the_transforms_match_torch(monkeypatch, batch, channels, out_channels, height, width,
                                    input_grad, way):
    monkeypatch.setattr(winograd, "BY_POSITIONS_MAX_FLOATS", BACKWARDS[way])
    calls = []
    for name in ("_backward_by_positions", "_backward_by_samples"):
        backward_way = getattr(winograd, name)
        monkeypatch.setattr(winograd, name, lambda *args, name=name, backward_way=backward_way:
                            calls.append(name) or backward_way(*args))
    x, weight, dy = layer(batch, channels, out_channels, height, width)
    y, backward = winograd.conv(x, weight, input_grad)
    check_against_torch(x, weight, dy, y, backward, input_grad)
    assert calls == ["_backward_" + way.replace(" ", "_")]


@pytest.mark.torch
def test_blocks_of_samples_within_a_part_match_torch(monkeypatch):
    # blocks of one sample: each part's products add into its weight-gradient sums
    monkeypatch.setattr(winograd, "BLOCK_FLOATS", 1)
    monkeypatch.setattr(winograd, "BY_POSITIONS_MAX_FLOATS", BACKWARDS["by samples"])
    x, weight, dy = layer(5, 6, 10, 6, 6, seed=1)
    assert [len(part) for part in winograd._blocks(5, 9, 10)] in ([2, 3], [5])
    y, backward = winograd.conv(x, weight, True)
    check_against_torch(x, weight, dy, y, backward)


@pytest.mark.torch
@pytest.mark.parametrize("batch, channels, out_channels, size, route", [
    (16, 256, 256, 8, ["conv", "backward"]),   # both ways by the transforms
    (24, 128, 128, 8, ["backward"]),           # the direct forward, the transforms' backward
    (8, 256, 128, 14, ["backward"]),           # a decoder's 256 -> 128 on 14x14
])
def test_wide_layers_take_the_transforms_and_match_torch(monkeypatch, batch, channels,
                                                         out_channels, size, route):
    """At real widths, as a model's layer calls it: sums of 1,152 to 2,304 products."""
    calls = []
    for name in ("conv", "backward"):
        function = getattr(winograd, name)
        monkeypatch.setattr(winograd, name, lambda *args, name=name, function=function:
                            calls.append(name) or function(*args))
    x, weight, dy = layer(batch, channels, out_channels, size, size, seed=2)
    y, backward = conv2d(x, weight, None, **SAME)
    dx, dweight, dbias = backward(dy)
    assert calls == route and dbias is None
    check_against_torch(x, weight, dy, y, lambda _: (dx, dweight))


@pytest.mark.torch
def test_a_routed_layer_with_its_bias_and_relu_matches_torch(monkeypatch):
    for rule in ("MIN_CHANNELS", "MIN_TILE_KERNELS", "FORWARD_MIN_TILE_CHANNELS"):
        monkeypatch.setattr(winograd, rule, 1)
    x, weight, dy = layer(3, 6, 5, 6, 8, seed=3)
    bias = np.linspace(-0.5, 0.5, 5).astype(np.float32)
    assert winograd.applies(x, weight, **SAME)
    y, backward = conv2d(x, weight, bias, **SAME, activation="relu")
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
    ({}, (True, True)),
    ({"stride": (2, 2)}, (False, None)),
    ({"dilation": (2, 2)}, (False, None)),
    ({"padding": ((0, 0), (0, 0))}, (False, None)),
    ({"padding": ((1, 1), (0, 2))}, (False, None)),
    ({"groups": 2}, (False, None)),
    ({"channels": 96}, (False, None)),                 # below MIN_CHANNELS in
    ({"out_channels": 96}, (False, None)),             # or out
    ({"batch": 8}, (False, None)),                     # 8 x 16 tiles x 128 x 128: too few
    ({"batch": 16, "size": 4, "channels": 256, "out_channels": 256}, (True, False)),
    ({"batch": 8, "size": 4, "channels": 256, "out_channels": 256}, (False, None)),
    ({"batch": 16, "channels": 256, "out_channels": 256}, (True, True)),
    ({"batch": 24}, (True, False)),                    # 24 x 16 x 128: the backward only
    ({"batch": 32, "size": 4, "channels": 256, "out_channels": 256}, (True, False)),
    ({"size": 7}, (False, None)),                      # 4x4 tiles of 8x8 over 7x7: 1.31
    ({"size": 14}, (True, True)),
    ({"channels": 384, "out_channels": 128}, (True, True)),
    ({"channels": 512, "out_channels": 256}, (False, None)),  # kernels of 8 MB
    ({"dtype": np.float64}, (False, None)),  # the gradient checks stay on the direct sums
])
def test_which_convolutions_take_the_transforms(change, expected):
    """(applies, forward_pays) for a layer of 128 channels on 8x8 maps, batch 32, changed."""
    shape = {"batch": 32, "channels": 128, "out_channels": 128, "size": 8,
             "dtype": np.float32, **{k: v for k, v in change.items() if k not in SAME}}
    attrs = {**SAME, **{k: v for k, v in change.items() if k in SAME}}
    x = np.zeros((shape["batch"], shape["channels"], shape["size"], shape["size"]),
                 shape["dtype"])
    weight = np.zeros((shape["out_channels"], shape["channels"] // attrs["groups"], 3, 3),
                      shape["dtype"])
    applies = winograd.applies(x, weight, **attrs)
    assert (applies, winograd.forward_pays(x, weight) if applies else None) == expected


def test_a_5x5_kernel_stays_on_the_direct_paths():
    x = np.zeros((32, 128, 8, 8), np.float32)
    weight = np.zeros((128, 128, 5, 5), np.float32)
    assert not winograd.applies(x, weight, (1, 1), ((2, 2), (2, 2)), (1, 1), 1)


def test_conv_routes_only_what_the_rules_accept(monkeypatch):
    taken = []
    for name in ("conv", "backward"):
        monkeypatch.setattr(winograd, name, lambda *args, name=name: taken.append(name))
    x, weight, _ = layer(2, 8, 8, 4, 4)
    conv_module._conv(x, weight, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True)
    assert taken == []


def test_narrow_blas_keeps_the_direct_paths(monkeypatch):
    """Where NumPy's BLAS runs narrower vectors than the CPU has, the transforms' products
    would run at half the direct tiles' rate: no layer takes them."""
    x, weight, _ = layer(16, 256, 256, 8, 8)
    assert winograd.applies(x, weight, **SAME)
    monkeypatch.setattr(gemm, "blas_is_narrow", lambda: True)
    assert not winograd.applies(x, weight, **SAME)
