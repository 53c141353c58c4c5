"""Where the classes and functions of a generated file come from: the IR's scopes.

The builder expanded every `block`, `repeat` and `fn` into the graph and kept a `Scope` for
each instance. Here they become regions again, and each region gets a role:

- a block instance becomes a **class** when it owns everything it uses (its layers' weights
  live under its own path, so its `state_dict` keys come out right);
- a repeated layer that is not a block (`repeat(3, conv2d(..) -> relu)`) becomes a small
  class of its own under the same condition, so the repeat can be an `nn.ModuleList`;
- a fn call becomes a **function** when it has no state (no weights, no dropout);
- a repeat becomes a **loop** over an `nn.ModuleList` when its copies read the same;
- anything else is **inline**: its nodes are written into the enclosing class, reaching
  their layers through `nn.ModuleDict`/`nn.ModuleList` containers named like the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.backends.torch.names import camel
from nnspec.diagnostics import Span
from nnspec.ir.graph import Graph, Node
from nnspec.ir.ops import OPS


@dataclass(eq=False)
class Region:
    path: str  # "" for the whole graph
    kind: str  # model | loss | block | fn | repeat | item
    label: str  # block or fn name, the model's name, or a class name for repeated items
    span: Span | None
    parent: Region | None = None
    members: list[Node] = field(default_factory=list)  # every node inside, in graph order
    role: str = "inline"  # class | function | loop (repeats, decided while writing) | inline
    count: int = 1

    @property
    def prefix(self) -> str:
        return f"{self.path}." if self.path else ""

    def relative(self, path: str) -> str:
        return path[len(self.prefix):]

    def chain_to(self, inner: Region) -> list[Region]:
        """The regions from just below `self` down to `inner`."""
        out = []
        while inner is not self and inner is not None:
            out.append(inner)
            inner = inner.parent
        return out[::-1]


def regions(graph: Graph, kind: str,
            keep_whole: str | None) -> tuple[dict[str, Region], dict[str, Region]]:
    """The regions of a graph by path ("" is the whole graph) and each node's innermost
    region. `keep_whole` names a
    node that must stay in the top-level code (the fused softmax), so no region holding it
    may become a class or function."""
    root = Region("", kind, graph.name, None)
    table: dict[str, Region] = {"": root}
    prefixes = {n.name.rsplit(".", k)[0] for n in graph.nodes for k in range(1, n.name.count(".") + 1)}
    for path, scope in graph.scopes.items():
        table[path] = Region(path, scope.kind, scope.label, scope.span, count=scope.count)
    for path, scope in graph.scopes.items():
        if scope.kind != "repeat":
            continue
        for i in range(scope.count):
            item = f"{path}.{i}"
            if item not in table and item in prefixes:
                label = camel(path.rsplit(".", 1)[-1]) + "Layer"
                table[item] = Region(item, "item", label, scope.span)
    for path, region in table.items():
        if path:
            region.parent = _enclosing(path, table)
    owner: dict[str, Region] = {}
    for node in graph.nodes:
        if node.op == "input":
            continue
        region = _enclosing(node.name, table)
        owner[node.name] = region
        while region is not None:
            region.members.append(node)
            region = region.parent
    for region in table.values():
        region.role = _role(region, keep_whole)
    return table, owner


def _enclosing(name: str, table: dict[str, Region]) -> Region:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        region = table.get(".".join(parts[:cut]))
        if region is not None:
            return region
    return table[""]


def _role(region: Region, keep_whole: str | None) -> str:
    if region.kind in ("model", "loss"):
        return "class" if region.kind == "model" else "function"
    if not region.members or any(n.name == keep_whole for n in region.members):
        return "inline"
    layers = [n for n in region.members if n.module is not None]
    owns_all = all(n.module.startswith(region.prefix)
                   and all(p.startswith(region.prefix) for p in n.params.values())
                   for n in layers)
    if region.kind == "block" and owns_all:
        return "class"
    if region.kind == "item" and owns_all and layers:
        return "class"
    if region.kind == "fn" and not layers and not any(OPS[n.op].random
                                                       for n in region.members):
        return "function"
    if region.kind == "repeat":
        return "loop"  # a candidate; the writer falls back to inline when copies differ
    return "inline"


def boundary(region: Region, consumers: dict[str, list[str]],
             outputs: set[str]) -> tuple[list[str], str]:
    """A region's inputs (values from outside, in order of first use) and its output (the
    one value used outside, or its last node when nothing outside uses it)."""
    inside = {n.name for n in region.members}
    inputs: list[str] = []
    for n in region.members:
        for i in n.inputs:
            if i not in inside and i not in inputs:
                inputs.append(i)
    escaping = [n.name for n in region.members
                if n.name in outputs or any(c not in inside for c in consumers[n.name])]
    return inputs, (escaping[-1] if escaping else region.members[-1].name)
