"""What the training loop needs of a model, whichever backend runs it.

`NumpyModel` (the interpreter) and `TorchModel` (the generated PyTorch module behind the
same interface) both implement it; the loop, evaluation and run directories see only this.
"""

from __future__ import annotations

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
