"""AST -> IR: names, parameter shapes and layouts, sharing and tying, symbolic dims, blocks
and repeats, and the speed of building large specs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from nnspec.diagnostics import SpecError
from nnspec.ir import ops
from nnspec.ir.train import DATASETS
from nnspec.spec import check_text, load, load_text

SPECS = Path(__file__).parent.parent / "specs"


def build(text: str, **kwargs):
    return load_text(text, "test.nn", **kwargs).graph


def shapes(graph) -> dict[str, tuple]:
    return {name: p.spec.shape for name, p in graph.params.items()}


# ---- the graph ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.nn")), ids=lambda p: p.stem)
def test_graphs_are_topological_with_spans_and_types(path: Path):
    spec = load(path)
    graph = spec.graph
    graph.verify()
    lines = path.read_text().count("\n") + 1
    for node in graph.nodes:
        assert node.type is not None, node.name
        assert node.span is not None and 1 <= node.span.line <= lines, node.name
        assert node.op == "input" or ops.lookup(node.op) is not None
    names = [n.name for n in graph.nodes]
    assert len(names) == len(set(names))


def test_auto_names_count_per_op_and_labels_win():
    graph = build("""
model M {
  input x: [4]
  x -> dense(8) -> relu -> dense(8) as proj -> dense(2) -> relu
}
""")
    assert [n.name for n in graph.nodes] == ["x", "dense_1", "relu_1", "proj", "dense_2",
                                             "relu_2"]
    assert list(graph.params) == ["dense_1.weight", "dense_1.bias", "proj.weight", "proj.bias",
                                  "dense_2.weight", "dense_2.bias"]


def test_hierarchical_names_follow_blocks_and_repeats():
    graph = load(SPECS / "gpt2_small.nn").graph
    assert "h.11.attn.in_proj_weight" in graph.params
    assert "h.0.c_fc.weight" in graph.params
    assert graph.scopes["h"].kind == "repeat" and graph.scopes["h"].count == 12
    assert graph.scopes["h.3"].kind == "block" and graph.scopes["h.3"].label == "Block"
    assert graph.node("h.3.attn").scope == "h.3"
    resnet = load(SPECS / "resnet18.nn").graph
    assert "layer4.b1.conv2.weight" in resnet.params
    # the conditional shortcut builds only the chosen branch
    assert "layer1.b0.downsample.weight" not in resnet.params
    assert "layer2.b0.downsample.running_var" in resnet.params


def test_unlabelled_block_instances_are_numbered_in_snake_case():
    graph = build("""
block ConvUnit(c) {
  input x: [C, H, W]
  x -> conv2d(c, 3, padding = 1) -> relu
}
model M {
  input x: [3, 8, 8]
  x -> ConvUnit(4) -> ConvUnit(8)
}
""")
    assert list(graph.scopes) == ["conv_unit_1", "conv_unit_2"]
    assert shapes(graph)["conv_unit_2.conv2d_1.weight"] == (8, 4, 3, 3)


def test_parameter_shapes_follow_pytorch():
    graph = build("""
model M {
  input x: [3, 16, 16]
  input s: [10, 6]
  a = x -> conv2d(8, [3, 5], groups = 1) -> batchnorm -> conv2d(16, 3, groups = 4, bias = false)
  b = s -> lstm(5, layers = 2, bidirectional = true) -> gru(7) -> attention(7) -> layernorm
    -> dense(3)
  c = s -> rnn(4, bias = false, last = true)
  a
}
""")
    expected = {
        "conv2d_1.weight": (8, 3, 3, 5), "conv2d_1.bias": (8,),
        "batchnorm_1.weight": (8,), "batchnorm_1.running_mean": (8,),
        "batchnorm_1.num_batches_tracked": (),
        "conv2d_2.weight": (16, 2, 3, 3),
        "lstm_1.weight_ih_l0": (20, 6), "lstm_1.weight_hh_l0": (20, 5),
        "lstm_1.weight_ih_l0_reverse": (20, 6), "lstm_1.weight_ih_l1": (20, 10),
        "lstm_1.bias_hh_l1_reverse": (20,),
        "gru_1.weight_ih_l0": (21, 10), "gru_1.weight_hh_l0": (21, 7),
        "attention_1.in_proj_weight": (21, 7), "attention_1.in_proj_bias": (21,),
        "attention_1.out_proj.weight": (7, 7), "attention_1.out_proj.bias": (7,),
        "layernorm_1.weight": (7,), "dense_1.weight": (3, 7), "dense_1.bias": (3,),
        "rnn_1.weight_ih_l0": (4, 6), "rnn_1.weight_hh_l0": (4, 4),
    }
    got = shapes(graph)
    assert {k: got[k] for k in expected} == expected
    assert "conv2d_2.bias" not in got and "rnn_1.bias_ih_l0" not in got
    assert not graph.params["batchnorm_1.running_var"].spec.trainable


def test_a_named_layer_shares_its_weights():
    graph = build("""
model Siamese {
  input a: [16]
  input b: [16]
  proj = dense(8)
  (a -> proj) - (b -> proj)
}
""")
    assert list(graph.params) == ["proj.weight", "proj.bias"]
    users = [n for n in graph.nodes if n.op == "dense"]
    assert len(users) == 2 and users[0].params == users[1].params


def test_tied_weights_are_stored_once():
    graph = build("""
