"""Sharing: which units become one class (or function), and which of their numbers become
constructor (or function) arguments.

Units that read the same up to their numbers join one `Definition`; the numbers that differ
between them become arguments, named after the spec's hyperparameter that holds them when
there is one, else after what they are (`in_channels`, `out_channels`). Every decision is
made here, children before parents, so that printing only lays out text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from nnspec.backends.torch.lower import Unit, UnitKey, UnitKind
from nnspec.backends.torch.names import Namespace, checked_identifier, literal
from nnspec.backends.torch.source import Instance, Num, Stmt, flat, layout, substitute, walk
from nnspec.backends.torch.structure import GraphKind, Region, spec_definition
from nnspec.ir.graph import Scope
from nnspec.syntax import ast

_USUAL_DIMS = {1: ("F",), 2: ("T", "F"), 3: ("C", "H", "W")}
_LOCAL_PATTERN = re.compile(r"(x|h\d*|y|z|x\d+|block\d*|layer\d*|pred|target)\Z")


@dataclass(frozen=True)
class Definition:
    """One class or function of the output, ready to print: its name, its arguments and its
    statements as text, and the units it stands for with each one's arguments."""

    kind: UnitKind
    name: str
    region: Region  # its first unit's region
    members: tuple[Unit, ...]
    params: tuple[str, ...]  # constructor arguments (a function's arguments after tensors)
    forward_params: tuple[str, ...]  # forward's (or the function's tensor) arguments
    arguments: Mapping[UnitKey, tuple[Num, ...]]  # each member's values of `params`
    init: tuple  # statements, numbers and instances already text
    forward: tuple
    doc: tuple[str, ...]  # docstring: a summary line, then details


@dataclass(frozen=True)
class Context:
    """What sharing needs from the spec."""

    program: ast.Program
    file: str
    scopes: Mapping[GraphKind, Mapping[str, Scope]]  # each graph's scopes by path
    loss_line: int | None  # where the train section names its loss
    fused: bool  # the model's final softmax is fused into the loss


class Globals(Namespace):
    """Module-level names; they avoid every name a function body may use for a local."""

    def __init__(self, taken, locals_used):
        super().__init__(taken)
        self.locals_used = set(locals_used)

    def claim(self, wanted: str) -> str:
        name = wanted
        while _LOCAL_PATTERN.match(name) or name in self.locals_used:
            name += "_"
        return super().claim(name)


def share(units: list[Unit], context: Context, names: Globals) -> list[Definition]:
    """The definitions of the file, in `units`' order of first appearance (children first).
    Claims each definition's name in `names`."""
    groups: dict[tuple, list[Unit]] = {}
    group_of: dict[UnitKey, int] = {}
    index: dict[tuple, int] = {}
    for unit in units:
        key = _sharing_key(unit, group_of)
        if key not in groups:
            index[key] = len(groups)
            groups[key] = []
        group_of[unit.key] = index[key]
        groups[key].append(unit)
    definitions: list[Definition] = []
    by_unit: dict[UnitKey, Definition] = {}
    for members in groups.values():
        definition = _Parameterise(members, context, names, by_unit).definition()
        definitions.append(definition)
        for member in members:
            by_unit[member.key] = definition
    return definitions


def _sharing_key(unit: Unit, group_of: Mapping[UnitKey, int]) -> tuple:
    """Units share a definition when their text agrees with every number blanked out and
    every instance named by its callee's definition."""
    def key_text(item):
        if isinstance(item, Instance):
            inner = ", ".join(flat(a, key_text) for a in item.call_args)
            return f"<{group_of[item.unit]}>({inner})"
        return "\0"

    text = ", ".join(unit.params) + "\n" + "\n".join(layout(unit.init + unit.forward, key_text))
    return unit.kind, unit.region.kind, unit.region.label, text


