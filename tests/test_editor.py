"""Editor support: the Pygments lexer, the TextMate grammar, `nnspec fmt` and the language
server's answers (an end-to-end LSP session is in tests/test_lsp.py)."""

from __future__ import annotations

import importlib.util
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Error

from nnspec.diagnostics import SpecError
from nnspec.formatter import format_text
from nnspec.frontend import analyze
from nnspec.lsp import queries

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.nn"))
FUZZ = ROOT / "tests" / "fuzz"


def _fuzz_module(name: str):
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---- highlighting ----------------------------------------------------------------------------


def test_the_lexer_is_registered_for_pygments_by_name_and_file_name():
    assert get_lexer_by_name("nnspec").name == "nnspec"
    assert get_lexer_for_filename("model.nn").name == "nnspec"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_example_spec_highlights_without_error_tokens(path):
    lexer = get_lexer_by_name("nnspec")
    kinds = [kind for kind, _ in lexer.get_tokens(path.read_text())]
    assert Error not in kinds


def test_pygmentize_highlights_a_spec_from_the_command_line():
    result = subprocess.run(["pygmentize", "-l", "nnspec", "-f", "html", str(SPECS[0])],
                            capture_output=True, text=True, check=True)
    assert '<span class="k' in result.stdout and "err" not in result.stdout


def test_the_lexer_marks_ops_keywords_labels_and_comments():
    lexer = get_lexer_by_name("nnspec")
    tokens = {text: str(kind) for kind, text in lexer.get_tokens(
        "model M {  # c\n  input x: [4]\n  x -> dense(4, bias = false) as proj\n}\n")}
    assert tokens["model"] == "Token.Keyword.Declaration"
    assert tokens["M"] == "Token.Name.Class"
    assert tokens["dense"] == "Token.Name.Builtin"
    assert tokens["proj"] == "Token.Name.Label"
    assert tokens["bias"] == "Token.Name.Attribute"
    assert tokens["# c"] == "Token.Comment.Single"


