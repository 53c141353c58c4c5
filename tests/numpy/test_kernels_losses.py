"""Loss kernels: torch's reduction="mean" as the oracle in float32 (gradients for predictions and
float targets) and saturating inputs; central differences in test_kernel_gradients.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import losses
from tests.numpy.helpers import F, assert_close, torch, torch_op

pytestmark = pytest.mark.strict_numerics(under="ignore")  # tiny gradients flush to 0

FEW = settings(max_examples=20, deadline=None)


def is_float_array(operand):
    return operand.dtype.kind == "f"


def assert_matches_torch(kernel, torch_fn, pred, target, d_loss=0.7, rtol=1e-4, atol=1e-5,
                         check_target_grad=True):
    """The loss and the gradients of d_loss * loss agree with torch; float targets included."""
    loss, backward = kernel(pred, target)
    d_pred, d_target = backward(np.asarray(d_loss, dtype=pred.dtype))
    pred_torch = torch.tensor(pred, requires_grad=True)
    target_torch = torch.tensor(target, requires_grad=is_float_array(target))
    loss_torch = torch_fn(pred_torch, target_torch)
    (loss_torch * d_loss).backward()
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float32
    np.testing.assert_allclose(loss, loss_torch.item(), rtol=rtol, atol=atol)
    assert_close(d_pred, pred_torch.grad, rtol=rtol, atol=atol)
    if not is_float_array(target):
        assert d_target is None
    elif check_target_grad:
        assert_close(d_target, target_torch.grad, rtol=rtol, atol=atol)


def class_last_to_torch(logits):
    """Our class dim is last; torch's F.cross_entropy wants it at position 1."""
    return logits.movedim(-1, 1)


def torch_cross_entropy(label_smoothing=0.0, ignore_index=-100):
    def loss(logits, target):
        return F.cross_entropy(class_last_to_torch(logits),
                               class_last_to_torch(target) if target.is_floating_point()
                               else target,
                               label_smoothing=label_smoothing, ignore_index=ignore_index)
    return loss


def numpy_cross_entropy(label_smoothing=0.0, ignore_index=-100):
    def loss(logits, target):
        return losses.cross_entropy(logits, target, label_smoothing=label_smoothing,
                                    ignore_index=ignore_index)
    return loss


batch_shapes = st.sampled_from([(5,), (1,), (3, 4), (2, 7)])  # (N,) or (N, T)


@pytest.mark.torch
@FEW
@given(batch=batch_shapes, classes=st.integers(2, 9), smoothing=st.sampled_from([0.0, 0.1, 0.35]),
       ignored=st.sampled_from([0.0, 0.3]), scale=st.sampled_from([1.0, 10.0]),
       seed=st.integers(0, 2**16))
def test_cross_entropy_with_class_indices_matches_torch(batch, classes, smoothing, ignored, scale,
                                                        seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((*batch, classes)) * scale).astype(np.float32)
    target = rng.integers(0, classes, batch)
    target[rng.random(batch) < ignored] = -100
    target.flat[0] = 0  # at least one position counts
    assert_matches_torch(numpy_cross_entropy(smoothing), torch_cross_entropy(smoothing),
                         logits, target)


@pytest.mark.torch
@FEW
@given(batch=batch_shapes, classes=st.integers(2, 9), smoothing=st.sampled_from([0.0, 0.2]),
       seed=st.integers(0, 2**16))
def test_cross_entropy_with_class_probabilities_matches_torch(batch, classes, smoothing, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((*batch, classes)) * 3).astype(np.float32)
    target = rng.dirichlet(np.ones(classes), batch).astype(np.float32)
    assert_matches_torch(numpy_cross_entropy(smoothing), torch_cross_entropy(smoothing),
                         logits, target)


@pytest.mark.torch
def test_cross_entropy_honours_a_custom_ignore_index():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 3, 5)).astype(np.float32)
    target = rng.integers(0, 5, (4, 3))
    target[:, 0] = 2  # class 2 is ignored, including where it is the label
    assert_matches_torch(numpy_cross_entropy(0.1, ignore_index=2),
                         torch_cross_entropy(0.1, ignore_index=2), logits, target)


def test_cross_entropy_with_every_position_ignored_is_nan_with_zero_gradient_like_torch():
    logits = np.ones((3, 4), np.float32)
    target = np.full(3, -100)
    loss, backward = losses.cross_entropy(logits, target)
    assert np.isnan(loss)
    d_logits, d_target = backward(np.asarray(1.0, np.float32))
    np.testing.assert_array_equal(d_logits, 0)
    assert d_target is None


def test_softmax_cross_entropy_is_cross_entropy_on_the_pre_softmax_logits():
    assert losses.softmax_cross_entropy is losses.cross_entropy


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_on_huge_logits_is_finite_and_matches_torch(smoothing):
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0],
                       [88.0, 89.0, -90.0]], np.float32)
    target = np.array([0, 0, 1])
    with np.errstate(all="raise"):
        loss, backward = losses.cross_entropy(logits, target, label_smoothing=smoothing)
        d_logits, _ = backward(np.asarray(1.0, np.float32))
    assert np.isfinite(loss) and np.isfinite(d_logits).all()
    assert_matches_torch(numpy_cross_entropy(smoothing), torch_cross_entropy(smoothing), logits,
                         target)
    probabilities = np.eye(3, dtype=np.float32)[[1, 2, 0]]
    assert_matches_torch(numpy_cross_entropy(smoothing), torch_cross_entropy(smoothing), logits,
                         probabilities)


