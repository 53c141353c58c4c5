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
    live = set(graph.outputs)  # no layer is built and then dropped on the way to the output
    for node in reversed(graph.nodes):
        if node.name in live:
            live.update(node.inputs)
    assert [n for n in names if n not in live] == []


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
    assert "h.0.mlp.c_fc.weight" in graph.params
    assert graph.scopes["h"].kind == "repeat" and graph.scopes["h"].count == 12
    assert graph.scopes["h.3"].kind == "block" and graph.scopes["h.3"].label == "Block"
    assert graph.node("h.3.attn").scope == "h.3"
    resnet = load(SPECS / "resnet18.nn").graph
    assert "layer4.1.conv2.weight" in resnet.params
    # the conditional shortcut builds only the chosen branch
    assert "layer1.0.downsample.0.weight" not in resnet.params
    assert "layer2.0.downsample.1.running_var" in resnet.params


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


def test_the_graph_records_which_names_the_spec_gave():
    graph = build("""
block Unit(d) {
  input x: [d]
  x -> dense(d) -> relu
}
model M {
  input x: [8]
  f = dense(8)
  h = x -> dense(8) -> relu as relu_2 -> f
  h -> repeat(2, Unit(8)) as blocks -> Unit(8) -> Unit(8) as last -> repeat(2, relu)
}
""")
    named = {n.name: n.named for n in graph.nodes}
    assert named == {
        "x": True, "dense_1": False, "relu_2": True, "f": True,  # `relu_2` is a label here
        "blocks.0.dense_1": False, "blocks.0.relu_1": False,
        "blocks.1.dense_1": False, "blocks.1.relu_1": False,
        "unit_1.dense_1": False, "unit_1.relu_1": False,
        "last.dense_1": False, "last.relu_1": False,
        "repeat_1.0": False, "repeat_1.1": False}
    assert {path: s.named for path, s in graph.scopes.items()} == {
        "blocks": True, "blocks.0": False, "blocks.1": False, "unit_1": False, "last": True,
        "repeat_1": False}


def test_the_loss_is_a_graph_of_its_own_and_leaves_the_model_alone():
    text = """
fn mse_plus(pred, target, w = 0.5) {
  mean((pred - target) ^ 2) + w * mean(abs(pred))
}
model M {
  input x: [4]
  x -> dense(3) as head
}
train M {
  loss mse_plus(w = 0.25)
}
"""
    spec = load_text(text)
    assert [n.name for n in spec.graph.nodes] == ["x", "head"]
    assert list(spec.graph.scopes) == []
    loss = spec.train.loss_graph
    assert loss.name == "M.loss" and loss.inputs == ["pred", "target"]
    assert loss.node("pred").type == spec.graph.output_type
    assert list(loss.scopes) == ["loss.mse_plus_1"] and loss.params == {}
    assert not loss.node("pred").named  # the language's names, not the spec's
    loss.verify()
    assert spec.train.loss.args == {"w": 0.25}


def test_optimizer_hyperparameters_bind_through_the_attribute_schema():
    from nnspec.diagnostics import DiagnosticError
    from nnspec.ir.attrs import bind_attrs

    adam = ops.OPTIMIZERS["adam"].hyper
    bound = bind_attrs("adam", adam, [0.01], {"betas": [0.8, 0.9]}, {}, None)
    assert dict(bound) == {"lr": 0.01, "betas": (0.8, 0.9), "eps": 1e-8, "weight_decay": 0.0,
                           "amsgrad": False}
    with pytest.raises(DiagnosticError) as info:
        bind_attrs("adam", adam, [], {"lr": -1}, {}, None)
    assert info.value.diagnostic.code == "E163"
    [d] = check_text("model M {\n  input x: [2]\n  x\n}\n"
                     "train M {\n  loss mse\n  optimizer adam(lr = 1, betas = 3)\n}\n")
    assert (d.code, d.span.line, d.span.col) == ("E160", 7, 26)
    assert d.message == "`adam`'s `betas` must be a list of numbers, got the number 3"


# ---- recursion and nesting ------------------------------------------------------------------


def _errors(text: str):
    return [(d.code, d.span.line, d.span.col, d.message) for d in check_text(text)
            if d.severity == "error"]


def test_recursion_is_an_error_even_with_a_base_case():
    text = """
block Stack(n) {
  input x: [8]
  x -> dense(8) -> Stack(n - 1) if n > 1 else x
}
model M {
  input x: [8]
  x -> Stack(3)
}
"""
    assert _errors(text) == [("E155", 4, 20, ("block `Stack` calls itself; blocks and fns "
                                              "cannot be recursive"))]


