"""Several tensors as one value: a block ending in `a, b`, `a, b = ...`, and its errors."""

import pytest

from nnspec import spec

TWO = """
block Two(d) {
  input x: [d]
  (x -> dense(d) as left), (x -> dense(2 * d) as right)
}
"""


def test_a_block_with_two_outputs_unpacks_into_two_named_tensors():
    graph = spec.load_text(TWO + """
model M {
  input x: [8]
  p, q = x -> Two(8)
  concat(p, q)
}
""").graph
    shapes = {n.name: n.type.shape for n in graph.nodes}
    assert shapes["two_1.left"] == (8,) and shapes["two_1.right"] == (16,)
    assert graph.node(graph.outputs[0]).inputs == ("two_1.left", "two_1.right")


def test_several_tensors_passed_to_a_layer_count_as_its_tensors_in_order():
    graph = spec.load_text(TWO + """
model M {
  input x: [8]
  concat(x -> Two(8))
}
""").graph
    out = graph.node(graph.outputs[0])
    assert out.op == "concat" and out.inputs == ("two_1.left", "two_1.right")
    assert out.type.shape == (24,)


@pytest.mark.parametrize("line, code, message", [
    ("p, q = x -> dense(8)", "E116", "`p, q = ...` needs 2 tensors, but `x -> dense(8)` gives a tensor [8]"),
    ("p, q, r = x -> Two(8)", "E116", "3 names for 2 tensors"),
    ("p, 3 = x -> Two(8)", "E006", "only names can be assigned to"),
    ("y = (x -> Two(8)) + x", "E135", "one tensor is needed here"),
])
def test_unpacking_mistakes_are_located(line, code, message):
    text = TWO + f"model M {{\n  input x: [8]\n  {line}\n  x\n}}\n"
    diagnostics = spec.check_text(text, "m.nn")
    assert [d.code for d in diagnostics] == [code]
    assert message in diagnostics[0].message
    assert diagnostics[0].span.line == 8
