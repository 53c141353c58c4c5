"""Which newlines end a statement: the one rule of the language the grammar cannot say.

Newlines end statements, except inside brackets, after a token that cannot end an
expression (`->`, `+`, `,`, ...) and before a line that starts with `->`, so long
pipelines can be written one stage per line. `statement_newlines` is the rule on its own
(for `tokens()` and the tokens a syntax error's message looks back on); the parser's loop
(syntax/lalr.py) applies the same rule inline, to these same sets, and
tests/test_syntax_tables.py checks it against Lark's parser fed by `statement_newlines`.
Both keep the limit on how deeply brackets nest (the builder recurses once per level).
"""

from __future__ import annotations

BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; it is not part of the text
OPENERS = {"(", "["}
CLOSERS = {")", "]"}
MAX_BRACKETS = 1000  # brackets inside one another: past this, a located E004, not a hang
# A line that starts with one of these continues the previous one. `-` is not among them:
# a statement may start with a unary minus.
CONTINUE_BEFORE = {"->", "else", "if", "+", "*", "/", "%", "^", "**", "@", "==", "!=", "<", "<=",
                   ">", ">=", "and", "or"}
CONTINUE_AFTER = {"->", "+", "-", "*", "/", "%", "^", "**", "@", ",", "=", "==", "!=", "<", "<=",
                  ">", ">=", "and", "or", "not", "if", "else", ":", "(", "["}


class Lexeme:
    """One token as the lexer finds it: its terminal's name (`NAME`, `LPAR`, `_NL`, ...), its
    text, where it starts in the text, and its first and one-past-last line and column."""

    __slots__ = ("column", "end_column", "end_line", "line", "start_pos", "type", "value")

    def __init__(self, type_: str, value: str, start_pos: int, line: int, column: int,
                 end_line: int, end_column: int):
        self.type, self.value, self.start_pos = type_, value, start_pos
        self.line, self.column, self.end_line, self.end_column = line, column, end_line, end_column

    def __repr__(self) -> str:
        return f"Lexeme({self.type}, {self.value!r}, {self.line}:{self.column})"


class TooDeep(Exception):
    """Brackets nest deeper than MAX_BRACKETS; `bracket` is the first one past the limit."""

    def __init__(self, bracket: Lexeme):
        super().__init__(bracket)
        self.bracket = bracket


def statement_newlines(stream):
    """The lexemes of `stream` without the newlines that do not end a statement; raises
    TooDeep at a bracket nested past the limit."""
    depth = 0
    pending = None
    previous = None
    for tok in stream:
        if tok.type == "_NL":
            if depth == 0 and previous is not None and previous.value not in CONTINUE_AFTER:
                pending = tok
            continue
        if pending is not None:
            if tok.value not in CONTINUE_BEFORE or tok.type == "STRING":
                yield pending
            pending = None
        if tok.value in OPENERS and tok.type != "STRING":
            depth += 1
            if depth > MAX_BRACKETS:
                raise TooDeep(tok)
        elif tok.value in CLOSERS and tok.type != "STRING":
            depth = max(0, depth - 1)
        previous = tok
        yield tok
    if pending is not None:
        yield pending
