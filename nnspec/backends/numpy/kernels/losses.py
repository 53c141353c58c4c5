"""Loss kernels with torch's semantics and `reduction` ("mean", "sum" or "none").

Each returns the loss (a 0-d array, or the per-element losses for "none") and
``backward(d_loss) -> (d_pred, d_target)``; ``d_loss`` has the loss's shape. Targets get a
gradient whenever they are float arrays, because in a custom loss the target can itself be
a model output; class-index targets get ``None``. Logits-based losses use log-sum-exp so no
input can overflow them. Class dims are LAST (``(..., C)``), where torch puts them at 1,
except for (N, C, H, W) scores (a class per pixel), which have them at 1 as torch.
"""

from __future__ import annotations

import functools

import numpy as np

from nnspec.backends.numpy.kernels import parallel
from nnspec.backends.numpy.kernels.activations import sigmoid
from nnspec.backends.numpy.kernels.elementwise import unbroadcast

# torch clamps each log of binary_cross_entropy at -100 and bounds p * (1 - p) in its
# gradient's denominator below by 1e-12.
_BCE_LOG_FLOOR = -100.0
_BCE_EPSILON = 1e-12


def _target_gradient(target, grad):
    return unbroadcast(grad, target.shape) if target.dtype.kind == "f" else None


def _difference(pred, target):
    """pred - target in pred's dtype, even for integer targets."""
    return pred - target.astype(pred.dtype, copy=False)


def _scalar(value, dtype):
    return np.asarray(value, dtype=dtype)


def _reduce(values, reduction, dtype, denominator=None):
    """The loss of per-element `values` and `scale(d_loss)`, each element's share of the
    loss's gradient (a number for "mean" and "sum", an array for "none"). "mean" divides by
    `denominator` (the number of elements unless given: a weighted mean's weights)."""
    if reduction == "none":
        return values.astype(dtype, copy=False), lambda d_loss: d_loss
    total = np.sum(values)
    if reduction == "sum":
        return _scalar(total, dtype), lambda d_loss: d_loss
    count = values.size if denominator is None else denominator
    return _scalar(total / count, dtype), lambda d_loss: d_loss / count


def _pointwise(pred, target, reduction, value, slope):
    """A loss of the difference pred - target (broadcast), from its value and its slope
    per element."""
    diff = _difference(pred, target)
    loss, scale = _reduce(value(diff), reduction, pred.dtype)

    def backward(d_loss):
        d_pred = slope(diff)
        d_pred *= scale(d_loss)
        return unbroadcast(d_pred, pred.shape), _target_gradient(target, -d_pred)

    return loss, backward


def mse(pred, target, *, reduction="mean"):
    """(pred - target)^2."""
    return _pointwise(pred, target, reduction, np.square, lambda diff: 2 * diff)


def l1(pred, target, *, reduction="mean"):
    """|pred - target|; the gradient at pred == target is 0, as torch's sign()."""
    return _pointwise(pred, target, reduction, np.abs, np.sign)


def huber(pred, target, *, delta=1.0, reduction="mean"):
    """F.huber_loss: 0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    return _pointwise(pred, target, reduction, lambda diff: _huber(diff, delta),
                      lambda diff: np.clip(diff, -delta, delta))


def _huber(diff, delta):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), as c (|d| - 0.5 c) with c =
    min(|d|, delta): the same values without np.where, which took 3.7 ns a value over
    differences of random sign here (10 ms for 2^21 values, torch's loss 0.3)."""
    size = np.abs(diff)
    clipped = np.minimum(size, delta)  # NaN stays NaN
    size -= 0.5 * clipped
    size *= clipped
    return size


def smooth_l1(pred, target, *, beta=1.0, reduction="mean"):
    """F.smooth_l1_loss: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (l1 for
    beta 0, as in torch): Huber's loss with delta beta, over beta."""
    if beta == 0:
        return l1(pred, target, reduction=reduction)

    def value(diff):
        loss = _huber(diff, beta)
        loss /= beta
        return loss

    return _pointwise(pred, target, reduction, value, lambda diff: np.clip(diff / beta, -1, 1))


# ---- cross-entropy and nll ------------------------------------------------------------------


