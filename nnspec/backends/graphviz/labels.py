"""Label text: what each box, cluster, title and footer says, as Graphviz HTML-like labels.

Every user-given text (model, layer and block names, dimension names, error messages) goes
through `esc`, which escapes it and clips it to `MAX_LABEL_CHARS`: a label stays readable,
and a hostile name cannot make a label longer than `dot` accepts.
"""

from __future__ import annotations

import html
import math
import textwrap

from nnspec.backends.graphviz.style import (
    ERROR_FILL,
    ERROR_LINE,
    ERROR_TEXT,
    FAMILY_STYLES,
    FOLDED_FILL,
    FOLDED_LINE,
    MUTED,
    SKIP_EDGE,
    family,
    style,
)
from nnspec.backends.graphviz.view import Item, Output, View
from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node
from nnspec.ir.types import TensorType

MAX_LABEL_CHARS = 80  # one line of a label: about seven inches at the diagram's font sizes
MAX_ERROR_CHARS = 240  # an error message in its red box: at most seven lines
MAX_TOOLTIP_LINES = 40
MAX_FOLLOWERS = 4  # fused ops written under a layer; the tooltip lists every one
SYMBOLS = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "pow": "^", "lt": "<", "le": "≤",
           "gt": ">", "ge": "≥", "eq": "=", "ne": "≠"}
_COMMUTATIVE = ("add", "mul")  # `× 0.5`; a comparison reads `· = 0`
_POOLS = ("maxpool", "avgpool", "maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d")


# ---- text of one op, one shape, one scope ------------------------------------------------------


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
        if attr.kind == "tensor":  # a mask: its edge shows where it comes from
            out += [attr.name] if value is not None else []
        elif attr.default is ops.REQUIRED:
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
    kind = node.op.removeprefix("adaptive_")
    return f"adaptive {kind}", _pair(node.attrs.size, _spatial_dims(node))


def _subscript(position: str, dim: int) -> str:
    """`position` at per-sample `dim` as the spec writes it: `[0]`, `[:, 1:3]`, `[..., :32]`."""
    if dim >= 0:
        return "[" + ":, " * dim + position + "]"
    return "[..., " + position + ", :" * (-dim - 1) + "]"


def _select_label(node: Node, full: bool) -> tuple[str, str]:
    return "select", _subscript(str(node.attrs.index), node.attrs.dim)


def _slice_label(node: Node, full: bool) -> tuple[str, str]:
    a = node.attrs
    position = ("" if a.start is None else str(a.start)) + ":" + \
        ("" if a.stop is None else str(a.stop)) + ("" if a.step == 1 else f":{a.step}")
    return "slice", _subscript(position, a.dim)


