"""Parameterising: one group of units that read alike -> one `Definition`, its numbers
decided: the spec's parameters (or expressions of them: `4 * d`) where their values agree
use by use and build by build, more constructor arguments where no parameter gives them
(named after what they are: `in_channels`), literals where they never change; and the
shape comments' dims (`H/2`, `T`, `4 * d`). A number in a layer a use does not build
(`variants.UNKNOWN`) agrees with anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from nnspec.backends.torch.candidates import (
    Candidate,
    agrees,
    dim_candidates,
    key_of,
    key_values,
    monomials,
    param_candidates,
    spec_locals,
)
from nnspec.backends.torch.names import Namespace, checked_identifier, literal
from nnspec.backends.torch.signature import (
    default_expression,
    default_text,
    signature_of,
    trailing_defaults,
)
from nnspec.backends.torch.source import (
    Block,
    Instance,
    Num,
    Stmt,
    call,
    flat,
    layout,
    substitute,
    walk,
)
from nnspec.backends.torch.structure import GraphKind, Region, spec_definition
from nnspec.backends.torch.units import Unit, UnitKey, UnitKind
from nnspec.backends.torch.variants import UNKNOWN
from nnspec.ir.arithmetic import is_number
from nnspec.ir.graph import Scope
from nnspec.syntax import ast

_USUAL_DIMS = {1: ("F",), 2: ("T", "F"), 3: ("C", "H", "W")}


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
    # the arguments of the members in each build (0: the spec as given, then its probes)
    build_arguments: tuple[Mapping[UnitKey, tuple[Num, ...]], ...] = ()
    config: tuple[tuple[str, str], ...] = ()  # a model's config fields: (name, default text)
    config_name: str = ""


@dataclass(frozen=True)
class Context:
    """What sharing needs from the spec."""

    program: ast.Program
    file: str
    scopes: Mapping[GraphKind, Mapping[str, Scope]]  # each graph's scopes by path
    loss_line: int | None  # where the train section names its loss
    fused: bool  # the model's final softmax is fused into the loss
    # the model graph's scopes and hyperparameters in each build (0: as given, then probes)
    build_scopes: tuple[Mapping[str, Scope], ...] = ()
    build_hyper: tuple[Mapping[str, object], ...] = ()


def _blank(item) -> str:
    return "<>" if isinstance(item, Instance) else "\0"


def shape_text(unit: Unit) -> str:
    return "\n".join(layout(unit.init + unit.forward, _blank))



class Parameterise:
    """Turns the members of one group into a definition: which numbers are the spec's
    parameters or expressions of them, which become more arguments, and the text of every
    number and instance."""

    def __init__(self, members: list[Unit], context: Context, names: Namespace,
                 by_unit: Mapping[UnitKey, Definition], builds: list[Mapping[UnitKey, Unit]],
                 separate: str | None = None):
        """`separate`: why the block's uses could not be one class (said in the docstring)."""
        self.separate = separate
        self.members = members
        self.context = context
        self.names = names
        self.by_unit = by_unit
        self.first = members[0]
        self.spec = spec_definition(context.program, self.first.region)
        self.is_model = self.first.region.kind == "model"
        in_model = self.first.key.graph == "model"
        self.cells: list[tuple[Unit, int]] = []  # (the member's unit in a build, the build)
        shape = shape_text(self.first)
        # a probe may build fewer uses (a halved repeat count): the uses it builds alike
        # still tell which numbers follow its hyperparameter
        for b, build in enumerate(builds if in_model else builds[:1]):
            units = [build.get(m.key) for m in members]
            self.cells += [(u, b) for u in units if u is not None and shape_text(u) == shape
                           and self._has_arguments(u, b)]

    def _has_arguments(self, unit: Unit, build: int) -> bool:
        return all(len(self.by_unit[i.unit].build_arguments) > build
                   and i.unit in self.by_unit[i.unit].build_arguments[build]
                   for i in walk([unit.init, unit.forward])
                   if isinstance(i, Instance) and not i.unknown)

    # ---- the parameters of the spec and their values ----------------------------------------

    def _env(self, cell: tuple[Unit, int]) -> dict:
        unit, build = cell
        if self.is_model:
            return dict(self.context.build_hyper[build]) if self.context.build_hyper else {}
        scopes = (self.context.build_scopes[build] if self.context.build_scopes
                  and unit.key.graph == "model" else self.context.scopes[unit.key.graph])
        scope = scopes.get(unit.region.path)
        return dict(scope.params) if scope is not None else {}

    def _spec_params(self, envs: list[dict]) -> list[str]:
        """The spec's parameters that become constructor arguments (a block's) or config
        fields (the model's): those whose values can be written as Python."""
        if self.first.kind != "class" or self.spec is None \
                or self.first.region.kind not in ("block", "model"):
            return []
        out = []
        for name in (p.name for p in self.spec.params):
            values = [env.get(name) for env in envs]
            if all(is_number(v) or isinstance(v, bool) for v in values):
                out.append(checked_identifier(name))
        return out

    # ---- the definition -------------------------------------------------------------------

    def definition(self) -> Definition:
        first = self.first
        name = self._name(first.region)
        envs = [self._env(c) for c in self.cells]
        params = self._spec_params(envs)
        locals_ = spec_locals(self.spec)
        candidates = param_candidates(self.spec, params, envs, self.is_model, locals_)
        columns = [self._numbers(unit, build) for unit, build in self.cells]
        assert len({len(c) for c in columns}) == 1, "instances of one definition differ"
        vectors = list(zip(*columns))  # each number of the definition, cell by cell
        init_count = len(self._numbers(first, 0, [first.init]))
        if self.is_model:
            candidates += monomials(vectors, candidates, envs, params)
        extras, extra_of, hints, chosen = self._assign(vectors, candidates)
        extra_names = self._param_names(hints, self._spec_names(extras, envs), params)
        dims = [] if self.is_model else dim_candidates(
            self.spec, params, envs, self._input_symbols(True), extras, extra_names, locals_)
        if dims:  # again, with `C * expand` written `in_channels * expand`
            again = self._assign(vectors, candidates + [c for c, _ in dims])
            names = self._param_names(again[2], self._spec_names(again[0], envs), params)
            if all(arg in names for c, arg in dims if c in again[3].values()):
                (extras, extra_of, hints, chosen), extra_names = again, names
        if self.is_model:  # the model takes only its config: other numbers stay as built
            extras, extra_names, extra_of = [], [], {}
        texts = []
        for j, nums in enumerate(vectors):
            in_forward = j >= init_count and first.kind == "class"
            known = [n for n in nums if n.value is not UNKNOWN]
            if known[0].comment:
                texts.append(self._comment_dim(nums, extras, extra_names, candidates))
            elif j in chosen:
                texts.append(chosen[j].forward if in_forward else chosen[j].init)
            elif j in extra_of:
                arg = extra_names[extra_of[j]]
                texts.append(f"self.{arg}" if in_forward else arg)
            else:
                texts.append(literal(known[0].value))
        omitted = 0 if self.is_model else trailing_defaults(self.spec, params, envs)
        build_arguments: list[dict[UnitKey, tuple[Num, ...]]] = []
        for c, (unit, build) in enumerate(self.cells):
            while len(build_arguments) <= build:
                build_arguments.append({})
            spec_values = tuple(Num(envs[c][p], p) for p in params[:len(params) - omitted])
            extra_values = tuple(Num(None if e[c] is UNKNOWN else e[c], extra_names[i])
                                 for i, e in enumerate(extras))
            build_arguments[build][unit.key] = extra_values + spec_values
        local_of = self._locals_used(chosen, init_count, params + extra_names)
        texts = [local_of.get(j, t) for j, t in enumerate(texts)]
        item_texts = iter(self._item_texts(texts))
        init = substitute(first.init, item_texts)
        forward = substitute(first.forward, item_texts)
        config, self.config_name = (), ""
        if self.is_model and params:
            self.config_name = self.names.claim(f"{name}Config")
            config = tuple((p, literal(envs[0][p])) for p in params)
        first_use: dict[str, int] = {}
        for j, local in sorted(local_of.items()):
            first_use.setdefault(local, j)
        lets = tuple(Stmt(local, (chosen[j].init,)) for local, j in first_use.items())
        init = self._init_head(params + extra_names, texts[init_count:]) + lets + init
        forward_params = first.params
        if first.region.kind == "model" and self.context.fused:
            forward_params += ("return_logits=False",)
        if self.is_model:
            signature: tuple[str, ...] = ("config=None",) if params else ()
        else:
            signature = tuple(extra_names) + signature_of(self.spec, params)
        return Definition(first.kind, name, first.region, tuple(self.members), signature,
                          forward_params, build_arguments[0], init, forward,
                          tuple(self._docstring()), tuple(build_arguments), config,
                          self.config_name)

    def _assign(self, vectors: list[tuple[Num, ...]], candidates: list[Candidate]):
        """Each number as a candidate (a parameter or expression), an extra argument, or
        (neither) a literal: (extras' values, number -> extra, extras' hints, chosen)."""
        extras: list[list] = []  # each extra argument's value cell by cell (UNKNOWN: any)
        extra_of: dict[int, int] = {}  # number -> its extra argument
        hints: list[list[tuple[str, bool]]] = []
        chosen: dict[int, Candidate] = {}
        for j, nums in enumerate(vectors):
            known = [k for k, n in enumerate(nums) if n.value is not UNKNOWN]
            ref = nums[known[0]]
            if ref.comment:
                continue
            values = key_of(nums)
            match = [c for c in candidates if agrees(c.key, values)]
            if len({values[k] for k in known}) == 1:  # a parameter only where not by chance
                named = [c for c in match if c.comment == ref.hint]
                if ref.named and named:
                    chosen[j] = named[0]
                    continue
                if ref.value in (0, 1) or isinstance(ref.value, bool):
                    continue
                if named:
                    chosen[j] = named[0]
                continue
            if match:
                chosen[j] = next((c for c in match if c.comment == ref.hint), match[0])
                continue
            cells = [n.value for n in nums]
            index = next((i for i, e in enumerate(extras) if agrees(key_of(e), values)), None)
            if index is None:
                index = len(extras)
                extras.append(cells)
                hints.append([])
            else:
                extras[index] = [v if v is not UNKNOWN else w for v, w in
                                 zip(extras[index], cells)]
            extra_of[j] = index
            hints[index].append((ref.hint, ref.primary))
        return extras, extra_of, hints, chosen

    def _locals_used(self, chosen: Mapping[int, Candidate], init_count: int,
                     taken: list[str]) -> dict[int, str]:
        """The numbers of `__init__` written with a local of the spec's name (`hidden`),
        where that local's expression is used more than once there."""
        uses: dict[str, list[int]] = {}
        for j, candidate in chosen.items():
            if j < init_count and candidate.local:
                uses.setdefault(candidate.local, []).append(j)
        free = {n for n in uses if n not in {*taken, "self", "config", "layers", "layers_",
                                             "members"} and n.isidentifier()}
        return {j: name for name, js in uses.items() if name in free and len(js) > 1
                for j in js}

    def _name(self, region: Region) -> str:
        if region.kind == "model":
            return self.names.claim(region.label)
        if region.kind == "loss":
            return "loss_fn"
        return self.names.claim(checked_identifier(region.label))

    def _numbers(self, unit: Unit, build: int, parts=None) -> list[Num]:
        """Every number of a unit (or of some of its `parts`) in `walk`'s order, an
        instance's arguments in that build in its place."""
        out = []
        for item in walk([unit.init, unit.forward] if parts is None else parts):
            if isinstance(item, Instance) and item.unknown:  # a layer this use does not build
                out += [Num(UNKNOWN, n.hint)
                        for n in self.by_unit[item.unit].build_arguments[0][item.unit]]
            elif isinstance(item, Instance):
                out += self.by_unit[item.unit].build_arguments[build][item.unit]
            else:
                out.append(item)
        return out

    def _init_head(self, params: list[str], forward_texts: list[str]) -> tuple:
        """The statements `__init__` starts with: the model's config; a block's defaults
        that are expressions of other arguments; the arguments `forward` reads."""
        if self.first.kind != "class":
            return ()
        if self.is_model:
            name = self.config_name
            if not name:
                return ()
            return (Block(("if config is None",), (Stmt("config", (f"{name}()",)),)),
                    Stmt("self.config", ("config",)))
        head = []
        for p in self.spec.params if self.spec is not None else ():
            if p.name in params and p.default is not None and default_text(p) is None:
                text = default_expression(self.spec, p, params)
                head.append(Block((f"if {p.name} is None",), (Stmt(p.name, (text,)),)))
        used = " ".join(forward_texts)
        head += [Stmt(f"self.{p}", (p,)) for p in params
                 if re.search(rf"\bself\.{p}\b", used)]
        return tuple(head)

    def _item_texts(self, texts: list[str]) -> list:
        """The text of each number and instance of the first member, in `walk`'s order
        (`texts` has one entry per number, an instance's arguments in its place)."""
        out = []
        at = 0
        member = self.first
        for item in walk([member.init, member.forward]):
            if isinstance(item, Instance):
                callee = self.by_unit[item.unit]
                count = len(callee.arguments[item.unit])
                tensors = [flat(a, lambda n: literal(n.value)) for a in item.call_args]
                args = _without_defaults(texts[at:at + count], callee.params)
                out.append(call(callee.name, *tensors, *args))
                at += count
            else:
                out.append(texts[at])
                at += 1
        return out

    def _param_names(self, hints: list[list[tuple[str, bool]]],
                     spec_names: dict[int, str], params: list[str]) -> list[str]:
        """Name each extra argument after the spec's hyperparameter that holds it, else after
        what it is; a number that is both a layer's input and output width (`in_channels`
        and `out_channels`) is just `channels`."""
        scope = Namespace(self.names.taken | {"self", "config", *params})
        names = []
        for index, group in enumerate(hints):
            seen = [h for h, _ in group]
            wanted = spec_names.get(index) or next(
                (h[3:] for h in seen if h.startswith("in_") and f"out_{h[3:]}" in seen), None)
            if wanted is None:
                wanted = next((h for h, primary in group if primary), seen[0])
            names.append(scope.claim(wanted))
        return names

    def _spec_names(self, extras: list[list], envs: list[dict]) -> dict[int, str]:
        """Extra arguments whose values, cell by cell, are exactly one of the block's or fn's
        hyperparameters take that hyperparameter's name."""
        if not envs or not all(envs):
            return {}
        candidates: dict[tuple, list[str]] = {}
        for name in envs[0]:
            values = [env.get(name) for env in envs]
            if all(is_number(v) for v in values):
                candidates.setdefault(key_values(values), []).append(name)
        out = {}
        for index, cells in enumerate(extras):
            cells_key = key_of(cells)
            names = [n for key, found in candidates.items() if agrees(key, cells_key)
                     for n in found]
            if len(names) == 1:
                out[index] = names[0]
        return out

    def _comment_dim(self, nums: tuple[Num, ...], extras: list[list],
                     names: list[str], candidates: list[Candidate]) -> str:
        """A dim in a shape comment: its size when it never changes, else the input dim
        (`T`), parameter or expression (`4 * d`) it follows, else `?`. Cells where the
        line is not computed (`UNKNOWN`) say nothing."""
        known = [k for k, n in enumerate(nums) if n.value is not UNKNOWN]
        keys = key_of(nums)
        values = tuple(keys[k] for k in known)
        if len(set(values)) == 1:
            return _dim_text(nums[known[0]].value)
        for candidate in candidates:
            if tuple(candidate.key[k] for k in known) == values:
                return candidate.comment
        raw = [nums[k].value for k in known]
        for declared_only in (True, False):
            symbols = self._input_symbols(declared_only)
            symbols.sort(key=lambda s: s[0] != nums[known[0]].hint)  # the same position first
            for _, symbol, all_dims in symbols:
                dims = [all_dims[k] for k in known]
                if dims == raw:
                    return symbol
                if all(isinstance(d, int) and isinstance(v, int) and v for d, v in zip(dims, raw)):
                    ratio = dims[0] // raw[0]
                    if ratio > 1 and all(d // ratio == v or -(-d // ratio) == v
                                         for d, v in zip(dims, raw)):
                        return f"{symbol}/{ratio}"
                for candidate in candidates:  # a stride: H/stride
                    divisors = [candidate.values[k] for k in known]
                    if all(isinstance(d, int) and isinstance(p, int) and p > 0
                           and -(-d // p) == v for d, p, v in zip(dims, divisors, raw)):
                        text = candidate.comment
                        return f"{symbol}/{text if text.isidentifier() else f'({text})'}"
        for index, cells in enumerate(extras):
            cells_key = key_of(cells)
            if tuple(cells_key[k] for k in known) == values:
                return names[index]
        return "?"

    def _input_symbols(self, declared_only: bool) -> list[tuple[str, str, list]]:
        """Names for the dims of a class's one input, with their sizes cell by cell: the
        block's own (`input x: [C, H, W]`), or the usual letters for the input's rank."""
        types = [unit.input_types for unit, _ in self.cells]
        if not types or any(len(t) != 1 for t in types):
            return []
        rank = types[0][0].rank
        names: list = [] if declared_only else list(_USUAL_DIMS.get(rank, ()))
        if declared_only and self.spec is not None and self.spec.kind == "block":
            declared = [s for s in self.spec.body if isinstance(s, ast.Input)]
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
        if self.separate:
            details.append(f"One class per structure: {self.separate}.")
        return [f"`{region.kind} {region.label}` of {where}.", *details]


def _without_defaults(args: list[str], signature: tuple[str, ...]) -> list[str]:
    """A call's arguments without the trailing ones its signature's defaults give
    (`BasicBlock(64, 64)` for `BasicBlock(in_channels, channels, stride=1)`)."""
    args = list(args)
    while args and len(args) <= len(signature) \
            and signature[len(args) - 1].partition("=")[2] == args[-1]:
        args.pop()
    return args


def _dim_text(value) -> str:
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_+\-*/() ]+", text) else "?"
