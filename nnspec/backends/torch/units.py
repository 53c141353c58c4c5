"""The units of generated code: what lowering makes of each class or function instance
(`lower.py`) and what sharing reads (`share.py`, `parameterise.py`, `lists.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nnspec.backends.torch.structure import GraphKind, Region
from nnspec.ir.types import TensorType
from nnspec.syntax import ast

UnitKind = Literal["class", "function"]


@dataclass(frozen=True, order=True)
class UnitKey:
    """A class or function instance of the output: its graph and its region's path."""

    graph: GraphKind
    path: str


@dataclass(frozen=True)
class Unit:
    """One region written out with its numbers still as `Num`s; units that read the same up
    to those numbers share one class (or function)."""

    key: UnitKey
    region: Region
    kind: UnitKind
    params: tuple[str, ...]  # forward's tensor arguments
    input_types: tuple[TensorType, ...]
    init: tuple
    forward: tuple
    children: tuple[UnitKey, ...]  # units it instantiates or calls, in order of first use
    helpers: frozenset[str]  # module-level helper functions its code calls
    # each attribute that is an nn.Sequential (`self.conv`) -> where in the spec each of its
    # members comes from (line, column), so uses of a block can tell which members they share
    chains: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()


@dataclass(frozen=True)
class Context:
    """What lowering needs from outside the graph."""

    program: ast.Program
    file: str  # the spec's file name for comments
    local_taken: frozenset[str]  # names a function body must not use for a local


@dataclass(frozen=True)
class Root:
    """The graph's own unit (the model class or the loss function): its inputs, their
    names, its outputs (a tuple is returned when several) and how its code reads the
    training flag."""

    inputs: tuple[str, ...]
    names: tuple[str, ...]
    outputs: tuple[str, ...]
    training: str  # the expression of the training flag
    # the node `return_logits` returns before the output is computed: the rewrite's
    # `logits` output of a softmax fused into the loss (`ir/rewrite.py:fuse_softmax`)
    logits: str | None = None


def unit_kind(region: Region) -> UnitKind:
    return "class" if region.role == "class" else "function"
