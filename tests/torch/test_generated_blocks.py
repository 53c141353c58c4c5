"""Blocks in the generated code: one class per spec block, whatever its uses build (an
optional layer is None where the spec's condition says so, an optional member of a chain is
appended to its list under the condition, the input is added where the condition says so),
a labelled chain as an nn.Sequential, a block with several outputs as one class whose
`forward` returns a tuple; and the generated module still computes what the interpreter
computes."""

from __future__ import annotations

import pytest

from nnspec.backends.torch import generate
from nnspec.spec import load_text
from tests.torch.test_codegen import _compare_with_interpreter, _module

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


SMALL_RESNET = """
block Basic(channels, stride = 1) {
  input x: [C, H, W]
  y = x -> conv2d(channels, 3, stride = stride, padding = 1, bias = false) as conv1
        -> batchnorm as bn1 -> relu
        -> conv2d(channels, 3, padding = 1, bias = false) as conv2 -> batchnorm as bn2
  shortcut = x if stride == 1 and C == channels
             else (x -> seq(conv2d(channels, 1, stride = stride, bias = false), batchnorm)
                   as downsample)
  relu(y + shortcut)
}

model Small(width = 4) {
  input image: [3, 8, 8]
  image -> conv2d(width, 3, padding = 1) as stem
        -> seq(Basic(width), Basic(width)) as layer1
        -> seq(Basic(2 * width, 2), Basic(2 * width)) as layer2
        -> seq(Basic(3 * width), Basic(3 * width)) as layer3
        -> global_avgpool -> dense(5) as fc
}
"""


def test_uses_with_and_without_an_optional_layer_are_one_class():
    spec = load_text(SMALL_RESNET, "small.nn")
    code = generate(spec)
    assert code.count("class Basic") == 1, code
    assert "if self.downsample is not None:" in code
    assert "self.layer1 = nn.Sequential(" in code
    # the class follows its arguments: a use the spec does not make builds its layers too
    module = _module(code)
    assert module.Basic(6, 6).downsample is None
    assert module.Basic(6, 6, 2).downsample is not None
    assert module.Basic(4, 6).downsample is not None
    model = module.Small()
    names = {n for n, _ in model.named_parameters()}
    assert names == {n for n, p in spec.graph.params.items() if p.spec.trainable}
    assert "layer2.0.downsample.0.weight" in names and "layer3.0.downsample.1.bias" in names
    assert not any(n.startswith(("layer1.0.downsample", "layer2.1.downsample")) for n in names)
    _compare_with_interpreter(spec)


MOBILE = """
block Inverted(out, stride, expand) {
  input x: [C, H, W]
  hidden = C * expand
  y = x -> (seq(conv2d(hidden, 1), conv2d(out, 1)) if expand != 1
            else seq(conv2d(out, 1))) as conv
  x + y if stride == 1 and C == out else y
}

model Mobile {
  input image: [4, 8, 8]
  image -> Inverted(4, 1, 1) -> Inverted(6, 1, 2) -> Inverted(6, 1, 2) -> Inverted(6, 2, 1)
}
"""


def test_a_chain_with_an_optional_first_member_and_a_conditional_residual_is_one_class():
    """As torchvision's InvertedResidual: the members in a list, the optional one appended
    under the spec's condition, and the input added where the other condition holds."""
    spec = load_text(MOBILE, "mobile.nn")
    code = generate(spec)
    assert code.count("class Inverted(") == 1 and "One class per structure" not in code
    assert "    def __init__(self, in_channels, out, stride, expand):" in code
    assert """        hidden = in_channels * expand
        layers = []
        if expand != 1:
            layers.append(nn.Conv2d(in_channels, hidden, 1))
        layers.append(nn.Conv2d(hidden, out, 1))
""" in code, code
    assert "        self.conv = nn.Sequential(*layers)\n" in code
    assert "        self.use_residual = stride == 1 and in_channels == out\n" in code
    assert "return x + h if self.use_residual else h" in code
    _compare_with_interpreter(spec)


def test_a_condition_names_a_parameter_that_every_use_gives_the_same_value():
    """`stride == 1` stays `stride == 1` where every use has stride 1 (no `1 == 1`)."""
    text = MOBILE.replace(" -> Inverted(6, 2, 1)", "")
    code = generate(load_text(text, "mobile.nn"))
    assert "        self.use_residual = stride == 1 and in_channels == out\n" in code, code


INTERIOR = """
block Mid(out, deep) {
  input x: [F]
  x -> (seq(dense(out), relu, dense(2 * out), dense(out)) if deep == 1
        else seq(dense(out), relu, dense(out))) as body
}

model M {
  input x: [6]
  x -> Mid(8, 1) -> Mid(8, 0) -> Mid(4, 1)
}
"""


