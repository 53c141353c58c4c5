"""Both backends give the training loop the same interface (nnspec.training.backend)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import load_text
from nnspec.training.backend import TrainableModel

SPEC = """model Net {
  input x: [4]
  x -> dense(8) -> dropout(0.5) -> dense(3)
}
train Net {
  data xor
  loss cross_entropy
  optimizer sgd(lr = 0.1, momentum = 0.9)
}
"""
MEMBERS = [name for name in dir(TrainableModel) if not name.startswith("_")] + ["graph"]


def test_the_numpy_model_is_a_trainable_model():
    spec = load_text(SPEC)
    model = NumpyModel.from_spec(spec, seed=0)
    for name in MEMBERS:
        assert hasattr(model, name), name
    optimizer = model.make_optimizer(spec.train.optimizer)
    x, y = np.ones((5, 4), np.float32), np.array([0, 1, 2, 0, 1])
    state = model.dropout_state
    first = model.loss(x, y)
    model.dropout_state = state
    assert model.loss(x, y) == first  # the same dropout mask again: resume is exact
    model.backward()
    norm = model.clip_grad_norm(1e-3)
    assert norm > 1e-3
    assert np.sqrt(sum(float((g ** 2).sum()) for g in model.grads.values())) == \
        pytest.approx(1e-3, rel=1e-4)
    optimizer.step()


@pytest.mark.torch
def test_the_torch_model_is_a_trainable_model():
    pytest.importorskip("torch")
    from nnspec.backends.torch.runtime import TorchModel

    spec = load_text(SPEC)
    model = TorchModel.from_numpy(spec, spec.train, NumpyModel.from_spec(spec, seed=0))
    for name in MEMBERS:
        assert hasattr(model, name), name
    optimizer = model.make_optimizer(spec.train.optimizer)
    x, y = np.ones((5, 4), np.float32), np.array([0, 1, 2, 0, 1])
    model.loss(x, y)
    model.backward()
    assert model.clip_grad_norm(1e-3) > 1e-3
    optimizer.step()


def test_the_loop_never_asks_which_backend_it_drives():
    from nnspec.training import loop

    tree = ast.parse(Path(inspect.getfile(loop)).read_text(encoding="utf-8"))
    checks = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
              and any(isinstance(a, ast.Name) and a.id in ("NumpyModel", "TorchModel")
                      for a in ast.walk(node))]
    assert checks == []
