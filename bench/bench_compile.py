"""Compile time of `nnspec check` (parse + build + shape check) on generated specs of 10 to
10,000 layers, in three styles people write:

  chain       one long pipeline: x -> dense(64) -> relu -> layernorm -> ...
  statements  one named step per line: h12 = h11 -> relu
  repeat      residual blocks expanded from `repeat(n, Residual(64))` (5 layers each)

Prints the median wall time (time.perf_counter) of a few runs, the CPU time of the same
runs (time.process_time: what the compiler costs even when other processes share the
cores), the time per layer, and the growth from one size to the next (10x the layers should
cost about 10x). Fails if 10,000 layers take more than 1 s, or 12x the CPU time of 1,000
(growth is judged on CPU time: on a busy machine the wall-time ratio swings by 20%).

Run: python bench/bench_compile.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from nnspec.spec import check_text

SIZES = (10, 100, 1_000, 10_000)
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


STYLES = {"chain": chain, "statements": statements, "repeat": repeat}


def measure(text: str, runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `check_text` on `text`."""
    wall, cpu = [], []
    for _ in range(runs):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        diagnostics = check_text(text, "bench.nn")
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
        assert not diagnostics, diagnostics[:3]
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    check_text(chain(3), "warm-up.nn")  # builds the parser tables once, as every process does
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores"
          + (" (busy: wall times include waiting for a core)" if load > 1 else ""))
    print(f"{'style':<11} {'layers':>7} {'wall (ms)':>10} {'cpu (ms)':>9} {'us/layer':>9} "
          f"{'x prev (wall, cpu)':>19}")
    failures = []
    for style, make in STYLES.items():
        results: dict[int, tuple[float, float]] = {}
        for size in SIZES:
            wall, cpu = measure(make(size), runs=7 if size < 10_000 else 3)
            previous = results.get(size // 10)
            results[size] = wall, cpu
            growth = (f"{wall / previous[0]:.1f}, {cpu / previous[1]:.1f}" if previous
                      else "-")
            print(f"{style:<11} {size:>7} {wall * 1e3:>10.1f} {cpu * 1e3:>9.1f} "
                  f"{wall / size * 1e6:>9.1f} {growth:>19}")
        ratio = results[10_000][1] / results[1_000][1]
        if ratio >= 12:
            failures.append(f"{style}: 10,000 layers took {ratio:.1f}x the CPU time of 1,000")
        if results[10_000][0] >= 1.0:
            failures.append(f"{style}: 10,000 layers took {results[10_000][0]:.2f} s "
                            "(target < 1 s)")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
