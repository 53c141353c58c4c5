"""Evaluating definitions' bodies: statements and expressions to values (numbers, tensors,
layers); applying a layer, which expands blocks, repeats and fns into nodes of a graph with
hierarchical names, is the other half of the `Evaluator`, in application.py.

Hyperparameters are evaluated here (they may be arithmetic on other hyperparameters), so
the evaluator is also the type checker: each layer's shape rule runs as its node is made.
Errors become diagnostics and evaluation goes on with `POISON`, so one run reports every
independent error and never cascades one mistake into ten.

Each `Frame` knows the graph its nodes go to (see frames.py); ops become nodes in nodes.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nnspec.diagnostics import Diagnostic, DiagnosticError, Note, Span
from nnspec.ir import ops
from nnspec.ir.application import Application, as_inputs
from nnspec.ir.arithmetic import BUILTIN_FUNCS, call_builtin, combine
from nnspec.ir.definitions import find_recursion, index_definitions
from nnspec.ir.estimate import LayerFloor
from nnspec.ir.frames import Frame, constant_frame
from nnspec.ir.graph_builder import MAX_LAYERS
from nnspec.ir.indexing import (
    SPLITS,
    check_split_target,
    declare_param,
    pick,
    split_call,
    subscript,
    subscript_item,
)
from nnspec.ir.nodes import apply_op
from nnspec.ir.suggest import unknown_name_hint
from nnspec.ir.values import POISON, Layer, Tensor, Tensors, describe, source_text
from nnspec.syntax import ast

_TENSOR_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow", "<": "lt",
               "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne", "@": "matmul"}


class Evaluator(Application):
    """A program's definitions and constants, and the diagnostics of evaluating them."""

    def __init__(self, program: ast.Program, max_layers: int = MAX_LAYERS):
        self.program = program
        self.max_layers = max_layers
        self.defs, self.diagnostics = index_definitions(program)
        self.consts: dict[str, Any] = {}
        self.call_stack: list[tuple[str, Span]] = []
        self.input_counts: dict[str, int] = {}  # block name -> its inputs (its arity)
        self.bodies: dict[int, tuple[list, list]] = {}  # id(definition) -> see body_of
        self.rules: dict[tuple, list] = {}  # shape rules' results, for every graph built
        self.def_layers: dict[str, Layer] = {}  # a block's or fn's name as a value
        self.op_layers: dict[str, Layer] = {}  # an op's name called (see eval_Call)
        frame = constant_frame()
        for item in program.consts:
            value = self.guard(lambda item=item: self.eval_value(item.value, frame))
            self.consts[item.name] = value
            frame.vars[item.name] = value
        self.recursive, problems = find_recursion(self.defs, self.consts)
        self.diagnostics += problems
        self.floor = LayerFloor(self.defs, self.consts, self.recursive)

    # ---- diagnostics --------------------------------------------------------------------

    def error(self, code, message, span, hint=None, notes=()):
        self.report(Diagnostic(code, message, span, hint, "error", tuple(notes)))

    def report(self, diagnostic: Diagnostic):
        """Record an error; inside blocks and fns, note the chain of uses that led there."""
        uses = tuple(Note(site, f"in `{name}`, used here") for name, site in
                     reversed(self.call_stack))
        if uses:
            diagnostic = replace(diagnostic, notes=diagnostic.notes + uses)
        self.diagnostics.append(diagnostic)

    def guard(self, thunk, default=POISON):
        try:
            return thunk()
        except DiagnosticError as err:
            self.report(err.diagnostic)
            return default

    # ---- statements ---------------------------------------------------------------------

    def statement(self, stmt, frame: Frame):
        """One statement of a body; errors are reported and leave `POISON` (the try blocks
        are `guard` written out: two Python frames less per level of nested blocks)."""
        if isinstance(stmt, ast.Assign):
            try:
                value = _EVAL[type(stmt.value)](self, stmt.value, frame)
            except DiagnosticError as err:
                self.report(err.diagnostic)
                value = POISON
            if isinstance(value, Layer) and value.module is None and value.kind in ("op", "seq"):
                value = replace(value, module=frame.qualify(stmt.name))
            frame.vars[stmt.name] = value
            return value
        if isinstance(stmt, ast.Unpack):
            return self.unpack(stmt, frame)
        if isinstance(stmt, ast.ParamDecl):
            value = self.guard(lambda: self.learned_param(stmt, frame))
            frame.vars[stmt.name] = value
            return value
        if isinstance(stmt, ast.Output):
            results = []
            for v in stmt.values:
                try:
                    results.append(self.tensor(_EVAL[type(v)](self, v, frame), v, frame))
                except DiagnosticError as err:
                    self.report(err.diagnostic)
                    results.append(POISON)
            if len(results) == 1:
                return results[0]
            if any(r is POISON for r in results):
                return POISON
            return Tensors(tuple(results), stmt.span)
        if isinstance(stmt, ast.Input):
            self.error("E114", "`input` belongs at the top of a model or block", stmt.span)
        return POISON

    def unpack(self, stmt: ast.Unpack, frame: Frame):
        value = self.guard(lambda: self.eval(stmt.value, frame))
        for name in stmt.names:
            frame.vars[name] = POISON
        if value is POISON:
            return POISON
        if not isinstance(value, Tensors):
            self.error("E116", f"`{', '.join(stmt.names)} = ...` needs {len(stmt.names)} "
                       f"tensors, but `{source_text(stmt.value.span)}` gives "
                       f"{describe(value)}", stmt.value.span)
            return POISON
        if len(value.items) != len(stmt.names):
            self.error("E116", f"{len(stmt.names)} names for {len(value.items)} tensors",
                       stmt.span, f"write {len(value.items)} names before the `=`")
            return POISON
        for name, tensor in zip(stmt.names, value.items):
            frame.vars[name] = tensor
        return value

    # ---- expressions --------------------------------------------------------------------

    def eval(self, expr, frame: Frame):
        return _EVAL[type(expr)](self, expr, frame)

    def eval_value(self, expr, frame: Frame):
        """A plain value (a number, string, list...): E134 for a tensor or a layer. (Nested
        expressions call `value(eval(...))` directly: one Python frame less per level.)"""
        return self.value(self.eval(expr, frame), expr)

    def eval_Number(self, expr, frame):
        return expr.value

    def eval_String(self, expr, frame):
        return expr.value

    def eval_Constant(self, expr, frame):
        return expr.value

    def eval_ListExpr(self, expr, frame):
        return [self.value(self.eval(item, frame), item) for item in expr.items]

    def lookup_optional(self, name: str, frame: Frame, span: Span | None = None):
        """What `name` means here, or None; an op's layer is placed at `span`."""
        if name in frame.vars:
            return frame.vars[name]
        if name in self.consts:
            return self.consts[name]
        if name in self.defs:
            layer = self.def_layers.get(name)
            if layer is None:  # one per block or fn: layers are immutable values
                definition = self.defs[name]
                if definition.kind == "model":
                    return None
                layer = self.def_layers[name] = Layer(definition.kind, name,
                                                      definition.name_span)
            return layer
        opdef = ops.lookup(name)
        if opdef is not None:
            return Layer("op", opdef.name, span)
        return None

    def eval_Name(self, expr, frame):
        value = frame.vars.get(expr.id)
        if value is not None and value.__class__ is not Layer:
            return value  # what `resolve` gives a variable of the body, found in one step
        return self.resolve(expr.id, expr.span, frame)

    def resolve(self, name: str, span: Span, frame: Frame):
        """The value of the name `name` written at `span` (a variable, a constant, a block,
        a fn or an op); E100 or E101 when it has none here."""
        value = self.lookup_optional(name, frame, span)
        if value is None:
            if name in self.defs:
                raise DiagnosticError("E101", f"`{name}` is a model; only blocks and fns can be "
                                      "used inside another definition", span,
                                      f"declare it as `block {name}`")
            raise DiagnosticError("E100", f"unknown name `{name}`", span,
                                  unknown_name_hint(name, [*frame.vars, *self.consts,
                                                           *self.defs, *SPLITS]))
        if isinstance(value, Layer) and value.span is None:
            value = replace(value, span=span)
        return value

    def eval_Unary(self, expr, frame):
        operand = self.eval(expr.operand, frame)
        if operand is POISON:
            return POISON
        if expr.op == "not":
            return not self.value(operand, expr.operand)
        if isinstance(operand, (Tensor, Layer)):
            return apply_op("neg", [self.tensor(operand, expr.operand, frame)], {}, expr.span,
                            frame, self.report)
        value = self.value(operand, expr.operand)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DiagnosticError("E131", f"cannot negate {describe(value)}", expr.span)
        return -value

    def eval_BinOp(self, expr, frame):
        if expr.op in ("and", "or"):
            left = self.value(self.eval(expr.left, frame), expr.left)
            if expr.op == "and":
                return left and self.value(self.eval(expr.right, frame), expr.right)
            return left or self.value(self.eval(expr.right, frame), expr.right)
        chain = ast.operator_chain(expr)
        value = self.eval(chain[0].left, frame)
        for link in chain:
            value = self.binary(link, value, frame)
        return value

    def binary(self, expr: ast.BinOp, left, frame: Frame):
        """`left op right` for one link of an operator chain, `left` already evaluated."""
        right = self.eval(expr.right, frame)
        if left is POISON or right is POISON:
            return POISON
        if expr.op == "@" and not any(isinstance(v, (Tensor, Layer)) for v in (left, right)):
            raise DiagnosticError("E131", "`@` multiplies tensors (a matrix product), not "
                                  f"{describe(left)} and {describe(right)}", expr.span,
                                  "use `*` for numbers")
        if isinstance(left, (Tensor, Layer)) or isinstance(right, (Tensor, Layer)):
            if expr.op == "%":
                raise DiagnosticError("E131", "`%` works on numbers, not tensors", expr.span)
            a = self.tensor_or_scalar(left, expr.left, frame)
            b = self.tensor_or_scalar(right, expr.right, frame)
            if a is POISON or b is POISON:
                return POISON
            return apply_op(_TENSOR_OPS[expr.op], [a, b], {}, expr.span, frame, self.report)
        return combine(expr.op, left, right, expr.span)

    def eval_Subscript(self, expr, frame):
        value = self.eval(expr.value, frame)
        if value is POISON:
            return POISON
        if (isinstance(value, Tensors) and len(expr.items) == 1  # `chunk(x, 3)[0]`
                and not isinstance(expr.items[0], ast.Slice)):
            return pick(value, expr, self.value(self.eval(expr.items[0], frame), expr.items[0]))
        tensor = self.tensor(value, expr.value, frame)
        items = [subscript_item(item, lambda e: self.eval(e, frame)) for item in expr.items]
        return subscript(tensor, items, expr.span, frame, self.report)

    def split_call(self, expr: ast.Call, frame: Frame):
        """`chunk(x, 3, dim = -1)` / `split(x, 64)`: several tensors (see indexing.py)."""
        first = self.eval(expr.args[0], frame) if expr.args else None
        check_split_target(expr, first)
        tensor = self.tensor(first, expr.args[0], frame)
        return split_call(expr, tensor, lambda e: self.eval_value(e, frame), frame,
                          self.report)

    def learned_param(self, stmt: ast.ParamDecl, frame: Frame) -> Tensor:
        self.claim(stmt.name, frame, stmt.name_span)
        return declare_param(stmt, lambda e: self.eval_value(e, frame), frame, self.report)

    def eval_Conditional(self, expr, frame):
        cond = self.value(self.eval(expr.cond, frame), expr.cond)
        if not isinstance(cond, bool):
            raise DiagnosticError("E133", f"a condition must be true or false, got "
                                  f"{describe(cond)}", expr.cond.span)
        return self.eval(expr.then if cond else expr.otherwise, frame)

    def eval_Pipeline(self, expr, frame):
        current = self.eval(expr.head, frame)
        if current is POISON:
            return POISON
        if isinstance(current, Layer) and not self.nullary(current):
            stages = [self.stage_layer(s, frame) for s in expr.stages]
            if any(s is POISON for s in stages):
                return POISON
            return Layer("seq", "pipeline", expr.span, parts=(current, *stages))
        if current.__class__ is not Tensor:
            current = self.tensor(current, expr.head, frame)
        for stage in expr.stages:
            layer = self.stage_layer(stage, frame)
            if layer is POISON or current is POISON:
                return POISON
            current = self.apply(layer, as_inputs(current), frame, stage.label, stage.span)
        return current

    def stage_layer(self, stage: ast.Stage, frame: Frame):
        if isinstance(stage.layer, ast.Call) and stage.layer.func != "repeat":
            value = self.eval_Call(stage.layer, frame, piped=True)
        else:
            value = self.eval(stage.layer, frame)
        if value is POISON or isinstance(value, Layer):
            return value
        hint = None
        if isinstance(value, Tensor):
            hint = "to combine two values use an operator (`a + b`) or `concat(a, b)`"
        raise DiagnosticError("E150", "`->` needs a layer on its right, but "
                              f"`{source_text(stage.layer.span)}` is {describe(value)}",
                              stage.layer.span, hint)

    def eval_Call(self, expr, frame, piped: bool = False):
        """A call; `piped` (right of `->`) keeps it a layer while it can take one more tensor,
        so `x -> attention(memory, 8)` gets `x` first."""
        if expr.func == "repeat":
            return self.repeat_layer(expr, frame)
        if expr.func == "seq":
            return self.seq_layer(expr, frame)
        shadowed = expr.func in frame.vars or expr.func in self.consts or expr.func in self.defs
        if expr.func in SPLITS and not shadowed:
            return self.split_call(expr, frame)
        builtin = expr.func in BUILTIN_FUNCS and not shadowed
        if builtin and ops.lookup(expr.func) is None:
            return self.builtin_call(expr, [self.eval(a, frame) for a in expr.args])
        opdef = None if shadowed else ops.lookup(expr.func)
        if opdef is not None:  # what `resolve` gives, less the span the call replaces below
            callee = self.op_layers.get(opdef.name) or self.op_layers.setdefault(
                opdef.name, Layer("op", opdef.name, None))
        else:
            callee = self.resolve(expr.func, expr.func_span, frame)
        if not isinstance(callee, Layer):
            raise DiagnosticError("E151", f"`{expr.func}` is {describe(callee)}, not "
                                  "something that can be called", expr.func_span)
        args, arg_nodes = [], []
        poisoned, values_only = False, True  # values_only: no tensor or layer among them
        for node in expr.args:
            value = _EVAL[type(node)](self, node, frame)
            if isinstance(value, Tensors):
                args.extend(value.items)
                arg_nodes.extend([node] * len(value.items))
                poisoned = poisoned or any(v is POISON for v in value.items)
                values_only = False
            else:
                args.append(value)
                arg_nodes.append(node)
                poisoned = poisoned or value is POISON
                values_only = values_only and not isinstance(value, (Tensor, Layer))
        kwargs = ()
        if expr.kwargs:
            kwargs = tuple([(k.name, self.eval(k.value, frame), k.span) for k in expr.kwargs])
            poisoned = poisoned or any(v is POISON for _, v, _ in kwargs)
        if poisoned:
            return POISON
        if builtin and args and not kwargs and values_only:
            return self.builtin_call(expr, args)  # `max(a, b)` on numbers; `max(x)` reduces x
        low, most = self.arity(callee)
        tensors = []
        if not values_only:  # (most calls, `dense(64)`, skip this)
            for i, (a, node) in enumerate(zip(args, arg_nodes)):
                if isinstance(a, Layer) and self.nullary(a) and (most is None or i < most):
                    args[i] = self.tensor(a, node, frame)  # `concat(positions(1, d), p)`
            while args and isinstance(args[0], Tensor):
                tensors.append(args.pop(0))
            for a, node in zip(args, arg_nodes[len(tensors):]):
                if isinstance(a, Tensor):
                    raise DiagnosticError("E152", "tensor arguments must come before the "
                                          "other arguments", node.span)
        if callee.args or callee.kwargs:
            if args or kwargs:
                raise DiagnosticError("E153", f"`{expr.func}` already has its arguments; pass "
                                      "only tensors to it", expr.span)
            layer = callee
        else:
            layer = Layer(callee.kind, callee.name, expr.span, tuple(args),  # not replace():
                          tuple([a.span for a in arg_nodes[len(tensors):]]),  # 4x the cost
                          kwargs, callee.parts, callee.count, callee.module, callee.numbered)
        room = piped and (most is None or len(tensors) < most)
        if tensors and len(tensors) >= low and not room:
            return self.apply(layer, tensors, frame, None, expr.span)
        if tensors:  # fewer tensors than it takes: `a -> Merge(b)` pipes `a` in first
            layer = replace(layer, args=(*tensors, *layer.args))
        return layer

    def builtin_call(self, expr: ast.Call, args: list):
        if POISON in args:
            return POISON
        values = [self.value(a, node) for a, node in zip(args, expr.args)]
        return call_builtin(expr.func, values, [a.span for a in expr.args], expr.span)

    def arity(self, layer: Layer) -> tuple[int, int | None]:
        if layer.kind == "op":
            return ops.lookup(layer.name).arity
        if layer.kind == "block":
            n = self.input_counts.get(layer.name)
            if n is None:
                n = self.input_counts[layer.name] = sum(
                    isinstance(s, ast.Input) for s in self.defs[layer.name].body)
            return (n, n)
        return (1, None)

    def nullary(self, value) -> bool:
        return isinstance(value, Layer) and value.kind == "op" and self.arity(value)[0] == 0

    def repeat_layer(self, expr: ast.Call, frame: Frame):
        if len(expr.args) != 2 or expr.kwargs:
            raise DiagnosticError("E144", "repeat takes a count and a layer: "
                                  "`repeat(4, Block(d))`", expr.span)
        count = self.eval_value(expr.args[0], frame)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise DiagnosticError("E145", f"repeat needs a count of 0 or more, got "
                                  f"{describe(count)}", expr.args[0].span,
                                  "repeat(0, ...) is the identity, as an empty nn.Sequential")
        inner = self.eval(expr.args[1], frame)
        if inner is POISON:
            return POISON
        if not isinstance(inner, Layer):
            raise DiagnosticError("E146", f"repeat needs a layer to repeat, got "
                                  f"{describe(inner)}", expr.args[1].span)
        return Layer("repeat", "repeat", expr.span, parts=(inner,), count=count)

    def seq_layer(self, expr: ast.Call, frame: Frame):
        """`seq(a, b -> c, repeat(2, d))`: the layers in order, named 0, 1, 2... as
        nn.Sequential names them. Chains and repeats among the arguments are spliced in (one
        number per layer); a block, an op or another `seq` is one numbered entry."""
        if expr.kwargs or not expr.args:
            raise DiagnosticError("E149", "seq takes layers: `seq(conv2d(64, 3), batchnorm, "
                                  "relu)`", expr.span)
        entries: list[Layer] = []
        for arg in expr.args:
            value = self.eval(arg, frame)
            if value is POISON:
                return POISON
            if not isinstance(value, Layer) or self.nullary(value):
                raise DiagnosticError("E149", f"seq takes layers, but `{source_text(arg.span)}` "
                                      f"is {describe(value)}", arg.span)
            if len(entries) + _entry_count(value) > self.max_layers:
                raise DiagnosticError("E401", f"this seq would hold more than "
                                      f"{self.max_layers:,} layers", arg.span,
                                      "build a smaller configuration (`--set`)")
            entries += _spliced(value)
        return Layer("seq", "seq", expr.span, parts=tuple(entries), numbered=True)

    # ---- coercions ----------------------------------------------------------------------

    def value(self, value, expr):
        """A plain (non-tensor) value, e.g. a hyperparameter or an op argument."""
        if isinstance(value, Tensor):
            raise DiagnosticError("E134", f"`{source_text(expr.span)}` is a tensor; a number is "
                                  "needed here", expr.span)
        if isinstance(value, Layer):
            raise DiagnosticError("E134", f"`{source_text(expr.span)}` is a layer; a number is "
                                  "needed here", expr.span)
        return value

    def tensor(self, value, expr, frame: Frame):
        """A tensor operand; nullary layers such as `positions(ctx, d)` are applied here."""
        if value is POISON or isinstance(value, Tensor):
            return value
        if self.nullary(value):
            return self.apply(value, [], frame, None, expr.span)
        if isinstance(value, Tensors):
            names = ", ".join(f"t{i}" for i in range(len(value.items)))
            raise DiagnosticError("E135", f"one tensor is needed here, but "
                                  f"`{source_text(expr.span)}` gives {describe(value)}",
                                  expr.span, f"unpack them first: `{names} = ...`")
        if isinstance(value, Layer):
            raise DiagnosticError("E135", f"`{source_text(expr.span)}` is a layer, not a value",
                                  expr.span,
                                  f"apply it to an input: `x -> {source_text(expr.span)}`")
        raise DiagnosticError("E135", f"a tensor is needed here, got {describe(value)}",
                              expr.span)

    def tensor_or_scalar(self, value, expr, frame: Frame):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return apply_op("scalar", [], {"value": float(value)}, expr.span, frame,
                            self.report)
        return self.tensor(value, expr, frame)


def _spliced(layer: Layer) -> list[Layer]:
    """The entries a layer gives a `seq`: a chain's and a repeat's layers one by one."""
    if layer.kind == "seq" and not layer.numbered:
        return [entry for part in layer.parts for entry in _spliced(part)]
    if layer.kind == "repeat":
        return _spliced(layer.parts[0]) * layer.count
    return [layer]


def _entry_count(layer: Layer) -> int:
    if layer.kind == "seq" and not layer.numbered:
        return sum(_entry_count(part) for part in layer.parts)
    if layer.kind == "repeat":
        return _entry_count(layer.parts[0]) * layer.count
    return 1


_EVAL = {getattr(ast, name[5:]): method for name, method in vars(Evaluator).items()
         if name.startswith("eval_") and hasattr(ast, name[5:])}  # ast type -> its method
