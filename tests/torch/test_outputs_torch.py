"""Several outputs against torch as the oracle: the generated module returns a tuple in the
spec's order, its `loss_fn` takes the tensors the loss names, and the interpreter's loss
and gradients over several outputs, inputs and targets agree with torch's autograd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import load, load_text

torch = pytest.importorskip("torch")
from nnspec.backends.torch.runtime import TorchModel, load_generated, load_numpy_state

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]

TWO_HEADS = """
model TwoHeads(width = 16) {
  input image: [8]
  input meta: [2]
  h = concat(image, meta) -> dense(width) -> tanh
  kind = h -> dense(3)
  size = h -> dense(1)
  kind, size
}

train TwoHeads {
  loss      cross_entropy(kind, label, label_smoothing = 0.1) + 0.5 * mse(size, value)
  optimizer adam
}
"""


def _torch_twin(spec, reference: NumpyModel):
    code, model_class = load_generated(spec)
    net = model_class()
    load_numpy_state(net, spec.graph, reference.state_dict())
    return code, net.eval()


def _assert_same_grads(net, grads: dict) -> None:
    params = dict(net.named_parameters())
    for name, grad in grads.items():
        got = params[name].grad
        got = np.zeros_like(grad) if got is None else got.numpy()
        np.testing.assert_allclose(got, grad, rtol=1e-4, atol=1e-5, err_msg=name)


def test_vae_loss_and_gradients_match_torch():
    spec = load(ROOT / "specs" / "vae.nn")
    reference = NumpyModel.from_spec(spec, seed=2)
    x = np.random.default_rng(0).random((6, 64)).astype(np.float32)
    loss = reference.loss(x, train=False, input_grads=True)  # eval: the noise is its mean
    grads = reference.backward()
    code, net = _torch_twin(spec, reference)
    xt = torch.tensor(x, requires_grad=True)
    recon, mu, logvar = net(xt)
    expected = code.loss_fn(recon, xt, mu, logvar)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    _assert_same_grads(net, grads)
    np.testing.assert_allclose(reference.input_grads["x"], xt.grad.numpy(), rtol=1e-4,
                               atol=1e-6)


def test_two_heads_with_two_targets_match_torch():
    spec = load_text(TWO_HEADS, "heads.nn")
    reference = NumpyModel.from_spec(spec, seed=1)
    rng = np.random.default_rng(3)
    x = {"image": rng.standard_normal((5, 8)).astype(np.float32),
         "meta": rng.standard_normal((5, 2)).astype(np.float32)}
    y = {"label": rng.integers(0, 3, 5), "value": rng.standard_normal((5, 1)).astype(np.float32)}
    loss = reference.loss(x, y, train=False)
    grads = reference.backward()
    code, net = _torch_twin(spec, reference)
    kind, size = net(torch.from_numpy(x["image"]), torch.from_numpy(x["meta"]))
    expected = code.loss_fn(kind, torch.from_numpy(y["label"]), size,
                            torch.from_numpy(y["value"]))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    _assert_same_grads(net, grads)


def test_the_torch_backend_trains_the_same_loss():
    spec = load_text(TWO_HEADS, "heads.nn")
    reference = NumpyModel.from_spec(spec, seed=1)
    twin = TorchModel.from_numpy(spec, spec.train, reference)
    rng = np.random.default_rng(4)
    x = {"image": rng.standard_normal((5, 8)).astype(np.float32),
         "meta": rng.standard_normal((5, 2)).astype(np.float32)}
    y = {"label": rng.integers(0, 3, 5), "value": rng.standard_normal((5, 1)).astype(np.float32)}
    assert twin.loss(x, y, train=False) == pytest.approx(reference.loss(x, y, train=False),
                                                         rel=1e-5)
    kind, size = twin.forward(x)
    outputs = reference.outputs(x)
    np.testing.assert_allclose(kind, outputs["kind"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(size, outputs["size"], rtol=1e-5, atol=1e-6)


def test_generated_noise_is_seeded_and_its_mean_at_eval():
    spec = load_text("model Noisy {\n  input x: [500]\n  x + noise(x)\n}\n", "noisy.nn")
    _, model_class = load_generated(spec)
    net = model_class()
    x = torch.zeros(4, 500)
    torch.manual_seed(7)
    first = net.train()(x)
    torch.manual_seed(7)
    assert torch.equal(first, net(x))
    assert abs(first.mean().item()) < 0.05 and abs(first.std().item() - 1) < 0.05
    assert torch.equal(net.eval()(x), x)
