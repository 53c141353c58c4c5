"""Shared by the NumPy kernel tests: torch as an optional oracle and the float32 comparison.

`torch` and `F` are None in the plain install; tests that use them carry `pytest.mark.torch`,
which tests/numpy/conftest.py turns into a skip there.
"""

import operator

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the plain install: every test marked `torch` skips
    torch = F = None


def torch_op(path):
    """The torch function at `path` ("add", "nn.functional.gelu"), looked up at call time so
    that tables of cases import without torch."""
    def call(*args, **kwargs):
        return operator.attrgetter(path)(torch)(*args, **kwargs)
    return call


def as_torch(array):
    """A leaf tensor that collects a gradient; None stays None (an absent bias)."""
    return None if array is None else torch.tensor(array, requires_grad=True)


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    """A float32 NumPy result agrees with torch's tensor in shape and value."""
    expected = expected.detach().numpy()
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def recurrent_params(mode, features, hidden, layers, bidirectional, has_bias, rng,
                     dtype=np.float32):
    """Recurrent parameters under torch's names and shapes, drawn from `rng`."""
    rows = GATES[mode] * hidden
    params = {}
    for layer in range(layers):
        inputs = features if layer == 0 else hidden * (2 if bidirectional else 1)
        for suffix in ("", "_reverse") if bidirectional else ("",):
            shapes = {"weight_ih": (rows, inputs), "weight_hh": (rows, hidden)}
            if has_bias:
                shapes |= {"bias_ih": (rows,), "bias_hh": (rows,)}
            for kind, shape in shapes.items():
                params[f"{kind}_l{layer}{suffix}"] = rng.uniform(-0.6, 0.6, shape).astype(dtype)
    return params
