"""RNN, LSTM and GRU kernels: torch's nn modules as the oracle (central differences in
test_kernel_gradients.py)."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels.recurrent import last_step, rnn, rnn_states
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


# ---- initial and final states, dropout between layers ------------------------------------


def torch_states(mode, tensors, batch, unbatched):
    """Our (N, L * D, H) states (or one (L * D, H) for every sample) as torch's h_0 layout."""
    states = [t[:, None].expand(-1, batch, -1) if unbatched else t.transpose(0, 1)
              for t in tensors]
    states = [s.contiguous() for s in states]
    return tuple(states) if mode == "lstm" else states[0]


def torch_run_with_states(mode, module, x, initial, probes, batch, unbatched):
    """torch's module from the given initial states, its output and final states (batch
    first) backpropagated against ``probes``: (its results, its input, its initial states),
    the tensors holding their gradients."""
    tx = torch.tensor(x, requires_grad=True)
    t_initial = [torch.tensor(s, requires_grad=True) for s in initial]
    t_out, t_final = module(tx, torch_states(mode, t_initial, batch, unbatched))
    t_final = list(t_final) if mode == "lstm" else [t_final]
    t_outs = [t_out] + [f.transpose(0, 1) for f in t_final]
    sum((o * torch.from_numpy(p)).sum() for o, p in zip(t_outs, probes)).backward()
    return t_outs, tx, t_initial


def case_with_states(mode, features, hidden, layers, bidirectional, batch, steps, seeds,
                     unbatched=False):
    """Parameters (from seeds[0]), their torch module, an input and initial states (from
    seeds[1]; one state for every sample when ``unbatched``), and that generator."""
    directions = 2 if bidirectional else 1
    params = recurrent_params(mode, features, hidden, layers, bidirectional, True,
                              np.random.default_rng(seeds[0]))
    module = make_module(mode, params, features, hidden, layers, bidirectional, "tanh")
    rng = np.random.default_rng(seeds[1])
    x = rng.standard_normal((batch, steps, features)).astype(np.float32)
    shape = (layers * directions, hidden) if unbatched else (batch, layers * directions, hidden)
    initial = [rng.standard_normal(shape).astype(np.float32)
               for _ in range(2 if mode == "lstm" else 1)]
    return params, module, x, initial, rng


@pytest.mark.torch
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("unbatched", [False, True])
def test_initial_and_final_states_match_torch_with_gradients_through_both(mode, bidirectional,
                                                                          unbatched):
    check_states_against_torch(mode, bidirectional, unbatched, steps=6)


@pytest.mark.torch
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_backward_hands_its_gradients_over_in_blocks_of_steps(monkeypatch, mode,
                                                                  bidirectional):
    """Blocks of two steps of the batch of 5 (``BLOCK_COLUMNS`` 10), the first of 7 steps
    a block of its own, each direction's products taking them as they come."""
    from nnspec.backends.numpy.kernels import recurrent_cells

    monkeypatch.setattr(recurrent_cells, "BLOCK_COLUMNS", 10)
    check_states_against_torch(mode, bidirectional, False, steps=7)


def check_states_against_torch(mode, bidirectional, unbatched, steps):
    layers, features, hidden, batch = 2, 3, 4, 5
    params, module, x, initial, rng = case_with_states(mode, features, hidden, layers,
                                                       bidirectional, batch, steps, (0, 1),
                                                       unbatched)
    outs, backward = rnn_states(x, tuple(initial), params, mode=mode, hidden=hidden,
                                layers=layers, bidirectional=bidirectional)
    probes = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    dx, *d_initial, d_params = backward(*probes)

    t_outs, tx, t_initial = torch_run_with_states(mode, module, x, initial, probes, batch,
                                                  unbatched)
    for ours, theirs in zip(outs, t_outs):
        assert ours.shape == tuple(theirs.shape)
        assert_close(ours, theirs, atol=1e-5)
    assert_close(dx, tx.grad, atol=1e-5)
    for ours, theirs in zip(d_initial, t_initial):
        assert ours.shape == tuple(theirs.shape)
        assert_close(ours, theirs.grad, atol=1e-5)
    for name, parameter in module.named_parameters():
        assert_close(d_params[name], parameter.grad, atol=1e-5)