def _classes_last(kernel):
    """A class-index loss over batched scores with the classes at `ops.class_dim`: axis 1 of
    (N, C, H, W) as torch (moved last for the kernel, and its gradient moved back), the last
    axis of (N, C) and (N, T, C)."""

    @functools.wraps(kernel)
    def loss(scores, target, **attrs):
        if scores.ndim < 4:
            return kernel(scores, target, **attrs)
        probabilities = target.dtype.kind == "f"
        value, backward = kernel(np.moveaxis(scores, 1, -1),
                                 np.moveaxis(target, 1, -1) if probabilities else target, **attrs)

        def moved_back(d_loss):
            return tuple(None if g is None else np.moveaxis(g, -1, 1)
                         for g in backward(d_loss))

        return value, moved_back

    return loss


@_classes_last
def cross_entropy(logits, target, *, weight=None, reduction="mean", label_smoothing=0.0,
                  ignore_index=-100):
    """F.cross_entropy with the class dimension LAST: logits (..., C), e.g. (N, C) or (N, T, C)
    (and (N, C, H, W) through `_classes_last`).

    Integer targets (...,) are class indices; positions equal to ``ignore_index`` add nothing
    and the mean runs over the rest, weighted by the classes' ``weight`` (NaN when every
    position is ignored, as in torch). Float targets of the logits' shape are class
    probabilities and get a gradient too; their mean is over positions. With label smoothing
    eps, the target mixes (1 - eps) of the given one with eps of the uniform one.
    """
    logits, row_max, exp_shifted, sum_exp = _exp_shifted(logits)
    # Backward turns exp_shifted into the softmax in place: exp_shifted / sum_exp.
    saved = (logits, row_max, exp_shifted, sum_exp)
    weight = None if weight is None else np.asarray(weight, logits.dtype)
    if target.dtype.kind == "f":
        return _cross_entropy_probabilities(*saved, target, weight, reduction, label_smoothing)
    return _cross_entropy_indices(*saved, target, weight, reduction, label_smoothing,
                                  ignore_index)


def _exp_shifted(logits):
    """(the logits, C-ordered, their row max, exp(logits - row max), its sum), the maxima
    and sums keeping the class axis (size 1). In float32 the last three are one compiled
    loop over each row (``fused.exp_rows``), where NumPy made four passes over the whole
    logits."""
    logits = np.ascontiguousarray(logits)  # (the scatter into exp_shifted needs its view)
    if logits.dtype == np.float32:
        rows = logits.reshape(-1, logits.shape[-1])
        exp_shifted = np.empty_like(rows)
        row_max = np.empty((len(rows), 1), rows.dtype)
        sum_exp = np.empty((len(rows), 1), rows.dtype)
        parallel.exp_rows(rows, exp_shifted, row_max[:, 0], sum_exp[:, 0])
        kept = (*logits.shape[:-1], 1)
        return (logits, row_max.reshape(kept), exp_shifted.reshape(logits.shape),
                sum_exp.reshape(kept))
    row_max = logits.max(axis=-1, keepdims=True)
    exp_shifted = logits - row_max
    with np.errstate(under="ignore"):  # classes far below the best underflow to their limit, 0
        np.exp(exp_shifted, out=exp_shifted)
    return logits, row_max, exp_shifted, exp_shifted.sum(axis=-1, keepdims=True)


def _class_positions(values, classes):
    """The flat indices of each position's class in C-ordered ``values`` (..., C): one
    gather or scatter with them, where np.take_along_axis and put_along_axis built index
    arrays of the whole shape (0.75 ms each for 65,536 positions)."""
    size = values.shape[-1]
    return np.arange(0, classes.size * size, size) + classes.reshape(-1)


# The interpreter fuses a model's trailing softmax with a cross_entropy loss: it skips the
# softmax and feeds this loss the pre-softmax logits, which is the stable form of
# -log(softmax(logits))[target]. The meaning is the same function.
softmax_cross_entropy = cross_entropy


def _class_reduce(per_position, kept, target_weight, reduction, dtype):
    """Reduce per-position losses of class-index targets as torch's nll_loss does: ignored
    positions count as 0, and "mean" divides by the kept positions' class weights."""
    if reduction == "none":
        return np.where(kept, per_position, 0).astype(dtype, copy=False), lambda d: d * kept
    total = np.sum(per_position, where=kept)
    if reduction == "sum":
        return _scalar(total, dtype), lambda d: d * kept
    denominator = np.sum(target_weight, where=kept) if target_weight is not None else int(
        np.count_nonzero(kept))
    loss = _scalar(total / denominator if denominator else np.nan, dtype)
    return loss, lambda d: (d / denominator) * kept if denominator else np.zeros(kept.shape)


