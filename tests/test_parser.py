"""The grammar and the AST: what docs/language.md promises about lexing, newlines,
precedence and spans, checked one rule at a time."""

from __future__ import annotations

import pytest

from nnspec.diagnostics import SpecError
from nnspec.ir.build import Builder
from nnspec.syntax import ast
from nnspec.syntax.parser import parse


def body(text: str) -> tuple:
    """The statements of a one-model program wrapping `text`."""
    program = parse("model M {\n" + text + "\n}\n")
    return program.items[0].body


def expr(text: str):
    """The AST of one expression (parsed as a top-level constant)."""
    return parse(f"K = {text}\n").items[0].value


def const(text: str):
    """The value of a constant expression, as the builder evaluates it."""
    builder = Builder(parse(f"K = {text}\n"))
    assert not builder.diagnostics, builder.diagnostics
    return builder.consts["K"]


def syntax_error(text: str):
    with pytest.raises(SpecError) as info:
        parse(text)
    return info.value.diagnostics


# ---- lexical rules ------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), (".5", 0.5), ("3.", 3.0),
                                        ("1e-3", 1e-3), ("2.5E+4", 2.5e4), ("10", 10)])
def test_numbers(text, value):
    node = expr(text)
    assert isinstance(node, ast.Number) and node.value == value
    assert type(node.value) is type(value)


def test_strings_and_escapes():
    assert expr('"same"').value == "same"
    assert expr(r'"a\"b\\c\nd\te"').value == 'a"b\\c\nd\te'
    assert expr('"données ünïcode"').value == "données ünïcode"
    [d] = syntax_error('K = "bad \\q escape"\n')
    assert (d.code, d.span.line, d.span.col) == ("E001", 1, 5)
    assert "\\q" in d.message


def test_comments_are_ignored_everywhere():
    stmts = body("  # a comment line\n  input x: [4]   # after a statement\n  x  # the output")
    assert [type(s) for s in stmts] == [ast.Input, ast.Output]


def test_lists_and_trailing_commas():
    node = expr("[3, 3,]")
    assert isinstance(node, ast.ListExpr) and [i.value for i in node.items] == [3, 3]
    program = parse("block B(a, b = 2,) {\n  input x: [a]\n  x -> dense(b,)\n}\n")
    assert [p.name for p in program.items[0].params] == ["a", "b"]


def test_dtypes():
    [tokens, values] = body("  input t: int[8]\n  input v: float[8]")
    assert tokens.type.dtype == "int" and values.type.dtype == "float"
    assert isinstance(expr("int(2.7)"), ast.Call)  # `int(` without `[` is the builtin


@pytest.mark.parametrize("word", ["model", "block", "fn", "train", "input", "as", "if", "else",
                                  "and", "or", "not", "true", "false", "none"])
def test_reserved_words_are_not_names(word):
    diagnostics = syntax_error(f"model M {{\n  input x: [4]\n  {word} = x\n  x\n}}\n")
    assert diagnostics[0].code == "E001"


# ---- newlines -----------------------------------------------------------------------------


def test_a_pipeline_continues_on_lines_that_start_with_an_arrow():
    [_, out] = body("  input x: [4]\n  x -> dense(8)\n    -> relu\n\n    -> dense(2)")
    assert [s.layer.func if isinstance(s.layer, ast.Call) else s.layer.id
            for s in out.value.stages] == ["dense", "relu", "dense"]


def test_a_line_continues_after_an_operator_or_inside_brackets():
    [_, a, out] = body("  input x: [4]\n  a = x +\n    x\n  dense(\n    8,\n    bias = false\n  )")
    assert isinstance(a.value, ast.BinOp)
    assert isinstance(out.value, ast.Call) and len(out.value.kwargs) == 1


def test_else_on_the_next_line_continues_a_conditional():
    [_, out] = body("  input x: [4]\n  x if 1 < 2\n    else x")
    assert isinstance(out.value, ast.Conditional)


def test_semicolons_and_backslashes():
    stmts = body("  input x: [4]; y = x \\\n  -> relu; y")
    assert [type(s) for s in stmts] == [ast.Input, ast.Assign, ast.Output]


def test_windows_line_endings():
    program = parse("model M {\r\n  input x: [4]\r\n  x -> relu\r\n}\r\n")
    out = program.items[0].body[1]
    assert (out.span.line, out.span.col) == (3, 3)


# ---- precedence (docs/language.md, "Operator precedence, loosest first") -------------------


def test_a_pipeline_binds_looser_than_arithmetic():
    node = expr("x + f(x) -> relu")
    assert isinstance(node, ast.Pipeline) and isinstance(node.head, ast.BinOp)


