"""A generated block class's signature: the spec's parameters with the spec's defaults.

A default that is a plain value is written as it is (`stride=1`); one that is an expression
of other parameters (`ff = 4 * d`) becomes `None`, computed at the top of `__init__`. Calls
leave out the trailing arguments every use leaves at their default.
"""

from __future__ import annotations

from nnspec.backends.torch.names import literal
from nnspec.backends.torch.spec_exprs import SpecExpr, expressions
from nnspec.syntax import ast


def _key(value) -> tuple:
    return type(value).__name__, repr(value)


def default_expression(spec: ast.Definition, param: ast.Param, params: list[str]) -> str:
    names = {p: p for p in params}
    found = [e for e in expressions(spec, frozenset(params)) if e.node is param.default]
    if found:
        return found[0].text(names, integral=False)
    return literal(None)


def trailing_defaults(spec: ast.Definition | None, params: list[str], envs: list[dict]) -> int:
    """How many of the last parameters every use leaves at their default, so calls
    leave them out (`Block(d, heads)`, not `Block(d, heads, 4 * d)`)."""
    if spec is None:
        return 0
    defaults = {p.name: p for p in spec.params}
    count = 0
    for name in reversed(params):
        param = defaults[name]
        if param.default is None:
            break
        text = default_text(param)
        if text is not None:
            same = all(literal(env[name]) == text for env in envs)
        else:
            default = SpecExpr(param.default, frozenset())
            same = all(_key(default.value(env)) == _key(env[name])
                       for env in envs)
        if not same:
            break
        count += 1
    return count

def signature_of(spec: ast.Definition | None, params: list[str]) -> tuple[str, ...]:
    """A block's own parameters with the spec's defaults (None for a default that is an
    expression of other parameters, which `__init__` then computes)."""
    defaults = {p.name: p for p in spec.params} if spec is not None else {}
    out = []
    for name in params:
        param = defaults[name]
        if param.default is None:
            out.append(name)
        else:
            out.append(f"{name}={default_text(param) or 'None'}")
    return tuple(out)


def default_text(param: ast.Param) -> str | None:
    """A parameter's default as Python when it is a plain value, else None."""
    node = param.default
    if isinstance(node, ast.Unary) and node.op == "-" and isinstance(node.operand, ast.Number):
        return literal(-node.operand.value)
    if isinstance(node, ast.Number):
        return literal(node.value)
    if isinstance(node, ast.Constant):
        return literal(node.value)
    return None