def _cross_entropy_indices(logits, row_max, exp_shifted, sum_exp, target, weight, reduction,
                           label_smoothing, ignore_index):
    """Per position (1 - eps) w_y (lse - z_y) + eps / C sum_c w_c (lse - z_c), all relative
    to the row max, so no full-size log-probability array is ever formed."""
    classes_count = logits.shape[-1]
    log_normaliser = np.log(sum_exp)[..., 0]
    kept = target != ignore_index
    classes = np.where(kept, target, 0)[..., None]
    positions = _class_positions(logits, classes)
    target_logit = logits.reshape(-1)[positions].reshape(kept.shape) - row_max[..., 0]
    target_weight = None if weight is None else weight[classes[..., 0]]
    per_position = (1 - label_smoothing) * (log_normaliser - target_logit)
    if target_weight is not None:
        per_position *= target_weight
    if label_smoothing:
        if weight is None:
            mean_logit = logits.mean(axis=-1) - row_max[..., 0]
            per_position += label_smoothing * (log_normaliser - mean_logit)
        else:
            weighted = weight.sum() * log_normaliser - (logits - row_max) @ weight
            per_position += label_smoothing / classes_count * weighted
    loss, scale = _class_reduce(per_position, kept, target_weight, reduction, logits.dtype)

    def backward(d_loss):
        # d/dz = (1 - eps) w_y (p - e_y) + eps / C (W p - w), times each position's share
        share = np.asarray(scale(d_loss), logits.dtype)  # 0 where ignored
        softmax_share = share if weight is None else share * (
            (1 - label_smoothing) * target_weight + label_smoothing / classes_count * weight.sum())
        # the softmax times each position's share in one pass over the classes
        d_logits = exp_shifted
        d_logits *= softmax_share[..., None] / sum_exp
        if label_smoothing:
            spread = share[..., None] if weight is None else share[..., None] * weight
            d_logits -= (label_smoothing / classes_count) * spread
        coefficient = (1 - label_smoothing) * share
        if target_weight is not None:
            coefficient *= target_weight
        d_logits.reshape(-1)[positions] -= np.broadcast_to(coefficient, kept.shape).reshape(-1)
        return d_logits, None

    return loss, backward


def _cross_entropy_probabilities(logits, row_max, exp_shifted, sum_exp, target, weight,
                                 reduction, label_smoothing):
    log_probs = logits - row_max
    log_probs -= np.log(sum_exp)
    smoothed = target
    if label_smoothing:
        smoothed = target * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
    weighted = smoothed if weight is None else smoothed * weight
    per_position = -np.sum(weighted * log_probs, axis=-1)
    loss, scale = _reduce(per_position, reduction, logits.dtype)

    def backward(d_loss):
        share = np.asarray(scale(d_loss), logits.dtype)
        share = share[..., None] if share.ndim else share
        d_logits = exp_shifted
        d_logits /= sum_exp
        d_logits *= weighted.sum(axis=-1, keepdims=True)
        d_logits -= weighted
        d_logits *= share
        d_target = log_probs
        d_target *= -(1 - label_smoothing) * share
        if weight is not None:
            d_target *= weight
        return d_logits, d_target

    return loss, backward


@_classes_last
def nll(log_probs, target, *, weight=None, reduction="mean", ignore_index=-100):
    """F.nll_loss on log-probabilities (..., C) with class-index targets (...,): per position
    -w_y x_y; ignored positions count as 0 and "mean" divides by the kept classes' weights."""
    kept = target != ignore_index
    classes = np.where(kept, target, 0)[..., None]
    weight = None if weight is None else np.asarray(weight, log_probs.dtype)
    target_weight = None if weight is None else weight[classes[..., 0]]
    per_position = -np.take_along_axis(log_probs, classes, axis=-1)[..., 0]
    if target_weight is not None:
        per_position *= target_weight
    loss, scale = _class_reduce(per_position, kept, target_weight, reduction, log_probs.dtype)

    def backward(d_loss):
        share = np.asarray(scale(d_loss), log_probs.dtype)
        picked = -np.broadcast_to(share, kept.shape)
        if target_weight is not None:
            picked = picked * target_weight
        d_log_probs = np.zeros_like(log_probs)
        np.put_along_axis(d_log_probs, classes, picked[..., None].astype(log_probs.dtype),
                          axis=-1)
        return d_log_probs, None

    return loss, backward


