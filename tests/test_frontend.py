"""The one front-end entry point (`nnspec.analyze`): what it returns for good, broken and
unparseable specs, that `load`, `check` and `render` agree with it, its symbol table, and
the hostile inputs it must survive (huge literals, invisible characters, a directory,
20,000 models)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import nnspec
from nnspec.cli import main
from nnspec.diagnostics import SpecError
from nnspec.frontend import ModelCache, analyze, analyze_file, evaluate_value
from nnspec.spec import check_text, load_text
from nnspec.syntax import MAX_INT, parse, parse_value

ROOT = Path(__file__).parent.parent

TWO_MODELS = """# two models share a block
width = 8

block Mix(d, scale = 2) {
  input x: [T, d]
  h = x -> dense(scale * d) -> relu as act
  h -> dense(d)
}

model Small(d = 16) {
  input x: [4, d]
  x -> Mix(d) -> dense(width)
}

model Big {
  input x: [4, 32]
  y = x -> Mix(32)
  y -> dense(3) -> softmax
}

train Big {
  loss cross_entropy
}
"""

# conv2d gets a [4, 10] matrix where it needs [C, H, W]; `dense(7)` after it is still a node.
BROKEN = """model Bad {
  input x: [4, 6]
  h = x -> dense(10) -> conv2d(3, 3)
  h -> dense(7)
}
"""


def span_text(span) -> str:
    line = span.source.line(span.line)
    return line[span.col - 1:span.end_col - 1]


# ---- what analyze returns -----------------------------------------------------------------


def test_a_good_spec_gives_its_program_graph_and_train_section():
    analysis = analyze(TWO_MODELS, "two.nn")
    assert analysis.ok and analysis.model == "Big"  # the trained model is the default
    assert set(analysis.graphs) == {"Big"} and analysis.graph is analysis.graphs["Big"]
    assert analysis.trains["Big"].loss.name == "cross_entropy"
    assert [d.code for d in analysis.diagnostics] == ["N001"]  # the fused softmax
    assert [i.name for i in analysis.program.definitions("model")] == ["Small", "Big"]


def test_every_model_builds_each_one_and_equals_check_text():
    analysis = analyze(TWO_MODELS, "two.nn", every_model=True)
    assert set(analysis.graphs) == {"Small", "Big"} and analysis.model is None
    assert list(analysis.diagnostics) == check_text(TWO_MODELS, "two.nn")


def test_a_model_and_overrides_pick_and_change_what_is_built():
    analysis = analyze(TWO_MODELS, "two.nn", model="Small", overrides={"d": 4})
    assert analysis.ok and set(analysis.graphs) == {"Small"}
    assert analysis.graph.node(analysis.graph.inputs[0]).type.shape[-1] == 4
    assert analysis.graph.params["mix_1.dense_1.weight"].spec.shape == (8, 4)
    spec = load_text(TWO_MODELS, "two.nn", model="Small", overrides={"d": 4})
    assert spec.graph.params.keys() == analysis.graph.params.keys()


def test_a_broken_model_gives_a_partial_graph_and_sorted_errors():
    analysis = analyze(BROKEN, "bad.nn")
    assert not analysis.ok and analysis.program is not None
    assert [(n.op, n.type is not None) for n in analysis.graph.nodes] == [
        ("input", True), ("dense", True), ("conv2d", False), ("dense", False)]
    errors = analysis.errors
    assert [(d.code, d.span.line, d.span.col) for d in errors] == [("E302", 3, 25)]
    with pytest.raises(SpecError) as info:
        load_text(BROKEN, "bad.nn")
    assert tuple(info.value.diagnostics) == errors


def test_an_error_in_a_block_used_by_two_models_is_reported_once():
    text = TWO_MODELS.replace("h -> dense(d)", "h -> dense(d, bogus = 1)")
    errors = analyze(text, "two.nn", every_model=True).errors
    assert len(errors) == 1 and errors[0].span.line == 7


def test_a_syntax_error_gives_no_program_and_its_diagnostics():
    analysis = analyze("model M {\n  input x: [4]\n  x -> dense(3\n}\n", "m.nn")
    assert analysis.program is None and analysis.graphs == {} and analysis.graph is None
    assert [(d.code, d.span.line, d.span.col) for d in analysis.errors] == [("E001", 3, 13)]
    assert analysis.symbols == ()


def test_an_unknown_override_is_e104_and_the_model_is_still_built():
    analysis = analyze(TWO_MODELS, "two.nn", model="Small", overrides={"dd": 4})
    assert [d.code for d in analysis.errors] == ["E104"]
    assert "did you mean `d`" in analysis.errors[0].hint
    assert analysis.graph is not None and analysis.graph.nodes


def test_no_model_and_an_unknown_model_are_diagnostics():
    assert [d.code for d in analyze("k = 3\n", "k.nn").errors] == ["E103"]
    assert [d.code for d in analyze(TWO_MODELS, "two.nn", model="Nope").errors] == ["E102"]


def test_render_of_a_broken_spec_draws_the_partial_graph(tmp_path: Path):
    spec = tmp_path / "bad.nn"
    spec.write_text(BROKEN)
    result = CliRunner().invoke(main, ["render", str(spec), "-o", str(tmp_path / "bad.dot")])
    assert result.exit_code == 1, result.output
    assert "drew what could be built" in result.output
    dot = (tmp_path / "bad.dot").read_text()
    assert "conv2d" in dot and dot.count("dense") >= 2


def test_analyze_is_exported():
    assert nnspec.analyze is analyze
    assert {"analyze", "Analysis", "Symbol"} <= set(nnspec.__all__)


# ---- the symbol table ---------------------------------------------------------------------


def test_symbols_name_every_definition_and_value_with_its_span():
    analysis = analyze(TWO_MODELS, "two.nn")
    got = {(s.kind, s.name, s.parent): s for s in analysis.symbols}
    expected = {("const", "width", None), ("block", "Mix", None), ("param", "d", "Mix"),
                ("param", "scale", "Mix"), ("input", "x", "Mix"), ("value", "h", "Mix"),
                ("label", "act", "Mix"), ("model", "Small", None), ("param", "d", "Small"),
                ("input", "x", "Small"), ("model", "Big", None), ("input", "x", "Big"),
                ("value", "y", "Big")}
    assert set(got) == expected
    for (_, name, _), symbol in got.items():
        assert span_text(symbol.span) == name, symbol
    assert got[("value", "h", "Mix")].span.line == 6
    assert got[("label", "act", "Mix")].span.col == 40
    big = got[("model", "Big", None)].extent
    assert (big.line, big.col, big.end_line) == (15, 1, 19)  # `model Big {` to its `}`


# ---- one value on its own (--set, --optimizer, --data) -----------------------------------


def test_parse_value_reads_one_expression_located_in_its_own_text():
    call = parse_value("sgd(lr = 0.1, momentum = 0.9)", "--optimizer")
    assert call.func == "sgd" and [k.name for k in call.kwargs] == ["lr", "momentum"]
    assert call.span.source.text == "sgd(lr = 0.1, momentum = 0.9)"
    assert call.span.source.path == "--optimizer"
    with pytest.raises(SpecError) as info:
        parse_value("moons(n = ", "--data")
    [d] = info.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("E001", 1, 6)
    with pytest.raises(SpecError) as info:
        parse_value("4 *", "--set d")
    assert "the value ends after `*`" in info.value.diagnostics[0].message


def test_evaluate_value_computes_like_a_constant():
    assert evaluate_value("4 * 16") == 64
    assert evaluate_value('"gelu"') == "gelu"
    assert evaluate_value("[1, 8, 8]") == [1, 8, 8]
    with pytest.raises(SpecError) as info:
        evaluate_value("2 * wdith", "--set d")
    assert info.value.diagnostics[0].span.col == 5


@pytest.mark.parametrize("value, phrase", [
    ("[4, 4", "this `[` is never closed\n    [4, 4\n    ^"),
    ("9" * 5000, "is too large"),
    ("1e999", "the number 1e999 is too large"),
    ("wdith", "unknown name `wdith`\n    wdith\n    ^~~~~"),
])
def test_a_bad_set_value_is_a_usage_error_pointing_into_it(value, phrase):
    result = CliRunner().invoke(main, ["summary", str(ROOT / "specs" / "digits_mlp.nn"),
                                       "--set", f"hidden={value}"])
    assert result.exit_code == 2, result.output
    assert phrase in result.output and "Traceback" not in result.output


# ---- hostile input ------------------------------------------------------------------------


def model_with(literal: str) -> str:
    return f"model M {{\n  input x: [4]\n  x -> dense({literal})\n}}\n"


def test_integer_literals_are_bounded_with_a_located_error():
    assert parse(f"k = {MAX_INT}\n").items[0].value.value == 2**63 - 1
    for literal in (str(MAX_INT + 1), "9" * 5000, "0" * 30 + "1" * 20):
        [d] = check_text(model_with(literal), "big.nn")
        assert (d.code, d.span.line, d.span.col) == ("E005", 3, 14), d
        assert "too large" in d.message and len(d.message) < 80
    assert not [d for d in check_text(model_with("0" * 40 + "3"), "z.nn")
                if d.severity == "error"]


def test_float_literals_that_overflow_are_errors():
    [d] = check_text(model_with("1e999"), "big.nn")
    assert (d.code, d.span.col) == ("E005", 14)
    assert parse("k = 1e-999\n").items[0].value.value == 0.0  # underflow is just zero


def test_a_huge_literal_does_not_crash_any_command(tmp_path: Path):
    spec = tmp_path / "huge.nn"
    spec.write_text(model_with("9" * 5000))
    for command in ("check", "summary", "render", "compile"):
        out = {"render": ["-o", str(tmp_path / "o.svg")], "compile": ["-o", str(tmp_path / "o.py")]}
        result = CliRunner().invoke(main, [command, str(spec), *out.get(command, [])])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), command
        assert "E005" in result.output


def test_a_leading_byte_order_mark_is_accepted_and_columns_do_not_move(tmp_path: Path):
    text = "model M {\n  input x: [4]\n  x -> dense(3) -> rleu\n}\n"
    plain = check_text(text, "m.nn")
    assert check_text("\ufeff" + text, "m.nn") == plain
    first_line = check_text("\ufeffmodel M { input x: [4]; x -> rleu }", "m.nn")
    assert [(d.code, d.span.col) for d in first_line] == [("E100", 30)]
    spec = tmp_path / "bom.nn"
    spec.write_bytes(b"\xef\xbb\xbf" + (ROOT / "specs" / "digits_mlp.nn").read_bytes())
    result = CliRunner().invoke(main, ["check", str(spec)])
    assert result.exit_code == 0 and ": ok" in result.output


@pytest.mark.parametrize("char, name", [("\u200b", "U+200B ZERO WIDTH SPACE (invisible)"),
                                        ("\u00a0", "U+00A0 NO-BREAK SPACE that looks like a"),
                                        ("\u2060", "U+2060 WORD JOINER"),
                                        ("\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE")])
def test_invisible_characters_are_named(char, name):
    [d] = check_text(f"model M {{\n  input x: [4]\n  x ->{char}relu\n}}\n", "m.nn")
    assert (d.code, d.span.line, d.span.col) == ("E001", 3, 7)
    assert name in d.message and "delete it" in d.hint


def test_a_directory_as_the_spec_is_e000_exit_1(tmp_path: Path):
    assert [d.code for d in analyze_file(tmp_path).errors] == ["E000"]
    for command in ("check", "summary", "render", "compile"):
        result = CliRunner().invoke(main, [command, str(tmp_path)])
        assert result.exit_code == 1, (command, result.output)
        assert "error[E000]: cannot read" in result.output


def many_models(count: int) -> str:
    parts = []
    for i in range(count):
        parts.append(f"model M{i} {{\n  input x: [4]\n  x -> dense(2)\n}}\n")
        if i % 10 == 0:
            parts.append(f"train M{i} {{ loss mse }}\n")
    return "".join(parts)


@pytest.mark.slow
def test_checking_many_models_is_linear():
    """A file of 20,000 models took minutes: each model looked through every item for its
    train section (and picking the default model compared each train with each model), and
    a syntax error re-parsed each definition behind a run of newlines as long as the file
    before it. Twenty times the models must cost about twenty times the CPU (up to 26
    measured on a busy machine); the old code took 47 and 75 times, more for larger files."""
    def cpu(run, text):
        start = time.process_time()
        run(text)
        return time.process_time() - start

    small, large = many_models(250), many_models(5000)
    broken = "model Bad {\n  input x: [4]\n  x -> dense(3\n}\n"
    for run in (lambda t: check_text(t, "m.nn"), lambda t: check_text(t + broken, "m.nn")):
        ratio = min(cpu(run, large) for _ in range(2)) / min(cpu(run, small) for _ in range(3))
        assert ratio < 35, ratio


def test_a_long_flat_sum_compiles_in_a_fn_and_a_model():
    """A sum of 3,000 terms nests 3,000 left operands deep; the evaluator and the layer
    estimate walk it as a list, so it builds (it was E004 from 350 terms on), its layer
    count is exact and its first bad term is still located."""
    terms = " + ".join(f"x * {i + 1}.0" for i in range(3000))
    text = (f"fn Mix(x) {{\n  {terms}\n}}\n"
            "model M {\n  input x: [8]\n  x -> Mix -> dense(2)\n}\n")
    graph = analyze(text, "sum.nn").graph
    assert graph is not None
    assert sum(n.op == "add" for n in graph.nodes) == 2999
    broken = text.replace("x * 1500.0", "x * dense(4)")
    (error,) = analyze(broken, "sum.nn").errors
    assert error.code == "E135" and error.span.line == 2  # a layer, not a value


def _built(analysis):
    return (analysis.diagnostics, sorted(analysis.trains),
            {name: [(n.name, n.op, n.type, n.span) for n in graph.nodes]
             for name, graph in analysis.graphs.items()})


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.nn")), ids=lambda p: p.name)
def test_reanalysing_after_a_one_line_edit_reuses_and_equals_a_fresh_check(path: Path):
    """What an editor does on each keystroke: one line of the spec changes (a number, a
    comment, a mistake), and the analysis reusing the unchanged models must give exactly
    what a fresh one gives, within 50 ms of CPU (a generous bound: ~3-20 ms measured)."""
    text = path.read_text(encoding="utf-8")
    cache = ModelCache()
    analyze(text, str(path), every_model=True, reuse=cache)
    lines = text.split("\n")
    for index in sorted({len(lines) // 3, len(lines) // 2, 2 * len(lines) // 3}):
        line = lines[index]
        for edit in (line + "  # edited", line.replace("4", "5", 1), line + " ->"):
            edited = "\n".join([*lines[:index], edit, *lines[index + 1:]])
            start = time.process_time()
            reused = analyze(edited, str(path), every_model=True, reuse=cache)
            seconds = time.process_time() - start
            assert _built(reused) == _built(analyze(edited, str(path), every_model=True))
            assert seconds < 0.05, (edit, seconds)


def test_an_edit_in_one_model_reuses_the_other_and_a_block_edit_rebuilds_its_users():
    cache = ModelCache()
    first = analyze(TWO_MODELS, "two.nn", every_model=True, reuse=cache)
    names = sorted(first.graphs)
    assert len(names) == 2
    last = first.program.definitions("model")[-1]
    line = last.span.end_line - 2  # a line of the last model's body (0-based: the one before)
    lines = TWO_MODELS.split("\n")
    lines[line] += "  # edited"
    second = analyze("\n".join(lines), "two.nn", every_model=True, reuse=cache)
    untouched = [n for n in names if n != last.name]
    assert all(second.graphs[n] is first.graphs[n] for n in untouched)
    assert second.graphs[last.name] is not first.graphs[last.name]
    block_edit = TWO_MODELS.replace("scale = 2", "scale = 3")
    third = analyze(block_edit, "two.nn", every_model=True, reuse=cache)
    assert _built(third) == _built(analyze(block_edit, "two.nn", every_model=True))
    assert all(third.graphs[n] is not second.graphs[n] for n in names)  # both use `Mix`


def test_a_planted_pickle_in_the_cache_directory_never_runs(tmp_path: Path):
    """The parser's tables ship as JSON; nothing is read from or written to the user's cache
    directory, so a pickle planted where Lark's cache used to be is never loaded."""
    cache = tmp_path / "cache"
    (cache / "nnspec").mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    payload = (b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    for name in (f"grammar-py{sys.version_info[0]}{sys.version_info[1]}.lark-tables",
                 "grammar.lark-tables"):
        (cache / "nnspec" / name).write_bytes(payload)
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(cache), "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "nnspec.cli", "check",
                             str(ROOT / "specs" / "digits_mlp.nn")], capture_output=True,
                            text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert sorted(p.name for p in (cache / "nnspec").iterdir()) == sorted(
        p.name for p in (cache / "nnspec").iterdir() if p.read_bytes() == payload)
    assert not (tmp_path / ".cache").exists()
