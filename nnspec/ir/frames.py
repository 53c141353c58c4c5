"""Evaluation scopes and how the things made in them are named.

A `Frame` is a model body, a block instance, a fn call or a repeat: its variables, its
path (the prefix of every node and parameter made in it, e.g. `encoder.0.attn`), the names
it has used, and the graph its nodes go to, so a model and its loss are built the same way
into graphs of their own.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from nnspec.ir.graph_builder import GraphBuilder

FrameKind = Literal["model", "block", "fn", "repeat", "const"]


@functools.cache  # one regex substitution per block name, not per instance
def snake(name: str) -> str:
    """`ResBlock` -> `res_block`: how an unlabelled block instance is named."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class Frame:
    """One evaluation scope: a model, a block instance, a fn call or a repeat."""

    path: str  # module prefix ("" at top level)
    vars: dict[str, Any]
    kind: FrameKind
    graph: GraphBuilder  # where the nodes made in this frame go
    counters: dict[str, int] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    containers: set[str] = field(default_factory=set)  # proper prefixes of dotted labels

    def clash(self, local: str) -> str | None:
        """The name already used here that `local` would collide with in the weights: the
        same name, or one that is a container of the other (`layer1` and `layer1.0`)."""
        if local in self.used or local in self.containers:
            return next((u for u in sorted(self.used)
                         if u == local or u.startswith(local + ".")), local)
        parts = local.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut])
            if prefix in self.used:
                return prefix
        return None

    def take(self, local: str) -> None:
        self.used.add(local)
        parts = local.split(".")
        self.containers.update(".".join(parts[:cut]) for cut in range(1, len(parts)))

    def qualify(self, local: str) -> str:
        return f"{self.path}.{local}" if self.path else local

    def fresh(self, base: str) -> str:
        number = self.counters.get(base, 0)
        while True:
            number += 1
            local = f"{base}_{number}"
            if local not in self.used:
                self.counters[base] = number
                return local

    def inner(self, path: str, kind: FrameKind) -> Frame:
        return Frame(path, {}, kind, self.graph)


def constant_frame() -> Frame:
    """A frame for top-level values (constants, train settings): no layer is applied in it
    for a model, so its graph is thrown away."""
    return Frame("", {}, "const", GraphBuilder("const"))