def test_a_conditional_binds_loosest():
    node = expr("x -> relu if a else y -> tanh")
    assert isinstance(node, ast.Conditional)
    assert isinstance(node.then, ast.Pipeline) and isinstance(node.otherwise, ast.Pipeline)


@pytest.mark.parametrize("text,value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 ^ 3 ^ 2", 512), ("2 ** 3", 8), ("-2 ^ 2", -4),
    ("2 ^ -1", 0.5), ("10 - 3 - 2", 5), ("7 / 2", 3.5), ("8 / 2", 4), ("7 % 3", 1),
    ("1 < 2 and 2 < 3", True), ("not 1 < 2 or 1 == 1", True), ("3 if 1 > 2 else 4", 4),
    ("max(3, 70)", 70), ("min(3, 70, 1)", 1), ("int(2.7)", 2), ("round(2.6)", 3),
    ("float(2)", 2.0), ("[1, 2] + [3]", [1, 2, 3]),
])
def test_arithmetic(text, value):
    result = const(text)
    assert result == value and type(result) is type(value)


# ---- spans --------------------------------------------------------------------------------


SPEC = """model Net(d = 8) {
  input x: [4]
  h = x -> dense(d, bias = false) as fc
  h + (h -> relu)
}
"""


def text_of(span) -> str:
    line = SPEC.splitlines()[span.line - 1]
    assert span.end_line == span.line
    return line[span.col - 1:span.end_col - 1]


def test_every_node_has_the_span_of_its_text():
    model = parse(SPEC).items[0]
    assert text_of(model.name_span) == "Net"
    assert text_of(model.params[0].span) == "d = 8"
    inp, assign, out = model.body
    assert text_of(inp.span) == "input x: [4]"
    assert text_of(inp.type.span) == "[4]"
    pipeline = assign.value
    assert text_of(pipeline.span) == "x -> dense(d, bias = false) as fc"
    stage = pipeline.stages[0]
    assert stage.label == "fc" and text_of(stage.span) == "dense(d, bias = false) as fc"
    call = stage.layer
    assert text_of(call.span) == "dense(d, bias = false)"
    assert text_of(call.func_span) == "dense"
    assert text_of(call.args[0].span) == "d"
    assert text_of(call.kwargs[0].span) == "bias = false"
    assert text_of(out.value.span) == "h + (h -> relu)"
    assert text_of(out.value.right.span) == "h -> relu"


def test_spans_count_lines_like_an_editor():
    program = parse("\n\n# comment\n\nmodel M {\n\tinput x: [4]\n  x\n}\n")
    inp = program.items[0].body[0]
    assert (inp.span.line, inp.span.col) == (6, 2)


# ---- several errors, large inputs ---------------------------------------------------------


def test_each_broken_definition_reports_its_own_syntax_error():
    text = ("block A(d) {\n  input x: [d]\n  x -> dense(d\n}\n\n"
            "model B {\n  input x: [4]\n  x -> -> relu\n}\n\n"
            "model C {\n  input x: [4]\n  x\n}\n")
    diagnostics = syntax_error(text)
    assert [(d.code, d.span.line, d.span.col) for d in diagnostics] == [
        ("E001", 3, 13), ("E001", 8, 8)]


def test_a_ten_thousand_stage_pipeline_parses_without_recursion():
    stages = "\n".join("    -> relu" for _ in range(10_000))
    [_, out] = body(f"  input x: [4]\n  x\n{stages}")
    assert len(out.value.stages) == 10_000
    assert out.value.stages[-1].span.line == 10_003  # model, input, x, then the stages


def test_deep_parentheses_parse():
    assert const("(" * 500 + "1" + ")" * 500) == 1


def test_an_empty_file_has_no_items():
    assert parse("").items == ()
    assert parse("# nothing here\n\n").items == ()


def test_parsing_leaves_the_garbage_collector_as_it_found_it():
    """The parser pauses the collector while it builds (syntax/lalr.py): it must run again
    after a parse, a syntax error and a nesting error alike, and stay off if it was off."""
    import gc

    texts = ["K = 1\n", "model M {\n  x -> -> relu\n}\n", "K = " + "(" * 1001 + "1\n"]
    assert gc.isenabled()
    for text in texts:
        try:
            parse(text)
        except SpecError:
            pass
        assert gc.isenabled()
    gc.disable()
    try:
        parse(texts[0])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_syntax_error_names_the_token_before_it():
    """The tokens the parser took are lexed again for the message only: the `->` before the
    bad `}` (the newline after it continues the statement) is the one the message names."""
    [d] = syntax_error("model M {\n  input x: [4]\n  x -> relu ->\n}\n")
    assert (d.code, d.span.line, d.span.col) == ("E001", 3, 13)
    assert "`->` needs something after it" in d.message
