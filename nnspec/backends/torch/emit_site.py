"""What every op's torch emission works from: the site where an op is written, the lines it
writes, and the catalogue's `Torch` form read as constructor arguments and keywords (a
keyword at its catalogue default is left out when printed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nnspec.backends.torch.names import literal
from nnspec.backends.torch.source import Expr, Group, Num
from nnspec.diagnostics import SpecError
from nnspec.ir.graph import Node
from nnspec.ir.ops import (
    OPS,
    OpDef,
    tensor_keywords,
)
from nnspec.ir.types import TensorType


@dataclass
class Site:
    """Where an op is written: its node, input expressions and types, and how to reach its
    module (`self.conv1`, or a loop variable)."""

    node: Node
    args: list[Expr]
    types: list[TensorType]
    module: Expr = ()
    target: str = "x"  # the variable the op's value goes to (multi-line ops reuse it)
    training: str = "self.training"
    helpers: set[str] = field(default_factory=set)

    @property
    def x(self) -> Expr:
        return self.args[0]

    @property
    def a(self):
        return self.node.attrs

    @property
    def out(self) -> TensorType:
        return self.node.type


@dataclass(frozen=True)
class Line:
    """One forward assignment. `unpack`: the call returns a pair whose first item is kept
    (`h, _ = self.lstm(h)`); `shape`: the value's type when it is not the node's own."""

    value: Expr
    unpack: bool = False
    shape: TensorType | None = None


def torch_dim(dim: int, t: TensorType) -> int:
    """A per-sample dim as a torch dim: negative dims count from the end either way."""
    return dim + 1 if dim >= 0 and t.batched else dim


def ints(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def one(value):
    """`3` for `(3, 3)`: torch accepts either, and the short form reads better."""
    return value[0] if isinstance(value, tuple) and len(set(value)) == 1 else value


# ---- the catalogue's `Torch` forms ---------------------------------------------------------


Init = Callable[[Node, list[TensorType]], Group]
Forward = Callable[[Site], list[Line]]


class Table(dict):
    """Hand-written and derived entries; an op registered after import (a plugin's, a
    test's) gets its derived entry when it is looked up."""

    def __init__(self, derive: Callable[[OpDef], Callable | None], entries: dict):
        super().__init__(entries)
        self._derive = derive

    def __missing__(self, op: str):
        opdef = OPS.get(op)
        derived = self._derive(opdef) if opdef is not None else None
        if derived is None:
            raise KeyError(op)
        return derived


def binding(text: str) -> tuple[str, str]:
    """`"in_features=input[-1]"` -> (hint, source); a bare name is both."""
    hint, _, source = text.partition("=")
    return hint, source or hint


def attr_value(source: str, attrs, ins: list[TensorType], hint: str) -> Num:
    """An attribute's value, or `input[i]`: the first input's per-sample dim i (derived from
    the input, so a block's constructor names it after the layer's own values)."""
    if source.startswith("input["):
        return Num(ins[0].shape[int(source[len("input["):-1])], hint, False)
    return Num(attrs[source], hint)


def keywords(opdef: OpDef, attrs, ins: list[TensorType]) -> dict[str, Num]:
    """The torch form's keywords; one at its catalogue default is left out when printed."""
    out = {}
    for hint, source in map(binding, opdef.torch.keywords):
        value = attr_value(source, attrs, ins, hint)
        if not source.startswith("input["):
            value = with_default(value, opdef.attr(source).default)
        out[hint] = value
    return out


def with_default(num: Num, default) -> Num:
    """`num`, left out of a call when its text is `default`'s (see `source.substitute`)."""
    try:
        text = literal(default)
    except SpecError:
        return num
    return Num(num.value, num.hint, num.primary, num.comment, text)


def module_args(node: Node, ins: list[TensorType]) -> list[Num]:
    return [attr_value(source, node.attrs, ins, hint)
            for hint, source in map(binding, OPS[node.op].torch.args)]


def default_of(node: Node, name: str):
    return OPS[node.op].attr(name).default


def split_args(s: Site) -> tuple[list[Expr], dict[str, Expr]]:
    """A site's positional input expressions, and its tensor keywords (masks) by name."""
    given = tensor_keywords(OPS[s.node.op], s.a)
    positional = len(s.args) - len(given)
    return s.args[:positional], {name: s.args[i] for name, i in given.items()}
