"""Fine-tuning: a new 10-class head on a pretrained ResNet-18, trained a few steps with the
first stage frozen, on both backends.

The "pretrained" weights are torchvision's ResNet-18 with random weights (the reference
module of tests/reference/torchvision_models.py, which follows torchvision's source; nothing
is downloaded), saved as safetensors with its 1000-class `fc`. The run starts from them
through the train section's `init`, `fresh "fc.*"` and `freeze "layer1.*"`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from nnspec.backends.numpy.model import NumpyModel
from nnspec.cli import main
from nnspec.spec import load
from nnspec.training.rundir import read_safetensors
from tests.reference import torchvision_models as tv

pytestmark = pytest.mark.torch
SPECS = Path(__file__).resolve().parents[2] / "specs"
SIZE, CLASSES, SAMPLES = 32, 10, 32  # 24 to train on: 3 full batches
FINE_TUNING = """
train ResNet18 {
  data      npz("tiny.npz")
  loss      cross_entropy
  optimizer sgd(lr = 0.01, momentum = 0.9, weight_decay = 0.1)
  epochs    2
  batch     8
  val       0.25
  init      "pretrained.safetensors"
  fresh     "fc.*"
  freeze    "layer1.*"
}
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A spec with a fine-tuning train section, the pretrained file, a tiny data set."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    reference = tv.resnet18()  # 1000 classes, as the published checkpoints
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(root / "pretrained.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root / "tiny.npz", x=rng.standard_normal((SAMPLES, 3, SIZE, SIZE), np.float32),
             y=rng.integers(0, CLASSES, SAMPLES))
    (root / "finetune.nn").write_text((SPECS / "resnet18.nn").read_text() + FINE_TUNING)
    return root


def train(workdir: Path, out: str, *extra) -> tuple[dict, str]:
    result = invoke("train", workdir / "finetune.nn", "--set", f"classes={CLASSES}",
                    "--set", f"size={SIZE}", "-o", workdir / out, *extra)
    assert result.exit_code == 0, result.output
    weights, _ = read_safetensors(workdir / out / "last.safetensors")
    return weights, result.output


def spec_graph():
    return load(SPECS / "resnet18.nn", overrides={"classes": CLASSES, "size": SIZE}).graph


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_frozen_layers_stay_bit_identical_the_rest_trains_and_the_head_is_new(workdir, backend):
    pretrained, _ = read_safetensors(workdir / "pretrained.safetensors")
    after, output = train(workdir, f"run-{backend}", "--backend", backend)
    graph = spec_graph()
    trainable = [n for n, p in graph.params.items() if p.spec.trainable]
    frozen = [n for n in trainable if n.startswith("layer1.")]
    assert len(frozen) == 12  # 2 blocks x (2 convolutions + 2 batchnorms x weight, bias)
    for name in frozen:  # no step and no weight decay: the very bits of the file
        assert np.array_equal(after[name], pretrained[name]), name
    for name in trainable:
        if name not in frozen and not name.startswith("fc."):
            assert not np.array_equal(after[name], pretrained[name]), name
    assert after["fc.weight"].shape == (CLASSES, 512)
    # batchnorm statistics are buffers, not parameters: in training mode they follow the
    # data in frozen layers too, as in torch after requires_grad_(False)
    assert not np.array_equal(after["layer1.0.bn1.running_mean"],
                              pretrained["layer1.0.bn1.running_mean"])
    assert "fresh: fc.weight [10, 512]" in output and "fc.weight [1000, 512]" in output
    assert "12 parameters frozen (layer1.*)" in output


def test_the_run_starts_from_the_file_with_a_freshly_initialised_head(workdir):
    """With a learning rate of 0 nothing moves: the weights are the starting point."""
    pretrained, _ = read_safetensors(workdir / "pretrained.safetensors")
    start, _ = train(workdir, "run-lr0", "--lr", "0", "--epochs", "1")
    graph = spec_graph()
    seeded = NumpyModel(graph, seed=0).state_dict()
    for name in graph.params:
        if name.startswith("fc."):
            assert np.array_equal(start[name], seeded[name]), name
        elif graph.params[name].spec.trainable:
            assert np.array_equal(start[name], pretrained[name]), name


def test_both_backends_take_the_same_step(workdir):
    """One step on the whole training set changes the weights alike on both backends (within
    1% of each tensor's change; later steps through 20 batchnorms amplify float32 rounding).
    A frozen tensor changes on neither."""
    pretrained, _ = read_safetensors(workdir / "pretrained.safetensors")
    runs = [train(workdir, f"one-step-{b}", "--backend", b, "--epochs", "1", "--batch", "24")[0]
            for b in ("numpy", "torch")]
    for name, array in runs[0].items():
        start = pretrained[name] if not name.startswith("fc.") else 0
        ours, theirs = array - start, runs[1][name] - start
        assert float(np.abs(ours - theirs).max()) <= 0.01 * float(np.abs(ours).max()), name
        if name.startswith("layer1.") and not name.endswith(("running_mean", "running_var",
                                                             "num_batches_tracked")):
            assert not ours.any() and not theirs.any(), name


def test_a_head_of_another_size_without_fresh_is_a_table_and_nothing_runs(workdir):
    spec = workdir / "no_fresh.nn"
    spec.write_text((workdir / "finetune.nn").read_text().replace('  fresh     "fc.*"\n', ""))
    result = invoke("train", spec, "--set", f"classes={CLASSES}", "--set", f"size={SIZE}",
                    "-o", workdir / "run-refused")
    assert result.exit_code == 1
    assert "shape    fc.weight" in result.output and "file gives [1000, 512]" in result.output
    assert "Traceback" not in result.output
    assert not (workdir / "run-refused" / "last.safetensors").exists()