SAME_SHAPE = {
    "mse": (losses.mse, torch_op("nn.functional.mse_loss")),
    "l1": (losses.l1, torch_op("nn.functional.l1_loss")),
    "binary_cross_entropy": (losses.binary_cross_entropy,
                             torch_op("nn.functional.binary_cross_entropy")),
    "binary_cross_entropy_with_logits": (losses.binary_cross_entropy_with_logits,
                                         torch_op("nn.functional.binary_cross_entropy_with_logits")),
}


def prediction_for(name, rng, shape):
    if name == "binary_cross_entropy":
        return rng.uniform(0.02, 0.98, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 2).astype(np.float32)


def target_for(name, rng, shape):
    if name.startswith("binary"):
        return rng.random(shape).astype(np.float32)  # soft labels exercise the target gradient
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.torch
@pytest.mark.parametrize("name", SAME_SHAPE)
@FEW
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 2**16))
def test_same_shape_losses_match_torch(name, shape, seed):
    kernel, torch_fn = SAME_SHAPE[name]
    rng = np.random.default_rng(seed)
    pred, target = prediction_for(name, rng, shape), target_for(name, rng, shape)
    assert_matches_torch(kernel, torch_fn, pred, target)


@pytest.mark.torch
def test_binary_cross_entropy_clamps_log_at_minus_100_like_torch():
    probs = np.array([0.0, 1.0, 0.0, 1.0, 0.5], np.float32)
    target = np.array([1.0, 0.0, 0.0, 1.0, 0.25], np.float32)
    with np.errstate(all="raise"):
        loss, backward = losses.binary_cross_entropy(probs, target)
        _, d_target = backward(np.asarray(1.0, np.float32))
    np.testing.assert_allclose(loss, (100 + 100 + 0 + 0 + np.log(2)) / 5, rtol=1e-6)
    assert np.isfinite(d_target).all()  # torch's -logit(p) is infinite at 0 and 1
    assert_matches_torch(losses.binary_cross_entropy, F.binary_cross_entropy, probs, target,
                         rtol=1e-5, check_target_grad=False)


@pytest.mark.torch
def test_binary_cross_entropy_with_logits_is_stable_for_huge_logits():
    logits = np.array([-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0], np.float32)
    target = np.array([1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0], np.float32)
    with np.errstate(all="raise"):
        loss, backward = losses.binary_cross_entropy_with_logits(logits, target)
        d_logits, d_target = backward(np.asarray(1.0, np.float32))
    assert np.isfinite(loss) and np.isfinite(d_logits).all() and np.isfinite(d_target).all()
    assert_matches_torch(losses.binary_cross_entropy_with_logits,
                         F.binary_cross_entropy_with_logits, logits, target)


def test_integer_targets_of_mse_get_no_gradient():
    pred = np.array([0.5, 2.0], np.float32)
    loss, backward = losses.mse(pred, np.array([1, 2]))
    np.testing.assert_allclose(loss, 0.125)
    d_pred, d_target = backward(np.asarray(1.0, np.float32))
    assert d_pred.dtype == np.float32 and d_target is None


# ---- weights, reductions and the losses of issue 10 -------------------------------------

REDUCTIONS = ("mean", "sum", "none")


def assert_loss_matches_torch(kernel, torch_fn, pred, target, rtol=1e-4, atol=1e-5,
                              check_target_grad=True):
    """Like assert_matches_torch, for any reduction: d_loss has the loss's shape."""
    loss, backward = kernel(pred, target)
    rng = np.random.default_rng(1)
    d_loss = (rng.standard_normal(np.shape(loss)) + 0.5).astype(np.float32)
    d_pred, d_target = backward(np.asarray(d_loss, dtype=pred.dtype))
    pred_torch = torch.tensor(pred, requires_grad=True)
    target_torch = torch.tensor(target, requires_grad=is_float_array(target))
    loss_torch = torch_fn(pred_torch, target_torch)
    (loss_torch * torch.tensor(d_loss)).sum().backward()
    assert np.shape(loss) == tuple(loss_torch.shape) and loss.dtype == np.float32
    assert_close(loss, loss_torch.detach(), rtol=rtol, atol=atol)
    assert_close(d_pred, pred_torch.grad, rtol=rtol, atol=atol)
    if not is_float_array(target):
        assert d_target is None
    elif check_target_grad:
        assert_close(d_target, target_torch.grad, rtol=rtol, atol=atol)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("batch", [(6,), (3, 4)])
