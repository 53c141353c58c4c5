"""Text -> AST. Lark (LALR) builds the AST directly through an inline transformer.

`parse` reads a file, `parse_value` one expression on its own (a command-line value).
Which newlines end a statement is decided before the parser sees them (syntax/lexing.py);
syntax errors become diagnostics in syntax/errors.py.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from nnspec.diagnostics import Diagnostic, Source, Span, SpecError
from nnspec.syntax import ast, lalr
from nnspec.syntax.errors import syntax_diagnostic
from nnspec.syntax.lexing import BOM

MAX_INT = 2**63 - 1  # the largest integer literal: int64, which every size, count and seed fits
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}  # not unicode_escape: it mangles UTF-8


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
        return ast.Input(self._span(meta), str(name), type_, self._tok(name))

    def tensor_type(self, meta, children):
        dtype, *dims = children
        return ast.TensorTypeExpr(self._span(meta), str(dtype) if dtype else "float",
                                  tuple(d for d in dims if d is not None))

    def dim(self, meta, children):
        return self._expr(children[0])

    def param_decl(self, meta, children):
        name, type_, init = children
        return ast.ParamDecl(self._span(meta), str(name), self._tok(name), type_,
                             self._expr(init) if init is not None else None)

    def assign(self, meta, children):
        name, value = children
        return ast.Assign(self._span(meta), str(name), self._expr(value))

    def unpack(self, meta, children):
        targets, value = children
        for target in targets:
            if not isinstance(target, ast.Name):
                self.errors.append(Diagnostic(
                    "E006", "only names can be assigned to, one per tensor: `a, b = ...`",
                    target.span))
        names = tuple(t for t in targets if isinstance(t, ast.Name))
        return ast.Unpack(self._span(meta), tuple(n.id for n in names),
                          tuple(n.span for n in names), self._expr(value))

    def output(self, meta, children):
        (value,) = children
        values = tuple(value) if isinstance(value, list) else (self._expr(value),)
        return ast.Output(self._span(meta), values)

    def exprs(self, meta, children):
        return [self._expr(c) for c in children]

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
        layer, label = children if len(children) == 2 else (children[0], None)
        if label is not None and label.type == "NUMBER" and not label.isdigit():
            self.errors.append(Diagnostic("E007", f"`{label}` cannot name a layer", self._tok(label),
                                          "a label is a name, a whole number (`as 0`) or a "
                                          "dotted path of them (`as layer1.0`)"))
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
    matmul = _binary("@")

    def subscript(self, meta, children):
        value, items = children
        return ast.Subscript(self._span(meta), self._expr(value), tuple(items))

    def subscripts(self, meta, children):
        return [self._expr(c) for c in children if c is not None]

    def slice(self, meta, children):
        start, stop, step = (None if c is None else self._expr(c) for c in children)
        return ast.Slice(self._span(meta), start, stop, step)

    def ellipsis(self, meta, children):
        return ast.EllipsisItem(self._span(meta))

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

    def value(self, meta, children):
        return self._expr(children[0])

    def _number(self, tok: Token) -> ast.Number:
        """Integers are bounded before `int()` reads them (it refuses 4,300 digits, and a
        thousand-digit layer count would only fail later, slowly); a float that overflows
        to infinity is an error too."""
        text, span = str(tok), self._tok(tok)
        if text.isdigit():
            digits = text.lstrip("0") or "0"
            if len(digits) <= len(str(MAX_INT)) and int(digits) <= MAX_INT:
                return ast.Number(span, int(digits))
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


def _shorten(literal: str) -> str:
    if len(literal) <= 24:
        return literal
    return f"{literal[:12]}... ({len(literal):,} characters)"


_ITEM_START = re.compile(r"^(model|block|fn|train)\b", re.MULTILINE)


def _first_syntax_error(text: str, source: Source) -> Diagnostic | None:
    try:
        lalr.parser().parse(text, start="start")
    except UnexpectedInput as err:
        return syntax_diagnostic(err, text, source)
    return None


def parse(text: str, path: str = "<string>") -> ast.Program:
    """Parse spec text, or raise SpecError with the first syntax error of each definition.

    LALR recovery inside a broken definition mostly produces noise, so each top-level
    definition is re-parsed alone to find its own error.
    """
    text = text.removeprefix(BOM)
    source = Source(path, text)
    try:
        tree = lalr.parser().parse(text, start="start")
    except UnexpectedInput:
        raise SpecError(_errors_per_definition(text, source)) from None
    return _to_ast(tree, source)


def _errors_per_definition(text: str, source: Source) -> list[Diagnostic]:
    """Each definition is parsed as a text of its own (definitions start at a line's start,
    so only line numbers move); linear in the file, however many definitions it has."""
    starts = [m.start() for m in _ITEM_START.finditer(text)] or [0]
    starts = [0] + [s for s in starts if s > 0] + [len(text)]
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
    try:
        tree = lalr.parser().parse(text, start="value")
    except UnexpectedInput as err:
        raise SpecError([syntax_diagnostic(err, text, source, whole="the value")]) from None
    return _to_ast(tree, source)


def _to_ast(tree: Tree, source: Source):
    to_ast = _ToAst(source)
    result = _transform(to_ast, tree)
    if to_ast.errors:
        raise SpecError(to_ast.errors)
    return result


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
