"""The parser's LALR tables ship as JSON made from the grammar (no pickle, no cache): the
file must be current, must parse exactly like tables analysed from the grammar, and a
stale file must never be used."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lark import Lark, Tree
from lark.exceptions import UnexpectedInput

from nnspec.syntax import lalr
from nnspec.syntax.lexing import Newlines

ROOT = Path(__file__).parent.parent
CORPUS = sorted((ROOT / "specs").glob("*.nn")) + sorted((ROOT / "tests" / "errors").glob("*.nn"))


def test_the_shipped_tables_are_made_from_the_current_grammar():
    shipped = (ROOT / "nnspec" / lalr.TABLES).read_text(encoding="utf-8")
    assert shipped == lalr.tables_json(lalr.grammar_text()), (
        "the grammar changed: run python scripts/gen_grammar_tables.py")


def test_the_parser_is_loaded_from_the_shipped_tables():
    assert lalr.parser().source_path == "<deserialized>"  # Lark's mark for loaded tables


def flat(tree: Tree) -> list:
    """The tree in preorder, each node with its rule or token and position (an explicit
    stack: a thousand-term sum is a thousand levels deep)."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Tree):
            out.append((node.data, len(node.children)))
            stack.extend(reversed(node.children))
        else:
            out.append(node if node is None else (node.type, str(node), node.line, node.column))
    return out


def outcome(parser: Lark, text: str):
    """The parse tree, or where and why the parse failed."""
    try:
        return flat(parser.parse(text, start="start"))
    except UnexpectedInput as err:
        return (type(err).__name__, err.line, err.column,
                sorted(getattr(err, "expected", None) or ()))


def mutations(texts: list[str], count: int, seed: int = 0):
    rng = random.Random(seed)
    pieces = ["(", ")", "[", "]", "{", "}", "->", ",", "=", "\n", "+", " as ", "#", '"', ";"]
    for _ in range(count):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.5:
            yield text[:at] + text[at + rng.randint(1, 6):]
        else:
            yield text[:at] + rng.choice(pieces) + text[at:]


def test_shipped_tables_parse_exactly_like_the_analysed_grammar():
    analysed = Lark(lalr.grammar_text(), postlex=Newlines(), **lalr.OPTIONS)
    shipped = lalr.parser()
    texts = [p.read_text() for p in CORPUS]
    for text in [*texts, *mutations(texts, 300)]:
        assert outcome(shipped, text) == outcome(analysed, text), text


def test_a_stale_table_file_is_not_used(monkeypatch: pytest.MonkeyPatch):
    """An edited grammar (here: one more comment line) no longer matches the file's hash, so
    the grammar is analysed instead: the grammar file stays the one source of the syntax."""
    edited = lalr.grammar_text() + "\n// edited\n"
    monkeypatch.setattr(lalr, "grammar_text", lambda: edited)
    lalr.parser.cache_clear()
    try:
        fresh = lalr.parser()
        assert fresh.source_path != "<deserialized>"
        assert fresh.parse("k = 3\n", start="start").data == "start"
    finally:
        monkeypatch.undo()
        lalr.parser.cache_clear()
    assert lalr.parser().source_path == "<deserialized>"
