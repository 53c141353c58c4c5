"""Compile time of `nnspec check` (parse + build + shape check) on generated specs of 10 to
100,000 layers, in the shapes people write:

  chain       one long pipeline: x -> dense(64) -> relu -> layernorm -> ...
  statements  one named step per line: h12 = h11 -> relu
  repeat      residual blocks expanded from `repeat(n, Residual(64))` (5 layers each)
  nested      blocks eight deep, each level applying the one below twice, repeated
  models      many small models in one file (4 layers each), all built by `check`
  long_fn     a fn whose body is one long sum (`x * 1.0 + x * 2.0 + ...`)
  concat      one `concat` of thousands of named branches

Each style runs in a fresh process. Prints the machine (CPU model, cores, Python, load),
the median wall time (time.perf_counter) of a few runs (three from 10,000 layers up), the
CPU time of the same runs (time.process_time: what the compiler costs even when other
processes share the cores), the time per layer, and the
growth from one size to the next (10x the layers should cost about 10x). Then two whole
commands as a user runs them, each a fresh process: a cold `nnspec check` of a small spec
and `nnspec summary` of a Llama-2-7B-sized model (GPT-2's spec with d 4096, 32 layers, 32
heads, vocab 32,000, ctx 4,096: 6.6 billion parameters, which the front end never touches).

Fails unless 10,000 layers take < 0.5 s and 100,000 < 5 s in every style, growth stays under
12x (judged on CPU time: on a busy machine the wall-time ratio swings by 20%), the cold
check < 0.2 s and the summary < 0.5 s. Wall times are only meaningful on a quiet machine
(load average < 1): the load is printed first.

Run: python bench/bench_compile.py
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nnspec.spec import check_text

SIZES = (10, 100, 1_000, 10_000, 100_000)
ROOT = Path(__file__).resolve().parent.parent
LLAMA_SIZED = ["summary", str(ROOT / "specs" / "gpt2_small.nn"), "--set", "d=4096", "--set",
               "layers=32", "--set", "heads=32", "--set", "vocab=32000", "--set", "ctx=4096"]
_OPS = ("dense(64)", "relu", "layernorm")


def chain(layers: int) -> str:
    stages = "\n".join(f"    -> {_OPS[i % 3]}" for i in range(layers))
    return f"model Chain {{\n  input x: [64]\n  x\n{stages}\n}}\n"


def statements(layers: int) -> str:
    lines = [f"  h{i + 1} = h{i} -> {_OPS[i % 3]}" for i in range(layers)]
    return "model Steps {\n  input h0: [64]\n" + "\n".join(lines) + f"\n  h{layers}\n}}\n"


def repeat(layers: int) -> str:
    return f"""block Residual(d) {{
  input x: [T, d]
  x + (x -> layernorm -> dense(2 * d) -> gelu -> dense(d))
}}

