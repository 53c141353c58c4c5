"""Layouts: how a checkpoint's names and tensor layouts map to a spec's parameters.

A layout is a short text file of rules, read top to bottom, so converting a model family's
checkpoints is declared once, not programmed per model:

    # nnspec name                   <- checkpoint name(s)                          how
    h.{i}.attn.in_proj_weight       <- transformer.h.{i}.attn.c_attn.weight        transpose
    wte.weight                      <- transformer.wte.weight | lm_head.weight
    {l}.attention.self.in_proj_{p}  <- {l}.attention.self.query.{p}, {l}.attention.self.key.{p},
                                       {l}.attention.self.value.{p}
    {name}                          <- transformer.{name}
    ignore                             transformer.h.{i}.attn.masked_bias

`{x}` stands for any non-empty text; what it matched on the left is put in on the right.
The first rule whose left side matches a parameter decides its names; a parameter no rule
matches keeps its own name. Several sources separated by commas are concatenated along the
first axis on import and split back into equal parts on export (packed and separate q/k/v);
`transpose` swaps the last two axes of each part (Hugging Face's `Conv1D` stores a linear
layer's weight as [in, out]). Alternatives separated by `|` are the same tensor under several
names (a tied weight): imported from the first the file has, exported under each. Several
spec names on the left share one checkpoint tensor: it is cut along the first axis at the
spec's sizes (unequal for grouped-query q/k/v) and packed again on export. `ignore` names
checkpoint tensors that the spec does not need.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
TRANSFORMS = ("transpose",)


class LayoutError(ValueError):
    """A layout file that does not read; `line` is 1-based (0: the whole file)."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern

    @classmethod
    def parse(cls, text: str) -> Pattern:
        parts, last = [], 0
        seen: set[str] = set()
        for match in PLACEHOLDER.finditer(text):
            parts.append(re.escape(text[last:match.start()]))
            name = match.group(1)
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
            seen.add(name)
            last = match.end()
        parts.append(re.escape(text[last:]))
        return cls(text, re.compile("".join(parts) + r"\Z"))

    @property
    def names(self) -> set[str]:
        return set(PLACEHOLDER.findall(self.text))

    def match(self, name: str) -> dict[str, str] | None:
        found = self.regex.match(name)
        return found.groupdict() if found else None

    def fill(self, values: Mapping[str, str]) -> str:
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


@dataclass(frozen=True)
class Rule:
    targets: tuple[Pattern, ...]  # the spec's parameter name(s): several share one tensor
    choices: tuple[tuple[Pattern, ...], ...]  # names of one tensor; each: parts to concatenate
    transpose: bool
    line: int

    @property
    def target(self) -> Pattern:
        return self.targets[0]


@dataclass(frozen=True)
class Layout:
    rules: tuple[Rule, ...] = ()
    ignored: tuple[Pattern, ...] = ()
    path: str = "(no layout)"

    def route(self, param: str) -> tuple[Rule | None, list[list[str]]]:
        """The first rule matching `param` and the checkpoint names it gives (alternatives,
        each a list of parts); no rule and the parameter's own name when none matches."""
        rule, values, _ = self._match(param)
        if rule is None:
            return None, [[param]]
        return rule, [[p.fill(values) for p in parts] for parts in rule.choices]

    def siblings(self, param: str) -> tuple[list[str], int]:
        """The spec names that share `param`'s checkpoint tensor (a rule with several names on
        the left: packed q/k/v cut into the spec's parts), and `param`'s place among them."""
        rule, values, index = self._match(param)
        if rule is None or len(rule.targets) == 1:
            return [param], 0
        return [t.fill(values) for t in rule.targets], index

    def _match(self, param: str):
        for rule in self.rules:
            for index, target in enumerate(rule.targets):
                values = target.match(param)
                if values is not None:
                    return rule, values, index
        return None, None, 0

    def is_ignored(self, name: str) -> bool:
        return any(p.match(name) is not None for p in self.ignored)


def read_layout(path: str | Path) -> Layout:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LayoutError(str(path), 0, f"cannot read the layout ({error})") from None
    return parse_layout(text, str(path))


def parse_layout(text: str, path: str = "<layout>") -> Layout:
    rules: list[Rule] = []
    ignored: list[Pattern] = []
    for number, line in _logical_lines(text):
        if line.startswith("ignore ") or line == "ignore":
            names = line[len("ignore"):].split()
            if not names:
                raise LayoutError(path, number, "`ignore` needs the checkpoint names to skip")
            ignored += [Pattern.parse(n) for n in names]
            continue
        target, arrow, rest = line.partition("<-")
        targets = [t.strip() for t in target.split(",")]
        if not arrow or any(not t or len(t.split()) != 1 for t in targets):
            raise LayoutError(path, number, "a rule reads `nnspec_name <- checkpoint_name "
                              "[, more names] [transpose]`")
        rest = rest.strip()
        head, _, last = rest.rpartition(" ")
        transpose = last in TRANSFORMS
        if transpose:
            rest = head
        choices = [[part.strip() for part in choice.split(",")] for choice in rest.split("|")]
        if any(not part or len(part.split()) != 1 for choice in choices for part in choice):
            raise LayoutError(path, number, "checkpoint names are separated by `,` (parts to "
                              "concatenate) or `|` (names of one tensor); the only transform "
                              f"is {', '.join(TRANSFORMS)}")
        if len({len(choice) for choice in choices}) != 1:
            raise LayoutError(path, number, "each alternative after `|` needs as many parts")
        if len(targets) > 1 and any(len(choice) > 1 for choice in choices):
            raise LayoutError(path, number, "several spec names share one checkpoint tensor: "
                              "it takes one name on the right")
        rule = Rule(tuple(Pattern.parse(t) for t in targets),
                    tuple(tuple(Pattern.parse(p) for p in choice) for choice in choices),
                    transpose, number)
        given = [p.names for choice in rule.choices for p in choice]
        unknown = set().union(*given) - set.intersection(*(t.names for t in rule.targets))
        if unknown:
            raise LayoutError(path, number, f"`{{{min(unknown)}}}` is not on the left "
                              "of `<-`, so nothing gives its value")
        rules.append(rule)
    return Layout(tuple(rules), tuple(ignored), path)


