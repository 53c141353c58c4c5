"""The parser runs on LALR tables that ship as JSON made from the grammar (no pickle, no
cache, no Lark at run time): the file must be current, a stale file must never be used, and
the parser must read every text exactly as Lark's own LALR parser of the grammar does (the
same trees, the same positions, the same first error)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from lark import Lark, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput
from lark.lexer import Token

from nnspec.diagnostics import Source
from nnspec.syntax import lalr
from nnspec.syntax.lexing import Lexeme, statement_newlines
from nnspec.syntax.parser import AstBuilder

ROOT = Path(__file__).parent.parent
CORPUS = sorted((ROOT / "specs").glob("*.nn")) + sorted((ROOT / "tests" / "errors").glob("*.nn"))


def test_the_shipped_tables_are_made_from_the_current_grammar():
    shipped = (ROOT / "nnspec" / lalr.TABLES).read_text(encoding="utf-8")
    assert shipped == lalr.tables_json(lalr.grammar_text()), (
        "the grammar changed: run python scripts/gen_grammar_tables.py")


def test_parsing_needs_neither_lark_nor_analysing_the_grammar():
    code = ("import sys; from nnspec.syntax import parse; parse('model M {\\n input x: [4]\\n"
            " x -> relu\\n}\\n'); print(sorted(m for m in sys.modules if m.startswith('lark')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_every_rule_has_its_method_in_the_ast_builder():
    missing = sorted(name for name in lalr.tables().callbacks()
                     if not callable(getattr(AstBuilder, name, None)))
    assert not missing, f"add a method to AstBuilder (syntax/parser.py) for {missing}"


# ---- Lark's own parser as the oracle ----------------------------------------------------------


class _Postlex:
    """The statement-newline rule as a Lark post-lexer (for the oracle)."""

    always_accept = ("_NL",)

    def process(self, stream):
        lexemes = (Lexeme(t.type, str(t), t.start_pos, t.line, t.column, t.end_line,
                          t.end_column) for t in stream)
        for lexeme in statement_newlines(lexemes):
            yield Token(lexeme.type, lexeme.value, lexeme.start_pos, lexeme.line,
                        lexeme.column, lexeme.end_line, lexeme.end_column)


class _Echo:
    """A builder that gives back what the parser hands it: (rule, place, children)."""

    def __getattr__(self, name):
        def echo(span, children):
            return (name, (span.line, span.col, span.end_line, span.end_col), children)
        return echo


def _flat(node) -> list:
    """A tree of ours or of Lark's in preorder, each rule with its place and number of
    children, each token with its place (an explicit stack: a long sum is deep)."""
    out, stack = [], [node]
    while stack:
        node = stack.pop()
        if isinstance(node, Tree):
            meta = node.meta
            place = (1, 1, 1, 1) if meta.empty else (meta.line, meta.column, meta.end_line,
                                                     meta.end_column)
            node = (node.data, place, node.children)
        if isinstance(node, tuple):
            out.append((*node[:2], len(node[2])))
            stack.extend(reversed(node[2]))
        elif isinstance(node, (Lexeme, Token)):
            out.append((node.type, str(node.value), node.line, node.column))
        else:
            out.append(node)
    return out


def outcome_of_lark(parser: Lark, text: str):
    try:
        return _flat(parser.parse(text, start="start"))
    except UnexpectedCharacters as err:
        return ("char", err.pos_in_stream)
    except UnexpectedInput as err:
        token = err.token
        at = None if token.type == "$END" else token.start_pos
        return ("token", token.type, at, sorted(err.expected))


def outcome_of_ours(text: str):
    try:
        return _flat(lalr.tables().parse(text, "start", _Echo(), Source("t.nn", text)))
    except lalr.SyntaxFailure as err:
        if err.token is None:
            return ("char", err.pos)
        token = err.token
        at = None if token.type == lalr.END else token.start_pos
        return ("token", token.type, at, sorted(err.expected))


def mutations(texts: list[str], count: int, seed: int = 0):
    rng = random.Random(seed)
    pieces = ["(", ")", "[", "]", "{", "}", "->", ",", "=", "\n", "+", " as ", "#", '"', ";",
              "((a -> b))", "(1)", " if ", "[]", "\\\n"]
    for _ in range(count):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.5:
            yield text[:at] + text[at + rng.randint(1, 6):]
        else:
            yield text[:at] + rng.choice(pieces) + text[at:]


def test_the_parser_reads_every_text_as_larks_lalr_parser_does():
    oracle = Lark(lalr.grammar_text(), parser="lalr", lexer="basic", postlex=_Postlex(),
                  propagate_positions=True, maybe_placeholders=True, start=list(lalr.STARTS))
    texts = [p.read_text() for p in CORPUS]
    for text in [*texts, *mutations(texts, 300)]:
        assert outcome_of_ours(text) == outcome_of_lark(oracle, text), text


def test_a_stale_table_file_is_not_used(monkeypatch: pytest.MonkeyPatch):
    """An edited grammar (here: one more comment line) no longer matches the file's hash, so
    the grammar is analysed instead: the grammar file stays the one source of the syntax."""
    edited = lalr.grammar_text() + "\n// edited\n"
    analysed = []
    analyse = lalr.build_tables
    monkeypatch.setattr(lalr, "grammar_text", lambda: edited)
    monkeypatch.setattr(lalr, "build_tables", lambda text: analysed.append(text) or analyse(text))
    lalr.tables.cache_clear()
    try:
        fresh = lalr.tables()
        assert analysed == [edited]
        program = fresh.parse("k = 3\n", "start", AstBuilder(Source("k.nn", "k = 3\n")),
                              Source("k.nn", "k = 3\n"))
        assert program.consts[0].name == "k"
    finally:
        monkeypatch.undo()
        lalr.tables.cache_clear()
