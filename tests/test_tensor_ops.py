"""Tensor operations written in the language: subscripts, `@`, transpose/permute, split and
chunk, stack, pad, symbolic reshape, `repeat(0, ...)`, learned parameters (`param`), and
layers without inputs used wherever a tensor goes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.model import NumpyModel
from nnspec.diagnostics import SpecError
from nnspec.spec import check_text, load_text


def model(body: str, inputs: str = "input x: [6, 8]", head: str = "") -> str:
    lines = "\n  ".join(body.strip().splitlines())
    return f"{head}\nmodel M(d = 8) {{\n  {inputs}\n  {lines}\n}}\n"


def out_shape(body: str, inputs: str = "input x: [6, 8]", head: str = ""):
    spec = load_text(model(body, inputs, head), "t.nn")
    return list(spec.graph.output_type.shape)


def errors(text: str) -> list[tuple[str, int, int, str]]:
    return [(d.code, d.span.line, d.span.col, d.message + " " + (d.hint or ""))
            for d in check_text(text, "t.nn")]


@pytest.mark.parametrize(("expr", "shape"), [
    ("x[0]", [8]),
    ("x[-1]", [8]),
    ("x[:, 1:3]", [6, 2]),
    ("x[..., :3]", [6, 3]),
    ("x[..., 0]", [6]),
    ("x[1:, ::2]", [5, 4]),
    ("x[-2:]", [2, 8]),
    ("x[0, -1:]", [1]),
    ("x[:]", [6, 8]),
    ("(x -> dense(4))[2:4]", [2, 4]),
])
def test_subscripts_index_and_slice_per_sample_dims(expr, shape):
    assert out_shape(expr) == shape


def test_subscripts_never_index_the_batch():
    [(code, line, col, text)] = errors(model("x[0, 1, 2]"))
    assert (code, line, col) == ("E164", 4, 3)
    assert "2 per-sample dim(s) [6, 8]" in text and "batch dim is implicit" in text
    assert errors(model("x[..., ...]"))[0][0] == "E164"
    assert errors(model("x[8]"))[0][0] == "E301"  # out of range, from the shape rule
    assert errors(model("x[3:3]"))[0][0] == "E304"  # empty
    assert errors(model("x[0.5]"))[0][0] == "E160"


def test_symbolic_dims_slice_by_fixed_offsets():
    assert out_shape("x[1:]", "input x: [T, 8]") == ["T-1", 8]
    assert out_shape("x[:-1, :4]", "input x: [T, 8]") == ["T-1", 4]
    assert out_shape("x[-3:]", "input x: [T, 8]") == [3, 8]
    assert errors(model("x[::2]", "input x: [T, 8]"))[0][0] == "E301"


def test_chunk_and_split_give_several_tensors_like_torch():
    assert out_shape("q, k, v = chunk(x, 3, dim = 0)\nconcat(q, k, v, dim = 1)") == [2, 24]
    assert out_shape("a, b = chunk(x, 2, dim = -1)\na * b") == [6, 4]
    # torch.chunk(7 values, 2) gives 4 + 3; split by size 3 gives 3 + 3 + 1
    assert out_shape("a, b = chunk(x, 2)\nb", "input x: [7]") == [3]
    assert out_shape("a, b, c = split(x, 3)\nc", "input x: [7]") == [1]
    assert out_shape("a, b = split(x, [2, 6], dim = 1)\nb") == [6, 6]
    assert out_shape("chunk(x, 2)[1]") == [3, 8]
    [(code, *_)] = errors(model("a, b = split(x, [2, 5], dim = 1)\nb"))
    assert code == "E164"


def test_matmul_operator_transpose_and_permute():
    assert out_shape("x @ transpose(x, 0, 1)") == [6, 6]
    assert out_shape("transpose(x, -1, -2) @ x") == [8, 8]
    assert out_shape("permute(reshape(x, 2, 3, 8), 2, 0, 1)") == [8, 2, 3]
    assert out_shape("a = x\nb = x\na\n  @ transpose(b, 0, 1) * 2.0") == [6, 6]
    [(code, line, col, text)] = errors(model("x @ x"))
    assert (code, line, col) == ("E305", 4, 3) and "transpose" in text
    assert errors(model("y = 2 @ 3\nx"))[0][0] == "E131"
    assert errors(model("permute(x, 0, 0)"))[0][0] == "E301"


def test_pad_stack_and_symbolic_reshape():
    assert out_shape("pad(x, [1, 2])") == [6, 11]
    assert out_shape("pad(x, [1, 2, 3, 4], value = -1.0)") == [13, 11]
    assert errors(model("pad(x, [1, 1, 1, 1, 1, 1])"))[0][0] == "E302"
    assert out_shape("stack(x, x, x, dim = -1)") == [6, 8, 3]
    shape = out_shape("reshape(x, T, 2, d / 2)", "input x: [T, 8]")
    assert shape == ["T", 2, 4]
    assert out_shape("reshape(x, -1, 4)", "input x: [T, 8]") == ["T*2", 4]
    assert errors(model("reshape(x, T, 3)", "input x: [T, 8]"))[0][0] == "E301"
    assert errors(model("reshape(x, T, -1)", "input x: [T, 8]"))[0][0] == "E301"


def test_repeat_zero_is_the_identity():
    spec = load_text(model("x -> repeat(0, dense(8)) -> dense(2)"), "t.nn")
    assert [n.op for n in spec.graph.nodes] == ["input", "dense"]
    assert errors(model("x -> repeat(-1, dense(8))"))[0][:3] == ("E145", 4, 15)


def test_learned_parameters_are_named_like_the_user_wrote_them():
    text = """
