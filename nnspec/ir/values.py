"""The values a spec's expressions evaluate to, and how messages show them.

Besides numbers, strings and lists, an expression gives a `Tensor` (a node's output) or a
`Layer` (something that can be applied to tensors: an op with its arguments, a block, a fn,
a repeat or a composition). Layers are first-class: `f = dense(64)` then `a -> f` and
`b -> f` share one set of weights. `POISON` is the value of anything whose evaluation
already reported an error, so one mistake is reported once, not again by every use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nnspec.diagnostics import Span
from nnspec.ir.types import TensorType

LayerKind = Literal["op", "seq", "repeat", "block", "fn"]
_set = object.__setattr__  # what a frozen dataclass's own __init__ calls once per field


@dataclass(frozen=True, init=False)
class Tensor:
    """A node's output as an expression's value."""

    node: str
    type: TensorType | None  # None: its layer failed; errors were already reported
    span: Span | None
    producer: str | None = None  # how messages name what made it; None: the text at `span`

    def __init__(self, node: str, type: TensorType | None, span: Span | None,
                 producer: str | None = None):
        # One per node and one Layer per stage: fields set in one step (see Span).
        _set(self, "__dict__", {"node": node, "type": type, "span": span,
                                "producer": producer})

    @property
    def origin(self) -> str:
        """The producer as messages name it, e.g. "`dense(64)`" (quoted only when a message
        needs it: most tensors are never in one)."""
        return self.producer if self.producer is not None else f"`{source_text(self.span)}`"


@dataclass(frozen=True)
class Tensors:
    """Several tensors as one value: a block with several outputs, an op with several
    results. `a, b = value` unpacks it; passed to a layer it counts as its tensors in order."""

    items: tuple[Tensor, ...]
    span: Span | None


@dataclass(frozen=True, init=False)
class Layer:
    """Something applicable to tensors: an op with its arguments, a block, a fn, a repeat
    or a composition."""

    kind: LayerKind
    name: str  # op or definition name ("pipeline" for a seq, "repeat" for a repeat)
    span: Span | None
    args: tuple = ()  # evaluated positional arguments (tensors first, then values)
    arg_spans: tuple = ()  # spans of the non-tensor positional arguments
    kwargs: tuple = ()  # ((name, value, span), ...)
    parts: tuple[Layer, ...] = ()  # seq parts, or the repeated layer
    count: int = 1
    module: str | None = None  # set when bound to a name: applications share weights
    numbered: bool = False  # a `seq(...)`: its parts are named 0, 1, 2... like nn.Sequential

    def __init__(self, kind: LayerKind, name: str, span: Span | None, args: tuple = (),
                 arg_spans: tuple = (), kwargs: tuple = (), parts: tuple = (),
                 count: int = 1, module: str | None = None, numbered: bool = False):
        _set(self, "__dict__", {"kind": kind, "name": name, "span": span, "args": args,
                                "arg_spans": arg_spans, "kwargs": kwargs, "parts": parts,
                                "count": count, "module": module, "numbered": numbered})


class _Poison:
    """The type of `POISON` (its name shows in a message about a value that failed)."""

    def __repr__(self):
        return "<error>"


POISON = _Poison()


def source_text(span: Span | None) -> str:
    """The spec text a span covers (first line only), for messages."""
    if span is None:
        return "?"
    line = span.source.line(span.line)
    end = span.end_col if span.end_line == span.line else len(line) + 1
    return line[span.col - 1:end - 1].strip() or "?"


def describe(value) -> str:
    """A value as a message's noun phrase: "a tensor [64]", "the number 3"."""
    if isinstance(value, Tensor):
        return f"a tensor {value.type}" if value.type else "a tensor"
    if isinstance(value, Tensors):
        return f"{len(value.items)} tensors"
    if isinstance(value, Layer):
        return f"the layer `{value.name}`"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else type(value).__name__


def show(value) -> str:
    """A value as the spec would write it: `true`, `none`, `"same"`, `[1, 2]`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)
