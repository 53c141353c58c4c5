"""Probes: the model built again with one hyperparameter changed at a time.

The IR holds values, not the expressions that made them. Building the model once more per
numeric hyperparameter (doubled, or halved for a float) shows which numbers of each class
follow which hyperparameter: a number that doubles with `d` while nothing else moves is `d`
(or `4 * d`), even where `d` and `heads` happen to be equal. A probe that does not build
(a size that no longer divides) is left out; what it would have told stays undecided.

A probe may build at most a quarter more layers than the spec (and a thousand): doubling a
repeat count of a deep model would build it twice over and take most of the compile. The
layer floor refuses such a probe before building it, and the hyperparameter is halved
instead, which tells as much about the layers both builds have.
"""

from __future__ import annotations

from nnspec.ir.arithmetic import is_number
from nnspec.ir.build import Builder
from nnspec.ir.graph import Graph


def probe_values(value) -> list:
    """The changed values of one hyperparameter to try in turn: far from the original,
    same kind; the second (smaller) where the first builds too many layers."""
    if isinstance(value, int):
        return [2 * value, value // 2] if value >= 2 else [2 * value if value else 3]
    return [value / 2] if value else [0.25]


def probe_budget(layers: int) -> int:
    """The most layers a probe of a model of `layers` layers may build."""
    return layers + layers // 4 + 1000


def probes(program, model: str, hyper: dict, overrides: dict, layers: int) -> list[Graph]:
    """The model's graph with each numeric hyperparameter changed in turn (`hyper`: the
    values it was built with, `overrides`: those the user set, which stay set; `layers`:
    the spec's layer count); builds with errors are left out."""
    graphs = []
    for name, value in hyper.items():
        if not is_number(value):
            continue
        for other in probe_values(value):
            builder = Builder(program, probe_budget(layers))
            graph = builder.build_model(model, {**overrides, name: other})
            errors = {d.code for d in builder.diagnostics if d.severity == "error"}
            if not errors and all(n.type is not None for n in graph.nodes):
                graphs.append(graph)
            if errors != {"E401"}:
                break  # built, or failed for a reason a smaller value would not cure
    return graphs
