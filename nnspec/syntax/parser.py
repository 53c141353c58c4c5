"""Text -> AST. Lark (LALR) builds the AST directly through an inline transformer.

Newlines end statements, except inside brackets, after a token that cannot end an
expression (`->`, `+`, `,`, ...) and before a line that starts with `->`, so long
pipelines can be written one stage per line.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import sys
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from nnspec.diagnostics import Diagnostic, Source, Span, SpecError, did_you_mean
from nnspec.syntax import ast

_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}  # not unicode_escape: it mangles UTF-8
_OPENERS = {"(", "["}
_CLOSERS = {")", "]"}
# A line that starts with one of these continues the previous one. `-` is not among them:
# a statement may start with a unary minus.
_CONTINUE_BEFORE = {"->", "else", "if", "+", "*", "/", "%", "^", "**", "==", "!=", "<", "<=",
                    ">", ">=", "and", "or"}
_CONTINUE_AFTER = {"->", "+", "-", "*", "/", "%", "^", "**", ",", "=", "==", "!=", "<", "<=",
                   ">", ">=", "and", "or", "not", "if", "else", ":", "(", "["}


class _Newlines:
    """Lark post-lexer that drops the newlines which do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        pending = None
        previous = None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and previous is not None and previous.value not in _CONTINUE_AFTER:
                    pending = tok
                continue
            if pending is not None:
                if tok.value not in _CONTINUE_BEFORE or tok.type == "STRING":
                    yield pending
                pending = None
            if tok.value in _OPENERS and tok.type != "STRING":
                depth += 1
            elif tok.value in _CLOSERS and tok.type != "STRING":
                depth = max(0, depth - 1)
            previous = tok
            yield tok
        if pending is not None:
            yield pending


class _Chain:
    """A pipeline while it is parsed: `a -> b -> c` arrives one stage at a time, and
    appending in place keeps a 10,000-stage chain linear (a tuple would be copied at each
    stage). `_ToAst._expr` turns it into an `ast.Pipeline` where it is used."""

    __slots__ = ("head", "span", "stages")

    def __init__(self, span: Span, head, stages: list):
        self.span, self.head, self.stages = span, head, stages


