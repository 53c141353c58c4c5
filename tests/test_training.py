"""The training loop as a library: determinism, exact resume, stops, metrics, data checks."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest

from nnspec.diagnostics import SpecError
from nnspec.spec import load
from nnspec.training import loop, rundir
from nnspec.training.metrics import MetricSums
from nnspec.training.progress import PlainProgress, RichProgress, make_progress
from nnspec.training.rundir import RunDir, RunDirError

TINY = """
model Tiny(hidden = 16) {
  input x: [2]
  x -> dense(hidden) -> relu -> dropout(0.2) -> dense(2) -> softmax
}

train Tiny {
  data      moons(n = 240)
  loss      cross_entropy
  optimizer adam(lr = 1e-2)
  schedule  cosine(warmup = 1)
  epochs    4
  batch     16
  metrics   accuracy
}
"""


def write_spec(folder: Path, text: str = TINY, name: str = "tiny.nn") -> Path:
    path = folder / name
    path.write_text(text)
    return path


class Quiet(PlainProgress):
    """Collects lines; optionally sends itself SIGINT after `interrupt_at` steps."""

    def __init__(self, interrupt_at: int | None = None):
        super().__init__(io.StringIO())
        self.interrupt_at = interrupt_at
        self.steps = 0

    def step(self, loss: float) -> None:
        self.steps += 1
        if self.steps == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)


def start(spec_path: Path, out: Path, progress=None, every: float = 0.0, **overrides):
    spec = load(spec_path)
    train = loop.apply_overrides(spec.train, **overrides)
    trainer, _ = loop.start(spec, str(spec_path), train, out=out, default_out=out, force=False,
                            model_overrides={}, data_from_cli=False, val=None,
                            progress=progress or Quiet(), checkpoint_every=every)
    return trainer


def weights(path: Path) -> dict[str, np.ndarray]:
    tensors, _ = rundir.read_safetensors(path)
    return tensors


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ---------------------------------------------------------------- determinism and resume


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    spec = write_spec(tmp_path)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = start(spec, tmp_path / name, seed=seed)
        outcome = trainer.run_to_end()
        assert outcome.status == "finished"
        runs[name] = without_seconds(outcome.history)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    assert same_weights(tmp_path / "a" / "last.safetensors", tmp_path / "b" / "last.safetensors")
    assert not same_weights(tmp_path / "a" / "last.safetensors",
                            tmp_path / "c" / "last.safetensors")


@pytest.mark.parametrize("interrupt_at, every", [
    (5, 0.0), (12, 0.0), (31, 0.0), (31, 1e9),  # mid-epoch, end of epoch 1, epoch 3
])
def test_interrupt_then_resume_is_bit_identical(tmp_path, interrupt_at, every):
    spec = write_spec(tmp_path)
    whole = start(spec, tmp_path / "whole").run_to_end()
    stopped = start(spec, tmp_path / "cut", Quiet(interrupt_at), every).run_to_end()
    assert stopped.status == "interrupted"
    assert "--resume" in stopped.message
    resumed = loop.resume(RunDir(tmp_path / "cut"), None, Quiet())
    assert resumed.at.step == interrupt_at
    outcome = resumed.run_to_end()
    assert outcome.status == "finished"
    assert without_seconds(outcome.history) == without_seconds(whole.history)
    for name in ("last.safetensors", "best.safetensors"):
        assert same_weights(tmp_path / "whole" / name, tmp_path / "cut" / name)
    state = rundir.RunDir(tmp_path / "cut").read_checkpoint()
    whole_state = rundir.RunDir(tmp_path / "whole").read_checkpoint()
    for mine, theirs in zip(state[1].values(), whole_state[1].values()):
        assert np.array_equal(mine, theirs)  # optimizer moments too


def test_resuming_a_finished_run_does_nothing(tmp_path):
    spec = write_spec(tmp_path)
    start(spec, tmp_path / "run", epochs=1).run_to_end()
    outcome = loop.resume(RunDir(tmp_path / "run"), None, Quiet()).run_to_end()
    assert outcome.status == "done_before"
    assert "already finished" in outcome.message


@pytest.mark.parametrize("change, expected", [
    ("hidden = 16", "hidden = 24", ),
    ("-> relu ->", "-> gelu ->"),
    ("epochs    4", "epochs    6"),
], ids=["parameter", "layer", "setting"])
def test_resume_with_a_changed_spec_names_the_first_difference(tmp_path, change, expected):
    spec = write_spec(tmp_path)
    start(spec, tmp_path / "run", progress=Quiet(3)).run_to_end()
    spec.write_text(TINY.replace(change, expected))
    with pytest.raises(RunDirError) as err:
        loop.resume(RunDir(tmp_path / "run"), None, Quiet())
    message = err.value.message
    assert "the spec changed" in message
    if change.startswith("hidden"):
        assert "`dense_1.weight` is [16, 2] in the run but [24, 2] in the spec" in message
    elif "relu" in change:
        assert "`relu_1`" in message
    else:
        assert "`epochs` changed from 4 to 6" in message


# ---------------------------------------------------------------- stops


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    spec = write_spec(tmp_path)
    trainer = start(spec, tmp_path / "run", lr=1e30)
    initial = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    outcome = trainer.run_to_end()
    assert outcome.status == "diverged"
    assert "epoch 1, step 2" in outcome.message and "lower learning rate" in outcome.message
    saved = weights(tmp_path / "run" / "last.safetensors")
    assert all(np.array_equal(saved[k], initial[k]) for k in initial)
    assert RunDir(tmp_path / "run").read_checkpoint()[3]["step"] == 0


def test_checkpoints_wait_for_their_interval_but_the_last_epoch_commits(tmp_path):
    spec = write_spec(tmp_path)
    trainer = start(spec, tmp_path / "run", every=1e9)
    commits = []
    trainer.run.write_checkpoint = lambda *args: commits.append(args[3]["epoch"])
    assert trainer.run_to_end().status == "finished"
    assert commits == [4]


def test_early_stop_after_epochs_without_improvement(tmp_path):
    spec = write_spec(tmp_path)
    outcome = start(spec, tmp_path / "run", lr=0.0, early_stop=2, epochs=10).run_to_end()
    assert outcome.status == "early_stop"
    assert len(outcome.history) == 3  # epoch 1 sets the best; 2 and 3 do not beat it
    assert "early stop" in outcome.message


# ---------------------------------------------------------------- metrics


def test_accuracy_counts_positions_and_skips_ignored_labels():
    pred = np.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]], np.float32)  # (1, T=3, C=2)
    target = np.array([[0, 0, -100]])
    sums = MetricSums(["accuracy"], "argmax", ignore_index=-100)
    sums.update(pred, target)
    assert sums.values()["accuracy"] == 0.5


def test_errors_are_averaged_over_elements_across_batches():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 3))
    sums = MetricSums(["mae", "mse"])
    sums.update(pred[:7], target[:7])
    sums.update(pred[7:], target[7:])
    values = sums.values()
    assert values["mae"] == pytest.approx(np.abs(pred - target).mean())
    assert values["mse"] == pytest.approx(((pred - target) ** 2).mean())


# ---------------------------------------------------------------- data checks (E216-E219)


def diagnostic(spec_text: str, tmp_path: Path, **overrides):
    spec = load(write_spec(tmp_path, spec_text))
    train = loop.apply_overrides(spec.train, **overrides)
    with pytest.raises(SpecError) as err:
        loop.prepare(spec, train, val=None, base_dir=tmp_path)
    return err.value.diagnostics[0]


def test_samples_of_the_wrong_shape_point_at_the_data_line(tmp_path):
    d = diagnostic(TINY.replace("moons(n = 240)", "digits"), tmp_path)
    assert d.code == "E217" and d.span.line == 8
    assert "takes samples shaped [2]" in d.message and "[64]" in d.message
    assert d.notes[0].span.line == 3  # the input declaration


def test_a_flat_view_of_images_gets_a_reshape_hint(tmp_path):
    spec = TINY.replace("input x: [2]", "input x: [1, 8, 8]").replace(
        "x -> dense", "x -> flatten -> dense").replace("moons(n = 240)", "digits").replace(
        "dense(2)", "dense(10)")
    d = diagnostic(spec, tmp_path)
    assert d.code == "E217" and "shape = [1, 8, 8]" in d.hint


def test_labels_beyond_the_output_size(tmp_path):
    d = diagnostic(TINY.replace("moons(n = 240)", "spirals(classes = 3)"), tmp_path)
    assert d.code == "E218" and "label 2 is out of range" in d.message
    assert "dense(3)" in d.hint


def test_token_ids_beyond_the_embedding(tmp_path):
    spec = """
