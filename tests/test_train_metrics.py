"""Metrics against independent oracles (torch, scikit-learn), their train-section syntax, and
early stopping on any recorded column."""

from __future__ import annotations

import numpy as np
import pytest

from nnspec.diagnostics import SpecError
from nnspec.spec import load_text
from nnspec.training.metrics import MetricError, MetricSums, check_metric


@pytest.fixture
def sklearn_metrics():
    """scikit-learn's metrics, the oracle (in the test extra)."""
    return pytest.importorskip("sklearn.metrics")

SECTION = """
model Net {{
  input x: [2]
  x -> dense(8) -> relu -> dense(3)
}}

train Net {{
  data      spirals(n = 150)
  loss      cross_entropy
  epochs    3
{lines}
}}
"""


def section(lines: str):
    return load_text(SECTION.format(lines=lines), "net.nn").train


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, start + size)


@pytest.mark.parametrize("size", [7, 64, 500])
def test_classification_metrics_agree_with_scikit_learn_at_any_batch_size(size, sklearn_metrics):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(300, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 300)
    labels[:40] = scores[:40].argmax(axis=1)  # some right, and class 5 rarely predicted
    scores[:, 5] -= 3.0
    sums = MetricSums(("accuracy", "precision", "recall", "f1", "top3_accuracy"), "argmax")
    for part in batches(300, size):
        sums.update(scores[part], labels[part])
    got = sums.values()
    guess = scores.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, guess))
    for name, oracle in (("precision", sklearn_metrics.precision_score),
                         ("recall", sklearn_metrics.recall_score),
                         ("f1", sklearn_metrics.f1_score)):
        assert got[name] == pytest.approx(oracle(labels, guess, average="macro",
                                                 zero_division=0)), name
    assert got["top3_accuracy"] == pytest.approx(
        sklearn_metrics.top_k_accuracy_score(labels, scores, k=3, labels=range(6)))
    np.testing.assert_array_equal(sums.confusion,
                                  sklearn_metrics.confusion_matrix(labels, guess, labels=range(6)))


def test_binary_precision_recall_over_thresholded_logits(sklearn_metrics):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(200, 1)).astype(np.float32)
    truth = (rng.random((200, 1)) < 0.3).astype(np.float32)
    sums = MetricSums(("precision", "recall", "f1"), "logits")
    sums.update(logits, truth)
    guess = (logits > 0).astype(int).ravel()
    for name, oracle in (("precision", sklearn_metrics.precision_score),
                         ("recall", sklearn_metrics.recall_score),
                         ("f1", sklearn_metrics.f1_score)):
        assert sums.values()[name] == pytest.approx(
            oracle(truth.ravel().astype(int), guess, average="macro", zero_division=0))


@pytest.mark.parametrize("scores", ["logits", "probs", "log_probs"])
def test_perplexity_is_exp_of_torch_cross_entropy_ignoring_padding(scores):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(12, 9, 20)).astype(np.float32) * 3
    labels = rng.integers(0, 20, (12, 9))
    labels[:, -2:] = -100  # padding
    oracle = torch.exp(torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).reshape(-1, 20), torch.from_numpy(labels).reshape(-1),
        ignore_index=-100)).item()
    given = {"logits": logits,
             "probs": torch.softmax(torch.from_numpy(logits), -1).numpy(),
             "log_probs": torch.log_softmax(torch.from_numpy(logits), -1).numpy()}[scores]
    sums = MetricSums(("perplexity", "accuracy"), "argmax", ignore_index=-100, scores=scores)
    for part in batches(12, 5):
        sums.update(given[part], labels[part])
    assert sums.values()["perplexity"] == pytest.approx(oracle, rel=1e-5)
    counted = labels != -100
    accuracy = (logits.argmax(-1) == labels)[counted].mean()
    assert sums.values()["accuracy"] == pytest.approx(accuracy)


