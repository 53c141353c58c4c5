"""`nnspec train`, `predict` and `eval` as a user runs them: exit codes, messages, signals."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnspec.cli import main
from nnspec.training import rundir

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
}
"""

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "tiny.nn"
    path.write_text(TINY)
    return path


def run(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, list(args), catch_exceptions=False)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def assert_user_error(result, code: int = 1, *phrases: str) -> None:
    text = result.output  # stdout and stderr, interleaved
    assert result.exit_code == code, text
    assert "Traceback" not in text
    for phrase in phrases:
        assert phrase in text, text


def subprocess_train(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnspec.cli", "train", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_weights(path: Path) -> dict[str, np.ndarray]:
    return rundir.read_safetensors(path)[0]


# ---------------------------------------------------------------- train


def test_train_writes_the_run_directory_and_plain_lines(spec, tmp_path):
    result = run("train", str(spec), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert not CONTROL.search(result.stdout)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert "best val_loss" in result.stdout
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"config.json", "resume.safetensors", "last.safetensors",
                     "best.safetensors", "metrics.csv", "loss.png", "confusion.png"}
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "val_loss", "val_accuracy", "lr",
                            "seconds"}
    _, metadata = rundir.read_safetensors(tmp_path / "run" / "best.safetensors")
    assert metadata["model"] == "Tiny" and len(metadata["spec_hash"]) == 16


def test_overrides_reach_the_run(spec, tmp_path):
    result = run("train", str(spec), "--out", str(tmp_path / "run"), "--epochs", "2",
                 "--batch", "8", "--lr", "0.05", "--optimizer", "sgd(momentum = 0.9)",
                 "--seed", "3", "--val", "0.25", "--set", "hidden=8", "--early-stop", "4",
                 "--data", "moons(n = 100)")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    train = config["train"]
    assert (train["epochs"], train["batch"], train["seed"], train["early_stop"]) == (2, 8, 3, 4)
    assert train["optimizer"]["name"] == "sgd" and train["optimizer"]["lr"] == 0.05
    assert config["overrides"] == {"hidden": 8}
    assert config["data"]["train_samples"] == 75 and config["data"]["val_samples"] == 25
    assert load_weights(tmp_path / "run" / "last.safetensors")["dense_1.weight"].shape == (8, 2)
    assert "lr 0.05" in result.stdout


def test_the_default_run_directory_is_runs_slash_the_spec_name(spec, tmp_path):
    assert run("train", str(spec), "--epochs", "1", cwd=tmp_path).exit_code == 0
    result = run("train", str(spec), "--epochs", "1", cwd=tmp_path)
    assert result.exit_code == 0
    assert "runs/tiny-2" in result.stderr and "--resume runs/tiny" in result.stderr
    assert (tmp_path / "runs" / "tiny" / "last.safetensors").is_file()
    assert (tmp_path / "runs" / "tiny-2" / "last.safetensors").is_file()


def test_a_nan_loss_exits_1_naming_epoch_and_step(spec, tmp_path):
    result = run("train", str(spec), "--out", str(tmp_path / "run"), "--lr", "1e30")
    assert_user_error(result, 1, "became nan at epoch 1, step 2")
    assert load_weights(tmp_path / "run" / "last.safetensors")


@pytest.mark.parametrize("args, phrase", [
    (["--optimizer", "adma"], "did you mean `adam`"),
    (["--optimizer", "sgd(lr = -1)"], "`lr` must be at least 0"),
    (["--optimizer", "adam(betas = [0.9, 1.5])"], "--optimizer: betas must lie in [0, 1)"),
    (["--data", "moons(n = "], "cannot read --data"),
    (["--data", "digts"], "did you mean `digits`"),
    (["--set", "width=3"], None),
    (["--val", "1.5"], "1.5"),
], ids=["optimizer", "optimizer-value", "betas", "data-syntax", "data-name", "set", "val"])
def test_bad_overrides(spec, tmp_path, args, phrase):
    result = run("train", str(spec), "--out", str(tmp_path / "run"), *args)
    if args[0] == "--set":  # a spec error: E104 at the model's name
        assert_user_error(result, 1, "E104", "no hyperparameter `width`")
    else:
        assert_user_error(result, 2, phrase)


def test_resume_refuses_new_settings_and_needs_a_run(spec, tmp_path):
    assert_user_error(run("train", "--resume", str(tmp_path), "--lr", "1"), 2, "--lr")
    assert_user_error(run("train", "--resume", str(tmp_path)), 1, "not an nnspec run")
    assert_user_error(run("train"), 2, "--resume DIR")


