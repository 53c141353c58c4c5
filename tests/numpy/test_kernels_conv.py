"""Convolution, pooling and batch-norm kernels: torch as the oracle (central differences in
test_kernel_gradients.py)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import blas, tiled
from nnspec.backends.numpy.kernels import conv as conv_module
from nnspec.backends.numpy.kernels.conv import conv1d, conv2d
from nnspec.backends.numpy.kernels.norm_batch import batch_norm
from nnspec.backends.numpy.kernels.pool import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    avg_pool1d,
    avg_pool2d,
    max_pool1d,
    max_pool2d,
)
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = pytest.mark.strict_numerics

FEW = settings(max_examples=20, deadline=None)
CONV = {1: conv1d, 2: conv2d}
MAX_POOL = {1: max_pool1d, 2: max_pool2d}
AVG_POOL = {1: avg_pool1d, 2: avg_pool2d}


def torch_pad(pairs):
    """F.pad's argument order: last spatial dim first."""
    return [side for pair in reversed(pairs) for side in pair]


# --- convolution -------------------------------------------------------------------------


@st.composite
def conv_cases(draw, nd):
    groups = draw(st.sampled_from([1, 2, 3]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    spatial = []
    for k, d, (lo, hi) in zip(kernel, dilation, padding):
        smallest = max(1, d * (k - 1) + 1 - lo - hi)
        spatial.append(draw(st.integers(smallest, smallest + 5)))
    return {
        "batch": draw(st.integers(1, 3)),
        "in_channels": groups * draw(st.integers(1, 3)),
        "out_channels": groups * draw(st.integers(1, 3)),
        "spatial": tuple(spatial),
        "kernel": kernel,
        "has_bias": draw(st.booleans()),
        "attrs": {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
    }


def conv_arrays(case, seed):
    rng = np.random.default_rng(seed)
    attrs = case["attrs"]
    x = rng.standard_normal((case["batch"], case["in_channels"], *case["spatial"]), np.float32)
    weight_shape = (case["out_channels"], case["in_channels"] // attrs["groups"], *case["kernel"])
    weight = rng.standard_normal(weight_shape, np.float32) * np.float32(case.get("scale", 1))
    bias = rng.standard_normal(case["out_channels"], np.float32) if case["has_bias"] else None
    return x, weight, bias


def check_conv_against_torch(nd, case):
    attrs = case["attrs"]
    x, weight, bias = conv_arrays(case, seed=0)
    y, backward = CONV[nd](x, weight, bias, **attrs)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    torch_conv = {1: F.conv1d, 2: F.conv2d}[nd]
    ty = torch_conv(
        F.pad(tx, torch_pad(attrs["padding"])), tweight, tbias,
        stride=attrs["stride"], dilation=attrs["dilation"], groups=attrs["groups"],
    )
    assert_close(y, ty)
    dy = np.random.default_rng(2).standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias = backward(dy)
    assert_close(dx, tx.grad)
    assert_close(dweight, tweight.grad, atol=1e-4)
    if bias is None:
        assert dbias is None
    else:
        assert_close(dbias, tbias.grad, atol=1e-4)


def check_conv_without_input_grad_against_torch(nd, case):
    """A convolution told its input needs no gradient: the output and the weight and bias
    gradients as torch's, and no input gradient."""
    attrs = case["attrs"]
    x, weight, bias = conv_arrays(case, seed=3)
    y, backward = CONV[nd](x, weight, bias, **attrs, input_grad=False)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    tx.requires_grad_(False)
    ty = {1: F.conv1d, 2: F.conv2d}[nd](
        F.pad(tx, torch_pad(attrs["padding"])), tweight, tbias, stride=attrs["stride"],
        dilation=attrs["dilation"], groups=attrs["groups"])
    assert_close(y, ty)
    dy = np.random.default_rng(4).standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias = backward(dy)
    assert dx is None
    assert_close(dweight, tweight.grad, atol=1e-4)
    assert_close(dbias, tbias.grad, atol=1e-4)


@pytest.mark.torch
@FEW
@given(conv_cases(nd=1))
def test_conv1d_matches_torch(case):
    check_conv_against_torch(1, case)


@pytest.mark.torch
@FEW
@given(conv_cases(nd=2))
def test_conv2d_matches_torch(case):
    check_conv_against_torch(2, case)


@pytest.mark.torch
@FEW
@given(conv_cases(nd=2), st.integers(6, 10), st.data())
def test_conv2d_of_6_to_10_channels_matches_torch(case, channels, data):
    """The cases above at the channel counts of the column-free path (whichever path the
    sizes choose)."""
    case = {**case, "in_channels": channels, "attrs": {**case["attrs"], "groups": 1},
            "out_channels": data.draw(st.integers(1, 9))}
    check_conv_against_torch(2, case)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel", [(2, 4), (3, 4), (5, 2)])
def test_same_padding_pairs_put_the_extra_on_the_high_side_like_torch(kernel):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6), np.float32)
    weight = rng.standard_normal((4, 3, *kernel), np.float32)
    dilation = (1, 2)
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    padding = tuple((total // 2, total - total // 2) for total in totals)
    y, _ = conv2d(x, weight, None, stride=(1, 1), padding=padding, dilation=dilation, groups=1)
    expected = F.conv2d(torch.tensor(x), torch.tensor(weight), padding="same", dilation=dilation)
    assert y.shape == x.shape[:1] + (4,) + x.shape[2:]
    assert_close(y, expected)


@pytest.mark.torch
def test_depthwise_conv2d_matches_torch():
    case = {
        "batch": 2, "in_channels": 6, "out_channels": 12, "spatial": (9, 8), "kernel": (3, 3),
        "has_bias": True,
        "attrs": {"stride": (2, 2), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 6},
    }
    check_conv_against_torch(2, case)


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"stride": 1, "padding": ((0, 0), (0, 0)), "dilation": (1, 1)}, "stride needs one entry"),
        ({"stride": (1, 1), "padding": ((0, 0),), "dilation": (1, 1)}, "padding needs one entry"),
    ],
)
def test_conv_names_an_attribute_without_one_entry_per_spatial_dim(attrs, message):
    x = np.zeros((1, 1, 4, 4), np.float32)
    weight = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        conv2d(x, weight, None, groups=1, **attrs)


