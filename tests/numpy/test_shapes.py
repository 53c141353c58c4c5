"""The IR's inferred shapes are the shapes the interpreter computes, node by node."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import load

SPECS = sorted((Path(__file__).parent.parent.parent / "specs").glob("*.nn"))
SMALLER = {  # the big published models, shrunk through their hyperparameters
    "gpt2_small": {"vocab": 50, "ctx": 8, "d": 16, "layers": 2, "heads": 2},
    "bert_base": {"vocab": 50, "max_len": 16, "seq": 8, "d": 16, "layers": 2, "heads": 2},
    "unet": {"base": 4, "size": 32},
}
TOO_BIG = 5_000_000  # parameters; the 224x224 image models are checked by the shape rules only


def _sample(t, rng, symbols):
    shape = (3,) + tuple(d if isinstance(d, int) else symbols.setdefault(d, 5) for d in t.shape)
    if t.dtype == "int64":
        return rng.integers(0, 2, shape)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_node_has_its_inferred_shape(path):
    spec = load(path, overrides=SMALLER.get(path.stem))
    if sum(math.prod(p.spec.shape) for p in spec.graph.params.values()) > TOO_BIG:
        pytest.skip("too large for a unit test of the interpreter")
    model = NumpyModel.from_spec(spec, seed=0)
    rng = np.random.default_rng(0)
    symbols: dict = {}
    feeds = {n: _sample(spec.graph.node(n).type, rng, symbols) for n in spec.graph.inputs}
    values = model.activations(feeds)
    for node in spec.graph.nodes:
        t = node.type
        expected = ((3,) if t.batched else ()) + tuple(
            d if isinstance(d, int) else symbols.get(d, d) for d in t.shape)
        value = values[node.name]
        if isinstance(value, tuple):  # a layer giving several tensors: its main one's type
            value = value[0]
        assert value.shape == expected, node.name
