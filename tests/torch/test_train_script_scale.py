"""The training script on other devices, in other precisions and sharded: `--strategy fsdp`
over two processes gives the losses and weights of one process, mixed precision and
torch.compile train, `--device auto` picks what is there, and the CUDA paths run where a
GPU is (`pytest -m gpu`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnspec.backends.torch import generate
from nnspec.spec import load_text

torch = pytest.importorskip("torch")

# Two blocks, so FSDP has units to shard; no dropout, so one process and two agree.
BLOCKS = """
block Mix(width) {
  input x: [F]
  x -> dense(width) -> tanh
}
model Plain {
  input x: [6]
  x -> Mix(16) -> Mix(16) -> dense(3) -> softmax
}
train Plain {
  data      npz("data.npz")
  loss      cross_entropy
  optimizer adam(lr = 1e-2)
  epochs    3
  batch     32
  metrics   accuracy
}
"""


def _setup(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 6)).astype(np.float32)
    y = x[:, :3].argmax(1).astype(np.int64)
    np.savez(folder / "data.npz", x=x[:256], y=y[:256], x_val=x[256:], y_val=y[256:])
    script = folder / "plain.py"
    script.write_text(generate(load_text(BLOCKS, str(folder / "plain.nn")), train_script=True),
                      encoding="utf-8")
    return script


def _run(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=folder, env=env,
                          check=False, timeout=300)


def _losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^step \d+  loss ([\d.]+)$", stdout, re.MULTILINE)]


@pytest.mark.torch
@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process(tmp_path):
    from safetensors.numpy import load_file

    script = _setup(tmp_path)
    common = ["--data", "data.npz", "--steps", "12", "--log-every", "1", "--device", "cpu"]
    single = _run([sys.executable, str(script), *common, "--out", "one"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    str(script), *common, "--strategy", "fsdp", "--out", "two"], tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = _losses(single.stdout), _losses(sharded.stdout)
    assert len(one) == len(two) == 12
    np.testing.assert_allclose(two, one, rtol=1e-4)
    a, b = load_file(tmp_path / "one" / "last.safetensors"), load_file(
        tmp_path / "two" / "last.safetensors")
    assert set(a) == set(b)  # whole tensors under nnspec's names, not shards
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("options", [["--precision", "bf16"], ["--precision", "fp16"],
                                     ["--compile"]])
def test_mixed_precision_and_compile_train(tmp_path, options):
    script = _setup(tmp_path)
    done = _run([sys.executable, str(script), "--data", "data.npz", "--epochs", "2",
                 "--out", "ck", *options], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"train_loss ([\d.]+)", done.stdout)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp_path / "ck" / "best.safetensors").exists()


@pytest.mark.torch
def test_device_auto_picks_what_is_there(tmp_path):
    script = _setup(tmp_path)
    done = _run([sys.executable, str(script), "--data", "data.npz", "--epochs", "1",
                 "--out", "ck"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
    assert f"1 process on {expected}" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_saves_device_independent_weights(tmp_path, precision):
    from safetensors.torch import load_file

    script = _setup(tmp_path)
    done = _run([sys.executable, str(script), "--data", "data.npz", "--epochs", "1",
                 "--device", "cuda", "--precision", precision, "--out", "ck"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on cuda" in done.stdout
    weights = load_file(tmp_path / "ck" / "last.safetensors")
    assert all(t.device.type == "cpu" for t in weights.values())
