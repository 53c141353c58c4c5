"""The IR: one node type, nodes in topological order, parameters named the PyTorch way.

A `Graph` is what every backend consumes. Nodes name their inputs by node name; each node
keeps the span of the spec text that made it, so any later stage can point at the user's
line. Parametric nodes own a `module` path (their `state_dict` prefix) and map local
parameter names (`weight`) to full ones (`encoder.0.attn.in_proj_weight`); tied or shared
layers map to the same full names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from nnspec.diagnostics import Span
from nnspec.ir.ops import Attrs, ParamSpec
from nnspec.ir.types import TensorType

ScopeKind = Literal["block", "repeat", "fn"]
BindingSource = Literal["output", "input", "target"]
_set = object.__setattr__  # how a frozen dataclass sets its fields


@dataclass(frozen=True, init=False)
class Scope:
    """A block instance, a repeat or a fn call, for summaries and diagram clusters."""

    path: str  # e.g. "blocks" or "blocks.3"
    kind: ScopeKind
    label: str  # block or fn name, or "repeat"
    span: Span | None = None
    count: int = 1  # for repeats
    inputs: tuple[tuple[str, str], ...] = ()  # (declared name, node bound to it), blocks/fns
    params: tuple[tuple[str, Any], ...] = ()  # the hyperparameters it was built with
    named: bool = False  # its last path part was given by the spec (`as enc`), not made up

    def __init__(self, path: str, kind: ScopeKind, label: str, span: Span | None = None,
                 count: int = 1, inputs: tuple = (), params: tuple = (), named: bool = False):
        # Two per block instance: the fields set in one step (see Node).
        _set(self, "__dict__", {"path": path, "kind": kind, "label": label, "span": span,
                                "count": count, "inputs": inputs, "params": params,
                                "named": named})


@dataclass(frozen=True, init=False)
class Node:
    name: str
    op: str  # an op of the catalogue, or "input"
    inputs: tuple[str, ...]
    attrs: Attrs
    type: TensorType | None  # None when its shape rule failed
    span: Span | None
    module: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # local -> full parameter name
    scope: str = ""  # the innermost Scope path that holds it ("" at top level)
    error: str | None = None
    named: bool = False  # its local name was given by the spec (an input, `as`, `f = ...`),
    #                      not made up by the builder (`relu_2`, a repeat's `3`)

    def __init__(self, name: str, op: str, inputs: tuple[str, ...], attrs: Attrs,
                 type: TensorType | None, span: Span | None, module: str | None = None,
                 params: dict[str, str] | None = None, scope: str = "",
                 error: str | None = None, named: bool = False):
        # One per layer: the fields set in one step, not eleven guarded assignments (the
        # frozen dataclass's own __init__ took a tenth of building a 10,000-layer chain).
        _set(self, "__dict__", {"name": name, "op": op, "inputs": inputs, "attrs": attrs,
                                "type": type, "span": span, "module": module,
                                "params": {} if params is None else params, "scope": scope,
                                "error": error, "named": named})


@dataclass(frozen=True, init=False)
class Param:
    name: str
    spec: ParamSpec
    owner: str  # the node that created it
    tied_from: tuple[str, ...] = ()  # other layers that use it

    def __init__(self, name: str, spec: ParamSpec, owner: str, tied_from: tuple[str, ...] = ()):
        _set(self, "__dict__", {"name": name, "spec": spec, "owner": owner,
                                "tied_from": tied_from})


@dataclass(frozen=True)
class Binding:
    """What feeds one input of a loss graph: a model output, a model input or a target of
    the data, by name."""

    node: str  # the loss graph's input node
    source: BindingSource
    name: str


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    params: dict[str, Param]
    inputs: list[str]
    outputs: list[str]
    scopes: dict[str, Scope]
    hyper: dict[str, Any]
    output_names: list[str] = field(default_factory=list)  # one per output, in order

    def node(self, name: str) -> Node:
        index = self.__dict__.get("_index")
        if index is None:  # made on first use: `nnspec check` never asks for a node
            index = self._index = {n.name: n for n in self.nodes}
        return index[name]

    def __post_init__(self):
        if len(self.output_names) != len(self.outputs):
            self.output_names = output_names([None] * len(self.outputs), self.inputs)

    @property
    def named_outputs(self) -> dict[str, str]:
        """Output name -> the node that gives it, in the spec's order (`recon`, `mu`, ...)."""
        return dict(zip(self.output_names, self.outputs))

    @property
    def output_type(self) -> TensorType | None:
        """The type of a single-output graph's output (the first one's when several)."""
        return self.node(self.outputs[0]).type

    def trainable(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if p.spec.trainable}

    def consumers(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n.name)
        return users

    def scope_chain(self, scope: str) -> list[str]:
        """Scope paths from the outermost down to `scope` itself."""
        chain = []
        path = scope
        while path:
            if path in self.scopes:
                chain.append(path)
            path = path.rsplit(".", 1)[0] if "." in path else ""
        return list(reversed(chain))

    def owned_param_count(self, node: Node) -> int:
        """Trainable values first created by this node (a tied or shared weight counts once,
        at its owner)."""
        total = 0
        for full in node.params.values():
            p = self.params[full]
            if p.owner == node.name and p.spec.trainable:
                total += math.prod(p.spec.shape)
        return total

    def check_weights(self, arrays) -> None:
        """Every parameter and buffer by name and shape, and nothing else; ValueError naming
        the first mismatch (weights from another spec are a user error, not a bug)."""
        expected = {n: tuple(p.spec.shape) for n, p in self.params.items()}
        missing = [n for n in expected if n not in arrays]
        unexpected = [n for n in arrays if n not in expected]
        if missing or unexpected:
            first = f"missing `{missing[0]}`" if missing else f"unexpected `{unexpected[0]}`"
            raise ValueError(f"the weights do not fit this model: {first} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected)")
        for name, shape in expected.items():
            got = tuple(arrays[name].shape)
            if got != shape:
                raise ValueError(f"the weights do not fit this model: `{name}` is "
                                 f"{list(got)} in the file but {list(shape)} in the model")

    def verify(self) -> None:
        """Internal invariants; a failure here is a compiler bug, not a user error."""
        seen: set[str] = set()
        for n in self.nodes:
            assert n.name not in seen, f"duplicate node {n.name}"
            for i in n.inputs:
                assert i in seen, f"{n.name} uses {i} before it is defined"
            for full in n.params.values():
                assert full in self.params, f"{n.name} refers to unknown parameter {full}"
            seen.add(n.name)
        for o in self.outputs:
            assert o in seen, f"unknown output {o}"
        assert len(set(self.output_names)) == len(self.outputs), "output names not unique"


def output_names(given: list[str | None], taken=()) -> list[str]:
    """Each output's name: the variable it was written as (`mu, logvar`) when no input or
    earlier output has that name, else a made-up `output`, `output_1`, ..."""
    names: list[str] = []
    used = set(taken)
    for name in given:
        if name is None or name in used:
            name = "output"
            i = 0
            while name in used:
                i += 1
                name = f"output_{i}"
        names.append(name)
        used.add(name)
    return names
