"""The layer budget (E401): work is refused before it is done, and the limit can be raised."""

from __future__ import annotations

import subprocess
import sys
import time

from nnspec.frontend import analyze

DEEP = """model Net {{
  input x: [8]
  x -> repeat({outer}, repeat({inner}, dense(8))) -> relu
}}
"""


def _codes(analysis) -> list[str]:
    return [d.code for d in analysis.diagnostics if d.severity == "error"]


def test_a_huge_repeat_is_refused_before_its_copies_are_built():
    start = time.perf_counter()
    analysis = analyze(DEEP.format(outer=10**18, inner=10**18))
    assert time.perf_counter() - start < 2
    assert _codes(analysis) == ["E401"]
    assert "1,000,000,000,000,000,000" in analysis.diagnostics[0].message


def test_the_budget_counts_every_copy_and_can_be_raised():
    text = DEEP.format(outer=300, inner=400)  # 120,000 dense layers + input + relu
    assert _codes(analyze(text)) == ["E401"]
    analysis = analyze(text, max_layers=200_000)
    assert analysis.ok and len(analysis.graph.nodes) == 120_002


def test_a_model_just_under_the_limit_builds():
    assert analyze(DEEP.format(outer=10, inner=10), max_layers=102).ok
    assert _codes(analyze(DEEP.format(outer=10, inner=10), max_layers=101)) == ["E401"]


def test_doubling_blocks_stop_at_the_budget():
    levels = ["block B0 { input x: [4]\n  x -> dense(4) }"]
    levels += [f"block B{i} {{ input x: [4]\n  x -> B{i - 1} -> B{i - 1} }}" for i in range(1, 31)]
    text = "\n".join(levels) + "\nmodel M { input x: [4]\n  x -> B30 }\n"
    assert _codes(analyze(text, max_layers=5_000)) == ["E401"]


def test_the_cli_takes_max_layers(tmp_path):
    spec = tmp_path / "deep.nn"
    spec.write_text(DEEP.format(outer=300, inner=400))
    command = [sys.executable, "-m", "nnspec.cli"]
    refused = subprocess.run([*command, "check", str(spec)], capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 1 and "E401" in refused.stderr
    assert "--max-layers" in refused.stderr and "Traceback" not in refused.stderr
    allowed = subprocess.run([*command, "--max-layers", "200000", "check", str(spec)],
                             capture_output=True, text=True, check=False)
    assert allowed.returncode == 0, allowed.stderr


def test_a_summary_of_sizes_past_any_float_has_no_traceback(tmp_path):
    """Found by `make fuzz` (seed after-merge): parameter bytes beyond 1e308."""
    spec = tmp_path / "huge.nn"
    spec.write_text("model Huge {\n  input x: [8]\n  x -> dense(10 ^ 200) -> dense(10 ^ 200)\n}\n")
    for fmt in ("table", "md", "json", "csv"):
        done = subprocess.run([sys.executable, "-m", "nnspec.cli", "summary", str(spec),
                               "--format", fmt], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