def test_weighted_cross_entropy_with_class_indices_matches_torch(reduction, smoothing, weighted,
                                                                 batch):
    rng = np.random.default_rng(len(batch) * 7 + weighted)
    classes = 5
    logits = (rng.standard_normal((*batch, classes)) * 3).astype(np.float32)
    target = rng.integers(0, classes, batch)
    target.flat[1] = -100
    weight = [0.5, 2.0, 1.0, 3.0, 0.25] if weighted else None
    assert_loss_matches_torch(
        lambda x, t: losses.cross_entropy(x, t, weight=weight, reduction=reduction,
                                          label_smoothing=smoothing),
        lambda x, t: F.cross_entropy(class_last_to_torch(x), t, reduction=reduction,
                                     weight=None if weight is None else torch.tensor(weight),
                                     label_smoothing=smoothing), logits, target)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_weighted_cross_entropy_with_class_probabilities_matches_torch(reduction, smoothing):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((4, 3, 5)) * 2).astype(np.float32)
    target = rng.dirichlet(np.ones(5), (4, 3)).astype(np.float32)
    weight = [0.5, 2.0, 1.0, 3.0, 0.25]
    assert_loss_matches_torch(
        lambda x, t: losses.cross_entropy(x, t, weight=weight, reduction=reduction,
                                          label_smoothing=smoothing),
        lambda x, t: F.cross_entropy(class_last_to_torch(x), class_last_to_torch(t),
                                     weight=torch.tensor(weight), reduction=reduction,
                                     label_smoothing=smoothing), logits, target)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_of_log_probabilities_matches_torch(reduction, weighted):
    rng = np.random.default_rng(5)
    log_probs = F.log_softmax(torch.tensor(rng.standard_normal((4, 3, 6))), -1).float().numpy()
    target = rng.integers(0, 6, (4, 3))
    target[0, 0] = 4
    weight = [1.0, 0.5, 2.0, 1.5, 3.0, 0.1] if weighted else None
    assert_loss_matches_torch(
        lambda x, t: losses.nll(x, t, weight=weight, reduction=reduction, ignore_index=4),
        lambda x, t: F.nll_loss(class_last_to_torch(x), t, reduction=reduction, ignore_index=4,
                                weight=None if weight is None else torch.tensor(weight)),
        log_probs, target)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_torch(reduction, log_target):
    rng = np.random.default_rng(7)
    log_probs = F.log_softmax(torch.tensor(rng.standard_normal((5, 4))), -1).float().numpy()
    probs = rng.dirichlet(np.ones(4), 5).astype(np.float32)
    target = np.log(probs) if log_target else probs
    assert_loss_matches_torch(
        lambda x, t: losses.kl_div(x, t, reduction=reduction, log_target=log_target),
        lambda x, t: F.kl_div(x, t, reduction=reduction, log_target=log_target),
        log_probs, target)


@pytest.mark.torch
def test_kl_div_counts_a_zero_target_probability_as_zero_like_torch():
    log_probs = np.log(np.array([[0.2, 0.3, 0.5]], np.float32))
    target = np.array([[0.0, 0.4, 0.6]], np.float32)
    assert_loss_matches_torch(losses.kl_div, F.kl_div, log_probs, target,
                              check_target_grad=False)


POINTWISE = {
    "mse": (losses.mse, torch_op("nn.functional.mse_loss"), {}),
    "l1": (losses.l1, torch_op("nn.functional.l1_loss"), {}),
    "huber": (losses.huber, torch_op("nn.functional.huber_loss"), {"delta": 0.7}),
    "smooth_l1": (losses.smooth_l1, torch_op("nn.functional.smooth_l1_loss"), {"beta": 0.6}),
    "smooth_l1_beta_0": (losses.smooth_l1, torch_op("nn.functional.smooth_l1_loss"),
                         {"beta": 0.0}),
    "binary_cross_entropy": (losses.binary_cross_entropy,
                             torch_op("nn.functional.binary_cross_entropy"), {}),
    "binary_cross_entropy_with_logits": (losses.binary_cross_entropy_with_logits,
                                         torch_op("nn.functional.binary_cross_entropy_with_logits"), {}),
}


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_losses_match_torch_under_every_reduction(name, reduction):
    kernel, torch_fn, options = POINTWISE[name]
    rng = np.random.default_rng(11)
    base = name.removesuffix("_beta_0")
    pred, target = prediction_for(base, rng, (4, 3)), target_for(base, rng, (4, 3))
    assert_loss_matches_torch(lambda p, t: kernel(p, t, reduction=reduction, **options),
                              lambda p, t: torch_fn(p, t, reduction=reduction, **options),
                              pred, target)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", [[3.0], [0.5, 2.0, 4.0]])
def test_binary_cross_entropy_with_logits_and_pos_weight_matches_torch(reduction, pos_weight):
    rng = np.random.default_rng(13)
    logits = (rng.standard_normal((5, 3)) * 4).astype(np.float32)
    target = rng.random((5, 3)).astype(np.float32)
    assert_loss_matches_torch(
        lambda x, t: losses.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight,
                                                             reduction=reduction),
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(pos_weight),
                                                        reduction=reduction), logits, target)
