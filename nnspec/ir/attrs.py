"""Binding a call's arguments to what is called: positional and keyword binding, defaults,
and for ops each value checked against its `Attr` (kind, choices, minimum, maximum).

An attribute schema is a tuple of `ops.Attr`: an op's attributes, or an optimizer's or a
schedule's hyperparameters. A model's, block's or fn's parameters are bound by
`bind_params` (untyped; their defaults are expressions). Errors name the argument and point
at where it was written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nnspec.diagnostics import DiagnosticError, Note, Span, did_you_mean
from nnspec.ir import ops
from nnspec.ir.values import Layer, Tensor, describe, show
from nnspec.syntax import ast

_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false",
             "str": "a string", "ints": "an integer or a list of integers",
             "dims": "a dim (an integer or a symbolic dim) or a list of dims",
             "padding": 'an integer, a list, "same" or "valid"', "floats": "a list of numbers",
             "scales": "a number or a list of numbers",
             "tensor": "a tensor"}


def settable(schema: Sequence[ops.Attr]) -> list[ops.Attr]:
    """The attributes a call may pass by position (`layer` and `tensor` ones only by
    keyword)."""
    return [a for a in schema if a.kind not in ("layer", "tensor")]


def argument_spans(schema: Sequence[ops.Attr], positional: Sequence[Span],
                   keywords: Iterable[tuple[str, Span]]) -> dict[str | int, Span]:
    """Where each argument was written, by name and by position (for surplus arguments)."""
    spans: dict[str | int, Span] = {a.name: s for a, s in zip(settable(schema), positional)}
    spans.update(enumerate(positional))
    spans.update(keywords)
    return spans


def signature_hint(name: str, schema: Sequence[ops.Attr]) -> str:
    parts = [a.name if a.default is ops.REQUIRED else f"{a.name}={show(a.default)}"
             for a in schema]
    return f"usage: {name}({', '.join(parts)})"


def bind_attrs(name: str, schema: Sequence[ops.Attr], values: list, keywords: dict,
               spans: dict[str | int, Span], span: Span,
               positional: Sequence[ops.Attr] | None = None) -> ops.Attrs:
    """Every attribute of `schema` from the call `name(*values, **keywords)`, checked, with
    defaults filled in; DiagnosticError at the offending argument (else at `span`).
    `positional` is `settable(schema)` when the caller already has it (an op's)."""
    given = {}
    if values:
        if positional is None:
            positional = settable(schema)
        if positional and positional[-1].variadic and len(values) > len(positional):
            keep = len(positional) - 1
            values = values[:keep] + [list(values[keep:])]
        if len(values) > len(positional):
            raise DiagnosticError("E140", f"`{name}` takes at most {len(positional)} "
                                  f"argument(s) but got {len(values)}",
                                  spans.get(len(positional), span), signature_hint(name, schema))
        for attr, value in zip(positional, values):
            given[attr.name] = value
    names = [a.name for a in schema] if keywords else []
    for key, value in keywords.items():
        if key not in names:
            hint = did_you_mean(key, names) or signature_hint(name, schema)
            raise DiagnosticError("E141", f"`{name}` has no argument `{key}`",
                                  spans.get(key, span), hint)
        if key in given:
            raise DiagnosticError("E142", f"`{key}` is given twice", spans.get(key, span))
        given[key] = value
    bound = ops.Attrs()
    for attr in schema:
        if attr.name in given:
            bound[attr.name] = check_attr(name, attr, given[attr.name],
                                          spans.get(attr.name, span))
        elif attr.default is ops.REQUIRED:
            raise DiagnosticError("E143", f"`{name}` needs a value for `{attr.name}`", span,
                                  signature_hint(name, schema))
        else:
            bound[attr.name] = attr.default
    return bound


def check_attr(owner: str, attr: ops.Attr, value, span: Span):
    """`value` as `attr` holds it (ints as given, floats as float, lists as tuples)."""
    where = f"`{owner}`'s `{attr.name}`"
    if value is None and (attr.optional or attr.default is None):
        return None
    kind = attr.kind
    ok = True
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "floats" or kind == "scales" and isinstance(value, list):
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) and
                                             not isinstance(v, bool) for v in value)
        ok = ok and (kind == "floats" or bool(value))
        value = tuple(float(v) for v in value) if ok else value
    elif kind == "scales":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "ints" or kind == "padding":
        if kind == "padding" and isinstance(value, str):
            if value not in ("same", "valid"):
                raise DiagnosticError("E161", f'{where} must be a number, "same" or "valid", '
                                      f'got "{value}"', span,
                                      did_you_mean(value, ["same", "valid"]))
            return value
        if isinstance(value, list):
            ok = bool(value) and all(isinstance(v, int) and not isinstance(v, bool)
                                     for v in value)
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "dims":  # symbolic dims are names bound by an input pattern (`T`)
        items = value if isinstance(value, list) else [value]
        ok = bool(items) and all(isinstance(v, str) and v.isidentifier() or
                                 isinstance(v, int) and not isinstance(v, bool) for v in items)
        value = tuple(value) if ok and isinstance(value, list) else value
        if ok:
            return value
    elif kind == "tensor":
        if not isinstance(value, Tensor):
            raise DiagnosticError("E160", f"{where} must be a tensor, got {describe(value)}",
                                  span)
        return value
    elif kind == "layer":
        if isinstance(value, str) and value:  # a layer by its path: `tie = "model.embed_tokens"`
            return Layer("op", value, span, module=value)
        if not isinstance(value, Layer) or value.module is None:
            raise DiagnosticError("E162", f"{where} must name a layer (label one with "
                                  "`-> embedding(...) as wte`), or give its path as text "
                                  '(`"model.embed_tokens"`)', span)
        return value
    if not ok:
        raise DiagnosticError("E160", f"{where} must be {_EXPECTED[kind]}, got "
                              f"{describe(value)}", span)
    if attr.choices and value not in attr.choices:
        raise DiagnosticError("E161", f"{where} must be one of "
                              f"{', '.join(map(str, attr.choices))}; got {show(value)}", span,
                              did_you_mean(str(value), map(str, attr.choices)))
    numbers = value if isinstance(value, tuple) else (value,)
    for v in numbers:
        if attr.minimum is not None and v < attr.minimum:
            raise DiagnosticError("E163", f"{where} must be at least {show(attr.minimum)}, "
                                  f"got {show(v)}", span)
        if attr.maximum is not None and v > attr.maximum:
            raise DiagnosticError("E163", f"{where} must be at most {show(attr.maximum)}, "
                                  f"got {show(v)}", span)
    return value


