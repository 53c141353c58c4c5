"""The interpreter over whole graphs: every op has a rule, and models equal hand-written torch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nnspec.backends.numpy.model import InputError, NumpyModel
from nnspec.backends.numpy.rules import RULES
from nnspec.ir import ops
from nnspec.spec import load_text
from tests.numpy.helpers import torch


@pytest.mark.parametrize("name", sorted([*ops.OPS, *ops.ALIASES]))
def test_every_catalogue_op_has_a_numpy_rule(name):
    assert ops.lookup(name).name in RULES, f"no NumPy rule for `{name}`"


def _model(text: str, seed: int = 0) -> NumpyModel:
    return NumpyModel.from_spec(load_text(text, "test.nn"), seed=seed)


RESIDUAL = """
model Residual {
  input x: [6]
  shared = dense(6)
  h = x -> dense(6) as inp -> tanh
  h = h + (h -> shared -> relu)          # a residual: h feeds two consumers
  h = h -> shared                        # the shared layer applied a second time
  h -> dense(3) as out -> softmax
}
train Residual { loss cross_entropy; optimizer sgd(lr = 0.1) }
"""


def _torch_residual(torch, params):
    def forward(x):
        lin = torch.nn.functional.linear
        h = torch.tanh(lin(x, params["inp.weight"], params["inp.bias"]))
        h = h + torch.relu(lin(h, params["shared.weight"], params["shared.bias"]))
        h = lin(h, params["shared.weight"], params["shared.bias"])
        return lin(h, params["out.weight"], params["out.bias"])

    return forward


@pytest.mark.torch
def test_residual_and_shared_layer_gradients_accumulate_like_torch():
    model = _model(RESIDUAL)
    assert set(model.params) == {"inp.weight", "inp.bias", "shared.weight", "shared.bias",
                                 "out.weight", "out.bias"}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    loss = model.loss(x, y)
    grads = model.backward()

    params = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    tx = torch.tensor(x, requires_grad=True)
    logits = _torch_residual(torch, params)(tx)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for name, p in params.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    probs = model(x)
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


TWO_HEADS = """
model TwoHeads {
  input x: [6]
  h = x -> dense(6) as trunk -> tanh
  a = h -> dense(2) as head_a
  b = h -> dense(3) as head_b
  a, b
}
"""


def test_each_backward_gives_its_own_gradients_and_zero_to_parameters_it_misses():
    """A parameter's first gradient is copied into its buffer, not added to the last
    backward's: gradients by one output after gradients by the other are that output's
    alone, zero for the other head."""
    model = _model(TWO_HEADS)
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    d_a = np.random.default_rng(3).standard_normal((4, 2)).astype(np.float32)
    d_b = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    model.forward(x, record=True)
    alone = {k: v.copy() for k, v in model.backward({"a": d_a}).items()}
    model.forward(x, record=True)
    assert model.backward({"b": d_b})["head_b.weight"].any()
    model.forward(x, record=True)
    again = model.backward({"a": d_a})
    assert not again["head_b.weight"].any() and not again["head_b.bias"].any()
    assert again["head_a.weight"].any()
    for name, grad in alone.items():
        np.testing.assert_array_equal(again[name], grad, err_msg=name)


@pytest.mark.torch
def test_input_gradients_after_a_recorded_forward():
    model = _model(RESIDUAL)
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    d_out = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    model.forward(x, record=True)
    model.backward(d_out)
    params = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    tx = torch.tensor(x, requires_grad=True)
    out = torch.softmax(_torch_residual(torch, params)(tx), -1)
    out.backward(torch.tensor(d_out))
    np.testing.assert_allclose(model.input_grads["x"], tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_only_a_recorded_run_tells_kernels_their_inputs_need_a_gradient(monkeypatch):
    """Evaluation and sampling run unrecorded: kernels that take `input_grad` (GELU's slope,
    a convolution's input gradient) skip what only a backward would read."""
    model = _model("""
model M {
  input x: [6]
  x -> dense(8) -> gelu -> dense(3)
}
train M { loss cross_entropy }
""")
    told = []
    rule = RULES["gelu"]

    def spying(node, ins, params, ctx):
        told.append(ctx.input_grad)
        return rule(node, ins, params, ctx)

    monkeypatch.setitem(RULES, "gelu", spying)
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    evaluated = model.forward(x)
    model.loss(x, np.array([0, 1, 2, 0]))
    recorded = model.forward(x, record=True)
    assert told == [False, True, True]
    np.testing.assert_array_equal(evaluated, recorded)


TIED = """
model Tied(vocab = 11, d = 8) {
  input tokens: int[5]
  h = (tokens -> embedding(vocab, d) as wte) + (tokens -> positions(5, d) as wpe)
  h -> layernorm as ln -> attention(2, causal = true) as attn -> dense(vocab, bias = false, tie = wte)
}
train Tied { loss cross_entropy }
"""


WIDE_CONV = """
model WideConv {
  input x: [256, 4, 4]
  x -> conv2d(32, 3, padding = 1) as conv -> relu -> conv2d(16, 3, padding = 1) as narrow
    -> relu -> flatten -> dense(3) as head
}
train WideConv { loss cross_entropy; optimizer sgd(lr = 0.1) }
"""


def test_weight_gradients_are_written_into_the_models_buffer(monkeypatch):
    """A dense layer, a convolution whose weight gradient is one product on the columns (256
    channels) and one whose gradient is the direct tiles' sums (32) write theirs straight
    into the model's gradient slots (``gradient_slots``): the gradients are the ones every
    slot copied in gives, to the bit, and the slots were taken, on every step."""
    from nnspec.backends.numpy.kernels import gradient_slots

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 256, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 2)
    copied = _model(WIDE_CONV)
    with monkeypatch.context() as patch:  # no slot offered: every gradient a copy
        patch.setattr(gradient_slots, "empty", lambda shape, dtype: np.empty(shape, dtype))
        copied.loss(x, y)
        expected = {k: v.copy() for k, v in copied.backward().items()}
    taken = []
    offer = gradient_slots.empty

    def watched(shape, dtype):
        array = offer(shape, dtype)
        taken.append(array)
        return array

    monkeypatch.setattr(gradient_slots, "empty", watched)
    model = _model(WIDE_CONV)
    for _ in range(2):  # the second backward writes over the first's slots
        taken.clear()
        model.loss(x, y)
        grads = model.backward()
        for name in ("conv.weight", "narrow.weight", "head.weight"):
            assert any(array is grads[name] for array in taken), name
        for name, grad in expected.items():
            np.testing.assert_array_equal(grads[name], grad, err_msg=name)


