"""Transposed convolution, up-sampling, pixel shuffles, adaptive max pooling, pooling with
ceil_mode / count_include_pad, group and instance norm: torch as the oracle for outputs and
gradients (central differences in test_kernel_gradients.py)."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import conv_transpose, pool
from nnspec.backends.numpy.kernels.conv_transpose import conv_transpose1d, conv_transpose2d
from nnspec.backends.numpy.kernels.norm_group import group_norm, instance_norm
from nnspec.backends.numpy.kernels.resample import pixel_shuffle, pixel_unshuffle, upsample
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = [pytest.mark.strict_numerics, pytest.mark.torch]

FEW = settings(max_examples=25, deadline=None)
on_phases = conv_transpose._on_phases


def check_against_torch(ours, theirs, arrays, atol=1e-5):
    """Outputs and every array argument's gradient of sum(out * probe) agree with torch."""
    out, backward = ours(*arrays)
    tensors = [as_torch(a) for a in arrays]
    expected = theirs(*tensors)
    assert_close(out, expected, atol=atol)
    probe = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    expected.backward(torch.tensor(probe))
    grads = backward(probe)
    for grad, tensor in zip(grads, tensors):
        if tensor is None:
            assert grad is None
        else:
            assert_close(grad, tensor.grad, atol=atol * 10)


# --- transposed convolution ----------------------------------------------------------------


@st.composite
def transposed_cases(draw, nd):
    groups = draw(st.sampled_from([1, 2, 3]))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    # torch: output_padding below the stride or the dilation
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    spatial = []
    for k, s, p, extra, d in zip(kernel, stride, padding, output_padding, dilation):
        smallest = 1
        while (smallest - 1) * s - 2 * p + d * (k - 1) + extra + 1 < 1:
            smallest += 1
        spatial.append(draw(st.integers(smallest, smallest + 4)))
    return {
        "shape": (draw(st.integers(1, 3)), groups * draw(st.integers(1, 3)), *spatial),
        "weight": (groups * draw(st.integers(1, 2)), draw(st.integers(1, 3)), *kernel),
        "bias": draw(st.booleans()),
        "attrs": {"stride": stride, "padding": padding, "output_padding": output_padding,
                  "dilation": dilation, "groups": groups},
    }


def check_transposed(nd, case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case["shape"]).astype(np.float32)
    in_channels = case["shape"][1]
    weight = rng.standard_normal((in_channels, *case["weight"][1:])).astype(np.float32)
    out_channels = case["weight"][1] * case["attrs"]["groups"]
    bias = rng.standard_normal(out_channels).astype(np.float32) if case["bias"] else None
    ours = {1: conv_transpose1d, 2: conv_transpose2d}[nd]
    theirs = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[nd]
    attrs = case["attrs"]
    check_against_torch(lambda *a: ours(*a, **attrs), lambda *t: theirs(*t, **attrs),
                        [x, weight, bias], atol=1e-4)


@FEW
@given(transposed_cases(nd=1))
def test_conv_transpose1d_matches_torch(case):
    check_transposed(1, case)


@FEW
@given(transposed_cases(nd=2))
def test_conv_transpose2d_matches_torch(case):
    check_transposed(2, case)


@pytest.mark.parametrize("route", ["phases", "columns"])
@pytest.mark.parametrize("nd", [1, 2])
@FEW
@given(data=st.data())
def test_conv_transpose_on_either_route_matches_torch(route, nd, data):
    """The output on the phases' stride-1 convolutions, or as the columns' scatter, whatever
    the share of the phases' products that would read padding."""
    case = data.draw(transposed_cases(nd=nd))
    share = {"phases": 0.0, "columns": 2.0}[route]
    with mock.patch.object(conv_transpose, "PHASES_MIN_SHARE", share):
        check_transposed(nd, case)


@pytest.mark.parametrize("size, kernel, stride, padding, output_padding, phases", [
    (8, 4, 2, 1, 0, True), (16, 3, 2, 1, 1, True), (7, 4, 2, 1, 0, True), (5, 3, 1, 1, 0, True),
    (1, 4, 1, 0, 0, False), (2, 4, 2, 1, 0, False), (1, 3, 2, 1, 1, False)])