def test_metrics_read_well_in_the_train_section():
    train = section("  metrics accuracy, top_k_accuracy(k = 2), perplexity, f1\n"
                    "  early_stop 4, val_f1")
    assert train.metrics == ("accuracy", "top2_accuracy", "perplexity", "f1")
    assert (train.early_stop, train.early_stop_metric, train.early_stop_mode) == (4, "val_f1",
                                                                                   "max")
    assert section("  metrics top_k_accuracy").metrics == ("top5_accuracy",)
    assert section("  metrics top3_accuracy").metrics == ("top3_accuracy",)
    plain = section("  early_stop 3")
    assert (plain.early_stop_metric, plain.early_stop_mode) == ("val_loss", "min")
    spelled = section("  metrics perplexity\n  early_stop 2, perplexity, max")
    assert (spelled.early_stop_metric, spelled.early_stop_mode) == ("val_perplexity", "max")
    assert section("  metrics perplexity\n  early_stop 2, val_perplexity").early_stop_mode == "min"


@pytest.mark.parametrize("lines, code, phrase", [
    ("  metrics accurcy", "E209", "did you mean `accuracy`"),
    ("  metrics top_k_accuracy(k = 0)", "E", "at least 1"),
    ("  early_stop 3, val_accuracy", "E222", "does not record"),
    ("  metrics f1\n  early_stop 3, val_f1, biggest", "E222", "`min`"),
])
def test_wrong_metric_settings_are_located(lines, code, phrase):
    with pytest.raises(SpecError) as error:
        section(lines)
    diagnostic = error.value.diagnostics[0]
    assert diagnostic.code.startswith(code) and phrase in diagnostic.message + (
        diagnostic.hint or ""), diagnostic


def test_metrics_that_cannot_score_the_targets_are_refused():
    with pytest.raises(MetricError, match="top 5 of 3"):
        check_metric("top5_accuracy", "cross_entropy", {}, True, 3)
    with pytest.raises(MetricError, match="class ids"):
        check_metric("mae", "cross_entropy", {}, True, 3)
    with pytest.raises(MetricError, match="class-index"):
        check_metric("perplexity", "binary_cross_entropy", {}, False, 1)
    check_metric("f1", "binary_cross_entropy", {"logits": True}, False, 1)


def test_early_stop_watches_a_score_in_max_mode(tmp_path):
    """With lr 0 nothing changes: watching val_accuracy (max) stops after patience epochs,
    and the summary names the watched column."""
    from nnspec import fit

    path = tmp_path / "net.nn"
    path.write_text(SECTION.format(lines="  optimizer sgd(lr = 0.0)\n  metrics accuracy, f1\n"
                                   "  early_stop 2, val_accuracy").replace("epochs    3",
                                                                           "epochs    9"))
    history = fit(path, out=tmp_path / "run", progress=False)
    assert history.status == "early_stop"
    assert len(history) == 3
    assert "no better val_accuracy for 2 epochs" in history.message
    assert "best val_accuracy" in history.message


def test_early_stop_in_max_mode_keeps_going_while_the_score_rises(tmp_path):
    from nnspec import fit

    path = tmp_path / "net.nn"
    path.write_text(SECTION.format(lines="  optimizer adam(lr = 0.01)\n  metrics accuracy\n"
                                   "  early_stop 1, val_loss, max").replace("epochs    3",
                                                                           "epochs    8"))
    history = fit(path, out=tmp_path / "run", progress=False)
    losses = history.column("val_loss")
    # in max mode a falling loss is no improvement: the run stops at the first fall
    first_fall = next(i for i in range(1, len(losses)) if losses[i] <= max(losses[:i]))
    assert history.status == "early_stop" and len(history) == first_fall + 1


