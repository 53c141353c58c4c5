"""Attention as a spec writes it — cross-attention, masks as tensor keywords, grouped-query
heads, rotary embeddings — through both backends: the generated module with the
interpreter's weights gives the interpreter's outputs and the gradients of every input
(float masks included) and parameter."""

from __future__ import annotations

import types

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.torch import generate
from nnspec.spec import load_text

X = ("x", "[6, 8]")
MEMORY = ("m", "[5, 8]")
NARROW_MEMORY = ("m", "[5, 6]")
PADDING = ("p", "[5]")
MASK = ("q", "[6, 5]")
# from 24 keys the forward is attention_tiles' job, keeping the probabilities up to 96 keys
# and not past them
MIDDLE = ("x", "[40, 8]")
LONG = ("x", "[120, 8]")

CASES = {
    "cross_packed": ([X, MEMORY], "x -> attention(m, 2)"),
    "cross_call_form": ([X, MEMORY], "attention(x, m, 2, bias = false)"),
    "cross_separate": ([X, NARROW_MEMORY], "x -> attention(m, 2)"),
    "bool_padding": ([X, MEMORY, PADDING],
                     "pad = p > 0.8\n  x -> attention(m, 2, key_padding_mask = pad)"),
    "float_masks": ([X, MEMORY, PADDING, MASK],
                    "x -> attention(m, 2, key_padding_mask = p, attn_mask = q)"),
    "bool_mask_per_sample": ([X, MEMORY, MASK],
                             "hide = q > 1.0\n  x -> attention(m, 2, attn_mask = hide)"),
    "causal_and_mask": ([X, ("q", "[6, 6]")], "x -> attention(2, causal = true, attn_mask = q)"),
    "grouped_causal": ([X], "x -> attention(4, kv_heads = 2, causal = true, dropout = 0.1)"),
    "multi_query_rope": ([X], "x -> attention(4, kv_heads = 1, rope = true, bias = false)"),
    "grouped_cross_masks": ([X, NARROW_MEMORY, PADDING, MASK],
                            "x -> attention(m, 4, kv_heads = 2, key_padding_mask = p, attn_mask = q)"),
    "rope_causal_mask": ([X, ("q", "[6, 6]")],
                         "x -> attention(2, rope = true, causal = true, attn_mask = q)"),
    "long_grouped_causal_rope": ([LONG],
                                 "x -> attention(4, kv_heads = 2, causal = true, rope = true)"),
    "long_cross": ([LONG, ("m", "[110, 8]")], "x -> attention(m, 2)"),
    "middle_grouped_causal": ([MIDDLE], "x -> attention(4, kv_heads = 2, causal = true)"),
    "middle_cross": ([MIDDLE, ("m", "[30, 8]")], "x -> attention(m, 2)"),
}


def spec_of(inputs, body):
    declared = "".join(f"  input {name}: {shape}\n" for name, shape in inputs)
    return load_text(f"model Op {{\n{declared}  {body}\n}}\n", "op.nn")


@pytest.mark.torch
@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_agrees_between_the_backends(case):
    torch = pytest.importorskip("torch")
    spec = spec_of(*CASES[case])
    graph = spec.graph
    reference = NumpyModel(graph, seed=0)
    module = types.ModuleType("generated")
    exec(compile(generate(spec), "<generated>", "exec"), module.__dict__)  # noqa: S102
    model = getattr(module, graph.name)()
    model.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in reference.state_dict().items()})
    model.eval()
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((2, *graph.node(n).type.shape)).astype(np.float32)
              for n in graph.inputs]
    expected = reference.forward(tuple(arrays) if len(arrays) > 1 else arrays[0], record=True)
    d_out = rng.standard_normal(expected.shape).astype(np.float32)
    grads = reference.backward(d_out)
    inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = model(*inputs)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    (out * torch.from_numpy(d_out)).sum().backward()
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    for name, grad in grads.items():
        np.testing.assert_allclose(params[name].grad.numpy(), grad, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    for name, tensor in zip(graph.inputs, inputs):
        want = reference.input_grads.get(name, np.zeros(tensor.shape, np.float32))
        got = np.zeros(tensor.shape, np.float32) if tensor.grad is None else tensor.grad.numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"input {name}")


def test_masks_are_inputs_of_the_attention_node_and_layouts_follow_torch():
    spec = spec_of([X, NARROW_MEMORY, PADDING, MASK],
                   "x -> attention(m, 2, key_padding_mask = p, attn_mask = q) as cross")
    node = spec.graph.node("cross")
    assert node.inputs == ("x", "m", "p", "q")
    assert (node.attrs.key_padding_mask, node.attrs.attn_mask) == (2, 3)
    assert list(node.params) == ["q_proj_weight", "k_proj_weight", "v_proj_weight",
                                 "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    grouped = spec_of([X], "x -> attention(4, kv_heads = 2, bias = false) as attn").graph
    assert {k: p.spec.shape for k, p in grouped.params.items()} == {
        "attn.q_proj.weight": (8, 8), "attn.k_proj.weight": (4, 8),
        "attn.v_proj.weight": (4, 8), "attn.o_proj.weight": (8, 8)}


def test_the_piped_tensor_comes_first():
    """`x -> attention(m, 2)` is `attention(x, m, 2)`: queries from x, keys from m."""
    def attention_node(body):
        return next(n for n in spec_of([X, NARROW_MEMORY], body).graph.nodes
                    if n.op == "attention")

    piped, called = attention_node("x -> attention(m, 2)"), attention_node("attention(x, m, 2)")
    assert piped.inputs == called.inputs == ("x", "m")
    assert piped.type.shape == (6, 8)