def test_conv_transpose_takes_the_phases_where_few_of_their_products_read_padding(
        size, kernel, stride, padding, output_padding, phases):
    """A DCGAN generator's layers from 8x8 on the phases; its first (1x1 noise to 4x4) and
    layers from 2x2 maps, whose phases would mostly read padding, on the columns."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, size, size)).astype(np.float32)
    weight = rng.standard_normal((8, 4, kernel, kernel)).astype(np.float32)
    taken = []
    with mock.patch.object(conv_transpose, "_on_phases",
                           lambda *a: taken.append(a) or on_phases(*a)):
        conv_transpose2d(x, weight, None, stride=stride, padding=padding,
                         output_padding=output_padding)
    assert bool(taken) == phases


@pytest.mark.parametrize("shape, kernel, groups, bias", [
    ((2, 8, 5, 6), (2, 2), 1, True),  # ConvTranspose2d(c, c/2, 2, stride 2), a U-Net's
    ((3, 6, 4, 3), (2, 3), 3, False), ((2, 4, 7), (3,), 2, True), ((1, 5, 2, 2), (1, 1), 1, True),
    ((2, 64, 16, 16), (2, 2), 1, True),  # products over BLAS's small-product threshold
])
def test_transposed_convolutions_whose_windows_tile_the_output_match_torch(
        shape, kernel, groups, bias):
    """kernel = stride, no padding or dilation: each window its own block of the output
    (``conv_transpose._tiling``)."""
    case = {"shape": shape, "weight": (shape[1], 2, *kernel),
            "bias": bias,
            "attrs": {"stride": kernel, "padding": (0,) * len(kernel),
                      "output_padding": (0,) * len(kernel), "dilation": (1,) * len(kernel),
                      "groups": groups}}
    check_transposed(len(kernel), case)


def test_conv_transpose_told_its_input_needs_no_gradient_skips_only_that():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    attrs = {"stride": 2, "padding": 1, "output_padding": 1}
    y, backward = conv_transpose2d(x, weight, None, **attrs)
    _, backward_skip = conv_transpose2d(x, weight, None, **attrs, input_grad=False)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dweight, _ = backward(dy)
    no_dx, dweight_skip, _ = backward_skip(dy)
    assert dx.shape == x.shape and no_dx is None
    np.testing.assert_array_equal(dweight, dweight_skip)


# --- up-sampling and pixel shuffles ----------------------------------------------------------


UPSAMPLES = [
    (shape, mode, options, align)
    for mode, shapes in [("nearest", [(2, 3, 5), (2, 3, 4, 5)]), ("linear", [(2, 3, 5)]),
                         ("bilinear", [(2, 3, 4, 5), (1, 2, 1, 3)])]
    for shape in shapes
    for options in [{"scale_factor": 2.0}, {"scale_factor": 1.5}, {"scale_factor": 0.5},
                    {"scale_factor": 3.0}, {"size": (7, 3)[:len(shape) - 2]},
                    {"size": (2, 11)[:len(shape) - 2]}]
    for align in ([False, True] if mode != "nearest" else [False])
    if not (options.get("scale_factor") == 0.5 and min(shape[2:]) < 2)
] + [  # a scale per axis, as torch takes a tuple
    ((2, 3, 4, 5), mode, {"scale_factor": scales}, align)
    for mode in ("nearest", "bilinear") for scales in [(2.0, 3.0), (1.5, 0.5), (1.0, 2.5)]
    for align in ([False, True] if mode != "nearest" else [False])
]


@pytest.mark.parametrize("shape, mode, options, align", UPSAMPLES)
def test_upsample_matches_torch_interpolate(shape, mode, options, align):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    check_against_torch(
        lambda a: upsample(a, mode=mode, align_corners=align, **options),
        lambda t: F.interpolate(t, mode=mode, align_corners=align if mode != "nearest" else None,
                                **options),
        [x])


@pytest.mark.parametrize("shape, mode, options", [
    ((4, 32, 48, 40), "bilinear", {"scale_factor": 2.0}),  # over parallel's split
    ((4, 32, 48, 40), "bilinear", {"scale_factor": (1.5, 0.75)}),
    ((4, 32, 17, 9), "bilinear", {"size": (40, 33)}),
    ((8, 64, 300), "linear", {"scale_factor": 2.0}), ((2, 3, 7), "linear", {"size": 5}),
])
@pytest.mark.parametrize("align", [False, True])
def test_compiled_linear_interpolation_is_torchs(shape, mode, options, align):
    """Linear and bilinear up-sampling in one compiled loop each way, split by planes
    between the cores where large (``parallel.interpolate``): torch's values and gradients,
    infinities in the input kept where torch keeps them."""
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::1009] = np.inf
    out, backward = upsample(x, mode=mode, align_corners=align, **options)
    tx = torch.tensor(x, requires_grad=True)
    ty = F.interpolate(tx, mode=mode, align_corners=align, **options)
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    probe = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    ty.backward(torch.tensor(probe))
    np.testing.assert_allclose(backward(probe)[0], tx.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, scale", [
    ((4, 32, 48, 40), 2.0),  # over parallel's split: the jobs' path
    ((2, 3, 4, 5), (3.0, 1.0)), ((2, 3, 4, 5), (1.0, 3.0)), ((3, 2, 33), 4.0),
])
def test_whole_number_nearest_upsampling_is_torchs(shape, scale):
    """The compiled repeat of nearest up-sampling by whole numbers (``_repeated``): torch's
    values, and its gradient's sums of each value's block."""
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    check_against_torch(lambda a: upsample(a, scale_factor=scale),
                        lambda t: F.interpolate(t, scale_factor=scale, mode="nearest"), [x])
    y, backward = upsample(x, scale_factor=scale)
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
    scales = (scale,) * (x.ndim - 2) if isinstance(scale, float) else scale
    blocks = dy.reshape(*x.shape[:2], *[s for size, k in zip(x.shape[2:], scales)
                                         for s in (size, int(k))])
    np.testing.assert_allclose(backward(dy)[0], blocks.sum(axis=tuple(range(3, dy.ndim + len(
        scales), 2))), rtol=1e-6, atol=1e-5)


def test_pixel_shuffle_and_unshuffle_match_torch_and_invert_each_other():
    x = np.random.default_rng(5).standard_normal((2, 18, 2, 3)).astype(np.float32)
    check_against_torch(lambda a: pixel_shuffle(a, upscale=3), lambda t: F.pixel_shuffle(t, 3),
                        [x])
    shuffled, _ = pixel_shuffle(x, upscale=3)
    check_against_torch(lambda a: pixel_unshuffle(a, downscale=3),
                        lambda t: F.pixel_unshuffle(t, 3), [shuffled])
    np.testing.assert_array_equal(pixel_unshuffle(shuffled, downscale=3)[0], x)


@pytest.mark.parametrize("r, shape", [(2, (8, 64, 16, 17)), (3, (4, 27, 10, 9))])
def test_pixel_shuffles_of_many_planes_match_torch(r, shape):
    """Many planes through the compiled copies (``fused.spread_windows`` and its inverse):
    torch's values and gradients, each way."""
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    x = np.concatenate([x] * max(1, (1 << 18) // x.size))
    check_against_torch(lambda a: pixel_shuffle(a, upscale=r), lambda t: F.pixel_shuffle(t, r),
                        [x])
    shuffled = pixel_shuffle(x, upscale=r)[0]
    check_against_torch(lambda a: pixel_unshuffle(a, downscale=r),
                        lambda t: F.pixel_unshuffle(t, r), [shuffled])


# --- pooling options -------------------------------------------------------------------------


POOL_OPTIONS = [
    (nd, shape, kernel, stride, padding, ceil_mode)
    for nd, shape in [(1, (2, 3, 9)), (2, (2, 3, 7, 8)), (2, (1, 2, 6, 5))]
    for kernel, stride, padding in [(3, 2, 0), (3, 2, 1), (2, 3, 1), (3, 3, 0), (2, 2, 0)]
    for ceil_mode in (False, True)
]


@pytest.mark.parametrize("nd, shape, kernel, stride, padding, ceil_mode", POOL_OPTIONS)
def test_max_pool_with_ceil_mode_matches_torch(nd, shape, kernel, stride, padding, ceil_mode):
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    ours = getattr(pool, f"max_pool{nd}d")
    theirs = getattr(F, f"max_pool{nd}d")
    check_against_torch(
        lambda a: ours(a, kernel=(kernel,) * nd, stride=(stride,) * nd,
                       padding=((padding, padding),) * nd, ceil_mode=ceil_mode),
        lambda t: theirs(t, kernel, stride, padding, ceil_mode=ceil_mode), [x])


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("nd, shape, kernel, stride, padding, ceil_mode", POOL_OPTIONS)
def test_avg_pool_with_ceil_mode_and_count_include_pad_matches_torch(
        nd, shape, kernel, stride, padding, ceil_mode, count_include_pad):
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    ours = getattr(pool, f"avg_pool{nd}d")
    theirs = getattr(F, f"avg_pool{nd}d")
    check_against_torch(
        lambda a: ours(a, kernel=(kernel,) * nd, stride=(stride,) * nd,
                       padding=((padding, padding),) * nd, ceil_mode=ceil_mode,
                       count_include_pad=count_include_pad),
        lambda t: theirs(t, kernel, stride, padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad), [x])


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((8, 64, 32, 32), 3, 2, 1), ((8, 64, 32, 32), 3, 1, 1), ((4, 48, 17, 19), (3, 2), 2, 1),
    ((8, 128, 256), 3, 2, 1), ((0, 8, 10, 10), 3, 2, 1)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_on_the_compiled_loops_in_parts_matches_torch(shape, kernel, stride, padding,
                                                               count_include_pad):
    """Maps large enough to split between the cores (``avg_pool``): torch's means and
    gradients, overlapping windows and padded ones counted either way."""
    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    nd = len(shape) - 2
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * nd
    check_against_torch(
        lambda a: getattr(pool, f"avg_pool{nd}d")(
            a, kernel=kernel, stride=(stride,) * nd, padding=((padding, padding),) * nd,
            count_include_pad=count_include_pad),
        lambda t: getattr(F, f"avg_pool{nd}d")(t, kernel, stride, padding,
                                               count_include_pad=count_include_pad), [x])


@pytest.mark.parametrize("shape, output_size", [
    ((8, 16, 32, 32), (4, 4)), ((8, 16, 32, 32), (1, 1)), ((4, 8, 24, 30), (6, 5)),
    ((8, 16, 512), (8,))])
@pytest.mark.parametrize("ties", [False, True])
def test_adaptive_max_pool_into_whole_bins_is_torchs(shape, output_size, ties):
    """Bins that divide the map are max pooling's windows (``max_pool``): torch's values, and
    the gradient to each window's first maximum."""
    rng = np.random.default_rng(8)
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    nd = len(shape) - 2
    check_against_torch(lambda a: getattr(pool, f"adaptive_max_pool{nd}d")(
        a, output_size=output_size), lambda t: getattr(F, f"adaptive_max_pool{nd}d")(
        t, output_size), [x])


@pytest.mark.parametrize("shape, output_size", [
    ((8, 64, 32, 32), (7, 7)), ((4, 8, 10, 10), (7, 7)), ((2, 6, 9, 30), (4, 8)),
    ((8, 128, 256), (7,)), ((0, 8, 10, 10), (3, 3))])
def test_adaptive_max_pool_into_uneven_bins_on_the_compiled_loops_is_torchs(shape,
                                                                             output_size):
    """Overlapping bins of two widths (``max_pool.adaptive_max_pool``), split between the
    cores: torch's values and gradients, a NaN taken over every number of its bin (each
    bin holding at most the one), ties to the first maximum."""
    rng = np.random.default_rng(10)
    x = rng.integers(0, 4, shape).astype(np.float32)
    if x.size:
        x.reshape(-1)[::997] = np.nan
    nd = len(shape) - 2
    check_against_torch(lambda a: getattr(pool, f"adaptive_max_pool{nd}d")(
        a, output_size=output_size), lambda t: getattr(F, f"adaptive_max_pool{nd}d")(
        t, output_size), [x])


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 2]), st.tuples(st.integers(1, 10), st.integers(1, 10)),
       st.tuples(st.integers(1, 6), st.integers(1, 6)), st.booleans())
