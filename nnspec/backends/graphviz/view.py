"""What a diagram draws: boxes ("items") and edges over the IR graph, decided before layout.

The view is made by a pipeline of small passes, each readable alone: `_build_view` places
nodes into boxes and clusters (fusing followers, badging one-box repeats), `fitting_view`
folds further when the result is too big for `dot`, and `mark_edges` finds the residual
paths and which edges carry their shape.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

from nnspec.backends.graphviz.style import family
from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node
from nnspec.ir.types import TensorType

MAX_VISIBLE_NODES = 400  # dot lays out ~400 labelled boxes in well under a second
_FUSIBLE = ("norm", "activation", "regularization")  # shape-preserving followers


class RenderWarning(UserWarning):
    """The diagram was folded beyond what was asked, so that `dot` stays fast."""


ItemKind = Literal["layer", "input", "folded", "run"]  # folded: a block or repeat as one box;
#                                                       run: n layers merged into one box


@dataclass
class Item:
    id: str
    kind: ItemKind
    nodes: list[Node]  # a layer and its fused followers; every node of a folded block or run
    clusters: tuple[str, ...]  # drawn scope paths holding it, outermost first
    scalars: list[tuple[int, float]] = field(default_factory=list)  # (operand index, value)
    repeat: str | None = None  # a repeat drawn as this one box, marked xN

    @property
    def head(self) -> Node:
        return self.nodes[0]


@dataclass
class Edge:
    src: str
    dst: str
    type: TensorType | None
    skip: bool = False  # on a residual (shortcut) path
    label: bool = True  # write the shape (once per source and port)
    port: str = ""  # the name it carries: an extra result of its source (`h_n`) or the
    #                 tensor keyword its target reads it as (`key_padding_mask`)
    shape_only: bool = False  # the target reads only the shape (`noise(mu)`): drawn dotted


@dataclass
class Output:
    id: str  # "@output", "@output2", ...: `@` never starts an IR name
    source: str  # the item that produces it
    node: Node
    name: str = ""  # the output's name when the model has several (`mu`, `logvar`)
    port: str = ""  # the extra result of the source it is (`h_n`)


@dataclass
class View:
    items: dict[str, Item]  # in graph order
    edges: list[Edge]
    outputs: list[Output]
    depth: int | None

    def adjacency(self) -> tuple[dict[str, list[Edge]], dict[str, list[Edge]]]:
        incoming: dict[str, list[Edge]] = {k: [] for k in self.items}
        outgoing: dict[str, list[Edge]] = {k: [] for k in self.items}
        for e in self.edges:
            outgoing[e.src].append(e)
            incoming[e.dst].append(e)
        return incoming, outgoing

    @property
    def size(self) -> int:
        return len(self.items) + len(self.outputs)


class _Scopes:
    """Which scopes become clusters, which fold into one box, which show one instance."""

    def __init__(self, graph: Graph, depth: int | None, expand: bool):
        self.graph = graph
        self.depth = depth
        # repeats drawn by instance 0, outermost first so inner ones see rewritten names
        self.representative = [] if expand else sorted(
            (p for p, s in graph.scopes.items() if s.kind == "repeat"), key=lambda p: p.count("."))

    def canonical(self, name: str) -> str:
        """The same node's name in instance 0 of every collapsed repeat around it."""
        for path in self.representative:
            prefix = path + "."
            if name.startswith(prefix):
                rest = name[len(prefix):].split(".", 1)
                name = prefix + "0" + ("." + rest[1] if len(rest) > 1 else "")
        return name

    def crosses_instances(self, a: str, b: str) -> bool:
        """An edge from one repeat instance into the next: the loop that `xN` stands for."""
        for path in self.representative:
            prefix = path + "."
            if (a.startswith(prefix) and b.startswith(prefix)
                    and a[len(prefix):].split(".")[0] != b[len(prefix):].split(".")[0]):
                return True
        return False

    def placement(self, node: Node) -> tuple[tuple[str, ...], str | None]:
        """(clusters around the node, the scope it folds into or None)."""
        chain = self.graph.scope_chain(self.canonical(node.scope) if node.scope else "")
        clusters: list[str] = []
        for level, path in enumerate(chain):
            is_instance = self._is_shown_instance(path)
            if self.depth is not None and level + 1 >= self.depth:
                # a folded instance of a collapsed repeat folds the whole repeat
                return tuple(clusters), (clusters[-1] if is_instance else path)
            if not is_instance:  # the repeat's cluster already frames its one instance
                clusters.append(path)
        return tuple(clusters), None

    def _is_shown_instance(self, path: str) -> bool:
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        return parent in self.representative and path == parent + ".0"