# Ops whose label the catalogue's `label` templates cannot say (window sizes by rank,
# subscripts).
_IRREGULAR_LABELS = {
    "conv1d": _conv_label,
    "conv2d": _conv_label,
    **dict.fromkeys(_POOLS, _pool_label),
    "adaptive_avgpool": _adaptive_label,
    "adaptive_maxpool": _adaptive_label,
    "conv_transpose1d": _conv_label,
    "conv_transpose2d": _conv_label,
    "global_avgpool": lambda node, full: ("global avgpool", ""),
    "select": _select_label,
    "slice": _slice_label,
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



def _scalar_text(item: Item) -> str:
    """An op with a number folded in: `× 0.5`, `· − 1`, `1 − ·`, `where(·, ·, 0)`."""
    op = item.head.op
    values = dict(item.scalars)
    operands = [_num(values[i]) if i in values else "·" for i in range(len(item.head.inputs))]
    if op not in SYMBOLS or len(operands) != 2:
        return f"{op}({', '.join(operands)})"
    if op in _COMMUTATIVE:
        return f"{SYMBOLS[op]} {next(v for v in operands if v != '·')}"
    return f"{operands[0]} {SYMBOLS[op]} {operands[1]}"


def shape_text(t: TensorType | None) -> str:
    if t is None:
        return "?"
    return {"int64": "int ", "bool": "bool "}.get(t.dtype, "") + t.with_batch("B")


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
    first = [f"<B>loss</B> {esc(loss.name)}" + (f"({esc(loss_args)})" if loss_args else ""),
             f"<B>optimizer</B> {esc(opt.name)}({esc(opt_args)})"]
    second = [f"<B>schedule</B> {esc(train.schedule.name)}"] if train.schedule else []
    second.append(f"{train.epochs} epochs, batch {train.batch}")
    return ["   ·   ".join(first), "   ·   ".join(second)]


# ---- HTML-like labels --------------------------------------------------------------------------


class Html(str):
    """A Graphviz HTML-like label, written as `<...>` rather than quoted."""


def clip(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def esc(text) -> str:
    """User text made safe for a label: clipped, then escaped."""
    return html.escape(clip(str(text)), quote=True)


def _font(text: str, size: float | None = None, color: str | None = None) -> str:
    attrs = (f' POINT-SIZE="{size:g}"' if size else "") + (f' COLOR="{color}"' if color else "")
    return f"<FONT{attrs}>{text}</FONT>" if attrs else text


def _table(rows: list[str], badge: str = "", align: str = "CENTER") -> Html:
    """A label of rows; a badge (`×3`) stands to the right of all of them."""
    rows = [row for row in rows if row]
    cells = []
    for i, row in enumerate(rows):
        side = f'<TD ROWSPAN="{len(rows)}">{badge}</TD>' if badge and i == 0 else ""
        cells.append(f'<TR><TD ALIGN="{align}">{row}</TD>{side}</TR>')
    return Html('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
                + "".join(cells) + "</TABLE>")


# ---- the labels of one view ----------------------------------------------------------------


class Labels:
    """Every label of one view; they read the graph for names and parameter counts."""

    def __init__(self, graph: Graph, view: View, detail: str):
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

    def input(self, item: Item) -> Html:
        return _table([f"<B>{esc(item.id)}</B>",
                       _font(esc(f"input {shape_text(item.head.type)}"), 9, MUTED)])

    def output(self, out: Output) -> Html:
        head = [f"<B>{esc(out.name)}</B>", _font("output", 9, MUTED)] if out.name else \
            ["<B>output</B>"]
        rows = head + ([_font(esc(out.node.name), 9, MUTED)] if self.detail == "full" else [])
        return _table(rows)

    def layer(self, item: Item) -> Html:
        badge = (f'&nbsp;&nbsp;<FONT POINT-SIZE="15"><B>×{self.graph.scopes[item.repeat].count}'
                 "</B></FONT>") if item.repeat else ""
        return _table(self._layer_rows(item), badge)

    def _layer_rows(self, item: Item) -> list[str]:
        head = item.head
        op, attrs = op_text(head, self.detail == "full")
        if item.scalars:
            op, attrs = _scalar_text(item), ""
        rows = [f"<B>{esc(op)}</B>" + (f" {esc(attrs)}" if attrs else ""), self.followers(item)]
        if head.error:
            lines = textwrap.wrap(clip(head.error, MAX_ERROR_CHARS), 38) or ["error"]
            rows.append(_font("<BR/>".join(esc(line) for line in lines), 10, ERROR_TEXT))
        elif head.type is None and head.op != "input":
            rows.append(_font("not checked: an input failed", 9, MUTED))
        if self.detail == "min":
            return rows
        notes = []
        if self.detail == "full":
            notes.append(head.name)
        elif item.repeat is not None:
            if self.graph.scopes[item.repeat].named:
                notes.append(item.repeat.rsplit(".", 1)[-1])
        elif head.named:
            notes.append(head.name.rsplit(".", 1)[-1])
        if item.repeat is not None:
            notes.append(self.params_text(self.scope_params[item.repeat], " in all"))
        else:
            notes.append(self.params_text(sum(self.graph.owned_param_count(n) for n in item.nodes)))
        notes += [f"tied to {owner}" for owner in self._tied_owners(item.nodes)]
        rows.append(_font(esc(" · ".join(n for n in notes if n)), 9, MUTED) if any(notes)
                    else "")
        return rows

    def followers(self, item: Item) -> str:
        """The fused shape-preserving ops after a layer, each in its family's colour."""
        parts = []
        for node in item.nodes[1:1 + MAX_FOLLOWERS]:
            op, attrs = op_text(node, self.detail == "full")
            text = esc(op + (f" {attrs}" if attrs and self.detail != "min" else ""))
            parts.append(_font(text, color=style(family(node.op))[1]))
        hidden = len(item.nodes) - 1 - MAX_FOLLOWERS
        if hidden > 0:
            parts.append(f"… {hidden} more")
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

    def folded(self, item: Item) -> Html:
        scope = self.graph.scopes[item.id]
        rows = [f"<B>{esc(_scope_title(self.graph, item.id))}</B>"]
        if self.detail != "min":
            layers = (f"{len(item.nodes)} layers" if scope.kind != "repeat" else
                      f"{len(item.nodes) // max(scope.count, 1)} layers each")
            notes = [item.id, self.params_text(self.scope_params[item.id]), layers]
            rows.append(_font(esc(" · ".join(n for n in notes if n)), 9, MUTED))
        if any(n.error for n in item.nodes):
            rows.append(_font("contains an error", 10, ERROR_TEXT))
        return _table(rows)

    def run(self, item: Item) -> Html:
        counts: dict[str, int] = {}
        for n in item.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        kinds = ", ".join(f"{op} ×{c}" if c > 1 else op for op, c in counts.items())
        rows = [f"<B>{len(item.nodes)} layers</B>", _font(esc(kinds), 10)]
        if self.detail != "min":
            params = self.params_text(sum(self.graph.owned_param_count(n) for n in item.nodes))
            notes = [f"{item.nodes[0].name} … {item.nodes[-1].name}", params]
            rows.append(_font(esc(" · ".join(n for n in notes if n)), 9, MUTED))
        return _table(rows)

    @staticmethod
    def tooltip(item: Item) -> str:
        """Every IR layer a box stands for, by name (shown on hover in SVG viewers)."""
        lines = []
        for n in item.nodes[:MAX_TOOLTIP_LINES]:
            op, attrs = op_text(n, full=True)
            lines.append(clip(f"{n.name}: {op}{' ' + attrs if attrs else ''} → "
                              f"{shape_text(n.type)}", 2 * MAX_LABEL_CHARS))
        if len(item.nodes) > MAX_TOOLTIP_LINES:
            lines.append(f"… and {len(item.nodes) - MAX_TOOLTIP_LINES} more")
        return "\n".join(lines)

    @staticmethod
    def edge(t: TensorType | None, port: str = "", shape: bool = True) -> str:
        """`  (B, 8, 128)`, or for an extra result `  h_n (B, 1, 128)` (`  h_n` alone
        when the shape is not written)."""
        parts = [port] if port else []
        if shape:
            parts.append(shape_text(t))
        return "  " + clip(" ".join(parts))

    # -- clusters, title, legend, footer ---------------------------------------------------

    def cluster(self, path: str) -> Html:
        """`Stage` over `layer2 · 526k params`: the block, then its instance name and size."""
        scope = self.graph.scopes[path]
        local = path.rsplit(".", 1)[-1]
        notes = []
        if self.detail == "full" or scope.named:
            notes.append(path if self.detail == "full" else local)
        notes.append(self.params_text(self.scope_params[path],
                                      " in all" if scope.kind == "repeat" else ""))
        rows = [f"<B>{esc(_scope_title(self.graph, path))}</B>"]
        if any(notes):
            rows.append(_font(esc(" · ".join(n for n in notes if n)), 9, MUTED))
        return _table(rows, align="LEFT")

    def title(self) -> Html:
        graph = self.graph
        total = sum(math.prod(p.spec.shape) for p in graph.params.values() if p.spec.trainable)
        facts = [f"{total:,} parameters"] if self.detail != "min" else []
        if self.view.depth is not None:
            facts.append(f"blocks folded from depth {self.view.depth}")
        head = f'<FONT POINT-SIZE="16"><B>{esc(graph.name)}</B></FONT>'
        if facts:
            head += _font("   " + esc(" · ".join(facts)), 10, MUTED)
        return _table([head, self._legend()], align="LEFT")

    def _legend(self) -> str:
        """A chip per op family drawn, plus folded blocks, residual edges and errors."""
        families: list[str] = []
        folded = error = False
        for item in self.view.items.values():
            folded = folded or item.kind in ("folded", "run")
            for node in item.nodes if item.kind == "layer" else ():
                if family(node.op) not in families:
                    families.append(family(node.op))
                error = error or bool(node.error)
        order = [*FAMILY_STYLES, "other"]
        chips = [style(f) for f in sorted(families, key=order.index)]
        if folded:
            chips.append((FOLDED_FILL, FOLDED_LINE, "folded block"))
        if error:
            chips.append((ERROR_FILL, ERROR_LINE, "error"))
        cells = [f'<TD BGCOLOR="{fill}" COLOR="{line}" BORDER="1" STYLE="rounded">'
                 f'{_font(esc(name), 9)}</TD>' for fill, line, name in chips]
        if any(e.skip for e in self.view.edges):
            cells.append(f'<TD>{_font("<B>→</B> residual", 9, SKIP_EDGE)}</TD>')
        if not cells:
            return ""
        return ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="4" CELLPADDING="2"><TR>'
                + "".join(cells) + "</TR></TABLE>")

    @staticmethod
    def train(train) -> Html:
        """The footer: the train section's loss, optimizer, schedule, epochs and batch."""
        return Html(_font("<BR/>".join(_train_lines(train)), 10, "#555555"))
