"""Architecture diagrams: the IR as Graphviz DOT text, and rendering through the real `dot`.

`to_dot` is a pure function of the graph, so the same spec always gives the same bytes:
node ids are IR names (scope paths for folded blocks), emitted in graph order. What a
reader needs to recognise a network is decided here, before `dot` lays anything out:

- a layer followed by shape-preserving ops (batch norm, activation, dropout) that nothing
  else reads is drawn as one box (`conv2d 64, 3x3` over `batchnorm · relu`), unless
  `detail="full"`; the tensor shape is the same on both sides, so nothing is lost;
- a `repeat` is drawn once, its first instance inside a cluster marked `xN` (the way papers
  draw "N x" around a transformer layer), or as one box marked `xN` when that instance is
  one box; `expand=True` draws every instance;
- blocks nested `depth` levels deep or more fold into one node each;
- numbers used as operands (`0.5 * x`) become part of their consumer's label;
- a network too tall for a page is laid out in columns joined by lettered connectors;
- a graph that would still have more than `MAX_VISIBLE_NODES` boxes is folded further
  (lower depth, then runs of layers) with a `RenderWarning` issued through `warnings`, so
  `dot` never runs for minutes.

A graph built from a spec with errors draws too: a failed layer is red with its error as
its label, and what depends on it is grey with unknown shapes.
"""

from __future__ import annotations

import bisect
import html
import math
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from nnspec.ir import ops
from nnspec.ir.build import snake
from nnspec.ir.graph import Graph, Node
from nnspec.ir.types import TensorType

MAX_VISIBLE_NODES = 400  # dot lays out ~400 labelled boxes in well under a second
FORMATS = ("svg", "png", "pdf", "dot")
DIRECTIONS = ("TB", "LR")
DETAILS = ("min", "normal", "full")
INSTALL_HINT = ("install Graphviz: `apt-get install graphviz` (Debian/Ubuntu) or "
                "`brew install graphviz` (macOS)")

# A long network is cut into columns so that it fits this page (inches, inside margins) at
# this scale or better. The sizes below are averages measured on rendered diagrams.
_PAGE = (10.0, 7.5)
_READABLE_SCALE = 0.75
_MAX_COLUMNS = 8
_MIN_COLUMN_SHARE = 0.3  # no column shorter than this share of the tallest
_RANK_INCHES, _BOX_INCHES, _CLUSTER_INCHES, _TITLE_INCHES = 0.8, 1.8, 1.0, 1.0
_RANK_INCHES_LR, _BOX_INCHES_LR, _CLUSTER_INCHES_LR = 2.4, 0.8, 0.3

FONT = "Helvetica,Arial,sans-serif"
INK, MUTED, EDGE, SKIP_EDGE = "#333333", "#8a8a8a", "#6e6e6e", "#3f7fbf"
ERROR_FILL, ERROR_LINE, ERROR_TEXT = "#fde4e4", "#d32f2f", "#b71c1c"
UNCHECKED_FILL, UNCHECKED_LINE = "#f7f7f7", "#b0b0b0"
FOLDED_FILL, FOLDED_LINE = "#eef1f6", "#6d7f95"
IO_FILL, IO_LINE = "#ffffff", "#4d4d4d"

# op family -> (fill, line, legend name); a test checks every family of the catalogue is here
FAMILY_STYLES: dict[str, tuple[str, str, str]] = {
    "conv": ("#d7e5f5", "#4f7cae", "convolution"),
    "linear": ("#e3ddf3", "#7161a6", "dense"),
    "pool": ("#d4ede7", "#3e8e7e", "pooling"),
    "norm": ("#e4f0d5", "#6b9944", "normalisation"),
    "activation": ("#fde8d0", "#c47b2a", "activation"),
    "attention": ("#f8dada", "#b05656", "attention"),
    "recurrent": ("#f2e5cd", "#977642", "recurrent"),
    "embedding": ("#f5e1f0", "#985585", "embedding"),
    "merge": ("#fff2c2", "#ad8d24", "merge"),
    "shape": ("#ebebeb", "#808080", "reshape"),
    "math": ("#f2efe9", "#8f8576", "math"),
    "regularization": ("#fafafa", "#a3a3a3", "dropout"),
    "loss": ("#fbdcc9", "#b6623a", "loss"),
}
_OTHER_STYLE = ("#f2f2f2", "#8a8a8a", "other")
_FUSIBLE = ("norm", "activation", "regularization")  # shape-preserving followers
_SYMBOLS = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "pow": "^", "lt": "<", "le": "≤",
            "gt": ">", "ge": "≥", "eq": "=", "ne": "≠"}
_COMMUTATIVE = ("add", "mul", "eq", "ne")
_POOLS = ("maxpool", "avgpool", "maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d")


class RenderError(Exception):
    """Rendering could not run (no `dot` binary, unknown format); the message says what to do."""


class RenderWarning(UserWarning):
    """The diagram was folded beyond what was asked, so that `dot` stays fast."""


def _family(op: str) -> str:
    opdef = ops.lookup(op)
    return opdef.family if opdef else "other"


def _style(family: str) -> tuple[str, str, str]:
    return FAMILY_STYLES.get(family, _OTHER_STYLE)


# ---- what is drawn: boxes ("items") and the edges between them -----------------------------


@dataclass
class _Item:
    id: str
    kind: str  # layer | input | folded (a block or repeat as one box) | run (n layers)
    nodes: list[Node]  # a layer and its fused followers; every node of a folded block or run
    clusters: tuple[str, ...]  # drawn scope paths holding it, outermost first
    scalars: list[tuple[int, float]] = field(default_factory=list)  # (operand index, value)
    repeat: str | None = None  # a repeat drawn as this one box, marked xN

    @property
    def head(self) -> Node:
        return self.nodes[0]


