"""Diagnostics are values: every stage collects them with spans; only the CLI renders them.

A `Diagnostic` knows where (a `Span`), what (a stable code and a sentence) and how to fix
it (an optional hint and related notes, e.g. where a bad shape came from).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter


@dataclass(frozen=True)
class Source:
    """The text of one spec file, kept so any later stage can quote the user's line."""

    path: str
    text: str

    @cached_property
    def lines(self) -> list[str]:
        """Split once (messages quote lines of large specs thousands of times), and only at
        `\n` as the lexer counts lines: `str.splitlines` also splits at form feeds and
        other separators, which would quote the wrong line."""
        return [line.removesuffix("\r") for line in self.text.split("\n")]

    def line(self, number: int) -> str:
        lines = self.lines
        return lines[number - 1] if 0 < number <= len(lines) else ""


class Span:
    """Where in a file a piece of text is: its first line and column and one past its last
    (1-based), as an editor counts them. Immutable, and equal to a span of the same place
    whatever its source.

    The parser makes one per token and rule, so the fields are plain slots that `__init__`
    fills directly, read through read-only properties: a frozen dataclass would fill each
    through its guarded `__setattr__`, twice the cost of the whole object."""

    __slots__ = ("_col", "_end_col", "_end_line", "_line", "_source")

    def __init__(self, source: Source, line: int, col: int, end_line: int, end_col: int):
        self._source, self._line, self._col = source, line, col
        self._end_line, self._end_col = end_line, end_col

    source = property(attrgetter("_source"))
    line = property(attrgetter("_line"))
    col = property(attrgetter("_col"))
    end_line = property(attrgetter("_end_line"))
    end_col = property(attrgetter("_end_col"))

    def _place(self) -> tuple[int, int, int, int]:
        return self._line, self._col, self._end_line, self._end_col

    def __eq__(self, other) -> bool:
        if other.__class__ is not Span:
            return NotImplemented
        return self._place() == other._place()

    def __hash__(self) -> int:
        return hash(self._place())

    def __repr__(self) -> str:
        return (f"Span(line={self._line}, col={self._col}, end_line={self._end_line}, "
                f"end_col={self._end_col})")

    @property
    def path(self) -> str:
        return self.source.path

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"

    def to_json(self) -> dict:
        return {
            "file": self.source.path,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
        }


@dataclass(frozen=True)
class Note:
    span: Span | None
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None
    hint: str | None = None
    severity: str = "error"
    notes: tuple[Note, ...] = ()

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "span": self.span.to_json() if self.span else None,
            "hint": self.hint,
            "notes": [
                {"message": n.message, "span": n.span.to_json() if n.span else None}
                for n in self.notes
            ],
        }


class SpecError(Exception):
    """Carries every error found in a spec; raised once a stage cannot go on."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(f"{d.span}: {d.message}" for d in self.diagnostics))


class DiagnosticError(Exception):
    """Raised deep inside a stage for one error; the stage turns it into a Diagnostic."""

    def __init__(self, code: str, message: str, span: Span | None = None, hint: str | None = None,
                 notes: tuple[Note, ...] = ()):
        super().__init__(message)
        self.diagnostic = Diagnostic(code, message, span, hint, "error", notes)

    def at(self, span: Span | None) -> DiagnosticError:
        """Attach a span if the raiser did not know one."""
        if self.diagnostic.span is None and span is not None:
            d = self.diagnostic
            self.diagnostic = Diagnostic(d.code, d.message, span, d.hint, d.severity, d.notes)
        return self


def did_you_mean(word: str, candidates) -> str | None:
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def render_text(diagnostics: list[Diagnostic], color: bool = False) -> str:
    """file:line:col, the sentence, the source line with a caret underline, hint and notes."""
    red, yellow, cyan, bold, reset = (
        ("\033[31m", "\033[33m", "\033[36m", "\033[1m", "\033[0m") if color else ("",) * 5
    )
    out = []
    for d in diagnostics:
        tint = red if d.severity == "error" else (yellow if d.severity == "warning" else cyan)
        where = f"{d.span}: " if d.span else ""
        out.append(f"{bold}{where}{tint}{d.severity}[{d.code}]{reset}{bold}: {d.message}{reset}")
        if d.span:
            out.extend(_quote(d.span, tint, reset))
        for note in d.notes:
            where = f"{note.span}: " if note.span else ""
            out.append(f"  {cyan}note{reset}: {where}{note.message}")
            if note.span:
                out.extend("  " + line for line in _quote(note.span, cyan, reset))
        if d.hint:
            out.append(f"  {cyan}hint{reset}: {d.hint}")
    return "\n".join(out)


def _quote(span: Span, tint: str, reset: str) -> list[str]:
    text = span.source.line(span.line).rstrip("\n").expandtabs(1)
    if not text.strip():
        return []
    gutter = f"{span.line:>4} | "
    end = span.end_col if span.end_line == span.line and span.end_col > span.col else span.col + 1
    end = min(end, len(text) + 1) if len(text) >= span.col else span.col + 1
    marker = " " * (span.col - 1) + "^" + "~" * max(0, end - span.col - 1)
    return [gutter + text, " " * (len(gutter) - 2) + "| " + tint + marker + reset]


def render_json(diagnostics: list[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diagnostics], indent=2)


def render_inline(diagnostic: Diagnostic) -> str:
    """A diagnostic about a one-line value (a command-line option): the sentence, the value
    with a caret under the place, and the hint, for a usage error's message."""
    out = [diagnostic.message]
    span = diagnostic.span
    if span is not None and span.source.line(span.line).strip():
        text = span.source.line(span.line)
        width = span.end_col - span.col if span.end_line == span.line else 1
        out += ["    " + text, "    " + " " * (span.col - 1) + "^" + "~" * max(0, width - 1)]
    if diagnostic.hint:
        out.append(f"  hint: {diagnostic.hint}")
    return "\n".join(out)
