"""Several named outputs end to end (without torch): the IR's output names, losses over
outputs, inputs and targets by name, the softmax-fusion rewrite, the noise op, data read
by name, and the CLI's summary, predict and train on them."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnspec.backends.numpy.model import InputError, NumpyModel
from nnspec.diagnostics import SpecError
from nnspec.ir.rewrite import unread_nodes
from nnspec.spec import check_text, load, load_text
from nnspec.summary import render_table, summarize

ROOT = Path(__file__).resolve().parents[1]
VAE = ROOT / "specs" / "vae.nn"

TWO_HEADS = """
model TwoHeads(width = 16) {
  input image: [8]
  input meta: [2]
  h = concat(image, meta) -> dense(width) -> relu
  kind = h -> dense(3)
  size = h -> dense(1)
  kind, size
}

train TwoHeads {
  data      npz("heads.npz")
  loss      cross_entropy(kind, label) + 0.5 * mse(size, value)
  optimizer adam(lr = 1e-2)
  epochs    6
  batch     32
}
"""


def _heads_data(folder: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((n, 8)).astype(np.float32)
    meta = rng.standard_normal((n, 2)).astype(np.float32)
    label = (image[:, 0] > 0).astype(np.int64) + (meta[:, 0] > 1).astype(np.int64)
    value = (image[:, 1] + meta[:, 1]).astype(np.float32)
    path = folder / "heads.npz"
    np.savez(path, image=image, meta=meta, label=label, value=value)
    return path


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def _val_losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(row["val_loss"]) for row in csv.DictReader(f)]


# ---- the IR ---------------------------------------------------------------------------------


def test_outputs_are_named_by_their_variables():
    graph = load(VAE).graph
    assert graph.output_names == ["recon", "mu", "logvar"]
    shapes = {name: graph.node(node).type.shape for name, node in graph.named_outputs.items()}
    assert shapes == {"recon": (64,), "mu": (8,), "logvar": (8,)}


def test_an_expression_or_a_taken_name_gets_a_made_up_name():
    graph = load_text("""