class _ToAst:
    """Parse tree -> AST; every node gets the span of its text.

    One method per grammar rule, each called as `rule(meta, children)`; a plain class
    rather than a Lark `Transformer` because its per-call wrappers cost a third of the
    parse time on large specs.
    """

    def __init__(self, source: Source):
        self.source = source
        self.errors: list[Diagnostic] = []

    def _span(self, meta) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.source, 1, 1, 1, 1)
        return Span(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> Span:
        return Span(self.source, tok.line, tok.column, tok.end_line, tok.end_column)

    # -- items
    def start(self, meta, items):
        return ast.Program(self.source, tuple(items))

    def _definition(self, kind, meta, children):
        name, params, body = children
        return ast.Definition(self._span(meta), kind, str(name), self._tok(name),
                              tuple(params or ()), tuple(body))

    def model(self, meta, children):
        return self._definition("model", meta, children)

    def block(self, meta, children):
        return self._definition("block", meta, children)

    def fn(self, meta, children):
        return self._definition("fn", meta, children)

    def train(self, meta, children):
        name, settings = children
        return ast.Train(self._span(meta), str(name), self._tok(name), tuple(settings))

    def const(self, meta, children):
        name, value = children
        return ast.Const(self._span(meta), str(name), self._expr(value))

    def params(self, meta, children):
        return [c for c in children if c is not None]

    def param(self, meta, children):
        name, default = children
        return ast.Param(self._span(meta), str(name), self._expr(default))

    def body(self, meta, children):
        return [c for c in children if c is not None]

    train_body = body

    def setting(self, meta, children):
        return ast.Setting(self._span(meta), str(children[0]),
                           tuple(self._expr(c) for c in children[1:]))

    # -- statements
    def input(self, meta, children):
        name, type_ = children
        return ast.Input(self._span(meta), str(name), type_)

    def tensor_type(self, meta, children):
        dtype, *dims = children
        return ast.TensorTypeExpr(self._span(meta), str(dtype) if dtype else "float",
                                  tuple(d for d in dims if d is not None))

    def dim(self, meta, children):
        return self._expr(children[0])

    def assign(self, meta, children):
        name, value = children
        return ast.Assign(self._span(meta), str(name), self._expr(value))

    def output(self, meta, children):
        return ast.Output(self._span(meta), self._expr(children[0]))

    # -- expressions
    def _expr(self, node):
        """Names, numbers and strings reach their parents as bare tokens (the grammar does not
        wrap them in a tree, which halves the work of Lark's position propagation through the
        ten precedence levels above an atom), and pipelines as a growing `_Chain`; make them
        AST nodes here."""
        if isinstance(node, Token):
            if node.type == "NAME":
                return ast.Name(self._tok(node), str(node))
            if node.type == "NUMBER":
                return self._number(node)
            return self._string(node)
        if isinstance(node, _Chain):
            return ast.Pipeline(node.span, node.head, tuple(node.stages))
        return node

    def conditional(self, meta, children):
        then, cond, otherwise = (self._expr(c) for c in children)
        return ast.Conditional(self._span(meta), then, cond, otherwise)

    def pipeline(self, meta, children):
        head, stage = children
        if isinstance(head, _Chain):
            head.stages.append(stage)
            head.span = self._span(meta)
            return head
        if isinstance(head, ast.Pipeline):  # `(a -> b) -> c` is `a -> b -> c`
            return _Chain(self._span(meta), head.head, [*head.stages, stage])
        return _Chain(self._span(meta), self._expr(head), [stage])

    def stage(self, meta, children):
        layer, label = children
        return ast.Stage(self._span(meta), self._expr(layer),
                         str(label) if label is not None else None)

    def _binary(op):
        def rule(self, meta, children):
            left, right = self._expr(children[0]), self._expr(children[-1])
            return ast.BinOp(self._span(meta), op, left, right)

        return rule

    or_ = _binary("or")
    and_ = _binary("and")
    eq = _binary("==")
    ne = _binary("!=")
    lt = _binary("<")
    le = _binary("<=")
    gt = _binary(">")
    ge = _binary(">=")
    add = _binary("+")
    sub = _binary("-")
    mul = _binary("*")
    div = _binary("/")
    mod = _binary("%")
    pow = _binary("^")

    def neg(self, meta, children):
        return ast.Unary(self._span(meta), "-", self._expr(children[0]))

    def not_(self, meta, children):
        return ast.Unary(self._span(meta), "not", self._expr(children[0]))

    def call(self, meta, children):
        func, args = children
        seen_keyword = False
        for a in args or ():
            if isinstance(a, ast.Kwarg):
                seen_keyword = True
            elif seen_keyword:
                self.errors.append(Diagnostic(
                    "E003", "a positional argument after a keyword argument", a.span,
                    "put positional arguments first, or name this one too"))
                break
        positional = tuple(a for a in (args or ()) if not isinstance(a, ast.Kwarg))
        keywords = tuple(a for a in (args or ()) if isinstance(a, ast.Kwarg))
        return ast.Call(self._span(meta), str(func), self._tok(func), positional, keywords)

    def args(self, meta, children):
        return [self._expr(c) for c in children if c is not None]

    def kwarg(self, meta, children):
        name, value = children
        return ast.Kwarg(self._span(meta), str(name), self._expr(value))

    def _number(self, tok: Token) -> ast.Number:
        text = str(tok)
        return ast.Number(self._tok(tok), int(text) if text.isdigit() else float(text))

    def _string(self, tok: Token) -> ast.String:
        raw = str(tok)[1:-1]
        bad = next((m for m in _ESCAPE.finditer(raw) if m.group(1) not in _ESCAPES), None)
        if bad is not None:
            self.errors.append(Diagnostic("E001", f"unknown escape `{bad.group(0)}` in a string",
                                          self._tok(tok), r'escapes are \", \\, \n and \t'))
        text = _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw)
        return ast.String(self._tok(tok), text)

    def true(self, meta, children):
        return ast.Constant(self._span(meta), True)

    def false(self, meta, children):
        return ast.Constant(self._span(meta), False)

    def none(self, meta, children):
        return ast.Constant(self._span(meta), None)

    def list(self, meta, children):
        return ast.ListExpr(self._span(meta),
                            tuple(self._expr(c) for c in children if c is not None))


