"""RNN, LSTM and GRU kernels: torch's nn modules as the oracle (central differences in
test_kernel_gradients.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels.recurrent import last_step, rnn
from tests.numpy.helpers import assert_close, recurrent_params, torch

pytestmark = pytest.mark.strict_numerics

FEW = settings(max_examples=25, deadline=None)
MODES = ("gru", "lstm", "rnn")


def make_module(mode, params, features, hidden, layers, bidirectional, nonlinearity):
    """The torch module with the same parameters; load_state_dict checks names and shapes."""
    options = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode](
        features, hidden, num_layers=layers, bidirectional=bidirectional,
        bias="bias_ih_l0" in params, batch_first=True, **options,
    )
    module.load_state_dict({name: torch.from_numpy(array) for name, array in params.items()})
    return module


def run_both(mode, batch, steps, features, hidden, layers, bidirectional,
             nonlinearity="tanh", has_bias=True, seed=0):
    """Forward and backward of the kernel and of torch on the same weights, input and probe."""
    params = recurrent_params(mode, features, hidden, layers, bidirectional, has_bias,
                              np.random.default_rng(seed))
    module = make_module(mode, params, features, hidden, layers, bidirectional, nonlinearity)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, steps, features), np.float32)
    out, backward = rnn(x, params, mode=mode, hidden=hidden, layers=layers,
                        bidirectional=bidirectional, nonlinearity=nonlinearity)
    probe = rng.standard_normal(out.shape, np.float32)
    dx, d_params = backward(probe)

    tx = torch.tensor(x, requires_grad=True)
    t_out, _ = module(tx)
    t_out.backward(torch.from_numpy(probe))
    return (out, dx, d_params), (t_out, tx.grad, module)


def assert_matches_torch(ours, theirs, atol=1e-5):
    (out, dx, d_params), (t_out, t_dx, module) = ours, theirs
    assert_close(out, t_out, atol=atol)
    assert_close(dx, t_dx, atol=atol)
    assert set(d_params) == {name for name, _ in module.named_parameters()}
    for name, parameter in module.named_parameters():
        assert_close(d_params[name], parameter.grad, atol=atol)


@pytest.mark.torch
@FEW
@given(
    mode=st.sampled_from(MODES),
    batch=st.integers(1, 3),
    steps=st.integers(1, 6),
    features=st.integers(1, 4),
    hidden=st.integers(1, 5),
    layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    has_bias=st.booleans(),
)
def test_rnn_matches_torch(mode, batch, steps, features, hidden, layers, bidirectional,
                           nonlinearity, has_bias):
    ours, theirs = run_both(mode, batch, steps, features, hidden, layers, bidirectional,
                            nonlinearity, has_bias)
    assert_matches_torch(ours, theirs)


@pytest.mark.torch
@pytest.mark.parametrize("mode", MODES)
def test_long_sequences_match_torch(mode):
    """Errors compound over a long recurrence; 30 steps of two bidirectional layers stay close."""
    ours, theirs = run_both(mode, batch=4, steps=30, features=6, hidden=16, layers=2,
                            bidirectional=True, seed=7)
    assert_matches_torch(ours, theirs, atol=3e-5)


@pytest.mark.torch
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_last_step_is_torch_final_state(mode, bidirectional):
    """last_step gives the top layer's h_n, and its gradient flows back through rnn."""
    hidden, layers = 3, 2
    params = recurrent_params(mode, 2, hidden, layers, bidirectional, True,
                              np.random.default_rng(3))
    module = make_module(mode, params, 2, hidden, layers, bidirectional, "tanh")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2), np.float32)
    out, rnn_backward = rnn(x, params, mode=mode, hidden=hidden, layers=layers,
                            bidirectional=bidirectional)
    summary, summary_backward = last_step(out, hidden=hidden, bidirectional=bidirectional)
    probe = rng.standard_normal(summary.shape, np.float32)
    (d_out,) = summary_backward(probe)
    dx, d_params = rnn_backward(d_out)

    tx = torch.tensor(x, requires_grad=True)
    _, state = module(tx)
    h_n = state[0] if mode == "lstm" else state
    directions = 2 if bidirectional else 1
    t_summary = torch.cat(list(h_n[-directions:]), dim=1)  # top layer, directions side by side
    t_summary.backward(torch.from_numpy(probe))
    assert_close(summary, t_summary)
    assert_close(dx, tx.grad)
    for name, parameter in module.named_parameters():
        assert_close(d_params[name], parameter.grad)


def test_unknown_mode_and_nonlinearity_are_rejected():
    x = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="unknown recurrent mode"):
        rnn(x, {}, mode="transformer", hidden=2, layers=1, bidirectional=False)
    with pytest.raises(ValueError, match="nonlinearity"):
        rnn(x, {}, mode="rnn", hidden=2, layers=1, bidirectional=False, nonlinearity="gelu")
