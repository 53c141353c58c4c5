"""Every hostile case listed in issue 9, run as its checker runs them: the `nnspec` command in
a fresh process under `ulimit -v 4000000` and a 20 s timeout. Each must exit 0, 1 or 2 (130
for Ctrl-C) as listed, print no traceback, and name the place (`file:line`) where the
mistake has one. Prints one line per case and exits 1 if any case fails.

    python scripts/fuzz_issue9.py [-k WORD]     # run from the repository root
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MEMORY_KB = 4_000_000
SECONDS = 20


@dataclass
class Case:
    name: str
    argv: list[str]
    codes: tuple[int, ...] = (1,)
    words: str = ""  # must appear in the output
    located: bool = False  # the output names spec.nn:LINE
    stdin: str | None = None


def spec(folder: Path, name: str, text: str) -> str:
    path = folder / f"{name}.nn"
    path.write_text(text, encoding="utf-8")
    return str(path)


def model(body: str, extra: str = "") -> str:
    return f"{extra}model M {{\n  input x: [4]\n  {body}\n}}\n"


TRAINED = "model M {\n  input x: [2]\n  x -> dense(3)\n}\n" + """
train M {
  data moons(n = 64)
  loss cross_entropy
  epochs 1
}
"""


def safetensors_with(path: Path, weights: Path, metadata: dict | None = None,
                     nan: bool = False) -> str:
    data = weights.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    body = bytearray(data[8 + size:])
    if metadata is not None:
        header["__metadata__"] = metadata
    if nan:
        np.frombuffer(body, np.float32)[:] = np.nan
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(body))
    return str(path)


def cases(tmp: Path) -> list[Case]:
    nn = lambda name, text: spec(tmp, name, text)
    trained = nn("trained", TRAINED)
    run = tmp / "run"
    subprocess.run([sys.executable, "-m", "nnspec", "train", trained, "-o", str(run)],
                   capture_output=True, check=True, cwd=tmp,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    np.save(tmp / "x.npy", np.zeros((3, 2), np.float32))
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (10**11, 2)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    (tmp / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header))
                                   + header)
    (tmp / "afile").write_text("a file\n")
    (tmp / "labels.csv").write_text("a,b,y\n1,2,0\n3,4,1e23\n")
    doubling = ["block B0 { input x: [4]\n  x -> dense(4) }"]
    doubling += [f"block B{i} {{ input x: [4]\n  x -> B{i - 1} -> B{i - 1} }}"
                 for i in range(1, 31)]
    nested = [f"block N{i} {{ input x: [4]\n  x -> N{i + 1} }}" for i in range(80)]
    nested.append("block N80 { input x: [4]\n  x -> relu }")
    many = "".join(f"model M{i} {{\n  input x: [4]\n  x -> dense(4)\n}}\n" for i in range(20000))
    best = run / "best.safetensors"
    w = lambda name, **kw: safetensors_with(tmp / name, best, **kw)
    bitrot = bytearray(best.read_bytes())
    bitrot[-1] ^= 0x40  # the exponent of the last float: 2 becomes about 7e38
    (tmp / "bitrot.safetensors").write_bytes(bytes(bitrot))
    huge_dense = nn("dense_huge", TRAINED.replace("dense(3)", "dense(1000000000000)"))
    dense40 = nn("dense40", TRAINED.replace("dense(3)", "dense(10 ** 40)"))
    rows = [
        ("U1 repeat(1e9, dense)", ["check", nn("rep", model("x -> repeat(1000000000, dense(4))"))],
         (1,), "E401", True),
        ("U1 summary repeat(1e9)", ["summary", str(tmp / "rep.nn")], (1,), "E401", True),
        ("U2 repeat(10**40)", ["check", nn("rep40", model("x -> repeat(10 ** 40, relu)"))],
         (1,), "E401", True),
        ("U3 repeat(1e5, repeat(1e5))",
         ["check", nn("rep2", model("x -> repeat(100000, repeat(100000, relu))"))], (1,), "E401",
         True),
        ("U4 lstm layers=1e9", ["check", nn("lstm", "model M {\n  input x: [5, 8]\n  "
                                            "x -> lstm(8, layers = 1000000000)\n}\n")],
         (1,), "", True),
        ("U5 doubling blocks 2^30", ["check", nn("dbl", "\n".join(doubling)
                                                 + model("x -> B30"))], (1,), "E401", True),
        ("U6 TinyGPT --set layers=65536",
         ["summary", str(ROOT / "specs/tiny_gpt.nn"), "--set", "layers=65536"], (1,), "E401"),
        ("U6 BERT --set layers=65536",
         ["summary", str(ROOT / "specs/bert_base.nn"), "--set", "layers=65536"], (1,), "E401"),
        ("U7 20,000 models", ["check", nn("many", many)], (0,), ""),
        ("U8 dense(10**12) check", ["check", huge_dense], (0,), ""),
        ("U8 dense(10**12) summary", ["summary", huge_dense], (0,), ""),
        ("U8 dense(10**12) train", ["train", huge_dense, "--data", "moons", "-o",
                                    str(tmp / "r1")], (1,), "memory"),
        ("U8 dense(10**12) eval", ["eval", huge_dense, "-w", str(best)], (1,), ""),
        ("U8 dense(10**12) export", ["export", huge_dense, "-o", str(tmp / "h.onnx")], (1,), ""),
        ("U9 dense(10**40) summary", ["summary", dense40], (0,), ""),
        ("U9 dense(10**40) train", ["train", dense40, "-o", str(tmp / "r0")], (1,), "memory"),
        ("U9 dense(10**40) compile", ["compile", dense40, "-o", str(tmp / "d40.py")], (0,), ""),
        ("U10 .npy header 1e11 rows predict",
         ["predict", trained, "-w", str(run), "-i", str(tmp / "huge.npy")], (1,), ""),
        ("U10 .npy header 1e11 rows train", ["train", trained, "--data", str(tmp / "huge.npy"),
                                             "-o", str(tmp / "r2")], (1,), ""),
        ("U11 moons(n = 1e11)", ["train", trained, "--data", "moons(n = 100000000000)", "-o",
                                 str(tmp / "r3")], (1,), "n"),
        ("U12 spirals(classes = 1e9)", ["train", trained, "--data",
                                        "spirals(classes = 1000000000)", "-o", str(tmp / "r4")],
         (1,), "classes"),
        ("T1 5000-digit literal", ["check", nn("digits", model(f"x -> dense({'9' * 5000})"))],
         (1,), "E005", True),
        ("T1 5000-digit --set", ["summary", str(ROOT / "specs/tiny_gpt.nn"), "--set",
                                 f"layers={'9' * 5000}"], (1, 2), ""),
        ("T2 compile -o ''", ["compile", trained, "-o", ""], (1,), "empty"),
        ("T2 predict -o ''", ["predict", trained, "-w", str(run), "-i", str(tmp / "x.npy"),
                              "-o", ""], (1,), "empty"),
        ("T2 export -o ''", ["export", trained, "-w", str(run), "-o", ""], (1,), "empty"),
        ("T3 render -o /proc/x.svg", ["render", trained, "-o", "/proc/x.svg"], (1,), ""),
        ("T3 render -o afile/x.svg", ["render", trained, "-o", str(tmp / "afile/x.svg")], (1,),
         "not a folder"),
        ("T4 class_names not JSON", ["predict", trained, "-w",
                                     w("cn1.safetensors", metadata={"class_names": "not json"}),
                                     "-i", str(tmp / "x.npy")], (0,), ""),
        ("T4 class_names ints", ["predict", trained, "-w",
                                 w("cn2.safetensors", metadata={"class_names": "[1, 2, 3]"}),
                                 "-i", str(tmp / "x.npy")], (0,), ""),
        ("S1 compile -o /dev/null", ["compile", trained, "-o", "/dev/null"], (0,), ""),
        ("S1 compile -o -", ["compile", trained, "-o", "-"], (0,), "import torch"),
        ("S4 bit-rotted weights eval", ["eval", trained, "-w", str(tmp / "bitrot.safetensors")],
         (1,), ""),
        ("S4 all-NaN weights predict", ["predict", trained, "-w",
                                        w("nan.safetensors", nan=True), "-i",
                                        str(tmp / "x.npy")], (1,), "NaN"),
        ("M1 UTF-8 BOM", ["check", nn("bom", "\ufeff" + model("x -> relu"))], (0,), ""),
        ("M2 label 1e23", ["train", trained, "--data",
                           f'csv("{tmp / "labels.csv"}", target = "y")', "-o", str(tmp / "r5")],
         (1,), "range"),
        ("M3 directory as spec", ["check", str(tmp)], (1,), "E000"),
        ("M4 81 nested blocks", ["check", nn("nested", "\n".join(nested) + model("x -> N0"))],
         (1,), "E157", True),
        ("M5 1,000,000-char model name", ["render", nn("longname", model("x -> relu").replace(
            "model M", "model M" + "m" * 1_000_000)), "-o", str(tmp / "long.svg")], (0,), ""),
    ]
    return [Case(*row) for row in rows]


def run_case(case: Case, cwd: Path) -> tuple[bool, str, float]:
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "nnspec", *case.argv])
    start = time.monotonic()
    done = subprocess.run(["bash", "-c", f"ulimit -v {MEMORY_KB}; exec {command}"],
                          capture_output=True, text=True, cwd=cwd, timeout=SECONDS + 10,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
                          errors="replace")
    seconds = time.monotonic() - start
    out = done.stdout[-20000:] + done.stderr[-20000:]
    problems = []
    if done.returncode not in case.codes:
        problems.append(f"exit {done.returncode}, expected {case.codes}")
    if seconds > SECONDS:
        problems.append(f"took {seconds:.0f} s")
    if "Traceback" in out:
        problems.append("traceback")
    if case.words and case.words.lower() not in out.lower():
        problems.append(f"no {case.words!r} in the output")
    if case.located and ".nn:" not in done.stderr:
        problems.append("no location")
    first = next((line for line in done.stderr.splitlines() if line.strip()), "")
    return not problems, "; ".join(problems) or first[:110], seconds


def ctrl_c(cwd: Path) -> tuple[bool, str, float]:
    """Ctrl-C 0.1 s after starting (modules still loading): exit 130, no traceback."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "nnspec", "summary",
                                str(ROOT / "specs/resnet50.nn")], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=SECONDS)
    # Killed by the signal before the interpreter installed its handler (a loaded machine):
    # -2 here, 130 for a shell, as the checker sees it.
    code = 130 if process.returncode == -signal.SIGINT else process.returncode
    ok = code == 130 and "Traceback" not in err
    return ok, f"exit {code}", time.monotonic() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the cases whose name has this word")
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="nnspec-issue9-") as folder:
        tmp = Path(folder)
        for case in cases(tmp):
            if args.k.lower() not in case.name.lower():
                continue
            ok, detail, seconds = run_case(case, tmp)
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {case.name:36} {seconds:5.1f} s  {detail}",
                  flush=True)
        if args.k.lower() in "t5 ctrl-c":
            ok, detail, seconds = ctrl_c(tmp)
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {'T5 Ctrl-C at 0.1 s':36} {seconds:5.1f} s  "
                  f"{detail}")
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
