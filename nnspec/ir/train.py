"""The `train` section -> a checked `TrainConfig`, with the loss as a small graph of its own.

Every setting is validated against the catalogue (losses, optimizers with torch.optim's
defaults, schedules, metrics) so a typo in `optimizer adma(lr = 1e-3)` is reported at
`nnspec check` time, not after the first epoch.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from nnspec.diagnostics import Diagnostic, DiagnosticError, Note, Span, did_you_mean
from nnspec.ir import ops
from nnspec.ir.attrs import bind_attrs
from nnspec.ir.evaluate import Evaluator
from nnspec.ir.frames import Frame, constant_frame
from nnspec.ir.graph import Binding, BindingSource, Graph, Node
from nnspec.ir.graph_builder import GraphBuilder
from nnspec.ir.rewrite import fuse_softmax
from nnspec.ir.types import TensorType
from nnspec.ir.values import POISON, Layer, Tensor, show, source_text
from nnspec.syntax import ast

DATA_SOURCES = ("csv", "npz", "npy")
_TOP_K = re.compile(r"top[1-9][0-9]*_accuracy")
# The built-in data sets by name. nnspec/training/datasets.py implements them with NumPy,
# which `nnspec check` must not import (it doubled the start-up time); a test keeps the
# two lists equal.
DATASETS = ("xor", "moons", "spirals", "sine", "digits", "adding", "recall", "reverse", "sort",
            "shapes", "char_lm")


@dataclass(frozen=True)
class Setting:
    name: str
    args: dict[str, Any]
    span: Span | None


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: Setting | None
    loss: Setting
    loss_graph: Graph
    optimizer: Setting
    schedule: Setting | None = None
    epochs: int = 10
    batch: int = 32
    metrics: tuple[str, ...] = ()
    seed: int = 0
    val: float = 0.2
    clip: float | None = None
    early_stop: int = 0  # patience in epochs (0: never stop early)
    fused_softmax: bool = False  # the rewrite `fuse_softmax` applied: the loss reads `logits`
    spans: dict[str, Span] = field(default_factory=dict, compare=False)
    bindings: tuple[Binding, ...] = ()  # what feeds each input of loss_graph
    outputs: tuple[tuple[str, str], ...] = ()  # (name, model node): the outputs training reads
    early_stop_metric: str = "val_loss"  # the history column early stopping and `best` watch
    early_stop_mode: str = "min"  # min: lower is better; max: higher is better
    metric_outputs: tuple[tuple[str, str], ...] = ()  # (metric, output): `accuracy(kind)`
    init: str | None = None  # fine-tuning: a weights file or run directory to start from
    init_layout: str | None = None  # how its names map to the spec's (docs/weights.md)
    fresh: tuple[str, ...] = ()  # patterns of parameters not taken from `init` (a new head)
    freeze: tuple[str, ...] = ()  # patterns of parameters the optimizer leaves alone

    def frozen_params(self, graph: Graph) -> list[str]:
        """The trainable parameters `freeze` names, in the graph's order."""
        return [name for name, p in graph.params.items()
                if p.spec.trainable and matches_any(name, self.freeze)]

    @property
    def targets(self) -> dict[str, TensorType]:
        """The data's targets the loss takes, by name (`target` for `loss mse`)."""
        return {b.name: self.loss_graph.node(b.node).type for b in self.bindings
                if b.source == "target"}

    def metric(self, name: str) -> tuple[str, str | None]:
        """A metric column's kind and the output it scores: `kind_accuracy` ->
        ("accuracy", "kind"); ("accuracy", None) scores the output the loss compares."""
        output = dict(self.metric_outputs).get(name)
        return (name.removeprefix(f"{output}_"), output) if output else (name, None)

    def output_node(self, name: str) -> str:
        return dict(self.outputs)[name]

    def to_json(self) -> dict:
        def setting(s: Setting | None):
            return None if s is None else {"name": s.name, **s.args}

        return {"model": self.model, "data": setting(self.data), "loss": setting(self.loss),
                "optimizer": setting(self.optimizer), "schedule": setting(self.schedule),
                "epochs": self.epochs, "batch": self.batch, "metrics": list(self.metrics),
                "seed": self.seed, "val": self.val, "clip": self.clip,
                "early_stop": self.early_stop, "early_stop_metric": self.early_stop_metric,
                "early_stop_mode": self.early_stop_mode,
                "metric_outputs": [list(pair) for pair in self.metric_outputs],
                "init": self.init, "init_layout": self.init_layout, "fresh": list(self.fresh),
                "freeze": list(self.freeze)}


