"""`nnspec compile --train-script`: the generated file's command-line training entry point.

It passes ruff, imports nothing from nnspec at module level (it trains on .npz/CSV files
without nnspec), writes safetensors that nnspec loads, and under
`torchrun --nproc_per_node=2` gives the loss of one process with the same global batch.
No text of a spec but checked identifiers and numbers reaches it.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.torch import generate
from nnspec.cli import main
from nnspec.diagnostics import SpecError
from nnspec.ir.train import Setting
from nnspec.spec import load, load_text

ROOT = Path(__file__).resolve().parents[2]
SCRIPTABLE = [p for p in sorted((ROOT / "specs").glob("*.nn"))
              if (s := load(p)).train is not None and len(s.graph.inputs) == 1
              and [b.node for b in s.train.bindings] == ["pred", "target"]]

# No dropout and no batch norm: one process and two see the same function of the batch.
PLAIN = """
model Plain {
  input x: [6]
  x -> dense(16) -> tanh -> dense(3) -> softmax
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


def _ruff() -> list[str]:
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.importorskip("ruff")
    return [sys.executable, "-m", "ruff"]


def _settings(code: str) -> dict:
    """TRAIN_SECTION of a generated file, read as a literal: it must be plain data."""
    tree = ast.parse(code)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "TRAIN_SECTION":
            return ast.literal_eval(node.value)
    raise AssertionError("no TRAIN_SECTION")


def _write_data(folder: Path, n: int = 256, n_val: int = 64) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n + n_val, 6)).astype(np.float32)
    y = (x[:, :3].argmax(1)).astype(np.int64)
    path = folder / "data.npz"
    np.savez(path, x=x[:n], y=y[:n], x_val=x[n:], y_val=y[n:])
    return path


def _script(folder: Path, text: str = PLAIN, name: str = "plain") -> Path:
    spec = load_text(text, str(folder / f"{name}.nn"))
    path = folder / f"{name}.py"
    path.write_text(generate(spec, train_script=True), encoding="utf-8")
    return path


