"""What a training step keeps alive: each layer's backward holds what it reads (the arrays
named below), not every forward value, and no temporary the size of the whole net.

Measured as the growth of a step's traced peak (NumPy reports its buffers to tracemalloc)
from a net of 4 layers or blocks to one of 12, per added one, in units of one activation."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np

from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import load_text

DENSE_GELU = """
block Layer(d) {
  input x: [d]
  x -> dense(d) -> gelu
}
model Deep(depth = 4) {
  input x: [256]
  x -> repeat(depth, Layer(256)) -> dense(10)
}
train Deep { loss cross_entropy; optimizer adam(lr = 0.001) }
"""

RESIDUAL_CONV = """
block Basic(c) {
  input x: [C, H, W]
  y = x -> conv2d(c, 3, padding = 1, bias = false) -> batchnorm -> relu
        -> conv2d(c, 3, padding = 1, bias = false) -> batchnorm
  relu(x + y)
}
model Res(depth = 4) {
  input x: [8, 16, 16]
  x -> repeat(depth, Basic(8)) -> global_avgpool -> dense(10)
}
train Res { loss cross_entropy; optimizer sgd(lr = 0.01, momentum = 0.9) }
"""

PRE_NORM_ATTENTION = """
block Layer(d, heads) {
  input x: [T, d]
  x + (x -> layernorm -> attention(heads))
}
model Deep(depth = 4) {
  input x: [128, 64]
  x -> repeat(depth, Layer(64, 2)) -> mean(dim = 0) -> dense(10)
}
train Deep { loss cross_entropy; optimizer adam(lr = 0.001) }
"""


def step_peak(text: str, depth: int, x: np.ndarray, y: np.ndarray) -> int:
    """Bytes of the traced peak of one training step after a first one (which makes the
    optimizer's state)."""
    model = NumpyModel.from_spec(load_text(text, "memory.nn", overrides={"depth": depth}))
    optimizer = model.make_optimizer(model.train.optimizer)
    model.loss(x, y)
    model.backward()
    optimizer.step()
    tracemalloc.start()
    try:
        model.loss(x, y)
        model.backward()
        optimizer.step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def growth_per_layer(text: str, x: np.ndarray, y: np.ndarray) -> float:
    """The peak's growth per added layer (or block), in activations the size of x."""
    return (step_peak(text, 12, x, y) - step_peak(text, 4, x, y)) / 8 / x.nbytes


def test_a_dense_gelu_layer_keeps_two_activations():
    """dense keeps its input, gelu its slope (its output is the next dense's input): as many
    as torch's autograd saves for the same layers (it keeps gelu's input). Keeping every
    forward value, and gelu's own Phi(x) and x^2/2, was 4."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    assert growth_per_layer(DENSE_GELU, x, y) <= 2 + 0.25


def test_a_residual_conv_block_keeps_what_its_backward_reads():
    """Per block: each 3x3 convolution keeps its padded input (18x18 of 16x16 maps), each
    batchnorm its input, each relu a boolean mask (a quarter); the sum keeps
    nothing. Keeping every forward value (and relu outputs, the sum's operands) was 11.7."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    padded = 18 * 18 / (16 * 16)
    budget = 2 * padded + 2 * 1.0 + 2 * 0.25
    assert growth_per_layer(RESIDUAL_CONV, x, y) <= budget + 0.25


def test_a_pre_norm_attention_layer_keeps_its_own_copies_not_the_projection():
    """Per layer: layernorm its normalised input and its output (the projection's weight
    gradient reads it); attention the keys' and values' transposed copies and the scaled
    queries (each with a row or column more: 33/32 at 32 features a head), the keys as rows
    (the compiled backward reads them so) and its context (the output projection's weight
    gradient reads it). The projection's q, k, v output itself, 3 activations, is freed
    after the forward: holding it for its shapes made 9.4."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 128, 64)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    budget = 2 + 3 * 33 / 32 + 2
    assert growth_per_layer(PRE_NORM_ATTENTION, x, y) <= budget + 0.5


def test_a_model_keeps_numpy_off_huge_pages():
    """A training process allocates on ordinary pages (``allocator.small_pages``): NumPy's
    advice for huge pages, on by default where the kernel offers them, is off once a model
    exists. In a fresh process, as the switch is process-wide."""
    code = (
        "from numpy._core import multiarray\n"
        "multiarray._set_madvise_hugepage(True)\n"
        "from nnspec.backends.numpy.model import NumpyModel\n"
        "from nnspec.spec import load_text\n"
        f"NumpyModel.from_spec(load_text({DENSE_GELU!r}))\n"
        "print(multiarray._get_madvise_hugepage())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
