"""Activation kernels and erf: torch as the oracle in float32, central differences in float64."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import activations as act

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

FEW = settings(max_examples=15, deadline=None)

# case -> (the NumPy kernel with its attributes bound, the torch function with the same meaning)
ACTIVATIONS = {
    "relu": (act.relu, F.relu),
    "sigmoid": (act.sigmoid, torch.sigmoid),
    "tanh": (act.tanh, torch.tanh),
    "softmax": (act.softmax, lambda x: F.softmax(x, dim=-1)),
    "softmax_dim0": (lambda x: act.softmax(x, dim=0), lambda x: F.softmax(x, dim=0)),
    "log_softmax": (act.log_softmax, lambda x: F.log_softmax(x, dim=-1)),
    "log_softmax_dim1": (lambda x: act.log_softmax(x, dim=1), lambda x: F.log_softmax(x, dim=1)),
    "gelu": (act.gelu, F.gelu),
    "gelu_tanh": (
        lambda x: act.gelu(x, approximate="tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
    "leaky_relu": (act.leaky_relu, F.leaky_relu),
    "leaky_relu_0.2": (
        lambda x: act.leaky_relu(x, negative_slope=0.2),
        lambda x: F.leaky_relu(x, 0.2),
    ),
    "elu": (act.elu, F.elu),
    "elu_alpha_0.5": (lambda x: act.elu(x, alpha=0.5), lambda x: F.elu(x, alpha=0.5)),
    "silu": (act.silu, F.silu),
    "relu6": (act.relu6, F.relu6),
}


@pytest.fixture(autouse=True)
def strict_numerics():
    """Overflow, division by zero and NaN raise; underflow of tiny gradients to 0 is benign."""
    with np.errstate(all="raise", under="ignore"):
        yield


def assert_matches_torch(name, x, rtol=1e-4, atol=1e-5):
    """Forward and the gradient of sum(out * probe) agree with torch in float32."""
    out, backward = ACTIVATIONS[name][0](x)
    probe = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
    (grad,) = backward(probe)
    x_torch = torch.tensor(x, requires_grad=True)
    out_torch = ACTIVATIONS[name][1](x_torch)
    (out_torch * torch.tensor(probe)).sum().backward()
    assert out.dtype == np.float32 and grad.dtype == np.float32
    assert out.shape == x.shape and grad.shape == x.shape
    np.testing.assert_allclose(out, out_torch.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, x_torch.grad.numpy(), rtol=rtol, atol=atol)


shapes = st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple)


@pytest.mark.parametrize("name", ACTIVATIONS)
@FEW
@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 3.0, 20.0]))
def test_matches_torch(name, shape, seed, scale):
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    assert_matches_torch(name, x)


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


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_tiny_inputs_match_torch(name):
    x = np.array([[-1e-30, -1e-38, 0.0, 1e-38, 1e-30, 1e-7]], dtype=np.float32)
    assert_matches_torch(name, x)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_gradient_matches_central_differences(name):
    kernel = ACTIVATIONS[name][0]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5)) * 2.0
    x[np.abs(x) < 1e-3] = 0.5  # stay off the kinks of relu, leaky_relu and elu
    out, backward = kernel(x)
    probe = rng.standard_normal(out.shape)
    (grad,) = backward(probe)
    assert grad.dtype == np.float64
    eps = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[index] += eps
        plus = np.sum(kernel(shifted)[0] * probe)
        shifted[index] -= 2 * eps
        minus = np.sum(kernel(shifted)[0] * probe)
        numeric[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


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


def test_erf_matches_torch_erf():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 3
    np.testing.assert_allclose(act.erf(x), torch.erf(torch.tensor(x)).numpy(), rtol=2e-7,
                               atol=1e-7)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        act.gelu(np.zeros(2, np.float32), approximate="fast")