def test_resume_with_a_changed_spec_fails_naming_the_parameter(spec, tmp_path):
    assert run("train", str(spec), "--out", str(tmp_path / "run"), "--epochs", "1").exit_code == 0
    spec.write_text(TINY.replace("dense(2)", "dense(3)"))
    result = run("train", "--resume", str(tmp_path / "run"))
    assert_user_error(result, 1, "the spec changed", "`dense_2.weight` is [2, 16] in the run "
                      "but [3, 16] in the spec")


def test_a_bad_data_line_in_the_spec_points_at_it(tmp_path):
    path = tmp_path / "bad.nn"
    path.write_text(TINY.replace("moons(n = 240)", 'csv("missing.csv")'))
    result = run("train", str(path), "--out", str(tmp_path / "run"))
    assert_user_error(result, 1, "bad.nn:8:13: error[E216]", "missing.csv: no such file", "^~~")
    assert not (tmp_path / "run").exists()  # nothing is created for a run that cannot start


# ---------------------------------------------------------------- a corpus of bad data


def write(path: Path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path.name


def good_rows(n: int = 30, columns: int = 2, classes: int = 2) -> str:
    header = ",".join(f"f{i}" for i in range(columns)) + ",y"
    rows = [",".join(str((i * (j + 3)) % 7 / 7) for j in range(columns)) + f",{i % classes}"
            for i in range(n)]
    return "\n".join([header, *rows]) + "\n"


BAD_DATA = {
    "missing file": (lambda d: "nowhere.csv", "no such file"),
    "empty csv": (lambda d: write(d / "e.csv", ""), "empty"),
    "header only": (lambda d: write(d / "h.csv", "a,b,y\n"), "no data rows"),
    "ragged row": (lambda d: write(d / "r.csv", "a,b,y\n1,2,0\n1,2\n"), "2 cells"),
    "text feature": (lambda d: write(d / "t.csv", "a,b,y\n1,x,0\n2,3,1\n"), "not a number"),
    "nan feature": (lambda d: write(d / "n.csv", "a,b,y\n1,nan,0\n2,3,1\n"), "finite"),
    "no target column": (lambda d: write(d / "nt.csv", "a,b,c\n1,2,0\n2,3,1\n"),
                         "no column named `y`"),
    "three features for [2]": (lambda d: write(d / "w.csv", good_rows(columns=3)),
                               "E217"),
    "labels out of range": (lambda d: write(d / "l.csv", good_rows(classes=5)), "E218"),
    "fractional labels": (lambda d: write(d / "f.csv", "a,b,y\n" + "".join(
        f"{i},{i},{i / 10}\n" for i in range(20))), "E218"),
    "not utf-8": (lambda d: write(d / "u.csv", b"a,b,y\n1,2,\xff\n"), "UTF-8"),
    "npz without y": (lambda d: _npz(d / "noy.npz", x=np.zeros((4, 2))), "`y`"),
    "npz of objects": (lambda d: _npz(d / "obj.npz", x=np.array([{}, {}], dtype=object),
                                      y=np.zeros(2)), "Python objects"),
    "garbage npz": (lambda d: write(d / "g.npz", b"PK\x03\x04 not really a zip"), "damaged"),
    "npy without targets": (lambda d: _npy(d / "x.npy", np.zeros((4, 2))), "needs targets"),
    "directory": (lambda d: (d / "folder.csv").mkdir() or "folder.csv", "directory"),
    "npz samples mismatch": (lambda d: _npz(d / "m.npz", x=np.zeros((4, 2)), y=np.zeros(3)),
                             "4 samples"),
}


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return path.name


def _npy(path: Path, array) -> str:
    np.save(path, array)
    return path.name


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_gets_a_clear_error(spec, tmp_path, case):
    make, phrase = BAD_DATA[case]
    name = make(tmp_path)
    result = run("train", str(spec), "--data", name, "--out", str(tmp_path / "run"),
                 cwd=tmp_path)
    assert_user_error(result, 1, phrase)
    assert "error" in result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- predict and eval


@pytest.fixture
def trained(spec, tmp_path) -> Path:
    out = tmp_path / "run"
    assert run("train", str(spec), "--out", str(out)).exit_code == 0
    return out


def test_predict_prints_classes_and_saves_outputs(spec, trained, tmp_path):
    x = np.array([[0.0, 1.0], [1.0, -0.5], [2.0, 0.5]], np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run("predict", str(spec), "--weights", str(trained), "--input",
                 str(tmp_path / "x.npy"))
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [line for line in result.stdout.split()
                                     if line in ("upper", "lower")]
    assert len(result.stdout.splitlines()) == 3
    result = run("predict", str(spec), "-w", str(trained / "last.safetensors"), "-i",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert result.exit_code == 0
    probabilities = np.load(tmp_path / "y.npy")
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    (tmp_path / "x.csv").write_text("a,b\n0,1\n1,-0.5\n")
    result = run("predict", str(spec), "-w", str(trained), "-i", str(tmp_path / "x.csv"))
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2


def test_predict_with_bad_inputs(spec, trained, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((3, 5), np.float32))
    result = run("predict", str(spec), "-w", str(trained), "-i", str(tmp_path / "wide.npy"))
    assert_user_error(result, 1, "E217", "takes samples shaped [2]", "[5]")
    result = run("predict", str(spec), "-w", str(trained), "-i", str(tmp_path / "none.npy"))
    assert_user_error(result, 1, "no such file")
    (tmp_path / "x.txt").write_text("1 2")
    result = run("predict", str(spec), "-w", str(trained), "-i", str(tmp_path / "x.txt"))
    assert_user_error(result, 1, ".npy, .npz or .csv")


def test_weights_from_another_spec_are_refused(spec, trained, tmp_path):
    other = tmp_path / "other.nn"
    other.write_text(TINY.replace("hidden = 16", "hidden = 32"))
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    for command in (["predict", str(other), "-w", str(trained), "-i", str(tmp_path / "x.npy")],
                    ["eval", str(other), "-w", str(trained)]):
        assert_user_error(run(*command), 1, "`dense_1.weight` is [16, 2] in the file but "
                          "[32, 2] in the model", "another spec")
    renamed = tmp_path / "renamed.nn"
    renamed.write_text(TINY.replace("dense(2)", "dense(2) as head"))
    assert_user_error(run("eval", str(renamed), "-w", str(trained)), 1, "missing `head.weight`")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    assert_user_error(run("eval", str(spec), "-w", str(tmp_path / "junk.safetensors")), 1,
                      "not a readable safetensors file")
    assert_user_error(run("eval", str(spec), "-w", str(tmp_path / "nope.safetensors")), 1,
                      "no such file")


def test_eval_prints_the_metrics_of_the_best_weights(spec, trained, tmp_path):
    result = run("eval", str(spec), "-w", str(trained), "--format", "json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    with open(trained / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert scores["split"] == "val" and scores["samples"] == 48
    assert scores["accuracy"] == pytest.approx(float(best["val_accuracy"]), abs=1e-6)
    (tmp_path / "test.csv").write_text(good_rows(n=10))
    result = run("eval", str(spec), "-w", str(trained), "--data", "test.csv", cwd=tmp_path)
    assert result.exit_code == 0 and "(all split, 10 samples)" in result.stdout
    assert "accuracy" in result.stdout


# ---------------------------------------------------------------- signals (real processes)

LONG = TINY.replace("moons(n = 240)", "moons(n = 12000)")


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no line starting {prefix!r}: {process.stderr.read()}")


def test_sigint_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    (tmp_path / "long.nn").write_text(LONG)
    process = subprocess_train("long.nn", "--out", "cut", cwd=tmp_path)
    wait_for_line(process, "epoch 1/3")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped by Ctrl-C" in err and "--resume cut" in err and "Traceback" not in err
    assert not CONTROL.search(out)
    resumed = subprocess.run([sys.executable, "-m", "nnspec.cli", "train", "--resume", "cut"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming cut at epoch" in resumed.stdout
    assert run("train", str(tmp_path / "long.nn"), "--out", str(tmp_path / "whole")
               ).exit_code == 0
    cut, whole = (load_weights(tmp_path / d / "last.safetensors") for d in ("cut", "whole"))
    assert cut.keys() == whole.keys()
    assert all(np.array_equal(cut[k], whole[k]) for k in cut)


def readable(path: Path) -> None:
    if path.suffix == ".safetensors":
        rundir.read_safetensors(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".csv":
        list(csv.reader(path.open()))
    elif path.suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        raise AssertionError(f"unexpected file {path.name}")


def test_sigkill_at_any_moment_leaves_every_file_readable(tmp_path):
    (tmp_path / "tiny.nn").write_text(TINY.replace("epochs    3", "epochs    100000"))
    rng = np.random.default_rng(0)
    for attempt in range(3):
        args = ("tiny.nn", "--out", "run") if attempt == 0 else ("--resume", "run")
        args += ("--checkpoint-every", "0")  # commit every epoch: most kills land mid-write
        process = subprocess_train(*args, cwd=tmp_path)
        wait_for_line(process, "epoch ")
        time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        process.communicate()
        visible = [p for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")]
        assert {p.name for p in visible} >= {"config.json", "resume.safetensors",
                                              "last.safetensors", "metrics.csv"}
        for path in visible:
            readable(path)
    state = rundir.RunDir(tmp_path / "run").read_checkpoint()[3]
    assert state["epoch"] >= 1
