"""The example specs carry torchvision's names: same `state_dict` keys and shapes as the
reference architectures, whose weights load into the generated module (`strict=True`) and
into the NumPy interpreter, giving the reference's outputs.

The references (tests/reference/torchvision_models.py) follow torchvision's source module
for module, since no torchvision wheel loads next to the pinned CPU torch. Weights are random
(batchnorm statistics too), nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.torch.runtime import load_generated
from nnspec.spec import load
from tests.reference import torchvision_models as tv

pytestmark = pytest.mark.torch
SPECS = Path(__file__).resolve().parents[2] / "specs"

# spec, reference builder, image size for torch, image size for the interpreter (None: skip)
CASES = [
    ("resnet18", tv.resnet18, 224, 64),
    ("resnet50", tv.resnet50, 96, None),
    ("vgg16", tv.vgg16, 64, None),
    ("mobilenet_v2", tv.mobilenet_v2, 96, 64),
]


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, batchnorm statistics included, so a swapped or misnamed
    tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var") or (name.endswith(".weight") and tensor.ndim == 1):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            else:
                scale = 0.1 if tensor.ndim == 1 else (2.0 / tensor[0].numel()) ** 0.5
                tensor.copy_(scale * torch.randn(tensor.shape, generator=gen))
    return net.eval()


def assert_agree(got: np.ndarray, want: np.ndarray) -> None:
    """Within 1e-4 of the output's scale."""
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-12)
    assert float(np.abs(got - want).max()) <= 1e-4 * scale


@pytest.mark.parametrize("name, build, size, small", CASES, ids=[c[0] for c in CASES])
def test_names_shapes_and_outputs_match_torchvision(name, build, size, small):
    spec = load(SPECS / f"{name}.nn", overrides={"size": size})
    reference = randomized(build())
    state = reference.state_dict()
    ours = {k: tuple(p.spec.shape) for k, p in spec.graph.params.items()}
    assert ours == {k: tuple(v.shape) for k, v in state.items()}

    _, model_class = load_generated(spec)
    generated = model_class()
    generated.load_state_dict(state, strict=True)
    generated.eval()
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(image).numpy()
        assert_agree(generated(image).numpy(), want)

    if small is None:
        return
    spec = load(SPECS / f"{name}.nn", overrides={"size": small})
    interpreter = NumpyModel(spec.graph)
    interpreter.load_state_dict({k: v.numpy() for k, v in state.items()})
    image = image[:, :, :small, :small].contiguous()
    with torch.no_grad():
        want = reference(image).numpy()
    assert_agree(interpreter.forward(image.numpy()), want)
