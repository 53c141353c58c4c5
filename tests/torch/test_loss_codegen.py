"""Built-in losses with their torch arguments, end to end: the interpreter's training loss
and gradients against the generated `loss_fn` with the same weights; a `reduction = "none"`
loss is a tensor inside a custom loss and an error as a training loss."""

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.torch.codegen import generate
from nnspec.spec import check_text, load_text
from tests.torch.test_codegen import _module

MODELS = {
    "classes": "model M {\n  input x: [6]\n  x -> dense(4)\n}\n",
    "sequence": "model M {\n  input x: [3, 6]\n  x -> dense(4)\n}\n",
    "log_probs": "model M {\n  input x: [3, 6]\n  x -> dense(4) -> log_softmax\n}\n",
    "softmax": "model M {\n  input x: [6]\n  x -> dense(4) -> softmax\n}\n",
}

CASES = {
    "weighted_cross_entropy": ("classes", ("cross_entropy(weight = [1, 2, 0.5, 3], "
                                          "label_smoothing = 0.1)")),
    "cross_entropy_sum_over_a_sequence": ("sequence", ('cross_entropy(reduction = "sum", '
                                                      "weight = [1, 2, 0.5, 3])")),
    "fused_softmax_weighted_cross_entropy": ("softmax", "cross_entropy(weight = [1, 2, 0.5, 3])"),
    "nll": ("log_probs", "nll(weight = [1, 2, 0.5, 3], ignore_index = 2)"),
    "kl_div": ("log_probs", 'kl_div(reduction = "batchmean")'),
    "huber": ("classes", "huber(delta = 0.5)"),
    "smooth_l1": ("classes", 'smooth_l1(beta = 0.3, reduction = "sum")'),
    "bce_pos_weight": ("classes", "binary_cross_entropy(logits = true, pos_weight = [2, 1, 3, 0.5])"),
    "custom_loss_over_unreduced_losses": ("sequence", "weighted"),
}

CUSTOM = """
fn weighted(pred, target) {
  sum(mse(pred, target, reduction = "none") * 0.5) / 3
}
"""


def _target(loss: str, model: NumpyModel, rng, batch: int) -> np.ndarray:
    (binding,) = [b for b in model.train.bindings if b.source == "target"]
    target_type = model.train.loss_graph.node(binding.node).type
    shape = (batch, *target_type.shape)
    if target_type.dtype == "int64":
        return rng.integers(0, 4, shape)
    if loss.startswith("kl_div"):
        return rng.dirichlet(np.ones(shape[-1]), shape[:-1]).astype(np.float32)
    return rng.random(shape).astype(np.float32)


@pytest.mark.torch
@pytest.mark.parametrize("name", CASES)
def test_the_generated_loss_matches_the_interpreters_loss_and_gradients(name):
    torch = pytest.importorskip("torch")
    model_key, loss = CASES[name]
    text = MODELS[model_key] + CUSTOM + f"train M {{\n  loss {loss}\n}}\n"
    spec = load_text(text, f"{name}.nn")
    reference = NumpyModel.from_spec(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, *spec.graph.node("x").type.shape)).astype(np.float32)
    target = _target(loss, reference, rng, 5)
    expected = reference.loss(x, target)
    grads = reference.backward()

    module = _module(generate(spec))
    net = module.M()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in reference.state_dict().items()})
    net.train()
    fused = spec.train.fused_softmax
    pred = net(torch.from_numpy(x), return_logits=True) if fused else net(torch.from_numpy(x))
    value = module.loss_fn(pred, torch.from_numpy(target))
    value.backward()
    np.testing.assert_allclose(value.item(), expected, rtol=1e-5, atol=1e-6)
    for pname, p in net.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads[pname], rtol=1e-4, atol=1e-6,
                                   err_msg=pname)


def test_an_unreduced_loss_is_not_a_training_loss():
    text = MODELS["classes"] + 'train M {\n  loss mse(reduction = "none")\n}\n'
    [error] = [d for d in check_text(text, "m.nn") if d.severity == "error"]
    assert (error.code, error.span.line) == ("E215", 6)
    assert "must reduce to a scalar" in error.message
    assert error.hint == 'leave out `reduction = "none"` (its mean is the default)'


@pytest.mark.parametrize("loss, code, words", [
    ("cross_entropy(weight = [1, 2])", "E305", "`weight` has 2 values but there are 4"),
    ("binary_cross_entropy(pos_weight = [2])", "E161", "needs `logits = true`"),
    ('mse(reduction = "batchmean")', "E161", "must be one of mean, sum, none"),
])
def test_loss_arguments_that_do_not_fit_are_reported(loss, code, words):
    text = MODELS["softmax"] + f"train M {{\n  loss {loss}\n}}\n"
    errors = [d for d in check_text(text, "m.nn") if d.severity == "error"]
    assert [e.code for e in errors] == [code]
    assert words in errors[0].message


NLL_SPEC = """
model M {
  input x: [2]
  x -> dense(8) -> tanh -> dense(2) -> log_softmax
}
train M {
  data    moons
  loss    nll(weight = [1.0, 2.0])
  metrics accuracy
  epochs  2
}
"""


@pytest.mark.torch
def test_nll_trains_on_class_ids_alike_in_both_backends(tmp_path):
    """nll's targets are class ids, as cross_entropy's: the data, the accuracy metric and the
    generated training code all read them so."""
    import csv
    import os
    import subprocess
    import sys

    spec = tmp_path / "nll.nn"
    spec.write_text(NLL_SPEC)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    scores = []
    for backend in ("numpy", "torch"):
        out = tmp_path / backend
        run = subprocess.run([sys.executable, "-m", "nnspec.cli", "train", str(spec), "-o",
                              str(out), "--backend", backend], check=False, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        with open(out / "metrics.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        scores.append((float(last["val_loss"]), float(last["val_accuracy"])))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-4)
    assert scores[0][1] > 0.5  # better than chance on two classes
