"""A class per pixel: the `shapes` data set, cross_entropy and nll over [C, H, W] scores
(the classes first, as torch reads them), per-pixel accuracy, and both backends alike."""

from __future__ import annotations

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import losses
from nnspec.diagnostics import SpecError
from nnspec.ir import ops
from nnspec.ir.types import TensorType
from nnspec.spec import load_text
from nnspec.training.datasets import load_dataset
from nnspec.training.loaders import DataError
from nnspec.training.metrics import MetricSums

# ---- the data set -----------------------------------------------------------------------------


def test_shapes_gives_images_and_a_class_per_pixel():
    data = load_dataset("shapes", n=30, size=12, classes=3)
    assert data.x_train.shape == (24, 1, 12, 12) and data.x_train.dtype == np.float32
    assert data.y_train.shape == (24, 12, 12) and data.y_train.dtype == np.int64
    assert data.input_shape == (1, 12, 12) and data.num_classes == 3
    assert set(np.unique(data.y_train)) == {0, 1, 2}
    assert data.class_names == ("background", "rectangle", "disc")
    # a shape is brighter than the background around it, so the task is learnable ...
    bright = data.x_train[:, 0][data.y_train > 0].mean()
    assert bright > data.x_train[:, 0][data.y_train == 0].mean() + 0.5
    # ... but rectangles and discs are equally bright: only their outline tells them apart
    rect, disc = (data.x_train[:, 0][data.y_train == k].mean() for k in (1, 2))
    assert abs(rect - disc) < 0.15


def test_shapes_is_seeded_and_two_classes_is_foreground():
    a, b = (load_dataset("shapes", n=10, size=8, seed=3) for _ in range(2))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    other = load_dataset("shapes", n=10, size=8, seed=4)
    assert not np.array_equal(a.x_train, other.x_train)
    two = load_dataset("shapes", n=10, size=8, seed=3, classes=2)
    assert np.array_equal(two.y_train, (a.y_train > 0).astype(np.int64))


@pytest.mark.parametrize("options, message", [
    ({"classes": 4}, "must be 2 or 3"),
    ({"size": 2}, "from 4 to 512"),
    ({"size": 8.5}, "from 4 to 512"),
    ({"n": 1}, "at least 2"),
    ({"colour": 1}, "has no option `colour`"),
])
def test_bad_shapes_options_are_data_errors(options, message):
    with pytest.raises(DataError, match=message):
        load_dataset("shapes", **options)


# ---- the class dim ----------------------------------------------------------------------------


def test_class_dim_is_last_for_positions_and_first_for_pixels():
    assert [ops.class_dim(rank) for rank in (1, 2, 3, 4)] == [0, 1, 0, 0]
    assert ops.without_class_dim(TensorType((3, 8, 9))) == (8, 9)
    assert ops.without_class_dim(TensorType((5, 10))) == (5,)


SEGMENTER = """
model Seg {{
  input image: [1, 8, 8]
  image -> conv2d(4, 3, padding = 1) -> relu -> conv2d(3, 1)
}}
train Seg {{
  data      shapes(size = 8)
  loss      {loss}
  optimizer adam(lr = 1e-2)
  metrics   accuracy
}}
"""


def test_cross_entropy_over_c_h_w_scores_takes_h_w_class_ids():
    spec = load_text(SEGMENTER.format(loss="cross_entropy"))
    target = next(b.node for b in spec.train.bindings if b.source == "target")
    assert spec.train.loss_graph.node(target).type == TensorType((8, 8), "int64")


def test_a_wrong_target_for_pixel_scores_names_the_expected_shape():
    text = """
model Seg {
  input image: [1, 8, 8]
  input mask: int[3, 8]
  cross_entropy(image -> conv2d(3, 1), mask)
}"""
    with pytest.raises(SpecError, match=r"expected int\[8, 8\]"):
        load_text(text)


@pytest.fixture
def torch():
    """Torch as the oracle; only these tests skip without it."""
    return pytest.importorskip("torch")


@pytest.mark.torch
@pytest.mark.parametrize("options", [
    {}, {"weight": (1.0, 2.0, 0.5)}, {"label_smoothing": 0.1}, {"ignore_index": 1},
    {"reduction": "sum"}, {"reduction": "none"},
])
def test_pixel_cross_entropy_matches_torch(options, torch):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ids = rng.integers(0, 3, (2, 4, 5))
    loss, backward = losses.cross_entropy(scores, ids, **options)
    d_loss = rng.standard_normal(np.shape(loss)).astype(np.float32)
    d_scores, d_ids = backward(d_loss)
    t_scores = torch.tensor(scores, requires_grad=True)
    t_options = {k: torch.tensor(v) if k == "weight" else v for k, v in options.items()}
    t_loss = F.cross_entropy(t_scores, torch.tensor(ids), **t_options)
    (t_loss * torch.tensor(d_loss)).sum().backward()
    np.testing.assert_allclose(loss, t_loss.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_scores, t_scores.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert d_ids is None


@pytest.mark.torch
def test_pixel_probabilities_and_nll_match_torch(torch):
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    probs = rng.random((2, 3, 4, 5)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    loss, backward = losses.cross_entropy(scores, probs)
    d_scores, d_probs = backward(np.float32(1))
    t_scores, t_probs = (torch.tensor(a, requires_grad=True) for a in (scores, probs))
    F.cross_entropy(t_scores, t_probs).backward()
    np.testing.assert_allclose(d_scores, t_scores.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(d_probs, t_probs.grad.numpy(), rtol=1e-4, atol=1e-7)
    log_probs = np.log(probs)
    ids = rng.integers(0, 3, (2, 4, 5))
    loss, backward = losses.nll(log_probs, ids, weight=(1.0, 0.5, 2.0))
    t_log = torch.tensor(log_probs, requires_grad=True)
    t_loss = F.nll_loss(t_log, torch.tensor(ids), weight=torch.tensor([1.0, 0.5, 2.0]))
    t_loss.backward()
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(backward(np.float32(1))[0], t_log.grad.numpy(), rtol=1e-4,
                               atol=1e-7)


def test_accuracy_counts_pixels_by_their_arg_max_class():
    scores = np.zeros((1, 3, 2, 2), dtype=np.float32)
    scores[0, 2, 0, 0] = scores[0, 1, 0, 1] = scores[0, 1, 1, 1] = 1.0  # (1, 0) stays class 0
    sums = MetricSums(["accuracy"], "argmax")
    sums.update(scores, np.array([[[2, 1], [1, 0]]]))
    assert sums.values()["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("dim, fused", [(0, True), (-3, True), (-1, False)])
def test_a_softmax_fuses_into_pixel_cross_entropy_only_over_the_classes(dim, fused):
    spec = load_text(SEGMENTER.format(loss="cross_entropy").replace(
        "conv2d(3, 1)", f"conv2d(3, 1) -> softmax(dim = {dim})"))
    assert ("logits" in dict(spec.train.outputs)) == fused