def port(node: Node) -> str:
    """The name an edge from `node` carries: an extra result of a layer that gives several
    tensors (`h_n`, `c_n` of a recurrent layer); "" for any other value, its main output too."""
    if node.op == "result" and node.attrs.get("index", 0) > 0:
        return node.attrs.name
    return ""


def _build_view(graph: Graph, depth: int | None, expand: bool, fuse: bool) -> View:
    """Boxes and edges. A `result` node (one tensor of a layer that gives several) is no box:
    its producer's box has an extra outgoing edge named after it (`h_n`), as torch's
    `output, (h_n, c_n) = lstm(x)` reads."""
    scopes = _Scopes(graph, depth, expand)
    items: dict[str, Item] = {}
    item_of: dict[str, str | None] = {}  # IR node -> item id; None for folded scalars
    for node in graph.nodes:
        if node.op == "scalar":
            item_of[node.name] = None
            continue
        if node.op == "result" and node.inputs and node.inputs[0] in item_of:
            item_of[node.name] = item_of[node.inputs[0]]
            continue
        clusters, folded = scopes.placement(node)
        if folded is not None:
            items.setdefault(folded, Item(folded, "folded", [], clusters)).nodes.append(node)
            item_of[node.name] = folded
            continue
        key = item_of[node.name] = scopes.canonical(node.name)
        if key not in items:
            items[key] = Item(key, "input" if node.op == "input" else "layer", [node], clusters)
    edges: dict[tuple[str, str, str], Edge] = {}
    for node in graph.nodes:
        target = item_of.get(node.name)
        if target is None or node.op == "result":
            continue
        opdef = ops.lookup(node.op)
        keyword_of = ({i: k for k, i in ops.tensor_keywords(opdef, node.attrs).items()}
                      if opdef is not None and node.error is None else {})
        for index, name in enumerate(node.inputs):
            if name not in item_of:  # a partial graph may lack a failed producer
                continue
            source = item_of[name]
            if source is None:
                if node is items[target].head:
                    items[target].scalars.append((index, graph.node(name).attrs.value))
            elif source != target and not scopes.crosses_instances(name, node.name):
                value = graph.node(name)
                carries = keyword_of.get(index) or port(value)
                edges.setdefault((source, target, carries),
                                 Edge(source, target, value.type, port=carries,
                                      shape_only=opdef is not None and opdef.shape_only))
    several = len(graph.outputs) > 1
    outputs = [Output("@output" + (str(i + 1) if i else ""), item_of[name], graph.node(name),
                      graph.output_names[i] if several else "", port(graph.node(name)))
               for i, name in enumerate(graph.outputs) if item_of.get(name) is not None]
    view = View(items, list(edges.values()), outputs, depth)
    if fuse:
        _fuse_followers(view)
    _badge_single_repeats(graph, view)
    return view


def _fuse_followers(view: View) -> None:
    """Draw `conv -> batchnorm -> relu` as one box when nothing else reads the middle."""
    incoming, outgoing = view.adjacency()
    produces_output = {o.source for o in view.outputs}
    fused: set[int] = set()  # the edges inside fused boxes, dropped at the end in one pass
    for key in list(view.items):
        item = view.items[key]
        if item.kind != "layer" or len(incoming[key]) != 1 or item.scalars:
            continue
        node, edge = item.head, incoming[key][0]
        base = view.items[edge.src]
        if (family(node.op) not in _FUSIBLE or edge.port or node.error or node.type is None
                or base.kind != "layer" or base.head.error or base.scalars
                or len(outgoing[base.id]) != 1 or base.id in produces_output
                or base.clusters != item.clusters or base.nodes[-1].type != node.type):
            continue
        base.nodes.extend(item.nodes)
        del view.items[key]
        fused.add(id(edge))  # list.remove per box was quadratic: minutes for 48,000 boxes
        outgoing[base.id] = outgoing.pop(key)
        for e in outgoing[base.id]:
            e.src = base.id
        for o in view.outputs:
            if o.source == key:
                o.source = base.id
                produces_output.add(base.id)
    view.edges = [e for e in view.edges if id(e) not in fused]


def _badge_single_repeats(graph: Graph, view: View) -> None:
    """A repeat whose one instance is a single box is drawn as that box marked xN."""
    members: dict[str, list[Item]] = {}
    for item in view.items.values():
        for path in item.clusters:
            members.setdefault(path, []).append(item)
    for path, items in members.items():
        if (graph.scopes[path].kind == "repeat" and len(items) == 1
                and items[0].clusters[-1] == path and items[0].kind == "layer"):
            items[0].clusters = items[0].clusters[:-1]
            items[0].repeat = path


