"""Model parameters and their gradients as views into two flat float32 buffers.

Keeping every parameter in one contiguous buffer (and every gradient in a second one)
lets an optimizer update the whole model with a dozen in-place ufunc calls, however
many tensors the model has; per-tensor loops would cost a Python round trip per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


class ParamBuffer:
    """Named parameter views (``params``) and gradient views (``grads``) over ``data``/``grad``.

    Names keep their insertion order, which is also their order inside the flat buffers.
    Tied weights are one name in the IR, so they are one view here.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]]):
        self.shapes: dict[str, tuple[int, ...]] = {
            name: tuple(int(d) for d in shape) for name, shape in shapes.items()
        }
        total = sum(math.prod(shape) for shape in self.shapes.values())
        self.data = np.zeros(total, dtype=np.float32)
        self.grad = np.zeros(total, dtype=np.float32)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in self.shapes.items():
            end = offset + math.prod(shape)
            self.params[name] = self.data[offset:end].reshape(shape)
            self.grads[name] = self.grad[offset:end].reshape(shape)
            offset = end

    def leading(self, count: int) -> ParamBuffer:
        """The first `count` parameters as a buffer of their own over the same memory: what
        the optimizer and gradient clipping see when the parameters after them are frozen."""
        part = ParamBuffer({})
        part.shapes = dict(list(self.shapes.items())[:count])
        end = sum(math.prod(shape) for shape in part.shapes.values())
        part.data, part.grad = self.data[:end], self.grad[:end]
        part.params = {name: self.params[name] for name in part.shapes}
        part.grads = {name: self.grads[name] for name in part.shapes}
        return part

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy ``arrays`` into the parameters; all names and shapes must match exactly.

        Everything is checked before anything is copied, so a rejected load leaves the
        parameters untouched.
        """
        missing = [name for name in self.shapes if name not in arrays]
        unexpected = [name for name in arrays if name not in self.shapes]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected)}")
            raise ValueError(f"the weights do not match the model's parameters: {'; '.join(parts)}")
        for name, shape in self.shapes.items():
            given = tuple(np.shape(arrays[name]))
            if given != shape:
                raise ValueError(
                    f"parameter '{name}' has shape {shape} in the model "
                    f"but {given} in the loaded weights"
                )
        for name, view in self.params.items():
            np.copyto(view, arrays[name], casting="same_kind")

    def as_dict(self) -> dict[str, np.ndarray]:
        """Independent copies of the parameters, safe to keep or save while training goes on."""
        return {name: view.copy() for name, view in self.params.items()}