model Tok { input t: int[8]
  t -> embedding(5, 4) -> dense(10) }
train Tok { data reverse(length = 8)
  loss cross_entropy }
"""
    d = diagnostic(spec, tmp_path)
    assert d.code == "E217" and "token id 9" in d.message and "at least 10" in d.hint


def test_regression_targets_for_a_classifier(tmp_path):
    d = diagnostic(TINY.replace("moons(n = 240)", "sine").replace("input x: [2]",
                                                                  "input x: [1]"), tmp_path)
    assert d.code == "E218" and "fractional" in d.message


def test_accuracy_on_regression_and_mae_on_classes(tmp_path):
    sine = TINY.replace("moons(n = 240)", "sine").replace("input x: [2]", "input x: [1]") \
        .replace("cross_entropy", "mse").replace("dense(2) -> softmax", "dense(1)")
    d = diagnostic(sine, tmp_path)
    assert d.code == "E219" and "regress" in d.message and d.span.line == 14
    d = diagnostic(TINY.replace("metrics   accuracy", "metrics   mae"), tmp_path)
    assert d.code == "E219" and "class ids" in d.message


def test_a_missing_file_points_at_the_data_line(tmp_path):
    d = diagnostic(TINY.replace("moons(n = 240)", 'csv("nope.csv")'), tmp_path)
    assert d.code == "E216" and "no such file" in d.message and d.span.line == 8


def test_no_data_points_at_the_train_section(tmp_path):
    d = diagnostic(TINY.replace("  data      moons(n = 240)\n", ""), tmp_path)
    assert d.code == "E216" and "names no data" in d.message and d.span.line == 7


def test_user_csv_trains_with_string_labels(tmp_path):
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 2 else 'no'}"
                            for i in range(40)]
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    spec = load(write_spec(tmp_path, TINY.replace("moons(n = 240)",
                                                  'csv("points.csv", target = "label")')))
    dataset, split, _ = loop.prepare(spec, spec.train, val=None, base_dir=tmp_path)
    assert dataset.class_names == ("no", "yes") and split == "20% held out"
    assert len(dataset.x_train) == 32 and dataset.x_train.dtype == np.float32


# ---------------------------------------------------------------- run directories


def test_explicit_out_with_another_run_is_refused_unless_forced(tmp_path):
    spec = write_spec(tmp_path)
    start(spec, tmp_path / "run", epochs=1).run_to_end()
    with pytest.raises(RunDirError, match="already holds a run of this spec"):
        start(spec, tmp_path / "run", epochs=1)
    other = write_spec(tmp_path, TINY.replace("Tiny", "Other"), "other.nn")
    with pytest.raises(RunDirError, match="another model"):
        start(other, tmp_path / "run", epochs=1)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an nnspec run directory"):
        start(spec, tmp_path / "stuff")


def test_a_taken_default_directory_moves_to_a_numbered_one(tmp_path):
    default = tmp_path / "runs" / "tiny"
    first, note = rundir.claim(None, default, "hash", force=False)
    assert first.path == default and note is None
    (default / "config.json").write_text("{}")
    second, note = rundir.claim(None, default, "hash", force=False)
    assert second.path == tmp_path / "runs" / "tiny-2" and "--resume" in note


def test_force_replaces_only_the_run_files(tmp_path):
    spec = write_spec(tmp_path)
    start(spec, tmp_path / "run", epochs=1).run_to_end()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    run, _ = rundir.claim(tmp_path / "run", tmp_path / "run", "other", force=True)
    assert sorted(p.name for p in run.path.iterdir()) == ["notes.txt"]


def test_atomic_writes_leave_no_partial_files(tmp_path):
    rundir.write_atomic(tmp_path / "a.bin", b"one")
    rundir.write_atomic(tmp_path / "a.bin", b"two")
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"two"


def test_config_records_the_resolved_settings(tmp_path):
    spec = write_spec(tmp_path)
    start(spec, tmp_path / "run", epochs=2, batch=8,
          optimizer=loop.parse_setting("optimizer", "sgd(momentum = 0.9)"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    optimizer = config["train"]["optimizer"]
    assert optimizer["name"] == "sgd" and optimizer["momentum"] == 0.9
    assert optimizer["lr"] == 1e-2  # the spec's learning rate carries over
    assert config["train"]["epochs"] == 2 and config["train"]["batch"] == 8
    assert config["data"]["split"] == "20% held out"


def test_override_parsing_errors_are_usage_errors():
    with pytest.raises(loop.OverrideError, match="did you mean `adam`"):
        loop.apply_overrides(load_tiny().train, optimizer=loop.parse_setting("optimizer",
                                                                            "adma"))
    with pytest.raises(loop.OverrideError, match="unknown data set `digts`"):
        loop.parse_setting("data", "digts")
    assert loop.parse_setting("data", "x.npz").args == {"path": "x.npz"}
    assert loop.parse_setting("data", "digits(shape = [1, 8, 8])").args == {"shape": [1, 8, 8]}


def load_tiny():
    from nnspec.spec import load_text

    return load_text(TINY)


# ---------------------------------------------------------------- progress


def test_progress_is_plain_on_pipes_and_rich_on_terminals():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert type(make_progress(io.StringIO())) is PlainProgress
    terminal = Terminal()
    progress = make_progress(terminal)
    assert isinstance(progress, RichProgress)
    progress.epoch_started(1, 2, 10)
    for _ in range(10):
        progress.step(0.5)
    progress.epoch_finished("epoch 1/2  train_loss 0.5000")
    progress.close()
    assert "epoch 1/2  train_loss 0.5000" in terminal.getvalue()
