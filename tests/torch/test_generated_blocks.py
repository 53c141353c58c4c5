"""Blocks in the generated code: a block with several outputs is one class whose `forward`
returns a tuple, and the generated module still computes what the interpreter computes."""

from __future__ import annotations

import pytest

from nnspec.backends.torch import generate
from nnspec.spec import load_text
from tests.torch.test_codegen import _compare_with_interpreter

pytestmark = pytest.mark.torch

TWO_LAYERS = """
block Two(d) {
  input x: [d]
  a = x -> dense(d) as left
  b = x -> tanh -> dense(d) as right
  a, b
}

model M(d = 8) {
  input x: [d]
  p, q = x -> Two(d)
  r, s = p -> Two(d)
  p * q + r - s
}
"""

HALVES = """
block Halves(d) {
  input x: [T, d]
  y = x -> dense(2 * d) as proj
  a, b = chunk(y, 2, dim = -1)
  a, b
}

model Gated(d = 8) {
  input x: [4, d]
  p, q = x -> Halves(d)
  p * sigmoid(q)
}
"""


@pytest.mark.parametrize("text", [TWO_LAYERS, HALVES], ids=["two-layers", "chunk"])
def test_a_block_with_several_outputs_returns_a_tuple(text):
    spec = load_text(text, "several.nn")
    code = generate(spec)
    assert code.count("class Two(") + code.count("class Halves(") == 1
    assert "return h, x" in code or "return x, h" in code
    _compare_with_interpreter(spec)
