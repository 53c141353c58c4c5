"""`nnspec train --backend torch --device/--precision/--compile`.

On the CPU: bf16 and fp16 autocast (fp16 with its gradient scaler) train close to float32
without being float32, the weights and checkpoints stay float32 NumPy, an interrupted fp16
run resumes bit-identically (the scaler's state included), torch.compile gives eager's
losses. `pytest -m gpu` runs the CUDA paths on a GPU machine (skipped elsewhere).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnspec.backends.numpy.model import NumpyModel
from nnspec.cli import main
from nnspec.spec import load, load_text
from nnspec.training import loop, rundir
from nnspec.training.backend import TorchSettings
from nnspec.training.progress import PlainProgress
from nnspec.training.rundir import RunDir

torch = pytest.importorskip("torch")
from nnspec.backends.torch.runtime import TorchModel

pytestmark = pytest.mark.torch
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GPT = """
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
train GPT { loss cross_entropy; optimizer adam(lr = 3e-3); batch 16; clip 1.0 }
"""
TINY = """
model Tiny(hidden = 16) {
  input x: [2]
  x -> dense(hidden) -> relu -> dropout(0.2) -> dense(2) -> softmax
}
train Tiny {
  data      moons(n = 240)
  loss      cross_entropy
  optimizer adam(lr = 1e-2)
  epochs    3
  batch     16
  metrics   accuracy
  clip      1.0
}
"""


def _batches(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (64, 12))
    y = rng.integers(0, 20, (64, 12))
    for _ in range(steps):
        pick = rng.choice(64, 16, replace=False)
        yield x[pick], y[pick]


def _curve(settings: TorchSettings, steps: int = 30) -> tuple[list[float], TorchModel]:
    """Training losses of the GPT on the same batches from the same seeded weights."""
    spec = load_text(GPT, "gpt.nn")
    model = TorchModel.from_numpy(spec, spec.train, NumpyModel.from_spec(spec, seed=0),
                                  settings)
    optimizer = loop.build_optimizer(spec.train.optimizer, model)
    curve = []
    for x, y in _batches(steps):
        curve.append(model.loss(x, y))
        model.backward()
        model.clip_grad_norm(1.0)
        optimizer.step()
    return curve, model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_close_to_fp32_but_is_not_fp32(precision):
    reference, _ = _curve(TorchSettings())
    curve, model = _curve(TorchSettings("cpu", precision))
    assert curve != reference  # autocast did compute in low precision
    np.testing.assert_allclose(curve, reference, rtol=0.05)
    assert curve[-1] < 0.8 * curve[0]
    assert all(p.dtype == torch.float32 for p in model.net.parameters())  # the weights
    state = model.state_dict()
    assert all(a.dtype == np.float32 for a in state.values())
    out = model.forward(next(_batches(1))[0])
    assert out.dtype == np.float32 and out.shape == (16, 12, 20)
    assert (model.scaler is not None) == (precision == "fp16")  # fp16 needs a scaler


@pytest.mark.slow
def test_compiled_module_gives_eagers_losses():
    eager, _ = _curve(TorchSettings(), steps=4)
    compiled, model = _curve(TorchSettings(compile=True), steps=4)
    assert model.call is not model.net  # trained through torch.compile's wrapper
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)


# ---- the loop: config, checkpoints and resume ------------------------------------------------


class _Quiet(PlainProgress):
    """Collects lines; sends the run SIGINT after `interrupt_at` steps."""

    def __init__(self, interrupt_at: int | None = None):
        super().__init__(io.StringIO())
        self.interrupt_at, self.steps = interrupt_at, 0

    def step(self, loss: float) -> None:
        self.steps += 1
        if self.steps == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)


def _start(folder: Path, out: Path, settings: TorchSettings, progress=None, text=TINY):
    path = folder / "tiny.nn"
    if not path.exists():
        path.write_text(text)
    spec = load(path)
    trainer, _ = loop.start(spec, str(path), spec.train, out=out, default_out=out,
                            force=False, model_overrides={}, data_from_cli=False, val=None,
                            progress=progress or _Quiet(), checkpoint_every=0.0,
                            backend="torch", torch_settings=settings)
    return trainer


def _history(outcome) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in outcome.history]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_interrupted_low_precision_run_resumes_bit_identically(tmp_path, precision):
    settings = TorchSettings("cpu", precision)
    whole = _start(tmp_path, tmp_path / "whole", settings).run_to_end()
    stopped = _start(tmp_path, tmp_path / "cut", settings, _Quiet(interrupt_at=17)).run_to_end()
    assert stopped.status == "interrupted"
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["torch"] == {"device": "cpu", "precision": precision, "compile": False}
    optimizer_state = RunDir(tmp_path / "cut").read_checkpoint()[1]
    assert ("grad_scaler.scale" in optimizer_state) == (precision == "fp16")
    resumed = loop.resume(RunDir(tmp_path / "cut"), None, _Quiet())
    assert resumed.model.settings == settings
    outcome = resumed.run_to_end()
    assert _history(outcome) == _history(whole)
    a = rundir.read_safetensors(tmp_path / "whole" / "last.safetensors")[0]
    b = rundir.read_safetensors(tmp_path / "cut" / "last.safetensors")[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(v.dtype == np.float32 for v in b.values())


def _nnspec(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_bf16_run_is_evaluated_by_the_interpreter(tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, "--backend", "torch", "--device", "auto", "--precision",
                   "bf16", "--out", tmp_path / "run")
    assert done.exit_code == 0, done.output
    expected = "cuda" if CUDA else "mps" if torch.backends.mps.is_available() else "cpu"
    assert f"on PyTorch ({expected}" in done.output and "bf16)" in done.output
    scored = _nnspec("eval", spec, "--weights", tmp_path / "run", "--format", "json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["accuracy"] > 0.7


@pytest.mark.parametrize("flags", [("--device", "cpu"), ("--precision", "bf16"), ("--compile",)])
def test_torch_settings_on_the_numpy_backend_are_usage_errors(tmp_path, flags):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, *flags, "--out", tmp_path / "run")
    assert done.exit_code == 2 and f"{flags[0]} needs --backend torch" in done.output
    assert not (tmp_path / "run").exists()


def test_resume_keeps_the_settings_it_started_with(tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, "--backend", "torch", "--epochs", "1", "--out",
                   tmp_path / "run")
    assert done.exit_code == 0, done.output
    again = _nnspec("train", "--resume", tmp_path / "run", "--precision", "bf16")
    assert again.exit_code == 2 and "--precision cannot be combined" in again.output
    elsewhere = _nnspec("train", "--resume", tmp_path / "run", "--device", "auto")
    assert elsewhere.exit_code == 0 and "already finished" in elsewhere.output
    done = _nnspec("train", spec, "--epochs", "1", "--out", tmp_path / "numpy")
    assert done.exit_code == 0, done.output
    again = _nnspec("train", "--resume", tmp_path / "numpy", "--device", "cpu")
    assert again.exit_code == 2 and "trains on the NumPy interpreter" in again.output


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, "--backend", "torch", "--device", "cuda", "--out",
                   tmp_path / "run")
    assert done.exit_code == 1 and "PyTorch sees no CUDA GPU" in done.output
    assert not isinstance(done.exception, Exception) or isinstance(done.exception, SystemExit)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


@pytest.mark.parametrize("device", ["cuda:x", "cuda:", "gpu", "cpu:0", "cuda:-1", "cuda:١"])
def test_a_device_that_is_no_device_is_a_usage_error(tmp_path, device):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, "--backend", "torch", "--device", device, "--out",
                   tmp_path / "run")
    assert done.exit_code == 2 and "is not a device: use cpu, cuda, cuda:N" in done.output
    assert not (tmp_path / "run").exists()


def _gpus(monkeypatch, count: int) -> None:
    """Make torch report `count` CUDA GPUs (the index check runs before any is used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(("count", "seen"), [(1, "only cuda:0"), (2, "only cuda:0, cuda:1")])
def test_a_gpu_index_past_the_last_gpu_is_a_clear_error(tmp_path, monkeypatch, count, seen):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    _gpus(monkeypatch, count)
    done = _nnspec("train", spec, "--backend", "torch", "--device", f"cuda:{count}", "--out",
                   tmp_path / "run")
    assert done.exit_code == 1, done.output
    assert f"--device cuda:{count}: PyTorch sees {seen}" in done.output
    assert "CUDA_VISIBLE_DEVICES" in done.output  # the hint
    assert "Traceback" not in done.output and isinstance(done.exception, SystemExit)
    assert not (tmp_path / "run").exists()


def test_an_existing_gpu_index_names_that_gpu(monkeypatch):
    from nnspec.backends.torch.runtime import pick_device

    _gpus(monkeypatch, 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda")


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_a_gpu_index_without_a_gpu_is_a_clear_error(tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, "--backend", "torch", "--device", "cuda:0", "--out",
                   tmp_path / "run")
    assert done.exit_code == 1 and "--device cuda:0: PyTorch sees no CUDA GPU" in done.output


# ---- the generated training script's --device --------------------------------------------------


def _script(tmp_path: Path) -> Path:
    from nnspec.backends.torch import generate

    script = tmp_path / "tiny.py"
    script.write_text(generate(load_text(TINY, str(tmp_path / "tiny.nn")), train_script=True),
                      encoding="utf-8")
    return script


def _run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=script.parent, env=env, check=False, timeout=300)


def test_the_scripts_device_is_checked_before_training(tmp_path):
    script = _script(tmp_path)
    wrong = _run_script(script, "--device", "cuda:x", "--epochs", "1")
    assert wrong.returncode == 2 and "'cuda:x' is not a device" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    if not CUDA:
        missing = _run_script(script, "--device", "cuda:1", "--epochs", "1")
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert "--device cuda:1: PyTorch sees no CUDA GPU" in missing.stderr


def test_the_scripts_gpu_index_is_checked_against_the_gpus(tmp_path, monkeypatch):
    module = types.ModuleType("tiny_script")
    code = _script(tmp_path).read_text(encoding="utf-8")
    exec(compile(code, "tiny.py", "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - code under test
    _gpus(monkeypatch, 2)
    assert module.pick_device("cuda:1") == "cuda:1"
    with pytest.raises(SystemExit, match=r"--device cuda:2: PyTorch sees only cuda:0, cuda:1"):
        module.pick_device("cuda:2")
    assert module.parse_args(["--device", "cuda:01"]).device == "cuda:1"


# ---- on a GPU (pytest -m gpu) -----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_fp32_follows_the_cpu_curve():
    cpu, _ = _curve(TorchSettings())
    cuda, model = _curve(TorchSettings("cuda"))
    assert next(model.net.parameters()).device.type == "cuda"
    np.testing.assert_allclose(cuda, cpu, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_run_resumes_exactly_from_cpu_checkpoints(tmp_path, precision):
    settings = TorchSettings("cuda", precision)
    whole = _start(tmp_path, tmp_path / "whole", settings).run_to_end()
    stopped = _start(tmp_path, tmp_path / "cut", settings, _Quiet(interrupt_at=17)).run_to_end()
    assert stopped.status == "interrupted"
    outcome = loop.resume(RunDir(tmp_path / "cut"), None, _Quiet()).run_to_end()
    np.testing.assert_allclose([r["val_loss"] for r in outcome.history],
                               [r["val_loss"] for r in whole.history], rtol=1e-5)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "cut" / "last.safetensors")
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in weights.values())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_cpu_run_continues_on_cuda(tmp_path):
    """Without dropout (the CPU's and the GPU's generators draw other masks)."""
    no_dropout = TINY.replace("-> dropout(0.2) ", "")
    whole = _start(tmp_path, tmp_path / "whole", TorchSettings(), text=no_dropout).run_to_end()
    stopped = _start(tmp_path, tmp_path / "cut", TorchSettings(), _Quiet(interrupt_at=17)
                     ).run_to_end()
    assert stopped.status == "interrupted"
    resumed = loop.resume(RunDir(tmp_path / "cut"), None, _Quiet(), device="cuda")
    assert resumed.model.device.type == "cuda"
    outcome = resumed.run_to_end()
    np.testing.assert_allclose([r["val_loss"] for r in outcome.history],
                               [r["val_loss"] for r in whole.history], rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cli_trains_on_the_last_gpu_by_index(tmp_path):
    last = f"cuda:{torch.cuda.device_count() - 1}"
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    done = _nnspec("train", spec, "--backend", "torch", "--device", last, "--epochs", "1",
                   "--out", tmp_path / "run")
    assert done.exit_code == 0, done.output
    assert last in done.output
    loaded = load_text(TINY, "tiny.nn")
    model = TorchModel.from_numpy(loaded, loaded.train, NumpyModel.from_spec(loaded, seed=0),
                                  TorchSettings(last))
    assert next(model.net.parameters()).device == torch.device(last)
    model.dropout_state = model.dropout_state  # that GPU's generator, saved and restored


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_the_script_trains_on_the_last_gpu_by_index(tmp_path):
    last = f"cuda:{torch.cuda.device_count() - 1}"
    x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    done = _run_script(_script(tmp_path), "--data", "data.npz", "--epochs", "1",
                       "--device", last, "--out", "ck")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"on {last}" in done.stdout
