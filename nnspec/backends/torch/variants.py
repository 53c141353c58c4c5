"""One class for the uses of a block that build different layers.

A block with a conditional part (`x if stride == 1 and C == channels else (x -> ... as
downsample)`) builds a layer in some uses and not in others. torchvision writes such a
block as one class whose optional layer is None where it is not built; here `__init__`
sets `self.downsample = None` and builds it under the spec's condition, and `forward`
calls it under `if self.downsample is not None:`. This module
finds that form: a use with every optional layer (the *full* use), every other use's text
being the full one without the optional layers and the lines that call them, and for each
optional layer one of the spec's conditions whose value, use by use, says whether it is
built. `conform` then writes each use in that one form, with `UNKNOWN` for the numbers of a
layer it does not build, so the sharing phase treats the uses as one group.

Where no such form exists (the uses differ in a shared layer, or no condition of the spec
says which layer is built), the uses stay separate classes and the plan says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from nnspec.backends.torch.lower import Unit
from nnspec.backends.torch.source import Block, Group, Instance, Num, Stmt, expr, layout, walk
from nnspec.diagnostics import DiagnosticError
from nnspec.ir.arithmetic import combine, is_number
from nnspec.syntax import ast


class _Unknown:
    """The value of a number in a layer a use does not build."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()

_COMPARE = ("<", "<=", ">", ">=", "==", "!=")
_PYTHON_PRECEDENCE = {"or": 1, "and": 2, "not": 3, **dict.fromkeys(_COMPARE, 4), "+": 5,
                      "-": 5, "*": 6, "/": 6, "%": 6, "neg": 7, "^": 8}
_ATTRIBUTE = re.compile(r"\bself\.(\w+)")

Env = Callable[[Unit], Mapping[str, object]]  # a use's parameters and input dims by name


@dataclass(frozen=True)
class Plan:
    """How the uses of one block are one class."""

    full: Unit  # a use that builds every optional layer
    optional: Mapping[str, tuple[ast.Expr, bool]]  # attribute -> (condition, built when)


def plan(groups: list[list[Unit]], definition: ast.Definition | None, env: Env
         ) -> Plan | str:
    """The plan for groups of uses that each read alike, or why there is none."""
    reps = [g[0] for g in groups]
    if definition is None or len({u.params for u in reps}) > 1:
        return "its uses take different inputs"
    attrs = [_attributes(u) for u in reps]
    if any(a is None for a in attrs):
        return "its uses build their layers differently"
    union = set().union(*attrs)
    full = next((u for u, a in zip(reps, attrs) if set(a) == union), None)
    if full is None:
        return "no use builds every layer the others build"
    full_attrs = _attributes(full)
    optional = [t for t in full_attrs if any(t not in a for a in attrs)]
    for t in full_attrs:
        stmts = [a[t] for a in attrs if t in a]
        if len({_blank_text([s]) for s in stmts}) > 1:
            return f"`{t}` is built differently in different uses"
        if t in optional and any(isinstance(i, Instance) for i in walk(stmts[0])):
            return f"the optional `{t}` holds a block"
    names = {t.removeprefix("self.") for t in optional}
    guards = [_guard(line, names) for line in full.forward]
    if guards and guards[-1]:
        return "its uses return different values"
    for unit, present in zip(reps, attrs):
        kept = [line for line, g in zip(full.forward, guards)
                if all(f"self.{n}" in present for n in g)]
        if _blank_text(kept) != _blank_text(unit.forward) or \
                [t for t in full_attrs if t in present] != list(present):
            return "its uses compute different things"
    conditions = _conditions(definition)
    members = [u for g in groups for u in g]
    chosen: dict[str, tuple[ast.Expr, bool]] = {}
    for t in optional:
        built = [t in _attributes(u) for u in members]
        found = None
        for cond in conditions:
            values = [_evaluate(cond, env(u)) for u in members]
            if any(not isinstance(v, bool) for v in values):
                continue
            if values == built or [not v for v in values] == built:
                found = (cond, values == built)
                break
        if found is None:
            return f"no condition of the spec says which uses build `{t}`"
        chosen[t.removeprefix("self.")] = found
    return Plan(full, chosen)


