"""The front end as one call: text -> AST -> IR graph (+ checked train section).

`load` raises `SpecError` with every error of the file; `check_text` returns the
diagnostics instead (for `nnspec check` and editors). Notes such as the fused softmax
travel with the loaded `Spec`.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnspec.diagnostics import Diagnostic, DiagnosticError, SpecError
from nnspec.ir.build import Builder, pick_model
from nnspec.ir.graph import Graph
from nnspec.ir.train import TrainConfig, build_train
from nnspec.syntax import ast
from nnspec.syntax.parser import parse


@dataclass
class Spec:
    program: ast.Program
    graph: Graph
    train: TrainConfig | None
    notes: list[Diagnostic] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def source(self):
        return self.program.source

    def summary(self, depth: int | None = None):
        from nnspec.summary import summarize

        return summarize(self.graph, depth=depth)

    def to_dot(self, **options) -> str:
        from nnspec.backends.graphviz import to_dot

        return to_dot(self, **options)

    def _repr_svg_(self) -> str:
        from nnspec.backends.graphviz import render_svg

        return render_svg(self)


def _errors(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity == "error"]


def _build_one(builder: Builder, definition: ast.Definition, program: ast.Program,
               overrides: dict[str, Any] | None) -> tuple[Graph, TrainConfig | None]:
    graph = builder.build_model(definition.name, overrides)
    train = None
    for section in program.trains:
        if section.model == definition.name:
            train = build_train(builder, section, graph)
    return graph, train


def _check_train_targets(builder: Builder, program: ast.Program):
    models = {m.name for m in program.definitions("model")}
    from nnspec.diagnostics import did_you_mean

    for section in program.trains:
        if section.model not in models:
            builder.error("E200", f"train section for unknown model `{section.model}`",
                          section.model_span, did_you_mean(section.model, models))


@contextmanager
def _no_collector_pauses():
    """Compiling allocates hundreds of thousands of small objects (tokens, AST, IR) and no
    reference cycles, so the cyclic collector only rescans them: a quarter of the time of a
    10,000-layer check. It is paused while the front end runs and restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _too_deep(path: str) -> Diagnostic:
    """The builder recurses once per nesting level of an expression, so a thousand-term
    `a + b + ...` exhausts Python's stack: a diagnostic, not a crash."""
    return Diagnostic("E004", f"an expression in {path} nests too deeply to compile", None,
                      "split long sums or nested calls into named steps (`h = ...`)")


def load_text(text: str, path: str = "<string>", model: str | None = None,
              overrides: dict[str, Any] | None = None) -> Spec:
    """Parse and build one model (the trained one, else the last); raise SpecError on errors."""
    try:
        with _no_collector_pauses():
            return _load_text(text, path, model, overrides)
    except RecursionError:
        raise SpecError([_too_deep(path)]) from None


def _load_text(text: str, path: str, model: str | None,
               overrides: dict[str, Any] | None) -> Spec:
    program = parse(text, path)
    builder = Builder(program)
    _check_train_targets(builder, program)
    definition = pick_model(program, model)
    if builder.defs.get(definition.name) is not definition:
        raise SpecError(_errors(builder.diagnostics))  # its E120/E121 says why
    unknown = set(overrides or {}) - {p.name for p in definition.params}
    if unknown:
        name = min(unknown)
        from nnspec.diagnostics import did_you_mean

        raise SpecError([Diagnostic("E104", f"model `{definition.name}` has no hyperparameter "
                                    f"`{name}`", definition.name_span,
                                    did_you_mean(name, [p.name for p in definition.params]))])
    graph, train = _build_one(builder, definition, program, overrides)
    errors = _errors(builder.diagnostics)
    if errors:
        raise SpecError(errors)
    graph.verify()
    notes = [d for d in builder.diagnostics if d.severity != "error"]
    return Spec(program, graph, train, notes, dict(overrides or {}))


def load(path: str | Path, model: str | None = None,
         overrides: dict[str, Any] | None = None) -> Spec:
    """Load a `.nn` file; raise SpecError (every error, with spans) if it does not check."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (
            err.strerror or str(err))
        raise SpecError([Diagnostic("E000", f"cannot read {path}: {reason}", None)]) from None
    return load_text(text, str(path), model, overrides)


def check_text(text: str, path: str = "<string>") -> list[Diagnostic]:
    """Every diagnostic of a file: all models and train sections are built."""
    try:
        with _no_collector_pauses():
            return _check_text(text, path)
    except RecursionError:
        return [_too_deep(path)]


def _check_text(text: str, path: str) -> list[Diagnostic]:
    try:
        program = parse(text, path)
    except SpecError as err:
        return err.diagnostics
    builder = Builder(program)
    _check_train_targets(builder, program)
    models = program.definitions("model")
    if not models:
        builder.error("E103", f"{path} defines no model", None,
                      "add `model Name { input x: [..] ... }`")
    for definition in models:
        if builder.defs.get(definition.name) is not definition:
            continue  # a second `model Net` or a model named like an op: already reported
        try:
            _build_one(builder, definition, program, None)
        except DiagnosticError as err:
            builder.diagnostics.append(err.diagnostic)
    return _dedupe(builder.diagnostics)


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """A block used by two models reports its error once; errors come in file order."""
    seen, out = set(), []
    for d in diagnostics:
        key = (d.code, d.message, d.span and (d.span.line, d.span.col))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return sorted(out, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))
