"""A program's definitions checked on their own, before anything is built: names defined
twice or taken by an op, misplaced `input`s, dropped expressions, and recursion.

Recursion is found from the call graph of blocks and fns (who names whom in their bodies),
so a recursive block is an error even when a condition would stop it: the language has
`repeat` for stacks, and a body's size never depends on evaluating it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from itertools import pairwise

from nnspec.diagnostics import Diagnostic, Note, Span
from nnspec.ir import ops
from nnspec.syntax import ast


def index_definitions(program: ast.Program) -> tuple[dict[str, ast.Definition], list[Diagnostic]]:
    """Models, blocks and fns by name (the first of two with one name), and what is wrong
    with each on its own."""
    defs: dict[str, ast.Definition] = {}
    problems: list[Diagnostic] = []
    for item in program.items:
        if not isinstance(item, ast.Definition):
            continue
        problems += _inputs_first(item)
        if item.name in defs:
            problems.append(Diagnostic("E120", f"`{item.name}` is defined twice", item.name_span,
                                       notes=(Note(defs[item.name].name_span,
                                                   "first defined here"),)))
            continue
        if ops.lookup(item.name) is not None and not _own_loss(item):
            problems.append(Diagnostic("E121", f"`{item.name}` is the name of a built-in op",
                                       item.name_span, "pick another name"))
            continue
        defs[item.name] = item
        problems += _unused_expressions(item)
    return defs, problems


def _own_loss(definition: ast.Definition) -> bool:
    """A `fn` may take the name of a built-in loss: a spec's own `huber` predates the
    built-in one, and within that spec its own definition wins."""
    return definition.kind == "fn" and ops.lookup(definition.name).family == "loss"


def _inputs_first(definition: ast.Definition) -> list[Diagnostic]:
    """`input`s open a body; one after other statements is a misplaced line."""
    problems, started = [], False
    for stmt in definition.body:
        if not isinstance(stmt, ast.Input):
            started = True
        elif started:
            problems.append(Diagnostic("E114", "`input` belongs at the top of a model or block, "
                                       "before other statements", stmt.span,
                                       "move this line up"))
    return problems


def _unused_expressions(definition: ast.Definition) -> list[Diagnostic]:
    """Only a body's last expression is its output; an earlier bare expression would be
    silently dropped (often a continuation line the parser read as a new statement)."""
    outputs = [stmt for stmt in definition.body if isinstance(stmt, ast.Output)]
    return [Diagnostic("E115", "this expression is computed but never used: only the last "
                       f"expression of `{definition.name}` is its output", stmt.span,
                       "assign it (`name = ...`), or join it to the line above if it "
                       "continues it") for stmt in outputs[:-1]]


# ---- recursion ---------------------------------------------------------------------------


def find_recursion(defs: dict[str, ast.Definition],
                   consts: Collection[str]) -> tuple[set[str], list[Diagnostic]]:
    """The blocks and fns on a cycle of the call graph, and one E155 per cycle, at the call
    in its first definition that leads back to it."""
    calls = {name: _calls(d, defs, consts) for name, d in defs.items()
             if d.kind in ("block", "fn")}
    recursive: set[str] = set()
    problems = []
    for component in _strongly_connected(calls):
        first = component[0]
        if len(component) == 1 and first not in calls[first]:
            continue
        recursive.update(component)
        cycle = _shortest_cycle(first, calls, set(component))
        problems.append(_recursion_error(cycle, calls, defs))
    return recursive, problems


def _recursion_error(cycle: list[str], calls: dict[str, dict[str, Span]],
                     defs: dict[str, ast.Definition]) -> Diagnostic:
    """`cycle` is [A, B, ..., A]; the error is at A's call of B, notes at the others."""
    first = cycle[0]
    what = f"{defs[first].kind} `{first}`"
    if len(cycle) == 2:
        message = f"{what} calls itself; blocks and fns cannot be recursive"
    else:
        path = " -> ".join(f"`{name}`" for name in cycle)
        message = f"{what} calls itself ({path}); blocks and fns cannot be recursive"
    notes = tuple(Note(calls[a][b], f"`{a}` calls `{b}` here")
                  for a, b in pairwise(cycle[1:]))
    return Diagnostic("E155", message, calls[first][cycle[1]],
                      "use `repeat(n, ...)` for a stack of layers, or write each level out",
                      notes=notes)