def _run(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """A process of its own, one thread (as torchrun sets it per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=folder, env=env,
                          check=False, timeout=120)


def _run_without_nnspec(script: Path, args: list[str], folder: Path):
    code = (f"import runpy, sys; sys.modules['nnspec'] = None; sys.argv = {[script.name, *args]!r}; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    return _run([sys.executable, "-c", code], folder)


# ---- the text --------------------------------------------------------------------------------


def test_every_train_script_passes_ruff_check_and_format(tmp_path):
    for path in SCRIPTABLE:
        (tmp_path / f"{path.stem}.py").write_text(generate(load(path), train_script=True))
    ruff = _ruff()
    for args in (["check", "--isolated", "--no-cache"],
                 ["format", "--isolated", "--no-cache", "--check", "--diff"]):
        done = subprocess.run([*ruff, *args, str(tmp_path)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_script_only_adds_to_the_model_file():
    spec = load(ROOT / "specs" / "tiny_gpt.nn")
    plain, scripted = generate(spec), generate(spec, train_script=True)
    body = plain.split("\n\n\n", 1)[1]
    assert body in scripted  # the model, loss, optimizer and weight helpers, unchanged
    assert scripted.rstrip().endswith('if __name__ == "__main__":\n    main()')
    settings = _settings(scripted)
    assert settings["sample_set"] == ("char_lm", {"length": 64})
    assert settings["token_input"] and settings["clip"] == 1.0 and settings["epochs"] == 20
    assert "model = TinyGPT()" in scripted and "make_scheduler(optimizer)" in scripted
    top_level = [n for n in ast.parse(scripted).body if isinstance(n, (ast.Import,
                                                                         ast.ImportFrom))]
    assert not any("nnspec" in ast.unparse(n) for n in top_level)


# ---- hostile specs -----------------------------------------------------------------------------

HOSTILE = 'x"); import os; os.system("echo pwned'


@pytest.mark.parametrize("data", [
    Setting(HOSTILE, {}, None),  # not a built-in set: never written
    Setting("csv", {"path": HOSTILE, "target": HOSTILE}, None),  # a file: never written
])
def test_data_text_never_reaches_the_script(data):
    spec = load(ROOT / "specs" / "moons_swish.nn")
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, data=data))
    code = generate(spec, train_script=True)
    assert "pwned" not in code and _settings(code)["sample_set"] is None


@pytest.mark.parametrize("change", [
    {"data": Setting("moons", {"n": HOSTILE}, None)},
    {"data": Setting("moons", {"n\nimport os": 5}, None)},
    {"metrics": ("accuracy", "mae\nimport os")},
    {"epochs": HOSTILE},
])
def test_hostile_settings_are_rejected(change):
    spec = load(ROOT / "specs" / "moons_swish.nn")
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **change))
    with pytest.raises(SpecError) as err:
        generate(spec, train_script=True)
    assert err.value.diagnostics[0].code == "E501"


def test_names_the_script_uses_are_not_taken_by_the_spec():
    text = """
block main(n) {
  input x: [F]
  x -> dense(n)
}
model evaluate {
  input np: [2]
  np -> main(3) -> softmax
}
train evaluate { data moons; loss cross_entropy; optimizer sgd(lr = 0.1) }
"""
    code = generate(load_text(text, "clash.nn"), train_script=True)
    defined = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined += [a.asname or a.name for a in node.names]
    assert len(defined) == len(set(defined)), "a module-level name is defined twice"
    assert {"main", "evaluate", "np"} <= set(defined)
    assert "model = evaluate2()" in code and "def forward(self, np2," in code


# ---- running it --------------------------------------------------------------------------------


@pytest.mark.torch
def test_trains_on_an_npz_without_nnspec_and_nnspec_loads_the_weights(tmp_path):
    pytest.importorskip("torch")
    _write_data(tmp_path)
    script = _script(tmp_path)
    done = _run_without_nnspec(script, ["--data", "data.npz", "--out", "ck"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = re.findall(r"epoch (\d)/3  train_loss ([\d.]+)  val_loss ([\d.]+)  "
                        r"val_accuracy ([\d.]+)", done.stdout)
    assert len(epochs) == 3 and float(epochs[-1][1]) < float(epochs[0][1])
    spec = load_text(PLAIN, str(tmp_path / "plain.nn"))
    model = NumpyModel.from_spec(spec)
    model.load(tmp_path / "ck" / "best.safetensors")  # nnspec's names and shapes
    assert not list((tmp_path / "ck").glob(".*partial"))
    # with nnspec blocked, a spec that trains on nnspec's sample set says what to do
    moons = _script(tmp_path, (ROOT / "specs" / "moons_swish.nn").read_text(), "moons")
    done = _run_without_nnspec(moons, [], tmp_path)
    assert done.returncode == 1 and "pip install nnspec, or pass --data" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.torch
def test_trains_on_a_csv_with_class_names(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    rows = ["a,b,label"] + [f"{u:.3f},{v:.3f},{'up' if u > v else 'down'}"
                            for u, v in rng.standard_normal((120, 2))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    text = PLAIN.replace("[6]", "[2]").replace("dense(3)", "dense(2)")
    script = _script(tmp_path, text)
    done = _run([sys.executable, str(script), "--data", "train.csv", "--target", "label",
                 "--epochs", "2", "--batch", "16", "--out", "ck"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "96 training / 24 validation samples" in done.stdout


def _losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^step \d+  loss ([\d.]+)$", stdout, re.MULTILINE)]


@pytest.mark.torch
@pytest.mark.slow
def test_torchrun_on_two_processes_matches_one_process(tmp_path):
    """Two processes of 16 samples each step as one of 32: the same loss at every step
    and the same weights after 12 steps (DistributedSampler shards each global batch)."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    _write_data(tmp_path)
    script = _script(tmp_path)
    common = ["--data", "data.npz", "--steps", "12", "--log-every", "1"]
    single = _run([sys.executable, str(script), *common, "--out", "one"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert torch.distributed.is_available()
    double = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   str(script), *common, "--out", "two"], tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "2 processes on cpu, global batch 32" in double.stdout
    one, two = _losses(single.stdout), _losses(double.stdout)
    assert len(one) == len(two) == 12
    np.testing.assert_allclose(two, one, rtol=1e-4)
    a, b = load_file(tmp_path / "one" / "last.safetensors"), load_file(
        tmp_path / "two" / "last.safetensors")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)


# ---- nnspec compile ----------------------------------------------------------------------------


def _cli(*args: str, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def test_compile_writes_a_checked_file(tmp_path):
    spec_path = ROOT / "specs" / "digits_mlp.nn"
    done = _cli("compile", str(spec_path), "--backend", "torch", "-o", "out/mlp.py",
                cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert "wrote out/mlp.py" in done.output
    assert (tmp_path / "out" / "mlp.py").read_text() == generate(load(spec_path))
    done = _cli("compile", str(spec_path), "--train-script", cwd=tmp_path)
    assert done.exit_code == 0 and (tmp_path / "digits_mlp.py").read_text() == generate(
        load(spec_path), train_script=True)
    printed = _cli("compile", str(spec_path), "-o", "-", cwd=tmp_path)
    assert printed.stdout.startswith("# Generated by nnspec") and "def main(" not in \
        printed.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_mlp.py", "out"]


@pytest.mark.parametrize("spec_name, phrase", [
    ("resnet18.nn", "has no train section"),
    ("vae.nn", "but this loss reads recon, x, mu, logvar"),
])
def test_compile_refuses_a_script_it_cannot_make(tmp_path, spec_name, phrase):
    done = _cli("compile", str(ROOT / "specs" / spec_name), "--train-script", cwd=tmp_path)
    assert done.exit_code == 1 and phrase in done.output and "Traceback" not in done.output
    two_inputs = tmp_path / "two.nn"
    two_inputs.write_text("model Two {\n  input a: [2]\n  input b: [2]\n  a + b -> dense(1)\n}"
                          "\ntrain Two { data moons; loss mse; optimizer sgd(lr = 0.1) }\n")
    done = _cli("compile", str(two_inputs), "--train-script", cwd=tmp_path)
    assert done.exit_code == 1 and "feeds one input array" in done.output
    assert not (tmp_path / "two.py").exists()


# ---- hostile arguments and files: plain messages, never a traceback -------------------------


def _hostile_inputs(folder: Path) -> None:
    import pickle  # only to write the hostile file the script must refuse

    _write_data(folder)
    (folder / "pickled.npz").write_bytes(pickle.dumps({"x": [1.0]}))
    np.savez(folder / "objects.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    rng = np.random.default_rng(0)
    np.savez(folder / "labels.npz", x=rng.standard_normal((20, 6)).astype(np.float32),
             y=np.full(20, 7))
    np.savez(folder / "short.npz", x=np.zeros((20, 6), np.float32), y=np.zeros(5, np.int64))
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")


@pytest.mark.torch
@pytest.mark.parametrize("args, code, words", [
    (["--data", "missing.npz"], 1, "missing.npz: no such file"),
    (["--data", "pickled.npz"], 1, "pickled.npz: cannot read the data"),
    (["--data", "objects.npz"], 1, "which are not loaded"),
    (["--data", "data.npz", "--epochs", "-1"], 2, "--epochs must be 1 or more"),
    (["--data", "data.npz", "--batch", "0"], 2, "--batch must be 1 or more"),
    (["--data", "data.npz", "--val", "1.5"], 2, "--val must be between 0 and 1"),
    (["--data", "data.npz", "--weights", "truncated.safetensors"], 1,
     "truncated.safetensors: cannot load the weights"),
    (["--data", "data.npz", "--weights", "nope.safetensors"], 1, "no such file"),
    (["--data", "labels.npz"], 1, "the label 7 is out of range"),
    (["--data", "short.npz"], 1, "x has 20 samples, y 5"),
    (["--data", "data.npz", "--out", "data.npz/ck"], 1, "cannot create it"),
])
def test_the_script_checks_its_arguments_and_files(tmp_path, args, code, words):
    pytest.importorskip("torch")
    _hostile_inputs(tmp_path)
    script = _script(tmp_path)
    done = _run([sys.executable, str(script), "--steps", "1", *args], tmp_path)
    assert done.returncode == code, done.stderr[-2000:]
    assert words in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.torch
def test_the_script_refuses_weights_holding_nan(tmp_path):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file, save_file

    _write_data(tmp_path)
    script = _script(tmp_path)
    assert _run([sys.executable, str(script), "--data", "data.npz", "--epochs", "1",
                 "--out", "ck"], tmp_path).returncode == 0
    weights = load_file(str(tmp_path / "ck" / "best.safetensors"))
    weights[next(iter(weights))][...] = np.nan
    save_file(weights, str(tmp_path / "nan.safetensors"))
    done = _run([sys.executable, str(script), "--data", "data.npz", "--weights",
                 "nan.safetensors"], tmp_path)
    assert done.returncode == 1 and "holds NaN or infinite values" in done.stderr
    assert "Traceback" not in done.stderr