def test_adaptive_max_pool_matches_torch(nd, spatial, output_size, ties):
    rng = np.random.default_rng(8)
    shape = (2, 3, *spatial[:nd])
    # small integers make ties, which must go to the first maximum as in torch
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    ours = getattr(pool, f"adaptive_max_pool{nd}d")
    theirs = getattr(F, f"adaptive_max_pool{nd}d")
    check_against_torch(lambda a: ours(a, output_size=output_size[:nd]),
                        lambda t: theirs(t, output_size[:nd]), [x])


# --- group and instance norm -----------------------------------------------------------------


def test_group_norm_far_from_zero_is_closer_to_the_true_values_than_torchs():
    """Values of mean 300 and spread 2: the compiled rows centre each value before they
    scale it and sum d_out (x - mean) for the weight's gradient, where torch's float32
    takes x a + (b - mean a) and sum(d_out x) - mean sum(d_out) (7x further off in the
    weight gradient); float64 torch is the true value."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((8, 64, 24, 20)) * 2 + 300).astype(np.float32)
    weight, bias = (rng.standard_normal(64).astype(np.float32) for _ in range(2))
    out, backward = group_norm(x, weight, bias, groups=8)
    probe = rng.standard_normal(out.shape).astype(np.float32)
    ours = (out, *backward(probe))
    results = {}
    for dtype in (torch.float32, torch.float64):
        tensors = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x, weight, bias)]
        y = F.group_norm(tensors[0], 8, tensors[1], tensors[2])
        y.backward(torch.tensor(probe, dtype=dtype))
        results[dtype] = [y.detach().numpy(), *(t.grad.numpy() for t in tensors)]
    for mine, theirs, true in zip(ours, results[torch.float32], results[torch.float64]):
        assert np.abs(mine - true).max() <= max(np.abs(theirs - true).max(), 1e-6)


def test_group_norm_of_a_constant_group_is_its_bias_with_torchs_gradients():
    """A group of one value throughout (variance 0): eps alone scales it."""
    x = np.full((2, 4, 3, 3), 2.5, np.float32)
    x[1] = np.random.default_rng(2).standard_normal((4, 3, 3))
    weight, bias = np.linspace(0.5, 2, 4, dtype=np.float32), np.arange(4, dtype=np.float32)
    check_against_torch(lambda *a: group_norm(*a, groups=2, eps=1e-5),
                        lambda *t: F.group_norm(t[0], 2, t[1], t[2], eps=1e-5),
                        [x, weight, bias], atol=1e-4)


@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 4), 3), ((3, 4, 7), 2), ((2, 4), 4),
                                           ((2, 6, 3, 3), 1), ((2, 6, 3, 3), 6),
                                           ((8, 64, 24, 20), 8)])  # in parts on two cores
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(shape, groups, affine):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    weight = rng.standard_normal(shape[1]).astype(np.float32) if affine else None
    bias = rng.standard_normal(shape[1]).astype(np.float32) if affine else None
    check_against_torch(lambda *a: group_norm(*a, groups=groups, eps=1e-5),
                        lambda *t: F.group_norm(t[0], groups, t[1], t[2], eps=1e-5),
                        [x, weight, bias], atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 4, 7)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("tracked, train", [(False, True), (False, False), (True, True),
                                            (True, False)])
def test_instance_norm_matches_torch_with_its_running_statistics(shape, affine, tracked, train):
    rng = np.random.default_rng(10)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    weight = rng.standard_normal(channels).astype(np.float32) if affine else None
    bias = rng.standard_normal(channels).astype(np.float32) if affine else None
    mean = rng.standard_normal(channels).astype(np.float32) if tracked else None
    var = rng.uniform(0.5, 2, channels).astype(np.float32) if tracked else None
    torch_mean, torch_var = (None if a is None else torch.tensor(a) for a in (mean, var))
    use_input_stats = train or not tracked
    for _ in range(2):  # the running statistics move the same way twice
        check_against_torch(
            lambda *a: instance_norm(*a, mean, var, use_input_stats=use_input_stats),
            lambda *t: F.instance_norm(t[0], torch_mean, torch_var, t[1], t[2],
                                       use_input_stats=use_input_stats),
            [x, weight, bias], atol=1e-4)
        if tracked:
            np.testing.assert_allclose(mean, torch_mean.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(var, torch_var.numpy(), rtol=1e-5, atol=1e-6)