def test_a_gradient_slot_is_offered_only_where_its_shape_is_the_steps_alone():
    """Two parameters of one shape in a step: neither slot is offered (a kernel taking the
    slot of its shape could take the other's); nor a slot already written this backward."""
    buffer = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 3), np.float32),
              "c": np.zeros(3, np.float32), "d": np.zeros(4, np.float32)}
    step = SimpleNamespace(params={"w1": "a", "w2": "b", "bias": "c", "other": "d"})
    assert NumpyModel._free_slots(step, buffer, {"d"}) == [buffer["c"]]


@pytest.mark.torch
def test_tied_embedding_and_causal_attention_match_torch():
    model = _model(TIED, seed=3)
    assert "lm_head.weight" not in model.params and "wte.weight" in model.params
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 11, (3, 5))
    targets = rng.integers(0, 11, (3, 5))
    loss = model.loss(tokens, targets)
    grads = model.backward()

    sd = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(sd["attn.in_proj_weight"])
        mha.in_proj_bias.copy_(sd["attn.in_proj_bias"])
        mha.out_proj.weight.copy_(sd["attn.out_proj.weight"])
        mha.out_proj.bias.copy_(sd["attn.out_proj.bias"])
    tt = torch.tensor(tokens)
    h = sd["wte.weight"][tt] + sd["wpe.weight"][:5]
    h = torch.nn.functional.layer_norm(h, (8,), sd["ln.weight"], sd["ln.bias"])
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    h, _ = mha(h, h, h, attn_mask=mask, need_weights=False)
    logits = h @ sd["wte.weight"].T
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11),
                                                 torch.tensor(targets).reshape(-1))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(grads["wte.weight"], sd["wte.weight"].grad.numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(grads["attn.in_proj_weight"], mha.in_proj_weight.grad.numpy(),
                               rtol=1e-4, atol=1e-6)


BN = """
model BN {
  input x: [2, 5, 5]
  x -> conv2d(3, 3, padding = "same") -> batchnorm as bn -> relu -> global_avgpool -> dense(2)
}
train BN { loss cross_entropy }
"""


@pytest.mark.torch
def test_batchnorm_running_statistics_follow_torch_in_both_modes():
    model = _model(BN)
    bn = torch.nn.BatchNorm2d(3)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
        model.loss(x, rng.integers(0, 2, 4))
        conv = torch.nn.functional.conv2d(torch.tensor(x),
                                          torch.tensor(model.params["conv2d_1.weight"]),
                                          torch.tensor(model.params["conv2d_1.bias"]), padding=1)
        bn.train()(conv)
    state = model.state_dict()
    np.testing.assert_allclose(state["bn.running_mean"], bn.running_mean.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(state["bn.running_var"], bn.running_var.numpy(), rtol=1e-5)
    assert int(state["bn.num_batches_tracked"]) == 3 == int(bn.num_batches_tracked)


def test_weights_round_trip_through_safetensors(tmp_path):
    model = _model(BN, seed=1)
    model.save(tmp_path / "w.safetensors")
    other = _model(BN, seed=2)
    assert not np.array_equal(other.params["bn.weight"] + other.params["conv2d_1.weight"].sum(),
                              model.params["bn.weight"] + model.params["conv2d_1.weight"].sum())
    other.load(tmp_path / "w.safetensors")
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], array)


