"""Text -> AST in one pass: the LALR parser (syntax/lalr.py) calls `AstBuilder`'s method
for each grammar rule as it reduces it, so no parse tree is made.

`parse` reads a file, `parse_value` one expression on its own (a command-line value).
Which newlines end a statement is decided before the parser sees them (syntax/lexing.py);
syntax errors become diagnostics in syntax/errors.py.

A new grammar rule `name: ...` (or alternative `... -> name`) needs a method `name(self,
span, children)` here: `children` are the values of the rule's parts in order (a
builder method's result, a `Lexeme` for a NAME, NUMBER or STRING, None for an absent
`[optional]` part; quoted keywords and punctuation are left out), `span` covers the rule's
text. Then `python scripts/gen_grammar_tables.py`; tests/test_syntax_tables.py fails while
a rule has no method.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

from nnspec.diagnostics import Diagnostic, Source, Span, SpecError
from nnspec.syntax import ast, lalr
from nnspec.syntax.errors import nesting_diagnostic, syntax_diagnostic
from nnspec.syntax.lexing import BOM, Lexeme, TooDeep

MAX_INT = 2**63 - 1  # the largest integer literal: int64, which every size, count and seed fits
_MAX_DIGITS = len(str(MAX_INT))
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}  # not unicode_escape: it mangles UTF-8


class _Chain:
    """A pipeline while it is parsed: `a -> b -> c` arrives one stage at a time, and
    appending in place keeps a 10,000-stage chain linear (a tuple would be copied at each
    stage). `AstBuilder._expr` turns it into an `ast.Pipeline` where it is used."""

    __slots__ = ("head", "span", "stages")

    def __init__(self, span: Span, head, stages: list):
        self.span, self.head, self.stages = span, head, stages


class AstBuilder:
    """The AST, built one grammar rule at a time as the parser reduces it; every node gets
    the span of its text. One method per rule (or `-> alias`) of the grammar."""

    def __init__(self, source: Source):
        self.source = source
        self.errors: list[Diagnostic] = []

    def _tok(self, tok: Lexeme) -> Span:
        return Span(self.source, tok.line, tok.column, tok.end_line, tok.end_column)

    # -- items
    def start(self, span, items):
        return ast.Program(self.source, tuple(items))

    def _definition(self, kind, span, children):
        name, params, body = children
        return ast.Definition(span, kind, name.value, self._tok(name),
                              tuple(params or ()), tuple(body))

    def model(self, span, children):
        return self._definition("model", span, children)

    def block(self, span, children):
        return self._definition("block", span, children)

    def fn(self, span, children):
        return self._definition("fn", span, children)

    def train(self, span, children):
        name, settings = children
        return ast.Train(span, name.value, self._tok(name), tuple(settings))

    def const(self, span, children):
        name, value = children
        return ast.Const(span, name.value, self._expr(value))

    def params(self, span, children):
        return [c for c in children if c is not None]

    def param(self, span, children):
        name, default = children
        return ast.Param(span, name.value, self._expr(default))

    def body(self, span, children):
        return [c for c in children if c is not None]

    train_body = body

    def setting(self, span, children):
        return ast.Setting(span, children[0].value,
                           tuple(self._expr(c) for c in children[1:]))

    # -- statements
    def input(self, span, children):
        name, type_ = children
        return ast.Input(span, name.value, type_, self._tok(name))

    def tensor_type(self, span, children):
        dtype, *dims = children
        return ast.TensorTypeExpr(span, dtype.value if dtype else "float",
                                  tuple(d for d in dims if d is not None))

    def dim(self, span, children):
        return self._expr(children[0])

    def param_decl(self, span, children):
        name, type_, init = children
        return ast.ParamDecl(span, name.value, self._tok(name), type_,
                             self._expr(init) if init is not None else None)

    def assign(self, span, children):
        name, value = children
        return ast.Assign(span, name.value, self._expr(value))

    def unpack(self, span, children):
        targets, value = children
        for target in targets:
            if not isinstance(target, ast.Name):
                self.errors.append(Diagnostic(
                    "E006", "only names can be assigned to, one per tensor: `a, b = ...`",
                    target.span))
        names = tuple(t for t in targets if isinstance(t, ast.Name))
        return ast.Unpack(span, tuple(n.id for n in names),
                          tuple(n.span for n in names), self._expr(value))

    def output(self, span, children):
        (value,) = children
        values = tuple(value) if isinstance(value, list) else (self._expr(value),)
        return ast.Output(span, values)

    def exprs(self, span, children):
        return [self._expr(c) for c in children]

    # -- expressions
    def _expr(self, node):
        """Names, numbers and strings reach their parents as bare tokens (the grammar does not
        wrap them in a tree, which halves the work of Lark's position propagation through the
        ten precedence levels above an atom), and pipelines as a growing `_Chain`; make them
        AST nodes here."""
        kind = type(node)
        if kind is Lexeme:
            if node.type == "NAME":
                return ast.Name(Span(self.source, node.line, node.column, node.end_line,
                                     node.end_column), node.value)
            if node.type == "NUMBER":
                return self._number(node)
            return self._string(node)
        if kind is _Chain:
            return ast.Pipeline(node.span, node.head, tuple(node.stages))
        return node

    def conditional(self, span, children):
        then, cond, otherwise = (self._expr(c) for c in children)
        return ast.Conditional(span, then, cond, otherwise)

    def pipeline(self, span, children):
        head, stage = children
        if isinstance(head, _Chain):
            head.stages.append(stage)
            head.span = span
            return head
        if isinstance(head, ast.Pipeline):  # `(a -> b) -> c` is `a -> b -> c`
            return _Chain(span, head.head, [*head.stages, stage])
        return _Chain(span, self._expr(head), [stage])

    def stage(self, span, children):
        layer, label = children if len(children) == 2 else (children[0], None)  # `_label` inlined
        if label is not None and label.type == "NUMBER" and not label.value.isdigit():
            self.errors.append(Diagnostic("E007", f"`{label.value}` cannot name a layer",
                                          self._tok(label),
                                          "a label is a name, a whole number (`as 0`) or a "
                                          "dotted path of them (`as layer1.0`)"))
        return ast.Stage(span, self._expr(layer), label.value if label is not None else None)

    def _binary(op):
        def rule(self, span, children):
            left, right = self._expr(children[0]), self._expr(children[-1])
            return ast.BinOp(span, op, left, right)

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
    matmul = _binary("@")

    def subscript(self, span, children):
        value, items = children
        return ast.Subscript(span, self._expr(value), tuple(items))

    def subscripts(self, span, children):
        return [self._expr(c) for c in children if c is not None]

    def slice(self, span, children):
        start, stop, step = (None if c is None else self._expr(c) for c in children)
        return ast.Slice(span, start, stop, step)

    def ellipsis(self, span, children):
        return ast.EllipsisItem(span)

    def neg(self, span, children):
        return ast.Unary(span, "-", self._expr(children[0]))

    def not_(self, span, children):
        return ast.Unary(span, "not", self._expr(children[0]))

    def call(self, span, children):
        func, args = children
        positional, keywords, misplaced = [], [], None
        for a in args or ():
            if type(a) is ast.Kwarg:
                keywords.append(a)
            else:
                if keywords and misplaced is None:
                    misplaced = a
                positional.append(a)
        if misplaced is not None:
            self.errors.append(Diagnostic(
                "E003", "a positional argument after a keyword argument", misplaced.span,
                "put positional arguments first, or name this one too"))
        return ast.Call(span, func.value, self._tok(func), tuple(positional), tuple(keywords))

    def args(self, span, children):
        return [self._expr(c) for c in children if c is not None]

    def kwarg(self, span, children):
        name, value = children
        return ast.Kwarg(span, name.value, self._expr(value))

    def value(self, span, children):
        return self._expr(children[0])

    def _number(self, tok: Lexeme) -> ast.Number:
        """Integers are bounded before `int()` reads them (it refuses 4,300 digits, and a
        thousand-digit layer count would only fail later, slowly); a float that overflows
        to infinity is an error too."""
        text, span = tok.value, self._tok(tok)
        if text.isdigit():
            digits = text.lstrip("0") or "0"
            if len(digits) <= _MAX_DIGITS:
                value = int(digits)
                if value <= MAX_INT:
                    return ast.Number(span, value)
            self.errors.append(Diagnostic(
                "E005", f"the integer {_shorten(text)} is too large", span,
                f"integers go up to 2^63 - 1 = {MAX_INT:,}"))
            return ast.Number(span, 0)
        value = float(text)
        if value == float("inf"):
            self.errors.append(Diagnostic("E005", f"the number {_shorten(text)} is too large",
                                          span, "floats go up to about 1.8e308"))
            return ast.Number(span, 0.0)
        return ast.Number(span, value)

    def _string(self, tok: Lexeme) -> ast.String:
        raw = tok.value[1:-1]
        bad = next((m for m in _ESCAPE.finditer(raw) if m.group(1) not in _ESCAPES), None)
        if bad is not None:
            self.errors.append(Diagnostic("E001", f"unknown escape `{bad.group(0)}` in a string",
                                          self._tok(tok), r'escapes are \", \\, \n and \t'))
        text = _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw)
        return ast.String(self._tok(tok), text)

    def true(self, span, children):
        return ast.Constant(span, True)

    def false(self, span, children):
        return ast.Constant(span, False)

    def none(self, span, children):
        return ast.Constant(span, None)

    def list(self, span, children):
        return ast.ListExpr(span,
                            tuple(self._expr(c) for c in children if c is not None))


def _shorten(literal: str) -> str:
    if len(literal) <= 24:
        return literal
    return f"{literal[:12]}... ({len(literal):,} characters)"


_ITEM_START = re.compile(r"^(model|block|fn|train)\b", re.MULTILINE)


class _Recognizer:
    """A builder that builds nothing: for finding where a text stops parsing."""

    def __getattr__(self, name):
        return _nothing


def _nothing(span, children):
    return None


def _first_syntax_error(text: str, source: Source) -> Diagnostic | None:
    try:
        lalr.tables().parse(text, "start", _Recognizer(), source)
    except lalr.SyntaxFailure as err:
        return syntax_diagnostic(err, text, source)
    except TooDeep as err:
        return nesting_diagnostic(err, source)
    return None


def parse(text: str, path: str = "<string>") -> ast.Program:
    """Parse spec text, or raise SpecError with the first syntax error of each definition.

    LALR recovery inside a broken definition mostly produces noise, so each top-level
    definition is re-parsed alone to find its own error.
    """
    text = text.removeprefix(BOM)
    source = Source(path, text)
    builder = AstBuilder(source)
    try:
        program = lalr.tables().parse(text, "start", builder, source)
    except TooDeep as err:
        raise SpecError([nesting_diagnostic(err, source)]) from None
    except lalr.SyntaxFailure as err:
        raise SpecError(_errors_per_definition(text, source, err)) from None
    if builder.errors:
        raise SpecError(builder.errors)
    return program


def _errors_per_definition(text: str, source: Source,
                           failure: lalr.SyntaxFailure) -> list[Diagnostic]:
    """Each definition is parsed as a text of its own (definitions start at a line's start,
    so only line numbers move); linear in the file, however many definitions it has.

    When the whole text failed (`failure`) at its end or inside its last definition, the
    parser took every definition keyword at the top level: the ones before are whole, and
    the last one's error is the failure itself."""
    starts = [m.start() for m in _ITEM_START.finditer(text)] or [0]
    starts = [0] + [s for s in starts if s > 0] + [len(text)]
    token = failure.token
    if token is not None and (token.type == lalr.END or token.start_pos > starts[-2]):
        return [syntax_diagnostic(failure, text, source)]
    errors, line = [], 0
    for lo, hi in itertools.pairwise(starts):
        chunk = text[lo:hi]
        diag = _first_syntax_error(chunk, Source(source.path, chunk))
        if diag is not None:
            errors.append(_moved(diag, source, line))
        line += chunk.count("\n")
    return errors or [_first_syntax_error(text, source)]


def _moved(diag: Diagnostic, source: Source, lines: int) -> Diagnostic:
    """A diagnostic about a definition parsed alone, placed in the whole file."""
    span = diag.span
    if span is None:
        return diag
    return replace(diag, span=Span(source, span.line + lines, span.col, span.end_line + lines,
                                   span.end_col))


def parse_value(text: str, path: str = "<value>") -> ast.Expr:
    """One expression on its own (`64`, `"gelu"`, `[1, 8, 8]`, `sgd(lr = 0.1)`), for values
    given on the command line; raise SpecError located in `text`. `path` names where the
    text came from in messages, e.g. "--set hidden"."""
    text = text.removeprefix(BOM)
    source = Source(path, text)
    builder = AstBuilder(source)
    try:
        value = lalr.tables().parse(text, "value", builder, source)
    except TooDeep as err:
        raise SpecError([nesting_diagnostic(err, source)]) from None
    except lalr.SyntaxFailure as err:
        raise SpecError([syntax_diagnostic(err, text, source, whole="the value")]) from None
    if builder.errors:
        raise SpecError(builder.errors)
    return value
