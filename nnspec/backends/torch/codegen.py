"""A checked spec -> one standalone PyTorch file.

Every region of the graph that can be a class or a function is written out (`writer.py`);
instances that read the same up to their numbers join one `Shared` definition, and the
numbers that differ between them become constructor (or function) arguments, named after
what they are (`in_channels`, `out_channels`). Definitions are printed children first, so
each file reads from the smallest block up to the model, then the train section and the
weight helpers. The output depends only on the spec, never on dict order or the clock.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from nnspec.backends.torch import extras
from nnspec.backends.torch.names import (
    INDEX,
    Namespace,
    checked_identifier,
    file_label,
    literal,
)
from nnspec.backends.torch.source import Instance, Num, _split, call, expr, flat, layout, walk
from nnspec.backends.torch.structure import Region, boundary, regions
from nnspec.backends.torch.writer import Rendered, Writer
from nnspec.diagnostics import SpecError
from nnspec.ir.graph import Graph
from nnspec.syntax import ast

_USUAL_DIMS = {1: ("F",), 2: ("T", "F"), 3: ("C", "H", "W")}
_LOCAL_PATTERN = re.compile(r"(x|h\d*|y|z|x\d+|block\d*|layer\d*|pred|target)\Z")


@dataclass(eq=False)
class Shared:
    """One class or function of the output and the instances it stands for."""

    index: int
    kind: str  # class | function
    label: str
    members: list[Rendered]
    name: str = ""
    params: list[str] = field(default_factory=list)
    args: dict[int, list[Num]] = field(default_factory=dict)  # id(member) -> its arguments
    texts: dict[int, str] = field(default_factory=dict)  # id(Num/Instance of members[0])


class _Globals(Namespace):
    """Module-level names; they avoid every name a function body may use for a local."""

    def __init__(self, taken, locals_used):
        super().__init__(taken)
        self.locals_used = set(locals_used)

    def claim(self, wanted: str) -> str:
        name = wanted
        while _LOCAL_PATTERN.match(name) or name in self.locals_used:
            name += "_"
        return super().claim(name)


class Generator:
    def __init__(self, spec, reserved: tuple[str, ...] = ()):
        """`reserved`: more module-level names the output defines (the train script's)."""
        self.spec = spec
        self.graph: Graph = spec.graph
        self.program: ast.Program = spec.program
        self.file = file_label(self.program.source.path)
        self.helpers: set[str] = set()
        self.shared: list[Shared] = []
        self._groups: dict[tuple, Shared] = {}
        self._rendered: dict[int, Rendered] = {}
        self._consumers: dict[int, dict[str, list[str]]] = {}
        self.local_taken = frozenset({"self", "torch", "nn", "F", "math", "return_logits",
                                      *extras.FIXED_NAMES, *reserved})
        inputs = {s.name for d in self.program.items if isinstance(d, ast.Definition)
                  for s in d.body if isinstance(s, ast.Input)}
        inputs |= {p.name for d in self.program.definitions("fn") for p in d.params}
        self.globals = _Globals(self.local_taken, inputs)
        self.fused = bool(spec.train and spec.train.fused_softmax)
        self.model_class = ""  # the model's class name, once resolved

    # ---- writing the regions -----------------------------------------------------------------

    def render(self, graph: Graph, table: dict[str, Region], owner, region: Region,
               training: str) -> Rendered:
        if id(region) in self._rendered:
            return self._rendered[id(region)]
        inputs, output = boundary(region, self.consumers(graph), set(graph.outputs))
        writer = Writer(self, graph, table, owner, region, training=training)
        rendered = writer.write(inputs, self._input_names(graph, region, inputs), output)
        self._join(rendered)
        self._rendered[id(region)] = rendered
        return rendered

    def consumers(self, graph: Graph) -> dict[str, list[str]]:
        if id(graph) not in self._consumers:
            self._consumers[id(graph)] = graph.consumers()
        return self._consumers[id(graph)]

    def _input_names(self, graph: Graph, region: Region, inputs: list[str]) -> list[str]:
        """A block's or fn's own names for its inputs (the IR's scope records which value
        went to which declared input); `x`, `y`, ... where that is ambiguous."""
        count = len(inputs)
        scope = graph.scopes.get(region.path)
        declared = {node: name for name, node in scope.inputs} if scope else {}
        names = [declared.get(node) for node in inputs]
        if count > 1 and None not in names and len(set(names)) == count:
            return names
        if count == 1:
            definition = self._definition(region)
            if definition is not None:
                if definition.kind == "fn" and definition.params:
                    return [definition.params[0].name]
                declared = [s.name for s in definition.body if isinstance(s, ast.Input)]
                if len(declared) == 1:
                    return declared
            return ["x"]
        return (["x", "y", "z"] + [f"x{i}" for i in range(3, count)])[:count]

    def _definition(self, region: Region) -> ast.Definition | None:
        kind = {"block": "block", "fn": "fn", "model": "model"}.get(region.kind)
        if kind is None:
            return None
        return next((d for d in self.program.definitions(kind) if d.name == region.label), None)

    def _join(self, rendered: Rendered) -> None:
        def key_text(item):
            if isinstance(item, Instance):
                inner = ", ".join(flat(a, key_text) for a in item.call_args)
                return f"<{item.unit.shared.index}>({inner})"
            return "\0"

        text = ", ".join(rendered.params) + "\n" + "\n".join(
            layout(rendered.init + rendered.forward, key_text))
        key = (rendered.kind, rendered.region.kind, rendered.region.label, text)
        shared = self._groups.get(key)
        if shared is None:
            shared = Shared(len(self.shared), rendered.kind, rendered.region.label, [])
            self._groups[key] = shared
            self.shared.append(shared)
        shared.members.append(rendered)
        rendered.shared = shared

    def model(self) -> None:
        graph = self.graph
        output = graph.node(graph.outputs[0])
        keep = output.name if self.fused else None
        table, owner = regions(graph, "model", keep)
        writer = Writer(self, graph, table, owner, table[""], training="self.training")
        names = [checked_identifier(n, graph.node(n).span) for n in graph.inputs]
        rendered = writer.write(list(graph.inputs), names, output.name, logits_switch=self.fused)
        self._join(rendered)

    def loss(self) -> None:
        graph = self.spec.train.loss_graph
        table, owner = regions(graph, "loss", None)
        writer = Writer(self, graph, table, owner, table[""], training="True")
        rendered = writer.write(["pred", "target"], ["pred", "target"], graph.outputs[0])
        self._join(rendered)

    # ---- turning instances into definitions ------------------------------------------------

    def resolve(self, shared: Shared) -> None:
        region = shared.members[0].region
        if region.kind == "model":
            shared.name = self.model_class = self.globals.claim(region.label)
        elif region.kind == "loss":
            shared.name = "loss_fn"
        else:
            shared.name = self.globals.claim(checked_identifier(region.label))
        columns = [self._positions(m) for m in shared.members]
        assert len({len(c) for c in columns}) == 1, "instances of one definition differ"
        first = columns[0]
        vectors = [tuple(col[j][1] for col in columns) for j in range(len(first))]
        params: dict[tuple, int] = {}  # the values of a varying number -> its parameter
        hints: list[list[tuple[str, bool]]] = []
        firsts: list[int] = []  # where each parameter first occurs
        texts: list[str | tuple] = []
        for j, nums in enumerate(vectors):
            values = _key(nums)
            if nums[0].comment:
                texts.append(("comment", values))
            elif len(set(values)) == 1:
                texts.append(literal(nums[0].value))
            else:
                if values not in params:
                    params[values] = len(hints)
                    hints.append([])
                    firsts.append(j)
                hints[params[values]].append((nums[0].hint, nums[0].primary))
                texts.append(("param", params[values]))
        names = self._param_names(hints, self._spec_names(shared, params))
        shared.params = names
        for j, t in enumerate(texts):
            if isinstance(t, tuple) and t[0] == "param":
                texts[j] = names[t[1]]
            elif isinstance(t, tuple):
                texts[j] = self._comment_dim(vectors[j], params, names, shared, first[j][0])
        for member, column in zip(shared.members, columns):
            shared.args[id(member)] = [Num(column[firsts[i]][1].value, names[i])
                                       for i in range(len(names))]
        self._texts(shared, first, texts)

    def _positions(self, member: Rendered) -> list[tuple[object, Num]]:
        out = []
        for item in walk([member.init, member.forward]):
            if isinstance(item, Instance):
                out += [(item, a) for a in item.unit.shared.args[id(item.unit)]]
            else:
                out.append((item, item))
        return out

    def _texts(self, shared: Shared, first, texts) -> None:
        """The text of each number and instance of the definition's first member."""
        by_item: dict[int, list[str]] = {}
        for (item, _), text in zip(first, texts):
            by_item.setdefault(id(item), []).append(text)
        member = shared.members[0]
        for item in walk([member.init, member.forward]):
            parts = by_item.get(id(item), [])
            if isinstance(item, Instance):
                tensors = [flat(a, lambda n: literal(n.value)) for a in item.call_args]
                shared.texts[id(item)] = f"{item.unit.shared.name}({', '.join(tensors + parts)})"
            else:
                shared.texts[id(item)] = parts[0]

    def _param_names(self, hints: list[list[tuple[str, bool]]],
                     spec_names: dict[int, str]) -> list[str]:
        """Name each varying number after the spec's hyperparameter that holds it, else after
        what it is; a number that is both a layer's input and output width (`in_channels`
        and `out_channels`) is just `channels`."""
        scope = Namespace(self.globals.taken | {"self"})
        names = []
        for index, group in enumerate(hints):
            seen = [h for h, _ in group]
            wanted = spec_names.get(index) or next(
                (h[3:] for h in seen if h.startswith("in_") and f"out_{h[3:]}" in seen), None)
            if wanted is None:
                wanted = next((h for h, primary in group if primary), seen[0])
            names.append(scope.claim(wanted))
        return names

    def _spec_names(self, shared: Shared, params: dict[tuple, int]) -> dict[int, str]:
        """Varying numbers whose values, instance by instance, are exactly one of the
        block's or fn's hyperparameters take that hyperparameter's name."""
        graphs = [self.graph] + ([self.spec.train.loss_graph] if self.spec.train else [])
        scopes = []
        for member in shared.members:
            path = member.region.path
            scope = next((g.scopes[path] for g in graphs if path in g.scopes), None)
            if scope is None or not scope.params:
                return {}
            scopes.append(dict(scope.params))
        candidates: dict[tuple, list[str]] = {}
        for name in scopes[0]:
            values = [s.get(name) for s in scopes]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                key = tuple((type(v).__name__, repr(v)) for v in values)
                candidates.setdefault(key, []).append(name)
        return {index: candidates[key][0] for key, index in params.items()
                if len(candidates.get(key, ())) == 1}

    def _comment_dim(self, nums, params, names, shared: Shared, num: Num) -> str:
        """A dim in a shape comment of a shared class: its size when all uses agree, else
        the parameter or input dim (`H`, `H/2`) it follows, else `?`."""
        values = _key(nums)
        if len(set(values)) == 1:
            return _dim_text(nums[0].value)
        if values in params:
            return names[params[values]]
        raw = [n.value for n in nums]
        symbols = self._input_symbols(shared)
        symbols.sort(key=lambda s: s[0] != num.hint)  # the same position first: W, not H
        for _, symbol, dims in symbols:
            if dims == raw:
                return symbol
            if all(isinstance(d, int) and isinstance(v, int) and v for d, v in zip(dims, raw)):
                ratio = dims[0] // raw[0]
                if ratio > 1 and all(d // ratio == v or -(-d // ratio) == v
                                     for d, v in zip(dims, raw)):
                    return f"{symbol}/{ratio}"
        return "?"

    def _input_symbols(self, shared: Shared) -> list[tuple[str, str, list]]:
        """Names for the dims of a class's one input, with each instance's sizes: the
        block's own (`input x: [C, H, W]`), else the usual letters for the input's rank."""
        types = [m.input_types for m in shared.members]
        if any(len(t) != 1 for t in types):
            return []
        rank = types[0][0].rank
        names = list(_USUAL_DIMS.get(rank, ()))
        definition = self._definition(shared.members[0].region)
        if definition is not None and definition.kind == "block":
            declared = [s for s in definition.body if isinstance(s, ast.Input)]
            if len(declared) == 1 and declared[0].type is not None:
                names = [d.id if isinstance(d, ast.Name) else None
                         for d in declared[0].type.dims]
        return [(f"dim{j}", checked_identifier(name), [t[0].shape[j] for t in types])
                for j, name in enumerate(names[:rank]) if name is not None]

    # ---- printing -----------------------------------------------------------------------------

    def definition_text(self, shared: Shared) -> str:
        member = shared.members[0]

        def resolve(item):
            return shared.texts[id(item)]

        doc = _docstring_lines(self._docstring(shared))
        if shared.kind == "function":
            head = _split("", "def ", expr(call(shared.name, *member.params, *shared.params)),
                          ":", str)
            return "\n".join(head + doc + layout(member.forward, resolve, "    "))
        lines = [f"class {shared.name}(nn.Module):", *doc, ""]
        if member.init or shared.params:
            lines += _split("    ", "def ", expr(call("__init__", "self", *shared.params)), ":",
                            str)
            lines += ["        super().__init__()"] + layout(member.init, resolve, "        ")
            lines.append("")
        forward_params = ["self", *member.params]
        if member.region.kind == "model" and self.fused:
            forward_params.append("return_logits=False")
        lines += _split("    ", "def ", expr(call("forward", *forward_params)), ":", str)
        lines += layout(member.forward, resolve, "        ")
        return "\n".join(lines)

    def _docstring(self, shared: Shared) -> list[str]:
        """A summary line (where the definition is in the spec), then details if any."""
        region = shared.members[0].region
        definition = self._definition(region)
        where = self.file
        if definition is not None:
            where += f":{definition.name_span.line}"
        elif region.span is not None:
            where += f":{region.span.line}"
        paths = [m.region.path for m in shared.members]
        details = []
        if len(paths) > 1:
            shown = ", ".join(paths[:3])
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            details.append(f"Used as {shown}{more}.")
        if region.kind == "model":
            return [f"`model {region.label}` of {where}."]
        if region.kind == "loss":
            doc = [f"The training loss of {self.file}:{self.spec.train.spans['loss'].line}."]
            if self.fused:
                doc += ["`pred` are the logits, `model(x, return_logits=True)`: the model's",
                        "final softmax is fused into the loss, as nnspec trains it."]
            return doc
        if region.kind == "item":
            return [f"One copy of the layers repeated at {where}.", *details]
        return [f"`{region.kind} {region.label}` of {where}.", *details]

    def ties(self) -> dict[str, str]:
        out = {}
        for param in self.graph.params.values():
            for user in param.tied_from:
                node = self.graph.node(user)
                for local, full in node.params.items():
                    if full == param.name:
                        out[_param_key(f"{node.module}.{local}")] = _param_key(full)
        return out

    def text(self, script=None) -> str:
        """The whole file; `script(model_class)` gives text to append after everything
        else (the train script), whose imports join the file's own."""
        self.model()
        train = self.spec.train
        if train is not None and train.loss_graph is not None:
            self.loss()
        for shared in self.shared:
            self.resolve(shared)
        parts = [extras.HELPERS[h] for h in extras.HELPERS if h in self.helpers]
        parts += [self.definition_text(s) for s in self.shared]
        if train is not None:
            parts.append(extras.make_optimizer(train, self._line_of("optimizer")))
            if train.schedule is not None:
                parts.append(extras.make_scheduler(train, self._line_of("schedule")))
        parts.append(extras.weight_helpers(self.ties()))
        if script is not None:
            parts.append(script(self.model_class))
        body = "\n\n\n".join(parts)
        imports = _imports(body, script_modules=script is not None)
        return self._header() + "\n\n" + imports + "\n\n\n" + body + "\n"

    def _line_of(self, key: str) -> str:
        span = self.spec.train.spans.get(key)
        return f"{self.file}:{span.line}" if span else self.file

    def _header(self) -> str:
        hyper = ", ".join(f"{checked_identifier(k)}={_hyper_text(v)}"
                          for k, v in self.graph.hyper.items())
        lines = [f"# Generated by nnspec from {self.file} (model {self.graph.name}); do not "
                 + "edit by hand."]
        if hyper:
            lines.append(f"# Hyperparameters: {hyper}")
        lines += ["# state_dict keys are nnspec's parameter names: weights move between nnspec and",
                  "# this file as safetensors (save_weights, load_weights)."]
        return "\n".join(lines)


def _docstring_lines(lines: list[str]) -> list[str]:
    if len(lines) == 1:
        return [f'    """{lines[0]}"""']
    return [f'    """{lines[0]}', "", *(f"    {line}" for line in lines[1:]), '    """']


def _key(nums) -> tuple:
    return tuple((type(n.value).__name__, repr(n.value)) for n in nums)


def _dim_text(value) -> str:
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_+\-*/() ]+", text) else "?"


