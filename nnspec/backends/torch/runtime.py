"""The generated PyTorch module, run in this process: `nnspec train --backend torch`, export.

The spec is compiled to source and executed into a fresh module namespace, so what trains
is exactly the file `nnspec compile` writes: its model class, `loss_fn` and
`make_optimizer`. `TorchModel` gives the training loop the interface of the NumPy
interpreter's `NumpyModel` (loss, backward, NumPy state dicts under nnspec's parameter
names), so both backends share the loop, the run directory, checkpoints and resume.
"""

from __future__ import annotations

import base64
import dataclasses
import linecache
import types

import numpy as np
import torch

from nnspec.backends.torch.codegen import Generator
from nnspec.ir.graph import Graph


def load_generated(spec) -> tuple[types.ModuleType, type]:
    """The generated source of `spec` as a fresh module (no file is written), and its model
    class. Tracebacks show the generated lines."""
    generator = Generator(spec)
    source = generator.text()
    filename = f"<nnspec generated {generator.model_class}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"nnspec_generated_{generator.model_class}")
    exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - our own output
    return module, getattr(module, generator.model_class)


def load_numpy_state(net: torch.nn.Module, graph: Graph, arrays) -> None:
    """Copy nnspec-named NumPy arrays into the module; tied copies follow their owner."""
    graph.check_weights(arrays)
    tensors = {n: torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in graph.params}
    net.load_state_dict(tensors, strict=False)


class TorchOptimizer:
    """The generated `make_optimizer(model)` with the NumPy optimizers' interface: a
    settable `lr` (what schedules drive) and state as flat NumPy arrays named
    `<parameter>.<state>` (`wte.weight.exp_avg`), for resume files."""

    def __init__(self, optimizer: torch.optim.Optimizer, names: list[str]):
        self.optimizer = optimizer
        self.names = names  # parameter names in the optimizer's order

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def step(self) -> None:
        self.optimizer.step()

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                array = value.detach().cpu().numpy() if torch.is_tensor(value) else value
                out[f"{self.names[index]}.{key}"] = np.array(array)
        return out

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        index = {name: i for i, name in enumerate(self.names)}
        state: dict[int, dict] = {}
        for key, array in arrays.items():
            name, _, field = key.rpartition(".")
            if name not in index:
                raise ValueError(f"optimizer state for an unknown parameter `{name}`")
            state.setdefault(index[name], {})[field] = torch.from_numpy(np.array(array))
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


class TorchModel:
    """A spec's generated PyTorch module behind NumpyModel's training interface.

    It starts from given weights (nnspec's seeded initialisation, so both backends start
    equal); dropout draws from torch's generator, seeded with `seed + 1` like the
    interpreter's dropout generator. Arrays go in and come out as NumPy, on the CPU.
    """

    def __init__(self, spec, weights: dict[str, np.ndarray], seed: int):
        train = spec.train
        self.graph = spec.graph
        self.train = train
        self.fused_softmax = bool(train and train.fused_softmax)
        self.code, model_class = load_generated(spec)
        self.net = model_class()
        load_numpy_state(self.net, self.graph, weights)
        frozen = set(train.frozen_params(self.graph)) if train is not None else set()
        for name, param in self.net.named_parameters():  # no gradient: no step, no decay
            param.requires_grad_(name not in frozen)
        torch.manual_seed(seed + 1)
        self._loss: torch.Tensor | None = None

    @classmethod
    def from_numpy(cls, spec, train, model) -> TorchModel:
        """The torch twin of a NumpyModel, with its weights; `train` (the train section
        after command-line overrides) decides the generated loss and optimizer."""
        return cls(dataclasses.replace(spec, train=train), model.state_dict(), train.seed)

    # ---- weights ------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The trainable parameters (shared tensors once), as NumPy views."""
        return {n: p.detach().numpy() for n, p in self.net.named_parameters()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer under nnspec's names (tied weights once)."""
        state = self.net.state_dict()
        return {n: state[n].detach().cpu().numpy().copy() for n in self.graph.params}

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        load_numpy_state(self.net, self.graph, arrays)

    # ---- running ------------------------------------------------------------------------

    def _inputs(self, x) -> list[torch.Tensor]:
        if isinstance(x, dict) or (isinstance(x, np.ndarray) and x.dtype.names):
            arrays = [x[name] for name in self.graph.inputs]
        else:
            arrays = list(x) if isinstance(x, (tuple, list)) and len(self.graph.inputs) > 1 else [x]
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]

    def forward(self, x):
        """The model's output for a batch (a tuple when several), in eval mode."""
        self.net.eval()
        with torch.no_grad():
            out = self.net(*self._inputs(x))
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()

    __call__ = forward

    def _loss_of(self, x, target) -> torch.Tensor:
        logits = {"return_logits": True} if self.fused_softmax else {}
        inputs = self._inputs(x)
        out = self.net(*inputs, **logits)
        if self.fused_softmax:  # the one output the loss reads is the rewrite's `logits`
            outputs = {b.name: out for b in self.train.bindings if b.source == "output"}
        else:
            outputs = dict(zip(self.graph.output_names, out if isinstance(out, tuple) else (out,)))
        targets = [b for b in self.train.bindings if b.source == "target"]
        if isinstance(target, np.ndarray) and target.dtype.names:  # a field per target
            target = {name: target[name] for name in target.dtype.names}
        elif not isinstance(target, dict):
            target = {b.name: target for b in targets}
        args = []
        for b in self.train.bindings:
            if b.source == "output":
                args.append(outputs[b.name])
            elif b.source == "input":
                args.append(inputs[self.graph.inputs.index(b.name)])
            else:
                args.append(torch.from_numpy(np.ascontiguousarray(target[b.name])))
        return self.code.loss_fn(*args)

    def loss(self, x, target, *, train: bool = True) -> float:
        """Forward and loss; in training mode the graph is kept for `backward()`."""
        self.net.train(train)
        if train:
            self._loss = self._loss_of(x, target)
            return self._loss.item()
        with torch.no_grad():
            return self._loss_of(x, target).item()

    def backward(self) -> None:
        """Gradients of the last training `loss()` into the parameters' `.grad`."""
        for p in self.net.parameters():
            p.grad = None
        self._loss.backward()
        self._loss = None

    # ---- the rest of the loop's TrainableModel interface (nnspec.training.backend) ------

    def make_optimizer(self, setting=None) -> TorchOptimizer:
        """The generated `make_optimizer` (written from the same train section `setting`)."""
        names = [n for n, _ in self.net.named_parameters()]
        return TorchOptimizer(self.code.make_optimizer(self.net), names)

    def clip_grad_norm(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm))

    @property
    def dropout_state(self) -> str:
        """torch's generator state, JSON-ready (base64), for resume files."""
        return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")

    @dropout_state.setter
    def dropout_state(self, state: str) -> None:
        raw = np.frombuffer(base64.b64decode(state), dtype=np.uint8).copy()
        torch.set_rng_state(torch.from_numpy(raw))
