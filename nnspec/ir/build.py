"""AST -> IR graph: evaluates a model's body, expands blocks, repeats and fns, and checks
every shape on the way.

Hyperparameters are evaluated here (they may be arithmetic on other hyperparameters), so
the builder is also the type checker: each layer's shape rule runs as the node is made.
Errors become diagnostics and the builder goes on with a poisoned value, so one run
reports every independent error and never cascades one mistake into ten.

Values during evaluation are numbers, strings, lists, `Tensor`s (a node's output) and
`Layer`s (something that can be applied to tensors: an op with its arguments, a block, a
fn, a repeat or a composition). Layers are first-class: `f = dense(64)` then `a -> f` and
`b -> f` share one set of weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from nnspec.diagnostics import Diagnostic, DiagnosticError, Note, Span, SpecError, did_you_mean
from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node, Param, Scope
from nnspec.ir.types import TensorType
from nnspec.syntax import ast


@dataclass(frozen=True)
class Tensor:
    node: str
    type: TensorType | None  # None: its layer failed; errors were already reported
    span: Span | None
    origin: str  # how to name the producer in messages, e.g. "`dense(64)`"


@dataclass(frozen=True)
class Layer:
    kind: str  # op | block | fn | repeat | seq
    name: str  # op or definition name
    span: Span
    args: tuple = ()  # evaluated positional arguments (tensors first, then values)
    arg_spans: tuple = ()  # spans of the non-tensor positional arguments
    kwargs: tuple = ()  # ((name, value, span), ...)
    parts: tuple[Layer, ...] = ()  # seq parts, or the repeated layer
    count: int = 1
    module: str | None = None  # set when bound to a name: applications share weights


class _Poison:
    """The value of anything whose evaluation already reported an error."""

    def __repr__(self):
        return "<error>"


POISON = _Poison()
_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow", "<": "lt", "<=": "le",
           ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_BUILTIN_FUNCS = {"min": min, "max": max, "int": int, "float": float, "round": round}
_MAX_INT_BITS = 4096  # `9 ^ 9 ^ 9` would take the compiler forever; no size needs more bits


def _divide(left, right):
    """`/` of two integers that divide exactly stays an integer (`d / heads`)."""
    if isinstance(left, int) and isinstance(right, int) and left % right == 0:
        return left // right
    return left / right


_ARITHMETIC = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": _divide,
    "%": lambda a, b: a % b, "^": lambda a, b: a ** b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _text(span: Span | None) -> str:
    """The spec text a span covers (first line only), for messages."""
    if span is None:
        return "?"
    line = span.source.line(span.line)
    end = span.end_col if span.end_line == span.line else len(line) + 1
    return line[span.col - 1:end - 1].strip() or "?"


def _describe_value(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor {value.type}" if value.type else "a tensor"
    if isinstance(value, Layer):
        return f"the layer `{value.name}`"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else type(value).__name__


@dataclass
class _Frame:
    """One evaluation scope: a model, a block instance or a fn call."""

    path: str  # module prefix ("" at top level)
    vars: dict[str, Any]
    kind: str  # model | block | fn
    counters: dict[str, int] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def qualify(self, local: str) -> str:
        return f"{self.path}.{local}" if self.path else local

    def fresh(self, base: str) -> str:
        while True:
            self.counters[base] = self.counters.get(base, 0) + 1
            local = f"{base}_{self.counters[base]}"
            if local not in self.used:
                return local


class Builder:
    def __init__(self, program: ast.Program):
        self.program = program
        self.defs: dict[str, ast.Definition] = {}
        self.diagnostics: list[Diagnostic] = []
        self.consts: dict[str, Any] = {}
        self.nodes: list[Node] = []
        self.node_names: set[str] = set()
        self.params: dict[str, Param] = {}
        self.modules: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (op, local->full)
        self.scopes: dict[str, Scope] = {}
        self.call_stack: list[tuple[str, Span]] = []
        self._index_definitions()

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

    def _index_definitions(self):
        for item in self.program.items:
            if isinstance(item, ast.Definition):
                self._check_inputs_first(item)
                if item.name in self.defs:
                    first = self.defs[item.name]
                    self.error("E120", f"`{item.name}` is defined twice", item.name_span,
                               notes=[Note(first.name_span, "first defined here")])
                    continue
                if ops.lookup(item.name) is not None:
                    self.error("E121", f"`{item.name}` is the name of a built-in op",
                               item.name_span, "pick another name")
                    continue
                self.defs[item.name] = item
                self.check_unused_expressions(item)
        frame = _Frame("", {}, "const")
        for item in self.program.consts:
            value = self.guard(lambda item=item: self.value(self.eval(item.value, frame), item.value))
            self.consts[item.name] = value
            frame.vars[item.name] = value

    def _check_inputs_first(self, definition: ast.Definition):
        """`input`s open a body; one after other statements is a misplaced line."""
        started = False
        for stmt in definition.body:
            if not isinstance(stmt, ast.Input):
                started = True
            elif started:
                self.error("E114", "`input` belongs at the top of a model or block, before "
                           "other statements", stmt.span, "move this line up")

    def check_unused_expressions(self, definition: ast.Definition):
        """Only a body's last expression is its output; an earlier bare expression would be
        silently dropped (often a continuation line the parser read as a new statement)."""
        outputs = [stmt for stmt in definition.body if isinstance(stmt, ast.Output)]
        for stmt in outputs[:-1]:
            self.error("E115", "this expression is computed but never used: only the last "
                       f"expression of `{definition.name}` is its output", stmt.span,
                       "assign it (`name = ...`), or join it to the line above if it "
                       "continues it")

    def guard(self, thunk, default=POISON):
        try:
            return thunk()
        except DiagnosticError as err:
            self.report(err.diagnostic)
            return default

    # ---- models -------------------------------------------------------------------------

    def build_model(self, name: str, overrides: dict[str, Any] | None = None) -> Graph:
        definition = self.defs[name]
        frame = _Frame("", {}, "model")
        self.nodes, self.node_names, self.params = [], set(), {}
        self.modules, self.scopes = {}, {}
        hyper = self.guard(lambda: self.bind_params(definition, [], dict(overrides or {}), frame,
                                                    definition.name_span), {})
        inputs, outputs = [], []
        for stmt in definition.body:
            if isinstance(stmt, ast.Input):
                tensor = self.guard(lambda stmt=stmt: self.model_input(stmt, frame))
                frame.vars[stmt.name] = tensor
                if isinstance(tensor, Tensor):
                    inputs.append(tensor.node)
            else:
                result = self.statement(stmt, frame)
                if isinstance(stmt, ast.Output):
                    outputs = [result]
        if not inputs and not any(isinstance(s, ast.Input) for s in definition.body):
            self.error("E111", f"model `{name}` declares no input", definition.name_span,
                       "add a line like `input x: [64]`")
        if not outputs:
            self.error("E110", f"model `{name}` has no output", definition.name_span,
                       "end the body with the expression that gives the model's output")
        out_names = []
        for value in outputs:
            if isinstance(value, Tensor):
                out_names.append(value.node)
            elif value is not POISON:
                self.error("E112", f"a model's output must be a tensor, got "
                           f"{_describe_value(value)}", definition.body[-1].span)
        graph = Graph(name, self.nodes, self.params, inputs, out_names, self.scopes, hyper)
        return graph

    def model_input(self, stmt: ast.Input, frame: _Frame) -> Tensor:
        if stmt.type is None:
            raise DiagnosticError("E113", f"the model input `{stmt.name}` needs a shape",
                                  stmt.span, f"write `input {stmt.name}: [64]`")
        dims = []
        for d in stmt.type.dims:
            if isinstance(d, ast.Name) and self.lookup_optional(d.id, frame) is None:
                dims.append(d.id)  # a symbolic dim
            else:
                dims.append(self.dim_value(d, frame))
        dtype = "int64" if stmt.type.dtype == "int" else "float32"
        if stmt.name in self.node_names:
            raise DiagnosticError("E122", f"`{stmt.name}` is declared twice", stmt.span)
        node = Node(stmt.name, "input", (), {}, TensorType(tuple(dims), dtype), stmt.span)
        self.add_node(node)
        frame.used.add(stmt.name)
        return Tensor(node.name, node.type, stmt.span, f"the input `{stmt.name}`")

    def dim_value(self, expr: ast.Expr, frame: _Frame):
        value = self.value(self.eval(expr, frame), expr)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DiagnosticError("E130", f"a dim must be a positive integer, got "
                                  f"{_describe_value(value)}", expr.span)
        return value

    # ---- parameters of models, blocks and fns ------------------------------------------

    def bind_params(self, definition: ast.Definition, positional: list, keywords: dict,
                    frame: _Frame, call_span: Span, keyword_spans: dict | None = None) -> dict[str, Any]:
        names = [p.name for p in definition.params]
        if len(positional) > len(names):
            raise DiagnosticError("E140", f"`{definition.name}` takes {len(names)} argument(s) "
                                  f"but got {len(positional)}", call_span,
                                  f"its parameters are: {', '.join(names) or 'none'}")
        for key in keywords:
            if key not in names:
                span = (keyword_spans or {}).get(key, call_span)
                hint = did_you_mean(key, names) or (
                    f"its parameters are: {', '.join(names)}" if names else None)
                raise DiagnosticError("E141", f"`{definition.name}` has no parameter `{key}`",
                                      span, hint)
        bound = {}
        for i, p in enumerate(definition.params):
            if i < len(positional):
                value = positional[i]
                if p.name in keywords:
                    raise DiagnosticError("E142", f"`{p.name}` is given twice", call_span)
            elif p.name in keywords:
                value = keywords[p.name]
            elif p.default is not None:
                value = self.value(self.eval(p.default, frame), p.default)
            else:
                raise DiagnosticError("E143", f"`{definition.name}` needs a value for `{p.name}`",
                                      call_span, f"pass `{p.name} = ...`",
                                      (Note(definition.name_span,
                                            f"`{definition.name}` is defined here"),))
            frame.vars[p.name] = value
            bound[p.name] = value
        return bound

    # ---- statements ---------------------------------------------------------------------

    def statement(self, stmt, frame: _Frame):
        if isinstance(stmt, ast.Assign):
            value = self.guard(lambda: self.eval(stmt.value, frame))
            if isinstance(value, Layer) and value.module is None and value.kind in ("op", "seq"):
                value = replace(value, module=frame.qualify(stmt.name))
            frame.vars[stmt.name] = value
            return value
        if isinstance(stmt, ast.Output):
            return self.guard(lambda: self.tensor(self.eval(stmt.value, frame), stmt.value, frame))
        if isinstance(stmt, ast.Input):
            self.error("E114", "`input` belongs at the top of a model or block", stmt.span)
        return POISON

    # ---- expressions --------------------------------------------------------------------

    def eval(self, expr, frame: _Frame):
        method = getattr(self, f"eval_{type(expr).__name__}")
        return method(expr, frame)

    def eval_Number(self, expr, frame):
        return expr.value

    def eval_String(self, expr, frame):
        return expr.value

    def eval_Constant(self, expr, frame):
        return expr.value

    def eval_ListExpr(self, expr, frame):
        return [self.value(self.eval(item, frame), item) for item in expr.items]

    def lookup_optional(self, name: str, frame: _Frame):
        if name in frame.vars:
            return frame.vars[name]
        if name in self.consts:
            return self.consts[name]
        if name in self.defs:
            definition = self.defs[name]
            if definition.kind == "model":
                return None
            return Layer(definition.kind, name, definition.name_span)
        if ops.lookup(name) is not None:
            return Layer("op", ops.lookup(name).name, None)
        return None

    def eval_Name(self, expr, frame):
        value = self.lookup_optional(expr.id, frame)
        if value is None:
            if expr.id in self.defs:
                raise DiagnosticError("E101", f"`{expr.id}` is a model; only blocks and fns can be "
                                      "used inside another definition", expr.span,
                                      f"declare it as `block {expr.id}`")
            raise DiagnosticError("E100", f"unknown name `{expr.id}`", expr.span,
                                  did_you_mean(expr.id, self.known_names(frame)))
        if isinstance(value, Layer) and value.span is None:
            value = replace(value, span=expr.span)
        return value

    def known_names(self, frame: _Frame):
        return [*frame.vars, *self.consts, *self.defs, *ops.OPS, *ops.ALIASES, "repeat"]

    def eval_Unary(self, expr, frame):
        operand = self.eval(expr.operand, frame)
        if operand is POISON:
            return POISON
        if expr.op == "not":
            return not self.value(operand, expr.operand)
        if isinstance(operand, (Tensor, Layer)):
            return self.apply_op("neg", [self.tensor(operand, expr.operand, frame)], {}, expr.span,
                                 frame)
        value = self.value(operand, expr.operand)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DiagnosticError("E131", f"cannot negate {_describe_value(value)}", expr.span)
        return -value

    def eval_BinOp(self, expr, frame):
        if expr.op in ("and", "or"):
            left = self.value(self.eval(expr.left, frame), expr.left)
            if expr.op == "and":
                return left and self.value(self.eval(expr.right, frame), expr.right)
            return left or self.value(self.eval(expr.right, frame), expr.right)
        left = self.eval(expr.left, frame)
        right = self.eval(expr.right, frame)
        if left is POISON or right is POISON:
            return POISON
        if isinstance(left, (Tensor, Layer)) or isinstance(right, (Tensor, Layer)):
            if expr.op == "%":
                raise DiagnosticError("E131", "`%` works on numbers, not tensors", expr.span)
            a = self.tensor_or_scalar(left, expr.left, frame)
            b = self.tensor_or_scalar(right, expr.right, frame)
            if a is POISON or b is POISON:
                return POISON
            return self.apply_op(_BINOPS[expr.op], [a, b], {}, expr.span, frame)
        return self.arithmetic(expr, left, right)

    def arithmetic(self, expr, left, right):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
        op = expr.op
        if op in ("==", "!="):
            return (left == right) == (op == "==")
        if not numbers:
            if op == "+" and isinstance(left, list) and isinstance(right, list):
                return left + right
            raise DiagnosticError("E131", f"`{op}` cannot combine {_describe_value(left)} and "
                                  f"{_describe_value(right)}", expr.span)
        if op in ("/", "%") and right == 0:
            raise DiagnosticError("E132", "division by zero", expr.span)
        if op == "^" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                and abs(left) > 1 and right * abs(left).bit_length() > _MAX_INT_BITS:
            raise DiagnosticError("E131", f"`{left} ^ {right}` is too large a number", expr.span)
        try:
            result = _ARITHMETIC[op](left, right)
        except ArithmeticError:
            raise DiagnosticError("E131", f"`{_text(expr.span)}` has no finite value",
                                  expr.span) from None
        if isinstance(result, complex):
            raise DiagnosticError("E131", f"`{_text(expr.span)}` is not a real number", expr.span)
        return result

    def eval_Conditional(self, expr, frame):
        cond = self.value(self.eval(expr.cond, frame), expr.cond)
        if not isinstance(cond, bool):
            raise DiagnosticError("E133", f"a condition must be true or false, got "
                                  f"{_describe_value(cond)}", expr.cond.span)
        return self.eval(expr.then if cond else expr.otherwise, frame)

    def eval_Pipeline(self, expr, frame):
        current = self.eval(expr.head, frame)
        if current is POISON:
            return POISON
        if isinstance(current, Layer) and not self.nullary(current):
            stages = [self.stage_layer(s, frame) for s in expr.stages]
            if POISON in stages:
                return POISON
            return Layer("seq", "pipeline", expr.span, parts=(current, *stages))
        current = self.tensor(current, expr.head, frame)
        for stage in expr.stages:
            layer = self.stage_layer(stage, frame)
            if layer is POISON or current is POISON:
                return POISON
            current = self.apply(layer, [current], frame, stage.label, stage.span)
        return current

    def stage_layer(self, stage: ast.Stage, frame: _Frame):
        value = self.eval(stage.layer, frame)
        if value is POISON or isinstance(value, Layer):
            return value
        hint = None
        if isinstance(value, Tensor):
            hint = "to combine two values use an operator (`a + b`) or `concat(a, b)`"
        raise DiagnosticError("E150", f"`->` needs a layer on its right, but `{_text(stage.layer.span)}`"
                              f" is {_describe_value(value)}", stage.layer.span, hint)

    def eval_Call(self, expr, frame):
        if expr.func == "repeat":
            return self.repeat_layer(expr, frame)
        builtin = expr.func in _BUILTIN_FUNCS and not (
            expr.func in frame.vars or expr.func in self.consts or expr.func in self.defs)
        if builtin and ops.lookup(expr.func) is None:
            return self.builtin_call(expr, [self.eval(a, frame) for a in expr.args])
        callee = self.eval_Name(ast.Name(expr.func_span, expr.func), frame)
        if not isinstance(callee, Layer):
            raise DiagnosticError("E151", f"`{expr.func}` is {_describe_value(callee)}, not "
                                  "something that can be called", expr.func_span)
        args = [self.eval(a, frame) for a in expr.args]
        kwargs = tuple((k.name, self.eval(k.value, frame), k.span) for k in expr.kwargs)
        if POISON in args or any(v is POISON for _, v, _ in kwargs):
            return POISON
        if builtin and args and not kwargs and not any(isinstance(a, (Tensor, Layer))
                                                       for a in args):
            return self.builtin_call(expr, args)  # `max(a, b)` on numbers; `max(x)` reduces x
        tensors = []
        while args and isinstance(args[0], Tensor):
            tensors.append(args.pop(0))
        for a, node in zip(args, expr.args[len(tensors):]):
            if isinstance(a, Tensor):
                raise DiagnosticError("E152", "tensor arguments must come before the other "
                                      "arguments", node.span)
        if callee.args or callee.kwargs:
            if args or kwargs:
                raise DiagnosticError("E153", f"`{expr.func}` already has its arguments; pass "
                                      "only tensors to it", expr.span)
            layer = callee
        else:
            layer = replace(callee, span=expr.span, args=tuple(args), kwargs=kwargs,
                            arg_spans=tuple(a.span for a in expr.args[len(tensors):]))
        if tensors and len(tensors) >= self.arity(layer)[0]:
            return self.apply(layer, tensors, frame, None, expr.span)
        if tensors:  # fewer tensors than it takes: `a -> Merge(b)` pipes `a` in first
            layer = replace(layer, args=(*tensors, *layer.args))
        return layer

    def builtin_call(self, expr: ast.Call, args: list):
        if POISON in args:
            return POISON
        values = [self.value(a, node) for a, node in zip(args, expr.args)]
        variadic = expr.func in ("min", "max")
        wanted = "two or more numbers" if variadic else "one number"
        if (len(values) < 2) if variadic else (len(values) != 1):
            raise DiagnosticError("E131", f"`{expr.func}` takes {wanted}, got {len(values)}",
                                  expr.span)
        for value, node in zip(values, expr.args):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DiagnosticError("E131", f"`{expr.func}` takes {wanted}, got "
                                      f"{_describe_value(value)}", node.span)
        try:
            return _BUILTIN_FUNCS[expr.func](*values)
        except (ValueError, ArithmeticError) as err:
            raise DiagnosticError("E131", f"`{expr.func}`: {err}", expr.span) from None

    def arity(self, layer: Layer) -> tuple[int, int | None]:
        if layer.kind == "op":
            return ops.lookup(layer.name).arity
        if layer.kind == "block":
            n = sum(isinstance(s, ast.Input) for s in self.defs[layer.name].body)
            return (n, n)
        return (1, None)

    def nullary(self, value) -> bool:
        return isinstance(value, Layer) and value.kind == "op" and self.arity(value)[0] == 0

    def repeat_layer(self, expr: ast.Call, frame: _Frame):
        if len(expr.args) != 2 or expr.kwargs:
            raise DiagnosticError("E144", "repeat takes a count and a layer: "
                                  "`repeat(4, Block(d))`", expr.span)
        count = self.value(self.eval(expr.args[0], frame), expr.args[0])
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise DiagnosticError("E145", f"repeat needs a positive count, got "
                                  f"{_describe_value(count)}", expr.args[0].span)
        inner = self.eval(expr.args[1], frame)
        if inner is POISON:
            return POISON
        if not isinstance(inner, Layer):
            raise DiagnosticError("E146", f"repeat needs a layer to repeat, got "
                                  f"{_describe_value(inner)}", expr.args[1].span)
        return Layer("repeat", "repeat", expr.span, parts=(inner,), count=count)

    # ---- coercions ----------------------------------------------------------------------

    def value(self, value, expr):
        """A plain (non-tensor) value, e.g. a hyperparameter or an op argument."""
        if isinstance(value, Tensor):
            raise DiagnosticError("E134", f"`{_text(expr.span)}` is a tensor; a number is needed "
                                  "here", expr.span)
        if isinstance(value, Layer):
            raise DiagnosticError("E134", f"`{_text(expr.span)}` is a layer; a number is needed "
                                  "here", expr.span)
        return value

    def tensor(self, value, expr, frame: _Frame):
        """A tensor operand; nullary layers such as `positions(ctx, d)` are applied here."""
        if value is POISON or isinstance(value, Tensor):
            return value
        if self.nullary(value):
            return self.apply(value, [], frame, None, expr.span)
        if isinstance(value, Layer):
            raise DiagnosticError("E135", f"`{_text(expr.span)}` is a layer, not a value",
                                  expr.span, f"apply it to an input: `x -> {_text(expr.span)}`")
        raise DiagnosticError("E135", f"a tensor is needed here, got {_describe_value(value)}",
                              expr.span)

    def tensor_or_scalar(self, value, expr, frame: _Frame):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.apply_op("scalar", [], {"value": float(value)}, expr.span, frame)
        return self.tensor(value, expr, frame)

    # ---- applying layers ----------------------------------------------------------------

    def apply(self, layer: Layer, inputs: list, frame: _Frame | None, label: str | None,
              span: Span):
        tensors = list(inputs) + [a for a in layer.args if isinstance(a, Tensor)]
        values = [a for a in layer.args if not isinstance(a, Tensor)]
        if any(t is POISON for t in tensors):
            return POISON
        if label is not None:
            self.claim(label, frame, span)
        if layer.kind == "op":
            out = self.apply_op(layer.name, tensors, {k: v for k, v, _ in layer.kwargs},
                                span, frame, label, layer, values)
            if label is not None and layer.module is None:
                frame.vars[label] = replace(layer, module=frame.qualify(label))
            return out
        if layer.kind == "seq":
            path = frame.qualify(label) if label else None
            inner = _Frame(path, frame.vars, frame.kind) if path else frame
            current = tensors[0]
            for part in layer.parts:
                if current is POISON:
                    return POISON
                current = self.apply(part, [current], inner, None, part.span or span)
            return current
        if layer.kind == "repeat":
            return self.apply_repeat(layer, tensors, frame, label, span)
        return self.apply_definition(layer, tensors, values, frame, label, span)

    def claim(self, local: str, frame: _Frame, span: Span):
        if local in frame.used:
            raise DiagnosticError("E123", f"the name `{local}` is already used here", span,
                                  "pick another name after `as`")
        frame.used.add(local)

    def apply_repeat(self, layer: Layer, tensors, frame, label, span):
        local = label or frame.fresh("repeat")
        frame.used.add(local)
        path = frame.qualify(local)
        self.scopes[path] = Scope(path, "repeat", "repeat", span, layer.count)
        inner = _Frame(path, {}, "repeat")
        current = tensors[0]
        for i in range(layer.count):
            if current is POISON:
                return POISON
            current = self.apply(layer.parts[0], [current], inner, str(i), span)
        return current

    def apply_definition(self, layer, tensors, values, frame, label, span):
        definition = self.defs[layer.name]
        if definition.kind == "fn" and not tensors:
            raise DiagnosticError("E154", f"`{layer.name}` needs a tensor argument", span)
        self.call_stack.append((layer.name, span))
        try:
            if len(self.call_stack) > 64:
                raise DiagnosticError("E155", f"`{layer.name}` calls itself too deeply "
                                      "(blocks cannot be recursive)", span)
            if definition.kind == "block":
                local = label or frame.fresh(snake(layer.name))
                frame.used.add(local)
                path = frame.qualify(local)
                self.scopes[path] = Scope(path, "block", layer.name, span)
                inner = _Frame(path, {}, "block")
                return self.run_body(definition, layer, tensors, values, inner, span)
            local = label or frame.fresh(layer.name)
            frame.used.add(local)
            path = frame.qualify(local)
            self.scopes[path] = Scope(path, "fn", layer.name, span)
            inner = _Frame(path, {}, "fn")
            positional = list(tensors) + list(values)
            return self.run_body(definition, layer, [], positional, inner, span)
        finally:
            self.call_stack.pop()

    def run_body(self, definition: ast.Definition, layer: Layer, tensors, values, frame, span):
        keywords = {k: v for k, v, _ in layer.kwargs}
        spans = {k: s for k, _, s in layer.kwargs}
        inputs = [s for s in definition.body if isinstance(s, ast.Input)]
        if definition.kind == "block" and len(tensors) != len(inputs):
            raise DiagnosticError("E147", f"block `{definition.name}` takes {len(inputs)} input(s) "
                                  f"but gets {len(tensors)}", span,
                                  notes=(Note(definition.name_span, "defined here"),))
        bound = self.bind_params(definition, values, keywords, frame, span, keyword_spans=spans)
        for stmt, tensor in zip(inputs, tensors):
            self.bind_input(stmt, tensor, frame, span)
        names = [(s.name, t.node) for s, t in zip(inputs, tensors)]
        names += [(k, v.node) for k, v in bound.items() if isinstance(v, Tensor)]
        values = tuple((k, v) for k, v in bound.items() if not isinstance(v, (Tensor, Layer)))
        if frame.path in self.scopes:
            self.scopes[frame.path] = replace(self.scopes[frame.path], inputs=tuple(names),
                                              params=values)
        result = POISON
        outputs = 0
        for stmt in definition.body:
            if isinstance(stmt, ast.Input):
                continue
            value = self.statement(stmt, frame)
            if isinstance(stmt, ast.Output):
                result, outputs = value, outputs + 1
        if outputs == 0:
            raise DiagnosticError("E110", f"`{definition.name}` has no output", span,
                                  "end its body with the expression to return",
                                  (Note(definition.name_span, "defined here"),))
        return result

    def bind_input(self, stmt: ast.Input, tensor: Tensor, frame: _Frame, span: Span):
        """Match a block's `input x: [T, d]` against the incoming shape, binding new names."""
        frame.vars[stmt.name] = tensor
        if stmt.type is None or tensor.type is None:
            return
        actual = tensor.type
        declared = stmt.type
        note = Note(stmt.span, f"`{stmt.name}` is declared as {_text(declared.span)} here")
        came = Note(tensor.span, f"the input comes from {tensor.origin}, which gives {actual}")
        if (declared.dtype == "int") != (actual.dtype == "int64"):
            raise DiagnosticError("E303", f"`{stmt.name}` expects {_text(declared.span)} but gets "
                                  f"{actual}", span, notes=(note, came))
        if len(declared.dims) != actual.rank:
            raise DiagnosticError("E302", f"`{stmt.name}` expects {_text(declared.span)} but gets "
                                  f"{actual}", span, notes=(note, came))
        for dim_expr, dim in zip(declared.dims, actual.shape):
            if isinstance(dim_expr, ast.Name) and self.lookup_optional(dim_expr.id, frame) is None:
                frame.vars[dim_expr.id] = dim
                continue
            expected = self.value(self.eval(dim_expr, frame), dim_expr)
            if expected != dim:
                raise DiagnosticError("E301", f"`{stmt.name}` expects {_text(declared.span)} "
                                      f"= {self.show_dims(declared, frame)} but gets {actual}",
                                      span, notes=(note, came))

    def show_dims(self, declared: ast.TensorTypeExpr, frame: _Frame) -> str:
        shown = []
        for d in declared.dims:
            value = self.guard(lambda d=d: self.value(self.eval(d, frame), d), None)
            shown.append(str(value) if value is not None else _text(d.span))
        return "[" + ", ".join(shown) + "]"

    # ---- ops ----------------------------------------------------------------------------

    @staticmethod
    def argument_spans(opdef: ops.OpDef, layer: Layer | None) -> dict[str, Span]:
        """Where each argument of a layer was written, for errors about one argument."""
        if layer is None:
            return {}
        settable = [a for a in opdef.attrs if a.kind != "layer"]
        spans: dict[str | int, Span] = {a.name: s for a, s in zip(settable, layer.arg_spans)}
        spans.update(enumerate(layer.arg_spans))  # by position too, for surplus arguments
        spans.update((k, s) for k, _, s in layer.kwargs)
        return spans

    def resolve_attrs(self, opdef: ops.OpDef, values: list, keywords: dict,
                      spans: dict[str | int, Span], span: Span) -> ops.Attrs:
        settable = [a for a in opdef.attrs if a.kind != "layer"]
        if settable and settable[-1].variadic and len(values) > len(settable):
            keep = len(settable) - 1
            values = values[:keep] + [list(values[keep:])]
        if len(values) > len(settable):
            raise DiagnosticError("E140", f"`{opdef.name}` takes at most {len(settable)} "
                                  f"argument(s) but got {len(values)}",
                                  spans.get(len(settable), span), self.signature_hint(opdef))
        resolved = ops.Attrs()
        given = dict(zip((a.name for a in settable), values))
        for key, value in keywords.items():
            if opdef.attr(key) is None:
                hint = did_you_mean(key, [a.name for a in opdef.attrs]) or self.signature_hint(opdef)
                raise DiagnosticError("E141", f"`{opdef.name}` has no argument `{key}`",
                                      spans.get(key, span), hint)
            if key in given:
                raise DiagnosticError("E142", f"`{key}` is given twice", spans.get(key, span))
            given[key] = value
        for attr in opdef.attrs:
            if attr.name in given:
                resolved[attr.name] = self.check_attr(opdef, attr, given[attr.name],
                                                      spans.get(attr.name, span))
            elif attr.default is ops.REQUIRED:
                raise DiagnosticError("E143", f"`{opdef.name}` needs a value for `{attr.name}`",
                                      span, self.signature_hint(opdef))
            else:
                resolved[attr.name] = attr.default
        return resolved

    @staticmethod
    def signature_hint(opdef: ops.OpDef) -> str:
        parts = []
        for a in opdef.attrs:
            parts.append(a.name if a.default is ops.REQUIRED else f"{a.name}={_show(a.default)}")
        return f"usage: {opdef.name}({', '.join(parts)})"

    def check_attr(self, opdef: ops.OpDef, attr: ops.Attr, value, span: Span):
        where = f"`{opdef.name}`'s `{attr.name}`"
        if value is None and (attr.optional or attr.default is None):
            return None
        kind = attr.kind
        ok = True
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "floats":
            ok = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
            value = tuple(float(v) for v in value) if ok else value
        elif kind == "ints" or kind == "padding":
            if kind == "padding" and isinstance(value, str):
                ok = value in ("same", "valid")
                if not ok:
                    raise DiagnosticError("E161", f'{where} must be a number, "same" or "valid", '
                                          f'got "{value}"', span, did_you_mean(value, ["same", "valid"]))
                return value
            if isinstance(value, list):
                ok = bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                value = tuple(value) if ok else value
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "layer":
            if not isinstance(value, Layer) or value.module is None:
                raise DiagnosticError("E162", f"{where} must name a layer (label one with "
                                      "`-> embedding(...) as wte`)", span)
            return value
        if not ok:
            expected = {"int": "an integer", "float": "a number", "bool": "true or false",
                        "str": "a string", "ints": "an integer or a list of integers",
                        "padding": 'an integer, a list, "same" or "valid"',
                        "floats": "a list of numbers"}[kind]
            raise DiagnosticError("E160", f"{where} must be {expected}, got "
                                  f"{_describe_value(value)}", span)
        if attr.choices and value not in attr.choices:
            raise DiagnosticError("E161", f"{where} must be one of "
                                  f"{', '.join(map(str, attr.choices))}; got {_show(value)}", span,
                                  did_you_mean(str(value), map(str, attr.choices)))
        numbers = value if isinstance(value, tuple) else (value,)
        for v in numbers:
            if attr.minimum is not None and v < attr.minimum:
                raise DiagnosticError("E163", f"{where} must be at least {_show(attr.minimum)}, "
                                      f"got {_show(v)}", span)
            if attr.maximum is not None and v > attr.maximum:
                raise DiagnosticError("E163", f"{where} must be at most {_show(attr.maximum)}, "
                                      f"got {_show(v)}", span)
        return value

    def apply_op(self, name: str, tensors: list, keywords: dict, span: Span, frame: _Frame,
                 label: str | None = None, layer: Layer | None = None,
                 values: list | None = None):
        opdef = ops.lookup(name)
        attrs = self.resolve_attrs(opdef, list(values or []), keywords,
                                   self.argument_spans(opdef, layer), span)
        low, high = opdef.arity
        if len(tensors) < low or (high is not None and len(tensors) > high):
            want = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
            raise DiagnosticError("E148", f"`{opdef.name}` takes {want} input(s) but gets "
                                  f"{len(tensors)}", span)
        module = layer.module if layer else None
        local = label or (module.rsplit(".", 1)[-1] if module else None)
        if local is None:
            local = frame.fresh(opdef.name)
        frame.used.add(local)
        node_name = frame.qualify(local)
        if node_name in self.node_names:
            node_name = self.unique(node_name)
        attrs_out = ops.Attrs((k, v) for k, v in attrs.items() if not isinstance(v, Layer))
        input_names = tuple(t.node for t in tensors)
        if any(t.type is None for t in tensors):
            self.add_node(Node(node_name, opdef.name, input_names, attrs_out, None, span,
                               scope=self.scope_of(frame)))
            return Tensor(node_name, None, span, f"`{_text(span)}`")
        try:
            out_type = opdef.infer([t.type for t in tensors], attrs)
        except ops.ShapeError as err:
            notes = tuple(Note(t.span, f"the input comes from {t.origin}, which gives {t.type}")
                          for t in tensors if t.span is not None)
            self.error(err.code, err.message, span, err.hint, notes)
            self.add_node(Node(node_name, opdef.name, input_names, attrs_out, None, span,
                               scope=self.scope_of(frame), error=err.message))
            return Tensor(node_name, None, span, f"`{_text(span)}`")
        params = {}
        module_path = None
        if opdef.has_params:
            if frame.kind == "fn":
                raise DiagnosticError("E156", f"`{opdef.name}` has weights, which a `fn` cannot "
                                      "hold", span, "use a `block` for layers with weights")
            module_path = module or node_name
            params = self.make_params(opdef, [t.type for t in tensors], attrs, module_path,
                                      node_name, span)
        node = Node(node_name, opdef.name, input_names, attrs_out, out_type, span, module_path,
                    params, self.scope_of(frame))
        self.add_node(node)
        return Tensor(node_name, out_type, span, f"`{_text(span)}`")

    def scope_of(self, frame: _Frame) -> str:
        path = frame.path
        while path and path not in self.scopes:
            path = path.rsplit(".", 1)[0] if "." in path else ""
        return path

    def unique(self, name: str) -> str:
        i = 1
        while f"{name}_{i}" in self.node_names:
            i += 1
        return f"{name}_{i}"

    def add_node(self, node: Node):
        self.nodes.append(node)
        self.node_names.add(node.name)

    def make_params(self, opdef, in_types, attrs, module, node_name, span) -> dict[str, str]:
        specs = opdef.params(in_types, attrs)
        tie = attrs.get("tie")
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
            full = f"{module}.{local}"
            if local == "weight" and tie is not None:
                full = self.tied_weight(tie, spec, span)
                owner = self.params[full]
                self.params[full] = replace(owner, tied_from=owner.tied_from + (node_name,))
            else:
                self.params[full] = Param(full, spec, node_name)
            mapping[local] = full
        self.modules[module] = (opdef.name, mapping)
        return mapping

    def tied_weight(self, tie: Layer, spec: ops.ParamSpec, span: Span) -> str:
        entry = self.modules.get(tie.module)
        if entry is None or "weight" not in entry[1]:
            raise DiagnosticError("E171", f"`{tie.module}` has no weight to tie to (it must be "
                                  "applied before the layer that ties to it)", span)
        full = entry[1]["weight"]
        have = self.params[full].spec.shape
        if have != spec.shape:
            raise DiagnosticError("E172", f"cannot tie to `{full}`: it is {list(have)} but this "
                                  f"layer's weight is {list(spec.shape)}", span)
        return full


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def pick_model(program: ast.Program, name: str | None) -> ast.Definition:
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


def build(program: ast.Program, model: str | None = None,
          overrides: dict[str, Any] | None = None) -> Graph:
    """Build and shape-check one model; raise SpecError with every error found."""
    builder = Builder(program)
    definition = pick_model(program, model)
    graph = builder.build_model(definition.name, overrides)
    if builder.diagnostics:
        raise SpecError(builder.diagnostics)
    graph.verify()
    return graph
