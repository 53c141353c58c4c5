"""`nnspec fmt`: one canonical layout for a spec, from its tokens (comments included).

The formatter only moves whitespace: it re-indents lines, spaces tokens, aligns `train`
settings and trailing comments, and breaks over-long pipelines before `->`. It keeps the
line breaks the author chose (a pipeline written one stage per line stays so), collapses runs
of blank lines and puts one blank line between top-level items. Before returning, it checks
that the result has the same tokens and the same statement ends as the input, so a
formatting bug can never change what a spec means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.syntax import parser
from nnspec.syntax.tokens import Token, tokens

LINE_LENGTH = 100
INDENT = 2
HANG = 4  # extra indent of a line inside brackets opened at the end of the line above

_BINARY = {"->", "+", "*", "/", "%", "^", "**", "@", "==", "!=", "<", "<=", ">", ">=", "="}
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}
_WORD_OPERATORS = {"and", "or", "if", "else", "as", "not"}
_OPERAND_END = {"name", "number", "string", "dtype"}


def format_text(text: str, path: str = "<string>") -> str:
    """The canonical layout of a spec. Raises SpecError if it does not parse."""
    parser.parse(text, path)  # refuse to format what is not a spec
    formatted = _Formatter(tokens(text, path)).run()
    _check_same_meaning(text, formatted, path)
    return formatted


@dataclass
class _Bracket:
    char: str
    column: int  # output column just after the bracket
    line_indent: int  # indent of the line that opened it
    hanging: bool  # nothing follows it on its line
    subscript: bool  # `x[...]` rather than a list or a shape
    arrow_column: int | None = None  # its first `->`, where later `->` lines align


@dataclass
class _Statement:
    indent: int
    value_column: int | None = None  # where the value after `name =` starts
    arrow_column: int | None = None  # the first `->` outside brackets on its first line


@dataclass
class _Line:
    tokens: list[Token]
    breaks_before: int = 0  # newlines before it (2 or more: blank lines)
    starts_statement: bool = True
    joined: bool = False  # the line above ended with `\`
    comment_column: int | None = None  # original column of a trailing comment
    text: str = ""
    indent: int = 0
    in_brackets: bool = False  # it continues inside `(` or `[` opened above


@dataclass
class _Formatter:
    source: list[Token]
    lines: list[_Line] = field(default_factory=list)
    brackets: list[_Bracket] = field(default_factory=list)
    braces: int = 0
    statement: _Statement = field(default_factory=lambda: _Statement(0))
    train_key_width: int | None = None  # inside a `train` body: the widest setting name
    in_train_header: bool = False  # between `train` and its `{`

    def run(self) -> str:
        self.split_lines()
        out: list[str] = []
        previous: _Line | None = None
        for line in self.lines:
            self.layout(line)
            if previous is not None:
                out.append(" \\\n" if line.joined else
                           "\n" * self.newlines_between(previous, line))
            out.append(line.text)
            previous = line
        return "".join(out).rstrip() + "\n" if out else ""

    # ---- lines ---------------------------------------------------------------------------

    def split_lines(self):
        """One `_Line` per line of code or comment, with what separates it from the last.
        A line starts a statement when any line break since the last code token ends one,
        or when that token cannot be followed by more of its statement (`{`, `}`, `;`)."""
        current = _Line([])
        last_code: Token | None = None
        ended = True
        for tok in self.source:
            if tok.kind in ("newline", "line_join"):
                if current.tokens:
                    self.lines.append(current)
                ended = ended or (tok.kind == "newline" and tok.ends_statement)
                current = _Line([], breaks_before=max(tok.text.count("\n"), 1),
                                joined=tok.kind == "line_join")
                continue
            if not current.tokens:
                current.starts_statement = ended or last_code is None \
                    or last_code.text in ("{", "}", ";") or tok.text == "}"
            current.tokens.append(tok)
            if tok.kind != "comment":
                last_code, ended = tok, False
        if current.tokens:
            self.lines.append(current)
        for line in self.lines:
            if line.tokens[-1].kind == "comment" and len(line.tokens) > 1:
                line.comment_column = line.tokens[-1].span.col - 1

    def newlines_between(self, previous: _Line, line: _Line) -> int:
        top_level = line.indent == 0 and line.starts_statement and not line.in_brackets
        if previous.tokens[-1].text == "{" or line.tokens[0].text == "}":
            return 1
        if not line.starts_statement:
            return 1
        if top_level and self.item_start(line) and not self.is_comment(previous):
            return 2
        if top_level and self.is_comment(line) and line.breaks_before == 1:
            return 1
        if top_level and previous.tokens[-1].text == "}":
            return 2
        return min(line.breaks_before, 2) or 1

    @staticmethod
    def is_comment(line: _Line) -> bool:
        return len(line.tokens) == 1 and line.tokens[0].kind == "comment"

    @staticmethod
    def item_start(line: _Line) -> bool:
        first = line.tokens[0]
        return first.kind == "keyword" and first.text in ("model", "block", "fn", "train")

    # ---- one line --------------------------------------------------------------------------

    def layout(self, line: _Line):
        line.in_brackets = bool(self.brackets)
        first = line.tokens[0]
        if first.kind == "comment" and len(line.tokens) == 1:
            line.indent = self.comment_indent(line)
            line.text = " " * line.indent + first.text.rstrip()
            return
        if self.brackets:
            line.starts_statement = False
        if line.starts_statement:
            indent = INDENT * (self.braces - (first.text == "}"))
            self.statement = _Statement(indent)
        else:
            indent = self.continuation_indent(first)
        line.indent = indent
        pieces = self.render(line, indent)
        line.text = self.break_long(line, pieces, indent)

    def comment_indent(self, line: _Line) -> int:
        if self.brackets:
            return self.continuation_indent(line.tokens[0])
        index = self.lines.index(line)
        following = next((ln for ln in self.lines[index + 1:] if not self.is_comment(ln)), None)
        closing = following is not None and following.tokens[0].text == "}"
        return INDENT * max(self.braces - closing, 0) if not closing else INDENT * self.braces

    def continuation_indent(self, first: Token) -> int:
        if self.brackets:
            bracket = self.brackets[-1]
            if first.text in _CLOSERS:
                return bracket.line_indent
            if first.text == "->" and bracket.arrow_column is not None:
                return bracket.arrow_column
            if bracket.hanging:
                return bracket.line_indent + HANG
            return bracket.column
        if first.text == "->" and self.statement.arrow_column is not None:
            return self.statement.arrow_column
        if self.statement.value_column is not None:
            return self.statement.value_column
        return self.statement.indent + INDENT

    def render(self, line: _Line, indent: int) -> list[tuple[str, Token]]:
        """(text before the token, token) pairs; updates the bracket state as it goes."""
        pieces: list[tuple[str, Token]] = []
        column = indent
        code = [t for t in line.tokens if t.kind != "comment"]
        train_setting = (line.starts_statement and self.train_key_width is not None
                         and code and code[0].kind == "name" and self.braces == 1)
        prev: Token | None = None
        for i, tok in enumerate(code):
            gap = "" if prev is None else self.gap(prev, tok)
            if train_setting and i == 1:
                gap = " " * (self.train_key_width - len(code[0].text) + 1)
            column += len(gap)
            pieces.append((gap, tok))
            column += len(tok.text)
            self.track(tok, column, indent, code[i + 1] if i + 1 < len(code) else None, prev,
                       line.starts_statement)
            prev = tok
        return pieces

    def track(self, tok: Token, column: int, indent: int, following: Token | None,
              prev: Token | None, first_line: bool):
        text = tok.text
        if text == "{":
            self.braces += 1
            self.train_key_width = self.train_width(tok) if self.in_train_header else None
            self.in_train_header = False
            return
        if text == "}":
            self.braces -= 1
            self.train_key_width = None
            return
        if tok.kind == "keyword" and text == "train" and prev is None:
            self.in_train_header = True
        if text in ("(", "["):
            subscript = text == "[" and prev is not None and (
                prev.kind in ("name", "dtype") or prev.text in (")", "]"))
            self.brackets.append(_Bracket(text, column, indent, following is None, subscript))
        elif text in (")", "]"):
            if self.brackets:
                self.brackets.pop()
        elif text == "->":
            holder = self.brackets[-1] if self.brackets else self.statement
            if holder.arrow_column is None:
                holder.arrow_column = column - len(text)
        elif text == "=" and not self.brackets and first_line and following is not None \
                and self.statement.value_column is None:
            self.statement.value_column = column + 1

    def train_width(self, brace: Token) -> int:
        """The widest setting name of the train body this `{` opens."""
        start = self.source.index(brace)
        width, depth, at_start = 0, 0, True
        for tok in self.source[start + 1:]:
            if tok.text in _OPENERS:
                depth += 1
            elif tok.text in _CLOSERS:
                if depth == 0:
                    break
                depth -= 1
            if tok.kind == "newline":
                at_start = at_start or tok.ends_statement
                continue
            if tok.kind == "comment":
                continue
            if at_start and depth == 0 and tok.kind == "name":
                width = max(width, len(tok.text))
            at_start = tok.text == ";"
        return width

    def gap(self, prev: Token, tok: Token) -> str:
        p, t = prev.text, tok.text
        inside = self.brackets[-1] if self.brackets else None
        if t in (",", ";") or t in (")", "]"):
            return ""
        if p in ("(", "["):
            return ""
        if t == ":":
            return ""
        if p == ":":  # `x: [4]` but `x[1:3]`
            return "" if inside is not None and inside.subscript else " "
        if p == "-" and self.unary_minus(prev):
            return ""
        if t in ("(", "[") and (prev.kind in ("name", "dtype") or p in (")", "]")):
            return "" if p not in _WORD_OPERATORS and prev.kind != "keyword" else " "
        return " "

    def unary_minus(self, minus: Token) -> bool:
        index = self.source.index(minus)
        before = next((t for t in reversed(self.source[:index])
                       if t.kind not in ("newline", "comment", "line_join")), None)
        return before is None or not (before.kind in _OPERAND_END
                                      or before.text in (")", "]", "true", "false", "none"))

    def break_long(self, line: _Line, pieces: list[tuple[str, Token]], indent: int) -> str:
        """The line's text, broken before `->`s outside brackets when it is too long."""
        text = " " * indent + "".join(gap + tok.text for gap, tok in pieces)
        comment = line.tokens[-1] if line.tokens[-1].kind == "comment" and pieces else None
        if len(text) > LINE_LENGTH and not line.in_brackets:
            text = self.wrap_arrows(pieces, indent)
        if comment is not None:
            last = text.rsplit("\n", 1)[-1]
            column = max(line.comment_column or 0, len(last) + 2)
            text += " " * (column - len(last)) + comment.text.rstrip()
        return text

    def wrap_arrows(self, pieces: list[tuple[str, Token]], indent: int) -> str:
        """Break before each `->` (outside brackets, never the line's first) whose stage
        would pass the line length; continuation lines align under the statement's first
        `->`."""
        depth, arrows = 0, []
        for i, (_, tok) in enumerate(pieces):
            if tok.text in ("(", "[", "{"):
                depth += 1
            elif tok.text in (")", "]", "}"):
                depth -= 1
            elif tok.text == "->" and depth == 0:
                arrows.append(i)
        column = self.statement.arrow_column
        if column is None or column >= LINE_LENGTH // 2:
            column = indent + HANG
        lines, current = [], " " * indent
        for i, (gap, tok) in enumerate(pieces):
            if i in arrows[1:] and len(current) + self.run_length(pieces, i) > LINE_LENGTH:
                lines.append(current)
                current, gap = " " * column, ""
            current += gap + tok.text
        lines.append(current)
        return "\n".join(lines)

    @staticmethod
    def run_length(pieces: list[tuple[str, Token]], start: int) -> int:
        """The length of the stage that starts at `pieces[start]` (up to the next `->`)."""
        depth, length = 0, 0
        for i in range(start, len(pieces)):
            gap, tok = pieces[i]
            if i > start and tok.text == "->" and depth == 0:
                break
            if tok.text in ("(", "[", "{"):
                depth += 1
            elif tok.text in (")", "]", "}"):
                depth -= 1
            length += len(gap) + len(tok.text)
        return length


def _meaning(text: str, path: str) -> tuple[list[tuple[str, bool]], list[str]]:
    """The tokens a parser sees, each with whether a statement ended before it, and the
    text of every comment."""
    code: list[tuple[str, bool]] = []
    comments: list[str] = []
    ended = False
    for tok in tokens(text, path):
        if tok.kind == "newline":
            ended = ended or tok.ends_statement
        elif tok.kind == "comment":
            comments.append(tok.text.rstrip())
        elif tok.kind != "line_join":
            code.append((tok.text, ended and bool(code)))
            ended = False
    return code, comments


def _check_same_meaning(before: str, after: str, path: str) -> None:
    if _meaning(before, path) != _meaning(after, path):
        raise AssertionError(f"nnspec fmt would change the meaning of {path}; this is a bug "
                             "in the formatter, please report it with the file")