_SCALARS = {  # key: (kind, default, minimum)
    "epochs": ("int", 10, 1),
    "batch": ("int", 32, 1),
    "seed": ("int", 0, 0),
    "val": ("float", 0.2, 0.0),
    "clip": ("float", None, 0.0),
}
FINE_TUNING = ("init", "init_layout", "fresh", "freeze")
KEYS = ("data", "loss", "optimizer", "schedule", "metrics", *_SCALARS, "early_stop",
        *FINE_TUNING)


def matches_any(name: str, patterns) -> bool:
    """Shell-style patterns (`layer1.*`, `fc.weight`), matched against the whole name."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def default_target(loss: str, pred: TensorType) -> TensorType:
    """The target a built-in loss expects for this prediction."""
    if loss in ops.CLASS_INDEX_LOSSES:
        return TensorType(ops.without_class_dim(pred), "int64")
    return TensorType(pred.shape, "float32")


def build_train(builder: Evaluator, train: ast.Train, model: Graph) -> TrainConfig:
    """Check one train section against its (already built) model; errors go to builder."""
    seen: dict[str, ast.Setting] = {}
    for s in train.settings:
        if s.key not in KEYS:
            builder.error("E201", f"unknown train setting `{s.key}`", s.span,
                          did_you_mean(s.key, KEYS) or f"settings: {', '.join(KEYS)}")
        elif s.key in seen:
            builder.error("E202", f"`{s.key}` is set twice", s.span,
                          notes=[Note(seen[s.key].span, "first set here")])
        else:
            seen[s.key] = s
    frame = constant_frame()
    values: dict[str, Any] = {}
    for key, (kind, default, minimum) in _SCALARS.items():
        values[key] = default
        if key in seen:
            values[key] = builder.guard(
                lambda key=key, kind=kind, minimum=minimum: _scalar(builder, seen[key], kind,
                                                                    minimum, frame), default)
    if values["val"] is not None and not 0 <= values["val"] < 1:
        builder.error("E203", "`val` is the held-out fraction and must be below 1",
                      seen["val"].span)
    data = builder.guard(lambda: data_setting(builder, seen.get("data")), None)
    optimizer = builder.guard(lambda: hyper_setting(builder, seen.get("optimizer"),
                                                    ops.OPTIMIZERS, "optimizer"), None)
    schedule = builder.guard(lambda: hyper_setting(builder, seen.get("schedule"), ops.SCHEDULES,
                                                   "schedule"), None) if "schedule" in seen else None
    metrics, metric_outputs = builder.guard(
        lambda: _metrics(builder, seen.get("metrics"), model.output_names), ((), ()))
    stop = builder.guard(lambda: _early_stop(builder, seen.get("early_stop"), metrics),
                         (0, "val_loss", "min"))
    tuning = builder.guard(lambda: _fine_tuning(seen, model), {})
    if optimizer is None and "optimizer" not in seen:
        optimizer = Setting("adam", {a.name: a.default for a in ops.OPTIMIZERS["adam"].hyper}, None)
    loss, loss_graph, bindings, fused = None, None, (), None
    if "loss" not in seen:
        builder.error("E204", f"train `{train.model}` needs a `loss`", train.span,
                      "add e.g. `loss cross_entropy` or `loss mse`")
    elif not (model.outputs and all(model.node(o).type is not None for o in model.outputs)):
        expr = seen["loss"].values[0]
        name, span = (expr.id, expr.span) if isinstance(expr, ast.Name) else (
            (expr.func, expr.func_span) if isinstance(expr, ast.Call) else (None, None))
        if name is not None and name not in model.output_names:
            builder.guard(lambda: _loss_kind(builder, name, span), None)
    else:
        result = builder.guard(lambda: build_loss(builder, seen["loss"], model), None)
        if result is not None:
            loss, loss_graph, bindings = result
            fused = fuse_softmax(model, loss_graph, bindings)
            if fused is not None:
                bindings = fused.bindings
                out = model.node(fused.softmax)
                builder.diagnostics.append(Diagnostic(
                    "N001", "the final softmax is fused into cross_entropy: training computes "
                    "the stable log-softmax of the logits, and predictions still give "
                    "probabilities", out.span, severity="note",
                    notes=(Note(seen["loss"].span, "the loss is chosen here"),)))
    return TrainConfig(train.model, data, loss, loss_graph, optimizer, schedule,
                       values["epochs"], values["batch"], metrics, values["seed"], values["val"],
                       values["clip"], stop[0], fused is not None,
                       {k: s.span for k, s in seen.items()}, tuple(bindings),
                       fused.outputs if fused is not None else _outputs(model),
                       early_stop_metric=stop[1], early_stop_mode=stop[2],
                       metric_outputs=metric_outputs, **tuning)


def _single(setting: ast.Setting) -> ast.Expr:
    if len(setting.values) != 1:
        raise DiagnosticError("E205", f"`{setting.key}` takes one value", setting.span)
    return setting.values[0]


def _scalar(builder: Evaluator, setting: ast.Setting, kind: str, minimum, frame: Frame):
    expr = _single(setting)
    value = builder.eval_value(expr, frame)
    ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        noun = "an integer" if kind == "int" else "a number"
        raise DiagnosticError("E206", f"`{setting.key}` must be {noun}, got {show(value)}",
                              expr.span)
    if value < minimum:
        raise DiagnosticError("E206", f"`{setting.key}` must be at least {minimum}", expr.span)
    return float(value) if kind == "float" else value


def _call_parts(builder: Evaluator, expr: ast.Expr, frame: Frame) -> tuple[str, list, dict, Span]:
    if isinstance(expr, ast.Name):
        return expr.id, [], {}, expr.span
    if isinstance(expr, ast.Call):
        args = [builder.eval_value(a, frame) for a in expr.args]
        kwargs = {k.name: builder.eval_value(k.value, frame) for k in expr.kwargs}
        return expr.func, args, kwargs, expr.func_span
    raise DiagnosticError("E207", "expected a name or a call like `adam(lr = 1e-3)`", expr.span)


def _argument_spans(expr: ast.Expr, definition: ops.OptimizerDef) -> dict[str | int, Span]:
    """Spans by argument name only: a surplus positional argument is reported at the call."""
    if not isinstance(expr, ast.Call):
        return {}
    spans: dict[str | int, Span] = {a.name: arg.span
                                    for a, arg in zip(definition.hyper, expr.args)}
    spans.update((k.name, k.span) for k in expr.kwargs)
    return spans


def hyper_setting(builder: Evaluator, setting: ast.Setting | None,
                  table: dict[str, ops.OptimizerDef], what: str) -> Setting | None:
    """An `optimizer` or `schedule` line: a name of `table` and its hyperparameters, checked
    against their schema with torch's defaults filled in."""
    if setting is None:
        return None
    expr = _single(setting)
    name, args, kwargs, span = _call_parts(builder, expr, constant_frame())
    if name not in table:
        raise DiagnosticError("E208", f"unknown {what} `{name}`", span,
                              did_you_mean(name, table) or f"choose one of: {', '.join(table)}")
    definition = table[name]
    spans = _argument_spans(expr, definition)
    return Setting(name, dict(bind_attrs(name, definition.hyper, args, kwargs, spans, expr.span)),
                   expr.span)


