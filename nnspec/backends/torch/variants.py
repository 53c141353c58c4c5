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

Two more differences have a form of their own, as in torchvision's InvertedResidual:

- a labelled chain (`self.conv = nn.Sequential(...)`) whose uses leave out some members
  (MobileNetV2's expansion when `expand == 1`) collects its members in a list, each
  optional one appended under the spec's condition, then `nn.Sequential(*layers)`; members
  are matched by where the spec writes them (`units.Unit.chains`), else alike from the end;
- an input added in some uses only (`x + y if stride == 1 and C == out else y`) is
  `self.use_residual = <condition>` and `return x + h if self.use_residual else h`.

Where no such form exists (the uses differ in a shared layer, a chain's members come in
another order, or no condition of the spec says which layer is built), the uses stay
separate classes and the plan says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from nnspec.backends.torch.conditions import condition_code, conditions, evaluate
from nnspec.backends.torch.source import (
    Block,
    Group,
    Instance,
    Num,
    Stmt,
    call,
    expr,
    layout,
    list_of,
    substitute,
    walk,
)
from nnspec.backends.torch.units import Unit
from nnspec.syntax import ast


class _Unknown:
    """The value of a number in a layer a use does not build."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()

_ATTRIBUTE = re.compile(r"\bself\.(\w+)")

Env = Callable[[Unit], Mapping[str, object]]  # a use's parameters and input dims by name


@dataclass(frozen=True)
class Plan:
    """How the uses of one block are one class."""

    full: Unit  # a use that builds every optional layer
    optional: Mapping[str, tuple[ast.Expr, bool]]  # attribute -> (condition, built when)
    # an nn.Sequential attribute -> its optional members by index -> (condition, built when)
    members: Mapping[str, Mapping[int, tuple[ast.Expr, bool]]] = field(default_factory=dict)
    residual: tuple[ast.Expr, bool] | None = None  # when `return x + h` rather than `h`
    local: str = "layers"  # the list `__init__` builds an nn.Sequential's members in


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
    complete = [u for u, a in zip(reps, attrs) if set(a) == union]
    if not complete:
        return "no use builds every layer the others build"
    # the use with the most chain members, then the longest forward (the one with a residual)
    full = max(complete, key=lambda u: (sum(len(o) for _, o in u.chains), len(u.forward)))
    full_attrs = _attributes(full)
    optional = [t for t in full_attrs if any(t not in a for a in attrs)]
    missing: dict[str, list[set[int]]] = {}  # chain attribute -> each use's absent members
    for t in full_attrs:
        stmts = [a[t] for a in attrs if t in a]
        if len({_blank_text([s]) for s in stmts}) == 1:
            continue
        aligned = [_align(full, u, t) if t in a else [] for u, a in zip(reps, attrs)]
        if t in optional or any(found is None for found in aligned):
            return f"`{t}` is built differently in different uses"
        count = len(_chain_items(full_attrs[t]))
        missing[t] = [set(range(count)) - set(found) for found in aligned]
    names = {t.removeprefix("self.") for t in optional}
    guards = [_guard(line, names) for line in full.forward]
    if guards and guards[-1]:
        return "its uses return different values"
    tails = []  # each use: returns the full use's last line (True) or the value before it
    for unit, present in zip(reps, attrs):
        kept = [line for line, g in zip(full.forward, guards)
                if all(f"self.{n}" in present for n in g)]
        if [t for t in full_attrs if t in present] != list(present):
            return "its uses compute different things"
        if _blank_text(kept) == _blank_text(unit.forward):
            tails.append(True)
        elif (reduced := _without_residual(kept, full.params)) is not None and \
                _blank_text(_canonical(reduced, full.params)) == \
                _blank_text(_canonical(unit.forward, unit.params)):
            tails.append(False)
        else:
            return "its uses compute different things"
    spec_conditions = conditions(definition)
    members = [u for g in groups for u in g]

    def condition_of(built: list[bool]) -> tuple[ast.Expr, bool] | None:
        for cond in spec_conditions:
            values = [evaluate(cond, env(u)) for u in members]
            if any(not isinstance(v, bool) for v in values):
                continue
            if values == built or [not v for v in values] == built:
                return cond, values == built
        return None

    chosen: dict[str, tuple[ast.Expr, bool]] = {}
    for t in optional:
        found = condition_of([t in _attributes(u) for u in members])
        if found is None:
            return f"no condition of the spec says which uses build `{t}`"
        chosen[t.removeprefix("self.")] = found
    chain_members: dict[str, dict[int, tuple[ast.Expr, bool]]] = {}
    for t, absent in missing.items():
        for index in sorted(set().union(*absent)):
            found = condition_of([index not in a for a, g in zip(absent, groups) for _ in g])
            if found is None:
                return f"no condition of the spec says which uses build member {index} of `{t}`"
            chain_members.setdefault(t, {})[index] = found
    residual = None
    if not all(tails):
        residual = condition_of([t for t, g in zip(tails, groups) for _ in g])
        if residual is None:
            return "no condition of the spec says which uses add their input"
        if "self.use_residual" in full_attrs:
            return "`self.use_residual` is one of its layers"
    taken = {p.name for p in definition.params} | set(full.params)
    local = next(n for n in ("layers", "layers_", "members") if n not in taken)
    return Plan(full, chosen, chain_members, residual, local)


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
        if stmt.target in plan.members:
            chain = own and _chain_form(stmt, own, unit, plan, env)
            if not chain:
                return None
            init += chain
            continue
        if name not in plan.optional:
            if own is None:
                return None
            init.append(own)
            continue
        header = _header(plan.optional[name], env)
        if header is None:
            return None
        value = own.value if own is not None else _unknown(stmt.value)
        init += [Stmt(stmt.target, ("None",)),
                 Block(header, (replace(stmt, value=value),))]
    full_lines = plan.full.forward
    lines = list(unit.forward)
    if plan.residual is not None:
        test = condition_code(plan.residual[0], env)
        if test is None:
            return None
        init.append(Stmt("self.use_residual", test if plan.residual[1]
                         else expr("not (", test, ")")))
        before, tail = full_lines[-2], full_lines[-1]
        kept = _kept(plan, mine)
        adds = len(lines) == len(kept)
        if not adds:  # its lines with its numbers, its values named as where x is added
            if len(lines) != len(kept) - 1:
                return None
            lines = [substitute(line, iter(list(walk(own))))
                     for line, own in zip(kept[:-1], lines)]
        own_tail = lines.pop() if adds else _unknown(tail)
        full_lines = full_lines[:-1]
    forward = _forward(full_lines, iter(lines), plan, mine)
    if forward is None:
        return None
    if plan.residual is not None:
        # the shape is the line's above in either case: the comment gives the spec line
        forward.append(Stmt(None, expr(*own_tail.value, " if self.use_residual else ",
                                       before.target), _where(own_tail.comment),
                            keyword="return"))
    return replace(unit, init=tuple(init), forward=tuple(forward),
                   children=tuple(dict.fromkeys((*plan.full.children, *unit.children))),
                   helpers=plan.full.helpers | unit.helpers)


def _where(comment: tuple) -> tuple:
    """A line comment's spec line alone (`mobilenet_v2.nn:20` of `(B, C, H, W)  ...:20`)."""
    last = comment[-1] if comment else None
    if isinstance(last, str) and (len(comment) == 1 or last.startswith("  ")):
        return (last.strip(),)
    return ()


def _kept(plan: Plan, mine: Mapping[str, Stmt]) -> list:
    """The full use's forward lines a use with these layers computes."""
    return [line for line in plan.full.forward
            if all(f"self.{n}" in mine for n in _guard(line, set(plan.optional)))]


def _forward(full_lines, lines, plan: Plan, mine: Mapping[str, Stmt]) -> list | None:
    """The full use's lines with a use's own where it computes them; lines calling an
    optional layer under `if self.<layer> is not None:`."""
    forward: list = []
    for line in full_lines:
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
    return forward


def _header(condition: tuple[ast.Expr, bool], env: Mapping[str, object]):
    cond, when = condition
    test = condition_code(cond, env)
    if test is None:
        return None
    return expr("if ", test) if when else expr("if not (", test, ")")


def _chain_form(stmt: Stmt, own: Stmt, unit: Unit, plan: Plan, env: Mapping[str, object]
                ) -> list | None:
    """`self.conv = nn.Sequential(...)` whose members a spec condition leaves out, as
    torchvision writes it: the members collected in a list (`layers.append(...)` under the
    condition), then `self.conv = nn.Sequential(*layers)`."""
    found = _align(plan.full, unit, stmt.target)
    if found is None:
        return None
    items = [_unknown(item) for item in _chain_items(stmt)]
    for index, item in zip(found, _chain_items(own)):
        items[index] = item
    optional = plan.members[stmt.target]
    local = plan.local

    def added(members: list) -> Stmt:
        if len(members) == 1:
            return Stmt(None, expr(call(f"{local}.append", members[0])))
        return Stmt(None, expr(call(f"{local}.extend", list_of(members))))

    # runs of members built together: (condition or None for every use, members)
    runs: list[tuple[tuple | None, list]] = []
    for index, item in enumerate(items):
        condition = optional.get(index)
        if runs and runs[-1][0] == condition:
            runs[-1][1].append(item)
        else:
            runs.append((condition, [item]))
    out: list = []
    for condition, members in runs:
        if condition is None:
            out.append(added(members) if out else Stmt(local, expr(list_of(members))))
            continue
        header = _header(condition, env)
        if header is None:
            return None
        if not out:
            out.append(Stmt(local, ("[]",)))
        out.append(Block(header, (added(members),)))
    return out + [Stmt(stmt.target, expr(call("nn.Sequential", f"*{local}")))]


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


def _chain_items(stmt: Stmt) -> tuple | None:
    """The members of `self.conv = nn.Sequential(a, b, c)`; None for any other value."""
    value = stmt.value
    if len(value) == 1 and isinstance(value[0], Group) and value[0].prefix == ("nn.Sequential",):
        return value[0].items
    return None


def _align(full: Unit, unit: Unit, target: str) -> list[int] | None:
    """Which of the full use's members of the nn.Sequential `target` each of `unit`'s is, in
    order; None when `unit`'s are not some of the full use's. A member is the one written at
    the same place of the spec and alike up to numbers; where the spec writes the chain
    twice (`seq(a, b, c) if .. else seq(b, c)`), the one alike, matched from the end, as
    the optional members of a chain usually come first."""
    origins, full_origins = dict(unit.chains).get(target), dict(full.chains).get(target)
    items = _chain_items(_attributes(unit)[target])
    full_items = _chain_items(_attributes(full)[target])
    if None in (origins, full_origins, items, full_items) or len(items) != len(origins):
        return None
    texts = [_blank_text([Stmt(None, i)]) for i in items]
    full_texts = [_blank_text([Stmt(None, i)]) for i in full_items]
    same_place = _subsequence(list(zip(origins, texts)), list(zip(full_origins, full_texts)))
    if same_place is not None:
        return same_place
    backwards = _subsequence(texts[::-1], full_texts[::-1])
    return None if backwards is None else [len(full_items) - 1 - j for j in backwards[::-1]]


def _subsequence(keys: list, full_keys: list) -> list[int] | None:
    """Where each of `keys` is found in `full_keys`, in order, each as early as it can be."""
    out, j = [], 0
    for key in keys:
        while j < len(full_keys) and full_keys[j] != key:
            j += 1
        if j == len(full_keys):
            return None
        out.append(j)
        j += 1
    return out


def _without_residual(lines: list, params: tuple[str, ...]) -> list | None:
    """`h = f(x); return x + h` as `return f(x)`: the lines of a use that does not add its
    input; None when the last line is not that sum."""
    if len(lines) < 2 or not isinstance(lines[-1], Stmt) or not isinstance(lines[-2], Stmt):
        return None
    last, before = lines[-1], lines[-2]
    value = before.target
    if last.keyword != "return" or value is None or \
            last.value not in ((p, " + ", value) for p in params) and \
            last.value not in ((value, " + ", p) for p in params):
        return None
    return [*lines[:-2], Stmt(None, before.value, before.comment, keyword="return")]


def _canonical(lines, params: tuple[str, ...]) -> list:
    """`lines` with each variable named by the order its value was made, so that uses
    naming their values differently (`x = f(x)` where `h = f(x)` keeps `x` for a residual)
    read alike."""
    names = {p: f"<in{i}>" for i, p in enumerate(params)}
    made = 0

    def rename(node):
        if isinstance(node, str):
            return names.get(node, node)
        if isinstance(node, Group):
            return replace(node, prefix=rename(node.prefix),
                           items=tuple(rename(i) for i in node.items))
        return tuple(rename(i) for i in node) if isinstance(node, tuple) else node

    def visit(line):
        nonlocal made
        if isinstance(line, Block):
            return replace(line, header=rename(line.header), body=tuple(map(visit, line.body)))
        value = rename(line.value)
        targets = []
        for name in (line.target or "").split(", ") if line.target else ():
            if name != "_":
                made += 1
                names[name] = f"<v{made}>"
            targets.append(names.get(name, name))
        return replace(line, value=value, target=", ".join(targets) if targets else None)

    return [visit(line) for line in lines]


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
    if isinstance(node, Instance):
        return replace(node, unknown=True)
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
