"""Syntax errors as diagnostics that point where the fix goes: an unclosed bracket at the
bracket, a dangling `->` at the arrow, a misspelt keyword at the word, an invisible
character by its name.

The parser reports the first token it could not take; these rules turn that into a sentence a
person can act on, with the tokens a person would type next as the hint.
"""

from __future__ import annotations

import unicodedata

from nnspec.diagnostics import Diagnostic, Source, Span, did_you_mean
from nnspec.syntax import lalr
from nnspec.syntax.lexing import CONTINUE_AFTER, MAX_BRACKETS, Lexeme, TooDeep

_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "DTYPE": "a dtype",
          "_NL": "a new line", "$END": "the end of the file"}
# Which expected tokens a hint lists first: closing what is open beats starting something new.
_PRIORITY = (")", "]", "}", ",", "=", ":", "{", "(", "[", "->", "a name", "a number", "a string")
_KEYWORDS = ("model", "block", "fn", "train", "input")
_RESERVED = {"model", "block", "fn", "train", "input", "param", "as", "if", "else", "and", "or", "not",
             "true", "false", "none"}
_CLOSES = {")": "(", "]": "[", "}": "{"}
_OPERAND_ENDS = ("NAME", "NUMBER", "STRING", "RPAR", "RSQB", "TRUE", "FALSE", "NONE")
_FIXES = {"\u2192": "->", "\u2212": "-", "\u00d7": "*", "\u201c": '"', "\u201d": '"'}


def _expected_words(expected, whole: str = "the file") -> list[str]:
    """The grammar's terminal names -> what a person types, most useful first."""
    literals = lalr.tables().literals
    names = {**_WORDS, "$END": f"the end of {whole}"}
    words = {f"`{literals[t]}`" if t in literals else names.get(t) for t in expected}
    words.discard(None)

    def rank(word):
        bare = word.strip("`")
        return (_PRIORITY.index(bare) if bare in _PRIORITY else len(_PRIORITY), word)

    return sorted(words, key=rank)


def _found(tok: Lexeme) -> str:
    if tok.type in ("NAME", "NUMBER"):
        return f"{_WORDS[tok.type][2:]} `{tok.value}`"
    if tok.type == "STRING":
        return f"string {tok.value}"
    return f"`{tok.value}`"


def _unclosed(tokens: list[Lexeme]) -> list[Lexeme]:
    stack: list[Lexeme] = []
    for tok in tokens:
        if tok.type in ("LPAR", "LSQB", "LBRACE"):
            stack.append(tok)
        elif tok.value in _CLOSES and tok.type != "STRING" and stack \
                and stack[-1].value == _CLOSES[tok.value]:
            stack.pop()
    return stack


def _tok_span(source: Source, tok: Lexeme) -> Span:
    return Span(source, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + 1)