def _strings(setting: ast.Setting) -> list[tuple[str, Span]]:
    """A setting's values as text: quoted strings, or lists of them."""
    out = []
    for expr in setting.values:
        items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
        for item in items:
            if not isinstance(item, ast.String):
                raise DiagnosticError("E224", f"`{setting.key}` takes quoted text, e.g. "
                                      f'`{setting.key} "{_EXAMPLES[setting.key]}"`', item.span)
            out.append((item.value, item.span))
    return out


_EXAMPLES = {"init": "resnet18.safetensors", "init_layout": "resnet18.layout",
             "fresh": "fc.*", "freeze": "layer1.*"}


def _fine_tuning(seen: dict[str, ast.Setting], model: Graph) -> dict[str, Any]:
    """`init`, `init_layout`, `fresh`, `freeze`: what a run starts from and what it keeps.
    A pattern that names no parameter is an error (a typo would otherwise train all)."""
    out: dict[str, Any] = {}
    for key in ("init", "init_layout"):
        if key in seen:
            values = _strings(seen[key])
            if len(values) != 1:
                raise DiagnosticError("E205", f"`{key}` takes one value", seen[key].span)
            out[key] = values[0][0]
    for key in ("fresh", "freeze"):
        if key not in seen:
            continue
        names = [n for n, p in model.params.items() if key == "fresh" or p.spec.trainable]
        patterns = _strings(seen[key])
        for pattern, span in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                tops = sorted({n.split(".")[0] + ".*" for n in names})
                raise DiagnosticError("E225", f"`{key} \"{pattern}\"` names no "
                                      f"{'trainable ' if key == 'freeze' else ''}parameter of "
                                      f"`{model.name}`", span,
                                      did_you_mean(pattern, tops)
                                      or f"its parameters start with: {', '.join(tops[:8])}")
        out[key] = tuple(p for p, _ in patterns)
    return out


