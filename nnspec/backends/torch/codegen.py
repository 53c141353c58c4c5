"""A checked spec -> one standalone PyTorch file, in phases:

1. **lower** (`structure.py`, `lower.py`): the graph's scopes become frozen regions, each
   with its role (class, function, loop, inline) decided from the graph alone; then every
   class or function instance becomes a `Unit` whose numbers are still `Num`s and whose
   calls of other units are `Instance`s of a `UnitKey` (graph and path);
2. **share** (`share.py`): units that read the same up to their numbers become one
   `Definition`; the numbers that differ become its arguments, and every name is chosen;
3. **print** (`printer.py`, `extras.py`): definitions, children first, then the train
   section and the weight helpers, as text, deciding nothing.

Each phase reads the previous one's frozen output and changes nothing of it. The output
depends only on the spec, never on dict order or the clock.

Classes parameterised like the spec's blocks change the sharing phase: which units share a
definition (`share._sharing_key`; `variants.py` for uses that build different layers), what
its arguments are and what they are called (`parameterise.Parameterise`); a config
dataclass is one more kind of definition to print. A labelled chain called whole is an
`nn.Sequential`, which lowering writes as one call (`lower._Writer._sequentials`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nnspec.backends.torch import extras, lower, printer, probe, share
from nnspec.backends.torch.names import INDEX, checked_identifier, file_label, literal
from nnspec.backends.torch.structure import regions, spec_definition
from nnspec.backends.torch.units import Context, Root, Unit
from nnspec.diagnostics import Diagnostic, SpecError
from nnspec.ir.graph import Graph
from nnspec.syntax import ast

# Names of generated code that no local variable may take.
_FIXED_LOCALS = ("self", "torch", "nn", "F", "math", "return_logits", *extras.FIXED_NAMES)
# The most layers (graph nodes) code is generated for unless asked for more. Generation
# takes 1-3 ms a layer on a 2-core machine (the model is built again once per
# hyperparameter to tell which numbers follow it): a ResNet-50 stretched to 5,000 nodes
# took 4.6 s here. Published models are far below it: Llama-2-7B's spec is 324 nodes.
MAX_GENERATED_LAYERS = 5_000


class Generator:
    """The file of one spec; `model_class` is the model's class name once `text` ran."""

    def __init__(self, spec, reserved: tuple[str, ...] = (),
                 max_layers: int | None = MAX_GENERATED_LAYERS):
        """`reserved`: more module-level names the output defines (the train script's).
        Raises SpecError E402 for a model of more than `max_layers` layers (None: any)."""
        if max_layers is not None:
            _check_size(spec, max_layers)
        self.spec = spec
        self.reserved = reserved
        self.file = file_label(spec.program.source.path)
        self.fused = bool(spec.train and spec.train.fused_softmax)
        self.model_class = ""

    def text(self, script=None) -> str:
        """The whole file; `script(model_class)` gives text to append after everything
        else (the train script), whose imports join the file's own."""
        spec = self.spec
        graphs = probe.probes(spec.program, spec.graph.name, spec.graph.hyper, spec.overrides,
                              len(spec.graph.nodes))
        probes = tuple(self._model_units(g) for g in graphs)
        context = self._share_context((spec.graph, *graphs))
        definitions = share.share(self._units(), context, self._globals(), probes)
        self.model_class = next(d.name for d in definitions if d.region.kind == "model")
        helpers = set().union(*(u.helpers for d in definitions for u in d.members))
        parts = [extras.HELPERS[h] for h in extras.HELPERS if h in helpers]
        sampling = self._generate_method(definitions)
        parts += [printer.definition_text(d) + ("\n" + sampling if d.region.kind == "model"
                                                and sampling else "")
                  for d in definitions]
        train = spec.train
        if train is not None:
            parts.append(extras.make_optimizer(train, self._line_of("optimizer")))
            if train.schedule is not None:
                parts.append(extras.make_scheduler(train, self._line_of("schedule")))
        parts.append(extras.weight_helpers(tied_weights(spec.graph)))
        if script is not None:
            parts.append(script(self.model_class))
        body = "\n\n\n".join(parts)
        head = printer.header(self.file, spec.graph.name, spec.graph.hyper)
        imports = printer.imports(body, script_modules=script is not None)
        return head + "\n\n" + imports + "\n\n\n" + body + "\n"

    def _generate_method(self, definitions: list[share.Definition]) -> str:
        """`generate` for a language model: one input of token ids [T] and an output of
        scores [T, vocab]; empty for any other model."""
        graph = self.spec.graph
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            return ""
        given, out = graph.node(graph.inputs[0]).type, graph.node(graph.outputs[0]).type
        if given.dtype != "int64" or given.rank != 1 or out is None or out.rank != 2 \
                or out.shape[0] != given.shape[0]:
            return ""
        model = next(d for d in definitions if d.region.kind == "model")
        length = given.shape[0]
        if not isinstance(length, int):
            return ""
        context = literal(length)
        definition = spec_definition(self.spec.program, model.region)
        declared = [s for s in definition.body if isinstance(s, ast.Input)]
        dim = declared[0].type.dims[0] if declared and declared[0].type else None
        if isinstance(dim, ast.Name) and dim.id in dict(model.config):
            context = f"self.config.{dim.id}"
        window = "tokens[:, -context:]"
        scores = f"self({window}, return_logits=True)" if self.fused else f"self({window})"
        return extras.GENERATE.replace("__CONTEXT__", context).replace("__SCORES__", scores)

    def _model_units(self, graph: Graph) -> list[Unit]:
        """Phase 1 for a model graph: the spec's, or a probe of it."""
        context = self._lower_context()
        names = tuple(checked_identifier(n, graph.node(n).span) for n in graph.inputs)
        logits = self._logits_node(graph)
        model = Root(tuple(graph.inputs), names, tuple(graph.outputs), "self.training",
                     logits=logits)
        keep_whole = graph.outputs[0] if logits else None  # the fused softmax stays whole
        return lower.lower(graph, regions(graph, "model", keep_whole), context, model)

    def _logits_node(self, graph: Graph) -> str | None:
        """The node the training rewrite exposes as `logits` (the input of the softmax it
        fused into the loss), which `model(x, return_logits=True)` returns; None when
        nothing is fused. A probe of the model names its nodes as the spec's graph does."""
        train = self.spec.train
        if not self.fused:
            return None
        read = dict(train.outputs)
        added = [node for name, node in read.items() if name not in self.spec.graph.output_names]
        return added[0] if added and any(n.name == added[0] for n in graph.nodes) else None

    def _lower_context(self) -> Context:
        return Context(self.spec.program, self.file,
                       frozenset({*_FIXED_LOCALS, *self.reserved}))

    def _units(self) -> list[Unit]:
        """Phase 1: the model's units, then the loss's."""
        spec = self.spec
        context = self._lower_context()
        units = self._model_units(spec.graph)
        loss_graph = spec.train.loss_graph if spec.train is not None else None
        if loss_graph is not None:
            names = tuple(checked_identifier(n) for n in loss_graph.inputs)
            loss = Root(tuple(loss_graph.inputs), names, tuple(loss_graph.outputs), "True")
            units += lower.lower(loss_graph, regions(loss_graph, "loss", None), context, loss)
        return units

    def _share_context(self, builds: tuple[Graph, ...]) -> share.Context:
        spec = self.spec
        train = spec.train
        loss_graph = train.loss_graph if train is not None else None
        loss_span = train.spans.get("loss") if train is not None else None
        scopes = {"model": spec.graph.scopes,
                  "loss": loss_graph.scopes if loss_graph is not None else {}}
        return share.Context(spec.program, self.file, scopes,
                             loss_span.line if loss_span is not None else None, self.fused,
                             tuple(g.scopes for g in builds), tuple(g.hyper for g in builds))

    def _globals(self) -> share.Globals:
        """Module-level names avoid the spec's input names, which locals take."""
        program = self.spec.program
        inputs = {s.name for d in program.items if isinstance(d, ast.Definition)
                  for s in d.body if isinstance(s, ast.Input)}
        inputs |= {p.name for d in program.definitions("fn") for p in d.params}
        return share.Globals({*_FIXED_LOCALS, *self.reserved}, inputs)

    def _line_of(self, key: str) -> str:
        span = self.spec.train.spans.get(key)
        return f"{self.file}:{span.line}" if span else self.file


