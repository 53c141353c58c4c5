"""Making one op node: its arguments bound and checked, its shape rule run, its
parameters registered (the shape rule's complaint gets the layer's span and where each
input came from)."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from nnspec.diagnostics import Diagnostic, DiagnosticError, Note, Span
from nnspec.ir import ops
from nnspec.ir.attrs import argument_spans, bind_attrs
from nnspec.ir.frames import Frame
from nnspec.ir.graph import Node
from nnspec.ir.values import Layer, Tensor, Tensors


def apply_op(name: str, tensors: list[Tensor], keywords: dict, span: Span, frame: Frame,
             report: Callable[[Diagnostic], None], label: str | None = None,
             layer: Layer | None = None, values: list | None = None,
             named: bool = True) -> Tensor | Tensors:
    """The op `name` applied to `tensors` as a node of `frame`'s graph, named `label` (or
    after the layer's module, or made up). A shape error is reported and gives a node
    without a type, so the graph still shows where it happened."""
    opdef = ops.lookup(name)
    try:  # where each argument was written matters only for a message: found on failure
        if not values and not keywords and opdef.defaults is not None:
            attrs = ops.Attrs(opdef.defaults)  # what bind_attrs gives, without its checks
        else:
            attrs = bind_attrs(opdef.name, opdef.attrs, list(values) if values else [],
                               keywords, _NO_SPANS, span, opdef.positional)
    except DiagnosticError:
        if layer is None or not (layer.arg_spans or layer.kwargs):
            raise
        spans = argument_spans(opdef.attrs, layer.arg_spans,
                               ((k, s) for k, _, s in layer.kwargs))
        bind_attrs(opdef.name, opdef.attrs, list(values or []), keywords, spans, span,
                   opdef.positional)
        raise
    low, high = opdef.arity
    count = len(tensors)
    if count < low or (high is not None and count > high):
        want = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
        raise DiagnosticError("E148", f"`{opdef.name}` takes {want} input(s) but gets "
                              f"{count}", span)
    for attr in opdef.tensor_attrs:  # masks become inputs after the positional ones
        if attrs[attr] is not None:
            tensors = [*tensors, attrs[attr]]
            attrs[attr] = len(tensors) - 1
    graph = frame.graph
    module = layer.module if layer else None
    if label is not None:
        local = label
    elif module is not None:
        local, named = module.rsplit(".", 1)[-1], True
    else:
        local, named = frame.fresh(opdef.name), False
    frame.used.add(local)
    node_name = f"{frame.path}.{local}" if frame.path else local  # frame.qualify, inlined
    if node_name in graph.node_names:
        node_name = graph.unique_name(node_name)
    attrs_out = attrs
    if opdef.layer_attrs and any(isinstance(attrs[k], Layer) for k in opdef.layer_attrs):
        attrs_out = ops.Attrs((k, v) for k, v in attrs.items() if not isinstance(v, Layer))
    input_names = tuple(map(_NODE, tensors))
    in_types = list(map(_TYPE, tensors))
    scope = graph.scope_of(frame.path)
    if not all(in_types):  # a None (types are true): `None in` calls each type's __eq__
        graph.add_node(Node(node_name, opdef.name, input_names, attrs_out, None, span,
                            scope=scope, named=named))
        return _results(opdef, None, attrs, Tensor(node_name, None, span), frame)
    known = None if opdef.params is None else _known_rules(opdef, in_types, attrs, graph.rules)
    try:
        if known is None:
            out_type = opdef.infer(in_types, attrs)
        elif known[0] is None:
            out_type = known[0] = opdef.infer(in_types, attrs)
        else:
            out_type = known[0]
    except ops.ShapeError as err:
        notes = tuple(Note(t.span, f"the input comes from {t.origin}, which gives {t.type}")
                      for t in tensors if t.span is not None)
        report(Diagnostic(err.code, err.message, span, err.hint, notes=notes))
        graph.add_node(Node(node_name, opdef.name, input_names, attrs_out, None, span,
                            scope=scope, error=err.message, named=named))
        return _results(opdef, None, attrs, Tensor(node_name, None, span), frame)
    params = {}
    module_path = None
    if opdef.params is not None:
        if frame.kind == "fn":
            raise DiagnosticError("E156", f"`{opdef.name}` has weights, which a `fn` cannot "
                                  "hold", span, "use a `block` for layers with weights")
        module_path = module or node_name
        tie = attrs.get("tie")
        if known[1] is None:
            known[1] = opdef.params(in_types, attrs)
        params = graph.register_params(opdef, known[1], module_path, node_name, span,
                                       tie.module if tie else None)
    graph.add_node(Node(node_name, opdef.name, input_names, attrs_out, out_type, span,
                        module_path, params, scope, named=named))
    made = Tensor(node_name, out_type, span)
    if opdef.results is None:
        return made
    return _results(opdef, in_types, attrs, made, frame)


_NODE, _TYPE = attrgetter("node"), attrgetter("type")
_NO_SPANS: dict = {}  # binding that fails is redone with the spans (see apply_op)


def _known_rules(opdef: ops.OpDef, in_types: list, attrs: ops.Attrs, rules: dict) -> list:
    """[output type, parameter shapes] of a layer with weights, each None until its rule
    has run once for these input types and attributes: a network applies the same layer to
    the same shapes again and again (a 10,000-layer chain has three), and the rules are
    pure. (Other ops' rules cost less than the lookup.)"""
    key = [opdef.name, *attrs.values()]  # in schema order, so no names are needed
    for t in in_types:  # a type's own fields: its dataclass __hash__ and __eq__ cost more
        key += (t.shape, t.dtype, t.batched)
    try:
        key = tuple(key)
        known = rules.get(key)
    except TypeError:  # an attribute no key can hold (a layer given a list)
        return [None, None]
    if known is None:
        known = rules[key] = [None, None]
    return known


def _results(opdef: ops.OpDef, in_types, attrs, made: Tensor, frame: Frame) -> Tensor | Tensors:
    """`made` itself, or for an op giving several tensors one `result` node per tensor
    (`lstm_h_n`), each reading `made`, whose value is then the tuple of them."""
    results = opdef.results(in_types, attrs) if opdef.results is not None else ()
    if not results:
        return made
    graph = frame.graph
    picked = []
    for index, (name, result_type) in enumerate(results):
        node_name = graph.unique_name(f"{made.node}_{name}") if (
            f"{made.node}_{name}" in graph.node_names) else f"{made.node}_{name}"
        graph.add_node(Node(node_name, "result", (made.node,),
                            ops.Attrs(index=index, name=name), result_type, made.span,
                            scope=graph.scope_of(frame.path)))
        picked.append(Tensor(node_name, result_type, made.span, f"the {name} of {made.origin}"))
    return Tensors(tuple(picked), made.span)
