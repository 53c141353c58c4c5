"""Module lists of equal items as comprehensions whose length is a number like any other.

`nn.ModuleList([Block(...) for _ in range(n)])` must read the same whether the spec repeats
its block 12 or 24 times, so that the count can become an expression of the spec
(`config.layers`) and a model built again with another count still matches this one. A list
folds when its items are equal in value: the same text, numbers and, for instances of
generated classes, the same instance text all the way down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from nnspec.backends.torch.source import Block, Group, Instance, Num, Stmt, expr, flat, layout
from nnspec.backends.torch.units import Unit, UnitKey


def fold_units(units: Mapping[UnitKey, Unit], order: list[UnitKey]) -> dict[UnitKey, Unit]:
    """Every unit with its foldable module lists folded; `order` lists children first."""
    values: dict[UnitKey, str] = {}
    out: dict[UnitKey, Unit] = {}

    def value_text(item) -> str:
        if isinstance(item, Instance):
            inner = ", ".join(flat(a, value_text) for a in item.call_args)
            return f"<{values.get(item.unit, '?')}>({inner})"
        return f"{type(item.value).__name__}:{item.value!r}"

    for key in order:
        unit = units[key]
        init = fold(unit.init, value_text)
        folded = replace(unit, init=init)
        values[key] = "\n".join(layout(folded.init + folded.forward, value_text))
        out[key] = folded
    return out


def fold(node, value_text: Callable):
    """`node` with each module list whose items read the same under `value_text` folded."""
    if isinstance(node, Group):
        items = tuple(fold(i, value_text) for i in node.items)
        node = replace(node, prefix=fold(node.prefix, value_text), items=items)
        if node.fold_equal and items and len({_item_text(i, value_text) for i in items}) == 1:
            count = expr("for _ in range(", Num(len(items), "count"), ")")
            return Group((), "[", (items[0], count), "]", comprehension=True)
        return node
    if isinstance(node, tuple):
        return tuple(fold(i, value_text) for i in node)
    if isinstance(node, list):
        return [fold(i, value_text) for i in node]
    if isinstance(node, Stmt):
        return replace(node, value=fold(node.value, value_text))
    if isinstance(node, Block):
        return replace(node, body=fold(node.body, value_text))
    return node


def _item_text(item, value_text: Callable) -> str:
    return "\n".join(layout([Stmt(None, item)], value_text))