def bind_params(definition: ast.Definition, positional: list, keywords: dict,
                into: dict[str, Any], default: Callable[[ast.Expr], Any], call_span: Span,
                keyword_spans: dict[str, Span] | None = None) -> dict[str, Any]:
    """A model's, block's or fn's parameters from a call, each also set in `into` as it is
    bound, so that `default` (which evaluates a default expression) sees the earlier ones."""
    names = [p.name for p in definition.params]
    if len(positional) > len(names):
        raise DiagnosticError("E140", f"`{definition.name}` takes {len(names)} argument(s) "
                              f"but got {len(positional)}", call_span,
                              f"its parameters are: {', '.join(names) or 'none'}")
    for key in keywords:
        if key not in names:
            span = (keyword_spans or {}).get(key, call_span)
            hint = did_you_mean(key, names) or (
                f"its parameters are: {', '.join(names)}" if names else None)
            raise DiagnosticError("E141", f"`{definition.name}` has no parameter `{key}`",
                                  span, hint)
    bound = {}
    for i, p in enumerate(definition.params):
        if i < len(positional):
            value = positional[i]
            if p.name in keywords:
                raise DiagnosticError("E142", f"`{p.name}` is given twice", call_span)
        elif p.name in keywords:
            value = keywords[p.name]
        elif p.default is not None:
            value = default(p.default)
        else:
            raise DiagnosticError("E143", f"`{definition.name}` needs a value for `{p.name}`",
                                  call_span, f"pass `{p.name} = ...`",
                                  (Note(definition.name_span,
                                        f"`{definition.name}` is defined here"),))
        into[p.name] = value
        bound[p.name] = value
    return bound
