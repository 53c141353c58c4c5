"""Activation kernels: torch as the oracle in float32 (central differences in
test_kernel_gradients.py)."""

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import activations as act
from tests.numpy.helpers import F, assert_close, torch, torch_op

pytestmark = pytest.mark.strict_numerics(under="ignore")  # tiny gradients flush to 0

FEW = settings(max_examples=15, deadline=None)

# case -> (the NumPy kernel with its attributes bound, the torch function with the same meaning)
ACTIVATIONS = {
    "relu": (act.relu, torch_op("nn.functional.relu")),
    "sigmoid": (act.sigmoid, torch_op("sigmoid")),
    "tanh": (act.tanh, torch_op("tanh")),
    "softmax": (act.softmax, lambda x: F.softmax(x, dim=-1)),
    "softmax_dim0": (lambda x: act.softmax(x, dim=0), lambda x: F.softmax(x, dim=0)),
    "log_softmax": (act.log_softmax, lambda x: F.log_softmax(x, dim=-1)),
    "log_softmax_dim1": (lambda x: act.log_softmax(x, dim=1), lambda x: F.log_softmax(x, dim=1)),
    "gelu": (act.gelu, torch_op("nn.functional.gelu")),
    "gelu_tanh": (
        lambda x: act.gelu(x, approximate="tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
    "leaky_relu": (act.leaky_relu, torch_op("nn.functional.leaky_relu")),
    "leaky_relu_0.2": (
        lambda x: act.leaky_relu(x, negative_slope=0.2),
        lambda x: F.leaky_relu(x, 0.2),
    ),
    "elu": (act.elu, torch_op("nn.functional.elu")),
    "elu_alpha_0.5": (lambda x: act.elu(x, alpha=0.5), lambda x: F.elu(x, alpha=0.5)),
    "silu": (act.silu, torch_op("nn.functional.silu")),
    "relu6": (act.relu6, torch_op("nn.functional.relu6")),
}


def assert_matches_torch(name, x, rtol=1e-4, atol=1e-5):
    """Forward and the gradient of sum(out * probe) agree with torch in float32."""
    out, backward = ACTIVATIONS[name][0](x)
    probe = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
    (grad,) = backward(probe)
    x_torch = torch.tensor(x, requires_grad=True)
    out_torch = ACTIVATIONS[name][1](x_torch)
    (out_torch * torch.tensor(probe)).sum().backward()
    assert out.shape == x.shape
    assert_close(out, out_torch, rtol=rtol, atol=atol)
    assert_close(grad, x_torch.grad, rtol=rtol, atol=atol)


shapes = st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple)


@pytest.mark.torch
@pytest.mark.parametrize("name", ACTIVATIONS)
@FEW
@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 3.0, 20.0]))
def test_matches_torch(name, shape, seed, scale):
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    assert_matches_torch(name, x)


@pytest.mark.torch
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_extreme_inputs_stay_finite_and_match_torch(name):
    """Saturating inputs raise nothing, not even underflow, and give torch's limits."""
    x = np.array(
        [[-1000.0, -100.0, -88.7, -30.0, -1.0, 0.0, 1.0, 30.0, 88.7, 100.0, 1000.0]],
        dtype=np.float32,
    )
    with np.errstate(all="raise"):
        out, backward = ACTIVATIONS[name][0](x)
        (grad,) = backward(np.ones_like(out))
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    assert_matches_torch(name, x)
    assert_matches_torch(name, x.T.copy())


@pytest.mark.torch
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_tiny_inputs_match_torch(name):
    x = np.array([[-1e-30, -1e-38, 0.0, 1e-38, 1e-30, 1e-7]], dtype=np.float32)
    assert_matches_torch(name, x)


def exact_gelu(x):
    return np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])


def test_gelu_in_float32_is_as_close_to_the_true_value_as_float32_allows():
    """Its normal CDF is fitted to within 3e-8 of the true one, so with float32's own rounding
    the output is within a few ulp where x * Phi(x) is well conditioned, and elsewhere within
    what float32 rounding of Phi near 1 (6e-8) and of 1 + erf for negative x allows."""
    dense = np.linspace(-12.0, 12.0, 1_200_001, dtype=np.float32)
    tiny = np.float32(10.0) ** np.linspace(-38, 0, 20_001, dtype=np.float32)
    x = np.concatenate([dense, tiny, -tiny, [0.0, 6.5, 1e19, 3e38, -1e19, -3e38]])
    x = x.astype(np.float32)
    got = act.gelu(x)[0]
    want = exact_gelu(x)
    assert got.dtype == np.float32
    error = np.abs(got.astype(np.float64) - want)
    # 1 + erf(x / sqrt 2) rounds to a multiple of 6e-8 near 1 and cancels for negative x
    assert np.all(error <= 2e-7 * np.maximum(np.abs(x), 1) + 1e-45)
    well_conditioned = x > -0.5
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max((error / np.maximum(ulp, 1e-45))[well_conditioned]) <= 4.0
    assert np.array_equal(got[x >= 6.5], x[x >= 6.5])  # Phi is exactly 1 there
    # Phi(-6.5) = 4e-11: no more than that share of x, and never positive
    assert np.all((got[x <= -6.5] <= 0) & (np.abs(got[x <= -6.5]) <= 5e-11 * np.abs(x[x <= -6.5])))


def test_gelu_in_float64_is_exact():
    x = np.linspace(-9.0, 9.0, 2_001)
    np.testing.assert_allclose(act.gelu(x)[0], exact_gelu(x), rtol=1e-12, atol=1e-15)


