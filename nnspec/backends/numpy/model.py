"""The NumPy interpreter: runs an IR graph forward, and backward in reverse over a tape.

Forward evaluates nodes in the graph's (topological) order with the rules of `rules.py`;
when gradients are wanted it keeps each node's backward closure on a tape. Backward walks
the tape in reverse, applies each local rule and accumulates gradients where a value feeds
several consumers (residuals) and where a weight is used twice (tied or shared layers).

Parameters live in one flat buffer (`ParamBuffer`), so an optimizer updates the whole model
with a few whole-buffer operations; buffers such as batchnorm's running statistics are kept
apart and never trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnspec.backends.numpy.allocator import keep_freed_memory, small_pages
from nnspec.backends.numpy.init import initial_state
from nnspec.backends.numpy.kernels import gradient_slots
from nnspec.backends.numpy.kernels.elementwise import sum_of
from nnspec.backends.numpy.kernels.norm_batch import ACTIVATIONS as NORM_ACTIVATIONS
from nnspec.backends.numpy.params import ParamBuffer
from nnspec.backends.numpy.rules import RULES, align_batched, needs_batch_of_one
from nnspec.backends.numpy.rules_base import Context
from nnspec.collector import collector_paused
from nnspec.ir.graph import Graph, Node
from nnspec.ir.ops import CLASS_INDEX_LOSSES, OPS, class_dim
from nnspec.ir.rewrite import unread_nodes
from nnspec.ir.train import TrainConfig
from nnspec.ir.types import TensorType

_DTYPES = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}


class InputError(ValueError):
    """Arrays that do not fit the model's declared inputs (a user mistake, not a bug)."""


@dataclass
class _Step:
    node: str
    inputs: tuple[str, ...]
    params: dict[str, str]
    backward: object


def _check_array(name: str, declared: TensorType, array, symbols: dict) -> np.ndarray:
    array = np.asarray(array)
    want = _DTYPES[declared.dtype]
    if declared.dtype == "int64":
        if array.dtype.kind not in "iu":
            if array.dtype.kind == "f" and array.size and np.all(np.mod(array, 1) == 0):
                array = array.astype(np.int64)
            else:
                raise InputError(f"`{name}` takes integer tokens {declared}, got {array.dtype} values")
    elif array.dtype.kind not in "fiub":
        raise InputError(f"`{name}` takes numbers, got {array.dtype} values")
    array = np.ascontiguousarray(array, dtype=want)
    shape = array.shape[1:] if declared.batched else array.shape
    if declared.batched and array.ndim == 0:
        raise InputError(f"`{name}` needs a batch of samples shaped {declared}, got a scalar")
    if len(shape) != declared.rank:
        raise InputError(f"`{name}` takes samples shaped {declared} (a batch is "
                         f"{declared.with_batch()}), got an array of shape {array.shape}")
    for got, dim in zip(shape, declared.shape):
        if isinstance(dim, int):
            if got != dim:
                raise InputError(f"`{name}` takes samples shaped {declared}, got {list(shape)} "
                                 f"(array shape {array.shape})")
        elif symbols.setdefault(dim, got) != got:
            raise InputError(f"`{name}`: the symbolic dim {dim} is {symbols[dim]} elsewhere "
                             f"but {got} here")
    return array


# the layers whose output a relu that alone reads it clamps in place (``_fusion_plan``)
CONVOLUTIONS = ("conv1d", "conv2d")


def _gates(graph: Graph, silu: Node, reader: Node) -> bool:
    """Whether ``reader`` is a product of ``silu`` and another operand of its own shape."""
    return reader.op == "mul" and len(reader.inputs) == 2 and \
        list(reader.inputs).count(silu.name) == 1 and \
        all(graph.node(i).type == reader.type for i in reader.inputs)


def _passed_through(d_out):
    """The backward of an activation that its neighbour (its input's node, or the product
    that reads it) applied and differentiates itself."""
    return (d_out,), {}


