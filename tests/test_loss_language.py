"""The language around losses and unknown names: a spec's own `fn` may take a built-in
loss's name (and wins there); unknown ops get a suggestion only when it is a real likeness or
a known torch/NumPy name, and always the way to the op list."""


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