@pytest.mark.torch
def test_gelu_is_closer_to_the_true_value_than_torchs():
    x = np.random.default_rng(0).standard_normal(200_000).astype(np.float32) * 3
    want = exact_gelu(x)
    ours = np.abs(act.gelu(x)[0] - want).max()
    theirs = np.abs(F.gelu(torch.from_numpy(x)).numpy() - want).max()
    assert ours <= theirs


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        act.gelu(np.zeros(2, np.float32), approximate="fast")


COMPILED = ["gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "leaky_relu", "leaky_relu_0.2",
            "elu", "elu_alpha_0.5", "relu"]


@pytest.mark.parametrize("kernel", [act.gelu, functools.partial(act.gelu, approximate="tanh"),
                                    act.silu, act.sigmoid, act.tanh, act.leaky_relu, act.elu])
def test_told_no_input_needs_a_gradient_the_output_is_the_same_and_no_slope_is_made(kernel):
    """The compiled activations write their slope in the forward only while training: told otherwise,
    the output is bit for bit the training one and the backward has nothing to give."""
    x = np.random.default_rng(4).standard_normal((300, 257)).astype(np.float32) * 3
    trained, backward = kernel(x)
    evaluated, no_backward = kernel(x, input_grad=False)
    np.testing.assert_array_equal(evaluated, trained)
    assert no_backward(np.ones_like(x)) == (None,)
    assert backward(np.ones_like(x))[0].shape == x.shape


@pytest.mark.torch
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_activations_match_torch_at_the_extremes(name):
    """The compiled loops clamp their exponentials; outputs and slopes at the ends of
    float32's range and at NaN are still torch's (NaN where torch gives NaN)."""
    x = np.array([np.nan, 1e38, -1e38, 1e19, -1e19, 100.0, -100.0, 88.0, -88.0, 20.0, -20.0,
                  0.0, -0.0, 1e-40, -1e-40], np.float32)
    if name == "gelu_tanh":  # its cube overflows float32 at 1e13 in torch too, to NaN
        x = x[np.abs(x) < 1e12]
    kernel, torch_kernel = ACTIVATIONS[name]
    y, backward = kernel(x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_kernel(tx)
    ty.backward(torch.ones_like(ty))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(backward(np.ones_like(x))[0], tx.grad.numpy(), rtol=1e-6,
                               atol=1e-30)


@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_compiled_activations_keep_the_limits_at_infinity(name):
    """Where torch's float32 kernels overflow (GELU of inf is NaN there, of 3e38 inf), the
    limits: x itself far right, -0 far left; -inf times a zero probability stays NaN."""
    x = np.array([np.inf, 3e38, -3e38, -np.inf], np.float32)
    y = getattr(act, name)(x)[0]
    np.testing.assert_array_equal(y[:3], x[:2].tolist() + [-0.0])
    assert np.isnan(y[3])


@pytest.mark.torch
@pytest.mark.parametrize("name", COMPILED + ["relu6"])
@pytest.mark.parametrize("layout", ["transposed", "gappy", "column"])
def test_activations_of_arrays_in_other_layouts_match_torch(name, layout):
    """The compiled loops read a dense array in the order of its memory and the output takes
    its layout; an array with gaps is read through a copy. Either way the values are torch's
    (and the gradient, whatever d_out's layout)."""
    base = (np.random.default_rng(3).standard_normal((4, 6, 5, 8)) * 3).astype(np.float32)
    x = {"transposed": base.transpose(0, 3, 1, 2), "gappy": base[:, ::2].transpose(3, 1, 0, 2),
         "column": base[..., 5]}[layout]
    assert_matches_torch(name, x)
    if layout == "transposed" and name in COMPILED:
        assert ACTIVATIONS[name][0](x)[0].strides == x.strides


def test_elu_in_float32_is_within_a_few_ulp_of_the_true_value_near_zero():
    """exp(x) - 1 cancels near 0; the loop's series to -1/2 does not."""
    x = np.concatenate([-np.float32(10.0) ** np.linspace(-38, 0, 20_001, dtype=np.float32),
                        np.linspace(-20, 0, 200_001, dtype=np.float32)]).astype(np.float32)
    got = act.elu(x)[0].astype(np.float64)
    want = np.expm1(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / np.maximum(ulp, 1e-45)) <= 4.0


@pytest.mark.torch
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(4, 300, 257), (3, 5), (1, 1)])
def test_softmax_rows_match_torch_with_masked_and_infinite_scores(name, shape):
    """The compiled rows (split between the cores at the first shape): torch's values and
    gradients, with -inf scores (a mask) giving 0 (or -inf) and rows holding +inf or only
    -inf giving NaN, as torch's."""
    x = (np.random.default_rng(8).standard_normal(shape) * 4).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[::3, ::2] = -np.inf
    if len(flat) > 4:
        flat[1] = -np.inf
        flat[2, 0] = np.inf
        flat[4, 3] = np.nan
    kernel, torch_kernel = ACTIVATIONS[name]
    with np.errstate(invalid="ignore"):
        out, backward = kernel(x)
        probe = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
        (grad,) = backward(probe)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_kernel(tx)
    ty.backward(torch.tensor(probe))
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    finite = np.isfinite(tx.grad.numpy())  # (torch's NaN rows; ours NaN there too)
    np.testing.assert_allclose(grad[finite], tx.grad.numpy()[finite], rtol=1e-4, atol=1e-5)
    assert np.isnan(grad[~finite]).all()
