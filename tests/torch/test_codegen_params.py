"""Generated classes parameterised like the spec: a block used at several sizes is one class
whose sizes are its arguments, a `forward` reads them through `self`, and the model takes a
config of its hyperparameters."""

from __future__ import annotations

import types

import numpy as np
import pytest

from nnspec.backends.torch import generate
from nnspec.spec import load_text

torch = pytest.importorskip("torch")

SQUEEZE_EXCITE = """
block SE(r) {
  input x: [C, H, W]
  s = x -> global_avgpool -> dense(C / r) -> relu -> dense(C) -> sigmoid -> reshape(C, 1, 1)
  x * s
}
model Net(classes = 10) {
  input image: [3, 8, 8]
  image -> conv2d(16, 3, padding = 1) -> SE(4) -> conv2d(32, 3, padding = 1) -> SE(4)
        -> global_avgpool -> dense(classes)
}
"""


def _module(code: str) -> types.ModuleType:
    module = types.ModuleType("generated")
    exec(compile(code, "<generated>", "exec"), module.__dict__)  # noqa: S102 - code under test
    return module


def _run_like_the_interpreter(spec) -> None:
    from nnspec.backends.numpy.model import NumpyModel

    graph = spec.graph
    reference = NumpyModel(graph, seed=0)
    model = getattr(_module(generate(spec)), graph.name)()
    model.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in reference.state_dict().items()}, strict=False)
    model.eval()
    shape = [2, *graph.node(graph.inputs[0]).type.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = reference.forward(x)
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), expected,
                               rtol=1e-4, atol=1e-5)


def test_a_reshape_by_an_input_dim_in_a_shared_class_runs():
    """Issue 10 bug 1: the shared class's forward used a constructor argument as a name."""
    spec = load_text(SQUEEZE_EXCITE, "se.nn")
    code = generate(spec)
    assert code.count("class SE(") == 1
    _run_like_the_interpreter(spec)
