"""Every token of a spec, comments and newlines included, for tools that keep the text's
layout (a formatter, an editor's highlighting) rather than its meaning.

The parser never sees comments or the newlines that continue a statement; here they are
tokens with spans, and each newline says whether it ends a statement (the rule the parser
applies, syntax/lexing.py). Between two tokens there are only spaces, tabs and form feeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nnspec.diagnostics import Source, Span, SpecError
from nnspec.syntax import lalr
from nnspec.syntax.errors import nesting_diagnostic, syntax_diagnostic
from nnspec.syntax.lexing import BOM, Lexeme, TooDeep, statement_newlines

_KINDS = {"NAME": "name", "NUMBER": "number", "STRING": "string", "DTYPE": "dtype",
          "COMMENT": "comment", "_NL": "newline"}
_LINE_JOIN = "\\"


TokenKind = Literal["name", "number", "string", "dtype", "keyword", "punctuation", "comment",
                   "newline", "line_join"]


@dataclass(frozen=True)
class Token:
    """`kind` is one of name, number, string, dtype, keyword, punctuation, comment, newline
    and line_join (a `\\` that continues the line); `text` is the token's exact text (a
    newline token holds the line break and the next line's indentation, several lines when
    blank lines follow); `offset` is where it starts in the text."""

    kind: TokenKind
    text: str
    span: Span
    offset: int
    ends_statement: bool = False  # newlines only: the parser reads it as the end of a statement


def tokens(text: str, path: str = "<string>") -> list[Token]:
    """The tokens of `text` in order; raise SpecError at a character no token starts with.
    A leading byte-order mark is skipped, as the parser skips it (offsets count without it)."""
    text = text.removeprefix(BOM)
    source = Source(path, text)
    try:
        raw = list(lalr.tables().lex(text, keep_ignored=True))
    except lalr.SyntaxFailure as err:
        raise SpecError([syntax_diagnostic(err, text, source)]) from None
    raw = [tok for tok in raw if _kind(tok) is not None]
    meaningful = [tok for tok in raw if tok.type != "COMMENT" and _kind(tok) != "line_join"]
    try:
        kept = {tok.start_pos for tok in statement_newlines(meaningful) if tok.type == "_NL"}
    except TooDeep as err:
        raise SpecError([nesting_diagnostic(err, source)]) from None
    return [Token(_kind(tok), tok.value, Span(source, tok.line, tok.column, tok.end_line,
                                              tok.end_column), tok.start_pos,
                  tok.type == "_NL" and tok.start_pos in kept)
            for tok in raw]


def _kind(tok: Lexeme) -> str | None:
    """None for the spaces between tokens, which the positions already tell."""
    if tok.type in _KINDS:
        return _KINDS[tok.type]
    value = tok.value
    if value.startswith(_LINE_JOIN):
        return "line_join"
    if not value.strip():
        return None
    return "keyword" if value.isalpha() else "punctuation"