def tied_weights(graph: Graph) -> dict[str, str]:
    """`state_dict` keys that are tied copies -> the key of the weight they share."""
    out = {}
    for param in graph.params.values():
        for user in param.tied_from:
            node = graph.node(user)
            for local, full in node.params.items():
                if full == param.name:
                    out[_param_key(f"{node.module}.{local}")] = _param_key(full)
    return out


def _param_key(name: str) -> str:
    for part in name.split("."):
        if not INDEX.match(part):
            checked_identifier(part)
    return name


def _check_size(spec, max_layers: int) -> None:
    layers = len(spec.graph.nodes)
    if layers <= max_layers:
        return
    model = next((d for d in spec.program.definitions("model") if d.name == spec.graph.name),
                 None)
    raise SpecError([Diagnostic(
        "E402", f"`{spec.graph.name}` has {layers:,} layers; PyTorch code is generated for "
        f"at most {max_layers:,} (it would take about {layers // 400:,} s or more)",
        model.name_span if model is not None else None,
        f"a smaller configuration, or `nnspec --max-layers {layers} ...` to wait for it")])


def generate(spec, *, train_script: bool = False,
             max_layers: int | None = MAX_GENERATED_LAYERS) -> str:
    """The PyTorch source of a loaded spec (`nnspec.spec.load`): one standalone file.
    `train_script=True` appends a command-line training entry point (`train_script.py`).
    A model of more than `max_layers` layers is SpecError E402."""
    if not train_script:
        return Generator(spec, max_layers=max_layers).text()
    from nnspec.backends.torch import train_script as script

    generator = Generator(spec, reserved=script.RESERVED, max_layers=max_layers)
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
