"""The front end as one call: spec text -> everything that could be made of it.

`analyze` parses, builds the models asked for (a partial graph where building failed,
so a diagram can show where), checks their train sections, and returns all of it with
every diagnostic, sorted and deduplicated, and the names the spec defines. `nnspec.load`,
`nnspec check`, `nnspec render` of a broken spec and editors all start here, and none of
them reads a file twice.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from nnspec.collector import collector_paused
from nnspec.diagnostics import Diagnostic, DiagnosticError, Span, SpecError, did_you_mean
from nnspec.ir.build import Builder, pick_model
from nnspec.ir.graph import Graph
from nnspec.ir.graph_builder import MAX_LAYERS
from nnspec.ir.train import TrainConfig, build_train
from nnspec.syntax import ast
from nnspec.syntax.parser import parse, parse_value

SymbolKind = Literal["model", "block", "fn", "const", "param", "input", "value", "label"]


@dataclass(frozen=True)
class Symbol:
    """A name the spec defines and where: for outlines, go-to-definition and renaming.

    `kind` is model, block, fn or const at the top level, and param, input, value (`h =
    ...`) or label (`-> dense(64) as proj`) inside the definition named by `parent`. `span`
    covers the name, `extent` the whole definition or statement."""

    name: str
    kind: SymbolKind
    span: Span
    extent: Span
    parent: str | None = None


@dataclass(frozen=True)
class Analysis:
    """What the front end made of one spec. `program` is None when the text does not parse;
    `graphs` holds each model that was built, partial where its diagnostics say it failed;
    `trains` each built model's checked train section. `model` is the model asked for
    (or picked: the trained one, else the last) unless every model was built."""

    program: ast.Program | None
    graphs: Mapping[str, Graph]
    trains: Mapping[str, TrainConfig]
    diagnostics: tuple[Diagnostic, ...]
    model: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def graph(self) -> Graph | None:
        """The graph of the model asked for, partial if it has errors, or None."""
        return self.graphs.get(self.model) if self.model is not None else None

    @cached_property
    def symbols(self) -> tuple[Symbol, ...]:
        """Computed on first use: `check` and `load` never need them."""
        return tuple(_symbols(self.program)) if self.program is not None else ()


def read_spec(path: str | Path) -> str:
    """The text of a spec file, or SpecError E000 (missing, a directory, not UTF-8)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (
            err.strerror or str(err))
        raise SpecError([Diagnostic("E000", f"cannot read {path}: {reason}", None)]) from None


def analyze_file(path: str | Path, model: str | None = None,
                 overrides: Mapping[str, Any] | None = None, *,
                 every_model: bool = False, max_layers: int = MAX_LAYERS) -> Analysis:
    """`analyze` of a file; a file that cannot be read gives its E000 as the diagnostic."""
    try:
        text = read_spec(path)
    except SpecError as err:
        return Analysis(None, {}, {}, tuple(err.diagnostics), model, dict(overrides or {}))
    return analyze(text, str(path), model, overrides, every_model=every_model,
                   max_layers=max_layers)


def analyze(text: str, path: str = "<string>", model: str | None = None,
            overrides: Mapping[str, Any] | None = None, *,
            every_model: bool = False, max_layers: int = MAX_LAYERS,
            reuse: ModelCache | None = None) -> Analysis:
    """Parse `text` and build one model (`model`, else the trained one, else the last) with
    `overrides` replacing its hyperparameters, or with `every_model` all of them (what
    `nnspec check` and editors want). A model may have at most `max_layers` nodes after
    `repeat`s and blocks are expanded (E401). `reuse` keeps what each model built between
    calls (an editor's document), so a model whose text and dependencies did not change is
    not built again. Never raises for a mistake in the spec."""
    if every_model and model is not None:
        raise ValueError("analyze: give `model` or `every_model`, not both")
    overrides = dict(overrides or {})
    return _in_own_frame_chunk(_analyze_within_limits, text, path, model, overrides,
                               every_model, max_layers, reuse)


