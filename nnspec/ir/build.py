"""AST -> IR graphs: the front end's builder, and which model of a file is meant.

`Builder(program)` indexes the definitions and evaluates the constants; `build_model` turns
one model into a shape-checked `Graph` (blocks, repeats and fns expanded). Every error goes
to `builder.diagnostics` and the build goes on, so the graph is partial where errors were.
The train section is built with the same builder (`nnspec.ir.train.build_train`).
"""

from __future__ import annotations

from typing import Any

from nnspec.diagnostics import Diagnostic, DiagnosticError, SpecError, did_you_mean
from nnspec.ir.attrs import bind_params
from nnspec.ir.evaluate import Evaluator
from nnspec.ir.frames import Frame, snake
from nnspec.ir.graph import Graph, Node, output_names
from nnspec.ir.graph_builder import GraphBuilder
from nnspec.ir.types import TensorType
from nnspec.ir.values import POISON, Tensor, Tensors, describe
from nnspec.syntax import ast

__all__ = ["Builder", "pick_model", "snake"]


class Builder(Evaluator):
    """A program's models as graphs, with every diagnostic found on the way."""

    def build_model(self, name: str, overrides: dict[str, Any] | None = None) -> Graph:
        definition = self.defs[name]
        frame = Frame("", {}, "model", GraphBuilder(name, self.max_layers, self.rules))
        hyper = self.guard(lambda: bind_params(definition, [], dict(overrides or {}), frame.vars,
                                               lambda expr: self.eval_value(expr, frame),
                                               definition.name_span), {})
        inputs, outputs, given = [], [], []
        for stmt in definition.body:
            if isinstance(stmt, ast.Input):
                tensor = self.guard(lambda stmt=stmt: self.model_input(stmt, frame))
                frame.vars[stmt.name] = tensor
                if isinstance(tensor, Tensor):
                    inputs.append(tensor.node)
            else:
                result = self.statement(stmt, frame)
                if isinstance(stmt, ast.Output):
                    outputs = list(result.items) if isinstance(result, Tensors) else [result]
                    given = [v.id if isinstance(v, ast.Name) else None for v in stmt.values]
        if not inputs and not any(isinstance(s, ast.Input) for s in definition.body):
            self.error("E111", f"model `{name}` declares no input", definition.name_span,
                       "add a line like `input x: [64]`")
        if not outputs:
            self.error("E110", f"model `{name}` has no output", definition.name_span,
                       "end the body with the expression that gives the model's output")
        out_nodes, out_given = [], []
        for value, given_name in zip(outputs, given):
            if isinstance(value, Tensor):
                out_nodes.append(value.node)
                out_given.append(given_name)
            elif value is not POISON:
                self.error("E112", f"a model's output must be a tensor, got "
                           f"{describe(value)}", definition.body[-1].span)
        return frame.graph.finish(inputs, out_nodes, hyper,
                                  output_names(out_given, inputs))

    def model_input(self, stmt: ast.Input, frame: Frame) -> Tensor:
        if stmt.type is None:
            raise DiagnosticError("E113", f"the model input `{stmt.name}` needs a shape",
                                  stmt.span, f"write `input {stmt.name}: [64]`")
        dims = []
        for d in stmt.type.dims:
            if isinstance(d, ast.Name) and self.lookup_optional(d.id, frame) in (None, d.id):
                dims.append(d.id)  # a symbolic dim, a name in the body (`reshape(x, T, 4)`)
                frame.vars[d.id] = d.id
            else:
                dims.append(self.dim_value(d, frame))
        dtype = "int64" if stmt.type.dtype == "int" else "float32"
        if stmt.name in frame.graph.node_names:
            raise DiagnosticError("E122", f"`{stmt.name}` is declared twice", stmt.span)
        node = Node(stmt.name, "input", (), {}, TensorType(tuple(dims), dtype), stmt.span,
                    named=True)
        frame.graph.add_node(node)
        frame.used.add(stmt.name)
        return Tensor(node.name, node.type, stmt.span, f"the input `{stmt.name}`")

    def dim_value(self, expr: ast.Expr, frame: Frame):
        value = self.eval_value(expr, frame)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DiagnosticError("E130", f"a dim must be a positive integer, got "
                                  f"{describe(value)}", expr.span)
        return value


def pick_model(program: ast.Program, name: str | None) -> ast.Definition:
    """The model `name`, else the one a train section trains, else the file's last."""
    models = program.definitions("model")
    if name is not None:
        for m in models:
            if m.name == name:
                return m
        raise SpecError([Diagnostic("E102", f"no model named `{name}` in {program.source.path}",
                                    None, did_you_mean(name, [m.name for m in models]))])
    if not models:
        raise SpecError([Diagnostic("E103", f"{program.source.path} defines no model", None,
                                    "add `model Name { input x: [..] ... }`")])
    by_name = {m.name: m for m in reversed(models)}  # the first of a duplicated name
    trained = [t.model for t in program.trains if t.model in by_name]
    return by_name[trained[0]] if trained else models[-1]
