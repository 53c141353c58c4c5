"""What an editor asks about a spec, answered from one `analyze` of its text.

Pure functions over an `Analysis` and 1-based (line, column) positions in characters, so
they are tested without a language server; `server.py` converts to and from the protocol.
Nothing here runs a model: shapes, parameter counts and MACs come from the IR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nnspec.diagnostics import Span, SpecError
from nnspec.frontend import Analysis, Symbol
from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node, Scope
from nnspec.ir.values import show
from nnspec.summary import node_macs
from nnspec.syntax.tokens import Token, tokens

TRAIN_CHOICES = {"loss": "LOSSES", "optimizer": "OPTIMIZERS", "schedule": "SCHEDULES",
                 "metrics": "METRICS"}


@dataclass(frozen=True)
class Completion:
    label: str
    kind: Literal["op", "block", "fn", "value", "argument", "setting"]
    detail: str = ""
    insert: str | None = None  # text to insert when it is not the label


def contains(span: Span | None, line: int, col: int) -> bool:
    if span is None:
        return False
    return (span.line, span.col) <= (line, col) < (span.end_line, span.end_col) or \
        (span.line, span.col) == (line, col)


def _size(span: Span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_col - span.col if span.end_line == span.line
            else span.end_col)


# ---- hover ---------------------------------------------------------------------------------


def hover(analysis: Analysis, line: int, col: int) -> str | None:
    """Markdown for the thing under the cursor: a value's or layer's shape, parameters and
    MACs (from the first model that uses it), and an op's documentation."""
    word = _word_at(analysis, line, col)
    parts = []
    node_text = _node_hover(analysis, line, col, word)
    if node_text:
        parts.append(node_text)
    if word is not None and word.kind == "name" and ops.lookup(word.text) is not None:
        parts.append(op_doc(word.text))
    return "\n\n---\n\n".join(parts) or None


def op_doc(name: str) -> str:
    opdef = ops.lookup(name)
    usage = ", ".join(a.name if a.default is ops.REQUIRED else f"{a.name} = {show(a.default)}"
                      for a in opdef.attrs)
    alias = f" (alias: {', '.join(opdef.aliases)})" if opdef.aliases else ""
    lines = [f"**{opdef.name}**{alias}: {opdef.doc}", "", f"`{opdef.name}({usage})`", "",
             f"input `{opdef.inputs_doc}` → output `{opdef.outputs_doc}`"]
    for attr in opdef.attrs:
        if attr.doc:
            lines.append(f"- `{attr.name}`: {attr.doc}")
    return "\n".join(lines)


def _node_hover(analysis: Analysis, line: int, col: int, word: Token | None) -> str | None:
    symbol = _symbol_at(analysis, line, col)
    if symbol is not None and symbol.kind == "param":
        return _param_hover(analysis, symbol)
    for graph in analysis.graphs.values():
        if symbol is not None and symbol.kind in ("value", "input"):
            node = _value_node(graph, analysis, symbol)
        else:
            node = _innermost_node(graph, line, col)
        if node is not None:
            return describe_node(graph, node, word.text if word is not None else None)
        scope = _innermost_scope(graph, line, col)
        if scope is not None:
            return describe_scope(graph, scope)
    return None


def _param_hover(analysis: Analysis, symbol: Symbol) -> str:
    """A model's hyperparameter with its value, a block's with the values it was used with."""
    values: list[str] = []
    for graph in analysis.graphs.values():
        if graph.name == symbol.parent and symbol.name in graph.hyper:
            values.append(f"{show(graph.hyper[symbol.name])} in model `{graph.name}`")
        for scope in graph.scopes.values():
            bound = dict(scope.params)
            if scope.label == symbol.parent and symbol.name in bound:
                values.append(f"{show(bound[symbol.name])} in `{scope.path}`")
    shown = values[:8] + ([f"... ({len(values) - 8} more)"] if len(values) > 8 else [])
    lines = [f"parameter `{symbol.name}` of `{symbol.parent}`"]
    lines += [f"- = {v}" for v in shown]
    return "\n".join(lines)


def describe_scope(graph: Graph, scope: Scope) -> str:
    inside = [n for n in graph.nodes if n.scope == scope.path
              or n.scope.startswith(scope.path + ".")]
    params = sum(graph.owned_param_count(n) for n in inside)
    what = f"repeat × {scope.count}" if scope.kind == "repeat" else f"{scope.kind} `{scope.label}`"
    lines = [f"{what} → **{inside[-1].type if inside and inside[-1].type else '?'}**", "",
             f"`{scope.path}` in model `{graph.name}`", f"layers: {len(inside):,}"]
    if params:
        lines.append(f"parameters: {params:,}")
    return "  \n".join(lines)


def _innermost_scope(graph: Graph, line: int, col: int) -> Scope | None:
    found = [s for s in graph.scopes.values() if contains(s.span, line, col)]
    return min(found, key=lambda s: _size(s.span)) if found else None


def describe_node(graph: Graph, node: Node, name: str | None = None) -> str:
    shape = str(node.type) if node.type is not None else "(not built: see its error)"
    title = f"`{name}`" if name and name != node.op else f"`{node.op}`"
    lines = [f"{title} → **{shape}**", "", f"layer `{node.name}` in model `{graph.name}`"]
    params = sum(p for p in _param_counts(graph, node))
    if params:
        shared = any(graph.params[f].owner != node.name for f in node.params.values())
        lines.append(f"parameters: {params:,}" + (" (shared with another layer)" if shared
                                                  else ""))
    macs = node_macs(graph, node)
    if macs:
        lines.append(f"MACs per sample: {macs:,}" if isinstance(macs, int)
                     else f"MACs per sample: {macs}")
    uses = sum(1 for n in graph.nodes if n.span == node.span and n.op == node.op)
    if uses > 1:
        lines.append(f"this text makes {uses} layers (a block or repeat used {uses} times)")
    return "  \n".join(lines)


