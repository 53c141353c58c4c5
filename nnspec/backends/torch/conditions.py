"""The conditions of a spec block (`a if stride == 1 and C == out else b`): their value for
one use, and their text as Python whose names are `Num`s, so that sharing makes them the
class's arguments (`stride == 1 and in_channels == out`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from nnspec.backends.torch.source import Num
from nnspec.diagnostics import DiagnosticError
from nnspec.ir.arithmetic import combine, is_number
from nnspec.syntax import ast

_COMPARE = ("<", "<=", ">", ">=", "==", "!=")
_PYTHON_PRECEDENCE = {"or": 1, "and": 2, "not": 3, **dict.fromkeys(_COMPARE, 4), "+": 5,
                      "-": 5, "*": 6, "/": 6, "%": 6, "neg": 7, "^": 8}


def conditions(definition: ast.Definition) -> list[ast.Expr]:
    """The conditions of the block's `a if cond else b` expressions, in source order."""
    out: list[ast.Expr] = []

    def visit(node) -> None:
        if isinstance(node, ast.Conditional):
            out.append(node.cond)
        if isinstance(node, ast.Node):
            for value in (getattr(node, f.name) for f in fields(node)):
                for child in value if isinstance(value, tuple) else (value,):
                    if isinstance(child, ast.Node):
                        visit(child)

    for stmt in definition.body:
        visit(stmt)
    return out


def evaluate(node, env: Mapping[str, object]):
    """The value of a condition for one use; None where it reads something else."""
    try:
        return _value(node, env)
    except (KeyError, TypeError, ArithmeticError, ValueError, DiagnosticError):
        return None


def _value(node, env: Mapping[str, object]):
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        value = env[node.id]
        if not (is_number(value) or isinstance(value, bool)):
            raise TypeError(node.id)
        return value
    if isinstance(node, ast.Unary):
        inner = _value(node.operand, env)
        return (not inner) if node.op == "not" else -inner
    if isinstance(node, ast.BinOp):
        if node.op in ("and", "or"):
            left, right = _value(node.left, env), _value(node.right, env)
            return (left and right) if node.op == "and" else (left or right)
        left, right = _value(node.left, env), _value(node.right, env)
        if node.op in ("<", "<=", ">", ">="):
            return {"<": left < right, "<=": left <= right, ">": left > right,
                    ">=": left >= right}[node.op]
        return combine(node.op, left, right, node.span)
    raise TypeError(type(node).__name__)


def condition_code(node, env: Mapping[str, object]):
    """A condition as code whose names are `Num`s (so sharing makes them the block's
    arguments); None where it reads something that is not a number."""
    try:
        return _code(node, env)[0]
    except (KeyError, TypeError):
        return None


def _code(node, env: Mapping[str, object]) -> tuple[tuple, int]:
    if isinstance(node, ast.Number):
        return (repr(node.value),), 9
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return (repr(node.value),), 9
    if isinstance(node, ast.Name):
        value = env[node.id]
        if not (is_number(value) or isinstance(value, bool)):
            raise TypeError(node.id)
        return (Num(value, node.id, primary=False, named=True),), 9
    if isinstance(node, ast.Unary):
        op = "not" if node.op == "not" else "neg"
        inner, prec = _code(node.operand, env)
        prec_op = _PYTHON_PRECEDENCE[op]
        inner = inner if prec > prec_op else ("(", *inner, ")")
        return (("not " if op == "not" else "-"), *inner), prec_op
    if isinstance(node, ast.BinOp) and node.op in _PYTHON_PRECEDENCE:
        prec = _PYTHON_PRECEDENCE[node.op]
        left, left_prec = _code(node.left, env)
        right, right_prec = _code(node.right, env)
        if left_prec < prec or (prec == 4 and left_prec == 4):
            left = ("(", *left, ")")
        if right_prec <= prec:
            right = ("(", *right, ")")
        op = {"^": "**"}.get(node.op, node.op)
        return (*left, f" {op} ", *right), prec
    raise TypeError(type(node).__name__)
