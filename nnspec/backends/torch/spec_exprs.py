"""The spec's own arithmetic, as Python: candidates for the numbers of a generated class.

A block's layer widths are written in the spec as expressions of its parameters
(`dense(4 * d)`); the IR keeps only their values. Every such expression of a definition is
collected here with its Python text, so that sharing can recognise a number as `4 * d` when
its value, instance by instance and build by build, is what `4 * d` gives.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from nnspec.backends.torch.source import is_simple_power_operand
from nnspec.diagnostics import DiagnosticError
from nnspec.ir.arithmetic import combine, is_number
from nnspec.syntax import ast

_ARITHMETIC = ("+", "-", "*", "/", "%", "^")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "**": 4}
_MAX_TERMS = 64  # nodes of a sub-expression worth recognising (`4 * d`, `d // heads + 1`)


@dataclass(frozen=True)
class SpecExpr:
    """An arithmetic expression of the spec over a definition's parameters."""

    node: ast.Expr
    names: frozenset[str]

    def value(self, env: Mapping[str, object]):
        """Its value for one set of parameter values; None where it has none."""
        try:
            return _evaluate(self.node, env)
        except (DiagnosticError, KeyError, TypeError, ArithmeticError):
            return None

    def text(self, name_text: Mapping[str, str], integral: bool) -> str:
        """Python for it; `integral`: every `/` divides exactly (nnspec keeps an int)."""
        return _text(self.node, name_text, integral)[0]


def expressions(definition: ast.Definition, params: frozenset[str]) -> list[SpecExpr]:
    """The arithmetic sub-expressions of a definition (its body and defaults) that use only
    its parameters, each once, in source order."""
    found: dict[str, SpecExpr] = {}
    roots = [p.default for p in definition.params if p.default is not None]
    for stmt in definition.body:
        roots.append(stmt.value if isinstance(stmt, (ast.Assign, ast.Output)) else None)
    for root in roots:
        for node in _subexpressions(root):
            names = _names(node)
            if names is not None and names and names <= params:
                key = repr(node)
                found.setdefault(key, SpecExpr(node, frozenset(names)))
    return list(found.values())


def _subexpressions(root) -> Iterator[ast.Expr]:
    """Every arithmetic sub-expression, in source order; a loop, not recursion: a sum of
    thousands of terms is as deep as it is long."""
    todo = [root]
    while todo:
        node = todo.pop()
        if node is None:
            continue
        if isinstance(node, (ast.BinOp, ast.Unary)) and _names(node) is not None:
            yield node
        children: tuple = ()
        if isinstance(node, ast.BinOp):
            children = (node.left, node.right)
        elif isinstance(node, ast.Unary):
            children = (node.operand,)
        elif isinstance(node, ast.Call):
            children = (*node.args, *(k.value for k in node.kwargs))
        elif isinstance(node, ast.Pipeline):
            children = (node.head, *(s.layer for s in node.stages))
        elif isinstance(node, ast.Conditional):
            children = (node.then, node.cond, node.otherwise)
        elif isinstance(node, ast.ListExpr):
            children = node.items
        todo.extend(reversed(children))


def is_arithmetic(node) -> bool:
    """Plain arithmetic of numbers and names, short enough to be a size someone wrote."""
    return _names(node) is not None


def _names(node) -> set[str] | None:
    """The names an arithmetic expression reads; None if it is not plain arithmetic, or
    longer than a size anyone writes (`_MAX_TERMS`), which also bounds the recursion of
    `_evaluate` and `_text`."""
    names: set[str] = set()
    todo, seen = [node], 0
    while todo:
        node = todo.pop()
        seen += 1
        if seen > _MAX_TERMS:
            return None
        if isinstance(node, ast.Number):
            continue
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Unary) and node.op == "-":
            todo.append(node.operand)
        elif isinstance(node, ast.BinOp) and node.op in _ARITHMETIC:
            todo += (node.left, node.right)
        else:
            return None
    return names


def _evaluate(node, env: Mapping[str, object]):
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Name):
        value = env[node.id]
        if not is_number(value):
            raise TypeError(node.id)
        return value
    if isinstance(node, ast.Unary):
        return -_evaluate(node.operand, env)
    return combine(node.op, _evaluate(node.left, env), _evaluate(node.right, env), node.span)


def _text(node, name_text: Mapping[str, str], integral: bool) -> tuple[str, int]:
    """(text, precedence)."""
    if isinstance(node, ast.Number):
        return repr(node.value), 5
    if isinstance(node, ast.Name):
        return name_text[node.id], 5
    if isinstance(node, ast.Unary):
        inner, prec = _text(node.operand, name_text, integral)
        return "-" + (inner if prec >= 3 else f"({inner})"), 3
    op = {"^": "**", "/": "//" if integral else "/"}.get(node.op, node.op)
    prec = _PRECEDENCE[op]
    left, left_prec = _text(node.left, name_text, integral)
    right, right_prec = _text(node.right, name_text, integral)
    if left_prec < prec or (op == "**" and left_prec <= prec):
        left = f"({left})"
    if right_prec < prec or (right_prec == prec and op != "**"):
        right = f"({right})"
    if op == "**":
        hug = is_simple_power_operand(left) and is_simple_power_operand(right)
        return f"{left}**{right}" if hug else f"{left} ** {right}", prec
    return f"{left} {op} {right}", prec