@dataclass
class _Edge:
    src: str
    dst: str
    type: TensorType | None
    skip: bool = False  # on a residual (shortcut) path
    label: bool = True  # write the shape (once per source)


@dataclass
class _Output:
    id: str  # "@output", "@output2", ...: `@` never starts an IR name
    source: str  # the item that produces it
    node: Node


@dataclass
class _View:
    items: dict[str, _Item]  # in graph order
    edges: list[_Edge]
    outputs: list[_Output]
    depth: int | None

    def adjacency(self) -> tuple[dict[str, list[_Edge]], dict[str, list[_Edge]]]:
        incoming: dict[str, list[_Edge]] = {k: [] for k in self.items}
        outgoing: dict[str, list[_Edge]] = {k: [] for k in self.items}
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


def _build_view(graph: Graph, depth: int | None, expand: bool, fuse: bool) -> _View:
    scopes = _Scopes(graph, depth, expand)
    items: dict[str, _Item] = {}
    item_of: dict[str, str | None] = {}  # IR node -> item id; None for folded scalars
    for node in graph.nodes:
        if node.op == "scalar":
            item_of[node.name] = None
            continue
        clusters, folded = scopes.placement(node)
        if folded is not None:
            items.setdefault(folded, _Item(folded, "folded", [], clusters)).nodes.append(node)
            item_of[node.name] = folded
            continue
        key = item_of[node.name] = scopes.canonical(node.name)
        if key not in items:
            items[key] = _Item(key, "input" if node.op == "input" else "layer", [node], clusters)
    edges: dict[tuple[str, str], _Edge] = {}
    for node in graph.nodes:
        target = item_of.get(node.name)
        if target is None:
            continue
        for index, name in enumerate(node.inputs):
            if name not in item_of:  # a partial graph may lack a failed producer
                continue
            source = item_of[name]
            if source is None:
                if node is items[target].head:
                    items[target].scalars.append((index, graph.node(name).attrs.value))
            elif source != target and not scopes.crosses_instances(name, node.name):
                edges.setdefault((source, target), _Edge(source, target, graph.node(name).type))
    outputs = [_Output("@output" + (str(i + 1) if i else ""), item_of[name], graph.node(name))
               for i, name in enumerate(graph.outputs) if item_of.get(name) is not None]
    view = _View(items, list(edges.values()), outputs, depth)
    if fuse:
        _fuse_followers(view)
    _badge_single_repeats(graph, view)
    return view


def _fuse_followers(view: _View) -> None:
    """Draw `conv -> batchnorm -> relu` as one box when nothing else reads the middle."""
    incoming, outgoing = view.adjacency()
    produces_output = {o.source for o in view.outputs}
    for key in list(view.items):
        item = view.items[key]
        if item.kind != "layer" or len(incoming[key]) != 1 or item.scalars:
            continue
        node, edge = item.head, incoming[key][0]
        base = view.items[edge.src]
        if (_family(node.op) not in _FUSIBLE or node.error or node.type is None
                or base.kind != "layer" or base.head.error or base.scalars
                or len(outgoing[base.id]) != 1 or base.id in produces_output
                or base.clusters != item.clusters or base.nodes[-1].type != node.type):
            continue
        base.nodes.extend(item.nodes)
        del view.items[key]
        view.edges.remove(edge)
        outgoing[base.id] = outgoing.pop(key)
        for e in outgoing[base.id]:
            e.src = base.id
        for o in view.outputs:
            if o.source == key:
                o.source = base.id
                produces_output.add(base.id)


def _badge_single_repeats(graph: Graph, view: _View) -> None:
    """A repeat whose one instance is a single box is drawn as that box marked xN."""
    members: dict[str, list[_Item]] = {}
    for item in view.items.values():
        for path in item.clusters:
            members.setdefault(path, []).append(item)
    for path, items in members.items():
        if (graph.scopes[path].kind == "repeat" and len(items) == 1
                and items[0].clusters[-1] == path and items[0].kind == "layer"):
            items[0].clusters = items[0].clusters[:-1]
            items[0].repeat = path


def _mark_edges(view: _View) -> None:
    """Colour residual paths; write each tensor shape once per source.

    An input of a merge (`+`, `concat`) that comes from fewer layers back than another is
    the shortcut; the path leading to it from its branch point (a projection `conv 1x1 ->
    batchnorm`, say) is coloured with it.
    """
    order = {k: i for i, k in enumerate(view.items)}
    level = dict.fromkeys(view.items, 0)  # longest path from an input, in boxes
    for e in sorted(view.edges, key=lambda e: order[e.dst]):
        level[e.dst] = max(level[e.dst], level[e.src] + 1)
    incoming, outgoing = view.adjacency()
    for key, edges in incoming.items():
        target = view.items[key]
        if target.kind != "layer" or _family(target.head.op) != "merge" or len(edges) < 2:
            continue
        deepest = max(level[e.src] for e in edges)
        for e in edges:
            if level[e.src] < deepest:
                e.skip = True
                source = e.src
                while len(incoming[source]) == 1 and len(outgoing[source]) == 1:
                    incoming[source][0].skip = True
                    source = incoming[source][0].src
    labelled: set[str] = set()
    for e in sorted(view.edges, key=lambda e: (e.skip, order[e.src], order[e.dst])):
        e.label = e.src not in labelled
        labelled.add(e.src)