def test_weights_of_another_model_are_refused_without_change():
    model = _model(BN)
    before = model.state_dict()
    with pytest.raises(ValueError, match="conv2d_1.weight"):
        wrong = dict(before)
        wrong["conv2d_1.weight"] = np.zeros((4, 2, 3, 3), np.float32)
        model.load_state_dict(wrong)
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(before[name], array)


def test_inputs_are_checked_against_the_declared_shape():
    model = _model(BN)
    with pytest.raises(InputError, match=r"\[2, 5, 5\]"):
        model(np.zeros((4, 3, 5, 5), np.float32))
    with pytest.raises(InputError, match="out of range"):
        model.loss(np.zeros((2, 2, 5, 5), np.float32), np.array([0, 7]))
    with pytest.raises(InputError, match="batch is empty"):
        model(np.zeros((0, 2, 5, 5), np.float32))


@pytest.mark.parametrize("logits", [False, True])
def test_binary_cross_entropy_targets_must_be_probabilities(logits):
    model = _model(f"""
model Scorer {{
  input x: [3]
  x -> dense(2) -> sigmoid
}}
train Scorer {{ loss binary_cross_entropy(logits = {str(logits).lower()}); optimizer sgd(lr = 0.1) }}
""")
    x = np.zeros((2, 3), np.float32)
    for target in ([[0.0, 1.7], [0.5, 1.0]], [[0.0, np.nan], [0.5, 1.0]]):
        if logits:  # torch's with-logits loss takes any target, and so does ours
            model.loss(x, np.array(target, np.float32))
        else:
            with pytest.raises(InputError, match="between 0 and 1"):
                model.loss(x, np.array(target, np.float32))
    model.loss(x, np.array([[0.0, 1.0], [0.25, 1.0]], np.float32))


def test_symbolic_dims_resolve_from_the_batch():
    model = _model("""
model Seq {
  input x: [T, 4]
  x -> lstm(6) -> dense(3)
}""")
    assert model(np.zeros((2, 7, 4), np.float32)).shape == (2, 7, 3)
    assert model(np.zeros((1, 3, 4), np.float32)).shape == (1, 3, 3)


def test_same_seed_same_weights_and_different_seed_different_weights():
    a, b, c = _model(RESIDUAL, 7), _model(RESIDUAL, 7), _model(RESIDUAL, 8)
    assert np.array_equal(a.buffer.data, b.buffer.data)
    assert not np.array_equal(a.buffer.data, c.buffer.data)


def test_init_follows_torch_bounds():
    model = _model(RESIDUAL)
    bound = 1 / np.sqrt(6)
    assert np.abs(model.params["inp.weight"]).max() <= bound
    assert np.abs(model.params["inp.weight"]).max() > 0.8 * bound


