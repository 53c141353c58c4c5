"""The layer budget (E401): work is refused before it is done, and the limit can be raised."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

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


def test_doubling_blocks_are_refused_before_any_is_built():
    """Thirty blocks that each apply the one below twice: 2^30 layers, known from the text."""
    levels = ["block B0 { input x: [4]\n  x -> dense(4) }"]
    levels += [f"block B{i} {{ input x: [4]\n  x -> B{i - 1} -> B{i - 1} }}" for i in range(1, 31)]
    text = "\n".join(levels) + "\nmodel M { input x: [4]\n  x -> B30 }\n"
    start = time.perf_counter()
    analysis = analyze(text)
    assert time.perf_counter() - start < 1
    assert _codes(analysis) == ["E401"]
    assert "`B30` would build at least 1,073,741,824 layers" in analysis.diagnostics[0].message
    assert analysis.diagnostics[0].span.line == 64  # `x -> B30`, two lines per block


SIZED = """block Stack(n, wide = false) {{
  input x: [4]
  h = x -> repeat(n, dense(4))
  (h -> repeat(1000, relu)) if wide else h
}}

model M {{
  input x: [4]
  x -> Stack({n}) -> repeat(2, Stack({n}, wide = {wide}))
}}
"""


def test_the_estimate_counts_arguments_and_never_refuses_a_model_that_fits():
    """Stack(50) is 50 layers, Stack(50, wide = true) 1,050: the input and 150 or 2,150."""
    assert analyze(SIZED.format(n=50, wide="false"), max_layers=151).ok
    assert _codes(analyze(SIZED.format(n=50, wide="false"), max_layers=150)) == ["E401"]
    assert analyze(SIZED.format(n=50, wide="true"), max_layers=2_151).ok
    refused = analyze(SIZED.format(n=50, wide="true"), max_layers=2_150)
    assert _codes(refused) == ["E401"]
    assert refused.diagnostics[0].span.line == 9  # before the repeat's first copy


def test_a_repeat_after_an_error_builds_one_copy_not_every_one():
    """Downstream of an error no shape can be checked, so copying a repeat 32 times (of a
    block that repeats another 32 times) was 12,700 unchecked nodes per pass: the saved fuzz
    case hang-ir-build-build_model-677685a1 timed out under load."""
    text = """block Inner { input x: [4]
  x -> dense(4) -> relu -> dense(4)
}
block Outer { input x: [4]
  x -> repeat(32, Inner)
}
model M {
  input x: [4]
  input y: [5]
  (x + y) -> repeat(32, Outer)
}
"""
    analysis = analyze(text)
    assert _codes(analysis) == ["E305"]
    assert len(analysis.graph.nodes) < 20
    fine = analyze(text.replace("[5]", "[4]"))
    assert fine.ok and len(fine.graph.nodes) == 3 + 32 * 32 * 3


def test_a_slice_of_a_dim_past_any_machine_integer_is_counted():
    """`x[:, 1:, 1:]` of a dim of 2^70: range() overflowed (OverflowError in every command)."""
    analysis = analyze("model M {\n  input x: [4, 22, 2 ^ 70]\n  x[:, 1:, ::2]\n}\n")
    assert analysis.ok, analysis.diagnostics
    assert analysis.graph.node(analysis.graph.outputs[0]).type.shape == (4, 21, 2 ** 69)


def test_recurrent_layers_past_the_attribute_bound_are_located():
    analysis = analyze("model M {\n  input x: [5, 8]\n  x -> lstm(8, layers = 1000000000)\n}\n")
    assert _codes(analysis) == ["E163"]
    assert (analysis.diagnostics[0].span.line, analysis.diagnostics[0].span.col) == (3, 16)


def test_the_example_transformers_with_65536_layers_are_refused_at_once():
    """`--set layers=65536` on TinyGPT or BERT was minutes of building before a refusal."""
    from pathlib import Path

    from nnspec.frontend import analyze_file

    specs = Path(__file__).parent.parent / "specs"
    for name in ("tiny_gpt.nn", "bert_base.nn"):
        start = time.perf_counter()
        analysis = analyze_file(specs / name, overrides={"layers": 65536})
        assert time.perf_counter() - start < 5
        assert _codes(analysis) == ["E401"], name


def test_code_generation_refuses_a_model_past_its_own_limit_at_once_and_can_be_asked_for_more(
        tmp_path):
    from nnspec.backends.torch.codegen import MAX_GENERATED_LAYERS, generate
    from nnspec.diagnostics import SpecError
    from nnspec.spec import load_text

    spec = load_text(DEEP.format(outer=MAX_GENERATED_LAYERS // 10 + 1, inner=10))
    start = time.perf_counter()
    with pytest.raises(SpecError) as refused_early:
        generate(spec)
    assert time.perf_counter() - start < 0.5
    (diagnostic,) = refused_early.value.diagnostics
    assert diagnostic.code == "E402" and diagnostic.span.line == 1
    assert f"at most {MAX_GENERATED_LAYERS:,}" in diagnostic.message
    small = load_text(DEEP.format(outer=3, inner=10))
    assert "class Net" in generate(small, max_layers=40)
    with pytest.raises(SpecError, match="at most 20"):
        generate(small, max_layers=20)
    (tmp_path / "big.nn").write_text(DEEP.format(outer=MAX_GENERATED_LAYERS // 10 + 1, inner=10))
    refused = subprocess.run([sys.executable, "-m", "nnspec.cli", "compile", "big.nn", "-o", "-"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "E402" in refused.stderr and "--max-layers" in refused.stderr
    assert "Traceback" not in refused.stderr and not refused.stdout


def test_the_summary_table_of_a_huge_model_shows_its_ends_and_says_how_many_rows_are_not():
    from nnspec.spec import load_text
    from nnspec.summary import MAX_TABLE_ROWS, render_csv, render_table, summarize

    stages = " -> ".join(["dense(4) -> relu"] * 1500)
    summary = summarize(load_text(f"model Deep {{\n  input x: [4]\n  x -> {stages}\n}}").graph)
    start = time.perf_counter()
    table = render_table(summary)
    assert time.perf_counter() - start < 5
    assert "dense_1 " in table and "relu_1500" in table and "relu_700 " not in table
    assert f"{3001 - MAX_TABLE_ROWS:,} of 3,001 rows not shown" in table
    assert "Total params:" in table and "30,000" in table  # the totals count every row
    assert len(render_csv(summary).splitlines()) == 3001 + 1