def _apply(graph: Graph, node, arrays, params, ctx):
    """Run a node's rule, adapting operands whose batch layout the kernel cannot see."""
    rule = RULES[node.op]
    in_types = [graph.node(i).type for i in node.inputs]
    op = OPS[node.op]
    if op.broadcast:
        aligned, restore = align_batched(node, in_types, arrays)
        out, backward = rule(node, aligned, params, ctx)

        def aligned_backward(d_out):
            grads, param_grads = backward(d_out)
            return restore(grads), param_grads

        return out, aligned_backward
    if needs_batch_of_one(op, in_types):
        out, backward = rule(node, [a[None] for a in arrays], params, ctx)

        def unbatched_backward(d_out):
            grads, param_grads = backward(d_out[None])
            return tuple(g if g is None else g[0] for g in grads), param_grads

        return out[0], unbatched_backward
    return rule(node, arrays, params, ctx)


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays are the same memory seen the same way (a kernel's gradient written
    into its slot, ``gradient_slots``)."""
    return a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype and \
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


class NumpyModel:
    """A checked model, runnable in NumPy: weights, forward, loss, gradients.

    >>> spec = nnspec.load("specs/digits_mlp.nn")
    >>> model = NumpyModel.from_spec(spec, seed=0)
    >>> probs = model(x)                     # eval mode forward
    >>> loss = model.loss(x, y)              # train mode: forward + loss, tape kept
    >>> grads = model.backward()             # {parameter name: gradient}
    """

    def __init__(self, graph: Graph, *, seed: int = 0, train: TrainConfig | None = None):
        """`train`: the train section whose loss `loss()` computes (None: forward only)."""
        keep_freed_memory()
        small_pages()
        self.graph = graph
        self.train = train
        state = initial_state(graph, seed)
        trainable = {n: p.spec.shape for n, p in graph.params.items() if p.spec.trainable}
        frozen = set(train.frozen_params(graph)) if train is not None else set()
        order = sorted(trainable, key=lambda n: n in frozen)  # frozen last: a stable sort
        self.buffer = ParamBuffer({n: trainable[n] for n in order})
        self.buffer.load({n: state[n] for n in trainable})
        self.trained = self.buffer.leading(len(order) - len(frozen))  # what the optimizer steps
        self.buffers = {n: state[n] for n, p in graph.params.items() if not p.spec.trainable}
        self.rng = np.random.default_rng(seed + 1)
        self.input_grads: dict[str, np.ndarray] = {}
        self._tape: list[_Step] = []
        self._loss_tape: list[_Step] = []
        self._seeds: dict[str, str] = {}  # loss input -> the model node its gradient goes to
        self._unread = unread_nodes(graph, train) if train is not None else frozenset()
        self._release_plans: dict[tuple, list[tuple[str, ...]]] = {}
        self._fusion_plans: dict[tuple, dict[str, str | None]] = {}

    @classmethod
    def from_spec(cls, spec, seed: int | None = None) -> NumpyModel:
        train = spec.train
        if seed is None:
            seed = train.seed if train is not None else 0
        return cls(spec.graph, seed=seed, train=train)

    # ---- weights ------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.buffer.params

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return self.buffer.grads

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed by their PyTorch state_dict names."""
        out = {n: a.copy() for n, a in self.buffer.params.items()}
        out.update({n: a.copy() for n, a in self.buffers.items()})
        return {n: out[n] for n in self.graph.params}

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Load weights; every name and shape must match (raises ValueError naming the first
        mismatch), and nothing changes if any does not."""
        self.graph.check_weights(arrays)
        self.buffer.load({n: arrays[n] for n in self.buffer.params})
        for name, array in self.buffers.items():
            array[...] = arrays[name]

    # ---- what the training loop needs (nnspec.training.backend.TrainableModel) ---------

    def make_optimizer(self, setting):
        """The optimizer of a train section's `Setting` over the flat parameter buffer."""
        from nnspec.backends.numpy.optim import make_optimizer

        return make_optimizer(setting.name, self.trained, **setting.args)

    def clip_grad_norm(self, max_norm: float) -> float:
        from nnspec.backends.numpy.schedules import clip_grad_norm

        return clip_grad_norm(self.trained, max_norm)

    @property
    def dropout_state(self) -> dict:
        """The dropout generator's state (JSON-ready), for exact resume."""
        return self.rng.bit_generator.state

    @dropout_state.setter
    def dropout_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        from safetensors.numpy import save_file

        save_file(self.state_dict(), str(path), metadata=metadata)

    def load(self, path: str | Path) -> None:
        from safetensors.numpy import load_file

        self.load_state_dict(load_file(str(path)))

    # ---- running ------------------------------------------------------------------------

    def feeds(self, x) -> dict[str, np.ndarray]:
        """Model inputs by name: a dict, a tuple in declaration order, or one array."""
        names = self.graph.inputs
        if isinstance(x, np.ndarray) and x.dtype.names:  # a structured array: a field each
            x = {name: x[name] for name in x.dtype.names}
        if isinstance(x, dict):
            unknown = set(x) - set(names)
            if unknown:
                raise InputError(f"unknown input `{min(unknown)}`; the model takes "
                                 f"{', '.join(names)}")
            values = x
        elif isinstance(x, (tuple, list)) and len(names) > 1:
            values = dict(zip(names, x))
        else:
            values = {names[0]: x}
        missing = [n for n in names if n not in values]
        if missing:
            raise InputError(f"the model needs the input `{missing[0]}`")
        symbols: dict = {}
        arrays = {n: _check_array(n, self.graph.node(n).type, values[n], symbols) for n in names}
        batches = {a.shape[0] for a in arrays.values()}
        if len(batches) > 1:
            raise InputError(f"the inputs have different batch sizes: {sorted(batches)}")
        if any(arrays[n].shape[0] == 0 for n in names if self.graph.node(n).type.batched):
            # an empty batch is a data pipeline's slip; a kernel would fail on it far from here
            raise InputError("the batch is empty: every input needs at least one sample")
        return arrays

    @collector_paused(freeze_survivors=True)  # a step makes closures and arrays, no cycles
    def _run(self, graph: Graph, values: dict[str, np.ndarray], *, train: bool, record: bool,
             skip: frozenset[str] = frozenset(), input_grads: bool = True,
             keep: frozenset[str] | None = frozenset()) -> dict[str, np.ndarray]:
        """Run the graph from `values` (the inputs by name). A value leaves `values` once its
        last reader has run unless it is an input, an output or in `keep` (None keeps every
        value): what backward needs, the backward closures hold, and nothing else stays."""
        ctx = Context(train, self.rng, self.buffers)
        release = None if keep is None else self._release_plan(graph, skip, keep)
        fusions = {} if keep is None else self._fusion_plan(graph, skip, keep)
        params = self.buffer.params
        # a value needs a gradient when it depends on a trainable parameter or on an input
        # whose gradient is wanted, and a run is recorded; a node is told whether any of its
        # inputs does
        needs_grad = dict.fromkeys(graph.inputs, input_grads)
        for index, node in enumerate(graph.nodes):
            if node.op == "input" or node.name in skip:
                continue
            ctx.input_grad = record and any(needs_grad.get(i, False) for i in node.inputs)
            needs_grad[node.name] = ctx.input_grad or any(full in params
                                                          for full in node.params.values())
            local = {k: params[full] if full in params else self.buffers[full]
                     for k, full in node.params.items()}
            ctx.activation = fusions.get(node.name)
            if node.name in fusions and ctx.activation is None:  # applied by its input's node
                out, backward = values[node.inputs[0]], _passed_through
            else:
                out, backward = _apply(graph, node, [values[i] for i in node.inputs], local,
                                       ctx)
            # a loss gives a NumPy scalar; as an operand (`64 * bce(...)`) it must be an array
            # (a layer with several results gives their tuple, which `result` nodes read)
            values[node.name] = out if isinstance(out, (np.ndarray, tuple)) else np.asarray(out)
            if record:
                self._tape.append(_Step(node.name, node.inputs, node.params, backward))
            if release is not None:
                for name in release[index]:
                    del values[name]
        return values

    def _fusion_plan(self, graph: Graph, skip: frozenset[str], keep: frozenset[str]
                     ) -> dict[str, str | tuple | None]:
        """{batchnorm: the activation it applies, that activation: None} for each batchnorm
        whose output only a relu, relu6 or leaky_relu (("leaky_relu", its slope)) reads and
        nobody sees (not an output, not kept): the batch norm's compiled loops then clamp
        its output and mask its gradient, and the activation's own passes (a clip, a mask,
        a product) are gone (MobileNet against torch 1.93 -> 1.72 in `bench_real.py` runs
        before and after). The same for a sum of same-shape operands that only a relu reads
        (a residual join, `relu(y + shortcut)`: ``elementwise.add_relu``), and for a
        convolution that only a relu reads (or a leaky ReLU of slope >= 0:
        ``conv.with_bias``; the U-Net's step against torch 1.17 -> 1.06, its relus had
        taken 3.2 of 38 ms). A silu that only a product of same-shape operands reads is
        applied by the product ({product: ("silu", the operand's index), silu: None}:
        ``elementwise.silu_mul``, a SwiGLU feed-forward). Remembered as the release plans
        are."""
        key = (id(graph), skip, keep)
        plan = self._fusion_plans.get(key)
        if plan is None:
            plan = {}
            readers = graph.consumers()
            seen = set(graph.outputs) | keep
            for node in graph.nodes:
                after = [graph.node(r) for r in readers.get(node.name, ()) if r not in skip]
                if node.name in skip or node.name in seen or not node.type.batched \
                        or len(after) != 1:
                    continue
                if node.op == "silu" and node.name not in plan and \
                        after[0].name not in plan and _gates(graph, node, after[0]):
                    plan[node.name] = None
                    plan[after[0].name] = ("silu", list(after[0].inputs).index(node.name))
                    continue
                if tuple(after[0].inputs) != (node.name,):
                    continue
                if node.op == "batchnorm" and after[0].op in NORM_ACTIVATIONS or \
                        node.op in CONVOLUTIONS and (after[0].op == "relu" or (
                            after[0].op == "leaky_relu" and
                            after[0].attrs.negative_slope >= 0)) or \
                        node.op == "add" and after[0].op == "relu" and all(
                            graph.node(i).type == node.type for i in node.inputs):
                    plan[node.name] = after[0].op if after[0].op != "leaky_relu" else \
                        ("leaky_relu", after[0].attrs.negative_slope)
                    plan[after[0].name] = None
            self._fusion_plans[key] = plan
        return plan

    def _release_plan(self, graph: Graph, skip: frozenset[str], keep: frozenset[str]
                      ) -> list[tuple[str, ...]]:
        """Per node of `graph`, the values nothing after it reads (remembered per graph,
        skipped set and kept set: a few of each in a model's life)."""
        key = (id(graph), skip, keep)
        plan = self._release_plans.get(key)
        if plan is None:
            last_reader = {}
            for index, node in enumerate(graph.nodes):
                if node.name not in skip:
                    last_reader.update(dict.fromkeys(node.inputs, index))
            kept = keep | set(graph.inputs) | set(graph.outputs)
            plan = [[] for _ in graph.nodes]
            for name, index in last_reader.items():
                if name not in kept:
                    plan[index].append(name)
            plan = [tuple(names) for names in plan]
            self._release_plans[key] = plan
        return plan

    def forward(self, x, *, train: bool = False, record: bool = False):
        """The model's output for a batch, a tuple in the spec's order when it has several
        (`recon, mu, logvar`); `record=True` keeps the tape for `backward`."""
        self._tape = []
        values = self._run(self.graph, self.feeds(x), train=train, record=record)
        self._seeds = {}
        outputs = tuple(values[o] for o in self.graph.outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    __call__ = forward

    def outputs(self, x, *, train: bool = False) -> dict[str, np.ndarray]:
        """The model's outputs for a batch by name (`{"recon": ..., "mu": ...}`)."""
        values = self._run(self.graph, self.feeds(x), train=train, record=False)
        return {name: values[node] for name, node in self.graph.named_outputs.items()}

    def activations(self, x, *, train: bool = False) -> dict[str, np.ndarray]:
        """Every node's value for a batch, by node name (inputs included), for inspection."""
        return self._run(self.graph, self.feeds(x), train=train, record=False, keep=None)

    def loss(self, x, target=None, *, train: bool = True, input_grads: bool = False) -> float:
        """Forward and loss in one pass, keeping the tape; then call `backward()`. `target`
        is the data's one target, or the targets by name (a dict) when the loss takes
        several; a loss that reads no target ignores it.

        Gradients with respect to the inputs are skipped unless `input_grads=True` (a first
        convolution's input gradient costs as much as its weight gradient)."""
        if self.train is None:
            raise ValueError("this model has no loss: its spec has no train section")
        config = self.train
        self._tape = []
        feeds = self.feeds(x)
        outputs = dict(config.outputs)
        values = self._run(self.graph, feeds, train=train, record=True, skip=self._unread,
                           input_grads=input_grads, keep=frozenset(outputs.values()))
        loss_feeds, self._seeds = {}, {}
        for b in config.bindings:
            if b.source == "output":
                loss_feeds[b.node] = values[outputs[b.name]]
                self._seeds[b.node] = outputs[b.name]
            elif b.source == "input":
                loss_feeds[b.node] = feeds[b.name]
                self._seeds[b.node] = b.name
        batch = next(iter(feeds.values())).shape[0]
        for b, array in self._targets(target).items():
            loss_feeds[b.node] = self._check_target(b, array, loss_feeds, batch)
        model_tape = self._tape
        self._tape = []
        loss_values = self._run(config.loss_graph, loss_feeds, train=train, record=True)
        self._loss_tape = self._tape
        self._tape = model_tape
        return float(loss_values[config.loss_graph.outputs[0]])

    def _targets(self, target) -> dict:
        """The data's targets by binding: one array for one target, else a dict by name."""
        wanted = [b for b in self.train.bindings if b.source == "target"]
        if not wanted:
            return {}
        if isinstance(target, np.ndarray) and target.dtype.names:  # a field per target
            target = {name: target[name] for name in target.dtype.names}
        if not isinstance(target, dict):
            if len(wanted) > 1:
                raise InputError(f"the loss takes {len(wanted)} targets "
                                 f"({', '.join(b.name for b in wanted)}); pass them by name")
            if target is None:
                raise InputError(f"the loss needs the target `{wanted[0].name}`")
            return {wanted[0]: target}
        names = {b.name for b in wanted}
        unknown = sorted(set(target) - names)
        if unknown:
            raise InputError(f"unknown target `{unknown[0]}`; the loss takes "
                             f"{', '.join(sorted(names))}")
        missing = [b.name for b in wanted if b.name not in target]
        if missing:
            raise InputError(f"the loss needs the target `{missing[0]}`")
        return {b: target[b.name] for b in wanted}

    def _check_target(self, binding, target, loss_feeds: dict, batch: int) -> np.ndarray:
        """A target checked against what its loss expects for its prediction; class ids
        must name one of the prediction's classes (or be ignore_index)."""
        loss_graph = self.train.loss_graph
        declared = loss_graph.node(binding.node).type
        use = next((loss_graph.node(u) for u in loss_graph.consumers()[binding.node]), None)
        pred = loss_feeds.get(use.inputs[0]) if use is not None else None
        target = np.asarray(target)
        if (declared.dtype == "int64" and target.dtype.kind == "f" and pred is not None
                and target.ndim == pred.ndim):
            declared = TensorType(tuple(pred.shape[1:]), "float32")  # class probabilities
        target = _check_array(binding.name, declared, target, {})
        if target.shape[0] != batch:
            raise InputError(f"{target.shape[0]} targets for {batch} samples")
        if target.dtype == np.int64 and use is not None and use.op in CLASS_INDEX_LOSSES \
                and pred is not None:
            classes = pred.shape[class_dim(pred.ndim - 1) + 1]
            valid = (target >= 0) & (target < classes) | (target == use.attrs.get("ignore_index"))
            if not valid.all():
                bad = target[~valid].flat[0]
                raise InputError(f"the label {bad} is out of range: the model gives {classes} "
                                 f"class scores, so labels must be 0..{classes - 1}")
        if use is not None and use.op == "binary_cross_entropy" and not use.attrs.get("logits"):
            # torch refuses these too; as logs of probabilities they would give a wrong loss
            outside = ~((target >= 0) & (target <= 1))
            if outside.any():
                raise InputError(f"binary_cross_entropy needs targets between 0 and 1, got "
                                 f"{target[outside].flat[0]:g}")
        return target

    def backward(self, d_output=None) -> dict[str, np.ndarray]:
        """Gradients of the last `loss()` (or of `sum(output * d_output)` after a recorded
        `forward`: one array, or one per output in order or by name) into `grads`; input
        gradients go to `input_grads`."""
        written: set[str] = set()
        grads: dict[str, np.ndarray] = {}
        if self._seeds:
            loss_grads = {self.train.loss_graph.outputs[0]: np.ones((), np.float32)}
            self._reverse(self._loss_tape, loss_grads, written)
            for loss_input, node in self._seeds.items():
                if loss_input in loss_grads:
                    grad = loss_grads[loss_input]
                    grads[node] = grads[node] + grad if node in grads else grad
        else:
            if d_output is None:
                raise ValueError("backward after forward needs d_output (the output's gradient)")
            for node, grad in self._output_grads(d_output).items():
                grads[node] = np.asarray(grad, np.float32)
        self._reverse(self._tape, grads, written)
        for name, grad in self.buffer.grads.items():
            if name not in written:
                grad.fill(0.0)
        self.input_grads = {n: grads[n] for n in self.graph.inputs if n in grads}
        self._tape = []
        return self.buffer.grads

    @staticmethod
    def _free_slots(step: _Step, param_grads: dict[str, np.ndarray], written: set[str]
                    ) -> list[np.ndarray]:
        """The step's parameters' gradient slots that a kernel may write into
        (``gradient_slots``): not yet written this backward, and of a shape no other of its
        parameters has."""
        owned = [full for full in step.params.values() if full in param_grads]
        shapes = [param_grads[full].shape for full in owned]
        return [param_grads[full] for full in owned
                if full not in written and shapes.count(param_grads[full].shape) == 1]

    def _output_grads(self, d_output) -> dict[str, object]:
        outputs = self.graph.named_outputs
        if isinstance(d_output, dict):
            return {outputs[name]: g for name, g in d_output.items() if g is not None}
        if len(outputs) == 1:
            return {self.graph.outputs[0]: d_output}
        if len(d_output) != len(outputs):
            raise ValueError(f"backward needs {len(outputs)} gradients, one per output")
        return {node: g for node, g in zip(self.graph.outputs, d_output) if g is not None}

    @collector_paused(freeze_survivors=True)
    def _reverse(self, tape: list[_Step], grads: dict[str, np.ndarray], written: set[str]
                 ) -> None:
        """Backward over `tape`, emptying it: each step's closure, and the forward arrays
        only it held, are freed as soon as its gradients are out. A parameter's first
        gradient is copied into its buffer and later ones (tied weights) added: zeroing
        the buffer and adding every gradient was two passes more (a 12M-parameter ResNet's
        step: 10 ms)."""
        param_grads = self.buffer.grads
        while tape:
            step = tape.pop()
            d_out = grads.pop(step.node, None)
            if d_out is None:
                continue
            with gradient_slots.offered(self._free_slots(step, param_grads, written)):
                input_grads, local_grads = step.backward(d_out)
            for name, grad in zip(step.inputs, input_grads):
                if grad is None:
                    continue
                if name in grads:  # a value that feeds several ops
                    grads[name] = sum_of(grads[name], grad) if isinstance(grad, np.ndarray) \
                        else grads[name] + grad  # (a multi-result op's ResultGrads)
                else:
                    grads[name] = grad
            for local, grad in local_grads.items():
                full = step.params[local]
                if full in written:
                    param_grads[full] += grad
                elif full in param_grads:
                    if not _same_view(grad, param_grads[full]):  # written there already
                        np.copyto(param_grads[full], grad)
                    written.add(full)