HUBER = """
fn huber(pred, target, delta = 1.0) {
  err = abs(pred - target)
  mean(where(err < delta, 0.5 * err ^ 2, delta * (err - 0.5 * delta)))
}
fn scaled_swish(x, beta = 1.0) {
  x * sigmoid(beta * x)
}
model Reg {
  input x: [3]
  x -> dense(4) as a -> scaled_swish(beta = 2.0) -> dense(2) as b
}
train Reg { loss huber(delta = 0.5) }
"""


@pytest.mark.torch
def test_custom_fn_activation_and_loss_are_differentiated_like_torch():
    model = _model(HUBER)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    loss = model.loss(x, y)
    grads = model.backward()
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    h = torch.nn.functional.linear(torch.tensor(x), sd["a.weight"], sd["a.bias"])
    h = h * torch.sigmoid(2.0 * h)
    pred = torch.nn.functional.linear(h, sd["b.weight"], sd["b.bias"])
    expected = torch.nn.functional.huber_loss(pred, torch.tensor(y), delta=0.5)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for name, p in sd.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-7,
                                   err_msg=name)


def test_the_public_api_trains_a_spec():
    import nnspec

    spec = nnspec.load_text(HUBER.replace("train Reg { loss huber(delta = 0.5) }",
                                          "train Reg { loss mse; optimizer adam(lr = 0.05) }"))
    model = nnspec.NumpyModel.from_spec(spec, seed=0)
    optimizer = nnspec.make_optimizer(spec, model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = np.stack([x[:, 0] - x[:, 1], x[:, 2] * 0.5], axis=1).astype(np.float32)
    first = model.loss(x, y)
    for _ in range(200):
        model.loss(x, y)
        model.backward()
        optimizer.step()
    assert model.loss(x, y) < 0.05 * first


BATCHNORM_ACTIVATIONS = """
model Net {
  input x: [3, 8, 8]
  h = x -> conv2d(4, 3, padding = 1) -> batchnorm -> relu
  branch = h -> conv2d(4, 3, padding = 1) -> batchnorm
  h = relu6(branch) + branch
  h = h -> conv2d(4, 1) -> batchnorm -> relu6
  h -> conv2d(4, 3, padding = 1) -> batchnorm -> leaky_relu(0.2) -> global_avgpool -> dense(3)
}
train Net { loss cross_entropy; optimizer sgd(lr = 0.1) }
"""


def fused_and_plain(monkeypatch, spec, x, y, seen):
    """A training step of ``spec`` with the interpreter's fusion plan, then without it:
    (loss, gradients, what ``seen`` recorded) of each."""
    runs = []
    for fusing in (True, False):
        if not fusing:
            monkeypatch.setattr(NumpyModel, "_fusion_plan", lambda self, *args: {})
        model = _model(spec)
        seen.clear()
        loss = model.loss(x, y)
        runs.append((loss, model.backward(), list(seen)))
    return runs


def assert_same_training(fused_loss, fused_grads, loss, grads):
    """Loss and gradients of the fused run are the unfused run's, to the bit."""
    assert fused_loss == loss
    for name, grad in grads.items():
        np.testing.assert_array_equal(fused_grads[name], grad, err_msg=name)


def test_a_batchnorm_applies_the_activation_that_alone_reads_it_with_the_same_results(
        monkeypatch):
    """The first batch norm and the last two apply their relu / relu6 / leaky ReLU
    themselves; the second, whose output two nodes read, does not. Loss and gradients
    equal the unfused run's."""
    from nnspec.backends.numpy import rules_layers

    seen = []
    batch_norm = rules_layers.norm_batch.batch_norm

    def spying(*args, activation=None, **kwargs):
        seen.append(activation)
        return batch_norm(*args, activation=activation, **kwargs)

    monkeypatch.setattr(rules_layers.norm_batch, "batch_norm", spying)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    (fused_loss, fused_grads, fused_seen), (loss, grads, plain_seen) = fused_and_plain(
        monkeypatch, BATCHNORM_ACTIVATIONS, x, y, seen)
    assert fused_seen == ["relu", None, "relu6", ("leaky_relu", 0.2)]
    assert plain_seen == [None] * 4
    assert_same_training(fused_loss, fused_grads, loss, grads)


CONVOLUTION_RELUS = """
model Net {
  input x: [3, 10, 10]
  h = x -> conv2d(6, 3, padding = 1) -> relu
  h = h -> conv2d(6, 3, stride = 2, padding = 1, bias = false) -> relu
  h = h -> conv2d(6, 3, padding = 1) -> leaky_relu(0.2)
  shared = h -> conv2d(6, 1)
  both = relu(shared) + shared
  both -> flatten -> dense(8) -> relu -> dense(3)
}
train Net { loss cross_entropy; optimizer sgd(lr = 0.1) }
"""


def test_a_convolution_applies_the_relu_that_alone_reads_it_with_the_same_results(
        monkeypatch):
    """The first three convolutions apply their relu or leaky ReLU themselves (with and
    without a bias); the fourth, whose output two nodes read, does not. Loss and gradients
    equal the unfused run's to the bit, but for the bias gradients' float32 rounding."""
    from nnspec.backends.numpy import model as model_module
    from nnspec.backends.numpy import rules_layers

    seen = []
    conv2d = rules_layers.conv.conv2d

    def spying(*args, activation=None, **kwargs):
        seen.append(activation)
        return conv2d(*args, activation=activation, **kwargs)

    monkeypatch.setitem(model_module.RULES, "conv2d", rules_layers._conv(2, spying))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 10, 10)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    (fused_loss, fused_grads, fused_seen), (loss, grads, plain_seen) = fused_and_plain(
        monkeypatch, CONVOLUTION_RELUS, x, y, seen)
    assert fused_seen == ["relu", "relu", ("leaky_relu", 0.2), None]
    assert plain_seen == [None] * 4
    # the fused bias gradients sum the same values in a loop vectorised otherwise
    for bias in ("conv2d_1.bias", "conv2d_3.bias"):
        np.testing.assert_allclose(fused_grads.pop(bias), grads.pop(bias), rtol=1e-6,
                                   atol=1e-9)
    assert_same_training(fused_loss, fused_grads, loss, grads)