# ---- folding what is too big for dot ---------------------------------------------------------


def _fold_runs(view: _View, limit: int) -> None:
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
    items: dict[str, _Item] = {}
    for key, item in view.items.items():
        head = head_of.get(key)
        if head is None:
            items[key] = item
        elif head == key:
            items[key] = _Item(key, "run", list(item.nodes), item.clusters)
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


def _fitting_view(graph: Graph, depth: int | None, expand: bool, fuse: bool) -> _View:
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
    warnings.warn(f"{graph.name}: {asked:,} boxes are too many for `dot` to lay out quickly; "
                  f"drew {view.size:,} ({', '.join(how)}). Pass a depth (`--depth N`) to "
                  "choose what is folded.", RenderWarning, stacklevel=3)
    return view


# ---- wrapping a tall network into columns ----------------------------------------------------


def _columns(heights: list[float], limit: float) -> list[int]:
    """Greedy cut of unit heights, in order, into columns no taller than `limit`."""
    out, column, filled = [], 0, 0.0
    for h in heights:
        if filled and filled + h > limit + 1e-9:
            column, filled = column + 1, 0.0
        out.append(column)
        filled += h
    return out


def _balanced_columns(heights: list[float], n: int) -> list[int]:
    """Units cut into at most n columns in order, the tallest column as short as possible."""
    prefix = [0.0]
    for h in heights:
        prefix.append(prefix[-1] + h)
    candidates = sorted({b - a for i, a in enumerate(prefix) for b in prefix[i + 1:]})
    candidates = candidates[bisect.bisect_left(candidates, max(heights)):]
    low, high = 0, len(candidates) - 1
    while low < high:  # the fewest columns needed falls as the limit grows
        mid = (low + high) // 2
        if _columns(heights, candidates[mid])[-1] < n:
            high = mid
        else:
            low = mid + 1
    return _columns(heights, candidates[low])


def _page_scale(columns: list[int], heights: list[float], rows: list[dict[int, int]],
                lr: bool) -> float:
    """How much the picture must shrink to fit the page, upright or sideways (1: not at all).

    `rows[i]` counts unit i's boxes on each rank: the widest rank of a column sets its width.
    """
    count = columns[-1] + 1
    along = max(sum(h for h, c in zip(heights, columns) if c == k) for k in range(count))
    across = 0
    for k in range(count):
        per_rank: dict[int, int] = {}
        for unit_rows, c in zip(rows, columns):
            if c == k:
                for rank, boxes in unit_rows.items():
                    per_rank[rank] = per_rank.get(rank, 0) + boxes
        across += max(per_rank.values())
    across *= _BOX_INCHES_LR if lr else _BOX_INCHES
    w, h = (along, across + _TITLE_INCHES) if lr else (across, along + _TITLE_INCHES)
    return max(min(a / w, b / h, 1.0) for a, b in (_PAGE, _PAGE[::-1]))


def _wrap_columns(view: _View, lr: bool) -> list[tuple[str, str]]:
    """Lay a tall network out in side-by-side columns; return the connectors to draw.

    A ResNet is ~30 boxes tall; in one column it needs a 30-inch page. Its top-level
    sequence (never the inside of a block) is cut into as few columns as make the picture
    fit a page at a readable scale. An edge that would cross to another column ends in a
    lettered circle at the bottom of its column and starts again from the same letter at
    the top of the next, as off-page connectors do in flow charts. Returns (id, letter).
    """
    unit_of = {key: (item.clusters[0] if item.clusters else key)
               for key, item in view.items.items()}
    units = list(dict.fromkeys(unit_of.values()))
    order = {k: i for i, k in enumerate(view.items)}
    rank = dict.fromkeys(view.items, 0)  # longest path from an input
    for e in sorted(view.edges, key=lambda e: order[e.dst]):
        rank[e.dst] = max(rank[e.dst], rank[e.src] + 1)
    rows: dict[str, dict[int, int]] = {u: {} for u in units}
    clusters: dict[str, set[str]] = {u: set() for u in units}
    for key, unit in unit_of.items():
        rows[unit][rank[key]] = rows[unit].get(rank[key], 0) + 1
        clusters[unit].update(view.items[key].clusters)
    rank_inches, cluster_inches = ((_RANK_INCHES_LR, _CLUSTER_INCHES_LR) if lr
                                   else (_RANK_INCHES, _CLUSTER_INCHES))
    heights, reached = [], -1  # a unit adds the ranks it reaches below those before it
    for u in units:
        deepest = max(rows[u])
        heights.append(max(deepest - reached, 0) * rank_inches + len(clusters[u]) * cluster_inches)
        reached = max(reached, deepest)
    unit_rows = [rows[u] for u in units]
    best, best_scale = [0] * len(units), 0.0
    for n in range(1, min(len(units), _MAX_COLUMNS) + 1):
        if best_scale >= _READABLE_SCALE:
            break
        columns = _balanced_columns(heights, n)
        tall = [sum(h for h, c in zip(heights, columns) if c == k) for k in range(columns[-1] + 1)]
        if min(tall) < _MIN_COLUMN_SHARE * max(tall):
            continue  # a stub column (the tail of a tall block) reads worse than no wrapping
        scale = _page_scale(columns, heights, unit_rows, lr)
        if scale > best_scale + 0.05:  # another column must earn its place
            best, best_scale = columns, scale
    column_of = dict(zip(units, best))
    connectors: list[tuple[str, str]] = []
    letter_of: dict[str, str] = {}
    edges = []
    for e in view.edges:
        if column_of[unit_of[e.src]] == column_of[unit_of[e.dst]]:
            edges.append(e)
            continue
        if e.src not in letter_of:
            letter = letter_of[e.src] = _connector_letter(len(letter_of))
            connectors += [(f"@{letter}.out", letter), (f"@{letter}.in", letter)]
            edges.append(_Edge(e.src, f"@{letter}.out", e.type, e.skip))
        edges.append(_Edge(f"@{letter_of[e.src]}.in", e.dst, e.type, e.skip, e.label))
    view.edges = edges
    return connectors