@functools.cache
def _lark() -> Lark:
    grammar = resources.files("nnspec").joinpath("grammar/nnspec.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="basic", postlex=_Newlines(), propagate_positions=True,
                maybe_placeholders=True, cache=_table_cache())


def _table_cache() -> str | bool:
    """Where Lark keeps the analysed LALR tables between runs (a third of `nnspec check`'s
    start-up): the user's own cache directory, never a shared /tmp, where another user
    could plant the pickle Lark loads. Lark stores a hash of the grammar, its options and
    versions in the file and rebuilds a stale one; without a writable home, no cache."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnspec"
        base.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return False
    return str(base / f"grammar-py{sys.version_info[0]}{sys.version_info[1]}.lark-tables")


_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "DTYPE": "a dtype",
          "_NL": "a new line", "$END": "the end of the file"}
# Which expected tokens a hint lists first: closing what is open beats starting something new.
_PRIORITY = (")", "]", "}", ",", "=", ":", "{", "(", "[", "->", "a name", "a number", "a string")
_KEYWORDS = ("model", "block", "fn", "train", "input")
_RESERVED = {"model", "block", "fn", "train", "input", "as", "if", "else", "and", "or", "not",
             "true", "false", "none"}
_CLOSES = {")": "(", "]": "[", "}": "{"}
_OPERAND_ENDS = ("NAME", "NUMBER", "STRING", "RPAR", "RSQB", "TRUE", "FALSE", "NONE")
_FIXES = {"\u2192": "->", "\u2212": "-", "\u00d7": "*", "\u201c": '"', "\u201d": '"'}


def _expected_words(expected) -> list[str]:
    """Lark's terminal names -> what a person types, most useful first."""
    literals = {t.name: t.pattern.value for t in _lark().terminals
                if t.pattern.type == "str"}
    words = {f"`{literals[t]}`" if t in literals else _WORDS.get(t) for t in expected}
    words.discard(None)

    def rank(word):
        bare = word.strip("`")
        return (_PRIORITY.index(bare) if bare in _PRIORITY else len(_PRIORITY), word)

    return sorted(words, key=rank)


def _found(tok: Token) -> str:
    if tok.type in ("NAME", "NUMBER"):
        return f"{_WORDS[tok.type][2:]} `{tok.value}`"
    if tok.type == "STRING":
        return f"string {tok.value}"
    return f"`{tok.value}`"


def _tokens_before(text: str, pos: int | None) -> list[Token]:
    """The tokens in front of an error (newlines inside brackets already dropped)."""
    tokens = []
    try:
        for tok in _lark().lex(text):
            if pos is not None and tok.start_pos >= pos:
                break
            tokens.append(tok)
    except UnexpectedInput:
        pass
    return tokens


def _unclosed(tokens: list[Token]) -> list[Token]:
    stack: list[Token] = []
    for tok in tokens:
        if tok.type in ("LPAR", "LSQB", "LBRACE"):
            stack.append(tok)
        elif tok.value in _CLOSES and tok.type != "STRING" and stack \
                and stack[-1].value == _CLOSES[tok.value]:
            stack.pop()
    return stack


def _tok_span(source: Source, tok: Token) -> Span:
    return Span(source, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + 1)