model M {
  input x: [4]
  h = x -> dense(3)
  x -> dense(2), h, h, x
}
""").graph
    assert graph.output_names == ["output", "h", "output_1", "output_2"]
    assert graph.outputs[1] == graph.outputs[2]


def test_summary_lists_the_outputs_by_name():
    summary = summarize(load(VAE).graph)
    assert summary.outputs == ["recon [64]", "mu [8]", "logvar [8]"]
    assert "Outputs:" in render_table(summary)
    single = summarize(load(ROOT / "specs" / "digits_mlp.nn").graph)
    assert single.outputs == ["output [10]"]
    assert "Outputs:" not in render_table(single)


# ---- losses over outputs, inputs and targets --------------------------------------------------


def test_the_loss_binds_outputs_inputs_and_targets_by_name():
    vae = load(VAE).train
    assert [(b.source, b.name) for b in vae.bindings] == [
        ("output", "recon"), ("input", "x"), ("output", "mu"), ("output", "logvar")]
    assert vae.targets == {}
    heads = load_text(TWO_HEADS).train
    assert {n: (t.shape, t.dtype) for n, t in heads.targets.items()} == {
        "label": ((), "int64"), "value": ((1,), "float32")}


def _codes(text: str) -> list[tuple[str, int, int]]:
    return [(d.code, d.span.line, d.span.col) for d in check_text(text)
            if d.severity == "error" and d.span is not None]


def test_a_loss_of_the_output_needs_a_name_when_there_are_several():
    text = TWO_HEADS.replace("cross_entropy(kind, label) + 0.5 * mse(size, value)",
                             "cross_entropy")
    assert _codes(text) == [("E220", 13, 13)]


def test_a_target_needs_a_named_prediction_before_it():
    text = TWO_HEADS.replace("cross_entropy(kind, label)", "cross_entropy(2 * kind, label)")
    assert _codes(text) == [("E221", 13, 37)]  # at `label`


def test_softmax_fusion_is_one_rewrite_exposing_logits():
    spec = load(ROOT / "specs" / "digits_mlp.nn")
    train = spec.train
    assert train.fused_softmax
    assert dict(train.outputs)["logits"] == spec.graph.node(spec.graph.outputs[0]).inputs[0]
    assert [b.name for b in train.bindings if b.source == "output"] == ["logits"]
    assert unread_nodes(spec.graph, train) == {spec.graph.outputs[0]}
    assert spec.graph.output_names == ["output"]  # predictions still give probabilities


def test_no_fusion_when_the_softmax_is_one_of_several_outputs():
    train = load_text(TWO_HEADS.replace("kind = h -> dense(3)",
                                        "kind = h -> dense(3) -> softmax")).train
    assert not train.fused_softmax
    assert [b.name for b in train.bindings if b.source == "output"] == ["kind", "size"]


# ---- the interpreter --------------------------------------------------------------------------


def test_forward_and_backward_take_one_array_per_output():
    model = NumpyModel.from_spec(load(VAE), seed=0)
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    recon, mu, logvar = model.forward(x, record=True)
    assert (recon.shape, mu.shape, logvar.shape) == ((5, 64), (5, 8), (5, 8))
    d_mu = np.ones_like(mu)
    by_position = {k: v.copy() for k, v in model.backward((None, d_mu, None)).items()}
    model.forward(x, record=True)
    by_name = model.backward({"mu": d_mu})
    assert by_position.keys() == by_name.keys()
    for name, grad in by_name.items():
        np.testing.assert_array_equal(grad, by_position[name], err_msg=name)
    # only the encoder's mean layer and the layer under it feed `mu`
    assert not by_name["dense_3.weight"].any() and not by_name["dense_5.weight"].any()
    assert by_name["dense_2.weight"].any() and by_name["dense_1.weight"].any()
    assert set(model.outputs(x)) == {"recon", "mu", "logvar"}


def test_the_loss_takes_several_targets_by_name():
    spec = load_text(TWO_HEADS)
    model = NumpyModel.from_spec(spec, seed=0)
    x = {"image": np.zeros((4, 8), np.float32), "meta": np.zeros((4, 2), np.float32)}
    targets = {"label": np.array([0, 1, 2, 1]), "value": np.zeros((4, 1), np.float32)}
    loss = model.loss(x, targets)
    assert np.isfinite(loss)
    with pytest.raises(InputError, match="pass them by name"):
        model.loss(x, targets["label"])
    with pytest.raises(InputError, match="unknown target `labels`"):
        model.loss(x, {"labels": targets["label"], "value": targets["value"]})
    with pytest.raises(InputError, match="label 3 is out of range"):
        model.loss(x, {**targets, "label": np.array([0, 1, 2, 3])})


def test_a_fused_model_trains_on_logits_without_computing_its_softmax():
    spec = load(ROOT / "specs" / "digits_mlp.nn")
    model = NumpyModel.from_spec(spec, seed=0)
    x = np.random.default_rng(1).random((6, 64)).astype(np.float32)
    y = np.arange(6) % 10
    loss = model.loss(x, y, train=False)
    logits = model.activations(x)[spec.train.output_node("logits")]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_probs[np.arange(6), y].mean(), rel=1e-5)
    assert spec.graph.outputs[0] not in {step.node for step in model._tape}


# ---- noise ---------------------------------------------------------------------------------------

NOISY = """
model Noisy {
  input x: [1000]
  x + noise(x)
}
"""


def test_noise_is_standard_normal_in_training_and_its_mean_at_eval():
    model = NumpyModel(load_text(NOISY).graph, seed=0)
    x = np.full((20, 1000), 3.0, np.float32)
    sample = model.forward(x, train=True) - 3.0
    assert abs(sample.mean()) < 0.02 and abs(sample.std() - 1.0) < 0.02
    np.testing.assert_array_equal(model.forward(x), x)  # eval: zeros added


def test_noise_draws_from_the_runs_seeded_generator():
    graph = load_text(NOISY).graph
    x = np.zeros((2, 1000), np.float32)
    first, again, other = (NumpyModel(graph, seed=s) for s in (5, 5, 6))
    a = first.forward(x, train=True)
    np.testing.assert_array_equal(a, again.forward(x, train=True))
    assert not np.array_equal(a, other.forward(x, train=True))
    assert not np.array_equal(a, first.forward(x, train=True))  # the generator moves on


# ---- through the command line ---------------------------------------------------------------


def test_the_vae_trains_on_digits_and_its_loss_goes_down(tmp_path):
    done = _cli("train", VAE, "--epochs", "4", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    losses = _val_losses(tmp_path / "run")
    assert len(losses) == 4 and losses[-1] < losses[0] - 5, losses


def test_predict_writes_one_file_per_output(tmp_path):
    done = _cli("train", VAE, "--epochs", "1", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    x = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = _cli("predict", VAE, "-w", "run", "-i", "x.npy", "-o", "pred.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shapes = {p.name: np.load(p).shape for p in tmp_path.glob("pred.*.npy")}
    assert shapes == {"pred.recon.npy": (3, 64), "pred.mu.npy": (3, 8),
                      "pred.logvar.npy": (3, 8)}
    printed = _cli("predict", VAE, "-w", "run", "-i", "x.npy", cwd=tmp_path).stdout
    assert [line for line in printed.splitlines() if line.startswith("#")] == [
        "# recon", "# mu", "# logvar"]


def test_two_heads_train_on_an_npz_read_by_name(tmp_path):
    (tmp_path / "heads.nn").write_text(TWO_HEADS)
    _heads_data(tmp_path)
    done = _cli("train", "heads.nn", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    losses = _val_losses(tmp_path / "run")
    assert losses[-1] < 0.5 * losses[0], losses
    done = _cli("predict", "heads.nn", "-w", "run", "-i", "heads.npz", "-o", "p.npy",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "p.kind.npy").shape == (400, 3)
    assert np.load(tmp_path / "p.size.npy").shape == (400, 1)


def test_an_npz_missing_a_named_array_is_reported(tmp_path):
    (tmp_path / "heads.nn").write_text(TWO_HEADS)
    path = _heads_data(tmp_path)
    arrays = dict(np.load(path))
    del arrays["value"]
    np.savez(path, **arrays)
    done = _cli("train", "heads.nn", "--out", "run", cwd=tmp_path)
    assert done.returncode == 1
    assert "E216" in done.stderr and "no array named `value`" in done.stderr


def test_metrics_need_a_target(tmp_path):
    text = VAE.read_text().replace("  seed      0", "  metrics   mse")
    spec = load_text(text, str(tmp_path / "vae.nn"))
    with pytest.raises(SpecError) as error:
        from nnspec.training import loop

        loop.prepare(spec, spec.train, val=None, base_dir=tmp_path)
    assert error.value.diagnostics[0].code == "E219"


def test_a_fn_or_a_pipe_over_the_outputs_gives_the_same_loss():
    text = VAE.read_text()
    as_fn = text.replace("fn kl_normal", "fn vae_loss(recon, x, mu, logvar) {\n"
                         "  64 * binary_cross_entropy(recon, x) + kl_normal(mu, logvar)\n}\n\n"
                         "fn kl_normal").replace(
        "loss      64 * binary_cross_entropy(recon, x) + kl_normal(mu, logvar)",
        "loss      vae_loss(recon, x, mu, logvar)")
    as_pipe = text.replace("64 * binary_cross_entropy(recon, x)",
                           "64 * (recon -> binary_cross_entropy(x))")
    x = np.random.default_rng(0).random((4, 64)).astype(np.float32)
    losses = [NumpyModel.from_spec(load_text(t), seed=0).loss(x, train=False)
              for t in (text, as_fn, as_pipe)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) == pytest.approx(losses[2], rel=1e-6)
