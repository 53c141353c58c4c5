"""DOT text: the view's boxes, clusters and edges as Graphviz statements.

`to_dot` is a pure function of the graph, so the same spec always gives the same bytes:
node ids are IR names (scope paths for folded blocks), emitted in graph order.
"""

from __future__ import annotations

import hashlib

from nnspec.backends.graphviz.labels import SYMBOLS, Html, Labels
from nnspec.backends.graphviz.layout import cut_long_edges, wrap_columns
from nnspec.backends.graphviz.style import (
    EDGE,
    ERROR_FILL,
    ERROR_LINE,
    ERROR_TEXT,
    FOLDED_FILL,
    FOLDED_LINE,
    FONT,
    INK,
    IO_FILL,
    IO_LINE,
    MUTED,
    SKIP_EDGE,
    UNCHECKED_FILL,
    UNCHECKED_LINE,
    family,
    style,
)
from nnspec.backends.graphviz.view import Item, Output, View, fitting_view, mark_edges
from nnspec.ir.graph import Graph
from nnspec.ir.types import TensorType

DIRECTIONS = ("TB", "LR")
DETAILS = ("min", "normal", "full")
MAX_ID_CHARS = 200  # `dot` refuses quoted strings over 16,384 characters


def dot_id(name: str) -> str:
    """A DOT id for an IR name, quoted: the name itself unless it is too long for `dot`.

    A longer name keeps its start and gains a digest of the whole, so ids stay unique
    (`~` is never part of an IR name, so no clipped id equals a real one).
    """
    if len(name) > MAX_ID_CHARS:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
        name = f"{name[:MAX_ID_CHARS - 17]}~{digest}"
    return _q(name)