def conform(unit: Unit, plan: Plan, env: Mapping[str, object]) -> Unit | None:
    """`unit` written in the plan's one form (its numbers where it builds a layer,
    `UNKNOWN` where it does not); None where it does not fit the plan."""
    mine = _attributes(unit)
    if mine is None:
        return None
    init = []
    for stmt in plan.full.init:
        name = stmt.target.removeprefix("self.")
        own = mine.get(stmt.target)
        if name not in plan.optional:
            if own is None:
                return None
            init.append(own)
            continue
        cond, when = plan.optional[name]
        value = own.value if own is not None else _unknown(stmt.value)
        test = _condition_expr(cond, env)
        if test is None:
            return None
        header = ("if ", test) if when else ("if not (", test, ")")
        init += [Stmt(stmt.target, ("None",)),
                 Block(expr(*header), (replace(stmt, value=value),))]
    lines = iter(unit.forward)
    forward: list = []
    for line in plan.full.forward:
        guard = _guard(line, set(plan.optional))
        built = all(f"self.{n}" in mine for n in guard)
        own = next(lines, None) if built else _unknown(line)
        if own is None:
            return None
        if guard:
            header = "if " + " and ".join(f"self.{n} is not None" for n in sorted(guard))
            if forward and isinstance(forward[-1], Block) and forward[-1].header == (header,):
                forward[-1] = replace(forward[-1], body=(*forward[-1].body, own))
                continue
            own = Block((header,), (own,))
        forward.append(own)
    if next(lines, None) is not None:
        return None
    return replace(unit, init=tuple(init), forward=tuple(forward),
                   children=tuple(dict.fromkeys((*plan.full.children, *unit.children))),
                   helpers=plan.full.helpers | unit.helpers)


def use_env(unit: Unit, params: Mapping[str, object], definition: ast.Definition
            ) -> dict[str, object]:
    """A use's parameters and the dims its inputs bind (`input x: [C, H, W]`)."""
    env = dict(params)
    declared = [s for s in definition.body if isinstance(s, ast.Input)]
    for stmt in declared:
        if stmt.name not in unit.params or stmt.type is None:
            continue
        t = unit.input_types[unit.params.index(stmt.name)]
        if t is None or len(stmt.type.dims) != t.rank:
            continue
        for dim, size in zip(stmt.type.dims, t.shape):
            if isinstance(dim, ast.Name) and dim.id not in env:
                env[dim.id] = size
    return env


# ---- reading units ----------------------------------------------------------------------


def _attributes(unit: Unit) -> dict[str, Stmt] | None:
    """`__init__`'s statements by target, when each sets one attribute of its own."""
    out: dict[str, Stmt] = {}
    for stmt in unit.init:
        if not isinstance(stmt, Stmt) or stmt.target is None or stmt.target in out \
                or not re.fullmatch(r"self\.\w+", stmt.target):
            return None
        out[stmt.target] = stmt
    return out


def _guard(line, names: set[str]) -> set[str]:
    """The optional layers a line of `forward` calls."""
    text = "\n".join(layout([line], lambda item: ""))
    return {n for n in _ATTRIBUTE.findall(text) if n in names}


def _blank_text(statements) -> str:
    return "\n".join(layout(list(statements), lambda item: "<>" if isinstance(item, Instance)
                            else "\0"))


def _unknown(node):
    """`node` with every number unknown."""
    if isinstance(node, Num):
        return replace(node, value=UNKNOWN)
    if isinstance(node, Group):
        return replace(node, prefix=_unknown(node.prefix),
                       items=tuple(_unknown(i) for i in node.items))
    if isinstance(node, tuple):
        return tuple(_unknown(i) for i in node)
    if isinstance(node, Stmt):
        return replace(node, value=_unknown(node.value), comment=_unknown(node.comment))
    if isinstance(node, Block):
        return replace(node, header=_unknown(node.header), body=_unknown(node.body))
    return node


# ---- the spec's conditions ----------------------------------------------------------------


def _conditions(definition: ast.Definition) -> list[ast.Expr]:
    """The conditions of the block's `a if cond else b` expressions, in source order."""
    out: list[ast.Expr] = []

    def visit(node) -> None:
        if isinstance(node, ast.Conditional):
            out.append(node.cond)
        if isinstance(node, ast.Node):
            for value in vars(node).values():
                for child in value if isinstance(value, tuple) else (value,):
                    if isinstance(child, ast.Node):
                        visit(child)

    for stmt in definition.body:
        visit(stmt)
    return out


def _evaluate(node, env: Mapping[str, object]):
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


def _condition_expr(node, env: Mapping[str, object]):
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
        return (Num(value, node.id, primary=False),), 9
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