block Scale(d) {
  input x: [T, d]
  param gamma: [d] = ones
  x * gamma
}
model M(d = 8) {
  input x: [6, 8]
  param cls: [1, d] = normal(std = 0.02)
  param pos: [1, 7, d]
  h = concat(cls, x, dim = 0) + pos[0]
  h -> repeat(2, Scale(d)) as blocks
}
"""
    spec = load_text(text, "t.nn")
    params = {n: p.spec for n, p in spec.graph.params.items()}
    assert list(params) == ["cls", "pos", "blocks.0.gamma", "blocks.1.gamma"]
    assert params["pos"].shape == (1, 7, 8) and params["pos"].init == "zeros"
    assert params["cls"].init == "normal" and params["cls"].std == 0.02
    state = NumpyModel(spec.graph, seed=0).state_dict()
    np.testing.assert_array_equal(state["blocks.1.gamma"], np.ones(8, np.float32))
    assert 0.005 < state["cls"].std() < 0.05
    assert spec.graph.output_type.shape == (7, 8)


def test_parameter_mistakes_are_diagnostics():
    assert errors(model("param w: [d] = uniform\nx"))[0][0] == "E161"
    assert errors(model("param w: [d] = zeros(std = 1.0)\nx"))[0][0] == "E161"
    assert errors(model("param w: [0]\nx"))[0][0] == "E130"
    assert errors(model("param w: int[3]\nx"))[0][0] == "E303"
    assert errors(model("param x: [3]\nx"))[0][0] == "E123"
    assert errors("fn f(x) {\n  param w: [3]\n  x * w\n}\n" + model("f(x)"))[0][0] == "E156"


def test_layers_without_inputs_are_tensors_in_any_argument_position():
    body = "cls = positions(1, d)\n"
    assert out_shape(body + "concat(cls, x, dim = 0)") == [7, 8]
    assert out_shape(body + "concat(x, cls, dim = 0)") == [7, 8]
    assert out_shape("concat(positions(1, d), x, positions(2, d), dim = 0)") == [9, 8]
    assert out_shape(body + "stack(cls[0], x[0])") == [2, 8]


def test_as_after_a_layer_that_is_not_applied_says_the_real_fix():
    [(code, _, _, text)] = errors(model("cls = positions(1, d) as class_token\nx"))
    assert code == "E001"
    assert "(x -> layer as name)" in text and "name = layer(...)" in text
    assert "reserved word" not in text


def test_param_is_a_reserved_word():
    with pytest.raises(SpecError) as err:
        load_text(model("x -> dense(4) as param"), "t.nn")
    assert "reserved" in err.value.diagnostics[0].hint


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_subscript_shapes_are_the_shapes_numpy_computes(dims, data):
    """The shape rules of `select` and `slice` against NumPy running the same subscript."""
    items, index = [], []
    for size in dims:
        kind = data.draw(st.sampled_from(["all", "index", "slice"]))
        if kind == "index":
            i = data.draw(st.integers(-size, size - 1))
            items.append(str(i))
            index.append(i)
        elif kind == "slice":
            start = data.draw(st.one_of(st.none(), st.integers(-size, size)))
            stop = data.draw(st.one_of(st.none(), st.integers(-size, size)))
            step = data.draw(st.integers(1, 3))
            if not len(range(size)[start:stop:step]):
                start, stop = None, None
            items.append(f"{'' if start is None else start}:{'' if stop is None else stop}:{step}")
            index.append(slice(start, stop, step))
        else:
            items.append(":")
            index.append(slice(None))
    text = model(f"x[{', '.join(items)}]", f"input x: [{', '.join(map(str, dims))}]")
    spec = load_text(text, "t.nn")
    x = np.random.default_rng(0).standard_normal([2, *dims]).astype(np.float32)
    out = NumpyModel(spec.graph).forward(x)
    expected = x[(slice(None), *index)]
    assert list(spec.graph.output_type.shape) == list(expected.shape[1:])
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=40, deadline=None)
@given(dims=st.lists(st.integers(1, 4), min_size=2, max_size=4), data=st.data())
def test_transpose_permute_and_reshape_shapes_are_what_numpy_computes(dims, data):
    rank = len(dims)
    order = data.draw(st.permutations(range(rank)))
    a, b = data.draw(st.integers(-rank, rank - 1)), data.draw(st.integers(-rank, rank - 1))
    text = model(f"y = permute(transpose(x, {a}, {b}), {', '.join(map(str, order))})\n"
                 f"reshape(y, -1, {dims[0]})", f"input x: [{', '.join(map(str, dims))}]")
    spec = load_text(text, "t.nn")
    x = np.random.default_rng(1).standard_normal([3, *dims]).astype(np.float32)
    expected = np.swapaxes(x, a % rank + 1, b % rank + 1).transpose(0, *(o + 1 for o in order))
    expected = expected.reshape(3, -1, dims[0])
    np.testing.assert_array_equal(NumpyModel(spec.graph).forward(x), expected)
    assert list(spec.graph.output_type.shape) == list(expected.shape[1:])


ATTENTION = """
model HandAttention(d = 8, heads = 2) {
  input x: [T, 8]
  q, k, v = chunk(x -> dense(3 * d, bias = false) as qkv, 3, dim = -1)
  q = permute(reshape(q, T, heads, d / heads), 1, 0, 2)
  k = permute(reshape(k, T, heads, d / heads), 1, 0, 2)
  v = permute(reshape(v, T, heads, d / heads), 1, 0, 2)
  att = softmax(q @ transpose(k, -1, -2) / sqrt(d / heads)) @ v
  reshape(permute(att, 1, 0, 2), T, d)
}
"""


@pytest.mark.torch
def test_attention_written_by_hand_matches_torch_sdpa_in_both_backends():
    torch = pytest.importorskip("torch")
    from tests.torch.test_codegen import _compare_with_interpreter

    spec = load_text(ATTENTION, "attn.nn")
    reference = NumpyModel(spec.graph, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    out = reference.forward(x)
    w = torch.from_numpy(reference.state_dict()["qkv.weight"])
    q, k, v = (torch.from_numpy(x) @ w.T).chunk(3, dim=-1)
    split = [t.reshape(2, 5, 2, 4).transpose(1, 2) for t in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*split)
    np.testing.assert_allclose(out, expected.transpose(1, 2).reshape(2, 5, 8).numpy(),
                               rtol=1e-4, atol=1e-5)
    _compare_with_interpreter(spec)


@pytest.mark.torch
def test_parameters_and_positions_joined_to_a_sequence_run_in_both_backends():
    from tests.torch.test_codegen import _compare_with_interpreter

    text = """
