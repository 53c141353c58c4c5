"""Tensors written with their own syntax rather than by applying a layer: parts of a tensor
(subscripts `x[0]`, `x[:, 1:3]`, `x[..., :d]`, and `split` / `chunk` into several tensors,
all made of `select` and `slice` nodes), and learned parameters (`param cls: [1, d]`).

Subscripts index per-sample dims only, as every dim in the language does: the batch dim is
implicit, so `x[0]` of a `[T, d]` sequence is its first step in every sample. A subscript is
one node per indexed dim (most are one); each piece of a split is a `slice` node, so the
IR needs no op with several results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nnspec.diagnostics import Diagnostic, DiagnosticError, Span, did_you_mean
from nnspec.ir import ops
from nnspec.ir.attrs import argument_spans, bind_attrs
from nnspec.ir.frames import Frame
from nnspec.ir.nodes import apply_op
from nnspec.ir.ops import Attr
from nnspec.ir.values import POISON, Layer, Tensor, Tensors, describe, source_text
from nnspec.syntax import ast

SPLITS = {
    "chunk": (Attr("chunks", "int", doc="how many pieces (the last may be smaller, as torch)",
                   minimum=1), Attr("dim", "int", 0)),
    "split": (Attr("sizes", "ints", doc="the size of each piece, or a list of sizes",
                   minimum=1), Attr("dim", "int", 0)),
}


@dataclass(frozen=True)
class Item:
    """One subscript, evaluated: an index, a slice (start, stop, step) or `...`."""

    kind: Literal["index", "slice", "ellipsis"]
    value: int | tuple | None
    span: Span


Report = Callable[[Diagnostic], None]
Evaluate = Callable[[ast.Expr], object]


def subscript_item(item, evaluate: Evaluate) -> Item | None:
    """One subscript evaluated; None when its expression already reported an error."""
    try:
        return _item(item, evaluate)
    except _Poisoned:
        return None


class _Poisoned(Exception):
    """A subscript's expression already failed (and said so)."""


def _item(item, evaluate: Evaluate) -> Item:
    if isinstance(item, ast.EllipsisItem):
        return Item("ellipsis", None, item.span)
    if isinstance(item, ast.Slice):
        start, stop, step = (None if part is None else _index(part, evaluate)
                             for part in (item.start, item.stop, item.step))
        return Item("slice", (start, stop, 1 if step is None else step), item.span)
    return Item("index", _index(item, evaluate), item.span)


def _index(expr, evaluate: Evaluate) -> int:
    value = evaluate(expr)
    if value is POISON:
        raise _Poisoned
    if isinstance(value, bool) or not isinstance(value, int):
        raise DiagnosticError("E160", f"a subscript takes integers and slices `a:b`, but "
                              f"`{source_text(expr.span)}` is {describe(value)}", expr.span)
    return value


def subscript(tensor: Tensor, items: list[Item], span: Span, frame: Frame,
              report: Report) -> Tensor:
    """`tensor[items]`: slices first (they keep every dim), then indexes from the last dim
    to the first, so each index's dim is still where the spec wrote it."""
    if tensor is POISON or tensor.type is None or None in items:
        return POISON
    rank = tensor.type.rank
    ellipses = [i for i in items if i.kind == "ellipsis"]
    if len(ellipses) > 1:
        raise DiagnosticError("E164", "a subscript can have only one `...`", ellipses[1].span)
    written = [i for i in items if i.kind != "ellipsis"]
    if len(written) > rank:
        raise DiagnosticError(
            "E164", f"`{source_text(tensor.span)}` has {rank} per-sample dim(s) {tensor.type} "
            f"but the subscript indexes {len(written)}", span,
            "subscripts index per-sample dims only: the batch dim is implicit and is never "
            "indexed (`x[0]` is the first row of every sample)")
    dims = {}
    after = False
    for position, item in enumerate(items):
        if item.kind == "ellipsis":
            after = True
        elif after:
            dims[id(item)] = position - len(items)  # counted from the end
        else:
            dims[id(item)] = position
    current = tensor
    for item in written:
        if item.kind == "slice" and item.value != (None, None, 1):
            start, stop, step = item.value
            current = apply_op("slice", [current], {"start": start, "stop": stop, "step": step,
                                                    "dim": dims[id(item)]}, span, frame, report)
    indexes = sorted((i for i in written if i.kind == "index"),
                     key=lambda i: dims[id(i)] % rank, reverse=True)
    for item in indexes:
        if current is POISON or current.type is None:
            return POISON
        dim = dims[id(item)]
        if dim < 0:  # the dims after it are gone already: count it from the end again
            dim = dim % rank - current.type.rank
        current = apply_op("select", [current], {"index": item.value, "dim": dim}, span,
                           frame, report)
    return current


def pick(value: Tensors, expr: ast.Subscript, index) -> Tensor:
    """One tensor of several: `chunk(x, 3)[0]`."""
    if isinstance(index, int) and not isinstance(index, bool) \
            and -len(value.items) <= index < len(value.items):
        return value.items[index]
    raise DiagnosticError("E164", f"`{source_text(expr.value.span)}` gives {len(value.items)} "
                          f"tensors; {describe(index)} is not one of their positions",
                          expr.items[0].span)


