"""What a person sees while training: progress lines when piped, rates and estimates, the
TensorBoard log read back by TensorBoard's own reader, and `nnspec.fit` from Python."""

from __future__ import annotations

import csv
import io
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nnspec
from nnspec.training import eta, progress
from nnspec.training.progress import PlainProgress, format_duration, format_rate

TINY = """
model Tiny(hidden = 16) {
  input x: [2]
  x -> dense(hidden) -> relu -> dense(2) -> softmax
}

train Tiny {
  data      moons(n = 240)
  loss      cross_entropy
  optimizer adam(lr = 1e-2)
  epochs    3
  batch     16
  metrics   accuracy, f1
}
"""

# a step takes a good fraction of a second on the interpreter: 2 x 1024^2 MACs per sample
SLOW = """
model Slow(width = 1024) {
  input x: [64]
  x -> dense(width) -> relu -> dense(width) -> relu -> dense(width) -> relu -> dense(10)
}

train Slow {
  data      digits
  loss      cross_entropy
  optimizer sgd(lr = 0.01)
  epochs    500
  batch     256
}
"""


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.nn"
    path.write_text(TINY)
    return path


# ---------------------------------------------------------------- rates and lines


@pytest.mark.parametrize("steps, seconds, text", [
    (4, 10.0, "2.5 s/step"),  # 0.4 steps/s
    (5, 2.0, "2.5 steps/s"),
    (1234, 10.0, "123 steps/s"),
    (1, 30.0, "30.0 s/step"),
    (0, 1.0, "- steps/s"),
])
def test_rates_never_round_a_slow_run_to_zero(steps, seconds, text):
    assert format_rate(steps, seconds) == text


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (45, "45s"), (200, "3m 20s"),
                                           (7500, "2h 05m")])
def test_durations_read_at_a_glance(seconds, text):
    assert format_duration(seconds) == text


def test_plain_progress_writes_a_line_every_n_seconds_and_every_n_steps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress, "time", clock)
    out = io.StringIO()
    plain = PlainProgress(out, log_every_seconds=10.0, log_every=None)
    plain.epoch_started(1, 3, 100)
    for _ in range(30):  # 30 steps of 0.4 s: lines at 10.0 s and 20.0 s (steps 25 and 50)
        clock.now += 0.4
        plain.step(2.0)
    for _ in range(30):
        clock.now += 0.4
        plain.step(1.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 1/3  step 25/100  loss 2.0000  2.5 steps/s  epoch ends in 30s",
        "epoch 1/3  step 50/100  loss 1.6000  2.5 steps/s  epoch ends in 20s"]
    by_steps = PlainProgress(io.StringIO(), log_every_seconds=0, log_every=7)
    by_steps.epoch_started(2, 3, 20)
    for _ in range(20):
        clock.now += 0.01
        by_steps.step(1.0)
    assert [line.split("  ")[1] for line in by_steps.stream.getvalue().splitlines()] == [
        "step 7/20", "step 14/20"]


def test_the_default_interval_is_ten_seconds_when_piped():
    assert progress.make_progress(io.StringIO()).log_every_seconds == 10.0