def _metrics(builder: Evaluator, setting: ast.Setting | None, outputs: list[str]
             ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Metric names as the history's columns call them, and the outputs they score.

    `top_k_accuracy(k = 5)` is `top5_accuracy` (which may also be written); a metric of one
    of several outputs names it first, `accuracy(kind)`, and is called `kind_accuracy`.
    """
    if setting is None:
        return (), ()
    names, scored = [], []
    for expr in setting.values:
        output, word = None, expr.id if isinstance(expr, ast.Name) else "this"
        if isinstance(expr, ast.Call):
            args, word = list(expr.args), expr.func
            if args and isinstance(args[0], ast.Name):
                output = args.pop(0).id
                if output not in outputs:
                    raise DiagnosticError(
                        "E209", f"`{word}({output})` scores an output, but the model has no "
                        f"output `{output}`", expr.args[0].span,
                        did_you_mean(output, outputs) or f"outputs: {', '.join(outputs)}")
            if word == "top_k_accuracy":
                k = bind_attrs(word, (ops.Attr("k", "int", 5, minimum=1),),
                               [builder.eval_value(a, constant_frame()) for a in args],
                               {k.name: builder.eval_value(k.value, constant_frame())
                                for k in expr.kwargs}, {}, expr.span)["k"]
                word = f"top{k}_accuracy"
            elif args or expr.kwargs:
                raise DiagnosticError("E209", f"`{word}` takes only the output it scores: "
                                      f"`{word}(name)`", expr.span)
        if word == "top_k_accuracy":  # its default k
            word = "top5_accuracy"
        if not (word in ops.METRICS or _TOP_K.fullmatch(word)):
            raise DiagnosticError("E209", f"unknown metric `{word}`", expr.span,
                                  did_you_mean(word, ops.METRICS)
                                  or f"metrics: {', '.join(ops.METRICS)}")
        names.append(f"{output}_{word}" if output else word)
        if output:
            scored.append((names[-1], output))
    return tuple(names), tuple(scored)


def _early_stop(builder: Evaluator, setting: ast.Setting | None, metrics: tuple[str, ...]
                ) -> tuple[int, str, str]:
    """`early_stop 5` (val_loss), `early_stop 5, val_accuracy` (a score: higher is better),
    `early_stop 5, val_f1, max`: patience, the column watched, and its mode."""
    if setting is None:
        return 0, "val_loss", "min"
    first = ast.Setting(setting.span, setting.key, setting.values[:1])
    patience = _scalar(builder, first, "int", 0, constant_frame())
    if len(setting.values) > 3:
        raise DiagnosticError("E205", "`early_stop` takes a patience, a metric and a mode "
                              "(`early_stop 5, val_accuracy, max`)", setting.span)
    columns = ("val_loss", "train_loss", *(f"val_{m}" for m in metrics))
    metric = "val_loss"
    if len(setting.values) > 1:
        expr = setting.values[1]
        word = expr.id if isinstance(expr, ast.Name) else None
        metric = word if word in columns or word is None else f"val_{word}"
        if metric not in columns:
            raise DiagnosticError("E222", f"early stopping watches `{word or 'this'}`, which "
                                  "the run does not record", expr.span,
                                  did_you_mean(metric, columns)
                                  or f"columns: {', '.join(columns)} (add a metric to "
                                  "`metrics` to watch it)")
    mode = "min" if metric.endswith(("loss", "perplexity", "mae", "mse")) else "max"
    if len(setting.values) > 2:
        expr = setting.values[2]
        word = expr.id if isinstance(expr, ast.Name) else builder.eval_value(
            expr, constant_frame())
        if word not in ("min", "max"):
            raise DiagnosticError("E222", "the mode of `early_stop` is `min` (lower is "
                                  "better) or `max`", expr.span)
        mode = word
    return patience, metric, mode


def data_setting(builder: Evaluator, setting: ast.Setting | None) -> Setting | None:
    """A `data` line: a file source (`csv("f.csv", target = "y")`) or a built-in set."""
    if setting is None:
        return None
    expr = _single(setting)
    name, args, kwargs, span = _call_parts(builder, expr, constant_frame())
    if name in DATA_SOURCES:
        if len(args) != 1 or not isinstance(args[0], str):
            raise DiagnosticError("E210", f'{name} needs a file name: `{name}("file.{name}")`',
                                  expr.span)
        return Setting(name, {"path": args[0], **kwargs}, expr.span)
    if name not in DATASETS:
        raise DiagnosticError("E211", f"unknown data set `{name}`", span,
                              did_you_mean(name, [*DATASETS, *DATA_SOURCES])
                              or f"built-in sets: {', '.join(DATASETS)}; or csv(...), npz(...)")
    if args:
        raise DiagnosticError("E212", "built-in data sets take keyword options only", expr.span)
    return Setting(name, dict(kwargs), expr.span)


def _loss_kind(builder: Evaluator, name: str, span: Span) -> str:
    """"fn" for a loss written in the spec, "op" for a built-in one; else E213."""
    definition = builder.defs.get(name)
    if definition is not None and definition.kind == "fn":
        return "fn"
    if ops.lookup(name) is not None and ops.lookup(name).family == "loss":
        return "op"
    candidates = [*ops.LOSSES, *(d.name for d in builder.program.definitions("fn"))]
    raise DiagnosticError("E213", f"unknown loss `{name}`", span,
                          did_you_mean(name, candidates)
                          or f"losses: {', '.join(candidates)}, or a `fn` of yours")


def _outputs(model: Graph) -> tuple[tuple[str, str], ...]:
    return tuple(model.named_outputs.items())


def _walk(expr):
    """An expression and every expression inside it, outermost first, left to right."""
    yield expr
    children = {ast.Call: lambda e: [*e.args, *(k.value for k in e.kwargs)],
                ast.BinOp: lambda e: [e.left, e.right], ast.Unary: lambda e: [e.operand],
                ast.ListExpr: lambda e: list(e.items),
                ast.Pipeline: lambda e: [e.head, *(s.layer for s in e.stages)],
                ast.Conditional: lambda e: [e.then, e.cond, e.otherwise]}.get(type(expr))
    for child in children(expr) if children else ():
        yield from _walk(child)


def _names_in(expr) -> list[ast.Name]:
    """Every name an expression reads (not the functions it calls), in reading order."""
    return [e for e in _walk(expr) if isinstance(e, ast.Name)]


def build_loss(builder: Evaluator, setting: ast.Setting, model: Graph
               ) -> tuple[Setting, Graph, tuple[Binding, ...]]:
    """The loss as a graph of its own from the tensors it reads to a scalar, built as a
    model's body is. `loss mse` applies a loss to the model's one output (`pred`) and the
    data's `target`; an expression that names outputs or inputs (`mse(recon, x) + kl(mu,
    logvar)`) reads those, and every other name it gives a loss as its target is a target
    of the data, shaped as that loss expects for its prediction."""
    expr = _single(setting)
    known = {**{i: model.node(i).type for i in model.inputs},
             **{name: model.node(node).type for name, node in model.named_outputs.items()}}
    if not any(n.id in known for n in _names_in(expr)):
        return _applied_loss(builder, setting, expr, model)
    graph = GraphBuilder(f"{model.name}.loss")
    frame = Frame("loss", {}, "fn", graph)
    bindings = []
    for name, (kind, type_, span) in _loss_tensors(builder, expr, model, known).items():
        node = Node(name, "input", (), {}, type_, span, named=True)
        graph.add_node(node)
        frame.vars[name] = Tensor(name, type_, span, f"the {kind} `{name}`")
        frame.used.add(name)
        bindings.append(Binding(name, kind, name))
    out = builder.tensor(builder.eval(expr, frame), expr, frame)
    text = source_text(expr.span)
    _check_scalar(out, text, expr.span)
    return (Setting(text, {}, expr.span), graph.finish([b.node for b in bindings], [out.node], {}),
            tuple(bindings))


def _loss_tensors(builder: Evaluator, expr: ast.Expr, model: Graph, known: dict
                  ) -> dict[str, tuple[BindingSource, TensorType, Span]]:
    """The tensors a loss expression reads, by name and in the order it reads them (the
    generated `loss_fn` takes them so): outputs, inputs and targets. A target is a name
    the expression gives a loss (or a `fn`) as its second argument after an output or
    input; its type is what that loss expects for that prediction."""
    outputs = model.named_outputs
    targets: dict[str, tuple[BindingSource, TensorType, Span]] = {}
    for call in (e for e in _walk(expr) if isinstance(e, ast.Call)):
        if len(call.args) < 2 or not isinstance(call.args[1], ast.Name):
            continue
        pred, target = call.args[0], call.args[1].id
        if target in known or target in targets or builder.lookup_optional(
                target, constant_frame()) is not None:
            continue
        if not (isinstance(pred, ast.Name) and pred.id in known):
            raise DiagnosticError("E221", f"the target `{target}` needs a prediction named "
                                  f"before it", call.args[1].span,
                                  f"give `{call.func}` an output or input by name first: "
                                  f"`{call.func}(name, {target})`")
        kind = _loss_kind(builder, call.func, call.func_span)
        pred_type = known[pred.id]
        type_ = pred_type if kind == "fn" else default_target(ops.lookup(call.func).name,
                                                              pred_type)
        targets[target] = ("target", type_, call.args[1].span)
    found: dict[str, tuple[BindingSource, TensorType, Span]] = {}
    for name in _names_in(expr):  # in the order the expression reads them
        if name.id in known and name.id not in found:
            kind = "output" if name.id in outputs else "input"
            found[name.id] = (kind, known[name.id], model.node(outputs.get(name.id, name.id)).span)
        elif name.id in targets:
            found.setdefault(name.id, targets[name.id])
    return found


def _check_scalar(out, what: str, span: Span, unreduced: bool = False) -> None:
    if out is POISON:
        raise DiagnosticError("E214", f"the loss `{what}` could not be built", span)
    if out.type is not None and (out.type.shape != () or out.type.batched):
        raise DiagnosticError("E215", f"a loss must reduce to a scalar, but `{what}` gives "
                              f"{out.type}", span,
                              'leave out `reduction = "none"` (its mean is the default)'
                              if unreduced else "wrap the result in `mean(...)`")


def _applied_loss(builder: Evaluator, setting: ast.Setting, expr: ast.Expr, model: Graph
                  ) -> tuple[Setting, Graph, tuple[Binding, ...]]:
    """`loss cross_entropy`, `loss my_fn`: applied to `pred` (the one output) and `target`."""
    graph = GraphBuilder(f"{model.name}.loss")
    frame = Frame("loss", {}, "fn", graph)
    name, args, kwargs, span = _call_parts(builder, expr, frame)
    kind = _loss_kind(builder, name, span)
    if len(model.outputs) != 1:
        raise DiagnosticError("E220", f"`{model.name}` has {len(model.outputs)} outputs "
                              f"({', '.join(model.output_names)}); name the ones the loss "
                              "takes", expr.span,
                              f"e.g. `loss {name}({model.output_names[0]}, target)`")
    pred_type = model.output_type
    if kind == "fn":
        target_type = pred_type
    else:
        name = ops.lookup(name).name
        target_type = default_target(name, pred_type)
    pred = Tensor("pred", pred_type, model.node(model.outputs[0]).span, "the model's output")
    target = Tensor("target", target_type, setting.span, "the data's targets")
    for tensor in (pred, target):
        graph.add_node(Node(tensor.node, "input", (), {}, tensor.type, tensor.span))
    kw = tuple((k, v, expr.span) for k, v in kwargs.items())
    layer = Layer(kind, name, expr.span, args=tuple(args), kwargs=kw)
    out = builder.apply(layer, [pred, target], frame, None, expr.span)
    _check_scalar(out, name, expr.span, kwargs.get("reduction") == "none")
    attrs = dict(kwargs)
    bindings = (Binding("pred", "output", model.output_names[0]),
                Binding("target", "target", "target"))
    return Setting(name, attrs, expr.span), graph.finish(["pred", "target"], [out.node], attrs), \
        bindings