def _connector_letter(index: int) -> str:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O: they read as 1 and 0
    cycle, i = divmod(index, len(letters))
    return letters[i] + (str(cycle + 1) if cycle else "")


# ---- label text ------------------------------------------------------------------------------


def _num(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_num(v) for v in value) + "]"
    return str(value)


def _int(n: int) -> str:
    """Thousands separators from five digits on: 3072, 50,257."""
    return f"{n:,}" if n >= 10000 else str(n)


def _count(n: int) -> str:
    """Three significant digits: 192, 9.41k, 148k, 2.36M, 11.7M."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            value = n / factor
            return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f}{suffix}"
    return str(n)


def _pair(value, axes: int) -> str:
    """A window size: `3` -> `3×3`, `(3, 5)` -> `3×5`."""
    values = value if isinstance(value, (tuple, list)) else [value] * axes
    return "×".join(str(v) for v in values)


def _is(value, n: int) -> bool:
    """`value` (an int or one per spatial dim) is n everywhere."""
    return all(v == n for v in (value if isinstance(value, (tuple, list)) else [value]))


def _spatial_dims(node: Node) -> int:
    if node.op.endswith(("1d", "2d")):
        return int(node.op[-2])
    return 2 if node.type is not None and node.type.rank == 3 else 1


def _window_attrs(node: Node, full: bool) -> list[str]:
    """`3×3, s2` (and padding, bias in full detail) for convolutions and pools."""
    a = node.attrs
    out = [_pair(a.kernel, _spatial_dims(node))]
    stride = a.get("stride")
    if stride is not None and not _is(stride, 1) and not (node.op in _POOLS and stride == a.kernel):
        out.append(f"s{_pair(stride, 1)}")
    padding = a.get("padding", 0)
    if padding == "same":
        out.append("same")
    elif full and padding != "valid" and not _is(padding, 0):
        out.append(f"p{_pair(padding, 1)}")
    if not _is(a.get("dilation", 1), 1):
        out.append(f"d{_pair(a.dilation, 1)}")
    if a.get("groups", 1) != 1:
        out.append(f"g{a.groups}")
    if full and a.get("bias") is False:
        out.append("no bias")
    return out


def _non_default_attrs(node: Node) -> list[str]:
    """The generic label: required values bare, others only where they differ from defaults."""
    opdef = ops.lookup(node.op)
    if opdef is None:
        return [f"{k}={_num(v)}" for k, v in node.attrs.items()]
    out = []
    for attr in opdef.attrs:
        value = node.attrs.get(attr.name)
        if attr.default is ops.REQUIRED:
            out.append(_num(value) if attr.kind in ("int", "float") else
                       f"{attr.name}={_num(value)}")
        elif value is not None and value != attr.default:
            out.append(f"{attr.name}={_num(value)}")
    return out


def _label_value(value) -> str:
    return _int(value) if isinstance(value, int) and not isinstance(value, bool) else _num(value)


def _label_part(template: str, node: Node, opdef: ops.OpDef) -> str:
    """One entry of the catalogue's `label`: `"{heads} heads"`, or `"bias?no bias"` (only
    when `bias` differs from its default)."""
    name, conditional, text = template.partition("?")
    if conditional:
        if node.attrs.get(name) == opdef.attr(name).default:
            return ""
        template = text
    return template.format_map({k: _label_value(v) for k, v in node.attrs.items()})


def _conv_label(node: Node, full: bool) -> tuple[str, str]:
    return node.op, ", ".join([str(node.attrs.channels)] + _window_attrs(node, full))


def _pool_label(node: Node, full: bool) -> tuple[str, str]:
    return node.op, ", ".join(_window_attrs(node, full))


def _adaptive_label(node: Node, full: bool) -> tuple[str, str]:
    return "adaptive avgpool", _pair(node.attrs.size, _spatial_dims(node))


# Ops whose label the catalogue's `label` templates cannot say (window sizes by rank).
_IRREGULAR_LABELS = {
    "conv1d": _conv_label,
    "conv2d": _conv_label,
    **dict.fromkeys(_POOLS, _pool_label),
    "adaptive_avgpool": _adaptive_label,
    "global_avgpool": lambda node, full: ("global avgpool", ""),
}


def op_text(node: Node, full: bool = False) -> tuple[str, str]:
    """(op, key attributes) as drawn, e.g. ("conv2d", "64, 3×3, s2"): the catalogue's `label`
    templates (norms bare unless in full detail), else the generic `_non_default_attrs`."""
    irregular = _IRREGULAR_LABELS.get(node.op)
    if irregular is not None:
        return irregular(node, full)
    opdef = ops.lookup(node.op)
    if opdef is not None and opdef.family == "norm" and not full:
        return node.op, ""
    if opdef is None or opdef.label is None:
        return node.op, ", ".join(_non_default_attrs(node))
    parts = (_label_part(template, node, opdef) for template in opdef.label)
    return node.op, ", ".join(part for part in parts if part)


def _scalar_text(item: _Item) -> str:
    """An op with a number folded in: `× 0.5`, `· − 1`, `1 − ·`, `where(·, ·, 0)`."""
    op = item.head.op
    values = dict(item.scalars)
    operands = [_num(values[i]) if i in values else "·" for i in range(len(item.head.inputs))]
    if op not in _SYMBOLS or len(operands) != 2:
        return f"{op}({', '.join(operands)})"
    if op in _COMMUTATIVE:
        return f"{_SYMBOLS[op]} {next(v for v in operands if v != '·')}"
    return f"{operands[0]} {_SYMBOLS[op]} {operands[1]}"


def _shape_text(t: TensorType | None) -> str:
    if t is None:
        return "?"
    return {"int64": "int ", "bool": "bool "}.get(t.dtype, "") + t.with_batch("B")


def _auto_named(node: Node) -> bool:
    """Named by the builder (`relu_2`, a repeat's `3`), not by the spec's `as`."""
    local = node.name.rsplit(".", 1)[-1]
    return local.isdigit() or re.fullmatch(rf"{re.escape(node.op)}_\d+", local) is not None


def _auto_scope_name(label: str, local: str) -> bool:
    """A block, fn or repeat instance named by the builder (`scaled_swish_1`)."""
    return re.fullmatch(rf"({re.escape(label)}|{re.escape(snake(label))})_\d+", local) is not None


def _scope_title(graph: Graph, path: str) -> str:
    """`Stage`, or for a repeat `Block ×12` (just `×3` when it repeats plain layers)."""
    scope = graph.scopes[path]
    if scope.kind != "repeat":
        return scope.label
    inner = graph.scopes.get(path + ".0")
    return (f"{inner.label} " if inner is not None and inner.kind == "block" else "") + \
        f"×{scope.count}"


def _train_lines(train) -> list[str]:
    """`loss cross_entropy · optimizer adam(lr=0.001)` over `30 epochs, batch 64`."""
    loss, opt = train.loss, train.optimizer
    loss_args = ", ".join(f"{k}={_num(v)}" for k, v in loss.args.items())
    defaults = {a.name: a.default for a in getattr(ops.OPTIMIZERS.get(opt.name), "hyper", ())}
    opt_args = ", ".join(f"{k}={_num(v)}" for k, v in opt.args.items()
                         if k == "lr" or defaults.get(k) != v)
    first = [f"<B>loss</B> {_esc(loss.name)}" + (f"({_esc(loss_args)})" if loss_args else ""),
             f"<B>optimizer</B> {_esc(opt.name)}({_esc(opt_args)})"]
    second = [f"<B>schedule</B> {_esc(train.schedule.name)}"] if train.schedule else []
    second.append(f"{train.epochs} epochs, batch {train.batch}")
    return ["   ·   ".join(first), "   ·   ".join(second)]


# ---- DOT text --------------------------------------------------------------------------------


class _Html(str):
    """A Graphviz HTML-like label, written as `<...>` rather than quoted."""


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _font(text: str, size: float | None = None, color: str | None = None) -> str:
    attrs = (f' POINT-SIZE="{size:g}"' if size else "") + (f' COLOR="{color}"' if color else "")
    return f"<FONT{attrs}>{text}</FONT>" if attrs else text


def _table(rows: list[str], badge: str = "", align: str = "CENTER") -> _Html:
    """A label of rows; a badge (`×3`) stands to the right of all of them."""
    rows = [row for row in rows if row]
    cells = []
    for i, row in enumerate(rows):
        side = f'<TD ROWSPAN="{len(rows)}">{badge}</TD>' if badge and i == 0 else ""
        cells.append(f'<TR><TD ALIGN="{align}">{row}</TD>{side}</TR>')
    return _Html('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
                 + "".join(cells) + "</TABLE>")


def _q(text: str) -> str:
    """A DOT id or value, always quoted: IR names contain dots."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**attrs) -> str:
    parts = [f"{key}=<{value}>" if isinstance(value, _Html) else f"{key}={_q(value)}"
             for key, value in attrs.items() if value is not None]
    return "[" + ", ".join(parts) + "]"


class _Writer:
    """DOT statements for one view; labels read the graph for names and parameter counts."""

    def __init__(self, graph: Graph, view: _View, detail: str):
        self.graph, self.view, self.detail = graph, view, detail
        self.scope_params = self._scope_params()

    def _scope_params(self) -> dict[str, int]:
        totals = dict.fromkeys(self.graph.scopes, 0)
        for node in self.graph.nodes:
            count = self.graph.owned_param_count(node) if node.params else 0
            if count:
                for path in self.graph.scope_chain(node.scope):
                    totals[path] += count
        return totals

    def params_text(self, count: int, suffix: str = "") -> str:
        return f"{_count(count)} params{suffix}" if count and self.detail != "min" else ""

    # -- boxes ---------------------------------------------------------------------------

    def node(self, item: _Item) -> str:
        if item.kind == "input":
            return self._input(item)
        if item.kind == "folded":
            failed = any(n.error for n in item.nodes)
            return self._statement(item.id, label=self._folded_label(item), fillcolor=FOLDED_FILL,
                                   color=ERROR_LINE if failed else FOLDED_LINE, peripheries=2,
                                   tooltip=self._tooltip(item))
        if item.kind == "run":
            return self._statement(item.id, label=self._run_label(item), fillcolor=FOLDED_FILL,
                                   color=FOLDED_LINE, style="rounded,filled,dashed",
                                   tooltip=self._tooltip(item))
        return self._layer(item)

    def _statement(self, node_id: str, **attrs) -> str:
        return f"{_q(node_id)} {_attrs(**attrs)};"

    def _input(self, item: _Item) -> str:
        rows = [f"<B>{_esc(item.id)}</B>", _font(f"input {_esc(_shape_text(item.head.type))}", 9,
                                                 MUTED)]
        return self._statement(item.id, label=_table(rows), style="rounded,filled,bold",
                               fillcolor=IO_FILL, color=IO_LINE, tooltip=self._tooltip(item))

    def _layer(self, item: _Item) -> str:
        head = item.head
        family = _family(head.op)
        fill, line, _ = _style(family)
        extra: dict = {}
        if head.error:
            fill, line, extra = ERROR_FILL, ERROR_LINE, {"penwidth": 2, "fontcolor": ERROR_TEXT}
        elif head.type is None:
            fill, line = UNCHECKED_FILL, UNCHECKED_LINE
            extra = {"style": "rounded,filled,dashed", "fontcolor": MUTED}
        elif family == "regularization" and len(item.nodes) == 1:
            extra = {"style": "rounded,filled,dashed"}
        if family == "merge" and not head.error and not item.scalars and head.op in _SYMBOLS:
            # the paper's circled `+`; a fused `relu` stands beside it, as in ResNet's figure
            followers = self._followers(item)
            return self._statement(item.id, label=_SYMBOLS[head.op],
                                   xlabel=_Html(followers) if followers else None,
                                   shape="circle", width=0.3, height=0.3, fixedsize="true",
                                   fontsize=14, fillcolor=fill, color=line,
                                   tooltip=self._tooltip(item))
        badge = (f'&nbsp;&nbsp;<FONT POINT-SIZE="15"><B>×{self.graph.scopes[item.repeat].count}'
                 "</B></FONT>") if item.repeat else ""
        return self._statement(item.id, label=_table(self._layer_rows(item), badge),
                               fillcolor=fill, color=line, tooltip=self._tooltip(item), **extra)

    def _layer_rows(self, item: _Item) -> list[str]:
        head = item.head
        op, attrs = op_text(head, self.detail == "full")
        if item.scalars:
            op, attrs = _scalar_text(item), ""
        rows = [f"<B>{_esc(op)}</B>" + (f" {_esc(attrs)}" if attrs else ""), self._followers(item)]
        if head.error:
            lines = textwrap.wrap(head.error, 38) or ["error"]
            rows.append(_font("<BR/>".join(_esc(line) for line in lines), 10, ERROR_TEXT))
        elif head.type is None and head.op != "input":
            rows.append(_font("not checked: an input failed", 9, MUTED))
        if self.detail == "min":
            return rows
        notes = []
        if self.detail == "full":
            notes.append(head.name)
        elif item.repeat is not None:
            local = item.repeat.rsplit(".", 1)[-1]
            notes += [] if _auto_scope_name("repeat", local) else [local]
        elif not _auto_named(head):
            notes.append(head.name.rsplit(".", 1)[-1])
        if item.repeat is not None:
            notes.append(self.params_text(self.scope_params[item.repeat], " in all"))
        else:
            notes.append(self.params_text(sum(self.graph.owned_param_count(n) for n in item.nodes)))
        notes += [f"tied to {owner}" for owner in self._tied_owners(item.nodes)]
        rows.append(_font(_esc(" · ".join(n for n in notes if n)), 9, MUTED) if any(notes)
                    else "")
        return rows

    def _followers(self, item: _Item) -> str:
        """The fused shape-preserving ops after a layer, each in its family's colour."""
        parts = []
        for node in item.nodes[1:]:
            op, attrs = op_text(node, self.detail == "full")
            text = _esc(op + (f" {attrs}" if attrs and self.detail != "min" else ""))
            parts.append(_font(text, color=_style(_family(node.op))[1]))
        return _font(" · ".join(parts), 10) if parts else ""

    def _tied_owners(self, nodes: list[Node]) -> list[str]:
        """Layers whose weights these nodes use without owning them (`tie = wte`)."""
        owners: list[str] = []
        for node in nodes:
            for full in node.params.values():
                param = self.graph.params.get(full)
                if param is not None and param.owner != node.name and param.owner not in owners:
                    owners.append(param.owner)
        return owners

    def _folded_label(self, item: _Item) -> _Html:
        scope = self.graph.scopes[item.id]
        rows = [f"<B>{_esc(_scope_title(self.graph, item.id))}</B>"]
        if self.detail != "min":
            layers = (f"{len(item.nodes)} layers" if scope.kind != "repeat" else
                      f"{len(item.nodes) // max(scope.count, 1)} layers each")
            notes = [item.id, self.params_text(self.scope_params[item.id]), layers]
            rows.append(_font(_esc(" · ".join(n for n in notes if n)), 9, MUTED))
        if any(n.error for n in item.nodes):
            rows.append(_font("contains an error", 10, ERROR_TEXT))
        return _table(rows)

    def _run_label(self, item: _Item) -> _Html:
        counts: dict[str, int] = {}
        for n in item.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        kinds = ", ".join(f"{op} ×{c}" if c > 1 else op for op, c in counts.items())
        rows = [f"<B>{len(item.nodes)} layers</B>", _font(_esc(kinds), 10)]
        if self.detail != "min":
            params = self.params_text(sum(self.graph.owned_param_count(n) for n in item.nodes))
            notes = [f"{item.nodes[0].name} … {item.nodes[-1].name}", params]
            rows.append(_font(_esc(" · ".join(n for n in notes if n)), 9, MUTED))
        return _table(rows)

    def _tooltip(self, item: _Item) -> str:
        """Every IR layer a box stands for, by name (shown on hover in SVG viewers)."""
        lines = []
        for n in item.nodes[:40]:
            op, attrs = op_text(n, full=True)
            lines.append(f"{n.name}: {op}{' ' + attrs if attrs else ''} → {_shape_text(n.type)}")
        if len(item.nodes) > 40:
            lines.append(f"… and {len(item.nodes) - 40} more")
        return "\n".join(lines)

    # -- clusters ------------------------------------------------------------------------

    def cluster_attrs(self, path: str, level: int) -> str:
        """`Stage` over `layer2 · 526k params`: the block, then its instance name and size."""
        scope = self.graph.scopes[path]
        local = path.rsplit(".", 1)[-1]
        notes = []
        if self.detail == "full" or not _auto_scope_name(scope.label, local):
            notes.append(path if self.detail == "full" else local)
        notes.append(self.params_text(self.scope_params[path],
                                      " in all" if scope.kind == "repeat" else ""))
        rows = [f"<B>{_esc(_scope_title(self.graph, path))}</B>"]
        if any(notes):
            rows.append(_font(_esc(" · ".join(n for n in notes if n)), 9, MUTED))
        repeat = scope.kind == "repeat"
        return _attrs(label=_table(rows, align="LEFT"), labeljust="l", fontsize=11, margin=7,
                      style="rounded,filled" + (",bold" if repeat else ""),
                      fillcolor=("#f6f7f9", "#eceef2", "#e3e6eb")[min(level, 2)],
                      color="#7d8ca0" if repeat else "#c9ced6", penwidth=1.4 if repeat else 1)

    def tree(self, lines: list[str], bottom_up: bool) -> None:
        """Boxes nested in their cluster subgraphs, both in order of first appearance.

        `dot` stacks the unconnected rows of a wrapped left-to-right layout upwards in input
        order, so those are emitted last row first (`bottom_up`) to read top to bottom.
        """
        root: dict = {"entries": [], "children": {}}
        for item in self.view.items.values():
            level = root
            for path in item.clusters:
                if path not in level["children"]:
                    level["entries"].append(("cluster", path))
                    level["children"][path] = {"entries": [], "children": {}}
                level = level["children"][path]
            level["entries"].append(("item", item.id))
        if bottom_up:
            root["entries"].reverse()

        def emit(level: dict, indent: int, depth: int):
            pad = "  " * indent
            for kind, key in level["entries"]:
                if kind == "item":
                    lines.append(pad + self.node(self.view.items[key]))
                    continue
                lines.append(f"{pad}subgraph {_q('cluster_' + key)} {{")
                lines.append(f"{pad}  graph {self.cluster_attrs(key, depth)};")
                emit(level["children"][key], indent + 1, depth + 1)
                lines.append(pad + "}")

        emit(root, 1, 0)

    # -- title, legend, edges, footer ------------------------------------------------------

    def title(self) -> _Html:
        graph = self.graph
        total = sum(math.prod(p.spec.shape) for p in graph.params.values() if p.spec.trainable)
        facts = [f"{total:,} parameters"] if self.detail != "min" else []
        if self.view.depth is not None:
            facts.append(f"blocks folded from depth {self.view.depth}")
        head = f'<FONT POINT-SIZE="16"><B>{_esc(graph.name)}</B></FONT>'
        if facts:
            head += _font("   " + _esc(" · ".join(facts)), 10, MUTED)
        return _table([head, self._legend()], align="LEFT")

    def _legend(self) -> str:
        """A chip per op family drawn, plus folded blocks, residual edges and errors."""
        families: list[str] = []
        folded = error = False
        for item in self.view.items.values():
            folded = folded or item.kind in ("folded", "run")
            for node in item.nodes if item.kind == "layer" else ():
                if _family(node.op) not in families:
                    families.append(_family(node.op))
                error = error or bool(node.error)
        order = [*FAMILY_STYLES, "other"]
        chips = [_style(f) for f in sorted(families, key=order.index)]
        if folded:
            chips.append((FOLDED_FILL, FOLDED_LINE, "folded block"))
        if error:
            chips.append((ERROR_FILL, ERROR_LINE, "error"))
        cells = [f'<TD BGCOLOR="{fill}" COLOR="{line}" BORDER="1" STYLE="rounded">'
                 f'{_font(_esc(name), 9)}</TD>' for fill, line, name in chips]
        if any(e.skip for e in self.view.edges):
            cells.append(f'<TD>{_font("<B>→</B> residual", 9, SKIP_EDGE)}</TD>')
        if not cells:
            return ""
        return ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="4" CELLPADDING="2"><TR>'
                + "".join(cells) + "</TR></TABLE>")

    def edge(self, src: str, dst: str, t: TensorType | None, label: bool, skip: bool) -> str:
        attrs: dict = {"label": "  " + _shape_text(t) if label and self.detail != "min" else None}
        if t is None:
            attrs.update(style="dashed", color=UNCHECKED_LINE, fontcolor=ERROR_TEXT)
        attrs.update({"color": SKIP_EDGE, "penwidth": 1.6, "weight": 1} if skip else {"weight": 4})
        return f"{_q(src)} -> {_q(dst)} {_attrs(**attrs)};"

    def output(self, out: _Output) -> str:
        rows = ["<B>output</B>"] + ([_font(_esc(out.node.name), 9, MUTED)]
                                    if self.detail == "full" else [])
        return self._statement(out.id, label=_table(rows), style="rounded,filled,bold",
                               fillcolor=IO_FILL, color=IO_LINE)

    @staticmethod
    def connector(node_id: str, letter: str) -> str:
        return f"{_q(node_id)} " + _attrs(
            label=letter, shape="circle", width=0.3, height=0.3, fixedsize="true", fontsize=10,
            style="filled,bold", fillcolor=IO_FILL, color=MUTED, fontcolor=MUTED,
            tooltip=f"continues at the other {letter}") + ";"