def _analyze_within_limits(text: str, path: str, model: str | None, overrides: dict[str, Any],
                           every_model: bool, max_layers: int, reuse: ModelCache | None
                           ) -> Analysis:
    """`_analyze` with the collector paused and a stack of fixed depth (E004 beyond it)."""
    try:
        with collector_paused(freeze_survivors=True), _stack_of_fixed_depth():
            return _analyze(text, path, model, overrides, every_model, max_layers, reuse)
    except RecursionError:
        return Analysis(None, {}, {}, (_too_deep(path),), model, overrides)


def evaluate_value(text: str, path: str = "<value>"):
    """A constant written in the .nn syntax (`64`, `4 * 64`, `"gelu"`, `[1, 8, 8]`), as a
    hyperparameter receives it: for `--set NAME=VALUE`. SpecError located in `text`."""
    expr = parse_value(text, path)
    builder = Builder(ast.Program(expr.span.source, (ast.Const(expr.span, "value", expr),)))
    errors = [d for d in builder.diagnostics if d.severity == "error"]
    if errors:
        raise SpecError(errors)
    return builder.consts["value"]


def _analyze(text: str, path: str, model: str | None, overrides: dict[str, Any],
             every_model: bool, max_layers: int, reuse: ModelCache | None = None
             ) -> Analysis:
    try:
        program = parse(text, path)
    except SpecError as err:
        return Analysis(None, {}, {}, _sorted(err.diagnostics), model, overrides)
    builder = Builder(program, max_layers)
    _check_train_targets(builder, program)
    if every_model:
        wanted = program.definitions("model")
        if not wanted:
            builder.error("E103", f"{path} defines no model", None,
                          "add `model Name { input x: [..] ... }`")
    else:
        try:
            wanted = [pick_model(program, model)]
        except SpecError as err:
            builder.diagnostics.extend(err.diagnostics)
            wanted = []
        else:
            model = wanted[0].name
    sections: dict[str, list[ast.Train]] = {}
    for section in program.trains:
        sections.setdefault(section.model, []).append(section)
    graphs: dict[str, Graph] = {}
    trains: dict[str, TrainConfig] = {}
    keys = reuse.keys(program, (path, max_layers, tuple(sorted(overrides.items())))) \
        if reuse is not None else {}
    for definition in wanted:
        if builder.defs.get(definition.name) is not definition:
            continue  # a second `model Net` or a model named like an op: already reported
        key = keys.get(definition.name)
        built = reuse.get(key) if reuse is not None else None
        if built is None:
            built = _build(builder, definition, sections.get(definition.name, ()), overrides)
            if reuse is not None:
                reuse.put(key, built)
        graph, train, diagnostics = built
        builder.diagnostics.extend(diagnostics)
        if graph is not None:
            graphs[definition.name] = graph
        if train is not None:
            trains[definition.name] = train
    if reuse is not None:
        reuse.forget_unused()
    return Analysis(program, MappingProxyType(graphs), MappingProxyType(trains),
                    _sorted(builder.diagnostics), model, overrides)


def _build(builder: Builder, definition: ast.Definition, sections, overrides: dict[str, Any]
           ) -> tuple[Graph | None, TrainConfig | None, tuple[Diagnostic, ...]]:
    """One model and its train section built, with the diagnostics that building gave."""
    outer, builder.diagnostics = builder.diagnostics, []
    graph = train = None
    try:
        graph = builder.build_model(definition.name,
                                    _known_overrides(builder, definition, overrides))
        for section in sections:
            train = build_train(builder, section, graph)
    except DiagnosticError as err:
        builder.diagnostics.append(err.diagnostic)
    finally:
        made, builder.diagnostics = tuple(builder.diagnostics), outer
    return graph, train, made


