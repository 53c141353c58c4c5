"""Describe a model from its IR alone — never by running it.

Rows follow the graph: one per layer, with repeats folded into one `xN` row (and blocks
below `depth` folded into one row each) carrying their subtotals. Tied parameters are
counted once, at the layer that owns them, and listed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass

from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node
from nnspec.ir.types import Dim, TensorType, dim_add, dim_prod

_BYTES = {"float32": 4, "int64": 8, "bool": 1}


@dataclass
class Row:
    name: str
    op: str
    shape: str
    params: int
    macs: Dim
    depth: int
    count: int = 1


@dataclass
class Summary:
    model: str
    rows: list[Row]
    total_params: int
    trainable_params: int
    buffers: int
    param_bytes: int
    macs: Dim
    train_activation_bytes: Dim
    infer_activation_bytes: Dim
    tied: list[tuple[str, list[str]]]
    inputs: list[str]
    outputs: list[str]  # "name [shape]", in the model's order

    def to_json(self) -> dict:
        data = asdict(self)
        data["tied"] = [{"param": p, "also_used_by": users} for p, users in self.tied]
        return data


def node_macs(graph: Graph, node: Node) -> Dim:
    opdef = ops.lookup(node.op)
    if opdef is None or opdef.macs is None or node.type is None:
        return 0
    ins = [graph.node(i).type for i in node.inputs]
    return opdef.macs(ins, node.type, node.attrs)


def _numel(t: TensorType | None) -> Dim:
    return 0 if t is None else dim_prod(t.shape)


def _fold_point(graph: Graph, node: Node, depth: int | None, expand: bool) -> str | None:
    """The scope whose single row stands for this node, or None to show the node itself."""
    for level, path in enumerate(graph.scope_chain(node.scope)):
        scope = graph.scopes[path]
        if depth is not None and level + 1 >= depth:
            return path
        if scope.kind in ("repeat", "fn") and not expand:
            return path
    return None


def summarize(graph: Graph, depth: int | None = None, expand: bool = False) -> Summary:
    """Rows in graph order; an open block gets a header row carrying its subtotal."""
    rows: list[Row] = []
    scope_rows: dict[str, Row] = {}

    def scope_row(path: str, shape: str) -> Row:
        row = scope_rows.get(path)
        if row is None:
            scope = graph.scopes[path]
            label = _repeat_label(graph, path) if scope.kind == "repeat" else scope.label
            row = Row(path, label, shape, 0, 0, len(graph.scope_chain(path)) - 1, scope.count)
            scope_rows[path] = row
            rows.append(row)
        return row

    for node in graph.nodes:
        if node.op == "scalar":
            continue
        shape = str(node.type) if node.type is not None else "?"
        params = graph.owned_param_count(node)
        macs = node_macs(graph, node)
        point = _fold_point(graph, node, depth, expand)
        chain = graph.scope_chain(node.scope)
        if point is not None:
            chain = chain[:chain.index(point) + 1]
        for path in chain:
            row = scope_row(path, shape)
            row.params += params
            row.macs = dim_add(row.macs, macs)
            row.shape = shape
        if point is None:
            rows.append(Row(node.name, node.op, shape, params, macs, len(chain)))
    total = sum(math.prod(p.spec.shape) for p in graph.params.values() if p.spec.trainable)
    buffers = sum(math.prod(p.spec.shape) for p in graph.params.values() if not p.spec.trainable)
    param_bytes = sum(math.prod(p.spec.shape) * _BYTES[p.spec.dtype]
                      for p in graph.params.values())
    macs: Dim = 0
    for node in graph.nodes:
        macs = dim_add(macs, node_macs(graph, node))
    tied = [(p.name, list(p.tied_from)) for p in graph.params.values() if p.tied_from]
    return Summary(graph.name, rows, total, total, buffers, param_bytes, macs,
                   _training_bytes(graph), _inference_peak_bytes(graph), tied,
                   [f"{n} {graph.node(n).type}" for n in graph.inputs],
                   [f"{name} {graph.node(n).type}" for name, n in graph.named_outputs.items()])


def _repeat_label(graph: Graph, path: str) -> str:
    inner = [s for p, s in graph.scopes.items() if p.startswith(path + ".") and
             p.count(".") == path.count(".") + 1]
    what = inner[0].label if inner and inner[0].kind == "block" else "layer"
    return f"{what} x{graph.scopes[path].count}"


def _bytes(t: TensorType | None) -> Dim:
    n = _numel(t)
    return n * _BYTES[t.dtype] if isinstance(n, int) and t is not None else dim_prod((n, 4))


def _training_bytes(graph: Graph) -> Dim:
    """Every activation is kept for the backward pass."""
    total: Dim = 0
    for node in graph.nodes:
        if node.op not in ("input", "scalar"):
            total = dim_add(total, _bytes(node.type))
    return total


def _inference_peak_bytes(graph: Graph) -> Dim:
    """Peak of live activations when each is freed after its last use."""
    last_use = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = i
    for name in graph.outputs:
        last_use[name] = len(graph.nodes)
    live: dict[str, int] = {}
    peak = 0
    for i, node in enumerate(graph.nodes):
        size = _bytes(node.type)
        if not isinstance(size, int):
            return "?"
        live[node.name] = size
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, i) <= i]:
            del live[name]
    return peak


# ---- rendering -----------------------------------------------------------------------------


def _human(n: Dim, unit: str = "") -> str:
    if not isinstance(n, int):
        return str(n)
    for factor, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= factor:
            return f"{_scaled(n, factor)}{suffix}{unit}"
    return f"{n}{unit}" if unit else str(n)


def _bytes_text(n: Dim) -> str:
    if not isinstance(n, int):
        return str(n)
    for factor, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{_scaled(n, factor)} {suffix}"
    return f"{n} B"


def _scaled(n: int, factor: int) -> str:
    """`n / factor` to two decimals; past 1e308 (a fuzzed `dense(10 ^ 200)`) there is no
    float, so the whole part alone."""
    try:
        return f"{n / factor:.2f}"
    except OverflowError:
        return f"{n // factor:,}"


def _footer(s: Summary) -> list[tuple[str, str]]:
    lines = [
        ("Total params", f"{s.total_params:,}"),
        ("Trainable params", f"{s.trainable_params:,}"),
        ("Buffers (not trained)", f"{s.buffers:,}"),
        ("Parameter memory", _bytes_text(s.param_bytes)),
        ("MACs per sample", f"{s.macs:,}" if isinstance(s.macs, int) else str(s.macs)),
        ("Activations per sample (training)", _bytes_text(s.train_activation_bytes)),
        ("Activations per sample (inference peak)", _bytes_text(s.infer_activation_bytes)),
    ]
    for param, users in s.tied:
        lines.append(("Tied", f"{param} (counted once) also used by {', '.join(users)}"))
    if len(s.outputs) > 1:
        lines.append(("Outputs", ", ".join(s.outputs)))
    return lines


def _cells(row: Row) -> list[str]:
    name = "  " * row.depth + row.name
    macs = f"{row.macs:,}" if isinstance(row.macs, int) else str(row.macs)
    return [name, row.op, row.shape, f"{row.params:,}" if row.params else "-",
            macs if row.macs else "-"]


HEADERS = ["layer", "op", "output", "params", "MACs"]
# The table shows the first and last half of this many rows of a bigger model; the other
# formats list every row. A 20,001-row summary took 9.5 s, most of it laying the table
# out, and fills no screen.
MAX_TABLE_ROWS = 1000


def render_table(s: Summary, color: bool = False, width: int | None = None) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{s.model}", title_justify="left", show_edge=False, pad_edge=False)
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("params", "MACs") else "left",
                         no_wrap=True)
    shown = s.rows
    if len(shown) > MAX_TABLE_ROWS:  # rich lays a table out cell by cell: 0.5 ms a row
        half = MAX_TABLE_ROWS // 2
        shown = [*s.rows[:half], None, *s.rows[-half:]]
    for row in shown:
        table.add_row(*(_cells(row) if row is not None else ["…", "…", "", "", ""]))
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color,
                      width=width or 200, highlight=False)
    console.print(table)
    if len(shown) < len(s.rows):
        console.print(f"{len(s.rows) - len(shown) + 1:,} of {len(s.rows):,} rows not shown at "
                      "the …: `--depth N` folds blocks, `--format csv` lists every row",
                      markup=False)
    for key, value in _footer(s):
        console.print(f"{key + ':':<42}{value}", markup=False)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def render_markdown(s: Summary) -> str:
    out = [f"### {s.model}", "", "| " + " | ".join(HEADERS) + " |",
           "|" + "---|" * len(HEADERS)]
    for row in s.rows:
        cells = _cells(row)
        cells[0] = "&nbsp;" * 2 * row.depth + f"`{row.name}`"
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.extend(f"- **{k}**: {v}" for k, v in _footer(s))
    return "\n".join(out)


def render_csv(s: Summary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "op", "output", "params", "macs", "depth", "count"])
    for row in s.rows:
        writer.writerow([row.name, row.op, row.shape, row.params, row.macs, row.depth, row.count])
    return buffer.getvalue()


def render_json(s: Summary) -> str:
    return json.dumps(s.to_json(), indent=2)
