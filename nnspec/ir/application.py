"""Applying layers to tensors: an op becomes a node; a chain, a `seq`, a `repeat`, a block
or a fn is expanded into the nodes of its parts, each under a hierarchical name
(`h.3.attn`) with a scope recording what it was given. A block's inputs are checked
against its `input x: [T, d]` lines, binding the names (`T`) their first use fixes.

`Application` is the half of the `Evaluator` (evaluate.py) that applies layers; it calls
back into the evaluating half for statements and argument values.
"""

from __future__ import annotations

from dataclasses import replace

from nnspec.diagnostics import DiagnosticError, Note, Span
from nnspec.ir.attrs import bind_params
from nnspec.ir.frames import Frame, snake
from nnspec.ir.graph import Scope
from nnspec.ir.nodes import apply_op
from nnspec.ir.values import POISON, Layer, Tensor, Tensors, source_text
from nnspec.syntax import ast

MAX_NESTING = 64  # blocks and fns inside one another; deeper is a mistake, not a network


class Application:
    """Layers applied to tensors, for the `Evaluator` (which provides `eval`, `value`,
    `statement`, `report`, `guard`, the definitions and the layer floor)."""

    def apply(self, layer: Layer, inputs: list, frame: Frame, label: str | None, span: Span,
              named: bool = True):
        """`layer` applied to `inputs`; `label` names its node or scope (`as enc`, or made
        up by the caller when `named` is false: a repeat's `3`)."""
        if layer.args:
            tensors = list(inputs) + [a for a in layer.args if isinstance(a, Tensor)]
            values = [a for a in layer.args if not isinstance(a, Tensor)]
        else:  # most applications: `-> relu`, a block's own layers
            tensors, values = inputs, []
        for t in tensors:
            if t is POISON:
                return POISON
        if label is not None:
            self.claim(label, frame, span)
        if layer.kind == "op":
            keywords = {k: v for k, v, _ in layer.kwargs} if layer.kwargs else {}
            out = apply_op(layer.name, tensors, keywords, span, frame, self.report, label, layer,
                           values, named)
            if label is not None and layer.module is None:
                frame.vars[label] = replace(layer, module=frame.qualify(label))
            return out
        if layer.kind == "seq" and layer.numbered:
            return self.apply_numbered(layer, tensors[0], frame, label, span)
        if layer.kind == "seq":
            path = frame.qualify(label) if label else None
            inner = Frame(path, frame.vars, frame.kind, frame.graph) if path else frame
            current = tensors[0]
            for part in layer.parts:
                if current is POISON:
                    return POISON
                current = self.apply(part, as_inputs(current), inner, None, part.span or span)
            return current
        named = label is not None and named
        if layer.kind == "repeat":
            return self.apply_repeat(layer, tensors, frame, label, named, span)
        return self.apply_definition(layer, tensors, values, frame, label, named, span)

    def claim(self, local: str, frame: Frame, span: Span):
        clash = frame.clash(local)
        if clash == local:
            raise DiagnosticError("E123", f"the name `{local}` is already used here", span,
                                  "pick another name after `as`")
        if clash is not None:
            raise DiagnosticError("E124", f"the name `{local}` clashes with `{clash}` used "
                                  "here: one layer's name cannot also hold other layers",
                                  span, "pick another name after `as`")
        frame.take(local)

    def apply_numbered(self, layer: Layer, current, frame: Frame, label: str | None, span):
        """A `seq`'s layers named 0, 1, 2... under its label; without one, in the enclosing
        scope itself (a block whose body is a `seq` is an nn.Sequential)."""
        inner = frame
        if label:
            inner = Frame(frame.qualify(label), frame.vars, frame.kind, frame.graph)
            frame.graph.add_scope(Scope(inner.path, "block", "seq", span, named=True))
        for index, part in enumerate(layer.parts):
            if current is POISON:
                return POISON
            current = self.apply(part, as_inputs(current), inner, str(index), part.span or span)
        return current

    def apply_repeat(self, layer: Layer, tensors, frame: Frame, label: str | None, named: bool,
                     span):
        current = tensors[0] if len(tensors) == 1 else Tensors(tuple(tensors), span)
        if layer.count == 0:
            return current  # the identity, as an empty nn.Sequential
        local = label or frame.fresh("repeat")
        frame.used.add(local)
        path = frame.qualify(local)
        frame.graph.add_scope(Scope(path, "repeat", "repeat", span, layer.count, named=named))
        inner = frame.inner(path, "repeat")
        graph = frame.graph
        graph.check_repeat(layer.count, max(1, self.floor.of_layer(layer.parts[0])), span)
        for i in range(layer.count):
            if current is POISON:
                return POISON
            if i and isinstance(current, Tensor) and current.type is None:
                break  # after a reported error the copies cannot check a shape: one is drawn
            before = len(graph.nodes)
            current = self.apply(layer.parts[0], as_inputs(current), inner, str(i), span,
                                 named=False)
            if i == 0:
                graph.check_repeat(layer.count, len(graph.nodes) - before, span)
        return current

    def apply_definition(self, layer: Layer, tensors, values, frame: Frame, label: str | None,
                         named: bool, span):
        if layer.name in self.recursive:
            return POISON  # E155 was reported with the definitions
        definition = self.defs[layer.name]
        if definition.kind == "fn" and not tensors:
            raise DiagnosticError("E154", f"`{layer.name}` needs a tensor argument", span)
        self.call_stack.append((layer.name, span))
        try:
            if len(self.call_stack) > MAX_NESTING:
                raise DiagnosticError("E157", f"blocks and fns are nested {len(self.call_stack)} "
                                      f"deep here; the limit is {MAX_NESTING}", span,
                                      "merge some levels, or use `repeat` for a stack of "
                                      "identical layers")
            local = label or frame.fresh(snake(layer.name) if definition.kind == "block"
                                         else layer.name)
            frame.used.add(local)
            path = frame.qualify(local)
            frame.graph.add_scope(Scope(path, definition.kind, layer.name, span, named=named))
            inner = frame.inner(path, definition.kind)
            if definition.kind == "block":
                return self.run_body(definition, layer, tensors, values, inner, span)
            return self.run_body(definition, layer, [], list(tensors) + list(values), inner, span)
        finally:
            self.call_stack.pop()

    def run_body(self, definition: ast.Definition, layer: Layer, tensors, values, frame: Frame,
                 span):
        keywords = {k: v for k, v, _ in layer.kwargs}
        spans = {k: s for k, _, s in layer.kwargs}
        inputs, statements = self.body_of(definition)
        if definition.kind == "block" and len(tensors) != len(inputs):
            raise DiagnosticError("E147", f"block `{definition.name}` takes {len(inputs)} input(s) "
                                  f"but gets {len(tensors)}", span,
                                  notes=(Note(definition.name_span, "defined here"),))
        bound = bind_params(definition, values, keywords, frame.vars,
                            lambda expr: self.eval_value(expr, frame), span, spans)
        frame.graph.check_room(self.floor.of_definition(definition, bound),
                               f"`{definition.name}`", span)
        for stmt, tensor in zip(inputs, tensors):
            self.bind_input(stmt, tensor, frame, span)
        names = [(s.name, t.node) for s, t in zip(inputs, tensors)]
        names += [(k, v.node) for k, v in bound.items() if isinstance(v, Tensor)]
        values = tuple((k, v) for k, v in bound.items() if not isinstance(v, (Tensor, Layer)))
        frame.graph.bind_scope(frame.path, tuple(names), values)
        result = POISON
        outputs = 0
        for stmt in statements:
            value = self.statement(stmt, frame)
            if isinstance(stmt, ast.Output):
                result, outputs = value, outputs + 1
        if outputs == 0:
            raise DiagnosticError("E110", f"`{definition.name}` has no output", span,
                                  "end its body with the expression to return",
                                  (Note(definition.name_span, "defined here"),))
        return result

    def body_of(self, definition: ast.Definition) -> tuple[list, list]:
        """A block's or fn's `input` lines and its other statements, split once per
        definition, not at each of its uses."""
        split = self.bodies.get(id(definition))
        if split is None:
            split = self.bodies[id(definition)] = (
                [s for s in definition.body if isinstance(s, ast.Input)],
                [s for s in definition.body if not isinstance(s, ast.Input)])
        return split

    def bind_input(self, stmt: ast.Input, tensor: Tensor, frame: Frame, span: Span):
        """Match a block's `input x: [T, d]` against the incoming shape, binding new names."""
        frame.vars[stmt.name] = tensor
        if stmt.type is None or tensor.type is None:
            return
        actual = tensor.type
        declared = stmt.type

        def mismatch(code: str, shown: str) -> DiagnosticError:
            """Made only when the input does not fit (every block call checks its inputs)."""
            notes = (Note(stmt.span, f"`{stmt.name}` is declared as "
                                     f"{source_text(declared.span)} here"),
                     Note(tensor.span, f"the input comes from {tensor.origin}, which gives "
                                       f"{actual}"))
            return DiagnosticError(code, f"`{stmt.name}` expects {shown} but gets {actual}",
                                   span, notes=notes)

        if (declared.dtype == "int") != (actual.dtype == "int64"):
            raise mismatch("E303", source_text(declared.span))
        if len(declared.dims) != actual.rank:
            raise mismatch("E302", source_text(declared.span))
        for dim_expr, dim in zip(declared.dims, actual.shape):
            if isinstance(dim_expr, ast.Name) and self.lookup_optional(dim_expr.id, frame) is None:
                frame.vars[dim_expr.id] = dim
                continue
            expected = self.value(self.eval(dim_expr, frame), dim_expr)
            if expected != dim:
                raise mismatch("E301", f"{source_text(declared.span)} = "
                                       f"{self.show_dims(declared, frame)}")

    def show_dims(self, declared: ast.TensorTypeExpr, frame: Frame) -> str:
        shown = []
        for d in declared.dims:
            value = self.guard(lambda d=d: self.eval_value(d, frame), None)
            shown.append(str(value) if value is not None else source_text(d.span))
        return "[" + ", ".join(shown) + "]"


def as_inputs(value) -> list:
    """What a layer after `value` receives: each of several outputs (a block's `a, b`, an op's
    pieces) as its own input, like a pipeline stage."""
    return list(value.items) if isinstance(value, Tensors) else [value]
