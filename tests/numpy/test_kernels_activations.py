"""Activation kernels and erf: torch as the oracle in float32 (central differences in
test_kernel_gradients.py)."""

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


def test_erf_is_within_one_float32_ulp_of_the_true_value():
    dense = np.linspace(-6.0, 6.0, 400_001, dtype=np.float32)
    tiny = np.float32(10.0) ** np.linspace(-38, 0, 20_001, dtype=np.float32)
    x = np.concatenate([dense, tiny, -tiny, [0.0, 3.9, 4.0, 4.1, 10.0, 1e30, -1e30]])
    x = x.astype(np.float32)
    got = act.erf(x)
    want = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert got.dtype == np.float32
    error = np.abs(got.astype(np.float64) - want)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(error / np.maximum(ulp, np.finfo(np.float32).smallest_subnormal)) <= 1.0
    nonzero = want != 0
    assert np.max(error[nonzero] / np.abs(want[nonzero])) < 1.2e-7


def test_erf_in_float64_is_accurate_to_the_fit():
    x = np.linspace(-5.0, 5.0, 20_001)
    want = np.array([math.erf(v) for v in x])
    error = np.abs(act.erf(x) - want)
    assert np.max(error[want != 0] / np.abs(want[want != 0])) < 2e-8
    assert np.max(error) < 2e-8


@pytest.mark.torch
def test_erf_matches_torch_erf():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 3
    np.testing.assert_allclose(act.erf(x), torch.erf(torch.tensor(x)).numpy(), rtol=2e-7,
                               atol=1e-7)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        act.gelu(np.zeros(2, np.float32), approximate="fast")