model Deep {{
  input x: [16, 64]
  x -> repeat({layers // 5}, Residual(64)) -> layernorm -> dense(10)
}}
"""


def nested(layers: int) -> str:
    """Blocks eight deep, each level applying the one below twice (256 layers per copy of
    the top block), repeated to the size; the remainder as copies of the 2-layer leaf."""
    levels = ["block Level0(d) {\n  input x: [d]\n  x -> dense(d) -> relu\n}\n"]
    for level in range(1, 8):
        levels.append(f"block Level{level}(d) {{\n  input x: [d]\n"
                      f"  x -> Level{level - 1}(d) -> Level{level - 1}(d)\n}}\n")
    return "".join(levels) + (f"model Nested {{\n  input x: [32]\n"
                              f"  x -> repeat({layers // 256}, Level7(32))"
                              f" -> repeat({layers % 256 // 2}, Level0(32))\n}}\n")


def models(layers: int) -> str:
    """Many small models in one file (4 layers each), every one built by `check`."""
    return "".join(f"model M{i} {{\n  input x: [16]\n  x -> dense(16) -> relu -> dense(4)"
                   " -> softmax\n}\n" for i in range(max(1, layers // 4)))


def long_fn(layers: int) -> str:
    """A fn whose body is one long expression (3 layers a term: a scalar, `*`, `+`), used
    once: a sum nests one level per term."""
    terms = " + ".join(f"x * {i + 1}.0" for i in range(max(1, layers // 3)))
    return f"fn Mix(x) {{\n  {terms}\n}}\n\nmodel Long {{\n  input x: [64]\n  x -> Mix\n}}\n"


def wide_concat(layers: int) -> str:
    """One `concat` of many branches, each its own named step."""
    count = max(1, layers // 2)
    lines = [f"  b{i} = x -> dense(4)" for i in range(count)]
    names = ", ".join(f"b{i}" for i in range(count))
    return "model Wide {\n  input x: [8]\n" + "\n".join(lines) + f"\n  concat({names})\n}}\n"


STYLES = {"chain": chain, "statements": statements, "repeat": repeat, "nested": nested,
          "models": models, "long_fn": long_fn, "concat": wide_concat}


def measure(text: str, runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `check_text` on `text`."""
    wall, cpu = [], []
    for _ in range(runs):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        diagnostics = check_text(text, "bench.nn", max_layers=1_000_000)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
        assert not diagnostics, diagnostics[:3]
    return statistics.median(wall), statistics.median(cpu)


def measure_style(style: str) -> dict[int, tuple[float, float]]:
    """Median wall and CPU seconds of every size of one style (in a child process)."""
    check_text(chain(3), "warm-up.nn")  # loads the parser tables once, as every process does
    return {size: measure(STYLES[style](size), runs=7 if size < 10_000 else 3)
            for size in SIZES}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_seconds(args: list[str], runs: int = 5) -> tuple[float, float]:
    """Median wall and CPU seconds of `nnspec ARGS` in a fresh process (imports included),
    with compiled bytecode as an installed package has it: PYTHONDONTWRITEBYTECODE would
    make every run compile each module from source (0.1 s more), so it is unset and a
    first run writes the bytecode."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-m", "nnspec.cli", *args]
    subprocess.run(command, check=True, env=env, capture_output=True)
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    load = os.getloadavg()[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
          f", load average {load:.1f}"
          + (" (busy: wall times include waiting for a core)" if load > 1 else ""))
    print(f"{'style':<11} {'layers':>7} {'wall (ms)':>10} {'cpu (ms)':>9} {'us/layer':>9} "
          f"{'x prev (wall, cpu)':>19}")
    failures = []
    for style in STYLES:
        # each style in a fresh process, as a user's `nnspec check` runs: after the larger
        # sizes of the styles before it, a process's heap made the next style's 100,000
        # layers 20-30% slower (growth 12-14x where a fresh process measures 10-11x)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            results = child.submit(measure_style, style).result()
        for size in SIZES:
            wall, cpu = results[size]
            previous = results.get(size // 10)
            growth = (f"{wall / previous[0]:.1f}, {cpu / previous[1]:.1f}" if previous
                      else "-")
            print(f"{style:<11} {size:>7} {wall * 1e3:>10.1f} {cpu * 1e3:>9.1f} "
                  f"{wall / size * 1e6:>9.1f} {growth:>19}")
        for small, large in ((1_000, 10_000), (10_000, 100_000)):
            ratio = results[large][1] / results[small][1]
            if ratio >= 12:
                failures.append(f"{style}: {large:,} layers took {ratio:.1f}x the CPU time "
                                f"of {small:,}")
        for size, target in ((10_000, 0.5), (100_000, 5.0)):
            if results[size][0] >= target:
                failures.append(f"{style}: {size:,} layers took {results[size][0]:.2f} s "
                                f"(target < {target} s)")
    small_spec = str(ROOT / "specs" / "digits_mlp.nn")
    for what, args, target in (("cold `nnspec check` of a small spec", ["check", small_spec],
                                0.2),
                               ("`nnspec summary` of a Llama-2-7B-sized model", LLAMA_SIZED,
                                0.5)):
        seconds, cpu = command_seconds(args)
        print(f"{what}: {seconds * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms cpu "
              f"(target < {target * 1e3:.0f} ms)")
        if seconds >= target:
            failures.append(f"{what} took {seconds:.2f} s (target < {target} s)")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