def test_the_textmate_grammar_is_generated_from_the_current_catalogue():
    spec = importlib.util.spec_from_file_location("gen_textmate",
                                                  ROOT / "scripts" / "gen_textmate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.GRAMMAR.read_text() == module.generate(), \
        "stale: run python scripts/gen_textmate.py"


# ---- nnspec fmt ------------------------------------------------------------------------------


UGLY = """# header
x0=3
block  B(d,heads=4){
input x:[T,d]
y=x->dense( d )->relu   # trailing
  # inner comment
z = -y*2+ y^2 if d>2 else y
x+z->layernorm as ln->dense(d, bias=false) -> relu -> dense(d, bias=false) -> relu -> dense(d) -> relu
}



model M(d=8) {
    input x: [4, d]
    h = concat(x,
        x, dim = -1)
    h -> B(d)   -> dense(  2)
}
train M {
  data moons
  loss cross_entropy
  optimizer adam(lr=1e-3)
  early_stop 3
}
"""

PRETTY = """# header
x0 = 3

block B(d, heads = 4) {
  input x: [T, d]
  y = x -> dense(d) -> relu  # trailing
  # inner comment
  z = -y * 2 + y ^ 2 if d > 2 else y
  x + z -> layernorm as ln -> dense(d, bias = false) -> relu -> dense(d, bias = false) -> relu
        -> dense(d) -> relu
}

model M(d = 8) {
  input x: [4, d]
  h = concat(x,
             x, dim = -1)
  h -> B(d) -> dense(2)
}

train M {
  data       moons
  loss       cross_entropy
  optimizer  adam(lr = 1e-3)
  early_stop 3
}
"""


def test_fmt_gives_the_canonical_layout():
    assert format_text(UGLY) == PRETTY


def test_fmt_keeps_a_line_join_that_the_statement_needs():
    text = "model M {\n  input x: [4]\n  y = x \\\n    - x\n  y\n}\n"
    out = format_text(text)
    assert "\\\n" in out and analyze(out).ok
    assert format_text(out) == out


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_example_specs_are_formatted_and_formatting_keeps_their_ir(path):
    text = path.read_text()
    formatted = format_text(text, str(path))
    assert formatted == text, f"run nnspec fmt {path.relative_to(ROOT)}"
    squeezed = format_text(_squeezed(text), str(path))
    assert _ir(squeezed) == _ir(text)


def _squeezed(text: str) -> str:
    """The same spec with its layout spoiled: indentation dropped, spaces around `=` gone."""
    lines = [line.strip() for line in text.split("\n")]
    return "\n".join(line.replace(" = ", "=") if "#" not in line and '"' not in line else line
                     for line in lines)


def _ir(text: str):
    analysis = analyze(text, every_model=True)
    assert analysis.ok, analysis.diagnostics
    return {name: [(n.name, n.op, n.inputs, n.type, tuple(sorted(n.attrs.items())))
                   for n in graph.nodes] for name, graph in analysis.graphs.items()}


def test_fmt_is_idempotent_and_keeps_the_meaning_of_random_and_mutated_specs():
    generate, mutate = _fuzz_module("generate"), _fuzz_module("mutate")
    rng = random.Random(7)
    formatted = 0
    for i in range(300):
        text, _ = generate.generated(rng) if i % 2 else mutate.mutated(rng)
        try:
            once = format_text(text)
        except (SpecError, RecursionError):
            continue
        assert format_text(once) == once, text
        before, after = analyze(text, every_model=True), analyze(once, every_model=True)
        assert [(d.code, d.span.line if d.span else None) for d in before.diagnostics] == \
            [(d.code, d.span.line if d.span else None) for d in after.diagnostics] \
            or [d.code for d in before.diagnostics] == [d.code for d in after.diagnostics]
        if before.ok:
            assert _ir(once) == _ir(text)
        formatted += 1
    assert formatted > 100


def test_fmt_check_exits_1_with_a_diff_and_changes_nothing(tmp_path):
    path = tmp_path / "ugly.nn"
    path.write_text(UGLY)
    result = _nnspec("fmt", "--check", str(path))
    assert result.returncode == 1
    assert "-x0=3" in result.stdout and "+x0 = 3" in result.stdout
    assert "1 file would be reformatted" in result.stderr
    assert path.read_text() == UGLY


def test_fmt_rewrites_in_place_then_check_passes(tmp_path):
    path = tmp_path / "ugly.nn"
    path.write_text(UGLY)
    assert _nnspec("fmt", str(path)).returncode == 0
    assert path.read_text() == PRETTY
    assert _nnspec("fmt", "--check", str(path)).returncode == 0


def test_fmt_of_stdin_writes_stdout_and_a_broken_spec_is_a_located_error():
    result = _nnspec("fmt", "-", stdin="model M { input x: [3]; x->relu }\n")
    assert result.returncode == 0 and result.stdout == "model M { input x: [3]; x -> relu }\n"
    result = _nnspec("fmt", "-", stdin="model M { input x: [3; x }\n")
    assert result.returncode == 1 and "<stdin>:1:22: error[E001]" in result.stderr


def _nnspec(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "nnspec", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, check=False)


# ---- language server queries -----------------------------------------------------------------

TINY_GPT = (ROOT / "specs" / "tiny_gpt.nn").read_text()


def _position(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    index = text.index(needle) + offset
    line = text.count("\n", 0, index) + 1
    return line, index - text.rfind("\n", 0, index)


def test_hover_on_a_layer_gives_its_shape_parameters_macs_and_the_op_doc():
    analysis = analyze(TINY_GPT, every_model=True)
    text = queries.hover(analysis, *_position(TINY_GPT, "attention(heads", 2))
    assert "**[64, 64]**" in text and "blocks.0.attn" in text
    assert "parameters: 16,640" in text and "MACs per sample: 1,572,864" in text
    assert "2 layers" in text  # the block is used twice
    assert "**attention**" in text and "`causal`" in text


def test_hover_on_a_named_value_a_parameter_and_a_repeat():
    analysis = analyze(TINY_GPT, every_model=True)
    value = queries.hover(analysis, *_position(TINY_GPT, "h = (tokens"))
    assert "**[64, 64]**" in value and "add" in value
    param = queries.hover(analysis, *_position(TINY_GPT, "heads, causal"))
    assert "parameter `heads` of `TransformerBlock`" in param and "= 4 in `blocks.1`" in param
    repeat = queries.hover(analysis, *_position(TINY_GPT, "repeat(layers", 1))
    assert "repeat × 2" in repeat and "parameters: 99,968" in repeat


def test_go_to_definition_of_a_block_a_value_and_a_label():
    analysis = analyze(TINY_GPT, every_model=True)
    block = queries.definition(analysis, *_position(TINY_GPT, "TransformerBlock(d, heads))"))
    assert (block.line, block.col) == _position(TINY_GPT, "TransformerBlock(d, heads, ff")
    tied = queries.definition(analysis, *_position(TINY_GPT, "tie = wte", 6))
    assert block.line < tied.line and (tied.line, tied.col) == _position(TINY_GPT, "wte)")


def test_completion_offers_ops_the_arguments_of_the_open_call_and_train_choices():
    analysis = analyze(TINY_GPT, every_model=True)
    inside = queries.completions(analysis, TINY_GPT, *_position(TINY_GPT, "heads, causal", 7))
    labels = [c.label for c in inside]
    assert labels[:2] == ["heads =", "causal ="] and "dense" in labels
    assert "TransformerBlock" in labels
    optimizers = queries.completions(analysis, TINY_GPT, *_position(TINY_GPT, "adamw", 0))
    assert {c.label for c in optimizers} >= {"adam", "adamw", "sgd"}


def test_queries_answer_on_a_spec_with_errors():
    text = "model M {\n  input x: [8]\n  x -> dense(4) -> bogus\n}\n"
    analysis = analyze(text, every_model=True)
    assert [d.code for d in analysis.diagnostics] == ["E100"]
    assert "**[4]**" in queries.hover(analysis, 3, 8)


def test_spec_code_in_the_docs_is_fenced_as_nnspec_and_highlights_cleanly():
    lexer = get_lexer_by_name("nnspec")
    blocks = [block for path in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
              for block in re.findall(r"^```nnspec\n(.*?)^```", path.read_text(),
                                      re.MULTILINE | re.DOTALL)]
    assert len(blocks) >= 15
    for block in blocks:
        assert Error not in [kind for kind, _ in lexer.get_tokens(block)], block