def to_dot(spec_or_graph, *, depth: int | None = None, direction: str = "TB",
           detail: str = "normal", expand: bool = False, train=None) -> str:
    """DOT text for a `Spec` or a `Graph` (also a partial one built from a spec with errors).

    `depth`: blocks nested this deep or deeper are drawn as one box each (None: no limit).
    `direction`: "TB" (top to bottom) or "LR". `detail`: "min" (ops only), "normal" (key
    attributes, shapes, parameter counts, shape-preserving followers fused into one box)
    or "full" (every IR node its own box, full names, all attributes).
    `expand`: draw every instance of a `repeat` instead of one marked `xN`.
    `train`: the `TrainConfig` for the footer (a `Spec`'s own when not given).
    Issues a `RenderWarning` through `warnings` when the graph had to be folded further.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be 1 or more, got {depth}")
    graph = spec_or_graph if isinstance(spec_or_graph, Graph) else spec_or_graph.graph
    if train is None and not isinstance(spec_or_graph, Graph):
        train = spec_or_graph.train
    view = _fitting_view(graph, depth, expand, fuse=detail != "full")
    _mark_edges(view)
    connectors = _wrap_columns(view, direction == "LR")
    writer = _Writer(graph, view, detail)
    lines = [
        f"digraph {_q(graph.name)} {{",
        "  graph " + _attrs(rankdir=direction, fontname=FONT, fontsize=11, fontcolor=INK,
                            labelloc="t", labeljust="l", label=writer.title(), nodesep=0.25,
                            ranksep=0.2, pad=0.3, bgcolor="white",
                            outputorder="edgesfirst") + ";",
        "  node " + _attrs(shape="box", style="rounded,filled", fontname=FONT, fontsize=11,
                           fontcolor=INK, penwidth=1.2, margin="0.14,0.06", height=0.3) + ";",
        "  edge " + _attrs(fontname=FONT, fontsize=8, fontcolor=MUTED, color=EDGE, arrowsize=0.6,
                           penwidth=1.1) + ";",
    ]
    writer.tree(lines, bottom_up=direction == "LR" and bool(connectors))
    lines += ["  " + writer.connector(node_id, letter) for node_id, letter in connectors]
    lines += ["  " + writer.output(out) for out in view.outputs]
    lines += ["  " + writer.edge(e.src, e.dst, e.type, e.label, e.skip) for e in view.edges]
    lines += ["  " + writer.edge(out.source, out.id, out.node.type, True, False)
              for out in view.outputs]
    if train is not None:
        note = _font("<BR/>".join(_train_lines(train)), 10, "#555555")
        lines.append('  "@train" ' + _attrs(label=_Html(note), shape="plaintext", style="") + ";")
        lines += [f'  {_q(out.id)} -> "@train" [style="invis"];' for out in view.outputs]
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- rendering through the real `dot` ----------------------------------------------------------


def _pipe(dot: str, fmt: str) -> bytes:
    import graphviz

    try:
        return graphviz.pipe("dot", fmt, dot.encode("utf-8"), quiet=True)
    except graphviz.ExecutableNotFound:
        raise RenderError(f"the Graphviz `dot` program was not found; {INSTALL_HINT}; or write "
                          "DOT text (`--format dot`), which needs no Graphviz") from None
    except graphviz.CalledProcessError as err:
        message = (err.stderr or b"").decode("utf-8", "replace").strip()
        raise RenderError(f"`dot` failed: {message or err}") from None


def _with_dpi(dot: str, dpi: int) -> str:
    """PNG only: more pixels per inch, so small shape labels stay sharp."""
    header, rest = dot.split("\n", 1)
    return f"{header}\n  graph [dpi={dpi}];\n{rest}"


def format_for(out_path, fmt: str | None = None) -> str:
    """The output format: `fmt` if given, else the file's suffix (`.gv` is DOT too)."""
    fmt = (fmt or Path(out_path).suffix.lstrip(".")).lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        raise RenderError(f"cannot write {out_path} as {fmt or 'a file without a suffix'}; "
                          f"use a .svg, .png, .pdf or .dot file or pick a format "
                          f"({', '.join(FORMATS)})")
    return fmt


def render(spec, out_path, fmt: str | None = None, **options) -> Path:
    """Write the diagram of a `Spec` (or `Graph`) to `out_path`; returns the path.

    The format follows the suffix unless `fmt` is given; `options` are `to_dot`'s. DOT
    needs no Graphviz binary; svg, png and pdf run the real `dot` and raise `RenderError`
    with the install command when it is missing.
    """
    out = Path(out_path)
    fmt = format_for(out, fmt)
    dot = to_dot(spec, **options)
    data = dot.encode("utf-8") if fmt == "dot" else _pipe(
        _with_dpi(dot, 144) if fmt == "png" else dot, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def render_svg(spec, **options) -> str:
    """SVG text of the diagram (`Spec._repr_svg_` shows it in notebooks)."""
    return _pipe(to_dot(spec, **options), "svg").decode("utf-8")
