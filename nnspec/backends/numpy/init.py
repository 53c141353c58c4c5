"""Weight initialisation with nnspec's own seeded generator, following PyTorch's schemes.

The schemes are torch's defaults for each layer (Linear/Conv: kaiming-uniform with
a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases the same; RNNs U(-1/sqrt(H), ..);
embeddings N(0, 1); MultiheadAttention's in_proj xavier-uniform with zero biases; norms
ones/zeros). The random stream is nnspec's (NumPy PCG64), so both backends start equal by
loading these arrays, not by sharing a generator.
"""

from __future__ import annotations

import math

import numpy as np

from nnspec.ir.graph import Graph
from nnspec.ir.ops import ParamSpec


def init_array(spec: ParamSpec, rng: np.random.Generator) -> np.ndarray:
    shape = spec.shape
    if spec.dtype == "int64":
        return np.zeros(shape, dtype=np.int64)
    if spec.init in ("kaiming_uniform", "uniform_fan_in", "rnn_uniform"):
        bound = 1.0 / math.sqrt(spec.fan_in) if spec.fan_in else 0.0
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if spec.init == "xavier_uniform":
        fan_out, fan_in = shape[0], shape[1]
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if spec.init == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(spec.std)
    if spec.init == "ones":
        return np.ones(shape, dtype=np.float32)
    if spec.init == "zeros":
        return np.zeros(shape, dtype=np.float32)
    raise AssertionError(f"no initialiser for scheme {spec.init!r}")


def initial_state(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Every parameter and buffer of the graph, drawn in the graph's parameter order."""
    rng = np.random.default_rng(seed)
    return {name: init_array(p.spec, rng) for name, p in graph.params.items()}