def _param_counts(graph: Graph, node: Node):
    for full in node.params.values():
        spec = graph.params[full].spec
        if spec.trainable:
            count = 1
            for d in spec.shape:
                count *= d
            yield count


def _innermost_node(graph: Graph, line: int, col: int) -> Node | None:
    best = None
    for node in graph.nodes:
        if node.op == "scalar" or not contains(node.span, line, col):
            continue
        if best is None or _size(node.span) < _size(best.span):
            best = node
    return best


def _value_node(graph: Graph, analysis: Analysis, symbol: Symbol) -> Node | None:
    """The node a named value or input stands for: the last node its statement made (in
    the first block instance that made any)."""
    if symbol.kind == "input":
        for node in graph.nodes:
            if node.op == "input" and node.span is not None and contains(symbol.extent,
                                                                           node.span.line,
                                                                           node.span.col):
                return node
    last = None
    for node in graph.nodes:
        if node.span is not None and contains(symbol.extent, node.span.line, node.span.col):
            if last is not None and node.scope != last.scope and last.scope:
                break
            last = node
    return last


# ---- go to definition ----------------------------------------------------------------------


def definition(analysis: Analysis, line: int, col: int) -> Span | None:
    """Where the name under the cursor is defined: a block, fn, model or constant, or a
    value, input, parameter or label of the definition the cursor is in."""
    word = _word_at(analysis, line, col)
    if word is None or word.kind != "name":
        return None
    owner = _owner_at(analysis, line, col)
    local = [s for s in analysis.symbols if s.name == word.text and s.parent == owner
             and s.parent is not None]
    before = [s for s in local if (s.span.line, s.span.col) <= (line, col)]
    if before:
        return before[-1].span
    if local:
        return local[0].span
    top = [s for s in analysis.symbols if s.name == word.text and s.parent is None]
    return top[0].span if top else None


def _owner_at(analysis: Analysis, line: int, col: int) -> str | None:
    for s in analysis.symbols:
        if s.parent is None and s.kind in ("model", "block", "fn") and contains(s.extent, line,
                                                                                  col):
            return s.name
    return None


def _symbol_at(analysis: Analysis, line: int, col: int) -> Symbol | None:
    """The symbol whose own name the cursor is on, or that a name under the cursor means."""
    target = definition(analysis, line, col)
    if target is None:
        return None
    return next((s for s in analysis.symbols if s.span == target), None)


# ---- completion ----------------------------------------------------------------------------


def completions(analysis: Analysis, text: str, line: int, col: int) -> list[Completion]:
    """Op names, the file's blocks and fns, names in scope; inside an op's parentheses its
    arguments; after a train setting its choices."""
    before = _line_text(text, line)[:col - 1]
    setting = before.split()
    if setting and setting[0] in TRAIN_CHOICES and _in_train(analysis, line):
        table = getattr(ops, TRAIN_CHOICES[setting[0]])
        return [Completion(name, "setting") for name in sorted(table)]
    if setting and setting[0] == "data" and _in_train(analysis, line):
        from nnspec.training.datasets import DATASETS

        return [Completion(name, "setting", info.summary) for name, info in DATASETS.items()]
    items = []
    callee = _open_call(text, line, col)
    if callee is not None and ops.lookup(callee) is not None:
        for attr in ops.lookup(callee).attrs:
            default = "" if attr.default is ops.REQUIRED else f" (default {show(attr.default)})"
            items.append(Completion(f"{attr.name} =", "argument", attr.doc + default,
                                    f"{attr.name} = "))
    for name, opdef in sorted(ops.OPS.items()):
        items.append(Completion(name, "op", opdef.doc))
    owner = _owner_at(analysis, line, col)
    for s in analysis.symbols:
        if s.parent is None and s.kind in ("block", "fn"):
            items.append(Completion(s.name, s.kind, f"{s.kind} defined at line {s.span.line}"))
        elif s.parent is None and s.kind == "const" or s.parent == owner and owner is not None \
                and s.kind in ("param", "input", "value", "label"):
            items.append(Completion(s.name, "value", s.kind))
    return items


def _in_train(analysis: Analysis, line: int) -> bool:
    program = analysis.program
    return program is not None and any(t.span.line <= line <= t.span.end_line
                                       for t in program.trains)


def _open_call(text: str, line: int, col: int) -> str | None:
    """The name before the innermost `(` still open at the cursor."""
    try:
        toks = tokens(text)
    except SpecError:  # a half-typed file may not even lex: no call then
        return None
    stack: list[str | None] = []
    previous: Token | None = None
    for tok in toks:
        if (tok.span.line, tok.span.col) >= (line, col):
            break
        if tok.text in ("(", "["):
            stack.append(previous.text if tok.text == "(" and previous is not None
                         and previous.kind == "name" else None)
        elif tok.text in (")", "]") and stack:
            stack.pop()
        if tok.kind not in ("newline", "comment"):
            previous = tok
    return stack[-1] if stack else None


# ---- words ---------------------------------------------------------------------------------


def _line_text(text: str, line: int) -> str:
    lines = text.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _word_at(analysis: Analysis, line: int, col: int) -> Token | None:
    if analysis.program is None:
        return None
    source = analysis.program.source
    for tok in tokens(source.text, source.path):  # it parsed, so it lexes
        if tok.span.line == line and tok.span.col <= col <= tok.span.end_col \
                and tok.kind in ("name", "keyword", "dtype"):
            return tok
    return None