block Scale(d) {
  input x: [T, d]
  param gamma: [d] = normal
  x * gamma
}
model M(d = 8) {
  input x: [6, 8]
  param cls: [1, 1, d] = normal
  param pos: [1, 8, d] = normal
  h = concat(cls[0], positions(1, d), x, dim = 0) + pos[0]
  h = stack(h[0], h[-1], dim = 0) -> repeat(2, Scale(d)) as blocks
  pad(h, [1, 0]) -> repeat(0, dense(3))
}
"""
    spec = load_text(text, "t.nn")
    _compare_with_interpreter(spec)


@pytest.mark.torch
@pytest.mark.parametrize("which", ["vit", "attention"])
def test_onnx_export_of_the_tensor_ops_gives_the_interpreters_outputs(which, tmp_path):
    """Subscripts, chunk, permute, `@`, symbolic reshape and params through torch.onnx and
    onnxruntime, with the batch (and T) left dynamic."""
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pathlib import Path

    from nnspec.backends.torch.export import export_onnx
    from nnspec.spec import load

    if which == "vit":
        root = Path(__file__).resolve().parents[1]
        spec = load(root / "specs" / "vit_b16.nn", overrides={
            "image": 32, "patch": 8, "d": 16, "depth": 2, "heads": 2, "mlp": 32, "classes": 10})
        shapes = [(2, 3, 32, 32), (3, 3, 32, 32)]
    else:
        spec = load_text(ATTENTION, "attn.nn")
        shapes = [(2, 5, 8), (3, 7, 8)]
    reference = NumpyModel(spec.graph, seed=3)
    path = export_onnx(spec, tmp_path / "m.onnx", reference.state_dict())
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        got = session.run(None, {spec.graph.inputs[0]: x})[0]
        np.testing.assert_allclose(got, reference.forward(x), rtol=1e-4, atol=1e-5)
