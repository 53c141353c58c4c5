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

from nnspec.backends.numpy.allocator import keep_freed_memory
from nnspec.backends.numpy.init import initial_state
from nnspec.backends.numpy.params import ParamBuffer
from nnspec.backends.numpy.rules import RULES, Context, align_batched, needs_batch_of_one
from nnspec.ir.graph import Graph
from nnspec.ir.ops import CLASS_INDEX_LOSSES, OPS
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


class NumpyModel:
    """A checked model, runnable in NumPy: weights, forward, loss, gradients.

    >>> spec = nnspec.load("specs/digits_mlp.nn")
    >>> model = NumpyModel.from_spec(spec, seed=0)
    >>> probs = model(x)                     # eval mode forward
    >>> loss = model.loss(x, y)              # train mode: forward + loss, tape kept
    >>> grads = model.backward()             # {parameter name: gradient}
    """

    def __init__(self, graph: Graph, *, seed: int = 0, loss_graph: Graph | None = None,
                 fused_softmax: bool = False):
        keep_freed_memory()
        self.graph = graph
        self.loss_graph = loss_graph
        self.fused_softmax = fused_softmax
        state = initial_state(graph, seed)
        trainable = {n: p.spec.shape for n, p in graph.params.items() if p.spec.trainable}
        self.buffer = ParamBuffer(trainable)
        self.buffer.load({n: state[n] for n in trainable})
        self.buffers = {n: state[n] for n, p in graph.params.items() if not p.spec.trainable}
        self.rng = np.random.default_rng(seed + 1)
        self.input_grads: dict[str, np.ndarray] = {}
        self._tape: list[_Step] = []
        self._seed_node: str | None = None

    @classmethod
    def from_spec(cls, spec, seed: int | None = None) -> NumpyModel:
        train = spec.train
        if seed is None:
            seed = train.seed if train is not None else 0
        return cls(spec.graph, seed=seed, loss_graph=train.loss_graph if train else None,
                   fused_softmax=bool(train and train.fused_softmax))

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

        return make_optimizer(setting.name, self.buffer, **setting.args)

    def clip_grad_norm(self, max_norm: float) -> float:
        from nnspec.backends.numpy.schedules import clip_grad_norm

        return clip_grad_norm(self.buffer, max_norm)

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
        return arrays

    def _run(self, graph: Graph, values: dict[str, np.ndarray], *, train: bool, record: bool,
             skip: str | None = None, input_grads: bool = True) -> dict[str, np.ndarray]:
        ctx = Context(train, self.rng, self.buffers)
        params = self.buffer.params
        # a value needs a gradient when it depends on a trainable parameter or on an input
        # whose gradient is wanted; a node is told whether any of its inputs does
        needs_grad = dict.fromkeys(graph.inputs, input_grads)
        for node in graph.nodes:
            if node.op == "input" or node.name == skip:
                continue
            ctx.input_grad = any(needs_grad.get(i, False) for i in node.inputs)
            needs_grad[node.name] = ctx.input_grad or any(full in params
                                                          for full in node.params.values())
            local = {k: params[full] if full in params else self.buffers[full]
                     for k, full in node.params.items()}
            out, backward = _apply(graph, node, [values[i] for i in node.inputs], local, ctx)
            values[node.name] = out
            if record:
                self._tape.append(_Step(node.name, node.inputs, node.params, backward))
        return values

    def forward(self, x, *, train: bool = False, record: bool = False) -> np.ndarray:
        """The model's output for a batch; `record=True` keeps the tape for `backward`."""
        self._tape = []
        values = self._run(self.graph, self.feeds(x), train=train, record=record)
        self._seed_node = self.graph.outputs[0]
        return values[self.graph.outputs[0]]

    __call__ = forward

    def activations(self, x, *, train: bool = False) -> dict[str, np.ndarray]:
        """Every node's value for a batch, by node name (inputs included), for inspection."""
        return self._run(self.graph, self.feeds(x), train=train, record=False)

    def loss(self, x, target, *, train: bool = True, input_grads: bool = False) -> float:
        """Forward and loss in one pass, keeping the tape; then call `backward()`.

        Gradients with respect to the inputs are skipped unless `input_grads=True` (a first
        convolution's input gradient costs as much as its weight gradient)."""
        if self.loss_graph is None:
            raise ValueError("this model has no loss: its spec has no train section")
        self._tape = []
        output = self.graph.node(self.graph.outputs[0])
        skip = output.name if self.fused_softmax else None
        values = self._run(self.graph, self.feeds(x), train=train, record=True, skip=skip,
                           input_grads=input_grads)
        pred = values[output.inputs[0]] if skip else values[output.name]
        target_type = self.loss_graph.node("target").type
        target = np.asarray(target)
        if target_type.dtype == "int64" and target.dtype.kind == "f" and target.ndim == pred.ndim:
            target_type = TensorType(tuple(pred.shape[1:]), "float32")  # class probabilities
        target = _check_array("target", target_type, target, {})
        if target.shape[0] != pred.shape[0]:
            raise InputError(f"{target.shape[0]} targets for {pred.shape[0]} samples")
        self._check_classes(target, pred)
        model_tape = self._tape
        self._tape = []
        loss_values = self._run(self.loss_graph, {"pred": pred, "target": target}, train=train,
                                record=True)
        self._loss_tape = self._tape
        self._tape = model_tape
        self._seed_node = "loss"
        self._pred_node = output.inputs[0] if skip else output.name
        return float(loss_values[self.loss_graph.outputs[0]])

    def _check_classes(self, target: np.ndarray, pred: np.ndarray) -> None:
        """Class indices must name one of the model's outputs (or be ignore_index)."""
        loss = self.loss_graph.node(self.loss_graph.outputs[0])
        if target.dtype != np.int64 or loss.op not in CLASS_INDEX_LOSSES:
            return
        classes = pred.shape[-1]
        valid = (target >= 0) & (target < classes) | (target == loss.attrs.ignore_index)
        if not valid.all():
            bad = target[~valid].flat[0]
            raise InputError(f"the label {bad} is out of range: the model gives {classes} "
                             f"class scores, so labels must be 0..{classes - 1}")

    def backward(self, d_output: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Gradients of the last `loss()` (or of `sum(output * d_output)` after a recorded
        `forward`) into `grads`; input gradients go to `input_grads`."""
        self.buffer.zero_grad()
        if self._seed_node == "loss":
            loss_grads = {self.loss_graph.outputs[0]: np.ones((), np.float32)}
            self._reverse(self._loss_tape, loss_grads)
            grads = {self._pred_node: loss_grads["pred"]}
        else:
            if d_output is None:
                raise ValueError("backward after forward needs d_output (the output's gradient)")
            grads = {self.graph.outputs[0]: np.asarray(d_output, np.float32)}
        self._reverse(self._tape, grads)
        self.input_grads = {n: grads[n] for n in self.graph.inputs if n in grads}
        self._tape = []
        return self.buffer.grads

    def _reverse(self, tape: list[_Step], grads: dict[str, np.ndarray]) -> None:
        param_grads = self.buffer.grads
        for step in reversed(tape):
            d_out = grads.pop(step.node, None)
            if d_out is None:
                continue
            input_grads, local_grads = step.backward(d_out)
            for name, grad in zip(step.inputs, input_grads):
                if grad is None:
                    continue
                if name in grads:
                    grads[name] = grads[name] + grad
                else:
                    grads[name] = grad
            for local, grad in local_grads.items():
                full = step.params[local]
                if full in param_grads:
                    param_grads[full] += grad