model Lm(vocab = 50, d = 8) {
  input t: int[12]
  t -> embedding(vocab, d) as wte -> dense(vocab, bias = false, tie = wte) as head
}
""")
    assert list(graph.params) == ["wte.weight"]
    assert graph.node("head").params == {"weight": "wte.weight"}
    assert graph.params["wte.weight"].tied_from == ("head",)
    assert load_text("""
model Lm(vocab = 50, d = 8) {
  input t: int[12]
  t -> embedding(vocab, d) as wte -> dense(vocab, bias = false, tie = wte) as head
}
""").summary().total_params == 400


def test_symbolic_dims_travel_by_name():
    graph = build("""
model Seq {
  input x: [4, T]
  x -> conv1d(8, 3) -> conv1d(8, 3, padding = "same") -> maxpool(2) -> relu
}
""")
    assert [n.type.shape for n in graph.nodes] == [(4, "T"), (8, "T-2"), (8, "T-2"),
                                                   (8, "(T-4)/2+1"), (8, "(T-4)/2+1")]


def test_block_inputs_bind_dims_and_check_parameters():
    graph = build("""
block Head(classes) {
  input x: [C, H, W]
  x -> global_avgpool -> dense(2 * C) -> dense(classes)
}
block Merge(d) {
  input a: [d]
  input b: [d]
  a * b
}
model M {
  input x: [6, 4, 4]
  y = x -> Head(3)
  z = x -> Head(3) -> Merge(y, 3)
  Merge(y, z, 3)
}
""")
    assert shapes(graph)["head_1.dense_1.weight"] == (12, 6)
    assert graph.output_type.shape == (3,)
    with pytest.raises(SpecError) as info:
        build("""
block Fixed(d) {
  input x: [T, d]
  x
}
model M {
  input x: [5, 16]
  x -> Fixed(8)
}
""")
    [d] = info.value.diagnostics
    assert d.code == "E301" and "[T, d] = [5, 8]" in d.message


def test_defaults_use_earlier_parameters_and_division_stays_integer():
    graph = build("""
block Ffn(d, heads, ff = 4 * d) {
  input x: [T, d]
  x -> dense(ff) -> dense(d / heads)
}
model M {
  input x: [3, 8]
  x -> Ffn(8, 2)
}
""")
    assert shapes(graph)["ffn_1.dense_1.weight"] == (32, 8)
    assert shapes(graph)["ffn_1.dense_2.weight"] == (4, 32)


def test_a_fn_is_an_activation_without_weights():
    graph = build("""
fn swish_beta(x, beta = 1.0) {
  x * sigmoid(beta * x)
}
model M {
  input x: [4]
  x -> swish_beta(beta = 2.0) -> dense(2)
}
""")
    assert graph.scopes["swish_beta_1"].kind == "fn"
    scalar = next(n for n in graph.nodes if n.op == "scalar")
    assert scalar.attrs.value == 2.0
    [d] = check_text("fn bad(x) {\n  x -> dense(3)\n}\nmodel M {\n  input x: [4]\n"
                     "  x -> bad\n}\n")
    assert d.code == "E156"


def test_overrides_and_model_choice():
    text = (SPECS / "gpt2_small.nn").read_text()
    small = load_text(text, overrides={"d": 64, "heads": 4, "layers": 2, "vocab": 100,
                                       "ctx": 16})
    assert small.graph.output_type.shape == (16, 100)
    assert small.graph.hyper["layers"] == 2
    with pytest.raises(SpecError) as info:
        load_text(text, overrides={"depth": 3})
    assert info.value.diagnostics[0].code == "E104"
    two = "model A {\n  input x: [2]\n  x\n}\nmodel B {\n  input x: [3]\n  x\n}\n"
    assert load_text(two).name == "B"
    assert load_text(two, model="A").name == "A"
    trained = two + "train A {\n  loss mse\n}\n"
    assert load_text(trained).name == "A"


def test_softmax_before_cross_entropy_is_fused_with_a_note():
    spec = load(SPECS / "digits_mlp.nn")
    assert spec.train.fused_softmax
    [note] = spec.notes
    assert note.code == "N001" and note.severity == "note"


def test_one_mistake_gives_one_error():
    """A failed layer poisons what depends on it instead of cascading."""
    diagnostics = check_text("""
model M {
  input x: [4]
  h = x -> dense(8) -> rleu -> dense(4) -> relu
  y = h + h
  z = concat(y, h) -> dense(2)
  z
}
""")
    assert [d.code for d in diagnostics] == ["E100"]


def test_the_data_set_names_match_the_implementations():
    datasets = pytest.importorskip("nnspec.training.datasets")
    assert set(DATASETS) == set(datasets.DATASETS)


# ---- speed --------------------------------------------------------------------------------


def chain(layers: int) -> str:
    ops_ = ["dense(64)", "relu", "layernorm"]
    stages = "\n".join(f"    -> {ops_[i % 3]}" for i in range(layers))
    return f"model Deep {{\n  input x: [64]\n  x\n{stages}\n}}\n"


def test_a_thousand_layers_check_in_under_half_a_second():
    text = chain(1000)
    check_text(chain(10))  # the parser tables are built once per process
    times = []
    for _ in range(3):
        start = time.perf_counter()
        diagnostics = check_text(text)
        times.append(time.perf_counter() - start)
    assert diagnostics == []
    assert min(times) < 0.5, times
    graph = load_text(text).graph
    assert len(graph.nodes) == 1001
    assert sum(math.prod(p.spec.shape) for p in graph.params.values()) == 334 * (
        64 * 64 + 64) + 333 * 128
