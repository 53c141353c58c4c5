"""Writes one class or function of the generated file: its `__init__` layers and the lines
of its `forward`, one line per IR node with the value's shape and spec line as a comment.

Values get short variable names the way people write them: a chain of ops keeps reusing
one variable (`x = self.conv1(x)`, `x = F.relu(x)`), and a new one (`h`, `h2`, ...) starts
only while an earlier value is still needed, e.g. for a residual `x = x + h`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nnspec.backends.torch.emit import FORWARD, INIT, Site, init_extra
from nnspec.backends.torch.names import Namespace, checked_identifier, module_component
from nnspec.backends.torch.source import (
    Block,
    Expr,
    Instance,
    Num,
    Stmt,
    call,
    dict_of,
    expr,
    flat,
    module_list,
)
from nnspec.backends.torch.structure import Region, boundary
from nnspec.diagnostics import Span
from nnspec.ir.graph import Graph, Node
from nnspec.ir.types import TensorType

if TYPE_CHECKING:
    from nnspec.backends.torch.codegen import Generator

_GENERIC = ("x", "h")


def _generic(name: str) -> bool:
    return name in _GENERIC or (name[:1] == "h" and name[1:].isdigit())


@dataclass(eq=False)
class Rendered:
    """One region written out with its numbers still as `Num`s; instances that render to
    the same text up to those numbers share one class (or function)."""

    region: Region
    kind: str  # class | function
    params: list[str]  # forward's tensor arguments
    input_types: list[TensorType]
    init: list = field(default_factory=list)
    forward: list = field(default_factory=list)
    shared: object = None  # the codegen.Shared it joined


@dataclass
class _Step:
    kind: str  # op | unit | loop
    node: Node | None
    region: Region | None
    inputs: list[str]
    output: str


class Writer:
    def __init__(self, gen: Generator, graph: Graph, table: dict[str, Region],
                 owner: dict[str, Region], region: Region, *, training: str):
        self.gen = gen
        self.graph = graph
        self.table = table
        self.owner = owner
        self.region = region
        self.training = training
        self.leaves: dict[str, Expr] = {}  # relative module path -> constructor
        self.declared: set[str] = set()
        self.extras: list = []
        self.ties: list = []
        self.env: dict[str, Expr] = {}  # value -> expression
        self.live: dict[str, str] = {}  # variable name -> value it holds
        self.names = Namespace(gen.local_taken)

    # ---- the whole unit ---------------------------------------------------------------------

    def write(self, inputs: list[str], wanted_names: list[str], output: str,
              logits_switch: bool = False) -> Rendered:
        params = []
        for value, wanted in zip(inputs, wanted_names):
            name = self.names.claim(wanted)
            params.append(name)
            self.env[value] = (name,)
            self.live[name] = value
        steps = self._steps()
        last_use: dict[str, int] = {}
        for i, step in enumerate(steps):
            for v in step.inputs:
                last_use[v] = i
        last_use[output] = len(steps)
        body: list = []
        for i, step in enumerate(steps):
            if logits_switch and step.node is not None and step.node.name == output:
                body.append(Block(("if return_logits",), [
                    Stmt(None, self.env[step.node.inputs[0]], keyword="return",
                         comment=("logits for the loss, which fuses this softmax",))]))
            body += self._write_step(step, i, last_use, output)
        last = body[-1] if body else None
        if isinstance(last, Stmt) and (last.target,) == self.value(output):
            body[-1] = Stmt(None, last.value, last.comment, keyword="return")
        else:
            body.append(Stmt(None, self.value(output), keyword="return"))
        kind = "class" if self.region.role == "class" else "function"
        types = [self.graph.node(v).type for v in inputs]
        return Rendered(self.region, kind, params, types, self._init(), body)

    def _steps(self) -> list[_Step]:
        steps: list[_Step] = []
        seen: set[str] = set()
        outputs = set(self.graph.outputs)
        for node in self.region.members:
            if node.op == "scalar":
                continue
            unit = None
            for r in self.region.chain_to(self.owner[node.name]):
                if r.role == "loop" and r.path not in seen and not self._loopable(r):
                    r.role = "inline"
                if r.role in ("class", "function", "loop"):
                    unit = r
                    break
            if unit is None:
                steps.append(_Step("op", node, None, list(node.inputs), node.name))
            elif unit.path not in seen:
                seen.add(unit.path)
                inputs, out = boundary(unit, self.gen.consumers(self.graph), outputs)
                kind = "loop" if unit.role == "loop" else "unit"
                steps.append(_Step(kind, None, unit, inputs, out))
        return steps

    # ---- values and variables --------------------------------------------------------------

    def value(self, name: str) -> Expr:
        """A value's expression: its variable, or the literal of a number in the spec."""
        node = self.graph.node(name)
        if node.op == "scalar":
            return FORWARD["scalar"](Site(node, [], []))[0].value
        return self.env[name]

    def _target(self, step: _Step, i: int, last_use: dict[str, int], output: str) -> str:
        dying = [v for v in step.inputs if last_use.get(v) == i and v in self.env]
        for v in dying:
            self.live.pop(self.env[v][0], None)
        if step.output != output and last_use.get(step.output, -1) <= i:
            return "_"  # a value nothing uses (the interpreter still computes it)
        first = step.inputs[0] if step.inputs else None
        if first in dying and _generic(self.env[first][0]):
            name = self.env[first][0]
        else:
            n = 0
            while True:
                name = _GENERIC[n] if n < len(_GENERIC) else f"h{n}"
                if name not in self.live and name not in self.gen.local_taken:
                    break
                n += 1
        self.live[name] = step.output
        return name

    # ---- steps ---------------------------------------------------------------------------------

    def _write_step(self, step: _Step, i: int, last_use: dict[str, int], output: str) -> list:
        args = [self.value(v) for v in step.inputs]
        if step.kind == "op":
            node = step.node
            if node.module is not None:
                self._declare(node)
            target = self._target(step, i, last_use, output)
            stmts = self._op_lines(node, args, self._module_access(node), target)
        elif step.kind == "unit":
            target = self._target(step, i, last_use, output)
            stmts = [self._unit_call(step, args, target)]
        else:
            target = self._target(step, i, last_use, output)
            stmts = self._loop(step, args, target)
        self.env[step.output] = (target,)
        return stmts

    def _op_lines(self, node: Node, args: list[Expr], module: Expr, target: str) -> list:
        types = [self.graph.node(v).type for v in node.inputs]
        site = Site(node, args, types, module, target, self.training, self.gen.helpers)
        stmts = []
        for line in FORWARD[node.op](site):
            lhs = f"{target}, _" if line.unpack else target
            stmts.append(Stmt(lhs, line.value, self.comment(line.shape or node.type, node.span)))
        return stmts

    def _unit_call(self, step: _Step, args: list[Expr], target: str) -> Stmt:
        region = step.region
        child = self.gen.render(self.graph, self.table, self.owner, region, self.training)
        out_type = self.graph.node(step.output).type
        if child.kind == "function":
            return Stmt(target, expr(Instance(child, tuple(args))),
                        self.comment(out_type, region.span))
        rel = self.region.relative(region.path)
        self._leaf(rel, expr(Instance(child)))
        return Stmt(target, expr(call(self._access(rel, region.span), *args)),
                    self.comment(out_type, region.span))

    def _loop(self, step: _Step, args: list[Expr], target: str) -> list:
        region = step.region
        rel = self.region.relative(region.path)
        items = self._items(region)
        out_type = self.graph.node(step.output).type
        stmts = []
        if args[0] != (target,):
            in_type = self.graph.node(step.inputs[0]).type
            stmts.append(Stmt(target, args[0], self.comment(in_type, region.span)))
        if all(isinstance(item, Region) for item in items):
            var = self._loop_variable("block")
            for item in items:
                child = self.gen.render(self.graph, self.table, self.owner, item, self.training)
                self._leaf(item.path[len(self.region.prefix):], expr(Instance(child)))
            body = [Stmt(target, expr(call(var, target)), self.comment(out_type, region.span))]
        else:
            var = self._loop_variable("layer")
            for node in items:
                self._declare(node)
            body = self._op_lines(items[-1], [(target,)], (var,), target)
        stmts.append(Block(("for ", var, " in ", self._access(rel, region.span)), body))
        return stmts

    def _loop_variable(self, wanted: str) -> str:
        """Loops end before the next begins, so each may use the same name."""
        return wanted if wanted not in self.names.taken else self.names.claim(wanted)

    def _items(self, region: Region) -> list:
        regions = [self.table.get(f"{region.path}.{i}") for i in range(region.count)]
        if all(r is not None and r.role == "class" for r in regions):
            return regions
        nodes = region.members
        if len(nodes) == region.count and all(n.name == f"{region.path}.{i}"
                                              and n.module is not None
                                              for i, n in enumerate(nodes)):
            return nodes
        return []

    def _loopable(self, region: Region) -> bool:
        items = self._items(region)
        if not items:
            return False
        if isinstance(items[0], Region):
            return True
        forwards = set()
        for node in items:
            types = [self.graph.node(v).type for v in node.inputs]
            site = Site(node, [("x",)], types, ("layer",), "x", self.training, set())
            forwards.add(tuple(flat(line.value, _fingerprint) for line in FORWARD[node.op](site)))
        return len(forwards) == 1

    # ---- layers: declaration, access, containers ------------------------------------------------

    def _declare(self, node: Node) -> None:
        if node.module in self.declared:
            return
        self.declared.add(node.module)
        rel = self.region.relative(node.module)
        types = [self.graph.node(v).type for v in node.inputs]
        self._leaf(rel, expr(INIT[node.op](node, types)))
        access = self._access(rel, node.span)
        self.extras += init_extra(node, access)
        for local, full in node.params.items():
            if full == f"{node.module}.{local}":
                continue
            owner = self.graph.node(self.graph.params[full].owner).module
            theirs = self._access(self.region.relative(owner), node.span)
            attr = ".".join(checked_identifier(p) for p in local.split("."))
            their_attr = ".".join(checked_identifier(p) for p in full[len(owner) + 1:].split("."))
            self.ties.append(Stmt(f"{flat(access, str)}.{attr}", expr(theirs, f".{their_attr}"),
                                  ("tied weights: one tensor under two names",)))

    def _module_access(self, node: Node) -> Expr:
        if node.module is None:
            return ()
        return self._access(self.region.relative(node.module), node.span)

    def _leaf(self, rel: str, value: Expr) -> None:
        self.leaves[rel] = value

    def _access(self, rel: str, span: Span | None) -> Expr:
        parts = rel.split(".")
        text = "self." + module_component(parts[0], span)
        for p in parts[1:]:
            p = module_component(p, span)
            text += f"[{p}]" if p.isdigit() else f'["{p}"]'
        return (text,)

    def _init(self) -> list:
        tree: dict = {}
        for rel, value in self.leaves.items():
            parts = rel.split(".")
            level = tree
            for p in parts[:-1]:
                level = level.setdefault(p, {})
            level[parts[-1]] = value
        stmts = [Stmt(f"self.{key}", _container(sub)) for key, sub in tree.items()]
        return stmts + self.extras + self.ties

    # ---- comments --------------------------------------------------------------------------

    def comment(self, t: TensorType | None, span: Span | None) -> Expr:
        parts: list = []
        if t is not None:
            dims = [Num(d, f"dim{j}", comment=True) for j, d in enumerate(t.shape)]
            if t.batched:
                dims.insert(0, "B")
            if not dims:
                parts.append("scalar")
            else:
                parts.append("(")
                for k, d in enumerate(dims):
                    parts += [", " if k else "", d]
                parts.append(",)" if len(dims) == 1 else ")")
        if span is not None:
            parts.append(f"  {self.gen.file}:{span.line}" if parts else f"{self.gen.file}:{span.line}")
        return expr(*parts)


def _container(sub) -> Expr:
    """A level of the module tree: a layer, or an nn.ModuleList / nn.ModuleDict of levels."""
    if not isinstance(sub, dict):
        return sub
    keys = list(sub)
    if all(k.isdigit() for k in keys):
        assert keys == [str(i) for i in range(len(keys))], f"gaps in a module list: {keys}"
        return expr(module_list([_container(sub[k]) for k in keys]))
    return expr(call("nn.ModuleDict", dict_of([(k, _container(sub[k])) for k in keys])))


def _fingerprint(num: Num) -> str:
    return f"<{type(num.value).__name__}:{num.value!r}>"
