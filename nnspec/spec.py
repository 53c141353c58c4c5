"""A checked model, ready for the backends: `load` and `load_text` raise `SpecError` with
every error of the file; `check_text` returns the diagnostics instead (for `nnspec check`).
All three go through the one front end, `nnspec.frontend.analyze`. Notes such as the fused
softmax travel with the loaded `Spec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnspec.diagnostics import Diagnostic, SpecError
from nnspec.frontend import Analysis, analyze, analyze_file
from nnspec.ir.graph import Graph
from nnspec.ir.graph_builder import MAX_LAYERS
from nnspec.ir.train import TrainConfig
from nnspec.syntax import ast


@dataclass
class Spec:
    program: ast.Program
    graph: Graph
    train: TrainConfig | None
    notes: list[Diagnostic] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_analysis(cls, analysis: Analysis) -> Spec:
        """The model an analysis was asked for; SpecError with its errors if it has any."""
        if analysis.errors:
            raise SpecError(list(analysis.errors))
        graph = analysis.graph
        graph.verify()
        notes = [d for d in analysis.diagnostics if d.severity != "error"]
        return cls(analysis.program, graph, analysis.trains.get(analysis.model), notes,
                   dict(analysis.overrides))

    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def source(self):
        return self.program.source

    def __repr__(self) -> str:
        """Short, for notebooks: `Spec(name='DigitsMLP', 1 input [64], 7 layers, 9,610
        params)` (the dataclass's own repr would print the whole source)."""
        graph = self.graph
        inputs = [graph.node(name) for name in graph.inputs]
        shown = ", ".join(_type_text(node.type) for node in inputs[:3])
        more = ", ..." if len(inputs) > 3 else ""
        layers = sum(node.op not in ("input", "scalar") for node in graph.nodes)
        params = sum(math.prod(p.spec.shape) for p in graph.params.values() if p.spec.trainable)
        noun = "input" if len(inputs) == 1 else "inputs"
        return (f"Spec(name={self.name!r}, {len(inputs)} {noun} {shown}{more}, "
                f"{layers} layers, {params:,} params)")

    def summary(self, depth: int | None = None):
        from nnspec.summary import summarize

        return summarize(self.graph, depth=depth)

    def to_dot(self, **options) -> str:
        from nnspec.backends.graphviz import to_dot

        return to_dot(self, **options)

    def _repr_svg_(self) -> str:
        from nnspec.backends.graphviz import render_svg

        return render_svg(self)


def load_text(text: str, path: str = "<string>", model: str | None = None,
              overrides: dict[str, Any] | None = None, *, max_layers: int = MAX_LAYERS) -> Spec:
    """Parse and build one model (the trained one, else the last); raise SpecError on errors."""
    return Spec.from_analysis(analyze(text, path, model, overrides, max_layers=max_layers))


def load(path: str | Path, model: str | None = None,
         overrides: dict[str, Any] | None = None, *, max_layers: int = MAX_LAYERS) -> Spec:
    """Load a `.nn` file; raise SpecError (every error, with spans) if it does not check."""
    return Spec.from_analysis(analyze_file(path, model, overrides, max_layers=max_layers))


def check_text(text: str, path: str = "<string>", *, max_layers: int = MAX_LAYERS
               ) -> list[Diagnostic]:
    """Every diagnostic of a file: all models and train sections are built."""
    return list(analyze(text, path, every_model=True, max_layers=max_layers).diagnostics)


def _type_text(tensor) -> str:
    dtype = "int" if tensor.dtype.startswith("int") else ""
    return dtype + "[" + ", ".join(str(d) for d in tensor.shape) + "]"