RESIDUAL_JOINS = """
block Join(c) {
  input x: [C, H, W]
  y = x -> conv2d(c, 3, padding = 1) -> batchnorm
  relu(y + x)
}
model Net {
  input x: [4, 16, 16]
  h = x -> Join(4) -> Join(4)
  s = h + x
  both = relu(s) + s
  both -> global_avgpool -> dense(3)
}
train Net { loss cross_entropy; optimizer sgd(lr = 0.1) }
"""


def test_a_sum_that_only_a_relu_reads_is_one_op_with_the_same_results(monkeypatch):
    """Both residual joins run as ``add_relu``; a sum that two nodes read does not. Loss
    and gradients equal the unfused run's."""
    from nnspec.backends.numpy.kernels import elementwise

    seen = []
    add_relu = elementwise.add_relu
    monkeypatch.setattr(elementwise, "add_relu",
                        lambda a, b: seen.append(a.shape) or add_relu(a, b))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 16, 16)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    (fused_loss, fused_grads, fused_seen), (loss, grads, plain_seen) = fused_and_plain(
        monkeypatch, RESIDUAL_JOINS, x, y, seen)
    assert fused_seen == [(5, 4, 16, 16)] * 2 and plain_seen == []
    assert_same_training(fused_loss, fused_grads, loss, grads)

GATED_PRODUCTS = """
model Net {
  input x: [12]
  up = x -> dense(16)
  h = silu(x -> dense(16)) * up
  late = h -> dense(16)
  k = (h -> dense(16)) * silu(late)
  shared = silu(k)
  both = shared * k + shared
  squared = silu(both) * silu(both)
  squared -> dense(3)
}
train Net { loss cross_entropy; optimizer sgd(lr = 0.1) }
"""


def test_a_silu_that_only_a_product_reads_is_applied_by_the_product_with_the_same_results(
        monkeypatch):
    """The first two products gate their silu operand themselves (the gate first, then
    second), and a product of two silus one of them; a silu that two nodes read is not
    gated. Loss and gradients equal the unfused run's."""
    from nnspec.backends.numpy.kernels import elementwise

    seen = []
    silu_mul = elementwise.silu_mul
    monkeypatch.setattr(elementwise, "silu_mul",
                        lambda a, b: seen.append(a.shape) or silu_mul(a, b))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 12)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    (fused_loss, fused_grads, fused_seen), (loss, grads, plain_seen) = fused_and_plain(
        monkeypatch, GATED_PRODUCTS, x, y, seen)
    assert fused_seen == [(7, 16)] * 3 and plain_seen == []
    assert_same_training(fused_loss, fused_grads, loss, grads)
