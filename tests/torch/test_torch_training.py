"""Training through the generated PyTorch module (`nnspec train --backend torch`).

From the same seeded weights on the same batches, the torch backend and the NumPy
interpreter give the same loss at every step; the torch backend shares the loop's run
directory, exact resume and outputs, and its weights work in the NumPy `eval`/`predict`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.numpy.schedules import clip_grad_norm
from nnspec.cli import main
from nnspec.spec import load, load_text
from nnspec.training import loop, rundir
from nnspec.training.progress import PlainProgress
from nnspec.training.rundir import RunDir

torch = pytest.importorskip("torch")
from nnspec.backends.torch.runtime import TorchModel

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads, and torch's spinning workers starve the NumPy
    side (and other processes) on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

ROOT = Path(__file__).resolve().parents[2]

# Dropout off (none in these specs), so both backends see the same function.
MLP = """
model MLP {
  input x: [12]
  x -> dense(32) -> relu -> dense(32) -> tanh -> dense(4) -> softmax
}
train MLP { loss cross_entropy; optimizer adam(lr = 1e-2); batch 16 }
"""
CNN = """
model CNN {
  input image: [1, 8, 8]
  image -> conv2d(4, 3, padding = "same") -> batchnorm -> relu -> maxpool(2)
        -> conv2d(8, 3) -> relu -> flatten -> dense(5)
}
train CNN {
  loss cross_entropy(label_smoothing = 0.1)
  optimizer sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 1e-4)
  batch 16
}
"""
LSTM = """
model Recurrent {
  input seq: [10, 6]
  seq -> lstm(16, layers = 2) -> lstm(8, last = true) -> dense(3)
}
train Recurrent { loss cross_entropy; optimizer adamw(lr = 1e-2); batch 16; clip 0.5 }
"""
TRANSFORMER = """
block Layer(d, heads) {
  input x: [T, d]
  x = x + (x -> layernorm -> attention(heads, causal = true))
  x + (x -> layernorm -> dense(2 * d) -> gelu -> dense(d))
}
model GPT {
  input tokens: int[12]
  h = (tokens -> embedding(20, 16) as wte) + (tokens -> positions(12, 16))
  h -> repeat(2, Layer(16, 2)) -> layernorm -> dense(20, bias = false, tie = wte)
}
train GPT { loss cross_entropy; optimizer adam(lr = 3e-3); batch 16 }
"""


def _batches(spec, steps: int, seed: int = 0, pool: int = 64):
    """`steps` batches drawn from a fixed pool of random samples with random targets that
    fit the spec's model and loss: a set the model can learn by heart."""
    rng = np.random.default_rng(seed)
    graph, batch = spec.graph, spec.train.batch
    t = graph.node(graph.inputs[0]).type
    out = graph.output_type
    if t.dtype == "int64":
        x = rng.integers(0, 20, (pool, *t.shape))
    else:
        x = rng.standard_normal((pool, *t.shape)).astype(np.float32)
    y = rng.integers(0, out.shape[-1], (pool, *out.shape[:-1]))
    for _ in range(steps):
        pick = rng.choice(pool, batch, replace=False)
        yield x[pick], y[pick]


@pytest.mark.parametrize("text", [MLP, CNN, LSTM, TRANSFORMER],
                         ids=["mlp", "cnn", "lstm", "transformer"])
def test_fifty_steps_give_the_interpreters_loss_curve(text):
    spec = load_text(text, "curve.nn")
    train = spec.train
    reference = NumpyModel.from_spec(spec, seed=0)
    twin = TorchModel.from_numpy(spec, train, reference)
    optimizers = [loop.build_optimizer(train.optimizer, m) for m in (reference, twin)]
    curves: list[list[float]] = [[], []]
    for x, y in _batches(spec, 50):
        for model, optimizer, curve in zip((reference, twin), optimizers, curves):
            curve.append(model.loss(x, y))
            model.backward()
            if train.clip:
                if model is reference:
                    clip_grad_norm(model.buffer, train.clip)
                else:
                    model.clip_grad_norm(train.clip)
            optimizer.step()
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-3)
    assert curves[0][-1] < curves[0][0]  # the runs learned something, not just agreed


# ---- the loop on the torch backend ---------------------------------------------------------

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
  clip      1.0
}
"""


class _Quiet(PlainProgress):
    """Collects lines; sends the run SIGINT after `interrupt_at` steps."""

    def __init__(self, interrupt_at: int | None = None):
        super().__init__(io.StringIO())
        self.interrupt_at, self.steps = interrupt_at, 0

    def step(self, loss: float) -> None:
        self.steps += 1
        if self.steps == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)


def _start(folder: Path, out: Path, progress=None, **overrides):
    path = folder / "tiny.nn"
    if not path.exists():
        path.write_text(TINY)
    spec = load(path)
    train = loop.apply_overrides(spec.train, **overrides)
    trainer, _ = loop.start(spec, str(path), train, out=out, default_out=out, force=False,
                            model_overrides={}, data_from_cli=False, val=None,
                            progress=progress or _Quiet(), checkpoint_every=0.0,
                            backend="torch")
    return trainer


def _weights(path: Path) -> dict[str, np.ndarray]:
    return rundir.read_safetensors(path)[0]


def _history(outcome) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in outcome.history]


def test_interrupt_then_resume_on_torch_is_bit_identical(tmp_path):
    whole = _start(tmp_path, tmp_path / "whole").run_to_end()
    stopped = _start(tmp_path, tmp_path / "cut", _Quiet(interrupt_at=20)).run_to_end()
    assert stopped.status == "interrupted"
    resumed = loop.resume(RunDir(tmp_path / "cut"), None, _Quiet())
    assert resumed.at.step == 20
    outcome = resumed.run_to_end()
    assert _history(outcome) == _history(whole)
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _weights(tmp_path / "whole" / name), _weights(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["backend"] == "torch"
    optimizer_state = RunDir(tmp_path / "cut").read_checkpoint()[1]
    assert "dense_1.weight.exp_avg" in optimizer_state


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    runs = {name: _history(_start(tmp_path, tmp_path / name, seed=seed).run_to_end())
            for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    assert runs["a"] == runs["b"] != runs["c"]


def _nnspec(*args: str, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_cli_trains_the_digits_mlp_on_torch_and_numpy_evaluates_it(tmp_path):
    run = tmp_path / "run"
    done = _nnspec("train", str(ROOT / "specs" / "digits_mlp.nn"), "--backend", "torch",
                   "--out", str(run), cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert "on PyTorch" in done.output
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and float(rows[-1]["val_accuracy"]) >= 0.97
    best = min(rows, key=lambda r: float(r["val_loss"]))
    scored = _nnspec("eval", str(ROOT / "specs" / "digits_mlp.nn"), "--weights", str(run),
                     "--format", "json", cwd=tmp_path)
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.output)
    assert report["accuracy"] == pytest.approx(float(best["val_accuracy"]), abs=1e-6)
    assert report["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-4)
    resumed = _nnspec("train", "--resume", str(run), "--backend", "torch", cwd=tmp_path)
    assert resumed.exit_code == 2 and "--backend" in resumed.output


def test_the_torch_model_starts_from_the_interpreters_weights():
    spec = load(ROOT / "specs" / "digits_cnn.nn")
    reference = NumpyModel.from_spec(spec, seed=5)
    twin = TorchModel.from_numpy(spec, spec.train, reference)
    mine, theirs = twin.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(twin(x), reference(x), rtol=1e-4, atol=1e-6)