def test_conv_rejects_a_window_larger_than_the_padded_input():
    x = np.zeros((1, 1, 3, 3), np.float32)
    weight = np.zeros((1, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(x, weight, None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1)


# --- pooling -----------------------------------------------------------------------------


@st.composite
def pool_cases(draw, nd):
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(
        (draw(st.integers(0, k // 2)), draw(st.integers(0, k // 2))) for k in kernel
    )
    spatial = tuple(
        draw(st.integers(max(1, k - lo - hi), 9)) for k, (lo, hi) in zip(kernel, padding)
    )
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), *spatial)
    return shape, {"kernel": kernel, "stride": stride, "padding": padding}


def torch_pool(kind, nd, tx, attrs):
    """torch's pooling; asymmetric padding goes through F.pad since torch only pads evenly."""
    pooling = {
        ("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d,
        ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d,
    }[kind, nd]
    pairs = attrs["padding"]
    if all(lo == hi for lo, hi in pairs):
        return pooling(tx, attrs["kernel"], attrs["stride"], tuple(lo for lo, _ in pairs))
    fill = -float("inf") if kind == "max" else 0.0
    return pooling(F.pad(tx, torch_pad(pairs), value=fill), attrs["kernel"], attrs["stride"])


def check_pool_against_torch(kind, nd, x, attrs):
    pooling = {"max": MAX_POOL, "avg": AVG_POOL}[kind][nd]
    y, backward = pooling(x, **attrs)
    tx = as_torch(x)
    ty = torch_pool(kind, nd, tx, attrs)
    assert_close(y, ty)
    dy = np.random.default_rng(5).standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    (dx,) = backward(dy)
    assert_close(dx, tx.grad)


@pytest.mark.torch
@FEW
@given(st.sampled_from(["max", "avg"]), st.sampled_from([1, 2]), st.data())
def test_pooling_matches_torch(kind, nd, data):
    shape, attrs = data.draw(pool_cases(nd))
    x = np.random.default_rng(6).standard_normal(shape, np.float32)
    check_pool_against_torch(kind, nd, x, attrs)


@pytest.mark.torch
@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (3, 3)])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_routes_ties_to_the_first_maximum_like_torch(kernel, stride, padding, size):
    """Overlapping windows (2x2 stride 1; 3x3 stride 1 and 2, over stride phases), windows
    that tile the input (2x2 stride 2 on 6x6: the gradient is written in place, nothing
    zeroed), that leave rows out (7x7) or gaps (2x2 stride 3), with and without padding;
    zeros and ones make ties everywhere."""
    x = np.random.default_rng(7).integers(0, 2, (2, 3, size, size)).astype(np.float32)
    attrs = {"kernel": (kernel, kernel), "stride": stride,
             "padding": ((padding, padding),) * 2}
    check_pool_against_torch("max", 2, x, attrs)


@pytest.mark.torch
def test_max_pool_passes_nan_and_infinities_on_like_torch():
    """A window holding a NaN gives NaN (its gradient goes to the NaN), windows of -inf
    give -inf (their gradient to the first). float32, the compiled loops: the float64
    NumPy passes (the gradient checks') give such windows no gradient."""
    x = np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32)
    x[0, 1, 2, 3] = x[1, 2, 6, 0] = np.nan
    x[1, 2, 5, 5] = -np.inf
    x[1, 0] = -np.inf
    y, backward = max_pool2d(x, kernel=(3, 3), stride=(2, 2), padding=((1, 1), (1, 1)))
    tx = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(tx, 3, 2, 1)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    dy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(backward(dy)[0], tx.grad.numpy(), rtol=1e-6)


@pytest.mark.torch
@FEW
@given(
    st.sampled_from([1, 2]),
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_adaptive_avg_pool_matches_torch(nd, spatial, output_size):
    spatial, output_size = spatial[:nd], output_size[:nd]
    x = np.random.default_rng(8).standard_normal((2, 3, *spatial), np.float32)
    pooling = {1: adaptive_avg_pool1d, 2: adaptive_avg_pool2d}[nd]
    torch_pooling = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}[nd]
    y, backward = pooling(x, output_size=output_size)
    tx = as_torch(x)
    ty = torch_pooling(tx, output_size)
    assert_close(y, ty)
    dy = np.random.default_rng(9).standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    assert_close(backward(dy)[0], tx.grad)


def test_global_average_pooling_is_the_spatial_mean():
    x = np.random.default_rng(10).standard_normal((4, 8, 7, 7), np.float32)
    y, _ = adaptive_avg_pool2d(x, output_size=(1, 1))
    np.testing.assert_allclose(y, x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


# --- batch norm --------------------------------------------------------------------------

BATCH_NORM_SHAPES = [(6, 3), (4, 3, 5), (3, 2, 4, 5)]


def batch_norm_arrays(shape, affine, seed):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    weight = rng.standard_normal(channels).astype(np.float32) if affine else None
    bias = rng.standard_normal(channels).astype(np.float32) if affine else None
    running_mean = rng.standard_normal(channels).astype(np.float32)
    running_var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    return x, weight, bias, running_mean, running_var


@pytest.mark.torch
@pytest.mark.parametrize("shape", BATCH_NORM_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_matches_torch(shape, affine, train):
    x, weight, bias, running_mean, running_var = batch_norm_arrays(shape, affine, seed=12)
    torch_mean, torch_var = torch.tensor(running_mean), torch.tensor(running_var)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    for step in range(3):
        y, backward = batch_norm(
            x, weight, bias, running_mean, running_var, train=train, momentum=0.1, eps=1e-5
        )
        ty = F.batch_norm(tx, torch_mean, torch_var, tweight, tbias, training=train)
        assert_close(y, ty)
        np.testing.assert_allclose(running_mean, torch_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(running_var, torch_var.numpy(), rtol=1e-5, atol=1e-6)
        assert running_mean.dtype == running_var.dtype == np.float32
    dy = np.random.default_rng(13).standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias, dmean, dvar = backward(dy)
    assert dmean is None and dvar is None
    assert_close(dx, tx.grad, atol=1e-4)
    if affine:
        assert_close(dweight, tweight.grad, atol=1e-4)
        assert_close(dbias, tbias.grad, atol=1e-4)
    else:
        assert dweight is None and dbias is None


@pytest.mark.torch
def test_batch_norm_statistics_stay_accurate_in_float32_on_large_offset_batches():
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((64, 4, 32, 32)) * 0.1 + 50).astype(np.float32)
    running_mean, running_var = np.zeros(4, np.float32), np.ones(4, np.float32)
    torch_mean, torch_var = torch.zeros(4), torch.ones(4)
    y, _ = batch_norm(x, None, None, running_mean, running_var, train=True)
    ty = F.batch_norm(torch.tensor(x), torch_mean, torch_var, training=True)
    assert_close(y, ty, atol=1e-3)
    np.testing.assert_allclose(running_var, torch_var.numpy(), rtol=1e-4)


def test_batch_norm_refuses_a_single_value_per_channel_in_training():
    x = np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm(x, None, None, np.zeros(3, np.float32), np.ones(3, np.float32), train=True)


@pytest.mark.torch
@pytest.mark.parametrize(
    "nd, channels, out_channels, groups, stride, dilation, padding",
    [
        (2, 8, 8, 8, (1, 1), (1, 1), ((1, 1), (1, 1))),      # depthwise
        (2, 6, 12, 6, (2, 1), (1, 2), ((2, 1), (0, 2))),     # depthwise, multiplier 2
        (2, 8, 12, 4, (2, 2), (2, 1), ((1, 0), (1, 1))),     # grouped
        (2, 16, 32, 1, (2, 2), (1, 1), ((0, 0), (0, 0))),    # strided 1x1 projection
        (2, 16, 24, 1, (1, 1), (1, 1), ((0, 0), (0, 0))),    # pointwise 1x1 (own path)
        (2, 16, 1, 1, (1, 1), (1, 1), ((0, 0), (0, 0))),     # to one channel: dx an outer product
        (2, 1, 12, 1, (1, 1), (1, 1), ((0, 0), (0, 0))),     # from one: y an outer product
        (1, 16, 8, 1, (1,), (1,), ((0, 0),)),                # pointwise 1d
        (1, 8, 8, 8, (2,), (2,), ((2, 1),)),                 # depthwise 1d
        (1, 6, 9, 3, (1,), (3,), ((0, 3),)),                 # grouped 1d
    ],
)
def test_grouped_depthwise_and_projection_convolutions_match_torch(
        nd, channels, out_channels, groups, stride, dilation, padding):
    kernel = (1,) * nd if channels in (1, 16) else (3,) * nd
    case = {
        "batch": 5, "in_channels": channels, "out_channels": out_channels,
        "spatial": (9, 7)[:nd], "kernel": kernel, "has_bias": True,
        "attrs": {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
    }
    check_conv_against_torch(nd, case)


@pytest.mark.torch
@pytest.mark.parametrize("nd, channels, out_channels, kernel, stride, padding, spatial, groups", [
    (2, 16, 24, (3, 3), (1, 1), ((1, 1), (1, 1)), (12, 10), 1),   # in place (direct tiles)
    (2, 40, 48, (3, 3), (1, 1), ((1, 1), (1, 1)), (9, 9), 1),     # gradient products
    (2, 8, 12, (3, 3), (2, 2), ((1, 1), (1, 1)), (11, 9), 1),     # frames, strided
    (2, 64, 32, (3, 3), (2, 2), ((1, 1), (1, 1)), (8, 8), 1),     # columns
    (2, 200, 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (5, 6), 1),    # BLAS, wide
    (2, 24, 160, (1, 1), (1, 1), ((0, 0), (0, 0)), (12, 10), 1),  # pointwise tiles
    (2, 12, 12, (3, 3), (1, 1), ((1, 1), (1, 1)), (7, 9), 12),    # depthwise
    (1, 16, 8, (3,), (1,), ((1, 1),), (30,), 2),                  # 1-D, grouped
])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", ("leaky_relu", 0.2)])
def test_a_convolution_with_its_relu_in_one_pass_matches_torch(
        nd, channels, out_channels, kernel, stride, padding, spatial, groups, has_bias, dtype,
        activation):
    """``activation="relu"`` or ("leaky_relu", slope) (the interpreter's fusion of a
    convolution and the activation that alone reads it): the bias and the activation
    applied in place in one pass, on both cores in float32, the gradient masked (or
    scaled) by the output. (NaN's way through the loops: test_parallel.py.)"""
    case = conv_case(channels, out_channels, spatial, kernel, stride, padding, (1,) * nd,
                     groups=groups, has_bias=has_bias)
    x, weight, bias = (None if a is None else a.astype(dtype) for a in conv_arrays(case, 5))
    y, backward = CONV[nd](x, weight, bias, **case["attrs"], activation=activation)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    ty = {1: F.conv1d, 2: F.conv2d}[nd](
        F.pad(tx, torch_pad(padding)), tweight, tbias, stride=stride, groups=groups)
    ty = F.relu(ty) if activation == "relu" else F.leaky_relu(ty, activation[1])
    dy = np.random.default_rng(6).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias = backward(dy)
    assert y.dtype == dx.dtype == dweight.dtype == dtype
    assert (y < 0).mean() > 0.3 if activation != "relu" else (y == 0).mean() > 0.3
    for ours, theirs in ((y, ty), (dx, tx.grad), (dweight, tweight.grad),
                         (dbias, tbias.grad if has_bias else None)):
        if theirs is None:
            assert ours is None
        else:
            np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_with_bias_of_an_output_laid_out_otherwise_masks_by_the_biased_output(dtype):
    """``with_bias`` given a non-contiguous output (a path that returns a view): the bias
    and relu applied, and the backward's mask and bias gradient taken from that output."""
    rng = np.random.default_rng(8)
    y0 = rng.standard_normal((6, 3, 4, 5)).astype(dtype)
    bias = rng.standard_normal(6).astype(dtype)
    seen = []
    y, backward = conv_module.with_bias(y0.transpose(1, 0, 2, 3), lambda d: seen.append(d) or
                                        (None, None), bias, "relu")
    expected = np.maximum(y0.transpose(1, 0, 2, 3) + bias[:, None, None], 0)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _, _, dbias = backward(dy)
    passed = np.where(expected > 0, dy, 0)
    np.testing.assert_allclose(seen[0], passed, rtol=1e-6)
    np.testing.assert_allclose(dbias, passed.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("channels, out_channels, spatial, kernel, stride, pad, groups, dtype", [
    (64, 64, (8, 8), (3, 3), (1, 1), 1, 1, np.float32),      # in place, gradient products
    (8, 8, (8, 8), (3, 3), (1, 1), 1, 1, np.float32),        # in place, sums
    (16, 32, (9, 9), (3, 3), (2, 2), 1, 1, np.float32),      # frames
    (64, 32, (8, 8), (3, 3), (2, 2), 1, 1, np.float32),      # columns
    (200, 16, (5, 6), (3, 3), (1, 1), 1, 1, np.float32),     # wide
    (24, 160, (12, 10), (1, 1), (1, 1), 0, 1, np.float32),   # pointwise tiles
    (24, 16, (8, 8), (1, 1), (2, 2), 0, 1, np.float32),      # strided pointwise
    (12, 12, (7, 9), (3, 3), (1, 1), 1, 12, np.float32),     # depthwise
    (16, 8, (30,), (3,), (1,), 1, 2, np.float32),            # 1-D grouped
    (200, 16, (5, 6), (3, 3), (2, 2), 1, 4, np.float64),     # float64, grouped
])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients_like_torch(
        channels, out_channels, spatial, kernel, stride, pad, groups, dtype):
    """No samples: every path once raised on its reshapes (an internal error)."""
    from nnspec.backends.numpy.kernels.conv_transpose import conv_transpose2d

    x = np.zeros((0, channels, *spatial), dtype)
    weight = np.ones((out_channels, channels // groups, *kernel), dtype)
    bias = np.ones(out_channels, dtype)
    padding = tuple((pad, pad) for _ in spatial)
    y, backward = CONV[len(spatial)](x, weight, bias, stride=stride, padding=padding,
                                     dilation=(1,) * len(spatial), groups=groups,
                                     activation="relu")
    expected = {1: F.conv1d, 2: F.conv2d}[len(spatial)](
        torch.zeros(x.shape, dtype=torch.float64), torch.ones(weight.shape, dtype=torch.float64),
        stride=stride, padding=pad, groups=groups)
    assert y.shape == tuple(expected.shape) and y.dtype == dtype
    dx, dweight, dbias = backward(np.zeros(y.shape, dtype))
    assert dx.shape == x.shape and dweight.shape == weight.shape and dbias.shape == bias.shape
    assert not dweight.any() and not dbias.any()
    if len(spatial) == 2:
        y, backward = conv_transpose2d(np.zeros((0, channels, *spatial), dtype),
                                       np.ones((channels, out_channels // groups, 2, 2), dtype),
                                       bias, stride=2, groups=groups)
        assert y.shape == (0, out_channels, 2 * spatial[0], 2 * spatial[1])
        dx, dweight, dbias = backward(np.zeros(y.shape, dtype))
        assert dx.shape == (0, channels, *spatial) and not dweight.any() and not dbias.any()


def conv_case(channels, out_channels, spatial, kernel, stride, padding, dilation, groups=1,
              batch=3, has_bias=True):
    """A case for ``check_conv_against_torch``."""
    return {"batch": batch, "in_channels": channels, "out_channels": out_channels,
            "spatial": spatial, "kernel": kernel, "has_bias": has_bias,
            "attrs": {"stride": stride, "padding": padding, "dilation": dilation,
                      "groups": groups}}


def record_calls(monkeypatch, functions, note=lambda label, args: label):
    """Wrap conv.py's ``functions`` ({label: function name}); each call appends
    ``note(label, its arguments)`` to the list returned."""
    taken = []
    for label, function in functions.items():
        original = getattr(conv_module, function)
        monkeypatch.setattr(conv_module, function,
                            lambda *args, _label=label, _original=original:
                            taken.append(note(_label, args)) or _original(*args))
    return taken


def its_stride(_label, args):
    return args[2]


STRIDE_ONE_CASES = [
    # nd, channels, out channels, groups, kernel, dilation, padding, spatial, BLAS path
    (2, 16, 16, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (9, 7), "shifted"),
    (2, 8, 8, 1, (3, 3), (2, 2), ((2, 2), (2, 2)), (20, 17), "shifted"),   # dilated
    (2, 6, 10, 1, (3, 2), (1, 1), ((2, 0), (1, 0)), (16, 15), "shifted"),  # uneven
    (2, 8, 8, 1, (3, 3), (1, 1), ((3, 1), (1, 1)), (14, 14), "shifted"),   # pad > reach
    (1, 16, 8, 1, (3,), (3,), ((3, 3),), (13,), "shifted"),                # 1d dilated
    (2, 8, 24, 1, (3, 3), (1, 1), ((0, 0), (0, 0)), (5, 11), "shifted"),   # small valid
    (2, 12, 10, 1, (3, 3), (2, 1), ((4, 1), (0, 2)), (8, 6), "shifted"),
    (2, 168, 8, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (5, 6), "flipped"),   # wide
    (2, 8, 8, 1, (3, 3), (1, 1), ((3, 1), (1, 1)), (6, 6), "shifted"),     # pad > reach
    (2, 7, 8, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (6, 6), "shifted"),
    (2, 8, 8, 1, (3, 3), (1, 1), ((3, 3), (2, 3)), (7, 6), "shifted"),     # both > reach
    (2, 6, 4, 1, (2, 3), (3, 1), ((3, 3), (0, 4)), (9, 5), "shifted"),     # even, dilated
    (2, 168, 8, 1, (3, 3), (1, 1), ((3, 1), (1, 1)), (5, 5), "col2im"),    # pad > reach
    (2, 4, 8, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (16, 16), "col2im"),    # few channels
    (2, 3, 8, 1, (3, 3), (2, 1), ((3, 1), (0, 2)), (9, 8), "col2im"),      # pad > reach
    (1, 2, 5, 1, (5,), (2,), ((4, 4),), (11,), "col2im"),                  # 1d dilated
]


@pytest.mark.torch
@pytest.mark.parametrize(
    "nd, channels, out_channels, groups, kernel, dilation, padding, spatial, path",
    STRIDE_ONE_CASES)
def test_each_stride_one_convolution_path_on_blas_matches_torch(
        monkeypatch, nd, channels, out_channels, groups, kernel, dilation, padding, spatial,
        path):
    # the BLAS paths (wide layers, float64), as they are chosen where NumPy's product and add
    # run the column-free sums (with BLAS adding them, every ungrouped convolution of 6 or
    # more channels is shifted)
    use_route(monkeypatch, "blas")
    monkeypatch.setattr(conv_module, "accumulates", lambda: False)
    taken = record_calls(monkeypatch, {
        "shifted": "_shifted", "flipped": "_unit_stride_input_grad",
        "col2im": "_unit_stride_col2im"})
    check_conv_against_torch(nd, conv_case(channels, out_channels, spatial, kernel, (1,) * nd,
                                           padding, dilation, groups))
    assert taken == [path]


@pytest.mark.torch
@pytest.mark.parametrize(
    "nd, channels, out_channels, groups, kernel, dilation, padding, spatial, path",
    [case for case in STRIDE_ONE_CASES if case[1] <= conv_module.TILED_MAX_CHANNELS])
def test_each_stride_one_convolution_on_the_tiles_matches_torch(
        monkeypatch, nd, channels, out_channels, groups, kernel, dilation, padding, spatial,
        path):
    taken = record_calls(monkeypatch, {"tiles": "_tiled"})
    check_conv_against_torch(nd, conv_case(channels, out_channels, spatial, kernel, (1,) * nd,
                                           padding, dilation, groups))
    assert taken == ["tiles"]


@pytest.mark.torch
@pytest.mark.parametrize("nd, channels, out_channels, groups, kernel, dilation, padding, spatial", [
    (2, 16, 16, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (9, 8)),
    (2, 5, 7, 1, (3, 3), (2, 1), ((2, 2), (1, 1)), (11, 13)),      # dilated rows
    (2, 6, 4, 1, (2, 4), (1, 1), ((0, 1), (2, 1)), (8, 10)),       # even kernel, uneven
    (2, 70, 12, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (8, 9)),      # two passes of reads
    (2, 12, 12, 12, (3, 3), (1, 1), ((1, 1), (1, 1)), (10, 7)),    # depthwise
    (2, 8, 24, 4, (5, 5), (1, 1), ((2, 2), (2, 2)), (9, 9)),       # grouped
    (2, 3, 17, 1, (7, 7), (1, 1), ((3, 3), (3, 3)), (16, 12)),     # a stem, odd outputs
    (1, 16, 8, 1, (5,), (2,), ((4, 4),), (70,)),                   # 1d dilated
    (2, 24, 10, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (8, 8)),      # wide tiles: 6 + 3 + 1 rows
    (2, 72, 72, 72, (3, 3), (1, 1), ((1, 1), (1, 1)), (10, 10)),   # wide, depthwise
])
def test_same_size_convolutions_read_in_place_match_torch(
        monkeypatch, nd, channels, out_channels, groups, kernel, dilation, padding, spatial):
    """Stride 1 keeping the map's size: the forward and the input gradient read the maps as
    they are, taps past the edges masked; the weight gradient over frames."""
    taken = []
    direct = tiled.direct_products
    monkeypatch.setattr(tiled, "direct_products",
                        lambda *args: taken.append(True) or direct(*args))
    case = conv_case(channels, out_channels, spatial, kernel, (1,) * nd, padding, dilation,
                     groups)
    case["scale"] = 1 / math.sqrt(channels // groups * math.prod(kernel))  # a layer's scale
    check_conv_against_torch(nd, case)
    check_conv_without_input_grad_against_torch(nd, case)
    assert taken == [True, True, True]  # two forwards, one input gradient


def use_route(monkeypatch, route):
    """"tiles": float32 convolutions as they run (the tiles up to TILED_MAX_CHANNELS, or
    DIRECT_MAX_CHANNELS read in place);
    "columns": every one on the compiled columns that wider float32 layers take; "blas":
    every one on the BLAS paths that float64 and 3-D layers take."""
    if route in ("columns", "blas"):
        monkeypatch.setattr(conv_module, "TILED_MAX_CHANNELS", 0)
        monkeypatch.setattr(conv_module, "DIRECT_MAX_CHANNELS", 0)
    if route == "blas":
        monkeypatch.setattr(conv_module.columns, "applies", lambda x: False)


GROUPED_CASES = [
    # nd, channels, out channels, groups, kernel, stride, dilation, padding, spatial
    (2, 8, 8, 2, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (6, 6)),
    (2, 18, 10, 2, (5, 5), (1, 1), (1, 1), ((2, 2), (2, 2)), (6, 9)),
    (2, 16, 24, 4, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (9, 8)),
    (2, 24, 12, 3, (3, 3), (2, 1), (1, 2), ((2, 1), (0, 2)), (11, 9)),
    (2, 12, 12, 4, (3, 3), (1, 1), (1, 1), ((3, 1), (1, 1)), (8, 8)),  # pad > reach
    (2, 12, 6, 3, (2, 3), (3, 2), (2, 1), ((0, 3), (1, 0)), (10, 9)),  # even, odd
    (1, 12, 8, 4, (5,), (3,), (2,), ((4, 1),), (23,)),
    (2, 16, 16, 2, (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)), (5, 5)),  # 1x1
    (2, 32, 16, 2, (3, 2), (1, 1), (1, 1), ((2, 0), (1, 1)), (7, 7)),
    (2, 64, 32, 2, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (9, 9)),
    (2, 32, 32, 2, (1, 1), (2, 2), (1, 1), ((0, 0), (0, 0)), (5, 5)),  # 1x1, stride 2
    (1, 32, 64, 2, (3,), (1,), (1,), ((1, 1),), (12,)),
    (2, 40, 40, 40, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (7, 6)),  # depthwise
    (2, 12, 36, 12, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (9, 8)),  # depthwise, 3 each
    (2, 272, 16, 2, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (4, 5)),  # wide groups: BLAS
]


@pytest.mark.torch
@pytest.mark.parametrize("route", ["tiles", "columns", "blas"])
@pytest.mark.parametrize(
    "nd, channels, out_channels, groups, kernel, stride, dilation, padding, spatial",
    GROUPED_CASES)
def test_grouped_convolutions_match_torch_on_their_paths(
        monkeypatch, route, nd, channels, out_channels, groups, kernel, stride, dilation,
        padding, spatial):
    # on the tiles, every group at once; on BLAS, one ungrouped convolution per group
    use_route(monkeypatch, route)
    taken = record_calls(monkeypatch, {"tiles": "_tiled", "by_group": "_group_by_group"})
    case = conv_case(channels, out_channels, spatial, kernel, stride, padding, dilation, groups)
    case["scale"] = 1 / math.sqrt(channels // groups * math.prod(kernel))  # a layer's scale
    check_conv_against_torch(nd, case)
    check_conv_without_input_grad_against_torch(nd, case)
    tiles = route == "tiles" and channels // groups <= conv_module.TILED_MAX_CHANNELS
    assert taken == ["tiles" if tiles else "by_group"] * 2


@pytest.mark.torch
@pytest.mark.parametrize("channels, stride, spatial", [
    (272, (1, 1), (5, 6)), (136, (2, 2), (9, 8)), (144, (1, 1), (1, 1)), (256, (1, 2), (4, 7)),
    (200, (1, 1), (7, 7))])  # wide; strided; a 1x1 map; 7x7 fills 77%
@pytest.mark.parametrize("route", ["columns", "blas"])
def test_wide_convolutions_take_the_columns_in_float32_and_the_column_free_path_else(
        monkeypatch, route, channels, stride, spatial):
    if route == "blas" and not blas.accumulates():
        pytest.skip("NumPy's BLAS here is not the OpenBLAS its wheels ship")
    use_route(monkeypatch, route)
    taken = record_calls(monkeypatch, {"columns": "_on_columns", "blas": "_shifted"})
    case = conv_case(channels, 8, spatial, (3, 3), stride, ((1, 1), (1, 1)), (1, 1))
    case["scale"] = 1 / math.sqrt(channels * 9)
    check_conv_against_torch(2, case)
    check_conv_without_input_grad_against_torch(2, case)
    assert taken == [route] * 2


@pytest.mark.torch
@pytest.mark.parametrize("channels, spatial", [(520, (4, 4)), (400, (16, 16)), (272, (7, 7))])
def test_same_size_convolutions_past_the_direct_limits_take_the_columns(
        monkeypatch, channels, spatial):
    """Past DIRECT_MAX_CHANNELS, past DIRECT_LARGE_MAX_CHANNELS on a plane of more than
    DIRECT_SMALL_PLANE positions, past DIRECT_PARTIAL_MAX_CHANNELS on a plane that fills its
    vectors partly: the columns, forward and backward."""
    taken = record_calls(monkeypatch, {"tiles": "_tiled", "columns": "_on_columns"})
    case = conv_case(channels, 8, spatial, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))
    case["scale"] = 1 / math.sqrt(channels * 9)
    check_conv_against_torch(2, case)
    assert taken == ["columns"]


@pytest.mark.torch
@pytest.mark.parametrize("nd, channels, out_channels, spatial, columns_grad", [
    (2, 160, 24, (4, 4), False), (2, 240, 16, (5, 6), True), (2, 256, 40, (8, 8), False),
    (1, 256, 8, (48,), True), (2, 384, 24, (4, 4), True), (2, 320, 16, (14, 14), False),
    (2, 384, 16, (14, 14), True), (2, 192, 24, (6, 6), False)])
def test_wide_same_size_convolutions_read_in_place_with_the_weight_gradient_on_columns(
        monkeypatch, nd, channels, out_channels, spatial, columns_grad):
    """Past TILED_MAX_CHANNELS, a stride-1 convolution keeping its map's size still reads
    it in place where the plane fills the tiles' vectors (up to 512 channels on small planes,
    384 on larger ones, 256 where a 6x6 plane fills 75%), and takes its weight gradient on
    the sums from GRADIENT_MIN_OUTPUTS outputs; with fewer, on the columns past
    DIRECT_SUMS_MAX_CHANNELS (past DIRECT_SUMS_LARGE_MAX_CHANNELS on planes of
    DIRECT_SUMS_LARGE_PLANE positions)."""
    taken = record_calls(monkeypatch, {"tiles": "_tiled", "columns": "_on_columns",
                                       "weight on columns": "_weight_grad_on_columns"})
    kernel, padding = (3,) * nd, ((1, 1),) * nd
    case = conv_case(channels, out_channels, spatial, kernel, (1,) * nd, padding, (1,) * nd)
    case["scale"] = 1 / math.sqrt(channels * 3 ** nd)
    check_conv_against_torch(nd, case)
    assert taken == ["tiles"] + ["weight on columns"] * columns_grad


@pytest.mark.torch
@pytest.mark.parametrize("channels, out_channels, spatial, batch, columns_grad", [
    (256, 256, (4, 4), 32, False), (384, 256, (8, 8), 16, False), (256, 256, (4, 4), 8, False),
    (256, 320, (4, 4), 4, False), (512, 512, (4, 4), 16, False), (256, 256, (10, 10), 2, False),
    (384, 24, (4, 4), 16, True), (256, 16, (10, 10), 2, True)])
def test_wide_layers_take_the_direct_sums_where_they_run_as_products(
        monkeypatch, channels, out_channels, spatial, batch, columns_grad):
    """Past DIRECT_SUMS_MAX_CHANNELS the weight gradient still takes the direct sums where
    they run as products (GRADIENT_MIN_OUTPUTS outputs and more), at any batch and plane;
    with fewer outputs the columns."""
    taken = record_calls(monkeypatch, {"tiles": "_tiled",
                                       "weight on columns": "_weight_grad_on_columns"})
    case = conv_case(channels, out_channels, spatial, (3, 3), (1, 1), ((1, 1), (1, 1)),
                     (1, 1), batch=batch)
    case["scale"] = 1 / math.sqrt(channels * 9)
    check_conv_against_torch(2, case)
    assert taken == ["tiles"] + ["weight on columns"] * columns_grad


@pytest.mark.torch
@pytest.mark.parametrize("channels, out_channels, spatial, stride, batch", [
    (64, 24, (16, 16), (2, 2), 8),      # strided to few outputs, over its phases
    (384, 24, (4, 4), (1, 1), 32),      # read in place, few outputs: the weight gradient on columns
    (70, 40, (6, 6), (2, 2), 32),       # on the columns; 630 reads: a panel part-filled
])
def test_weight_gradients_on_columns_made_into_panels_match_torch(
        monkeypatch, channels, out_channels, spatial, stride, batch):
    """Where the tiles take a weight gradient's product (BLAS narrow), its columns are made
    transposed straight into the panels the tiles read (``columns.gather_panels``)."""
    from nnspec.backends.numpy.kernels import columns, gemm

    monkeypatch.setattr(gemm, "blas_is_narrow", lambda: True)
    made = []
    original = columns.gather_panels
    monkeypatch.setattr(columns, "gather_panels",
                        lambda *args: made.append(args[-1]) or original(*args))
    case = conv_case(channels, out_channels, spatial, (3, 3), stride, ((1, 1), (1, 1)),
                     (1, 1), batch=batch)
    case["scale"] = 1 / math.sqrt(channels * 9)
    check_conv_against_torch(2, case)
    assert made == [gemm.PANEL_WIDTH]


@pytest.mark.torch
@pytest.mark.parametrize("channels, out_channels, kernel, stride, dilation, padding, spatial", [
    (32, 64, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (16, 16)),   # a ResNet's downsampling
    (48, 40, (5, 5), (2, 2), (1, 1), ((2, 2), (2, 2)), (16, 8)),    # 5x5, 8x4 outputs
    (32, 16, (3, 3), (2, 1), (1, 1), ((1, 1), (1, 1)), (8, 16)),    # strided along rows only
    (36, 8, (3, 3), (2, 2), (2, 2), ((2, 2), (2, 2)), (16, 16)),    # dilated
    (32, 8, (4, 4), (2, 2), (1, 1), ((1, 2), (1, 2)), (16, 16)),    # even kernel, uneven pad
    (33, 8, (3, 3), (3, 3), (1, 1), ((1, 1), (1, 1)), (12, 12)),    # stride 3
])
def test_strided_convolutions_over_their_stride_phases_match_torch(
        monkeypatch, channels, out_channels, kernel, stride, dilation, padding, spatial):
    """A strided convolution whose output is its input's size over the stride reads its
    input's stride phases on the direct tiles (``_on_phases``), each tap its phase's map
    shifted; the backward is the columns'."""
    taken = record_calls(monkeypatch, {"phases": "_on_phases"})
    case = conv_case(channels, out_channels, spatial, kernel, stride, padding, dilation)
    case["scale"] = 1 / math.sqrt(channels * math.prod(kernel))
    check_conv_against_torch(2, case)
    check_conv_without_input_grad_against_torch(2, case)
    assert taken == ["phases"] * 2


@pytest.mark.parametrize("samples, channels, out_channels, over_phases", [
    (2, 32, 64, True), (2, 64, 128, True), (2, 48, 16, True), (2, 64, 256, True),
    (8, 32, 288, True), (2, 32, 288, False), (2, 32, 24, False), (2, 40, 16, False)])
def test_strided_weight_gradients_take_the_sums_over_the_phases_where_they_pay(
        monkeypatch, samples, channels, out_channels, over_phases):
    """On the phases, the weight gradient is the direct sums' over them where those run as
    products (32 outputs or more, or one vector of them) over 512 output positions or
    more, or fewer to at most 256 outputs; else the columns'."""
    taken = record_calls(monkeypatch, {"columns": "_weight_grad_on_columns"})
    x = np.random.default_rng(0).standard_normal((samples, channels, 16, 16), np.float32)
    weight = np.random.default_rng(1).standard_normal((out_channels, channels, 3, 3),
                                                      np.float32)
    y, backward = conv_module._on_phases(x, weight, (2, 2), ((1, 1), (1, 1)), (1, 1), True)
    backward(np.ones_like(y))
    assert taken == ([] if over_phases else ["columns"])


@pytest.mark.parametrize("channels, kernel, stride, padding, spatial", [
    (32, (3, 3), (2, 2), ((1, 1), (1, 1)), (15, 15)),   # odd maps: no equal phases
    (32, (3, 3), (2, 2), ((0, 0), (0, 0)), (16, 16)),   # 7x7 outputs, not 8x8
    (256, (3, 3), (2, 2), ((1, 1), (1, 1)), (4, 4)),    # 2x2 planes fill a quarter vector
    (16, (3, 3), (2, 2), ((1, 1), (1, 1)), (32, 32)),   # few channels: the frames
])
def test_other_strided_convolutions_keep_their_paths(monkeypatch, channels, kernel, stride,
                                                      padding, spatial):
    taken = record_calls(monkeypatch, {"phases": "_on_phases"})
    x = np.random.default_rng(0).standard_normal((2, channels, *spatial), np.float32)
    weight = np.random.default_rng(1).standard_normal((8, channels, *kernel), np.float32)
    conv_module._conv(x, weight, stride, padding, (1, 1), 1, True)
    assert taken == []


@pytest.mark.torch
@pytest.mark.parametrize(
    "nd, channels, out_channels, kernel, stride, dilation, padding, spatial",
    [
        (2, 16, 32, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (16, 16)),   # ResNet downsample
        (2, 8, 8, (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (9, 7)),       # odd sizes
        (2, 8, 12, (3, 3), (2, 3), (1, 1), ((0, 2), (1, 0)), (11, 13)),    # uneven stride, pad
        (2, 12, 8, (3, 3), (2, 2), (2, 1), ((2, 2), (1, 1)), (20, 18)),    # dilated
        (2, 8, 6, (5, 5), (2, 2), (1, 1), ((2, 2), (2, 2)), (21, 20)),     # 5x5
        (2, 8, 8, (3, 3), (2, 2), (1, 1), ((4, 3), (1, 5)), (8, 9)),       # pad > reach
        (2, 6, 9, (2, 4), (3, 2), (1, 1), ((1, 1), (2, 1)), (10, 9)),      # even kernel
        (1, 16, 8, (3,), (2,), (2,), ((2, 1),), (15,)),                    # 1d
        (1, 8, 8, (4,), (3,), (1,), ((0, 0),), (16,)),                     # 1d, no padding
    ],
)
@pytest.mark.parametrize("route", ["tiles", "columns", "blas"])
def test_strided_convolutions_on_the_column_free_paths_match_torch(
        monkeypatch, route, nd, channels, out_channels, kernel, stride, dilation, padding,
        spatial):
    use_route(monkeypatch, route)
    taken = record_calls(monkeypatch, {"tiles": "_tiled", "columns": "_on_columns",
                                       "blas": "_shifted"}, its_stride)
    check_conv_against_torch(nd, conv_case(channels, out_channels, spatial, kernel, stride,
                                           padding, dilation))
    assert taken == [stride]


@pytest.mark.torch
@pytest.mark.parametrize(
    "nd, channels, out_channels, kernel, stride, dilation, padding, spatial",
    [
        (2, 3, 16, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (12, 12)),    # CIFAR stem
        (2, 3, 8, (7, 7), (2, 2), (1, 1), ((3, 3), (3, 3)), (17, 16)),     # ImageNet stem
        (2, 1, 6, (5, 5), (1, 1), (1, 1), ((2, 2), (2, 2)), (9, 11)),      # 5x5, 1 channel
        (2, 5, 4, (3, 2), (3, 2), (2, 1), ((0, 3), (1, 0)), (13, 8)),      # uneven everything
        (2, 2, 3, (1, 2), (2, 2), (1, 1), ((0, 0), (0, 0)), (7, 6)),       # 1x2, stride 2
        (1, 3, 4, (3,), (2,), (1,), ((1, 1),), (10,)),                     # 1d
    ],
)
@pytest.mark.parametrize("input_grad", [True, False])
def test_few_channel_convolutions_on_the_tiles_match_torch(
        monkeypatch, nd, channels, out_channels, kernel, stride, dilation, padding, spatial,
        input_grad):
    taken = record_calls(monkeypatch, {"tiles": "_tiled"}, its_stride)
    case = conv_case(channels, out_channels, spatial, kernel, stride, padding, dilation)
    if input_grad:
        check_conv_against_torch(nd, case)
    else:
        check_conv_without_input_grad_against_torch(nd, case)
    assert taken == [stride]


@pytest.mark.torch
@pytest.mark.parametrize("nd, channels, out_channels, stride, spatial", [
    (2, 16, 32, (2, 2), (19, 18)),    # ResNet's projection shortcut, odd rows
    (2, 2, 3, (2, 3), (17, 31)),      # few channels, uneven stride
    (1, 12, 5, (3,), (200,)),         # 1d
    (2, 8, 6, (1, 2), (9, 15)),       # one dim unstrided
])
@pytest.mark.parametrize("input_grad", [True, False])
def test_strided_1x1_convolutions_sample_the_input_and_match_torch(
        monkeypatch, nd, channels, out_channels, stride, spatial, input_grad):
    taken = record_calls(monkeypatch, {"strided_1x1": "_strided_pointwise"}, its_stride)
    case = conv_case(channels, out_channels, spatial, (1,) * nd, stride, ((0, 0),) * nd,
                     (1,) * nd)
    if input_grad:
        check_conv_against_torch(nd, case)
    else:
        check_conv_without_input_grad_against_torch(nd, case)
    assert taken == [stride]


@pytest.mark.torch
@pytest.mark.parametrize("nd, channels, out_channels, kernel, stride", [
    (2, 64, 1, (4, 4), (1, 1)),     # a DCGAN discriminator's last layer
    (2, 16, 120, (5, 5), (1, 1)),   # LeNet-5's C5
    (2, 16, 8, (1, 1), (1, 1)),     # a 1x1 layer on one position
    (2, 6, 4, (2, 3), (1, 1)),      # a 2x3 map
    (2, 5, 3, (3, 3), (2, 3)),      # strided: one window all the same
    (1, 12, 5, (7,), (3,)),         # 1d
])
@pytest.mark.parametrize("input_grad", [True, False])
def test_convolutions_whose_window_is_the_whole_map_are_dense_layers_matching_torch(
        monkeypatch, nd, channels, out_channels, kernel, stride, input_grad):
    """A convolution without padding whose one window is the whole map is a dense layer
    over each sample's flattened map (``_whole_map``)."""
    taken = record_calls(monkeypatch, {"whole map": "_whole_map"})
    case = conv_case(channels, out_channels, kernel, kernel, stride, ((0, 0),) * nd,
                     (1,) * nd, batch=5)
    if input_grad:
        check_conv_against_torch(nd, case)
    else:
        check_conv_without_input_grad_against_torch(nd, case)
    assert taken == ["whole map"]


@pytest.mark.torch
@pytest.mark.parametrize("nd, channels, out_channels, stride, spatial", [
    (2, 64, 32, (1, 1), (7, 7)),      # a ResNet-50's last stage at 224
    (2, 24, 40, (2, 2), (8, 8)),      # a projection shortcut onto 4x4
    (1, 12, 5, (2,), (30,)),          # 1d
])
@pytest.mark.parametrize("input_grad", [True, False])
def test_1x1_convolutions_onto_small_maps_fold_the_batch_and_match_torch(
        monkeypatch, nd, channels, out_channels, stride, spatial, input_grad):
    """At most ``FOLDED_MAX_POSITIONS`` output positions: one product over the batch's
    channel rows (``_on_columns``), not a skinny product per sample."""
    taken = record_calls(monkeypatch, {"folded": "_on_columns", "per sample": "_pointwise"})
    case = conv_case(channels, out_channels, spatial, (1,) * nd, stride, ((0, 0),) * nd,
                     (1,) * nd, batch=5)
    if input_grad:
        check_conv_against_torch(nd, case)
    else:
        check_conv_without_input_grad_against_torch(nd, case)
    assert taken == ["folded"]


@pytest.mark.torch
@pytest.mark.parametrize("channels, out_channels, stride, dilation, padding, spatial", [
    (32, 16, (1, 1), (1, 1), ((1, 1), (1, 1)), (11, 10)),    # U-Net decoder
    (12, 4, (2, 2), (1, 2), ((0, 2), (3, 1)), (21, 20)),     # strided, dilated, uneven
    (9, 3, (4, 2), (1, 1), ((1, 1), (1, 1)), (15, 10)),      # a phase no offset reads
    (16, 16, (1, 1), (1, 1), ((1, 1), (1, 1)), (11, 10)),    # as many outputs
])
@pytest.mark.parametrize("route", ["tiles", "columns", "blas"])
def test_the_input_gradient_on_the_frame_matches_torch(
        monkeypatch, route, channels, out_channels, stride, dilation, padding, spatial):
    """The tiles gather each input position's gradient from the output gradient's frame per
    stride phase (a phase no offset reads gets zeros); BLAS adds each offset's product into
    its slice of the input frame."""
    use_route(monkeypatch, route)
    check_conv_against_torch(2, conv_case(channels, out_channels, spatial, (3, 3), stride,
                                          padding, dilation, has_bias=False))


@pytest.mark.torch
@pytest.mark.parametrize("channels, out_channels, kernel, stride, dilation, padding", [
    (16, 8, (5, 5), (1, 1), (1, 1), ((2, 2), (2, 2))),    # wide kernel
    (18, 20, (3, 7), (2, 1), (1, 1), ((1, 0), (3, 2))),   # wide rows, strided
    (20, 6, (3, 3), (1, 1), (2, 1), ((2, 2), (1, 1))),    # more inputs than outputs
    (72, 40, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),   # more reads than a pass of the tiles
])
@pytest.mark.parametrize("route", ["tiles", "columns", "blas"])
def test_wide_kernels_and_narrowing_layers_match_torch(
        monkeypatch, route, channels, out_channels, kernel, stride, dilation, padding):
    use_route(monkeypatch, route)
    case = conv_case(channels, out_channels, (11, 13), kernel, stride, padding, dilation,
                     batch=2)
    # weights at a layer's scale: sums of 650 unit terms cancel to values float32 cannot
    # give to 1e-5 in any order
    case["scale"] = 1 / math.sqrt(channels * math.prod(kernel))
    check_conv_against_torch(2, case)


@pytest.mark.torch
@pytest.mark.parametrize("nd, kernel, stride, dilation, padding, spatial", [
    (2, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (9, 7)),
    (1, (3,), (1,), (1,), ((2, 2),), (13,)),
    (2, (3, 4), (2, 2), (1, 2), ((1, 2), (3, 1)), (11, 12)),   # strided, dilated, even
    (2, (5, 5), (1, 1), (1, 1), ((0, 0), (0, 0)), (14, 14)),   # LeNet's second layer
])
@pytest.mark.parametrize("block", [50, 7])
def test_the_blas_column_free_path_over_several_column_blocks_matches_torch(
        monkeypatch, nd, kernel, stride, dilation, padding, spatial, block):
    """Its products go over blocks of SHIFTED_BLOCK columns (here 50 or 7 each: blocks that
    start mid-row, and a short last one)."""
    use_route(monkeypatch, "blas")
    monkeypatch.setattr(conv_module, "SHIFTED_BLOCK", block)
    check_conv_against_torch(nd, conv_case(8, 6, spatial, kernel, stride, padding, dilation))


@pytest.mark.parametrize("groups, stride, spatial",
                         [(1, (1, 2), (6, 5)), (3, (1, 2), (6, 5)), (1, (1, 1), (12, 11))])
def test_conv_told_its_input_needs_no_gradient_skips_only_the_input_gradient(
        groups, stride, spatial):
    case = conv_case(6, 6, spatial, (3, 2), stride, ((1, 1), (0, 1)), (1, 1), groups)
    x, weight, bias = conv_arrays(case, seed=4)
    y, backward = conv2d(x, weight, bias, **case["attrs"])
    y_skip, backward_skip = conv2d(x, weight, bias, **case["attrs"], input_grad=False)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    dx, dweight, dbias = backward(dy)
    no_dx, dweight_skip, dbias_skip = backward_skip(dy)
    assert dx.shape == x.shape and no_dx is None
    np.testing.assert_array_equal(y_skip, y)
    np.testing.assert_array_equal(dweight_skip, dweight)
    np.testing.assert_array_equal(dbias_skip, dbias)


def test_conv_stays_float32():
    x = np.ones((2, 4, 5, 5), np.float32)
    weight = np.ones((4, 2, 3, 3), np.float32)
    y, backward = conv2d(x, weight, np.ones(4, np.float32), stride=(1, 1),
                         padding=((1, 1), (1, 1)), dilation=(1, 1), groups=2)
    grads = backward(np.ones_like(y))
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


def test_the_interpreter_tells_a_kernel_whether_its_input_needs_a_gradient(monkeypatch):
    """Only the first convolution (behind a parameter-free op on the input) is told that its
    input needs no gradient; with `input_grads=True` none is, and the input gradient comes."""
    from nnspec.backends.numpy import rules
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.spec import load_text

    told = []
    plain = rules.RULES["conv2d"]

    def recording(node, ins, params, ctx):
        told.append(ctx.input_grad)
        return plain(node, ins, params, ctx)

    monkeypatch.setitem(rules.RULES, "conv2d", recording)
    spec = load_text("""
model Two {
  input image: [2, 6, 6]
  image -> relu -> conv2d(4, 3) -> relu -> conv2d(3, 3) -> flatten -> dense(5)
}
train Two { loss cross_entropy; optimizer sgd(lr = 0.1); batch 4 }
""")
    model = NumpyModel.from_spec(spec)
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32)
    target = np.arange(4) % 5
    model.loss(x, target)
    model.backward()
    assert told == [False, True] and model.input_grads == {}
    told.clear()
    model.loss(x, target, input_grads=True)
    model.backward()
    assert told == [True, True] and model.input_grads["image"].shape == x.shape


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_float32_convolutions_agree_with_the_float64_blas_paths(data):
    """Random convolutions (1-D and 2-D, any stride, dilation and padding, "same" ones read in
    place, grouped and depthwise with multipliers) on their float32 paths (the tiles over
    frames, in place, or the compiled columns) against the float64 BLAS paths the gradient
    checks use."""
    nd = data.draw(st.integers(1, 2))
    depthwise = data.draw(st.booleans())
    groups = data.draw(st.integers(1, 12)) if depthwise else data.draw(st.sampled_from([1, 2, 3]))
    channels = groups if depthwise else groups * data.draw(st.integers(1, 5))
    out_channels = groups * data.draw(st.integers(1, 3 if depthwise else 5))
    kernel = tuple(data.draw(st.integers(1, 7)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    if data.draw(st.booleans()):  # "same": read in place when the map has 64+ positions
        stride = (1,) * nd
        padding = tuple(((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2)
                        for k, d in zip(kernel, dilation))
    else:
        stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
        padding = tuple((data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4)))
                        for _ in range(nd))
    reach = [(k - 1) * d + 1 - lo - hi for k, d, (lo, hi) in zip(kernel, dilation, padding)]
    spatial = tuple(data.draw(st.integers(max(1, r), max(1, r) + 30)) for r in reach)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = rng.standard_normal((data.draw(st.integers(1, 3)), channels, *spatial), np.float32)
    weight = (rng.standard_normal((out_channels, channels // groups, *kernel)) / 3).astype(
        np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_route(monkeypatch, data.draw(st.sampled_from(["tiles", "columns"])))
        y, backward = CONV[nd](x, weight, bias, **attrs)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads = backward(dy)
    y64, backward64 = CONV[nd](*(a.astype(np.float64) for a in (x, weight, bias)), **attrs)
    for ours, theirs in zip((y, *grads), (y64, *backward64(dy.astype(np.float64)))):
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-4,
                                   atol=1e-4 * max(1.0, np.abs(theirs).max()))


@pytest.mark.torch
@pytest.mark.parametrize("batch, path", [(1, "columns"), (2, "columns"), (3, "tiles")])
def test_a_strided_convolution_of_one_or_two_samples_takes_the_columns(monkeypatch, batch,
                                                                       path):
    """A batch of one or two: a strided 16-channel layer's few columns cost less than the
    frames' copies (``COLUMNS_STRIDED_MAX_SAMPLES``); from three the tiles take it again."""
    taken = record_calls(monkeypatch, {"tiles": "_tiled", "columns": "_on_columns"})
    check_conv_against_torch(2, conv_case(16, 32, (12, 10), (3, 3), (2, 2), ((1, 1), (1, 1)),
                                          (1, 1), batch=batch))
    assert taken == [path]


@pytest.mark.torch
@pytest.mark.parametrize("batch, channels, out_channels, spatial, path", [
    (1, 16, 32, (16, 16), "products"),     # 131k multiply-adds: the per-sample products
    (4, 24, 160, (24, 20), "tiles"),       # 7.4M: the tiles
])
def test_a_pointwise_convolution_takes_the_tiles_only_for_enough_work(
        monkeypatch, batch, channels, out_channels, spatial, path):
    taken = record_calls(monkeypatch, {"tiles": "_tiled_pointwise"})
    check_conv_against_torch(2, conv_case(channels, out_channels, spatial, (1, 1), (1, 1),
                                          ((0, 0), (0, 0)), (1, 1), batch=batch))
    assert taken == ([] if path == "products" else ["tiles"])
