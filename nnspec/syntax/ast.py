"""The abstract syntax tree: frozen dataclasses, each carrying the span of the text it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nnspec.diagnostics import Source, Span


@dataclass(frozen=True, slots=True)
class Node:
    """What every AST node has: the span of its text. (A docstring on each class spares
    `dataclass` an `inspect.signature` call to make one: a tenth of `nnspec check`'s start.)"""

    span: Span = field(repr=False, compare=False)


# ---- expressions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Name(Node):
    """A name read in an expression: `x`, `hidden`, `relu`."""

    id: str


@dataclass(frozen=True, slots=True)
class Number(Node):
    """An integer or float literal."""

    value: int | float


@dataclass(frozen=True, slots=True)
class String(Node):
    """A string literal, its escapes already read."""

    value: str


@dataclass(frozen=True, slots=True)
class Constant(Node):
    """`true`, `false`, `none`."""

    value: bool | None


@dataclass(frozen=True, slots=True)
class ListExpr(Node):
    """`[a, b, c]`."""

    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Kwarg(Node):
    """`name = value` among a call's arguments."""

    name: str
    value: Expr


@dataclass(frozen=True, slots=True)
class Call(Node):
    """`func(args, name = value)`: an op, block or fn with its arguments."""

    func: str
    func_span: Span = field(repr=False, compare=False)
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()


@dataclass(frozen=True, slots=True)
class BinOp(Node):
    """Arithmetic, comparison and boolean operators: `+ - * / % ^ @ == != < <= > >= and or`."""

    op: str
    left: Expr
    right: Expr


def operator_chain(expr: BinOp) -> list[BinOp]:
    """`a + b - c` as the operators applied in order (`a + b`, then `- c`): the left operands
    of a long sum nest one level per term, so passes walk this list instead of recursing
    (a thousand-term expression must not exhaust Python's stack). `and`/`or` end a chain."""
    chain = [expr]
    while isinstance(chain[-1].left, BinOp) and chain[-1].left.op not in ("and", "or"):
        chain.append(chain[-1].left)
    chain.reverse()
    return chain


@dataclass(frozen=True, slots=True)
class Unary(Node):
    """`-x` or `not x`."""

    op: str  # "-" or "not"
    operand: Expr


@dataclass(frozen=True, slots=True)
class Stage(Node):
    """One `-> layer [as name]` step of a pipeline."""

    layer: Expr
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Pipeline(Node):
    """`head -> stage -> stage`: the head's value through each stage in order."""

    head: Expr
    stages: tuple[Stage, ...]


@dataclass(frozen=True, slots=True)
class Conditional(Node):
    """`a if cond else b`: only the chosen branch is built."""

    then: Expr
    cond: Expr
    otherwise: Expr


@dataclass(frozen=True, slots=True)
class Slice(Node):
    """`start:stop:step` inside a subscript; a missing part is None."""

    start: Expr | None
    stop: Expr | None
    step: Expr | None


@dataclass(frozen=True, slots=True)
class EllipsisItem(Node):
    """`...` inside a subscript: as many whole dims as the others leave."""


@dataclass(frozen=True, slots=True)
class Subscript(Node):
    """`x[0]`, `x[:, 1:3]`, `x[..., :d]`: indexes and slices of per-sample dims."""

    value: Expr
    items: tuple[Expr | Slice | EllipsisItem, ...]


Expr = Name | Number | String | Constant | ListExpr | Call | BinOp | Unary | Pipeline | Conditional | Subscript


# ---- statements and definitions ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorTypeExpr(Node):
    """`[T, d]` or `int[ctx]`: the declared per-sample shape of an input or param."""

    dtype: str  # "float" or "int"
    dims: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Input(Node):
    """`input x: [T, d]`: a tensor the model or block takes."""

    name: str
    type: TensorTypeExpr | None
    name_span: Span | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ParamDecl(Node):
    """`param cls: [1, d] = zeros`: a learned tensor of the model or block, with its init."""

    name: str
    name_span: Span = field(repr=False, compare=False)
    type: TensorTypeExpr
    init: Expr | None = None


@dataclass(frozen=True, slots=True)
class Assign(Node):
    """`name = expr`."""

    name: str
    value: Expr


@dataclass(frozen=True, slots=True)
class Unpack(Node):
    """`a, b = expr`: one name per tensor of a value that holds several."""

    names: tuple[str, ...]
    name_spans: tuple[Span, ...] = field(repr=False, compare=False)
    value: Expr


@dataclass(frozen=True, slots=True)
class Output(Node):
    """The last bare statement of a body: one expression, or several (`mu, logvar`)."""

    values: tuple[Expr, ...]

    @property
    def value(self) -> Expr:
        """The whole output as one expression, for passes that only read it."""
        return self.values[0] if len(self.values) == 1 else ListExpr(self.span, self.values)


Stmt = Input | ParamDecl | Assign | Unpack | Output


@dataclass(frozen=True, slots=True)
class Param(Node):
    """A hyperparameter of a definition, `d` or `ff = 4 * d`, with its default."""

    name: str
    default: Expr | None


@dataclass(frozen=True, slots=True)
class Definition(Node):
    """A `model`, `block` or `fn`: a named, parameterised body of statements."""

    kind: Literal["model", "block", "fn"]
    name: str
    name_span: Span = field(repr=False, compare=False)
    params: tuple[Param, ...] = ()
    body: tuple[Stmt, ...] = ()


@dataclass(frozen=True, slots=True)
class Setting(Node):
    """One line of a `train` section: `optimizer adam(lr = 1e-3)`."""

    key: str
    values: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Train(Node):
    """`train Model { ... }`: how to train one model."""

    model: str
    model_span: Span = field(repr=False, compare=False)
    settings: tuple[Setting, ...] = ()


@dataclass(frozen=True, slots=True)
class Const(Node):
    """`name = expr` at the top level: a constant every definition can read."""

    name: str
    value: Expr


@dataclass(frozen=True, slots=True)
class Program:
    """A whole spec: its definitions, train sections and constants in file order."""

    source: Source
    items: tuple[Definition | Train | Const, ...]

    def definitions(self, kind: str) -> list[Definition]:
        return [i for i in self.items if isinstance(i, Definition) and i.kind == kind]

    @property
    def trains(self) -> list[Train]:
        return [i for i in self.items if isinstance(i, Train)]

    @property
    def consts(self) -> list[Const]:
        return [i for i in self.items if isinstance(i, Const)]