def kl_div(log_probs, target, *, reduction="mean", log_target=False):
    """F.kl_div: the input is log-probabilities, the target probabilities (log-probabilities
    with ``log_target``); per element t (log t - x), 0 where t = 0. "batchmean" divides the
    sum by the batch size (the first axis), as torch does."""
    if log_target:
        target_probs = np.exp(target)
        per_element = target_probs * (target - log_probs)
    else:
        target_probs = target
        log_t = np.log(np.where(target > 0, target, 1))  # t log t is 0 at t = 0
        per_element = target * (log_t - log_probs)
    if reduction == "batchmean":
        batch = log_probs.shape[0] if log_probs.ndim else 1
        loss, scale = _reduce(per_element, "mean", log_probs.dtype, denominator=batch)
    else:
        loss, scale = _reduce(per_element, reduction, log_probs.dtype)

    def backward(d_loss):
        share = scale(d_loss)
        d_input = -target_probs * share
        if log_target:
            d_target = target_probs * (target - log_probs + 1) * share
        else:
            d_target = (log_t + 1 - log_probs) * share
        return unbroadcast(d_input.astype(log_probs.dtype, copy=False), log_probs.shape), \
            _target_gradient(target, d_target)

    return loss, backward


# ---- binary cross-entropy -----------------------------------------------------------------


def binary_cross_entropy(probs, target, *, reduction="mean"):
    """-(t log p + (1 - t) log(1 - p)), each log clamped at -100 as torch does.

    The target gradient log(1 - p) - log(p) uses the clamped logs, so it stays finite at
    p = 0 or 1 where torch's -logit(p) is infinite.
    """
    with np.errstate(divide="ignore"):  # log(0) = -inf, then clamped
        log_p = np.maximum(np.log(probs), _BCE_LOG_FLOOR)
        log_not_p = np.maximum(np.log1p(-probs), _BCE_LOG_FLOOR)
    per_element = target * (log_p - log_not_p)
    per_element += log_not_p
    per_element = -per_element
    loss, scale = _reduce(per_element, reduction, probs.dtype)

    def backward(d_loss):
        share = scale(d_loss)
        denominator = np.maximum(probs * (1 - probs), _BCE_EPSILON)
        d_probs = (probs - target) / denominator
        d_probs *= share
        d_target = log_not_p - log_p
        d_target *= share
        return unbroadcast(d_probs, probs.shape), _target_gradient(target, d_target)

    return loss, backward


def binary_cross_entropy_with_logits(logits, target, *, pos_weight=None, reduction="mean"):
    """pw t softplus(-x) + (1 - t) softplus(x), softplus computed stably
    (max(x, 0) + log(1 + exp(-|x|))): the sigmoid never saturates to log(0). ``pos_weight``
    (one number or one per class of the last dim) weighs the positive term."""
    with np.errstate(under="ignore"):
        softplus_tail = np.log1p(np.exp(-np.abs(logits)))
    if pos_weight is None:
        per_element = np.maximum(logits, 0) - logits * target
        per_element += softplus_tail
    else:
        pos_weight = np.asarray(pos_weight, logits.dtype)
        softplus_neg = np.maximum(-logits, 0) + softplus_tail  # -log sigmoid(x)
        softplus_pos = softplus_neg + logits  # -log(1 - sigmoid(x))
        per_element = pos_weight * target * softplus_neg + (1 - target) * softplus_pos
    loss, scale = _reduce(per_element, reduction, logits.dtype)

    def backward(d_loss):
        share = scale(d_loss)
        probs = sigmoid(logits)[0]
        if pos_weight is None:
            d_logits = probs - target
            d_target = -logits * share
        else:
            d_logits = (1 - target) * probs - pos_weight * target * (1 - probs)
            d_target = (pos_weight * softplus_neg - softplus_pos) * share
        d_logits *= share
        return unbroadcast(d_logits.astype(logits.dtype, copy=False), logits.shape), \
            _target_gradient(target, d_target)

    return loss, backward