def mark_edges(view: View) -> None:
    """Colour residual paths; write each tensor shape once per source.

    An input of a merge (`+`, `concat`) that comes from fewer layers back than another, and
    whose branch point feeds that other input too, is the shortcut (`x + f(x)`); the path
    leading to it from its branch point (a projection `conv 1x1 -> batchnorm`, say) is
    coloured with it. An edge read only for its shape (`noise(mu)`) makes no branch: the
    reparameterisation `mu + sigma * noise(mu)` is no residual.
    """
    order = {k: i for i, k in enumerate(view.items)}
    level = dict.fromkeys(view.items, 0)  # longest path from an input, in boxes
    for e in sorted(view.edges, key=lambda e: order[e.dst]):
        level[e.dst] = max(level[e.dst], level[e.src] + 1)
    incoming, outgoing = view.adjacency()
    for key, edges in incoming.items():
        target = view.items[key]
        if target.kind != "layer" or family(target.head.op) != "merge" or len(edges) < 2:
            continue
        deepest = max(level[e.src] for e in edges)
        for e in edges:
            if level[e.src] >= deepest:
                continue
            path, source = [e], e.src
            while (len(incoming[source]) == 1 and len(outgoing[source]) == 1
                   and not incoming[source][0].shape_only):
                path.append(incoming[source][0])
                source = incoming[source][0].src
            others = [o.src for o in edges if o is not e]
            if _feeds(source, others, incoming):
                for step in path:
                    step.skip = True
    labelled: set[tuple[str, str]] = set()
    for e in sorted(view.edges, key=lambda e: (e.skip, order[e.src], order[e.dst])):
        e.label = (e.src, e.port) not in labelled
        labelled.add((e.src, e.port))


def _feeds(source: str, targets: list[str], incoming: dict[str, list[Edge]]) -> bool:
    """Whether `source` is one of `targets` or lies upstream of one (shape-only edges aside)."""
    seen, stack = set(), list(targets)
    while stack:
        key = stack.pop()
        if key == source:
            return True
        if key not in seen:
            seen.add(key)
            stack += [e.src for e in incoming[key] if not e.shape_only]
    return False


# ---- folding what is too big for dot ---------------------------------------------------------


def _fold_runs(view: View, limit: int) -> None:
    """Merge runs of one-in/one-out boxes into `n layers` boxes so the view fits `limit`."""
    incoming, outgoing = view.adjacency()
    produces_output = {o.source for o in view.outputs}
    size = math.ceil(view.size / (limit * 0.9))
    runs: list[list[str]] = [[]]
    for key, item in view.items.items():
        linear = (item.kind != "input" and len(incoming[key]) <= 1 and len(outgoing[key]) <= 1
                  and key not in produces_output)
        run = runs[-1]
        if run and (not linear or len(run) == size or incoming[key][0].src != run[-1]
                    or view.items[run[0]].clusters != item.clusters):
            runs.append([])
        if linear:
            runs[-1].append(key)
    head_of = {key: run[0] for run in runs if len(run) > 1 for key in run}
    items: dict[str, Item] = {}
    for key, item in view.items.items():
        head = head_of.get(key)
        if head is None:
            items[key] = item
        elif head == key:
            items[key] = Item(key, "run", list(item.nodes), item.clusters)
        else:
            items[head].nodes.extend(item.nodes)
    edges = []
    for e in view.edges:
        src, dst = head_of.get(e.src, e.src), head_of.get(e.dst, e.dst)
        if src != dst:
            e.src, e.dst = src, dst
            edges.append(e)
    view.items, view.edges = items, edges


def _max_depth(graph: Graph) -> int:
    return max((len(graph.scope_chain(path)) for path in graph.scopes), default=0)


def fitting_view(graph: Graph, depth: int | None, expand: bool, fuse: bool) -> View:
    """The view at the asked depth, folded further (with a warning) when it is too big."""
    view = _build_view(graph, depth, expand, fuse)
    if view.size <= MAX_VISIBLE_NODES:
        return view
    asked = view.size
    level = min(depth or _max_depth(graph) + 1, _max_depth(graph) + 1)
    while level > 1 and view.size > MAX_VISIBLE_NODES:
        level -= 1
        view = _build_view(graph, level, expand, fuse)
    if view.size > MAX_VISIBLE_NODES:
        _fold_runs(view, MAX_VISIBLE_NODES)
    how = [f"blocks folded from depth {view.depth}"] if view.depth is not None else []
    if any(item.kind == "run" for item in view.items.values()):
        how.append("runs of layers merged")
    if how:
        drew = f"drew {view.size:,} ({', '.join(how)}). Pass a depth (`--depth N`) to choose " \
               "what is folded."
    else:
        drew = f"drew all {view.size:,}: it has no blocks to fold and no runs of layers to merge."
    warnings.warn(f"{graph.name}: {asked:,} boxes are too many for `dot` to lay out quickly; "
                  + drew, RenderWarning, stacklevel=3)
    return view