def test_recursion_through_other_definitions_names_the_cycle():
    text = """
fn odd(x) {
  even(x) * 2
}
fn even(x) {
  odd(x)
}
block Unused(d) {
  input x: [d]
  x -> Unused(d)
}
model M {
  input x: [8]
  x -> odd
}
"""
    diagnostics = [d for d in check_text(text) if d.severity == "error"]
    assert [(d.code, d.span.line, d.span.col) for d in diagnostics] == [
        ("E155", 3, 3), ("E155", 10, 8)]
    through = diagnostics[0]
    assert through.message == ("fn `odd` calls itself (`odd` -> `even` -> `odd`); "
                               "blocks and fns cannot be recursive")
    assert [(n.span.line, n.message) for n in through.notes] == [(6, "`even` calls `odd` here")]


def test_local_names_are_not_calls():
    """A parameter, input or variable named like a definition is not a use of it."""
    text = """
block Wrap(Wrap = 2) {
  input x: [4]
  x * Wrap
}
block Outer(d) {
  input Outer: [d]
  Outer -> relu
}
model M {
  input x: [4]
  x -> Wrap -> Outer(4)
}
"""
    assert _errors(text) == []


def nested(levels: int) -> str:
    blocks = [f"block B{i} {{ input x: [4]\n  x -> B{i + 1} }}" for i in range(1, levels)]
    blocks.append(f"block B{levels} {{ input x: [4]\n  x -> relu }}")
    return "\n".join(blocks) + "\nmodel M { input x: [4]\n  x -> B1 }\n"


def test_nesting_is_allowed_to_the_limit_and_reported_truthfully_beyond():
    graph = build(nested(64))
    assert len(graph.scopes) == 64 and graph.nodes[-1].name == ".".join(
        f"b{i}_1" for i in range(1, 65)) + ".relu_1"
    [error] = [d for d in check_text(nested(65)) if d.severity == "error"]
    assert (error.code, error.span.line) == ("E157", 2 * 64)
    assert error.message == "blocks and fns are nested 65 deep here; the limit is 64"


def test_a_layer_handed_to_itself_is_stopped_by_the_nesting_limit():
    text = """
block R(f) {
  input x: [4]
  x -> f(f)
}
model M {
  input x: [4]
  x -> R(R)
}
"""
    assert [code for code, *_ in _errors(text)] == ["E157"]


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


# ---- MACs against torch.utils.flop_counter (FLOPs / 2) -------------------------------------
#
# The catalogue counts the multiply-adds of matrix products and convolutions per sample, as
# torchvision publishes them. FlopCounterMode sees matrix products and convolutions only
# when they run as separate aten ops: it counts 0 for the fused CPU kernels of nn.LSTM/GRU/
# RNN and of scaled_dot_product_attention (nn.MultiheadAttention with need_weights=False).
# So recurrent layers are run here as the explicit per-step products torch's modules compute
# (checked against the modules' outputs), and attention with need_weights=True, whose q @ k^T
# and weights @ v are plain bmm calls. Both conventions then agree exactly.


def catalogue_macs(text: str) -> int:
    from nnspec.summary import node_macs

    graph = build(text)
    [node] = [n for n in graph.nodes if n.op != "input"]
    return node_macs(graph, node)


