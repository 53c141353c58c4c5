"""Arithmetic on plain values (hyperparameters, dims, arguments): what `+ - * / % ^`, the
comparisons and `min`/`max`/`int`/`float`/`round`/`sqrt`/`exp`/`log`/`abs` mean on numbers, and their limits.

`/` of two integers that divide exactly stays an integer (`d / heads` is a size), and no
result may need more than `MAX_INT_BITS` bits (`9 ^ 9 ^ 9` would take the compiler forever).
"""

from __future__ import annotations

import math

from nnspec.diagnostics import DiagnosticError, Span
from nnspec.ir.values import describe, source_text

BUILTIN_FUNCS = {"min": min, "max": max, "int": int, "float": float, "round": round,
                 "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "abs": abs}
MAX_INT_BITS = 4096


def _divide(left, right):
    if isinstance(left, int) and isinstance(right, int) and left % right == 0:
        return left // right
    return left / right


_OPERATORS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": _divide,
    "%": lambda a, b: a % b, "^": lambda a, b: a ** b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def combine(op: str, left, right, span: Span):
    """`left op right` for plain values (numbers; `+` also joins lists; `==` compares any)."""
    if op in ("==", "!="):
        return (left == right) == (op == "==")
    if not (is_number(left) and is_number(right)):
        if op == "+" and isinstance(left, list) and isinstance(right, list):
            return left + right
        raise DiagnosticError("E131", f"`{op}` cannot combine {describe(left)} and "
                              f"{describe(right)}", span)
    if op in ("/", "%") and right == 0:
        raise DiagnosticError("E132", "division by zero", span)
    if op == "^" and isinstance(left, int) and isinstance(right, int) and right > 0 \
            and abs(left) > 1 and right * abs(left).bit_length() > MAX_INT_BITS:
        raise DiagnosticError("E131", f"`{left} ^ {right}` is too large a number", span)
    try:
        result = _OPERATORS[op](left, right)
    except ArithmeticError:
        raise DiagnosticError("E131", f"`{source_text(span)}` has no finite value",
                              span) from None
    if isinstance(result, complex):
        raise DiagnosticError("E131", f"`{source_text(span)}` is not a real number", span)
    return result


def call_builtin(name: str, values: list, arg_spans: list[Span], span: Span):
    """`min`/`max` of two or more numbers, `int`/`float`/`round`/`sqrt`/... of one (a
    tensor's `sqrt(x)` is the op of that name)."""
    variadic = name in ("min", "max")
    wanted = "two or more numbers" if variadic else "one number"
    if (len(values) < 2) if variadic else (len(values) != 1):
        raise DiagnosticError("E131", f"`{name}` takes {wanted}, got {len(values)}", span)
    for value, arg_span in zip(values, arg_spans):
        if not is_number(value):
            raise DiagnosticError("E131", f"`{name}` takes {wanted}, got {describe(value)}",
                                  arg_span)
    try:
        return BUILTIN_FUNCS[name](*values)
    except (ValueError, ArithmeticError) as err:
        raise DiagnosticError("E131", f"`{name}`: {err}", span) from None
