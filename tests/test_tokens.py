"""`nnspec.syntax.tokens`: every token with comments and newlines, for a formatter. The
tokens and the blanks between them give back the file exactly, and each newline says what
the parser makes of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnspec.diagnostics import SpecError
from nnspec.syntax import lalr, tokens
from nnspec.syntax.lexing import statement_newlines

ROOT = Path(__file__).parent.parent
FILES = sorted((ROOT / "specs").glob("*.nn")) + sorted((ROOT / "tests" / "errors").glob("*.nn"))


def lexable(path: Path) -> bool:
    try:
        tokens(path.read_text())
    except SpecError:
        return False
    return True


@pytest.mark.parametrize("path", [p for p in FILES if lexable(p)], ids=lambda p: p.stem)
def test_tokens_and_the_blanks_between_them_give_back_the_file(path: Path):
    text = path.read_text()
    rebuilt, at = [], 0
    for token in tokens(text, path.name):
        gap = text[at:token.offset]
        assert set(gap) <= {" ", "\t", "\f"}, (token, gap)
        assert text[token.offset:token.offset + len(token.text)] == token.text
        line = text.split("\n")[token.span.line - 1]
        assert line[token.span.col - 1:].startswith(token.text.split("\n")[0])
        rebuilt += [gap, token.text]
        at = token.offset + len(token.text)
    assert "".join(rebuilt) + text[at:] == text and not text[at:].strip()


@pytest.mark.parametrize("path", [p for p in FILES if lexable(p)], ids=lambda p: p.stem)
def test_newlines_that_end_a_statement_are_those_the_parser_sees(path: Path):
    text = path.read_text()
    parsed = [t.start_pos for t in statement_newlines(lalr.tables().lex(text)) if t.type == "_NL"]
    assert [t.offset for t in tokens(text) if t.ends_statement] == parsed


def test_comments_newlines_and_kinds():
    text = ("model M {  # the model\n  input x: [4]\n  x -> dense(2,\n    3)\n"
            "    -> relu as out  # last\n}\n")
    got = [(t.kind, t.text, t.ends_statement) for t in tokens(text)]
    assert ("comment", "# the model", False) in got and ("comment", "# last", False) in got
    newlines = [(t.text, t.ends_statement) for t in tokens(text) if t.kind == "newline"]
    assert newlines == [("\n  ", True), ("\n  ", True), ("\n    ", False), ("\n    ", False),
                        ("\n", True), ("\n", True)]
    kinds = {t.text: t.kind for t in tokens(text)}
    assert kinds["model"] == kinds["input"] == kinds["as"] == "keyword"
    assert kinds["M"] == kinds["dense"] == "name" and kinds["2"] == "number"
    assert kinds["->"] == kinds["("] == kinds[":"] == "punctuation"


def test_a_line_join_and_a_byte_order_mark():
    text = "\ufeffk = 1 + \\\n  2\n"
    got = [(t.kind, t.text, t.span.line, t.span.col) for t in tokens(text)]
    assert got[0] == ("name", "k", 1, 1)  # the mark is not a column
    assert ("line_join", "\\\n", 1, 9) in got


def test_a_character_no_token_starts_with_is_a_located_error():
    with pytest.raises(SpecError) as info:
        tokens("k = 1\nm = 2 \u200b 3\n", "k.nn")
    [d] = info.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("E001", 2, 7)
    assert "U+200B ZERO WIDTH SPACE" in d.message
