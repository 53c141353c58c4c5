"""Lowering: the regions of a graph -> `Unit`s, one per class or function instance, each
with its `__init__` layers and the lines of its `forward`, one line per IR node with the
value's shape and spec line as a comment. Numbers stay `Num`s and calls of other units stay
`Instance`s (by key), so the sharing phase can still turn them into arguments.

Values get short variable names the way people write them: a chain of ops keeps reusing
one variable (`x = self.conv1(x)`, `x = F.relu(x)`), and a new one (`h`, `h2`, ...) starts
only while an earlier value is still needed, e.g. for a residual `x = x + h`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nnspec.backends.torch.emit import FORWARD, INIT
from nnspec.backends.torch.emit_layers import init_extra
from nnspec.backends.torch.emit_modules import stateless_module
from nnspec.backends.torch.emit_site import Site
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
from nnspec.backends.torch.structure import (
    Region,
    Regions,
    boundary,
    chained_input,
    loop_items,
    spec_definition,
)
from nnspec.backends.torch.units import Context, Root, Unit, UnitKey, unit_kind
from nnspec.diagnostics import Span
from nnspec.ir.graph import Graph, Node
from nnspec.ir.graph_builder import param_name
from nnspec.ir.types import TensorType
from nnspec.syntax import ast

_GENERIC = ("x", "h")


def _generic(name: str) -> bool:
    return name in _GENERIC or (name[:1] == "h" and name[1:].isdigit())


def lower(graph: Graph, regions: Regions, context: Context, root: Root) -> list[Unit]:
    """Every unit of a graph, each after the units it uses (the order definitions print).
    Each region is the child of one unit only, so each is written once."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    order: list[Unit] = []

    def write(region: Region, inputs: list[str], names: list[str], output: tuple[str, ...],
              logits: str | None = None) -> None:
        writer = _Writer(graph, regions, region, consumers, context, root.training)
        unit = writer.write(inputs, names, output, logits)
        for child in unit.children:
            inner = regions.by_path[child.path]
            values, results = boundary(inner, consumers, outputs)
            write(inner, values, _input_names(graph, context.program, inner, values), results)
        order.append(unit)

    write(regions.root, list(root.inputs), list(root.names), root.outputs, root.logits)
    return order


def _input_names(graph: Graph, program: ast.Program, region: Region,
                 inputs: list[str]) -> list[str]:
    """A block's or fn's own names for its inputs (the IR's scope records which value went
    to which declared input); `x`, `y`, ... where that is ambiguous."""
    count = len(inputs)
    scope = graph.scopes.get(region.path)
    declared = {node: name for name, node in scope.inputs} if scope else {}
    names = [declared.get(node) for node in inputs]
    if count > 1 and None not in names and len(set(names)) == count:
        return names
    if count == 1:
        definition = spec_definition(program, region)
        if definition is not None:
            if definition.kind == "fn" and definition.params:
                return [definition.params[0].name]
            declared = [s.name for s in definition.body if isinstance(s, ast.Input)]
            if len(declared) == 1:
                return declared
        return ["x"]
    return (["x", "y", "z"] + [f"x{i}" for i in range(3, count)])[:count]


StepKind = Literal["op", "unit", "loop", "sequential"]


@dataclass(frozen=True)
class _Step:
    kind: StepKind
    node: Node | None
    region: Region | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # several only for a unit returning several values
    parts: tuple[_Step, ...] = ()  # a sequential's steps, one per numbered layer
    path: str = ""  # a sequential's relative module path


def _names(step: _Step) -> set[str]:
    """The nodes a step computes."""
    if step.kind == "sequential":
        return set().union(*map(_names, step.parts))
    return {step.node.name} if step.kind == "op" else {m.name for m in step.region.members}


