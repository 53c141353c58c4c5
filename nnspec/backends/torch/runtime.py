"""The generated PyTorch module, run in this process: `nnspec train --backend torch`, export.

The spec is compiled to source and executed into a fresh module namespace, so what trains
is exactly the file `nnspec compile` writes: its model class, `loss_fn` and
`make_optimizer`. `TorchModel` gives the training loop the interface of the NumPy
interpreter's `NumpyModel` (loss, backward, NumPy state dicts under nnspec's parameter
names), so both backends share the loop, the run directory, checkpoints and resume.

On another device the module and its optimizer state live there, while everything the loop
sees (batches, outputs, state dicts) stays NumPy on the CPU: checkpoints load anywhere. Low
precision is autocast around forward and loss (float32 weights, as torch's AMP recipe),
with a gradient scaler for fp16; `compile` calls the module through torch.compile.
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
from nnspec.training.backend import BackendError, TorchSettings

LOW_PRECISION = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_generated(spec) -> tuple[types.ModuleType, type]:
    """The generated source of `spec` as a fresh module (no file is written), and its model
    class. Tracebacks show the generated lines. Any size: training a big model takes far
    longer than generating its code (the limit is `nnspec compile`'s, for the file)."""
    generator = Generator(spec, max_layers=None)
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


def pick_device(requested: str) -> torch.device:
    """`auto`: CUDA if there is a GPU, else Apple's MPS, else the CPU; `cuda:N` the GPU of
    that index; a device this PyTorch cannot reach is a BackendError."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps else "cpu"
    kind, _, index = requested.partition(":")
    if kind == "cuda" and not cuda:
        cpu_build = torch.version.cuda is None
        raise BackendError(f"--device {requested}: PyTorch sees no CUDA GPU" + (
            f" (this PyTorch, {torch.__version__}, is built without CUDA)" if cpu_build else ""),
            "--device auto uses a GPU when there is one, else the CPU")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        seen = ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        raise BackendError(f"--device {requested}: PyTorch sees only {seen}",
                           "CUDA_VISIBLE_DEVICES, when set, numbers the GPUs it lists from 0")
    if requested == "mps" and not mps:
        raise BackendError("--device mps: Apple's Metal (MPS) is not available here",
                           "--device auto uses a GPU when there is one, else the CPU")
    return torch.device(requested)


def _fp16_scaler(device: torch.device) -> torch.amp.GradScaler:
    """fp16's gradient scaler on `device`, or a BackendError where torch has none."""
    try:
        return torch.amp.GradScaler(device.type)
    except (RuntimeError, ValueError, AssertionError) as error:
        raise BackendError(f"--precision fp16 on {device.type}: this PyTorch has no "
                           f"gradient scaler there ({error})",
                           "use --precision bf16, or fp16 on a CUDA GPU") from None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A result as NumPy on the CPU; half-precision values (autocast) as float32."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy()


class TorchOptimizer:
    """The generated `make_optimizer(model)` with the NumPy optimizers' interface: a
    settable `lr` (what schedules drive) and state as flat NumPy arrays named
    `<parameter>.<state>` (`wte.weight.exp_avg`), for resume files. With fp16's gradient
    scaler, steps go through it and its scale is saved too (`grad_scaler.scale`)."""

    SCALER = "grad_scaler"  # a key prefix no parameter's state has (`<name>.<state>`)

    def __init__(self, optimizer: torch.optim.Optimizer, names: list[str],
                 scaler: torch.amp.GradScaler | None = None):
        self.optimizer = optimizer
        self.names = names  # parameter names in the optimizer's order
        self.scaler = scaler

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def step(self) -> None:
        if self.scaler is None:
            self.optimizer.step()
            return
        self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        if self.scaler is not None:
            state = self.scaler.state_dict()
            out[f"{self.SCALER}.scale"] = np.array(state["scale"], dtype=np.float64)
            out[f"{self.SCALER}.growth_tracker"] = np.array(state["_growth_tracker"])
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                array = value.detach().cpu().numpy() if torch.is_tensor(value) else value
                out[f"{self.names[index]}.{key}"] = np.array(array)
        return out

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        index = {name: i for i, name in enumerate(self.names)}
        state: dict[int, dict] = {}
        arrays = dict(arrays)
        scale = arrays.pop(f"{self.SCALER}.scale", None)
        tracker = arrays.pop(f"{self.SCALER}.growth_tracker", None)
        if (scale is not None) != (self.scaler is not None):
            raise ValueError("the checkpoint's gradient scaler (fp16) does not match the run's "
                             "precision")
        if self.scaler is not None:
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": float(scale),
                                         "_growth_tracker": int(tracker)})
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
    interpreter's dropout generator. Arrays go in and come out as NumPy, on the CPU;
    `settings` say on which device the module runs, in which precision, compiled or not
    (BackendError for what this machine cannot do).
    """

    def __init__(self, spec, weights: dict[str, np.ndarray], seed: int,
                 settings: TorchSettings | None = None):
        train = spec.train
        self.graph = spec.graph
        self.train = train
        self.fused_softmax = bool(train and train.fused_softmax)
        self.settings = settings = settings or TorchSettings()
        self.device = pick_device(settings.device)
        self.low = LOW_PRECISION[settings.precision]
        self.scaler = _fp16_scaler(self.device) if settings.precision == "fp16" else None
        self.code, model_class = load_generated(spec)
        self.net = model_class().to(self.device)
        load_numpy_state(self.net, self.graph, weights)
        frozen = set(train.frozen_params(self.graph)) if train is not None else set()
        for name, param in self.net.named_parameters():  # no gradient: no step, no decay
            param.requires_grad_(name not in frozen)
        self.call = torch.compile(self.net) if settings.compile else self.net  # what runs
        torch.manual_seed(seed + 1)
        self._loss: torch.Tensor | None = None
        self._optimizer: TorchOptimizer | None = None

    @classmethod
    def from_numpy(cls, spec, train, model, settings: TorchSettings | None = None
                   ) -> TorchModel:
        """The torch twin of a NumpyModel, with its weights; `train` (the train section
        after command-line overrides) decides the generated loss and optimizer."""
        return cls(dataclasses.replace(spec, train=train), model.state_dict(), train.seed,
                   settings)

    def describe(self) -> str:
        """`cuda, bf16, compiled`: where and how it runs, for the run's header."""
        parts = [str(self.device), self.settings.precision]
        return ", ".join(parts + (["compiled"] if self.settings.compile else []))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.low, enabled=self.low is not None)

    # ---- weights ------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The trainable parameters (shared tensors once), as NumPy views."""
        return {n: p.detach().cpu().numpy() for n, p in self.net.named_parameters()}

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
        return [self._tensor(a) for a in arrays]

    def _tensor(self, array) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def forward(self, x):
        """The model's output for a batch (a tuple when several), in eval mode."""
        self.net.eval()
        with torch.no_grad(), self._autocast():
            out = self.call(*self._inputs(x))
        return tuple(_numpy(o) for o in out) if isinstance(out, tuple) else _numpy(out)

    __call__ = forward

    def _loss_of(self, x, target) -> torch.Tensor:
        logits = {"return_logits": True} if self.fused_softmax else {}
        inputs = self._inputs(x)
        out = self.call(*inputs, **logits)
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
                args.append(self._tensor(target[b.name]))
        return self.code.loss_fn(*args)

    def loss(self, x, target, *, train: bool = True) -> float:
        """Forward and loss; in training mode the graph is kept for `backward()`."""
        self.net.train(train)
        if train:
            with self._autocast():
                self._loss = self._loss_of(x, target)
            return self._loss.item()
        with torch.no_grad(), self._autocast():
            return self._loss_of(x, target).item()

    def backward(self) -> None:
        """Gradients of the last training `loss()` into the parameters' `.grad`."""
        for p in self.net.parameters():
            p.grad = None
        (self._loss if self.scaler is None else self.scaler.scale(self._loss)).backward()
        self._loss = None

    # ---- the rest of the loop's TrainableModel interface (nnspec.training.backend) ------

    def make_optimizer(self, setting=None) -> TorchOptimizer:
        """The generated `make_optimizer` (written from the same train section `setting`)."""
        names = [n for n, _ in self.net.named_parameters()]
        self._optimizer = TorchOptimizer(self.code.make_optimizer(self.net), names, self.scaler)
        return self._optimizer

    def clip_grad_norm(self, max_norm: float) -> float:
        """torch's rule, on the true gradients: fp16's scaled ones are unscaled first."""
        if self.scaler is not None:
            self.scaler.unscale_(self._optimizer.optimizer)
        return float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm))

    @property
    def dropout_state(self) -> str | dict[str, str]:
        """torch's generator states, JSON-ready (base64), for resume files: the CPU's, and
        on a GPU that device's too (dropout there draws from it)."""
        state = _encode(torch.get_rng_state())
        if self.device.type not in _ACCELERATORS:
            return state
        accelerator = getattr(torch, self.device.type)
        return {"cpu": state, self.device.type: _encode(accelerator.get_rng_state(self.device))}

    @dropout_state.setter
    def dropout_state(self, state: str | dict[str, str]) -> None:
        states = state if isinstance(state, dict) else {"cpu": state}
        torch.set_rng_state(_decode(states["cpu"]))
        if self.device.type in _ACCELERATORS and self.device.type in states:
            getattr(torch, self.device.type).set_rng_state(_decode(states[self.device.type]),
                                                           self.device)


_ACCELERATORS = ("cuda", "mps")  # torch.cuda, torch.mps: generators of their own


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def generate_tokens(spec, weights: dict[str, np.ndarray], ids: list[int], new_tokens: int, *,
                    temperature: float, top_k: int | None, seed: int) -> list[int]:
    """`ids` followed by `new_tokens` tokens from the generated module's `generate` (its
    draws from a torch generator seeded with `seed`); ValueError when the generated module
    has no `generate` (not a language model with a fixed context)."""
    _, model_class = load_generated(spec)
    if not hasattr(model_class, "generate"):
        raise ValueError(f"the generated `{model_class.__name__}` has no `generate`: it is "
                         "written for a language model with a fixed context (`int[ctx]`)")
    net = model_class()
    load_numpy_state(net, spec.graph, weights)
    net.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([ids], dtype=torch.int64)
    out = net.generate(tokens, new_tokens, temperature=temperature, top_k=top_k,
                       generator=generator)
    return out[0].tolist()