@pytest.mark.torch
def test_a_gradient_of_the_final_state_alone_reaches_the_input():
    params = recurrent_params("lstm", 3, 4, 1, False, True, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    (_out, _h_n, c_n), backward = rnn_states(x, (), params, mode="lstm", hidden=4, layers=1,
                                           bidirectional=False)
    dx, _d_params = backward(None, None, np.ones_like(c_n))
    module = make_module("lstm", params, 3, 4, 1, False, "tanh")
    tx = torch.tensor(x, requires_grad=True)
    _, (_, t_c) = module(tx)
    t_c.sum().backward()
    assert_close(c_n, t_c.transpose(0, 1), atol=1e-6)
    assert_close(dx, tx.grad, atol=1e-6)


def test_dropout_between_layers_zeroes_and_rescales_only_lower_layers_outputs():
    params = recurrent_params("gru", 3, 64, 2, False, True, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((8, 5, 3)).astype(np.float32)
    options = {"mode": "gru", "hidden": 64, "layers": 2, "bidirectional": False}
    (plain, _), _ = rnn_states(x, (), params, **options)
    (evaluated, _), _ = rnn_states(x, (), params, **options, dropout=0.5, rng=None)
    (dropped, _), _ = rnn_states(x, (), params, **options, dropout=0.5,
                                 rng=np.random.default_rng(2))
    np.testing.assert_array_equal(plain, evaluated)  # no rng: evaluation, no dropout
    assert not np.allclose(plain, dropped)
    one_layer = {**options, "layers": 1}
    (first, _), _ = rnn_states(x, (), {k: v for k, v in params.items() if k.endswith("0")},
                               **one_layer, dropout=0.5, rng=np.random.default_rng(2))
    (first_plain, _), _ = rnn_states(x, (), {k: v for k, v in params.items()
                                             if k.endswith("0")}, **one_layer)
    np.testing.assert_array_equal(first, first_plain)  # never after the last layer


REAL_SIZES = [
    (13, 300, True),   # rows packed 8 + 4 + 1; the backward product's 1200 reads in passes
    (32, 128, False),  # the steps split between the cores
    (1, 70, False),    # one sample: one part
    (1, 260, False),   # one sample of many units: both cores, each step's positions split
    (2, 256, True),    # one sample a core: the positions split too
    (6, 203, False),   # 6 samples of 203 units: 3 a core
    (9, 130, True),    # an odd batch with a phantom sample: 5 a core
    # an odd batch splits each step's positions between the cores, here one tile of them:
    # the second core must take none (it once made a phantom second item, after the end)
    (33, 36, False),   # the backward's H + F <= 48
    (87, 12, False),   # the forward's 4H = 48
]


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("batch, hidden, bidirectional", REAL_SIZES)
def test_float32_recurrent_steps_at_real_sizes_match_torch_and_the_float64_passes(
        mode, batch, hidden, bidirectional):
    """A float32 LSTM runs ``lstm_steps``' sample-major steps (the products on the tiles,
    the input's share in them, the gate arithmetic compiled), a float32 GRU
    ``gru_steps``' compiled arithmetic; float64 runs NumPy's passes. Both, from given
    initial states and with gradients through the final ones, against torch."""
    _check_steps_at_real_sizes(mode, batch, hidden, bidirectional)


@pytest.mark.torch
@pytest.mark.parametrize("folds", [False, True])
@pytest.mark.parametrize("batch, hidden, bidirectional", REAL_SIZES)
def test_float32_lstm_steps_with_the_input_products_folded_or_apart_match_torch(
        monkeypatch, folds, batch, hidden, bidirectional):
    """The input's share in each step's product (``lstm_steps._folds``: a narrow input, 8
    samples or more) or a product of its own before the steps, and its gradient one after,
    whatever the sizes would choose."""
    from nnspec.backends.numpy.kernels import lstm_steps

    monkeypatch.setattr(lstm_steps, "_folds", lambda *_: folds)
    _check_steps_at_real_sizes("lstm", batch, hidden, bidirectional)


def _check_steps_at_real_sizes(mode, batch, hidden, bidirectional):
    layers, features, steps = 2, 9, 7
    params, module, x, initial, _ = case_with_states(mode, features, hidden, layers,
                                                     bidirectional, batch, steps, (3, 4))
    results = {}
    for dtype in (np.float32, np.float64):
        cast = {name: value.astype(dtype) for name, value in params.items()}
        outs, backward = rnn_states(x.astype(dtype), tuple(s.astype(dtype) for s in initial),
                                    cast, mode=mode, hidden=hidden, layers=layers,
                                    bidirectional=bidirectional)
        probes = [np.random.default_rng(5 + k).standard_normal(o.shape).astype(dtype)
                  for k, o in enumerate(outs)]
        kept = [probe.copy() for probe in probes]
        dx, *d_initial, d_params = backward(*probes)
        for probe, before in zip(probes, kept):  # the gradients given are not written over
            np.testing.assert_array_equal(probe, before)
        results[dtype] = (outs, dx, d_initial, d_params, probes)
    outs, dx, d_initial, d_params, probes = results[np.float32]
    assert all(o.dtype == np.float32 for o in (*outs, dx, *d_initial, *d_params.values()))
    outs64, dx64, d_initial64, d_params64, _ = results[np.float64]
    for ours, theirs in zip((*outs, dx, *d_initial, *(d_params[k] for k in sorted(d_params))),
                            (*outs64, dx64, *d_initial64,
                             *(d_params64[k] for k in sorted(d_params64)))):
        # float32's own error at these sizes: NumPy's float32 passes were 3-4e-5 off too
        np.testing.assert_allclose(ours, theirs, rtol=1e-4,
                                   atol=1e-4 * max(1.0, np.abs(theirs).max()))

    t_outs, tx, t_initial = torch_run_with_states(mode, module, x, initial, probes, batch,
                                                  False)
    # to 2e-4 of each result's largest value (the input gradient reaches 46 here, the first
    # layer's weight gradients 700): each float32 result is within about 1e-4 of it from
    # float64's (above), in its own direction: a bidirectional GRU of 300 units, batch 13,
    # had ours 0.071 and torch's 0.054 from float64 on a gradient of largest value 673, 0.08
    # from each other (AMD EPYC, OpenBLAS's Haswell kernels)
    for ours, theirs in [*zip(outs, t_outs), (dx, tx.grad),
                         *((d, t.grad) for d, t in zip(d_initial, t_initial)),
                         *((d_params[name], p.grad) for name, p in module.named_parameters())]:
        assert_close(ours, theirs, atol=2e-4 * max(1.0, theirs.abs().max().item()))


@pytest.mark.torch
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_large_batches_take_a_product_per_step_and_match_torch(monkeypatch, mode, bidirectional):
    """From ``STEPWISE_MIN_BATCH`` samples on, the input projection and the weight
    gradients are a product per step (here from 1 sample, so that a small case runs it)."""
    from nnspec.backends.numpy.kernels import recurrent_cells

    monkeypatch.setattr(recurrent_cells, "STEPWISE_MIN_BATCH", 1)
    ours, theirs = run_both(mode, 5, 6, 3, 4, 2, bidirectional)
    assert_matches_torch(ours, theirs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_empty_batch_or_sequence_runs_nothing_and_hands_the_states_through(mode, dtype):
    """No samples (torch gives empty results too) or no steps (torch refuses; here the final
    states are the initial ones): no internal error, and the final states' gradients go to
    the initial ones."""
    hidden, features, layers = 5, 3, 2
    params = {name: value.astype(dtype) for name, value in recurrent_params(
        mode, features, hidden, layers, True, True, np.random.default_rng(0)).items()}
    kinds = 2 if mode == "lstm" else 1
    for batch, steps in [(0, 4), (3, 0)]:
        rng = np.random.default_rng(1)
        initial = tuple(rng.standard_normal((batch, 2 * layers, hidden)).astype(dtype)
                        for _ in range(kinds))
        (out, *finals), backward = rnn_states(np.zeros((batch, steps, features), dtype),
                                              initial, params, mode=mode, hidden=hidden,
                                              layers=layers, bidirectional=True)
        assert out.shape == (batch, steps, 2 * hidden)
        for final, start in zip(finals, initial):
            np.testing.assert_array_equal(final, start)
        d_finals = [rng.standard_normal(f.shape).astype(dtype) for f in finals]
        dx, *d_initial, d_params = backward(np.zeros_like(out), *d_finals)
        assert dx.shape == (batch, steps, features)
        for d, handed in zip(d_initial, d_finals):
            np.testing.assert_array_equal(d, handed)
        assert set(d_params) == set(params) and not any(g.any() for g in d_params.values())


@pytest.mark.parametrize("layout", ["time-major", "broadcast", "float64"])
def test_float32_lstm_takes_the_output_gradient_in_any_layout(layout):
    """The float32 LSTM's backward steps read the output's gradient where it lies (rows of
    H with unit stride), else from a copy: a time-major array, one broadcast along the
    batch and time, and a float64 one give the gradients of its float32 contiguous copy."""
    batch, steps, features, hidden = 6, 5, 3, 20
    params = {name: value.astype(np.float32) for name, value in recurrent_params(
        "lstm", features, hidden, 2, True, True, np.random.default_rng(0)).items()}
    x = np.random.default_rng(1).standard_normal((batch, steps, features)).astype(np.float32)
    shape = (batch, steps, 2 * hidden)
    rng = np.random.default_rng(2)
    if layout == "time-major":
        d_out = np.ascontiguousarray(rng.standard_normal(shape).astype(np.float32)
                                     .transpose(1, 2, 0)).transpose(2, 0, 1)
    elif layout == "broadcast":
        d_out = np.broadcast_to(rng.standard_normal(shape[-1]).astype(np.float32), shape)
    else:
        d_out = rng.standard_normal(shape)
    kept = d_out.copy()

    def gradients(d_output):  # a fresh forward each: a backward runs once
        _, backward = rnn_states(x, (), params, mode="lstm", hidden=hidden, layers=2,
                                 bidirectional=True)
        return backward(d_output, None, None)

    dx, d_params = gradients(d_out)
    np.testing.assert_array_equal(d_out, kept)
    want_dx, want_params = gradients(np.ascontiguousarray(d_out, np.float32))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6)
    for name, grad in want_params.items():
        np.testing.assert_allclose(d_params[name], grad, rtol=1e-6, atol=1e-6)


def test_lstm_step_arithmetic_is_vectorised():
    """A step's gate arithmetic, forward and backward, runs on vectors over a sample's
    units (a loop LLVM cannot see the indices of runs one unit at a time, 5x slower). The
    forward's tanh division and the backward's multiplications show it."""
    import numba

    from nnspec.backends.numpy.kernels import lstm_steps

    for part, vector_op in ((lstm_steps._forward_part, "fdiv"),
                            (lstm_steps._backward_part, "fmul")):
        @numba.njit(error_model="numpy")
        def arithmetic(params):
            part(params, 0)  # noqa: B023 -- compiled now

        arithmetic.compile((numba.int64[:],))
        code = arithmetic.inspect_llvm(arithmetic.signatures[0])
        assert re.search(rf"{vector_op} (fast )?<\d+ x float>", code), part.__name__


@pytest.mark.parametrize("hidden, inputs", [(5, 3), (16, 9), (100, 31)])
def test_lstm_panels_are_the_scaled_weights_panels(hidden, inputs):
    """``lstm_steps._panels`` fills the products' panels in one pass: the forward's from the
    input weights (their bias column included) stacked on the recurrent ones with their
    bias, scaled; the backward's from the recurrent weights beside the input ones (bias
    column left out): as NumPy's copies would lay them out, bit for bit, at sizes that
    leave panels part-filled."""
    from nnspec.backends.numpy.kernels import lstm_steps, tiled

    rng = np.random.default_rng(hidden)
    gates = 4 * hidden
    scale = rng.standard_normal((gates, 1)).astype(np.float32)
    w_ih = rng.standard_normal((gates, inputs + 1)).astype(np.float32)
    w_hh = rng.standard_normal((gates, hidden)).astype(np.float32)
    b_hh = rng.standard_normal(gates).astype(np.float32)
    recurrent = np.concatenate([w_hh, b_hh[:, None]], axis=1)
    forward = tiled.empty_panels(inputs + 1 + hidden + 1, gates)
    lstm_steps._panels(forward, w_ih, 0, scale)
    lstm_steps._panels(forward, w_hh, inputs + 1, scale, b_hh)
    expected = tiled.panels(np.concatenate([(w_ih * scale).T, (recurrent * scale).T]))
    np.testing.assert_array_equal(forward, expected)
    backward = tiled.empty_panels(gates, hidden + inputs)
    lstm_steps._panels(backward, w_hh, 0)
    lstm_steps._panels(backward, w_ih, hidden, columns=inputs)
    expected = tiled.panels(np.concatenate([w_hh, w_ih[:, :-1]], axis=1))
    np.testing.assert_array_equal(backward, expected)