class _Writer:
    """Writes one unit; it reads the regions and the graph and changes neither."""

    def __init__(self, graph: Graph, regions: Regions, region: Region,
                 consumers: Mapping[str, list[str]], context: Context, training: str):
        self.graph = graph
        self.regions = regions
        self.region = region
        self.consumers = consumers
        self.context = context
        self.training = training
        self.leaves: dict[str, Expr] = {}  # relative module path -> constructor
        self.declared: set[str] = set()
        self.extras: list = []
        self.ties: list = []
        self.env: dict[str, Expr] = {}  # value -> expression
        self.live: dict[str, str] = {}  # variable name -> value it holds
        self.names = Namespace(context.local_taken)
        self.children: list[UnitKey] = []
        self.helpers: set[str] = set()
        self.sequential: set[str] = set()  # relative paths written as nn.Sequential
        self.chains: dict[str, tuple[tuple[int, int], ...]] = {}  # attribute -> members' origins

    # ---- the whole unit ---------------------------------------------------------------------

    def write(self, inputs: list[str], wanted_names: list[str], outputs: tuple[str, ...],
              logits: str | None = None) -> Unit:
        output = outputs[-1]
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
        for value in outputs:
            last_use[value] = len(steps)
        body: list = []
        for i, step in enumerate(steps):
            if logits is not None and step.node is not None and step.node.name == output:
                body.append(Block(("if return_logits",), (
                    Stmt(None, self.env[logits], keyword="return",
                         comment=("logits for the loss, which fuses this softmax",)),)))
            body += self._write_step(step, i, last_use, output)
        last = body[-1] if body else None
        if len(outputs) > 1:
            values = [self.value(v) for v in outputs]
            body.append(Stmt(None, expr(*[(v, ", ") for v in values[:-1]], values[-1]),
                             keyword="return"))
        elif isinstance(last, Stmt) and (last.target,) == self.value(output):
            body[-1] = Stmt(None, last.value, last.comment, keyword="return")
        else:
            body.append(Stmt(None, self.value(output), keyword="return"))
        types = tuple(self.graph.node(v).type for v in inputs)
        return Unit(UnitKey(self.regions.graph, self.region.path), self.region,
                    unit_kind(self.region), tuple(params), types, tuple(self._init()),
                    tuple(body), tuple(self.children), frozenset(self.helpers),
                    tuple(self.chains.items()))

    def _steps(self) -> list[_Step]:
        steps: list[_Step] = []
        seen: set[str] = set()
        for node in self.region.members:
            if node.op == "scalar":
                continue
            unit = next((r for r in self.regions.chain(self.region, node.name)
                         if r.role != "inline"), None)
            if unit is None:
                steps.append(_Step("op", node, None, node.inputs, (node.name,)))
            elif unit.path not in seen:
                seen.add(unit.path)
                inputs, outs = boundary(unit, self.consumers, set(self.graph.outputs))
                kind = "loop" if unit.role == "loop" else "unit"
                steps.append(_Step(kind, None, unit, tuple(inputs), outs))
        return self._sequentials(steps)

    def _sequentials(self, steps: list[_Step]) -> list[_Step]:
        """Runs of steps that are a labelled chain's numbered layers `P.0 -> P.1 -> ...`,
        each reading only the one before and nothing else under `P`, become one
        `nn.Sequential` step: `x = self.P(x)`, under the same `state_dict` keys. A chain's
        member may itself be such a chain (`features.0.0`, `features.0.1` inside
        `features`), so runs are found again until none is left."""
        while True:
            merged = self._merge_runs(steps)
            if len(merged) == len(steps):
                return merged
            steps = merged

    def _merge_runs(self, steps: list[_Step]) -> list[_Step]:
        paths = [self._layer_path(s) for s in steps]
        out: list[_Step] = []
        i = 0
        while i < len(steps):
            run = self._chain_from(steps, paths, i)
            if run:
                parts = tuple(steps[i:i + run])
                path = paths[i].rsplit(".", 1)[0]
                out.append(_Step("sequential", None, None, parts[0].inputs,
                                 parts[-1].outputs, parts, path))
                i += run
            else:
                out.append(steps[i])
                i += 1
        return out

    def _chain_from(self, steps: list[_Step], paths: list[str | None], i: int) -> int:
        """How many steps from `i` form a whole chain `P.0 .. P.k`; 0 if they do not."""
        path = paths[i]
        if path is None or not path.endswith(".0"):
            return 0
        prefix = path[:-1]
        n = 0
        while i + n < len(steps) and paths[i + n] == f"{prefix}{n}":
            step = steps[i + n]
            if n and step.inputs != steps[i + n - 1].outputs:
                break
            n += 1
        others = steps[:i] + steps[i + n:]
        if any(p is not None and p.startswith(prefix) for p in map(self._owned_path, others)):
            return 0  # another layer under the same name would land in the nn.Sequential
        for step, after in zip(steps[i:i + n - 1], steps[i + 1:i + n]):
            value = step.outputs[0]
            if value in self.graph.outputs or not set(self.consumers[value]) <= _names(after):
                return 0
        return n

    def _owned_path(self, step: _Step) -> str | None:
        """The relative module path a step's layers live under, if it has any."""
        if step.kind == "sequential":
            return step.path
        if step.kind == "op":
            module = step.node.module
            return self.region.relative(module) if module is not None else None
        if unit_kind(step.region) == "function":
            return None
        return self.region.relative(step.region.path)

    def _layer_path(self, step: _Step) -> str | None:
        """The relative module path of a step that is one plain call of one layer with one
        input and one output: a layer with weights, or a class instance."""
        if len(step.inputs) != 1 or len(step.outputs) != 1:
            return None
        if step.kind == "unit" and step.region.role == "class":
            return self.region.relative(step.region.path)
        if step.kind == "sequential":
            return step.path
        if step.kind != "op":
            return None
        node = step.node
        types = [self.graph.node(v).type for v in node.inputs]
        if node.module is None:  # `relu` in a chain: a module there (nn.ReLU())
            numbered = node.name.startswith(self.region.prefix) and \
                node.name.rsplit(".", 1)[-1].isdigit() and "." in node.name
            if numbered and stateless_module(node, types) is not None:
                return self.region.relative(node.name)
            return None
        if node.params and any(full != param_name(node.module, local)
                               for local, full in node.params.items()):
            return None
        site = Site(node, [("x",)], types, ("layer",), "x", self.training, set())
        lines = FORWARD[node.op](site)
        if len(lines) != 1 or lines[0].unpack or flat(lines[0].value, str) != "layer(x)":
            return None
        return self.region.relative(node.module)

    def _child(self, region: Region) -> Instance:
        key = UnitKey(self.regions.graph, region.path)
        if key not in self.children:
            self.children.append(key)
        return Instance(key)

    # ---- values and variables --------------------------------------------------------------

    def value(self, name: str) -> Expr:
        """A value's expression: its variable, or the literal of a number in the spec."""
        node = self.graph.node(name)
        if node.op == "scalar":
            return FORWARD["scalar"](Site(node, [], []))[0].value
        return self.env[name]

    def _targets(self, step: _Step, i: int, last_use: dict[str, int], output: str) -> list[str]:
        """A variable for each value the step gives (`_` for one nothing reads); the first
        reuses its first input's variable when that input dies here."""
        dying = [v for v in step.inputs if last_use.get(v) == i and v in self.env]
        for v in dying:
            self.live.pop(self.env[v][0], None)
        first = step.inputs[0] if step.inputs else None
        reusable = first in dying and _generic(self.env[first][0])
        names = []
        for value in step.outputs:
            if value != output and last_use.get(value, -1) <= i:
                names.append("_")  # a value nothing uses (the interpreter still computes it)
                continue
            if reusable:
                name, reusable = self.env[first][0], False
            else:
                n = 0
                while True:
                    name = _GENERIC[n] if n < len(_GENERIC) else f"h{n}"
                    if name not in self.live and name not in self.context.local_taken:
                        break
                    n += 1
            self.live[name] = value
            names.append(name)
        return names

    # ---- steps ---------------------------------------------------------------------------------

    def _write_step(self, step: _Step, i: int, last_use: dict[str, int], output: str) -> list:
        args = [self.value(v) for v in step.inputs]
        if step.kind == "op" and step.node.module is not None:
            self._declare(step.node)
        targets = self._targets(step, i, last_use, output)
        target = ", ".join(targets)
        if step.kind == "op":
            stmts = self._op_lines(step.node, args, self._module_access(step.node), target)
        elif step.kind == "unit":
            stmts = [self._unit_call(step, args, target)]
        elif step.kind == "sequential":
            stmts = [self._sequential(step, args, target)]
        else:
            stmts = self._loop(step, args, target)
        for value, name in zip(step.outputs, targets):
            self.env[value] = (name,)
        return stmts

    def _op_lines(self, node: Node, args: list[Expr], module: Expr, target: str) -> list:
        types = [self.graph.node(v).type for v in node.inputs]
        site = Site(node, args, types, module, target, self.training, self.helpers)
        stmts = []
        for line in FORWARD[node.op](site):
            lhs = f"{target}, _" if line.unpack else target
            stmts.append(Stmt(lhs, line.value, self.comment(line.shape or node.type, node.span)))
        return stmts

    def _unit_call(self, step: _Step, args: list[Expr], target: str) -> Stmt:
        region = step.region
        instance = self._child(region)
        types = [self.graph.node(v).type for v in step.outputs]
        out_type = types[0] if len(types) == 1 else None
        if unit_kind(region) == "function":
            return Stmt(target, expr(Instance(instance.unit, tuple(args))),
                        self.comment(out_type, region.span))
        rel = self.region.relative(region.path)
        self.leaves[rel] = expr(instance)
        return Stmt(target, expr(call(self._access(rel, region.span), *args)),
                    self.comment(out_type, region.span))

    def _sequential(self, step: _Step, args: list[Expr], target: str) -> Stmt:
        self._declare_chain(step)
        span = self._span_of(step)
        out_type = self.graph.node(step.outputs[0]).type
        return Stmt(target, expr(call(self._access(step.path, span), *args)),
                    self.comment(out_type, span))

    def _declare_chain(self, step: _Step) -> None:
        """A chain's members as the modules of its nn.Sequential."""
        for part in step.parts:
            if part.kind == "sequential":
                self._declare_chain(part)
            elif part.kind == "op" and part.node.module is None:
                types = [self.graph.node(v).type for v in part.node.inputs]
                self.leaves[self.region.relative(part.node.name)] = expr(
                    stateless_module(part.node, types))
            elif part.kind == "op":
                self._declare(part.node)
            else:
                self.leaves[self.region.relative(part.region.path)] = expr(
                    self._child(part.region))
        self.sequential.add(step.path)
        if step.path.isidentifier():
            spans = [self._span_of(part) for part in step.parts]
            self.chains[f"self.{step.path}"] = tuple((s.line, s.col) if s else (0, 0)
                                                     for s in spans)

    def _span_of(self, step: _Step) -> Span | None:
        """Where in the spec a step is written: a chain's `seq` (else its last member), a
        block's call, an op."""
        if step.kind == "sequential":
            scope = self.graph.scopes.get(self.region.prefix + step.path)
            return scope.span if scope is not None else self._span_of(step.parts[-1])
        return step.node.span if step.kind == "op" else step.region.span

    def _loop(self, step: _Step, args: list[Expr], target: str) -> list:
        region = step.region
        rel = self.region.relative(region.path)
        items = loop_items(region, self.regions.by_path)
        out_type = self.graph.node(step.outputs[-1]).type
        stmts = []
        classes = all(isinstance(item, Region) for item in items)
        chained = chained_input(items) if classes else 0  # the others: the same for every copy
        if args[chained] != (target,):
            in_type = self.graph.node(step.inputs[chained]).type
            stmts.append(Stmt(target, args[chained], self.comment(in_type, region.span)))
        if classes:
            var = self._loop_variable("block")
            for item in items:
                self.leaves[self.region.relative(item.path)] = expr(self._child(item))
            passed = [(target,) if i == chained else a for i, a in enumerate(args)]
            body = [Stmt(target, expr(call(var, *passed)), self.comment(out_type, region.span))]
        else:
            var = self._loop_variable("layer")
            for node in items:
                self._declare(node)
            body = self._op_lines(items[-1], [(target,)], (var,), target)
        stmts.append(Block(("for ", var, " in ", self._access(rel, region.span)), tuple(body)))
        return stmts

    def _loop_variable(self, wanted: str) -> str:
        """Loops end before the next begins, so each may use the same name."""
        return wanted if wanted not in self.names.taken else self.names.claim(wanted)

    # ---- layers: declaration, access, containers ------------------------------------------------

    def _declare(self, node: Node) -> None:
        if node.module in self.declared:
            return
        self.declared.add(node.module)
        rel = self.region.relative(node.module)
        types = [self.graph.node(v).type for v in node.inputs]
        self.leaves[rel] = expr(INIT[node.op](node, types))
        access = self._access(rel, node.span)
        self.extras += init_extra(node, access)
        for local, full in node.params.items():
            if full == param_name(node.module, local):
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

    def _access(self, rel: str, span: Span | None) -> Expr:
        parts = rel.split(".")
        root = module_component(parts[0], span)
        text = f'getattr(self, "{root}")' if root.isdigit() else f"self.{root}"
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
        stmts = []
        for key, sub in tree.items():
            value = _container(sub, key, self.sequential)
            stmts.append(Stmt(None, expr(f'self.add_module("{key}", ', value, ")"))
                         if key.isdigit()  # `as 0`, an unlabelled `seq`: not a Python name
                         else Stmt(f"self.{key}", value))
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
            where = f"{self.context.file}:{span.line}"
            parts.append(f"  {where}" if parts else where)
        return expr(*parts)


def _container(sub, path: str, sequential: set[str]) -> Expr:
    """A level of the module tree: a layer, or an nn.Sequential (a chain called whole),
    nn.ModuleList or nn.ModuleDict of levels."""
    if not isinstance(sub, dict):
        return sub
    keys = list(sub)
    if path in sequential:
        return expr(call("nn.Sequential", *(_container(sub[str(i)], f"{path}.{i}", sequential)
                                            for i in range(len(keys)))))
    if all(k.isdigit() for k in keys):  # a `seq`'s layers without weights leave gaps
        last = max(int(k) for k in keys)
        return expr(module_list([_container(sub[str(i)], f"{path}.{i}", sequential)
                                 if str(i) in sub else expr(call("nn.Identity"))
                                 for i in range(last + 1)]))
    return expr(call("nn.ModuleDict", dict_of([(k, _container(sub[k], f"{path}.{k}", sequential))
                                               for k in keys])))