def _q(text: str) -> str:
    """A DOT value, always quoted: IR names contain dots."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**attrs) -> str:
    parts = [f"{key}=<{value}>" if isinstance(value, Html) else f"{key}={_q(value)}"
             for key, value in attrs.items() if value is not None]
    return "[" + ", ".join(parts) + "]"


class _Writer:
    """DOT statements for one view: shapes and colours here, label text from `Labels`."""

    def __init__(self, graph: Graph, view: View, detail: str):
        self.graph, self.view, self.detail = graph, view, detail
        self.labels = Labels(graph, view, detail)

    # -- boxes ---------------------------------------------------------------------------

    def node(self, item: Item) -> str:
        labels = self.labels
        if item.kind == "input":
            return self._statement(item.id, label=labels.input(item), style="rounded,filled,bold",
                                   fillcolor=IO_FILL, color=IO_LINE, tooltip=labels.tooltip(item))
        if item.kind == "folded":
            failed = any(n.error for n in item.nodes)
            return self._statement(item.id, label=labels.folded(item), fillcolor=FOLDED_FILL,
                                   color=ERROR_LINE if failed else FOLDED_LINE, peripheries=2,
                                   tooltip=labels.tooltip(item))
        if item.kind == "run":
            return self._statement(item.id, label=labels.run(item), fillcolor=FOLDED_FILL,
                                   color=FOLDED_LINE, style="rounded,filled,dashed",
                                   tooltip=labels.tooltip(item))
        return self._layer(item)

    @staticmethod
    def _statement(node_id: str, **attrs) -> str:
        return f"{dot_id(node_id)} {_attrs(**attrs)};"

    def _layer(self, item: Item) -> str:
        head = item.head
        kind = family(head.op)
        fill, line, _ = style(kind)
        extra: dict = {}
        if head.error:
            fill, line, extra = ERROR_FILL, ERROR_LINE, {"penwidth": 2, "fontcolor": ERROR_TEXT}
        elif head.type is None:
            fill, line = UNCHECKED_FILL, UNCHECKED_LINE
            extra = {"style": "rounded,filled,dashed", "fontcolor": MUTED}
        elif kind == "regularization" and len(item.nodes) == 1:
            extra = {"style": "rounded,filled,dashed"}
        if kind == "merge" and not head.error and not item.scalars and head.op in SYMBOLS:
            # the paper's circled `+`; a fused `relu` stands beside it, as in ResNet's figure
            followers = self.labels.followers(item)
            return self._statement(item.id, label=SYMBOLS[head.op],
                                   xlabel=Html(followers) if followers else None,
                                   shape="circle", width=0.3, height=0.3, fixedsize="true",
                                   fontsize=14, fillcolor=fill, color=line,
                                   tooltip=self.labels.tooltip(item))
        return self._statement(item.id, label=self.labels.layer(item), fillcolor=fill,
                               color=line, tooltip=self.labels.tooltip(item), **extra)

    def output(self, out: Output) -> str:
        return self._statement(out.id, label=self.labels.output(out), style="rounded,filled,bold",
                               fillcolor=IO_FILL, color=IO_LINE)

    @staticmethod
    def connector(node_id: str, letter: str) -> str:
        return f"{dot_id(node_id)} " + _attrs(
            label=letter, shape="circle", width=0.3, height=0.3, fixedsize="true", fontsize=10,
            style="filled,bold", fillcolor=IO_FILL, color=MUTED, fontcolor=MUTED,
            tooltip=f"continues at the other {letter}") + ";"

    # -- clusters ------------------------------------------------------------------------

    def cluster_attrs(self, path: str, level: int) -> str:
        repeat = self.graph.scopes[path].kind == "repeat"
        return _attrs(label=self.labels.cluster(path), labeljust="l", fontsize=11, margin=7,
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
                lines.append(f"{pad}subgraph {dot_id('cluster_' + key)} {{")
                lines.append(f"{pad}  graph {self.cluster_attrs(key, depth)};")
                emit(level["children"][key], indent + 1, depth + 1)
                lines.append(pad + "}")

        emit(root, 1, 0)

    # -- edges -----------------------------------------------------------------------------

    def edge(self, src: str, dst: str, t: TensorType | None, label: bool, skip: bool,
             port: str = "", shape_only: bool = False) -> str:
        """An edge; one carrying an extra result (`h_n`) always names it, shape or not; one
        read only for its shape (`noise(mu)`) is dotted."""
        shape = label and self.detail != "min"
        attrs: dict = {"label": self.labels.edge(t, port, shape) if shape or port else None}
        if shape_only:
            attrs.update(style="dotted", tooltip="only its shape is read")
        if t is None:
            attrs.update(style="dashed", color=UNCHECKED_LINE, fontcolor=ERROR_TEXT)
        attrs.update({"color": SKIP_EDGE, "penwidth": 1.6, "weight": 1} if skip else {"weight": 4})
        return f"{dot_id(src)} -> {dot_id(dst)} {_attrs(**attrs)};"


def to_dot(spec_or_graph, *, depth: int | None = None, direction: str = "TB",
           detail: str = "normal", expand: bool = False, train=None) -> str:
    """DOT text for a `Spec` or a `Graph` (also a partial one built from a spec with errors).

    `depth`: blocks nested this deep or deeper are drawn as one box each (None: no limit).
    `direction`: "TB" (top to bottom) or "LR". `detail`: "min" (ops only), "normal" (key
    attributes, shapes, parameter counts, shape-preserving followers fused into one box)
    or "full" (every IR node its own box — a recurrent layer's final states stay named edges
    of its box —, full names, all attributes).
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
    view = fitting_view(graph, depth, expand, fuse=detail != "full")
    mark_edges(view)
    connectors = wrap_columns(view, direction == "LR")
    cut_long_edges(view, connectors)
    writer = _Writer(graph, view, detail)
    lines = [
        f"digraph {dot_id(graph.name)} {{",
        "  graph " + _attrs(rankdir=direction, fontname=FONT, fontsize=11, fontcolor=INK,
                            labelloc="t", labeljust="l", label=writer.labels.title(),
                            nodesep=0.25, ranksep=0.2, pad=0.3, bgcolor="white",
                            outputorder="edgesfirst") + ";",
        "  node " + _attrs(shape="box", style="rounded,filled", fontname=FONT, fontsize=11,
                           fontcolor=INK, penwidth=1.2, margin="0.14,0.06", height=0.3) + ";",
        "  edge " + _attrs(fontname=FONT, fontsize=8, fontcolor=MUTED, color=EDGE, arrowsize=0.6,
                           penwidth=1.1) + ";",
    ]
    writer.tree(lines, bottom_up=direction == "LR" and bool(connectors))
    lines += ["  " + writer.connector(node_id, letter) for node_id, letter in connectors]
    lines += ["  " + writer.output(out) for out in view.outputs]
    lines += ["  " + writer.edge(e.src, e.dst, e.type, e.label, e.skip, e.port, e.shape_only)
              for e in view.edges]
    lines += ["  " + writer.edge(out.source, out.id, out.node.type, True, False, out.port)
              for out in view.outputs]
    if train is not None:
        lines.append('  "@train" ' + _attrs(label=writer.labels.train(train), shape="plaintext",
                                            style="") + ";")
        lines += [f'  {dot_id(out.id)} -> "@train" [style="invis"];' for out in view.outputs]
    lines.append("}")
    return "\n".join(lines) + "\n"
