"""Hostile command lines: the CLI's options and data files, as a user who types anything or
hands over a damaged file would. Each scenario is a command (train, eval, predict,
import-weights, compile, summary, render, check) with option values drawn from what has
broken programs before (`--set` numbers past any limit, `--data` settings that would
allocate terabytes, empty or special `-o` paths) and files damaged at the byte level or in
their headers (.npy, .npz, .csv, .safetensors, a run directory's config.json and resume
state). It runs in-process through click; it must end with exit 0, 1, 2 or 130, never an
exception or a printed traceback.

A worker prepares its workspace once (a tiny spec and a trained run) and runs each scenario
in a scratch directory of its own, so files can be damaged freely.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPEC = """model Tiny(hidden = 8) {
  input x: [2]
  x -> dense(hidden) -> relu -> dense(2)
}

train Tiny {
  data moons(n = 120)
  loss cross_entropy
  optimizer adam(lr = 1e-2)
  epochs 1
  batch 32
  metrics accuracy
}
"""
EXIT_CODES = {0, 1, 2, 130}

# Values that have broken option parsers and loaders before.
NUMBERS = ["0", "-1", "1", "2", "1e3", "9" * 5000, "2 ** 70", "10 ** 40", "abc", "", "1.5",
           "nan", "inf", "-inf", "1e400", "1e-400", "-0", "99999999999999999999", "0x10",
           " 3", "3 ", "\u0663", "1_000"]
# Epochs a user may really ask for are long runs, not bugs: only small or refused values.
EPOCHS = ["1", "2", "0", "-1", "abc", "", "1.5", "nan", "9" * 5000, " 2", "\u0662"]
SET_VALUES = ["16", "0", "-3", "10 ** 12", "10 ** 40", "9" * 5000, '"x"', "[1, 2]", "true",
              "none", "(", "hidden", "1 / 0", "2 ^ 70", "1e999", "4 * 4", "2.5", "", "\ufeff8",
              "8 # comment", '"' + "a" * 10000 + '"', "[" * 2000]
SET_NAMES = ["hidden", "hidden", "nosuch", "", "1x", "hidden.x", "h\u00e9"]
DATA = ["moons(n = 100000000000)", "spirals(classes = 1000000000)", "moons", "digits",
        "nosuch", "moons(n = ", "", "moons(noise = nan)", "xor(val = 2)", "moons(val = -1)",
        "char_lm(length = 0)", "recall(n = 10 ** 30)", "sine(n = 1)", "moons(n = 1)",
        "digits(shape = [0])", "digits(shape = [-1, 8])", "moons(n = 2.5)",
        'csv("d.csv", target = "y")', 'csv("d.csv", target = "nope")', 'npz("d.npz")',
        "d.csv", "d.npz", "d.npy", "missing.csv", ".", "/dev/null", "/dev/zero",
        'csv("/proc/self/mem")', "afile", 'npz("d.csv")', 'csv("d.npz", target = "y")']
OUT_PATHS = ["", "-", "/dev/null", "/proc/x.out", "afile/x.out", "adir", "new/deep/x.out",
             "x" * 300, "out.npy", "out.py", "out.safetensors", ".", "/", "d.csv"]
WEIGHTS = ["run", "run/best.safetensors", "w.safetensors", "missing", "afile", "adir",
           "/dev/null", "d.npy", "run/config.json"]
INPUTS = ["x.npy", "d.npz", "d.csv", "missing.npy", "adir", "/dev/null", "afile", "w.safetensors"]


@dataclass
class Scenario:
    argv: list[str]
    damage: list[tuple[str, str]] = field(default_factory=list)  # (file, how)
    origin: str = ""

    def to_json(self) -> dict:
        return {"argv": self.argv, "damage": self.damage, "origin": self.origin}

    @classmethod
    def from_json(cls, data: dict) -> Scenario:
        return cls(list(data["argv"]), [tuple(d) for d in data["damage"]], data.get("origin", ""))


# ---- the workspace --------------------------------------------------------------------------


def prepare(base: Path) -> Path:
    """A tiny spec, a trained run of it, data files and weights: the good originals that
    scenarios copy and damage."""
    from click.testing import CliRunner

    from nnspec.cli import main

    base.mkdir(parents=True, exist_ok=True)
    (base / "tiny.nn").write_text(SPEC, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", str(base / "tiny.nn"), "-o", str(base / "run")])
    if result.exit_code != 0:
        raise RuntimeError(f"cannot train the hostile fuzzer's run:\n{result.output}")
    shutil.copy(base / "run" / "best.safetensors", base / "w.safetensors")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.save(base / "x.npy", x)
    np.savez(base / "d.npz", x=x, y=y)
    np.save(base / "d.npy", x)
    rows = "\n".join(f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x, y))
    (base / "d.csv").write_text("f1,f2,y\n" + rows + "\n", encoding="utf-8")
    (base / "afile").write_text("a file where a folder is expected\n", encoding="utf-8")
    (base / "adir").mkdir(exist_ok=True)
    return base


def scratch_copy(base: Path, scratch: Path) -> None:
    for item in base.iterdir():
        if item.is_dir():
            shutil.copytree(item, scratch / item.name)
        else:
            shutil.copy(item, scratch / item.name)


# ---- damaging files -------------------------------------------------------------------------


def _npy_header(shape, descr="<f4", fortran=False) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _safetensors(header: object, body: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def damaged_bytes(name: str, data: bytes, how: str, rng: random.Random) -> bytes:
    """`data` (the content of `name`) after the damage called `how`."""
    if how == "truncate":
        return data[:rng.randint(0, max(0, len(data) - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.choice([1, 4, 32])):
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if how == "empty":
        return b""
    if how == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 100, 5000])))
    if how == "utf8-bom":
        return b"\xef\xbb\xbf" + data
    suffix = Path(name).suffix
    if suffix == ".npy":
        return {"npy-huge": _npy_header((10**11, 2)), "npy-lies": _npy_header((400, 2)) + b"\0" * 16,
                "npy-object": _pickled_npy(), "npy-negative": _npy_header((-5, 2)),
                "npy-dtype": _npy_header((4, 2), "|V8") + b"\0" * 64,
                "npy-rank": _npy_header((2,) * 40) + b"\0" * 64,
                "npy-nan": _npy_header((40, 2)) + np.full(80, np.nan, np.float32).tobytes(),
                "npy-int": _npy_header((40, 2), "<i8") + np.full(80, 2**62, np.int64).tobytes(),
                }.get(how, data)
    if suffix == ".npz":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            if how == "npz-pickle":
                archive.writestr("x.npy", _pickled_npy())
                archive.writestr("y.npy", _pickled_npy())
            elif how == "npz-huge":
                archive.writestr("x.npy", _npy_header((10**11, 2)))
                archive.writestr("y.npy", _npy_header((10**11,), "<i8"))
            elif how == "npz-missing":
                archive.writestr("z.npy", _npy_header((1,)) + b"\0" * 4)
            elif how == "npz-mismatch":
                archive.writestr("x.npy", _npy_header((40, 2)) + b"\0" * 320)
                archive.writestr("y.npy", _npy_header((7,), "<i8") + b"\0" * 56)
            else:
                return data
        return buffer.getvalue()
    if suffix == ".csv":
        text = data.decode("utf-8", "replace")
        return {"csv-ragged": text.replace(",", "", 3), "csv-words": text.replace("0.", "zz", 5),
                "csv-huge-label": text.replace(",1\n", ",1e23\n", 3),
                "csv-negative-label": text.replace(",1\n", ",-7\n", 3),
                "csv-nan": text.replace("0.", "nan", 3), "csv-header-only": "f1,f2,y\n",
                "csv-no-header": text.partition("\n")[2],
                "csv-wide": ",".join(f"c{i}" for i in range(20000)) + "\n",
                "csv-latin1": "f\xe9,f2,y\n1,2,0\n",
                }.get(how, text).encode("latin-1" if how == "csv-latin1" else "utf-8",
                                        "replace")
    if suffix == ".safetensors":
        return {"st-huge-header": struct.pack("<Q", 2**62) + b"{}",
                "st-bad-json": _safetensors(b"{not json"),
                "st-offsets": _safetensors({"0.weight": {"dtype": "F32", "shape": [8, 2],
                                                         "data_offsets": [0, 10**12]}}),
                "st-dtype": _safetensors({"0.weight": {"dtype": "X9", "shape": [8, 2],
                                                       "data_offsets": [0, 64]}}, b"\0" * 64),
                "st-shape": _safetensors({"0.weight": {"dtype": "F32", "shape": [10**9, 10**9],
                                                       "data_offsets": [0, 64]}}, b"\0" * 64),
                "st-class-names": _with_metadata(data, rng),
                "st-nan": _nan_weights(data),
                }.get(how, data)
    if name.endswith("config.json"):
        return {"json-wrong-types": json.dumps({"format": 5, "spec": [], "train": "x",
                                                "overrides": [1, 2], "model": None}).encode(),
                "json-list": b"[]", "json-deep": b"[" * 100000 + b"]" * 100000,
                "json-missing-spec": _config_edit(data, "spec", "/no/such/spec.nn"),
                "json-overrides": _config_edit(data, "overrides", {"hidden": 10**12}),
                "json-huge-number": _config_edit(data, "overrides", {"hidden": "9" * 5000}),
                }.get(how, data)
    return data


def _config_edit(data: bytes, key: str, value) -> bytes:
    try:
        config = json.loads(data)
        config[key] = value
        return json.dumps(config).encode()
    except (ValueError, TypeError, RecursionError):  # already damaged: leave it so
        return data


def _with_metadata(data: bytes, rng: random.Random) -> bytes:
    try:
        size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + size])
    except (ValueError, struct.error, RecursionError):
        return data
    if not isinstance(header, dict):
        return data
    header["__metadata__"] = {"class_names": rng.choice(["not json", "[1, 2]", "{}", '"a"',
                                                          "[" * 5000, '["a"]'])}
    return _safetensors(header, data[8 + size:])


def _nan_weights(data: bytes) -> bytes:
    try:
        size = struct.unpack("<Q", data[:8])[0]
    except struct.error:
        return data
    body = np.frombuffer(data[8 + size:], np.uint8).copy()
    body[: len(body) - len(body) % 4].view(np.float32)[:] = np.nan
    return data[:8 + size] + body.tobytes()


DAMAGE = {
    ".npy": ["truncate", "flip", "empty", "garbage", "npy-huge", "npy-lies", "npy-object",
             "npy-negative", "npy-dtype", "npy-rank", "npy-nan", "npy-int"],
    ".npz": ["truncate", "flip", "empty", "garbage", "npz-pickle", "npz-huge", "npz-missing",
             "npz-mismatch"],
    ".csv": ["truncate", "flip", "empty", "garbage", "utf8-bom", "csv-ragged", "csv-words",
             "csv-huge-label", "csv-negative-label", "csv-nan", "csv-header-only",
             "csv-no-header", "csv-wide", "csv-latin1"],
    ".safetensors": ["truncate", "flip", "empty", "garbage", "st-huge-header", "st-bad-json",
                     "st-offsets", "st-dtype", "st-shape", "st-class-names", "st-nan"],
    ".json": ["truncate", "flip", "empty", "garbage", "json-wrong-types", "json-list",
              "json-deep", "json-missing-spec", "json-overrides", "json-huge-number"],
    ".nn": ["truncate", "flip", "utf8-bom", "garbage"],
    ".csv-run": ["truncate", "garbage", "empty"],
}
FILES = ["x.npy", "d.npy", "d.npz", "d.csv", "w.safetensors", "run/best.safetensors",
         "run/last.safetensors", "run/resume.safetensors", "run/config.json", "tiny.nn",
         "run/metrics.csv"]


def apply_damage(scratch: Path, damage: list[tuple[str, str]], rng: random.Random) -> None:
    for name, how in damage:
        path = scratch / name
        if how == "delete":
            path.unlink(missing_ok=True)
        elif how == "directory":
            path.unlink(missing_ok=True)
            path.mkdir()
        elif path.is_file():
            path.write_bytes(damaged_bytes(name, path.read_bytes(), how, rng))


# ---- scenarios ------------------------------------------------------------------------------


def _pick(rng: random.Random, values: list[str], good: str) -> str:
    return good if rng.random() < 0.5 else rng.choice(values)


def _sets(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        name, value = rng.choice(SET_NAMES), rng.choice(SET_VALUES)
        out += ["--set", rng.choice([f"{name}={value}", f"{name}{value}", f"={value}"])]
    return out


def _options(rng: random.Random, table: dict[str, list[str]]) -> list[str]:
    out = []
    for option in rng.sample(sorted(table), rng.randint(0, min(3, len(table)))):
        values = table[option]
        out += [option] if not values else [option, rng.choice(values)]
    return out


def make_scenario(rng: random.Random) -> Scenario:
    """One hostile command line and the damage done to the workspace before it runs."""
    command = rng.choice(["train", "train", "train-resume", "eval", "eval", "predict",
                          "predict", "import-weights", "compile", "summary", "render",
                          "check"])
    spec = "tiny.nn" if rng.random() < 0.95 else rng.choice(["adir", "missing.nn", "d.csv"])
    weights = _pick(rng, WEIGHTS, "run")
    if command == "train":
        argv = ["train", spec, "-o", _pick(rng, OUT_PATHS, "out")]
        argv += _options(rng, {"--epochs": EPOCHS, "--batch": ["1", *NUMBERS],
                               "--lr": NUMBERS, "--optimizer": ["sgd(lr = 0.1)", "sgd(lr = -1)",
                                                                "nosuch", "adam(", "adam(x = 1)"],
                               "--seed": NUMBERS, "--val": NUMBERS, "--data": DATA,
                               "--early-stop": NUMBERS, "--checkpoint-every": NUMBERS,
                               "--model": ["Tiny", "Nope", ""], "--force": []})
    elif command == "train-resume":
        argv = ["train", "--resume", _pick(rng, ["run", "adir", "afile", "missing"], "run")]
        argv += _options(rng, {"--epochs": EPOCHS, "--data": DATA, "--force": []})
    elif command == "eval":
        argv = ["eval", spec, "-w", weights]
        argv += _options(rng, {"--data": DATA, "--split": ["val", "train", "all"],
                               "--format": ["text", "json"], "--model": ["Tiny", "Nope"]})
    elif command == "predict":
        argv = ["predict", spec, "-w", weights, "-i", _pick(rng, INPUTS, "x.npy")]
        argv += _options(rng, {"-o": OUT_PATHS})
    elif command == "import-weights":
        argv = ["import-weights", spec, _pick(rng, WEIGHTS[1:], "w.safetensors"),
                "-o", _pick(rng, OUT_PATHS, "imported.safetensors")]
        argv += _options(rng, {"--fresh": ["0.*", "", "[", "*"], "--seed": NUMBERS,
                               "--layout": ["afile", "missing", "d.csv", "adir"]})
    elif command == "compile":
        argv = ["compile", spec, "-o", _pick(rng, OUT_PATHS, "out.py")]
        argv += _options(rng, {"--train-script": [], "--model": ["Tiny", "Nope"]})
    elif command == "render":
        argv = ["render", spec, "-o", _pick(rng, OUT_PATHS + ["x.svg", "x.png", "x.dot"],
                                            "x.dot")]
    else:
        argv = [command, spec]
    if command not in ("train-resume", "check"):
        argv += _sets(rng)
    if rng.random() < 0.1:
        argv = ["--max-layers", rng.choice(NUMBERS)] + argv
    damage = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        name = rng.choice(FILES)
        suffix = ".csv-run" if name == "run/metrics.csv" else Path(name).suffix
        how = rng.choice(DAMAGE[suffix] + ["delete", "directory"] * (rng.random() < 0.1))
        damage.append((name, how))
    return Scenario(argv, damage, f"{command}: {' '.join(a[:40] for a in argv)} "
                                  f"damage {damage}")


class HostileError(AssertionError):
    """The command ended some way other than a clean exit 0, 1, 2 or 130."""


def run(scenario: Scenario, base: Path, rng_seed: str = "") -> str:
    """Run `scenario` in a fresh copy of `base`; 'built' for exit 0, 'diagnostics' for a
    clean refusal; raises the command's own exception (the finding) or HostileError."""
    from click.testing import CliRunner

    from nnspec.cli import main
    from nnspec.training.rundir import release_runs

    previous = os.getcwd()
    scratch = Path(tempfile.mkdtemp(prefix="hostile-", dir=base.parent))
    try:
        scratch_copy(base, scratch)
        apply_damage(scratch, scenario.damage, random.Random(rng_seed + repr(scenario.argv)))
        os.chdir(scratch)
        result = CliRunner().invoke(main, scenario.argv, catch_exceptions=True)
        error = result.exception
        if error is not None and not isinstance(error, SystemExit):
            raise error.with_traceback(result.exc_info[2])
        if "Traceback (most recent call last)" in result.output:
            raise HostileError(f"a printed traceback:\n{result.output[-3000:]}")
        if result.exit_code not in EXIT_CODES:
            raise HostileError(f"exit {result.exit_code}:\n{result.output[-2000:]}")
        return "built" if result.exit_code == 0 else "diagnostics"
    finally:
        os.chdir(previous)
        release_runs()
        shutil.rmtree(scratch, ignore_errors=True)