def _calls(definition: ast.Definition, defs: dict[str, ast.Definition],
           consts: Collection[str]) -> dict[str, Span]:
    """The blocks and fns a definition's body names, each with where it is first named;
    names bound in the body (and constants, which are plain values) are not them."""
    local: set[str] = set()
    found: dict[str, Span] = {}

    def visit(expr: ast.Expr):
        for name, span in _names(expr):
            if name not in local and name not in consts and name in defs \
                    and defs[name].kind in ("block", "fn"):
                found.setdefault(name, span)

    for param in definition.params:
        if param.default is not None:
            visit(param.default)
        local.add(param.name)
    for stmt in definition.body:
        if isinstance(stmt, (ast.Input, ast.ParamDecl)):
            local.add(stmt.name)
            continue
        visit(stmt.value)
        if isinstance(stmt, ast.Assign):
            local.add(stmt.name)
        elif isinstance(stmt, ast.Unpack):
            local.update(stmt.names)
        local.update(_op_labels(stmt.value, local, defs, consts))
    return found


def _names(expr: ast.Expr) -> Iterator[tuple[str, Span]]:
    """Every name an expression reads, in source order, with its span (iteratively: a sum
    of a thousand terms must not exhaust Python's stack)."""
    stack = [expr]
    while stack:
        expr = stack.pop()
        children: tuple = ()
        if isinstance(expr, ast.Name):
            yield expr.id, expr.span
        elif isinstance(expr, ast.Call):
            if expr.func != "repeat":
                yield expr.func, expr.func_span
            children = (*expr.args, *(k.value for k in expr.kwargs))
        elif isinstance(expr, ast.BinOp):
            children = (expr.left, expr.right)
        elif isinstance(expr, ast.Unary):
            children = (expr.operand,)
        elif isinstance(expr, ast.ListExpr):
            children = expr.items
        elif isinstance(expr, ast.Pipeline):
            children = (expr.head, *(stage.layer for stage in expr.stages))
        elif isinstance(expr, ast.Conditional):
            children = (expr.then, expr.cond, expr.otherwise)
        elif isinstance(expr, ast.Subscript):
            children = (expr.value,)
        stack.extend(reversed(children))


def _op_labels(expr: ast.Expr, local: set[str], defs: dict[str, ast.Definition],
               consts: Collection[str]) -> Iterator[str]:
    """`as` labels that bind a name in the body (those of ops; a block's label does not)."""
    stack = [expr]
    while stack:
        expr = stack.pop()
        if isinstance(expr, ast.Pipeline):
            stack.append(expr.head)
            for stage in expr.stages:
                stack.append(stage.layer)
                layer = stage.layer
                name = layer.func if isinstance(layer, ast.Call) else (
                    layer.id if isinstance(layer, ast.Name) else None)
                if stage.label is not None and name is not None and name not in local \
                        and name not in consts and name not in defs and ops.lookup(name):
                    yield stage.label
        elif isinstance(expr, ast.Conditional):
            stack += [expr.then, expr.otherwise]


def _strongly_connected(calls: dict[str, dict[str, Span]]) -> list[list[str]]:
    """Tarjan's components of the call graph, each in definition order (iterative: a chain
    of a thousand blocks must not exhaust Python's stack)."""
    order = {name: i for i, name in enumerate(calls)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root, callees in calls.items():
        if root in index:
            continue
        work = [(root, iter(callees))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            name, pending = work[-1]
            for callee in pending:
                if callee not in calls:
                    continue
                if callee not in index:
                    index[callee] = low[callee] = len(index)
                    stack.append(callee)
                    on_stack.add(callee)
                    work.append((callee, iter(calls[callee])))
                    break
                if callee in on_stack:
                    low[name] = min(low[name], index[callee])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[name])
                if low[name] == index[name]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == name:
                            break
                    components.append(sorted(component, key=order.__getitem__))
    return sorted(components, key=lambda c: order[c[0]])


def _shortest_cycle(start: str, calls: dict[str, dict[str, Span]], within: set[str]) -> list[str]:
    """[start, ..., start] by the fewest calls, through members of one component."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        name = queue.popleft()
        for callee in calls[name]:
            if callee == start:
                path = [name]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if callee in within and callee not in came_from:
                came_from[callee] = name
                queue.append(callee)
    raise AssertionError(f"{start} is on no cycle")
