"""Probes: the model built again with one hyperparameter changed at a time.

The IR holds values, not the expressions that made them. Building the model once more per
numeric hyperparameter (doubled, or halved for a float) shows which numbers of each class
follow which hyperparameter: a number that doubles with `d` while nothing else moves is `d`
(or `4 * d`), even where `d` and `heads` happen to be equal. A probe that does not build
(a size that no longer divides) is left out; what it would have told stays undecided.
"""

from __future__ import annotations

from nnspec.ir.arithmetic import is_number
from nnspec.ir.build import Builder
from nnspec.ir.graph import Graph

PROBE_MAX_LAYERS = 1_000_000


def probe_value(value):
    """The changed value of one hyperparameter: far from the original, same kind."""
    if isinstance(value, int):
        return 2 * value if value else 3
    return value / 2 if value else 0.25


def probes(program, model: str, hyper: dict, overrides: dict) -> list[Graph]:
    """The model's graph with each numeric hyperparameter changed in turn (`hyper`: the
    values it was built with, `overrides`: those the user set, which stay set); builds with
    errors are left out."""
    graphs = []
    for name, value in hyper.items():
        if not is_number(value):
            continue
        builder = Builder(program, PROBE_MAX_LAYERS)
        graph = builder.build_model(model, {**overrides, name: probe_value(value)})
        if any(d.severity == "error" for d in builder.diagnostics) \
                or any(n.type is None for n in graph.nodes):
            continue
        graphs.append(graph)
    return graphs