def _logical_lines(text: str):
    """(first line number, text) of each rule; a line ending in `,` continues on the next."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not pending:
            start = number
        pending = f"{pending} {line}".strip()
        if not pending.endswith(","):
            yield start, pending
            pending = ""
    if pending:
        yield start, pending


# ---- converting -----------------------------------------------------------------------------


@dataclass
class Differences:
    """What keeps a checkpoint from fitting a spec, row by row for a table."""

    missing: list[tuple[str, str]] = field(default_factory=list)  # (spec name, file names)
    unexpected: list[tuple[str, tuple]] = field(default_factory=list)  # (file name, shape)
    mismatched: list[tuple[str, tuple, tuple, str]] = field(default_factory=list)
    # (spec name, spec shape, shape the file gives, file names)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(problem, name in the spec, name in the file, detail) for each difference."""
        rows = [("missing", name, files, "not in the file") for name, files in self.missing]
        rows += [("shape", name, files, f"spec {list(want)}, file gives {list(got)}")
                 for name, want, got, files in self.mismatched]
        rows += [("unexpected", "-", name, f"{list(shape)}, no parameter takes it")
                 for name, shape in self.unexpected]
        return rows

    def table(self) -> str:
        """The rows as a plain-text table, with a count line."""
        header = ("problem", "spec name", "checkpoint name", "detail")
        rows = self.rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                 for row in [header, *rows]]
        count = (f"  {len(self.missing)} missing, {len(self.mismatched)} of another shape, "
                 f"{len(self.unexpected)} unexpected")
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], count])


def to_spec(tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple],
            layout: Layout, skip=lambda name: False) -> tuple[dict[str, np.ndarray], Differences]:
    """A checkpoint's tensors under the spec's names and layouts (`shapes`: the spec's
    parameters), and every difference; parameters for which `skip` is true are not looked
    for (they keep a fresh initialisation), and the file's tensors they would take are not
    reported as unexpected."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    problems = Differences()
    for param, want in shapes.items():
        rule, choices = layout.route(param)
        for names in choices:
            used.update(names)
        if skip(param):
            continue
        names = next((names for names in choices if all(n in tensors for n in names)), None)
        if names is None:
            problems.missing.append((param, " | ".join(", ".join(c) for c in choices)))
            continue
        transpose = rule is not None and rule.transpose
        parts = [np.swapaxes(tensors[n], -1, -2) if transpose and tensors[n].ndim >= 2
                 else tensors[n] for n in names]
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        siblings, index = layout.siblings(param)
        if len(siblings) > 1:
            array = _cut(array, [shapes.get(s) for s in siblings], index)
        if tuple(array.shape) != tuple(want):
            problems.mismatched.append((param, tuple(want), tuple(array.shape),
                                        ", ".join(names)))
            continue
        out[param] = np.array(array, order="C")
    problems.unexpected = [(name, tuple(tensors[name].shape)) for name in tensors
                           if name not in used and not layout.is_ignored(name)]
    return out, problems


def _cut(array: np.ndarray, shapes: list, index: int) -> np.ndarray:
    """Part `index` of a packed tensor cut along the first axis into the spec's parts
    (of unequal sizes: grouped-query q/k/v); the whole when the sizes do not add up, so
    the shape check reports it."""
    if any(s is None or not s for s in shapes) or sum(s[0] for s in shapes) != array.shape[0]:
        return array
    start = sum(s[0] for s in shapes[:index])
    return array[start:start + shapes[index][0]]


def from_spec(arrays: Mapping[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """The spec's weights under the checkpoint's names and layouts: the inverse of
    `to_spec` (a tied weight written under each of its names; parts packed again)."""
    out: dict[str, np.ndarray] = {}
    for param, array in arrays.items():
        siblings, index = layout.siblings(param)
        if len(siblings) > 1:
            if index != 0:
                continue  # written with the first part
            missing = [s for s in siblings if s not in arrays]
            if missing:
                raise ValueError(f"`{param}` is packed with `{missing[0]}`, which the "
                                 "weights do not have")
            array = np.concatenate([arrays[s] for s in siblings], axis=0)
        rule, choices = layout.route(param)
        for names in choices:
            if len(names) > 1 and array.shape[0] % len(names):
                raise ValueError(f"`{param}` {list(array.shape)} does not split into "
                                 f"{len(names)} equal parts (layout line {rule.line})")
            parts = np.split(array, len(names), axis=0) if len(names) > 1 else [array]
            for name, part in zip(names, parts):
                if rule is not None and rule.transpose and part.ndim >= 2:
                    part = np.swapaxes(part, -1, -2)
                out[name] = np.array(part, order="C")
    return out
