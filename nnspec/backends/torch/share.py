"""Sharing: which units become one class (or function), and which of their numbers become
constructor (or function) arguments.

Units that read the same up to their numbers join one group, and so do the uses of one
block that build different layers where `variants.py` finds one form for them; each group
becomes one `Definition` (`parameterise.py`: the numbers that differ become arguments,
named after the spec's hyperparameter that holds them when there is one, else after what
they are). Every decision is made here, children before parents, so that printing only
lays out text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from nnspec.backends.torch import variants
from nnspec.backends.torch.lists import fold, fold_units
from nnspec.backends.torch.names import Namespace
from nnspec.backends.torch.parameterise import Context, Definition, Parameterise, shape_text
from nnspec.backends.torch.source import Instance, flat, layout
from nnspec.backends.torch.structure import spec_definition
from nnspec.backends.torch.units import Unit, UnitKey

_LOCAL_PATTERN = re.compile(r"(x|h\d*|y|z|x\d+|block\d*|layer\d*|pred|target)\Z")


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


def share(units: list[Unit], context: Context, names: Globals,
          probes: tuple[list[Unit], ...] = ()) -> list[Definition]:
    """The definitions of the file, in `units`' order of first appearance (children first).
    `probes` are the model's units built again with a hyperparameter changed (see
    `probe.py`): they tell which numbers follow which hyperparameter. Claims each
    definition's name in `names`."""
    order = [u.key for u in units]
    raw = {u.key: u for u in units}
    folded = fold_units(raw, order)
    probe_raw = [{u.key: u for u in p} for p in probes]
    probe_folded = [fold_units(table, [u.key for u in p]) for table, p in zip(probe_raw, probes)]
    groups, group_of = _group(order, raw, folded, {})
    plans, reasons = _plans(groups, context)
    if plans:
        family = {m.key: m.region.label for g in groups for m in g
                  if m.region.kind == "block" and m.region.label in plans}
        groups, group_of = _group(order, raw, folded, family)
    definitions: list[Definition] = []
    by_unit: dict[UnitKey, Definition] = {}
    for members in _children_first(groups, group_of):
        label = members[0].region.label if members[0].region.kind == "block" else None
        if label in plans:
            builds = [_conformed(table, members, plans[label], context, b)
                      for b, table in enumerate([raw, *probe_raw])]
        elif len({shape_text(folded[m.key]) for m in members}) == 1:
            builds = [folded, *probe_folded]
        else:
            builds = [raw, *probe_raw]
        members = [builds[0][m.key] for m in members]
        definition = Parameterise(members, context, names, by_unit, builds,
                                   reasons.get(label)).definition()
        definitions.append(definition)
        for member in members:
            by_unit[member.key] = definition
    return definitions


def _group(order: list[UnitKey], raw: Mapping[UnitKey, Unit], folded: Mapping[UnitKey, Unit],
           family: Mapping[UnitKey, str]) -> tuple[list[list[Unit]], dict[UnitKey, int]]:
    """Units that read alike, children first; the units in `family` join their block's
    one group whatever their text."""
    groups: dict[tuple, list[Unit]] = {}
    group_of: dict[UnitKey, int] = {}
    index: dict[tuple, int] = {}
    # each group's distinct texts, folded and raw: kept as members join, so that a unit
    # is compared with its group in one look-up (a deep repeat has thousands of members)
    folded_texts: dict[tuple, set[str]] = {}
    raw_texts: dict[tuple, set[str]] = {}
    for key in order:
        unit = raw[key]
        if key in family:
            sharing: tuple = ("variants", family[key])
        else:
            sharing = _sharing_key(unit, group_of)
            folded_text, raw_text = shape_text(folded[key]), shape_text(unit)
            if folded_texts.get(sharing, set()) | {folded_text} != {folded_text} and \
                    raw_texts.get(sharing, set()) | {raw_text} != {raw_text}:
                sharing += (raw_text,)  # folds in one use and not another
            folded_texts.setdefault(sharing, set()).add(folded_text)
            raw_texts.setdefault(sharing, set()).add(raw_text)
        if sharing not in groups:
            index[sharing] = len(groups)
            groups[sharing] = []
        group_of[key] = index[sharing]
        groups[sharing].append(unit)
    return list(groups.values()), group_of


def _plans(groups: list[list[Unit]], context: Context
           ) -> tuple[dict[str, variants.Plan], dict[str, str]]:
    """For each block whose uses make several groups: how they are one class, or why not."""
    by_label: dict[str, list[list[Unit]]] = {}
    for g in groups:
        if g[0].region.kind == "block" and g[0].kind == "class":
            by_label.setdefault(g[0].region.label, []).append(g)
    plans, reasons = {}, {}
    for label, family in by_label.items():
        if len(family) < 2:
            continue
        definition = spec_definition(context.program, family[0][0].region)
        found = variants.plan(family, definition,
                              lambda u, d=definition: _use_env(u, context, 0, d))
        if isinstance(found, str):
            reasons[label] = found
        else:
            plans[label] = found
    return plans, reasons


def _use_env(unit: Unit, context: Context, build: int, definition) -> dict:
    scopes = (context.build_scopes[build] if context.build_scopes and unit.key.graph == "model"
              else context.scopes[unit.key.graph])
    scope = scopes.get(unit.region.path)
    return variants.use_env(unit, dict(scope.params) if scope else {}, definition)


def _conformed(table: Mapping[UnitKey, Unit], members: list[Unit], plan: variants.Plan,
               context: Context, build: int) -> dict[UnitKey, Unit]:
    """The members of a block's one group in that build, each in the plan's form."""
    definition = spec_definition(context.program, members[0].region)
    out = {}
    for m in members:
        unit = table.get(m.key)
        if unit is not None:
            out[m.key] = variants.conform(unit, plan, _use_env(unit, context, build,
                                                               definition)) or unit
    return out


def _children_first(groups: list[list[Unit]], group_of: Mapping[UnitKey, int]
                    ) -> list[list[Unit]]:
    """Groups ordered so that each comes after the groups of the units it uses."""
    done: list[int] = []

    def visit(i: int) -> None:
        if i in done:
            return
        for member in groups[i]:
            for child in member.children:
                visit(group_of[child])
        done.append(i)

    for i in range(len(groups)):
        visit(i)
    return [groups[i] for i in done]


def _sharing_key(unit: Unit, group_of: Mapping[UnitKey, int]) -> tuple:
    """Units share a definition when their text agrees with every number blanked out and
    every instance named by its callee's definition."""
    def key_text(item):
        if isinstance(item, Instance):
            inner = ", ".join(flat(a, key_text) for a in item.call_args)
            return f"<{group_of[item.unit]}>({inner})"
        return "\0"

    init = fold(unit.init, key_text)
    text = ", ".join(unit.params) + "\n" + "\n".join(layout(init + unit.forward, key_text))
    return unit.kind, unit.region.kind, unit.region.label, text


