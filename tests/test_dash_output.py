"""`-o -` writes to standard output for every command that writes a file, and never leaves
a file named `-`; the README's example is the spec file it names."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "digits_mlp.nn"


def nnspec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *args], cwd=cwd, check=False,
                          capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Weights of digits_mlp (initial ones: what is written matters, not how good it is)."""
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.spec import load

    folder = tmp_path_factory.mktemp("weights")
    NumpyModel.from_spec(load(SPEC)).save(folder / "w.safetensors")
    np.save(folder / "x.npy", np.random.default_rng(0).random((5, 64), dtype=np.float32))
    return folder


def read_safetensors(data: bytes) -> dict:
    from safetensors.numpy import load

    return load(data)


CASES = {
    "render": (["render", str(SPEC), "--format", "dot"],
               lambda out: out.decode().startswith('digraph "DigitsMLP"')),
    "compile": (["compile", str(SPEC)], lambda out: b"class DigitsMLP(nn.Module)" in out),
    "predict": (["predict", str(SPEC), "-w", "{w}/w.safetensors", "-i", "{w}/x.npy"],
                lambda out: np.load(io.BytesIO(out)).shape == (5, 10)),
    "export-weights": (["export-weights", str(SPEC), "{w}/w.safetensors"],
                       lambda out: "dense_1.weight" in read_safetensors(out)),
    "import-weights": (["import-weights", str(SPEC), "{w}/w.safetensors"],
                       lambda out: read_safetensors(out)["dense_1.weight"].shape == (128, 64)),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_dash_writes_to_stdout(command, weights, tmp_path):
    args, looks_right = CASES[command]
    args = [a.format(w=weights) for a in args]
    result = nnspec(*args, "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert looks_right(result.stdout), result.stdout[:200]
    assert not (tmp_path / "-").exists()
    assert b"N001" not in result.stderr  # the fused-softmax note is `check`'s to say


@pytest.mark.torch
def test_export_dash_writes_onnx_to_stdout(tmp_path):
    pytest.importorskip("onnx")
    import onnx

    result = nnspec("export", str(SPEC), "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert onnx.load_model_from_string(result.stdout).graph.input
    assert not (tmp_path / "-").exists()


def test_the_note_about_the_fused_softmax_is_said_by_check_only(tmp_path):
    check = nnspec("check", str(SPEC), cwd=tmp_path)
    assert b"N001" in check.stdout + check.stderr
    summary = nnspec("summary", str(SPEC), cwd=tmp_path)
    assert b"N001" not in summary.stdout + summary.stderr


def test_the_readme_example_is_the_spec_file_it_names():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"`specs/digits_mlp\.nn`, in full:\n\n```nnspec\n(.*?)```", readme,
                      re.DOTALL)
    assert match, "the README shows specs/digits_mlp.nn under that sentence"
    assert match.group(1) == SPEC.read_text()