def torch_macs(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


@pytest.mark.torch
@pytest.mark.parametrize("shape,units", [((16,), 8), ((10, 16), 8), ((3, 5, 7), 4)])
def test_dense_macs_match_torch(shape, units):
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(shape[-1], units)
    x = torch.randn(1, *shape)
    dims = ", ".join(map(str, shape))
    text = f"model M {{\n  input x: [{dims}]\n  x -> dense({units})\n}}\n"
    assert catalogue_macs(text) == torch_macs(lambda: layer(x))


CONVS = [  # (spatial, c_in, size, channels, kernel, stride, padding, dilation, groups)
    (1, 4, 20, 6, 3, 1, 0, 1, 1), (1, 4, 21, 8, 5, 2, 2, 1, 2), (1, 6, 30, 6, 3, 1, 2, 2, 3),
    (2, 3, 12, 8, 3, 1, 1, 1, 1), (2, 4, 13, 8, 3, 2, 0, 1, 4), (2, 6, 16, 4, 5, 1, 4, 2, 2),
    (2, 8, 9, 8, 1, 1, 0, 1, 8),
]


@pytest.mark.torch
@pytest.mark.parametrize("case", CONVS, ids=[str(c) for c in CONVS])
def test_conv_macs_match_torch(case):
    torch = pytest.importorskip("torch")
    spatial, c_in, size, channels, kernel, stride, padding, dilation, groups = case
    conv = (torch.nn.Conv1d if spatial == 1 else torch.nn.Conv2d)(
        c_in, channels, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = torch.randn(1, c_in, *(size,) * spatial)
    dims = ", ".join(map(str, (c_in, *(size,) * spatial)))
    text = (f"model M {{\n  input x: [{dims}]\n  x -> conv{spatial}d({channels}, {kernel}, "
            f"stride = {stride}, padding = {padding}, dilation = {dilation}, "
            f"groups = {groups})\n}}\n")
    assert catalogue_macs(text) == torch_macs(lambda: conv(x))


@pytest.mark.torch
@pytest.mark.parametrize("steps,embed,heads,causal", [(10, 16, 4, False), (7, 24, 3, True),
                                                      (1, 8, 1, False)])
def test_attention_macs_match_torch(steps, embed, heads, causal):
    torch = pytest.importorskip("torch")
    attention = torch.nn.MultiheadAttention(embed, heads, batch_first=True)
    x = torch.randn(1, steps, embed)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(steps) if causal else None
    text = (f"model M {{\n  input x: [{steps}, {embed}]\n  x -> attention({heads}, "
            f"causal = {str(causal).lower()})\n}}\n")
    assert catalogue_macs(text) == torch_macs(
        lambda: attention(x, x, x, attn_mask=mask, need_weights=True))


def _recurrent_by_steps(torch, module, mode: str, x):
    """What nn.RNN/LSTM/GRU compute, as explicit per-step products (batch 1, batch first)."""
    F = torch.nn.functional
    layer_input = x[0]
    directions = ("", "_reverse") if module.bidirectional else ("",)
    for layer in range(module.num_layers):
        outputs = []
        for suffix in directions:
            w_ih, w_hh = (getattr(module, f"weight_{k}_l{layer}{suffix}") for k in ("ih", "hh"))
            b_ih, b_hh = (getattr(module, f"bias_{k}_l{layer}{suffix}") for k in ("ih", "hh"))
            h = torch.zeros(1, module.hidden_size)
            c = torch.zeros(1, module.hidden_size)
            steps = range(layer_input.shape[0])
            seq = [None] * len(steps)
            for t in (reversed(steps) if suffix else steps):
                gi = F.linear(layer_input[t:t + 1], w_ih, b_ih)
                gh = F.linear(h, w_hh, b_hh)
                if mode == "lstm":
                    i, f, g, o = (gi + gh).chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif mode == "gru":
                    ir, iz, in_ = gi.chunk(3, dim=1)
                    hr, hz, hn = gh.chunk(3, dim=1)
                    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                    h = (1 - z) * torch.tanh(in_ + r * hn) + z * h
                else:
                    h = torch.tanh(gi + gh)
                seq[t] = h
            outputs.append(torch.cat(seq, dim=0))
        layer_input = torch.cat(outputs, dim=1)
    return layer_input


RECURRENT = [("rnn", 6, 5, 8, 1, False), ("lstm", 6, 5, 8, 1, False),
             ("gru", 6, 5, 8, 1, False), ("lstm", 4, 3, 5, 2, True), ("gru", 5, 7, 4, 2, True),
             ("rnn", 3, 2, 6, 3, True)]


@pytest.mark.torch
@pytest.mark.parametrize("mode,steps,features,hidden,layers,bidirectional", RECURRENT,
                         ids=[f"{c[0]}-l{c[4]}-bi{int(c[5])}" for c in RECURRENT])
def test_recurrent_macs_match_torch(mode, steps, features, hidden, layers, bidirectional):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode](
        features, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    x = torch.randn(1, steps, features)
    with torch.no_grad():
        expected = module(x)[0][0]
        by_steps = _recurrent_by_steps(torch, module, mode, x)
        assert torch.allclose(by_steps, expected, atol=1e-5)  # really the module's computation
        macs = torch_macs(lambda: _recurrent_by_steps(torch, module, mode, x))
    text = (f"model M {{\n  input x: [{steps}, {features}]\n  x -> {mode}({hidden}, "
            f"layers = {layers}, bidirectional = {str(bidirectional).lower()})\n}}\n")
    assert catalogue_macs(text) == macs


@pytest.mark.torch
@pytest.mark.parametrize("layer,shape", [("maxpool(2)", (3, 8, 8)), ("avgpool(2)", (3, 8, 8)),
                                         ("global_avgpool", (3, 8, 8)), ("batchnorm", (3, 8, 8)),
                                         ("layernorm", (5, 8)), ("relu", (8,))])
def test_ops_without_products_count_zero_as_in_torch(layer, shape):
    torch = pytest.importorskip("torch")
    modules = {"maxpool(2)": torch.nn.MaxPool2d(2), "avgpool(2)": torch.nn.AvgPool2d(2),
               "global_avgpool": torch.nn.AdaptiveAvgPool2d(1),
               "batchnorm": torch.nn.BatchNorm2d(3), "layernorm": torch.nn.LayerNorm(8),
               "relu": torch.nn.ReLU()}
    x = torch.randn(2, *shape)
    dims = ", ".join(map(str, shape))
    assert catalogue_macs(f"model M {{\n  input x: [{dims}]\n  x -> {layer}\n}}\n") == 0
    assert torch_macs(lambda: modules[layer](x)) == 0