def _syntax_diagnostic(err: UnexpectedInput, text: str, source: Source) -> Diagnostic:
    """The first syntax error as a diagnostic that points where the fix goes: an unclosed
    bracket at the bracket, a dangling `->` at the arrow, a misspelt keyword at the word."""
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        span = Span(source, line, col, line, col + 1)
        if char == '"':
            return Diagnostic("E001", "this string is never closed", span,
                              'end it with `"` on the same line')
        hint = "strings use double quotes" if char == "'" else (
            f"write `{_FIXES[char]}`" if char in _FIXES else None)
        return Diagnostic("E001", f"unexpected character `{char}`", span, hint)
    tok = err.token if isinstance(err, UnexpectedToken) else None
    at_end = tok is None or tok.type == "$END"
    tokens = _tokens_before(text, None if at_end else tok.start_pos)
    prev = tokens[-1] if tokens else None
    before_prev = tokens[-2] if len(tokens) > 1 else None
    open_ = _unclosed(tokens)
    inner = open_[-1] if open_ else None
    expected = set(getattr(err, "expected", ()) or ())

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
        words = _expected_words(expected)
        hint = ("expected " + ", ".join(words[:6])) if words else None
        if prev is not None:  # point at the last thing written, not at an empty last line
            return Diagnostic("E002", f"the file ends after {_found(prev)}",
                              _tok_span(source, prev), hint)
        last = len(source.lines) or 1
        end = len(source.line(last)) + 1
        return Diagnostic("E002", "the file ends in the middle of a definition",
                          Span(source, last, end, last, end), hint)
    span = _tok_span(source, tok)
    if prev is not None and prev.type not in ("LPAR", "LSQB", "LBRACE", "COLON") \
            and prev.value in _CONTINUE_AFTER and tok.type in ("RBRACE", "RPAR", "RSQB", "_NL"):
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
        expected_words = [w for w in _expected_words(expected) if w not in other]
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
        expected_words = _expected_words(expected)
    words = expected_words
    hint = ("expected " + ", ".join(words[:6])) if words else None
    if tok.type == "_NL":
        return Diagnostic("E001", "this line ends too early", span, hint)
    if tok.value in _RESERVED and tok.type != "NAME":
        hint = f"`{tok.value}` is a reserved word; pick another name"
    return Diagnostic("E001", f"unexpected {_found(tok)}", span, hint)


_ITEM_START = re.compile(r"^(model|block|fn|train)\b", re.MULTILINE)


def _first_syntax_error(text: str, source: Source) -> Diagnostic | None:
    try:
        _lark().parse(text)
    except UnexpectedInput as err:
        return _syntax_diagnostic(err, text, source)
    return None


def parse(text: str, path: str = "<string>") -> ast.Program:
    """Parse spec text, or raise SpecError with the first syntax error of each definition.

    LALR recovery inside a broken definition mostly produces noise, so each top-level
    definition is re-parsed alone (blank lines keep the line numbers) to find its own error.
    """
    source = Source(path, text)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput:
        starts = [m.start() for m in _ITEM_START.finditer(text)] or [0]
        starts = [0] + [s for s in starts if s > 0] + [len(text)]
        errors = []
        for lo, hi in itertools.pairwise(starts):
            chunk = "\n" * text.count("\n", 0, lo) + text[lo:hi]
            diag = _first_syntax_error(chunk, source)
            if diag is not None:
                errors.append(diag)
        raise SpecError(errors or [_first_syntax_error(text, source)]) from None
    to_ast = _ToAst(source)
    program = _transform(to_ast, tree)
    if to_ast.errors:
        raise SpecError(to_ast.errors)
    return program


def _transform(transformer: _ToAst, tree: Tree):
    """Bottom-up transform with an explicit stack: a 10,000-stage pipeline is a parse tree
    10,000 levels deep (`->` is left-recursive), too deep for a recursive transform."""
    results: list = []
    stack: list[tuple[Tree, bool]] = [(tree, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, Tree):
            results.append(node)
        elif children_done:
            first = len(results) - len(node.children)
            children = results[first:]
            del results[first:]
            results.append(getattr(transformer, node.data)(node.meta, children))
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.children))
    return results[0]