def test_the_estimate_is_said_once_with_a_torch_note_for_long_numpy_runs(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(eta, "torch_installed", lambda: True)
    estimate = eta.RunEstimate("numpy", 1000, clock=clock.perf_counter)
    said = []
    for _ in range(10):
        clock.now += 0.5
        said += estimate.step()
    assert len(said) == 2 and said[0].startswith("estimated time: about 8m 20s for 1,000 steps")
    assert "2.0 steps/s" in said[0] and "--backend torch" in said[1]
    quick = eta.RunEstimate("numpy", 15, clock=clock.perf_counter)  # 7.5 s: not worth saying
    torch_run = eta.RunEstimate("torch", 1000, clock=clock.perf_counter)
    said = []
    for _ in range(10):
        clock.now += 0.5
        said += quick.step() + torch_run.step()
    assert len(said) == 1 and "--backend" not in said[0]
    monkeypatch.setattr(eta, "torch_installed", lambda: False)
    long_run = eta.RunEstimate("numpy", 10_000, clock=clock.perf_counter)
    said = []
    for _ in range(10):
        clock.now += 0.5
        said += long_run.step()
    assert len(said) == 1


def test_the_first_step_is_not_in_the_estimate():
    """It may take seconds (the interpreter's loops compile on a machine's first run); the
    rate comes from the steps after it."""
    clock = FakeClock()
    estimate = eta.RunEstimate("torch", 1000, clock=clock.perf_counter)
    clock.now += 6.0
    said = estimate.step()
    for _ in range(8):
        clock.now += 0.5
        said += estimate.step()
    assert len(said) == 1 and said[0].startswith("estimated time: about 8m 20s")


def test_torch_installed_does_not_import_torch():
    code = ("import sys; from nnspec.training import eta; eta.torch_installed(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_piped_train_of_a_slow_spec_prints_progress_and_an_estimate_early(tmp_path):
    (tmp_path / "slow.nn").write_text(SLOW)
    process = subprocess.Popen(
        [sys.executable, "-m", "nnspec.cli", "train", "slow.nn", "--out", "run",
         "--log-every-seconds", "0.05"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()

    def read():
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = started + 60
        while time.monotonic() < deadline and not (
                any(" step " in t for _, t in lines)
                and any(t.startswith("estimated time: about ") for _, t in lines)):
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(timeout=10)
    progress_lines = [(at, t) for at, t in lines if " step " in t]
    assert progress_lines, (lines, process.stderr.read())
    at, text = progress_lines[0]
    assert at < 15, lines
    # the first line comes in whichever epoch is running when 0.05 s have passed since the last line
    assert re.match(r"epoch +\d+/500  step \d+/\d+  loss ", text) and "epoch ends in" in text, text
    assert any(t.startswith("estimated time: about ") for _, t in lines), lines
    assert "\x1b" not in "".join(t for _, t in lines)


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_events_hold_what_metrics_csv_holds(tiny, tmp_path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    from click.testing import CliRunner

    from nnspec.cli import main

    result = CliRunner().invoke(main, ["train", str(tiny), "--out", str(tmp_path / "run"),
                                       "--log", "tensorboard"])
    assert result.exit_code == 0, result.output
    events = accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "val/accuracy", "val/f1", "lr", "step/loss",
            "step/grad_norm"} <= tags
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for tag, column in (("loss/val", "val_loss"), ("val/f1", "val_f1"), ("lr", "lr")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [int(r["step"]) for r in rows]
        assert [e.value for e in logged] == pytest.approx([float(r[column]) for r in rows],
                                                          rel=1e-5)  # csv: 6 digits
    norms = [e.value for e in events.Scalars("step/grad_norm")]
    assert 1 <= len(norms) <= int(rows[-1]["step"]) and all(n > 0 for n in norms)


def test_step_points_are_window_means_and_spaced_in_time(tmp_path, monkeypatch):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    from nnspec.training import tensorboard_log

    clock = FakeClock()
    monkeypatch.setattr(tensorboard_log, "time", clock)
    logger = tensorboard_log.TensorBoardLogger(tmp_path, steps_per_epoch=1000)  # window 5
    due = []
    for step in range(1, 21):
        clock.now += 0.1
        due.append(logger.due())
        logger.step(step, float(step), 2.0 * step)
    assert [i + 1 for i, d in enumerate(due) if d] == [5, 10, 15, 20]
    for step in range(21, 51):  # 1 ms apart: the time floor merges windows
        clock.now += 0.001
        logger.step(step, 1.0, None)
    logger.close()
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss][:4] == [5, 10, 15, 20]
    assert [e.value for e in loss][:4] == pytest.approx([3, 8, 13, 18])
    # the norm of the step a point is written at (the trainer computes it only then)
    assert [e.value for e in events.Scalars("step/grad_norm")] == pytest.approx([10, 20, 30, 40])
    assert len(loss) == 4 + 1  # 30 fast steps give one more point, after 20 ms
    assert loss[-1].step in (40, 41) and loss[-1].value == pytest.approx(1.0)


def test_tensorboard_is_resumed_into_the_same_directory(tiny, tmp_path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")

    stop_after_one = [lambda row: True]
    first = nnspec.fit(tiny, out=tmp_path / "run", log="tensorboard", progress=False,
                       callbacks=stop_after_one)
    assert first.status == "stopped" and len(first) == 1
    history = nnspec.fit(tiny, out=tmp_path / "run", resume=True, progress=False)
    assert history.status == "finished" and len(history) == 3
    events = accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/val")] == [row["step"] for row in history]


# ---------------------------------------------------------------- nnspec.fit


def test_fit_returns_the_history_and_writes_the_cli_run_directory(tiny, tmp_path):
    seen = []
    history = nnspec.fit(tiny, epochs=2, out=tmp_path / "run", callbacks=[seen.append],
                         hidden=8, progress=False)
    assert history.status == "finished" and len(history) == 2
    assert seen == list(history) and history.run == tmp_path / "run"
    assert history.column("epoch") == [1, 2]
    assert set(history[0]) == {"epoch", "step", "train_loss", "val_loss", "val_accuracy",
                               "val_f1", "lr", "seconds"}
    assert repr(history).startswith("History(2 epochs, finished")
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"hidden": 8' in config and '"epochs": 2' in config
    from nnspec.training.rundir import read_safetensors

    weights, _ = read_safetensors(tmp_path / "run" / "best.safetensors")
    assert weights["dense_1.weight"].shape == (8, 2)


def test_fit_and_the_cli_give_the_same_run(tiny, tmp_path):
    from click.testing import CliRunner

    from nnspec.cli import main

    history = nnspec.fit(tiny, out=tmp_path / "api", progress=False)
    result = CliRunner().invoke(main, ["train", str(tiny), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "cli" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(history.column("val_loss"),
                                                                 rel=1e-5)  # csv: 6 digits


def test_fit_resumes_a_run_stopped_by_a_callback_and_the_cli_can_too(tiny, tmp_path):
    from click.testing import CliRunner

    from nnspec.cli import main

    stopped = nnspec.fit(tiny, out=tmp_path / "run", progress=False,
                         callbacks=[lambda row: row["epoch"] == 1])
    assert stopped.status == "stopped" and len(stopped) == 1
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    again = nnspec.fit(tiny, out=tmp_path / "run", resume=True, progress=False)
    assert again.status == "done_before" and len(again) == 3
    with pytest.raises(ValueError, match="`epochs` cannot be given"):
        nnspec.fit(tiny, out=tmp_path / "run", resume=True, epochs=5, progress=False)


def test_fit_takes_a_loaded_spec_and_other_data(tiny, tmp_path):
    spec = nnspec.load(tiny)
    history = nnspec.fit(spec, data="moons(n = 120)", epochs=1, out=tmp_path / "run",
                         progress=False)
    assert len(history) == 1
    with pytest.raises(ValueError, match="not loaded from a file"):
        nnspec.fit(nnspec.load_text(TINY), out=tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        nnspec.fit(tiny, backend="jax", progress=False)


def test_load_dataset_and_the_short_repr_are_public():
    data = nnspec.load_dataset("digits")
    assert data.x_train.shape[1:] == (64,) and data.num_classes == 10
    spec = nnspec.load(Path(__file__).parents[1] / "specs" / "digits_mlp.nn")
    layers = sum(node.op != "input" for node in spec.graph.nodes)
    assert repr(spec) == (f"Spec(name='DigitsMLP', 1 input [64], {layers} layers, "
                          f"{spec.summary().total_params:,} params)")