def check_split_target(expr: ast.Call, first) -> None:
    """`chunk(x, ...)` takes its tensor first (it is not a layer for `->`)."""
    if not expr.args or not (isinstance(first, (Tensor, Tensors, Layer)) or first is POISON):
        raise DiagnosticError("E154", f"`{expr.func}` takes the tensor to split first: "
                              f"`{expr.func}(x, ...)`", expr.span, "it gives several tensors, "
                              "so it is not a layer to apply with `->`")


def split_call(expr: ast.Call, tensor: Tensor, evaluate: Evaluate, frame: Frame,
               report: Report) -> Tensors:
    """The call `chunk(x, ...)` / `split(x, ...)` whose tensor `x` is already evaluated."""
    schema = SPLITS[expr.func]
    values = [evaluate(a) for a in expr.args[1:]]
    keywords = {k.name: evaluate(k.value) for k in expr.kwargs}
    spans = argument_spans(schema, [a.span for a in expr.args[1:]],
                           ((k.name, k.span) for k in expr.kwargs))
    attrs = bind_attrs(expr.func, schema, values, keywords, spans, expr.span)
    if tensor is POISON:
        return POISON
    return split(expr.func, tensor, attrs, expr.span, frame, report)


def split(func: str, tensor: Tensor, attrs, span: Span, frame: Frame,
          report: Report) -> Tensors:
    """`chunk(x, n, dim)` / `split(x, size or sizes, dim)` as torch splits: one `slice`
    node per piece."""
    if tensor.type is None:
        return POISON
    x = tensor.type
    if x.rank == 0 or not -x.rank <= attrs.dim < x.rank:
        raise DiagnosticError("E164", f"{func}: dim {attrs.dim} is out of range for {x}", span,
                              "per-sample dims only: the batch dim is implicit")
    size = x.shape[attrs.dim]
    if not isinstance(size, int):
        raise DiagnosticError("E164", f"{func} needs a known size, but dim {attrs.dim} of {x} "
                              f"is `{size}`", span, "declare that dim as a number")
    if func == "chunk":
        step = math.ceil(size / attrs.chunks)
        sizes = [min(step, size - start) for start in range(0, size, step)]
    elif isinstance(attrs.sizes, int):
        sizes = [min(attrs.sizes, size - start) for start in range(0, size, attrs.sizes)]
    else:
        sizes = list(attrs.sizes)
        if sum(sizes) != size:
            raise DiagnosticError("E164", f"split: the sizes {sizes} add up to {sum(sizes)}, "
                                  f"but dim {attrs.dim} of {x} is {size}", span)
    pieces, start = [], 0
    for n in sizes:
        pieces.append(apply_op("slice", [tensor], {"start": start, "stop": start + n,
                                                   "dim": attrs.dim}, span, frame, report))
        start += n
    return Tensors(tuple(pieces), span)


def declare_param(stmt: ast.ParamDecl, evaluate: Evaluate, frame: Frame,
                  report: Report) -> Tensor:
    """`param cls: [1, d] = normal(std = 0.02)`: a `parameter` node named `cls`, its tensor
    stored under that name (`blocks.0.cls` in a block instance); zeros unless told."""
    if stmt.type.dtype == "int":
        raise DiagnosticError("E303", "a learned parameter holds float values", stmt.type.span,
                              f"write `param {stmt.name}: [...]`")
    shape = []
    for dim in stmt.type.dims:
        value = evaluate(dim)
        if value is POISON:
            return POISON
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DiagnosticError("E130", f"a parameter's dims must be positive integers, got "
                                  f"{describe(value)}", dim.span)
        shape.append(value)
    if not shape:
        raise DiagnosticError("E130", "a parameter needs at least one dim", stmt.type.span,
                              f"write `param {stmt.name}: [1]` for a single number")
    std_attr = ops.OPS["parameter"].attr("std")
    init, values, keywords, spans = "zeros", [], {}, {}
    if isinstance(stmt.init, ast.Name):
        init = stmt.init.id
    elif isinstance(stmt.init, ast.Call):
        init = stmt.init.func
        values = [evaluate(a) for a in stmt.init.args]
        keywords = {k.name: evaluate(k.value) for k in stmt.init.kwargs}
        spans = argument_spans((std_attr,), [a.span for a in stmt.init.args],
                               ((k.name, k.span) for k in stmt.init.kwargs))
    elif stmt.init is not None:
        init = source_text(stmt.init.span)
    if init not in ops.PARAM_INITS or ((values or keywords) and init != "normal"):
        raise DiagnosticError("E161", f"a parameter starts as zeros, ones or normal(std = ...),"
                              f" not `{source_text(stmt.init.span)}`", stmt.init.span,
                              did_you_mean(init, ops.PARAM_INITS))
    std = bind_attrs("normal", (std_attr,), values, keywords, spans,
                     stmt.init.span if stmt.init else stmt.span)["std"]
    return apply_op("parameter", [], {"shape": shape, "init": init, "std": std}, stmt.span,
                    frame, report, stmt.name)
