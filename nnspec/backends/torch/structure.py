"""Where the classes and functions of a generated file come from: the IR's scopes.

The builder expanded every `block`, `repeat` and `fn` into the graph and kept a `Scope` for
each instance. Here they become regions again, and each region gets its role, once, before
anything is written:

- a block instance becomes a **class** when it owns everything it uses (its layers' weights
  live under its own path, so its `state_dict` keys come out right);
- a repeated layer that is not a block (`repeat(3, conv2d(..) -> relu)`) becomes a small
  class of its own under the same condition, so the repeat can be an `nn.ModuleList`;
- a fn call becomes a **function** when it has no state (no weights, no dropout);
- a repeat becomes a **loop** over an `nn.ModuleList` when its copies read the same;
- anything else is **inline**: its nodes are written into the enclosing class, reaching
  their layers through `nn.ModuleDict`/`nn.ModuleList` containers named like the weights.

Regions are frozen and refer to each other by path, so later phases key everything by
these stable names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nnspec.backends.torch.emit import FORWARD
from nnspec.backends.torch.emit_site import Site
from nnspec.backends.torch.names import camel
from nnspec.backends.torch.source import Num, flat
from nnspec.diagnostics import Span
from nnspec.ir.graph import Graph, Node
from nnspec.ir.ops import OPS
from nnspec.syntax import ast

GraphKind = Literal["model", "loss"]
RegionKind = Literal["model", "loss", "block", "fn", "repeat", "item"]
Role = Literal["class", "function", "loop", "inline"]
UNIT_ROLES: tuple[Role, ...] = ("class", "function", "loop")  # roles that are not inline


@dataclass(frozen=True)
class Region:
    path: str  # "" for the whole graph
    kind: RegionKind
    label: str  # block or fn name, the model's name, or a class name for repeated items
    span: Span | None
    parent: str | None  # the enclosing region's path; None for the whole graph
    members: tuple[Node, ...]  # every node inside, in graph order
    role: Role
    count: int = 1

    @property
    def prefix(self) -> str:
        return f"{self.path}." if self.path else ""

    def relative(self, path: str) -> str:
        return path[len(self.prefix):]


@dataclass(frozen=True)
class Regions:
    """The regions of one graph by path ("" is the whole graph), with their roles."""

    graph: GraphKind
    by_path: Mapping[str, Region]
    innermost: Mapping[str, str]  # node name -> path of the innermost region holding it

    @property
    def root(self) -> Region:
        return self.by_path[""]

    def chain(self, outer: Region, node: str) -> list[Region]:
        """The regions from just below `outer` down to the innermost one holding `node`."""
        out = []
        path: str | None = self.innermost[node]
        while path is not None and path != outer.path:
            region = self.by_path[path]
            out.append(region)
            path = region.parent
        return out[::-1]


def regions(graph: Graph, kind: GraphKind, keep_whole: str | None) -> Regions:
    """The regions of a graph and their roles. `keep_whole` names a node that must stay in
    the top-level code (the fused softmax), so no region holding it may become a class or
    function."""
    found: dict[str, tuple[RegionKind, str, Span | None, int]] = {"": (kind, graph.name, None, 1)}
    prefixes = {n.name.rsplit(".", k)[0] for n in graph.nodes
                for k in range(1, n.name.count(".") + 1)}
    for path, scope in graph.scopes.items():
        found[path] = (scope.kind, scope.label, scope.span, scope.count)
    for path, scope in graph.scopes.items():
        if scope.kind != "repeat":
            continue
        for i in range(scope.count):
            item = f"{path}.{i}"
            if item not in found and item in prefixes:
                found[item] = ("item", camel(path.rsplit(".", 1)[-1]) + "Layer", scope.span, 1)
    parents = {path: _enclosing(path, found) if path else None for path in found}
    members: dict[str, list[Node]] = {path: [] for path in found}
    innermost: dict[str, str] = {}
    for node in graph.nodes:
        if node.op == "input":
            continue
        innermost[node.name] = _enclosing(node.name, found)
        path: str | None = innermost[node.name]
        while path is not None:
            members[path].append(node)
            path = parents[path]
    base = {path: _role(kind_, path, members[path], keep_whole)
            for path, (kind_, *_) in found.items()}
    by_path: dict[str, Region] = {}
    for path, (kind_, label, span, count) in found.items():
        by_path[path] = Region(path, kind_, label, span, parents[path], tuple(members[path]),
                               base[path], count)
    for path, region in by_path.items():
        if region.role == "loop" and not _loopable(region, by_path, graph):
            by_path[path] = Region(path, region.kind, region.label, region.span, region.parent,
                                   region.members, "inline", region.count)
    return Regions(kind, by_path, innermost)


def _enclosing(name: str, found: Mapping[str, object]) -> str:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:cut])
        if path in found:
            return path
    return ""


def _role(kind: RegionKind, path: str, members: list[Node], keep_whole: str | None) -> Role:
    if kind in ("model", "loss"):
        return "class" if kind == "model" else "function"
    if not members or any(n.name == keep_whole for n in members):
        return "inline"
    prefix = f"{path}."
    layers = [n for n in members if n.module is not None]
    owns_all = all(n.module.startswith(prefix)
                   and all(p.startswith(prefix) for p in n.params.values())
                   for n in layers)
    # a block whose body is a `seq` names its layers 0, 1, ...: no attribute can hold them,
    # so it is written inline and reaches them through an nn.ModuleList
    numbered = any(n.module[len(prefix):].split(".")[0].isdigit() for n in layers)
    if kind == "block" and owns_all and not numbered:
        return "class"
    if kind == "item" and owns_all and layers and not numbered:
        return "class"
    if kind == "fn" and not layers and not any(OPS[n.op].random for n in members):
        return "function"
    if kind == "repeat":
        return "loop"  # a candidate, kept only when its copies read the same
    return "inline"


def loop_items(region: Region, by_path: Mapping[str, Region]) -> list[Region] | list[Node]:
    """What a loop over a repeat iterates: its copies as classes, else its copies' single
    layers; empty when the copies are neither."""
    copies = [by_path.get(f"{region.path}.{i}") for i in range(region.count)]
    if all(r is not None and r.role == "class" for r in copies):
        return copies
    nodes = region.members
    if len(nodes) == region.count and all(n.name == f"{region.path}.{i}"
                                          and n.module is not None
                                          for i, n in enumerate(nodes)):
        return list(nodes)
    return []


def outside_inputs(region: Region) -> list[str]:
    """The values a region reads from outside it, in order of first use."""
    inside = {n.name for n in region.members}
    return list(dict.fromkeys(i for n in region.members for i in n.inputs if i not in inside))


def chained_input(copies: list[Region]) -> int | None:
    """Which input of a repeat's copies each copy passes on to the next (the others, such
    as a mask every layer reads, are the same for all); None when they are not a chain."""
    reads = [outside_inputs(copy) for copy in copies]
    if len(reads[0]) == 1:
        return 0
    changing = {i for r in reads[1:] for i, (a, b) in enumerate(zip(reads[0], r)) if a != b}
    if len(copies) < 2 or len(changing) != 1 or any(len(r) != len(reads[0]) for r in reads):
        return None
    (index,) = changing
    previous = [copy.members[-1].name for copy in copies[:-1]]
    return index if [r[index] for r in reads[1:]] == previous else None


def _loopable(region: Region, by_path: Mapping[str, Region], graph: Graph) -> bool:
    items = loop_items(region, by_path)
    if not items:
        return False
    if isinstance(items[0], Region):
        return chained_input(items) is not None
    forwards = set()
    for node in items:
        types = [graph.node(v).type for v in node.inputs]
        site = Site(node, [("x",)], types, ("layer",), "x", "self.training", set())
        forwards.add(tuple(flat(line.value, _fingerprint) for line in FORWARD[node.op](site)))
    return len(forwards) == 1


def _fingerprint(num: Num) -> str:
    return f"<{type(num.value).__name__}:{num.value!r}>"


def boundary(region: Region, consumers: Mapping[str, list[str]],
             outputs: set[str]) -> tuple[list[str], tuple[str, ...]]:
    """A region's inputs (values from outside, in order of first use) and its outputs (the
    values used outside, in graph order, or its last node when nothing outside uses it)."""
    inside = {n.name for n in region.members}
    inputs: list[str] = []
    for n in region.members:
        for i in n.inputs:
            if i not in inside and i not in inputs:
                inputs.append(i)
    escaping = [n.name for n in region.members
                if n.name in outputs or any(c not in inside for c in consumers[n.name])]
    return inputs, tuple(escaping) if escaping else (region.members[-1].name,)


def spec_definition(program: ast.Program, region: Region) -> ast.Definition | None:
    """The spec's `block`, `fn` or `model` a region is an instance of."""
    kind = {"block": "block", "fn": "fn", "model": "model"}.get(region.kind)
    if kind is None:
        return None
    return next((d for d in program.definitions(kind) if d.name == region.label), None)
