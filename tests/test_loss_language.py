"""The language around losses and unknown names: a spec's own `fn` may take a built-in
loss's name (and wins there); unknown ops get a suggestion only when it is a real likeness or
a known torch/NumPy name, and always the way to the op list."""


import pytest

from nnspec.ir import ops
from nnspec.ir.suggest import FOREIGN_NAMES
from nnspec.spec import check_text, load_text

MODEL = "model M {\n  input x: [1]\n  x -> dense(1)\n}\n"
OWN_HUBER = """
fn huber(pred, target, delta = 1.0) {
  err = abs(pred - target)
  mean(where(err < delta, 0.5 * err ^ 2, delta * (err - 0.5 * delta)))
}
"""


def _loss_ops(text):
    spec = load_text(text, "m.nn")
    return {node.op for node in spec.train.loss_graph.nodes}


def test_a_spec_s_own_fn_named_like_a_built_in_loss_wins_there():
    train = "train M {\n  loss huber(delta = 0.5)\n}\n"
    assert {"where", "abs"} <= _loss_ops(MODEL + OWN_HUBER + train)
    assert "huber" in _loss_ops(MODEL + train)


def test_only_a_fn_may_take_a_loss_name_and_no_definition_another_op_name():
    for text, name in [(MODEL + "block huber {\n  input x: [1]\n  x\n}\n", "huber"),
                       (MODEL + "fn relu(x) {\n  x\n}\n", "relu")]:
        errors = [d for d in check_text(text, "m.nn") if d.severity == "error"]
        assert [(e.code, e.message) for e in errors] == [
            ("E121", f"`{name}` is the name of a built-in op")]


def _hint(word, body="x -> {}"):
    text = "model M {\n  input x: [4]\n  " + body.format(word) + "\n}\n"
    [error] = [d for d in check_text(text, "m.nn") if d.severity == "error"]
    assert error.code == "E100"
    return error.hint


OP_LIST = "docs/language.md#op-reference"


@pytest.mark.parametrize("word, unlike", [("randn", "rnn"), ("matmul", "mul"), ("pad", "add"),
                                          ("softplus", "softmax")])
def test_a_far_spelling_is_not_suggested_but_the_op_list_is(word, unlike):
    text = "model M {\n  input x: [4]\n  x -> " + word + "\n}\n"
    hints = [d.hint for d in check_text(text, "m.nn") if d.code == "E100"]
    if ops.lookup(word) is None and word not in FOREIGN_NAMES:  # else: an op since the merge
        assert hints == [f"not a name defined here nor an op; every op is in {OP_LIST}"]
    assert not any(f"`{unlike}`" in hint for hint in hints)


def test_a_near_spelling_of_an_op_is_suggested():
    text = "model M {\n  input x: [4]\n  x -> permte(0)\n}\n"
    (hint,) = [d.hint for d in check_text(text, "m.nn") if d.code == "E100"]
    assert hint.startswith("did you mean `permute`?")


def test_a_tie_between_near_spellings_goes_to_the_one_sharing_the_start():
    # `padd` is one edit from both `pad` and `add`: a typo rarely hits the first letter
    assert _hint("padd(1)").startswith("did you mean `pad`?")
    assert _hint("ad").startswith("did you mean `add`?")


def test_every_foreign_name_leads_to_an_op_of_the_catalogue():
    for target in FOREIGN_NAMES.values():
        assert ops.lookup(target.partition("(")[0]) is not None, target


@pytest.mark.parametrize("word, op", [
    ("dropuot", "dropout"), ("rleu", "relu"), ("embeding", "embedding"),
    ("layernrom", "layernorm")])
def test_a_typo_of_an_op_suggests_it_and_the_op_list(word, op):
    assert _hint(word) == f"did you mean `{op}`? Every op is in {OP_LIST}"


@pytest.mark.parametrize("word, op", [
    ("LayerNorm", "layernorm"), ("max_pool2d", "maxpool2d"), ("MSELoss", "mse"),
    ("CrossEntropyLoss", "cross_entropy"), ("BCEWithLogitsLoss",
                                            "binary_cross_entropy(logits = true)"),
    ("cat", "concat"), ("clamp", "clip"), ("MultiheadAttention", "attention")])
def test_torch_and_numpy_names_say_what_the_op_is_called_here(word, op):
    assert _hint(word) == f"`{word}` is `{op}` here; every op is in {OP_LIST}"


def test_a_misspelt_local_name_is_suggested_before_any_op():
    assert _hint("hiden", "hidden = x -> relu\n  {}") == "did you mean `hidden`?"