def _hyper_text(value) -> str:
    if isinstance(value, list):
        value = tuple(value)
    try:
        return literal(value)
    except SpecError:  # a string or other value that is not printed into code
        return "..."


def _param_key(name: str) -> str:
    for part in name.split("."):
        if not INDEX.match(part):
            checked_identifier(part)
    return name


# Standard modules only a train script uses (it reserves their names, and `np`, `dist`).
_SCRIPT_STDLIB = ("argparse", "csv", "gc", "os", "time")


def _imports(body: str, script_modules: bool = False) -> str:
    """Only the imports the code uses (names read as `module.attr` in the code itself)."""
    used = set()
    tokens = list(tokenize.generate_tokens(io.StringIO(body).readline))
    for tok, after in itertools.pairwise(tokens):
        if tok.type == tokenize.NAME and after.string == ".":
            used.add(tok.string)
    standard = ["math", *(_SCRIPT_STDLIB if script_modules else ())]
    lines = [f"import {m}" for m in sorted(standard) if m in used]
    if lines:
        lines.append("")
    if script_modules and "np" in used:
        lines.append("import numpy as np")
    if "torch" in used:
        lines.append("import torch")
    if script_modules and "dist" in used:
        lines.append("import torch.distributed as dist")
    if "F" in used:
        lines.append("import torch.nn.functional as F")
    lines.append("from torch import nn")
    return "\n".join(lines)


def generate(spec, *, train_script: bool = False) -> str:
    """The PyTorch source of a loaded spec (`nnspec.spec.load`): one standalone file.
    `train_script=True` appends a command-line training entry point (`train_script.py`)."""
    if not train_script:
        return Generator(spec).text()
    from nnspec.backends.torch import train_script as script

    generator = Generator(spec, reserved=script.RESERVED)
    return generator.text(lambda model_class: script.script_text(spec, model_class))


def compile_to_file(spec, out_path: str | Path, *, train_script: bool = False) -> Path:
    """Write `generate(spec)` to `out_path` atomically (a temp file, then a rename)."""
    out_path = Path(out_path)
    text = generate(spec, train_script=train_script)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out_path)
    except BaseException:
        os.unlink(tmp)
        raise
    return out_path

