"""Recurrent layers with initial and final states and dropout between layers, as a spec
writes them: both backends agree (outputs, parameter and input gradients), the generated
module uses torch's own `nn.LSTM`/`nn.GRU`/`nn.RNN` state layout, and the builder reports
states that do not fit."""

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import check_text, load_text
from tests.torch.test_codegen import _compare_with_interpreter

SPECS = {
    "encoder_state_starts_the_decoder": """
model S {
  input x: [5, 3]
  input y: [4, 3]
  out, h, c = x -> lstm(6, layers = 2, states = true)
  y -> lstm(h, c, 6, layers = 2)
}
""",
    "call_form": """
model S {
  input x: [5, 3]
  input y: [4, 3]
  out, h, c = x -> lstm(6, states = true)
  lstm(y, h, c, 6)
}
""",
    "only_the_final_state_is_used": """
model S {
  input x: [5, 3]
  out, h = x -> gru(4, layers = 2, bidirectional = true, states = true)
  h -> flatten
}
""",
    "last_step_and_states_in_one_output": """
model S {
  input x: [5, 3]
  out, h = x -> rnn(4, layers = 2, last = true, states = true, nonlinearity = "relu")
  concat(out, h -> flatten)
}
""",
    "one_learned_start_for_every_sample": """
model S {
  input x: [5, 3]
  h0 = positions(2, 4) * 1.0
  x -> gru(h0, 4, layers = 2, dropout = 0.3)
}
""",
    "one_learned_sequence_decoded_from_each_samples_states": """
model S {
  input x: [5, 3]
  out, h = x -> gru(4, states = true)
  queries = positions(6, 2) * 1.0
  queries -> gru(h, 4) -> dense(3)
}
""",
    "bidirectional_last_step_from_states": """
model S {
  input x: [5, 3]
  out, h, c = x -> lstm(4, bidirectional = true, states = true)
  x -> lstm(h, c, 4, bidirectional = true, last = true)
}
""",
}


@pytest.mark.torch
@pytest.mark.parametrize("name", SPECS)
def test_both_backends_agree_on_states_in_and_out(name):
    _compare_with_interpreter(load_text(SPECS[name], f"{name}.nn"))


@pytest.mark.torch
def test_the_generated_module_has_torchs_dropout_between_layers():
    from nnspec.backends.torch.codegen import generate

    code = generate(load_text(SPECS["one_learned_start_for_every_sample"], "s.nn"))
    assert "nn.GRU(3, 4, num_layers=2, dropout=0.3, batch_first=True)" in code


def test_dropout_between_layers_is_random_while_training_only():
    spec = load_text(SPECS["one_learned_start_for_every_sample"], "s.nn")
    model = NumpyModel(spec.graph, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    evaluated = [model.forward(x) for _ in range(2)]
    trained = [model.forward(x, train=True) for _ in range(2)]
    np.testing.assert_array_equal(*evaluated)
    assert not np.allclose(trained[0], trained[1]) and not np.allclose(trained[0], evaluated[0])


def test_a_block_giving_both_states_passes_them_on_as_one_value():
    """`x -> lstm(state, d)` with `state` the two tensors of a block (interpreter only: the
    torch backend does not yet write blocks with several outputs)."""
    text = """
block Encoder(d) {
  input x: [T, F]
  out, h, c = x -> lstm(d, states = true)
  h, c
}
model S {
  input x: [5, 3]
  input y: [4, 3]
  state = x -> Encoder(6)
  y -> lstm(state, 6)
}
"""
    spec = load_text(text, "s.nn")
    decoder = spec.graph.node(spec.graph.outputs[0])
    assert decoder.op == "lstm" and [spec.graph.node(i).op for i in decoder.inputs] == [
        "input", "result", "result"]
    model = NumpyModel(spec.graph, seed=0)
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((2, t, 3)).astype(np.float32) for t in (5, 4))
    out = model.forward((x, y), record=True)
    grads = model.backward(np.ones_like(out))
    assert np.abs(grads["encoder_1.lstm_1.weight_ih_l0"]).sum() > 0  # through the states


def test_the_summary_lists_each_final_state_read_with_torchs_shape():
    spec = load_text(SPECS["encoder_state_starts_the_decoder"], "s.nn")
    results = {n.name: (n.op, list(n.type.shape)) for n in spec.graph.nodes if n.op == "result"}
    assert results == {"lstm_1_h_n": ("result", [2, 6]), "lstm_1_c_n": ("result", [2, 6])}
    # the unused output sequence has no node; the lstm's value still holds it
    assert [n.inputs for n in spec.graph.nodes if n.op == "lstm"][1] == (
        "y", "lstm_1_h_n", "lstm_1_c_n")


@pytest.mark.parametrize("body, code, words", [
    ("out, h = x -> lstm(6, states = true)\n  h", "E116", "2 names for 3 tensors"),
    ("h0 = x -> select(0)\n  x -> gru(h0, 6)", "E301", "initial h must be [1, 6]"),
    ("out, h, c = x -> lstm(6, states = true)\n  x -> lstm(h, 6)", "E301",
     "lstm starts from h_n and c_n: give 2 initial states, not 1"),
    ("x -> result(0, \"h\")", "E302", "`result` is made by layers that give several"),
])
def test_states_that_do_not_fit_are_reported(body, code, words):
    text = "model S {\n  input x: [5, 3]\n  " + body + "\n}\n"
    errors = [d for d in check_text(text, "s.nn") if d.severity == "error"]
    assert [e.code for e in errors] == [code], errors
    assert words in errors[0].message