def test_an_optional_member_inside_a_chain_is_appended_in_its_place():
    spec = load_text(INTERIOR, "interior.nn")
    code = generate(spec)
    assert code.count("class Mid(") == 1, code
    assert """        layers = [nn.Linear(in_features, out), nn.ReLU()]
        if deep == 1:
            layers.append(nn.Linear(out, 2 * out))
        layers.append(nn.Linear(in_features2, out))
        self.body = nn.Sequential(*layers)
""" in code, code
    names = set(_module(code).M().state_dict())
    assert {"mid_1.body.2.weight", "mid_1.body.3.weight", "mid_2.body.2.weight"} <= names
    assert "mid_2.body.3.weight" not in names
    _compare_with_interpreter(spec)


PLAIN_RESIDUAL = """
block Plain(out, stride) {
  input x: [C, H, W]
  y = x -> conv2d(out, 3, stride = stride, padding = 1) -> relu -> conv2d(out, 3, padding = 1)
  y + x if stride == 1 and C == out else y
}

model M {
  input image: [4, 8, 8]
  image -> Plain(4, 1) -> Plain(6, 2) -> Plain(6, 1)
}
"""


def test_a_residual_under_a_condition_after_several_lines_is_one_class():
    """The uses without the residual name their values `x`, those with it `h` (x is still
    needed): read alike all the same."""
    spec = load_text(PLAIN_RESIDUAL, "plain.nn")
    code = generate(spec)
    assert code.count("class Plain(") == 1 and "One class per structure" not in code, code
    assert "        return h + x if self.use_residual else h  # plain.nn:5\n" in code
    _compare_with_interpreter(spec)


TWO_OPTIONAL = """
block Expand(out, expand) {
  input x: [C, H, W]
  y = x -> (seq(conv2d(C * expand, 1), relu6, conv2d(out, 1)) if expand != 1
            else seq(conv2d(out, 1))) as conv
  y + x if C == out else y
}

model M {
  input image: [4, 8, 8]
  image -> Expand(4, 1) -> Expand(6, 2) -> Expand(6, 2)
}
"""


def test_optional_members_under_one_condition_are_added_together():
    spec = load_text(TWO_OPTIONAL, "expand.nn")
    code = generate(spec)
    assert """        layers = []
        if expand != 1:
            layers.extend([nn.Conv2d(in_channels, in_channels * expand, 1), nn.ReLU6()])
        layers.append(nn.Conv2d(in_channels * expand, out, 1))
""" in code, code
    _compare_with_interpreter(spec)


HOLDS_A_BLOCK = """
block Project(out, stride = 1) {
  input x: [C, H, W]
  x -> conv2d(out, 1, stride = stride) as proj
}

block Stage(out, expand, stride) {
  input x: [C, H, W]
  y = x -> (seq(Project(C * expand), conv2d(out, 1, stride = stride)) if expand != 1
            else seq(conv2d(out, 1, stride = stride))) as conv
  s = x if stride == 1 and C == out else (x -> Project(out, stride) as downsample)
  y + s
}

model M {
  input image: [4, 8, 8]
  image -> Stage(4, 1, 1) -> Stage(6, 2, 1) -> Stage(6, 2, 1) -> Stage(8, 1, 2)
}
"""


def test_an_optional_member_or_layer_may_be_a_block():
    """A block instance that some uses do not build (in a chain, or as an optional layer):
    its arguments are unknown there, like the numbers of any layer not built."""
    spec = load_text(HOLDS_A_BLOCK, "stage.nn")
    code = generate(spec)
    assert code.count("class Stage(") == 1 and "One class per structure" not in code, code
    assert """        if expand != 1:
            layers.append(Project(in_channels, in_channels * expand))
""" in code, code
    assert """        if not (stride == 1 and in_channels == out):
            self.downsample = Project(in_channels, out, stride)
""" in code, code
    _compare_with_interpreter(spec)


REORDERED = """
block Odd(out) {
  input x: [F]
  x -> (seq(dense(out), relu) if F > 4 else seq(relu, dense(out))) as body
}

model M {
  input x: [6]
  x -> Odd(4) -> Odd(8)
}
"""


def test_uses_whose_chains_are_not_one_with_optional_members_say_why():
    """The members come in another order: no list with optional members builds both."""
    code = generate(load_text(REORDERED, "odd.nn"))
    assert code.count("One class per structure: `self.body` is built differently") == 2
    assert code.count("class Odd") == 2


@pytest.mark.parametrize("chain, sequential", [
    ("seq(dense(8), relu, dense(8))", True),  # relu is an nn.ReLU() there
    ("seq(dense(8), relu, dropout(0.5), dense(8))", True),  # nn.Dropout(p=0.5)
    # a softmax stays a call (the training rewrite may fuse it into the loss), so the chain
    # is not one call
    ("seq(dense(8), softmax, dense(8))", False),
    ("seq(dense(8), dense(8))", True),
    ("seq(dense(8), dense(8), lstm(5))", False),  # an lstm call unpacks: not one call
])
def test_a_labelled_chain_is_an_nn_sequential_only_when_called_whole(chain, sequential):
    text = f"model M {{\n  input x: [6, 4]\n  x -> {chain} as body -> dense(2)\n}}\n"
    spec = load_text(text, "chain.nn")
    code = generate(spec)
    assert ("self.body = nn.Sequential(" in code) == sequential, code
    assert ("self.body(x)" in code) == sequential
    _compare_with_interpreter(spec)