class _Parameterise:
    """Turns the members of one group into a definition: which numbers vary, what their
    arguments are called, and the text of every number and instance."""

    def __init__(self, members: list[Unit], context: Context, names: Globals,
                 by_unit: Mapping[UnitKey, Definition]):
        self.members = members
        self.context = context
        self.names = names
        self.by_unit = by_unit

    def definition(self) -> Definition:
        first = self.members[0]
        name = self._name(first.region)
        columns = [self._numbers(m) for m in self.members]
        assert len({len(c) for c in columns}) == 1, "instances of one definition differ"
        vectors = list(zip(*columns))  # each number of the definition, member by member
        varying: dict[tuple, int] = {}  # the values of a varying number -> its argument
        hints: list[list[tuple[str, bool]]] = []
        firsts: list[int] = []  # where each argument first occurs
        for j, nums in enumerate(vectors):
            values = _key(nums)
            if nums[0].comment or len(set(values)) == 1:
                continue
            if values not in varying:
                varying[values] = len(hints)
                hints.append([])
                firsts.append(j)
            hints[varying[values]].append((nums[0].hint, nums[0].primary))
        arg_names = self._param_names(hints, self._spec_names(varying))
        texts = [self._text(nums, varying, arg_names) for nums in vectors]
        stored = self._stored_in_forward(first, vectors, texts, arg_names)
        arguments = {member.key: tuple(Num(vectors[j][m].value, arg_names[i])
                                       for i, j in enumerate(firsts))
                     for m, member in enumerate(self.members)}
        item_texts = iter(self._item_texts(texts))
        init = substitute(first.init, item_texts)
        forward = substitute(first.forward, item_texts)
        init = tuple(Stmt(f"self.{arg}", (arg,)) for arg in stored) + init
        forward_params = first.params
        if first.region.kind == "model" and self.context.fused:
            forward_params += ("return_logits=False",)
        return Definition(first.kind, name, first.region, tuple(self.members), tuple(arg_names),
                          forward_params, arguments, init, forward, tuple(self._docstring()))

    def _stored_in_forward(self, first: Unit, vectors: list[tuple[Num, ...]], texts: list[str],
                           names: list[str]) -> list[str]:
        """A class's `forward` reads its constructor arguments as attributes (`self.C`):
        rewrites those texts in place and returns the arguments to store."""
        if first.kind != "class":
            return []
        init_count = len(self._numbers(first, [first.init]))
        stored = []
        for j in range(init_count, len(texts)):
            if texts[j] in names and not vectors[j][0].comment:
                if texts[j] not in stored:
                    stored.append(texts[j])
                texts[j] = f"self.{texts[j]}"
        return stored

    def _name(self, region: Region) -> str:
        if region.kind == "model":
            return self.names.claim(region.label)
        if region.kind == "loss":
            return "loss_fn"
        return self.names.claim(checked_identifier(region.label))

    def _numbers(self, member: Unit, parts=None) -> list[Num]:
        """Every number of a unit (or of some of its `parts`) in `walk`'s order, an instance's
        arguments in its place."""
        out = []
        for item in walk([member.init, member.forward] if parts is None else parts):
            if isinstance(item, Instance):
                out += self.by_unit[item.unit].arguments[item.unit]
            else:
                out.append(item)
        return out

    def _text(self, nums: tuple[Num, ...], varying: dict[tuple, int], names: list[str]) -> str:
        values = _key(nums)
        if nums[0].comment:
            return self._comment_dim(nums, varying, names)
        if len(set(values)) == 1:
            return literal(nums[0].value)
        return names[varying[values]]

    def _item_texts(self, texts: list[str]) -> list[str]:
        """The text of each number and instance of the first member, in `walk`'s order
        (`texts` has one entry per number, an instance's arguments in its place)."""
        out = []
        at = 0
        member = self.members[0]
        for item in walk([member.init, member.forward]):
            if isinstance(item, Instance):
                callee = self.by_unit[item.unit]
                count = len(callee.arguments[item.unit])
                tensors = [flat(a, lambda n: literal(n.value)) for a in item.call_args]
                out.append(f"{callee.name}({', '.join(tensors + texts[at:at + count])})")
                at += count
            else:
                out.append(texts[at])
                at += 1
        return out

    def _param_names(self, hints: list[list[tuple[str, bool]]],
                     spec_names: dict[int, str]) -> list[str]:
        """Name each varying number after the spec's hyperparameter that holds it, else after
        what it is; a number that is both a layer's input and output width (`in_channels`
        and `out_channels`) is just `channels`."""
        scope = Namespace(self.names.taken | {"self"})
        names = []
        for index, group in enumerate(hints):
            seen = [h for h, _ in group]
            wanted = spec_names.get(index) or next(
                (h[3:] for h in seen if h.startswith("in_") and f"out_{h[3:]}" in seen), None)
            if wanted is None:
                wanted = next((h for h, primary in group if primary), seen[0])
            names.append(scope.claim(wanted))
        return names

    def _spec_names(self, varying: dict[tuple, int]) -> dict[int, str]:
        """Varying numbers whose values, instance by instance, are exactly one of the
        block's or fn's hyperparameters take that hyperparameter's name."""
        scopes = []
        for member in self.members:
            scope = self.context.scopes[member.key.graph].get(member.region.path)
            if scope is None or not scope.params:
                return {}
            scopes.append(dict(scope.params))
        candidates: dict[tuple, list[str]] = {}
        for name in scopes[0]:
            values = [s.get(name) for s in scopes]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                key = tuple((type(v).__name__, repr(v)) for v in values)
                candidates.setdefault(key, []).append(name)
        return {index: candidates[key][0] for key, index in varying.items()
                if len(candidates.get(key, ())) == 1}

    def _comment_dim(self, nums: tuple[Num, ...], varying: dict[tuple, int],
                     names: list[str]) -> str:
        """A dim in a shape comment of a shared class: its size when all uses agree, else
        the parameter or input dim (`H`, `H/2`) it follows, else `?`."""
        values = _key(nums)
        if len(set(values)) == 1:
            return _dim_text(nums[0].value)
        if values in varying:
            return names[varying[values]]
        raw = [n.value for n in nums]
        symbols = self._input_symbols()
        symbols.sort(key=lambda s: s[0] != nums[0].hint)  # the same position first: W, not H
        for _, symbol, dims in symbols:
            if dims == raw:
                return symbol
            if all(isinstance(d, int) and isinstance(v, int) and v for d, v in zip(dims, raw)):
                ratio = dims[0] // raw[0]
                if ratio > 1 and all(d // ratio == v or -(-d // ratio) == v
                                     for d, v in zip(dims, raw)):
                    return f"{symbol}/{ratio}"
        return "?"

    def _input_symbols(self) -> list[tuple[str, str, list]]:
        """Names for the dims of a class's one input, with each instance's sizes: the
        block's own (`input x: [C, H, W]`), else the usual letters for the input's rank."""
        types = [m.input_types for m in self.members]
        if any(len(t) != 1 for t in types):
            return []
        rank = types[0][0].rank
        names = list(_USUAL_DIMS.get(rank, ()))
        definition = spec_definition(self.context.program, self.members[0].region)
        if definition is not None and definition.kind == "block":
            declared = [s for s in definition.body if isinstance(s, ast.Input)]
            if len(declared) == 1 and declared[0].type is not None:
                names = [d.id if isinstance(d, ast.Name) else None
                         for d in declared[0].type.dims]
        return [(f"dim{j}", checked_identifier(name), [t[0].shape[j] for t in types])
                for j, name in enumerate(names[:rank]) if name is not None]

    def _docstring(self) -> list[str]:
        """A summary line (where the definition is in the spec), then details if any."""
        region = self.members[0].region
        file = self.context.file
        definition = spec_definition(self.context.program, region)
        where = file
        if definition is not None:
            where += f":{definition.name_span.line}"
        elif region.span is not None:
            where += f":{region.span.line}"
        paths = [m.region.path for m in self.members]
        details = []
        if len(paths) > 1:
            shown = ", ".join(paths[:3])
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            details.append(f"Used as {shown}{more}.")
        if region.kind == "model":
            return [f"`model {region.label}` of {where}."]
        if region.kind == "loss":
            doc = [f"The training loss of {file}:{self.context.loss_line}."]
            if self.context.fused:
                doc += ["`pred` are the logits, `model(x, return_logits=True)`: the model's",
                        "final softmax is fused into the loss, as nnspec trains it."]
            return doc
        if region.kind == "item":
            return [f"One copy of the layers repeated at {where}.", *details]
        return [f"`{region.kind} {region.label}` of {where}.", *details]


def _key(nums) -> tuple:
    return tuple((type(n.value).__name__, repr(n.value)) for n in nums)


def _dim_text(value) -> str:
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_+\-*/() ]+", text) else "?"
