"""What the training loop needs of a model, whichever backend runs it.

`NumpyModel` (the interpreter) and `TorchModel` (the generated PyTorch module behind the
same interface) both implement it; the loop, evaluation and run directories see only this.
`TorchSettings` are the torch backend's device, precision and compilation
(`train --device/--precision/--compile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nnspec.ir.graph import Graph
from nnspec.ir.train import Setting


class TrainableModel(Protocol):
    graph: Graph

    def forward(self, x) -> np.ndarray | tuple[np.ndarray, ...]:
        """The model's output for a batch, in eval mode (a tuple when it has several)."""

    def loss(self, x, target, *, train: bool = True) -> float:
        """Forward and loss; in training mode the tape is kept for `backward()`. `x` and
        `target` are arrays, or structured arrays with a field per input / target."""

    def backward(self) -> Any:
        """Gradients of the last training `loss()` into the parameters."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer under nnspec's names."""

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None: ...

    def make_optimizer(self, setting: Setting) -> Any:
        """The train section's optimizer over this model's parameters (`step`, `zero_grad`,
        `state_dict`, `load_state_dict`, `lr`)."""

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradients to a total norm of at most `max_norm` (torch's rule)."""

    @property
    def dropout_state(self) -> Any:
        """The random generator's state, JSON-ready, for exact resume."""

    @dropout_state.setter
    def dropout_state(self, state: Any) -> None: ...


DEVICES = ("cpu", "cuda", "mps", "auto")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TorchSettings:
    """Where and how `train --backend torch` runs, as given (`auto` is resolved when the
    model is made, again on resume); kept in config.json so a resumed run runs the same way.
    `precision` is what autocast computes in (the weights stay float32); `compile` runs the
    module through torch.compile."""

    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False

    def to_json(self) -> dict:
        return {"device": self.device, "precision": self.precision, "compile": self.compile}

    @classmethod
    def from_json(cls, data: dict | None) -> TorchSettings:
        return cls(**data) if data else cls()


class BackendError(ValueError):
    """A device or precision this machine or this PyTorch cannot run (a user error)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