def test_eval_prints_the_new_metrics(tmp_path):
    from click.testing import CliRunner

    from nnspec import fit
    from nnspec.cli import main

    path = tmp_path / "net.nn"
    path.write_text(SECTION.format(lines="  metrics accuracy, top_k_accuracy(k = 2), "
                                   "perplexity, precision, recall, f1"))
    fit(path, out=tmp_path / "run", progress=False)
    result = CliRunner().invoke(main, ["eval", str(path), "-w", str(tmp_path / "run"),
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    scores = json.loads(result.output)
    for name in ("accuracy", "top2_accuracy", "perplexity", "precision", "recall", "f1"):
        assert 0 < scores[name] < (10 if name == "perplexity" else 1.0 + 1e-9), name
    text = CliRunner().invoke(main, ["eval", str(path), "-w", str(tmp_path / "run")]).output
    assert "top2_accuracy" in text and "perplexity" in text


# ---------------------------------------------------------------- metrics of named outputs

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
  epochs    4
  batch     32
{lines}
}
"""


def heads(folder, lines: str):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((300, 8)).astype(np.float32)
    meta = rng.standard_normal((300, 2)).astype(np.float32)
    label = (image[:, 0] > 0).astype(np.int64) + (meta[:, 0] > 1).astype(np.int64)
    value = (image[:, 1] + meta[:, 1]).astype(np.float32)
    np.savez(folder / "heads.npz", image=image, meta=meta, label=label, value=value)
    path = folder / "heads.nn"
    path.write_text(TWO_HEADS.replace("{lines}", lines))
    return path, {"image": image, "meta": meta}, label, value


def test_metrics_name_the_output_they_score(tmp_path, sklearn_metrics):
    import json

    from click.testing import CliRunner

    from nnspec import NumpyModel, fit, load
    from nnspec.cli import main

    path, x, label, value = heads(tmp_path, "  metrics   accuracy(kind), f1(kind), mae(size)\n"
                                            "  early_stop 3, val_kind_accuracy")
    train = load(path).train
    assert train.metrics == ("kind_accuracy", "kind_f1", "size_mae")
    assert train.early_stop_mode == "max"
    history = fit(path, out=tmp_path / "run", progress=False)
    assert {"val_kind_accuracy", "val_kind_f1", "val_size_mae"} <= set(history[-1])
    result = CliRunner().invoke(main, ["eval", str(path), "-w", str(tmp_path / "run"),
                                       "--data", str(tmp_path / "heads.npz"), "--format",
                                       "json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    model = NumpyModel.from_spec(load(path))
    model.load(tmp_path / "run" / "best.safetensors")
    out = model.outputs(x)
    guess = out["kind"].argmax(axis=1)
    assert scores["kind_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(label, guess))
    assert scores["kind_f1"] == pytest.approx(
        sklearn_metrics.f1_score(label, guess, average="macro", zero_division=0))
    assert scores["size_mae"] == pytest.approx(
        sklearn_metrics.mean_absolute_error(value, out["size"][:, 0]), rel=1e-5)


def test_a_metric_of_several_targets_must_name_its_output(tmp_path):
    from nnspec import load
    from nnspec.training import loop

    path, *_ = heads(tmp_path, "  metrics   accuracy")
    spec = load(path)
    with pytest.raises(SpecError) as error:
        loop.prepare(spec, spec.train, val=None, base_dir=tmp_path)
    diagnostic = error.value.diagnostics[0]
    assert diagnostic.code == "E219" and "`accuracy(kind)`" in diagnostic.hint
    with pytest.raises(SpecError) as error:
        heads(tmp_path, "  metrics   accuracy(knd)") and load(path)
    diagnostic = error.value.diagnostics[0]
    assert diagnostic.code == "E209" and "did you mean `kind`" in diagnostic.hint
    path, *_ = heads(tmp_path, "  metrics   mae(kind)")
    spec = load(path)
    with pytest.raises(SpecError) as error:
        loop.prepare(spec, spec.train, val=None, base_dir=tmp_path)
    assert "class ids" in error.value.diagnostics[0].message
