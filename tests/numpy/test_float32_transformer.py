"""The transformer path stays in float32: a training step of a pre-norm transformer (layer
norm, causal attention, exact GELU, residual adds, cross-entropy) is traced, and no
array a kernel or rule holds, returns, records or hands to the optimizer is float64."""

import sys
from pathlib import Path

import numpy as np

from nnspec.backends.numpy import rules
from nnspec.backends.numpy.kernels import activations
from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import load_text

SPEC = """
block Block(d, heads) {
  input x: [T, d]
  x = x + (x -> layernorm -> attention(heads, causal = true))
  x + (x -> layernorm -> dense(4 * d) -> gelu -> dense(d))
}
model Tiny(vocab = 11, ctx = 6, d = 8, heads = 2) {
  input tokens: int[ctx]
  h = (tokens -> embedding(vocab, d)) + (tokens -> positions(ctx, d))
  h -> repeat(2, Block(d, heads)) -> layernorm -> dense(vocab)
}
train Tiny { loss cross_entropy; optimizer adam(lr = 1e-3); batch 3 }
"""

# rules.py and its families, rules_layers.py and rules_tensor.py
WATCHED = (str(Path(activations.__file__).parent), str(Path(rules.__file__).with_suffix("")))


def float64_arrays(value):
    """Float64 arrays in a local, a return value or a tuple/list/dict of them."""
    if isinstance(value, np.ndarray):
        return [value] if value.dtype == np.float64 else []
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in float64_arrays(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in float64_arrays(v)]
    return []


def traced_step(model, x, y):
    """One forward and backward with every kernel and rule frame inspected at each line."""
    found, seen = [], set()

    def local_tracer(frame, event, arg):
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} ({frame.f_code.co_name})"
        for name, value in frame.f_locals.items():
            if float64_arrays(value):
                found.append(f"{where}: local `{name}`")
        if event == "return" and float64_arrays(arg):
            found.append(f"{where}: returned")
        return local_tracer

    def tracer(frame, event, arg):
        if frame.f_code.co_filename.startswith(WATCHED):
            seen.add(frame.f_code.co_name)
            return local_tracer
        return None

    sys.settrace(tracer)
    try:
        model.loss(x, y)
        model.backward()
    finally:
        sys.settrace(None)
    return found, seen


def test_a_transformer_training_step_creates_no_float64_arrays():
    spec = load_text(SPEC)
    model = NumpyModel.from_spec(spec, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (3, 6))
    y = rng.integers(0, 11, (3, 6))
    found, seen = traced_step(model, x, y)
    assert {"layer_norm", "attention", "gelu", "backward"} <= seen
    assert found == []
    activations_by_node = model.activations(x, train=True)
    assert {n: a.dtype for n, a in activations_by_node.items()
            if a.dtype.kind == "f" and a.dtype != np.float32} == {}
    assert {n: g.dtype for n, g in model.grads.items() if g.dtype != np.float32} == {}
    assert all(np.isfinite(g).all() and np.any(g) for g in model.grads.values())
