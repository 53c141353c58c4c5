"""What every NumPy rule shares: the run context, the rule contract and the registry the
hand-written rules (`rules_layers.py`, `rules_tensor.py`) enter themselves in; `rules.py`
adds the rules derived from the catalogue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nnspec.ir.graph import Node


@dataclass
class Context:
    train: bool
    rng: np.random.Generator
    buffers: dict[str, np.ndarray]  # batchnorm running statistics, updated in place
    # False while running a node none of whose inputs needs a gradient (none depends on a
    # trainable parameter or on an input whose gradient is wanted, or the run is not recorded):
    # a kernel that takes `input_grad` is told, and skips its input gradient (a first
    # convolution's costs as much as its weight gradient) and what only that would read
    input_grad: bool = True
    # the activation (relu, relu6, ("leaky_relu", its slope)) a batchnorm (or relu, an add)
    # applies to its output itself, its one reader then passing values and gradients
    # through, or ("silu", index) for a product applying silu to its operand `index`, the
    # silu's node passing its input through (`NumpyModel._run` plans which)
    activation: str | tuple[str, int | float] | None = None


def as_tuple(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def array_axis(node: Node, dim: int) -> int:
    """A per-sample dim as an axis of the array (batch first when the tensor is batched)."""
    return dim + 1 if dim >= 0 and node.type.batched else dim


def inputs_only(kernel_out):
    """Wrap a kernel whose backward returns only input gradients."""
    out, backward = kernel_out

    def rule_backward(d_out):
        return tuple(backward(d_out)), {}

    return out, rule_backward


def with_params(kernel_out, n_inputs: int, names: tuple[str, ...]):
    """Wrap a kernel whose backward returns (inputs..., params...) in argument order."""
    out, backward = kernel_out

    def rule_backward(d_out):
        grads = backward(d_out)
        return tuple(grads[:n_inputs]), {n: g for n, g in zip(names, grads[n_inputs:])
                                        if g is not None}

    return out, rule_backward


Rule = Callable[[Node, list, dict, Context], tuple]

HAND_WRITTEN: dict[str, Rule] = {}


def rule(*names):
    def register(fn):
        for name in names:
            HAND_WRITTEN[name] = fn
        return fn

    return register
