"""One graph under construction: its nodes in order, unique names, scopes, and parameters
(created once per module path; a shared layer reuses them, a tied one points at another's).

A model and its loss are each built into a `GraphBuilder` of their own; `finish` gives the
`Graph`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nnspec.diagnostics import DiagnosticError, Note, Span
from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node, Param, Scope

MAX_LAYERS = 100_000  # nodes per graph; `--max-layers` / `analyze(max_layers=...)` change it


def param_name(module: str, local: str) -> str:
    """A parameter's full name; a learned tensor of its own (`param cls: ...`) has an empty
    local name and is named like its node."""
    return f"{module}.{local}" if local else module


class GraphBuilder:
    def __init__(self, name: str, max_layers: int = MAX_LAYERS, rules: dict | None = None):
        """`rules` remembers shape rules' results (see nodes.py); graphs built from one
        program share it."""
        self.name = name
        self.rules: dict[tuple, list] = {} if rules is None else rules
        self.max_layers = max_layers
        self.nodes: list[Node] = []
        self.result_nodes = 0  # nodes of op `result`: `finish` leaves out the unread ones
        self.node_names: set[str] = set()
        self.params: dict[str, Param] = {}
        self.modules: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (op, local->full)
        self.scopes: dict[str, Scope] = {}

    def finish(self, inputs: list[str], outputs: list[str], hyper: dict[str, Any],
               names: list[str] | None = None) -> Graph:
        """The graph; `names` are the outputs' names (made up when not given). The `result`
        nodes nothing reads (an lstm's unused output when only its final states are wanted)
        compute nothing, so they are left out."""
        nodes = list(self.nodes)
        if self.result_nodes:
            read = {i for n in nodes for i in n.inputs} | set(outputs)
            nodes = [n for n in nodes if n.op != "result" or n.name in read]
        return Graph(self.name, nodes, self.params, inputs, outputs, self.scopes, hyper,
                     names or [])

    # ---- nodes and scopes ---------------------------------------------------------------

    def add_node(self, node: Node):
        if len(self.nodes) >= self.max_layers:
            raise DiagnosticError("E401", f"this model builds more than {self.max_layers:,} "
                                  f"layers; the limit is {self.max_layers:,}", node.span,
                                  "build a smaller configuration (`--set`), or raise the limit "
                                  "with `--max-layers`")
        self.nodes.append(node)
        self.node_names.add(node.name)
        if node.op == "result":
            self.result_nodes += 1

    def check_repeat(self, count: int, per_copy: int, span: Span):
        """Refuse a `repeat` whose copies would pass the layer budget, before building them."""
        total = count * max(per_copy, 1)
        if len(self.nodes) + total - per_copy > self.max_layers:
            raise DiagnosticError("E401", f"repeat({count:,}, ...) would build {total:,} "
                                  f"layers; the limit is {self.max_layers:,}", span,
                                  "repeat fewer times, or raise the limit with `--max-layers`")

    def check_room(self, layers: int, what: str, span: Span):
        """Refuse `what`, which builds at least `layers` layers, before building it when the
        budget has no room for them."""
        if len(self.nodes) + layers > self.max_layers:
            raise DiagnosticError("E401", f"{what} would build at least {layers:,} layers; "
                                  f"the limit is {self.max_layers:,}", span,
                                  "build a smaller configuration (`--set`), or raise the limit "
                                  "with `--max-layers`")

    def unique_name(self, name: str) -> str:
        """`name_1`, `name_2`, ...: the first no node has (for a name that one has)."""
        i = 1
        while f"{name}_{i}" in self.node_names:
            i += 1
        return f"{name}_{i}"

    def add_scope(self, scope: Scope):
        self.scopes[scope.path] = scope

    def bind_scope(self, path: str, inputs: tuple[tuple[str, str], ...],
                   params: tuple[tuple[str, Any], ...]):
        """Record what a block or fn instance was given, once its arguments are bound."""
        scope = self.scopes.get(path)
        if scope is not None:  # made anew: dataclasses.replace costs four times as much
            self.scopes[path] = Scope(scope.path, scope.kind, scope.label, scope.span,
                                      scope.count, inputs, params, scope.named)

    def scope_of(self, path: str) -> str:
        """The innermost scope that holds a node made under `path`."""
        while path and path not in self.scopes:
            path = path.rsplit(".", 1)[0] if "." in path else ""
        return path

    # ---- parameters ---------------------------------------------------------------------

    def register_params(self, opdef: ops.OpDef, specs: dict[str, ops.ParamSpec],
                        module: str, node_name: str, span: Span,
                        tie: str | None = None) -> dict[str, str]:
        """The full names of the parameters `specs` of `opdef` applied as `module` (local ->
        full); the first application creates them, later ones must see the same shapes.
        `tie` is the module path whose weight this layer's weight is."""
        if module in self.modules:
            op, existing = self.modules[module]
            for local, spec in specs.items():
                full = existing.get(local)
                if op != opdef.name or full is None or self.params[full].spec.shape != spec.shape:
                    have = list(self.params[full].spec.shape) if full else None
                    owner = self.params[full].owner if full else None
                    first = next((n.span for n in self.nodes if n.name == owner), None)
                    notes = (Note(first, "first applied here"),) if first else ()
                    raise DiagnosticError("E170", f"the shared layer `{module}` was built with "
                                          f"{local} {have}; here it would need "
                                          f"{list(spec.shape)}", span,
                                          "a shared layer must see inputs of one shape", notes)
            return dict(existing)
        mapping = {}
        for local, spec in specs.items():
            full = f"{module}.{local}" if local else module  # param_name, inlined
            if local == "weight" and tie is not None:
                full = self.tied_weight(tie, spec, span)
                owner = self.params[full]
                self.params[full] = replace(owner, tied_from=owner.tied_from + (node_name,))
            else:
                self.params[full] = Param(full, spec, node_name)
            mapping[local] = full
        self.modules[module] = (opdef.name, mapping)
        return mapping

    def tied_weight(self, module: str, spec: ops.ParamSpec, span: Span) -> str:
        entry = self.modules.get(module)
        if entry is None or "weight" not in entry[1]:
            raise DiagnosticError("E171", f"`{module}` has no weight to tie to (it must be "
                                  "applied before the layer that ties to it)", span)
        full = entry[1]["weight"]
        have = self.params[full].spec.shape
        if have != spec.shape:
            raise DiagnosticError("E172", f"cannot tie to `{full}`: it is {list(have)} but this "
                                  f"layer's weight is {list(spec.shape)}", span)
        return full