class ModelCache:
    """What each model of one document built, keyed by the text it was built from: the
    model's own text and place, its train sections', and those of every block, fn and
    constant it names (directly or through them), with every top-level name (hints suggest
    them) and the options. An edit inside one definition rebuilds only the models that
    use it; entries the latest analysis did not use are dropped, so the cache holds one
    version of the document."""

    def __init__(self):
        self.entries: dict[tuple, tuple] = {}
        self.used: set[tuple] = set()
        self.hits = 0  # models reused, for tests and curious editors

    def keys(self, program: ast.Program, options: tuple) -> dict[str, tuple]:
        source = program.source
        texts = {}
        names: dict[str, list] = {}
        for item in program.items:
            name = item.model if isinstance(item, ast.Train) else item.name
            text = "\n".join(source.lines[item.span.line - 1:item.span.end_line])
            texts[id(item)] = (type(item).__name__, item.span.line, item.span.col, text)
            names.setdefault(name, []).append(item)
        everything = tuple((type(i).__name__, getattr(i, "kind", ""), i.model if isinstance(
            i, ast.Train) else i.name) for i in program.items)
        keys = {}
        for model in program.definitions("model"):
            parts = [texts[id(i)] for i in names[model.name]]  # the model and its trains
            seen, todo = {model.name}, [texts[id(i)][3] for i in names[model.name]]
            while todo:
                for word in _WORD.findall(todo.pop()):
                    if word in names and word not in seen:
                        seen.add(word)
                        for item in names[word]:
                            if not (isinstance(item, ast.Definition) and item.kind == "model"):
                                parts.append(texts[id(item)])
                                todo.append(texts[id(item)][3])
            keys[model.name] = (model.name, options, everything, tuple(sorted(parts)))
        return keys

    def get(self, key: tuple | None):
        found = self.entries.get(key)
        if found is not None:
            self.used.add(key)
            self.hits += 1
        return found

    def put(self, key: tuple | None, built: tuple):
        if key is not None:
            self.entries[key] = built
            self.used.add(key)

    def forget_unused(self):
        self.entries = {k: v for k, v in self.entries.items() if k in self.used}
        self.used = set()


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _known_overrides(builder: Builder, definition: ast.Definition,
                     overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that name a hyperparameter of the model; E104 for the first that does
    not (the model is still built, with the others, so a diagram can be drawn)."""
    if not overrides:
        return {}
    names = [p.name for p in definition.params]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        builder.diagnostics.append(Diagnostic(
            "E104", f"model `{definition.name}` has no hyperparameter `{unknown[0]}`",
            definition.name_span, did_you_mean(unknown[0], names)))
    return {k: v for k, v in overrides.items() if k in names}


def _check_train_targets(builder: Builder, program: ast.Program):
    models = {m.name for m in program.definitions("model")}
    for section in program.trains:
        if section.model not in models:
            builder.error("E200", f"train section for unknown model `{section.model}`",
                          section.model_span, did_you_mean(section.model, models))


def _sorted(diagnostics: list[Diagnostic]) -> tuple[Diagnostic, ...]:
    """A block used by two models reports its error once; errors come in file order."""
    seen, out = set(), []
    for d in diagnostics:
        key = (d.code, d.message, d.span and (d.span.line, d.span.col))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return tuple(sorted(out, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0)))


STACK_FRAMES = 1000  # frames the front end may use below its caller


@contextmanager
def _stack_of_fixed_depth():
    """Python's recursion limit counts every frame of the process, and callers change it
    (torch.compile raises it): the front end gets the same `STACK_FRAMES` below whoever
    calls it, so whether a deep expression is E004 does not depend on the caller."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + STACK_FRAMES)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def _in_own_frame_chunk(function, *args):
    """`function(*args)`, its frames in a fresh chunk of CPython's frame stack (see below)."""
    return function(*args)


# CPython 3.11+ keeps Python frames in 16 KB chunks and frees a chunk as soon as the frame
# that opened it returns, so a build whose recursion goes back and forth across a chunk's
# end maps and unmaps memory at every crossing: 15,000 times in a 10,000-layer build of
# nested blocks, which took 0.37 s or 0.61 s by where the caller's stack happened to end.
# A frame larger than a chunk opens one of its own: this one reserves 64 KB (stack slots
# it never uses or touches), so its chunk is 128 KB and the front end's frames below it
# have 64 KB, wherever it is called from. (Older Pythons allocate each frame on its own.)
if sys.implementation.name == "cpython" and sys.version_info >= (3, 11):
    _in_own_frame_chunk.__code__ = _in_own_frame_chunk.__code__.replace(co_stacksize=8192)


def _too_deep(path: str) -> Diagnostic:
    """The builder recurses once per nesting level of an expression, so a thousand-term
    `a + b + ...` exhausts Python's stack: a diagnostic, not a crash."""
    return Diagnostic("E004", f"an expression in {path} nests too deeply to compile", None,
                      "split long sums or nested calls into named steps (`h = ...`)")


# ---- symbols ------------------------------------------------------------------------------


def _symbols(program: ast.Program):
    for item in program.items:
        if isinstance(item, ast.Const):
            yield Symbol(item.name, "const", _leading_name(item.span, item.name), item.span)
        elif isinstance(item, ast.Definition):
            yield Symbol(item.name, item.kind, item.name_span, item.span)
            yield from _definition_symbols(item)


def _definition_symbols(definition: ast.Definition):
    owner = definition.name
    for param in definition.params:
        yield Symbol(param.name, "param", _leading_name(param.span, param.name), param.span,
                     owner)
    for stmt in definition.body:
        if isinstance(stmt, ast.Input):
            yield Symbol(stmt.name, "input", stmt.name_span or stmt.span, stmt.span, owner)
        elif isinstance(stmt, ast.ParamDecl):
            yield Symbol(stmt.name, "value", stmt.name_span, stmt.span, owner)
        elif isinstance(stmt, ast.Assign):
            yield Symbol(stmt.name, "value", _leading_name(stmt.span, stmt.name), stmt.span,
                         owner)
        elif isinstance(stmt, ast.Unpack):
            for name, span in zip(stmt.names, stmt.name_spans):
                yield Symbol(name, "value", span, stmt.span, owner)
        value = getattr(stmt, "value", None)
        if value is not None:
            for stage in _labelled_stages(value):
                yield Symbol(stage.label, "label", _trailing_name(stage.span, stage.label),
                             stage.span, owner)


def _labelled_stages(expr: ast.Expr):
    """Every `-> layer as name` inside an expression, in text order (an explicit stack: a
    sum of a thousand terms is a thousand levels deep)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Stage) and node.label is not None:
            yield node
        stack.extend(reversed(_children(node)))


def _children(node) -> tuple:
    if isinstance(node, ast.Pipeline):
        return (node.head, *node.stages)
    if isinstance(node, ast.Stage):
        return (node.layer,)
    if isinstance(node, ast.Call):
        return (*node.args, *(k.value for k in node.kwargs))
    if isinstance(node, ast.BinOp):
        return (node.left, node.right)
    if isinstance(node, ast.Unary):
        return (node.operand,)
    if isinstance(node, ast.Conditional):
        return (node.then, node.cond, node.otherwise)
    if isinstance(node, ast.ListExpr):
        return node.items
    if isinstance(node, ast.Subscript):
        return (node.value,)
    return ()


def _leading_name(span: Span, name: str) -> Span:
    """A const, a parameter and `name = ...` start with their name."""
    return Span(span.source, span.line, span.col, span.line, span.col + len(name))


def _trailing_name(span: Span, name: str) -> Span:
    """`... as name` ends with its name."""
    return Span(span.source, span.end_line, span.end_col - len(name), span.end_line,
                span.end_col)