def syntax_diagnostic(err: lalr.SyntaxFailure, text: str, source: Source,
                      whole: str = "the file") -> Diagnostic:
    """The first syntax error of `text` (`whole` names it in messages: "the file", "the
    value")."""
    line, col = max(err.line, 1), max(err.column, 1)
    if err.token is None:  # a character no token starts with
        char = text[err.pos] if err.pos < len(text) else ""
        span = Span(source, line, col, line, col + 1)
        if char == '"':
            return Diagnostic("E001", "this string is never closed", span,
                              'end it with `"` on the same line')
        if _unseen(char):
            return Diagnostic("E001", f"unexpected {_describe_unseen(char)}", span,
                              "delete it (it often comes with text copied from a web page or "
                              "a word processor)")
        hint = "strings use double quotes" if char == "'" else (
            f"write `{_FIXES[char]}`" if char in _FIXES else None)
        return Diagnostic("E001", f"unexpected character `{char}`", span, hint)
    tok = err.token
    at_end = tok.type == lalr.END
    tokens = err.before  # newlines inside brackets already dropped
    prev = tokens[-1] if tokens else None
    before_prev = tokens[-2] if len(tokens) > 1 else None
    open_ = _unclosed(tokens)
    inner = open_[-1] if open_ else None
    expected = set(err.expected)

    if (prev is not None and prev.type == "NAME" and not at_end
            and (before_prev is None or before_prev.value in ("{", ";") or
                 before_prev.type == "_NL")):
        close = did_you_mean(prev.value, _KEYWORDS)
        if close:
            return Diagnostic("E001", f"unknown keyword `{prev.value}`", _tok_span(source, prev),
                              close)
    if inner is not None and inner.type != "LBRACE":
        closer = ")" if inner.type == "LPAR" else "]"
        starts_line = (not at_end and tok.type != "RBRACE" and prev is not None
                       and prev.line < tok.line)
        if at_end or tok.type == "RBRACE" or starts_line:
            hint = f"add `{closer}`" + (" (or a `,` if the list goes on)" if starts_line else "")
            return Diagnostic("E001", f"this `{inner.value}` is never closed",
                              _tok_span(source, inner), hint)
    if at_end:
        if inner is not None:
            return Diagnostic("E002", "this `{` is never closed",
                              _tok_span(source, inner), "add `}` at the end of the definition")
        words = _expected_words(expected, whole)
        hint = ("expected " + ", ".join(words[:6])) if words else None
        if prev is not None:  # point at the last thing written, not at an empty last line
            return Diagnostic("E002", f"{whole} ends after {_found(prev)}",
                              _tok_span(source, prev), hint)
        last = len(source.lines) or 1
        end = len(source.line(last)) + 1
        middle = "a definition" if whole == "the file" else "an expression"
        return Diagnostic("E002", f"{whole} ends in the middle of {middle}",
                          Span(source, last, end, last, end), hint)
    span = _tok_span(source, tok)
    if prev is not None and prev.type not in ("LPAR", "LSQB", "LBRACE", "COLON") \
            and prev.value in CONTINUE_AFTER and tok.type in ("RBRACE", "RPAR", "RSQB", "_NL"):
        return Diagnostic("E001", f"`{prev.value}` needs something after it",
                          _tok_span(source, prev), "finish the expression or remove the "
                          f"`{prev.value}`")
    if tok.value in _CLOSES and tok.type != "STRING":
        opener = _CLOSES[tok.value]
        if inner is None or inner.value != opener:
            return Diagnostic("E001", f"`{tok.value}` closes nothing", span,
                              f"remove it, or add the `{opener}` it closes")
    if inner is not None and inner.type in ("LPAR", "LSQB"):
        # inside brackets, only their own closer can come next, whatever LALR's merged
        # lookaheads say
        other = {"LPAR": ("`]`", "`}`"), "LSQB": ("`)`", "`}`")}[inner.type]
        expected_words = [w for w in _expected_words(expected, whole) if w not in other]
        ends_operand = prev is not None and (prev.type in _OPERAND_ENDS)
        starts_operand = tok.type in ("NAME", "NUMBER", "STRING", "LPAR", "LSQB")
        if ends_operand and starts_operand:
            return Diagnostic("E001", f"unexpected {_found(tok)}", span,
                              "a `,` is missing before it")
        before = next((tokens[i - 1] for i, t in enumerate(tokens) if t is inner and i), None)
        if tok.type == "COMMA" and inner.type == "LPAR" and (before is None or
                                                              before.type != "NAME"):
            return Diagnostic("E001", "unexpected `,` inside parentheses", span,
                              "parentheses only group; a list is written `[a, b]`")
    else:
        expected_words = _expected_words(expected, whole)
    words = expected_words
    hint = ("expected " + ", ".join(words[:6])) if words else None
    if tok.type == "_NL":
        return Diagnostic("E001", "this line ends too early", span, hint)
    if tok.value == "as" and tok.type != "NAME":
        hint = ("`as` names a layer where a pipeline applies it: `(x -> layer as name)`, with "
                "the parentheses around the whole application; a layer on its own is named by "
                "assigning it: `name = layer(...)`")
    elif tok.value in _RESERVED and tok.type != "NAME":
        hint = f"`{tok.value}` is a reserved word; pick another name"
    return Diagnostic("E001", f"unexpected {_found(tok)}", span, hint)


def nesting_diagnostic(err: TooDeep, source: Source) -> Diagnostic:
    """Brackets nested past the limit: the compiler would recurse once per level."""
    return Diagnostic("E004", f"brackets nest more than {MAX_BRACKETS} deep here",
                      _tok_span(source, err.bracket),
                      "split the expression into named steps (`h = ...`)")


def _unseen(char: str) -> bool:
    """Characters a person cannot see, or cannot tell from a space, in an editor."""
    return bool(char) and char != " " and (
        not char.isprintable() or unicodedata.category(char) in ("Cf", "Zs", "Zl", "Zp"))


def _describe_unseen(char: str) -> str:
    name = unicodedata.name(char, "a control character")
    looks = "that looks like a space" if unicodedata.category(char) == "Zs" else "(invisible)"
    return f"character U+{ord(char):04X} {name} {looks}"
