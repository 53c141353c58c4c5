"""Loss kernels with torch's ``reduction="mean"`` semantics; each returns a 0-d array.

``backward(d_loss)`` returns ``(d_pred, d_target)``. Targets get a gradient whenever they are
float arrays, because in a custom loss the target can itself be a model output; class-index
targets get ``None``. Logits-based losses use log-sum-exp so no input can overflow them.
"""

from __future__ import annotations

import numpy as np

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


def mse(pred, target):
    """mean((pred - target)^2)."""
    diff = _difference(pred, target)
    loss = _scalar(np.mean(np.square(diff)), pred.dtype)

    def backward(d_loss):
        d_pred = diff * (2 * d_loss / diff.size)
        return unbroadcast(d_pred, pred.shape), _target_gradient(target, -d_pred)

    return loss, backward


def l1(pred, target):
    """mean(|pred - target|); the gradient at pred == target is 0, as torch's sign()."""
    diff = _difference(pred, target)
    loss = _scalar(np.mean(np.abs(diff)), pred.dtype)

    def backward(d_loss):
        d_pred = np.sign(diff)
        d_pred *= d_loss / diff.size
        return unbroadcast(d_pred, pred.shape), _target_gradient(target, -d_pred)

    return loss, backward


def cross_entropy(logits, target, *, label_smoothing=0.0, ignore_index=-100):
    """F.cross_entropy with the class dimension LAST: logits (..., C), e.g. (N, C) or (N, T, C).

    Integer targets (...,) are class indices; positions equal to ``ignore_index`` add nothing
    and the mean runs over the rest (NaN when every position is ignored, as in torch). Float
    targets of the logits' shape are class probabilities and get a gradient too. With label
    smoothing eps, the target mixes (1 - eps) of the given one with eps of the uniform one.
    """
    row_max = logits.max(axis=-1, keepdims=True)
    exp_shifted = logits - row_max
    with np.errstate(under="ignore"):  # classes far below the best underflow to their limit, 0
        np.exp(exp_shifted, out=exp_shifted)
    sum_exp = exp_shifted.sum(axis=-1, keepdims=True)
    # Backward turns exp_shifted into the softmax in place: exp_shifted / sum_exp.
    saved = (logits, row_max, exp_shifted, sum_exp)
    if target.dtype.kind == "f":
        return _cross_entropy_probabilities(*saved, target, label_smoothing)
    return _cross_entropy_indices(*saved, target, label_smoothing, ignore_index)


# The interpreter fuses a model's trailing softmax with a cross_entropy loss: it skips the
# softmax and feeds this loss the pre-softmax logits, which is the stable form of
# -log(softmax(logits))[target]. The meaning is the same function.
softmax_cross_entropy = cross_entropy


def _cross_entropy_indices(
    logits, row_max, exp_shifted, sum_exp, target, label_smoothing, ignore_index
):
    """Per position (1 - eps) * (lse - z_y) + eps * (lse - mean(z)), all relative to the row
    max, so no full-size log-probability array is ever formed."""
    log_normaliser = np.log(sum_exp)[..., 0]
    kept = target != ignore_index
    classes = np.where(kept, target, 0)[..., None]
    target_logit = np.take_along_axis(logits, classes, axis=-1) - row_max
    per_position = (1 - label_smoothing) * (log_normaliser - target_logit[..., 0])
    if label_smoothing:
        mean_logit = logits.mean(axis=-1) - row_max[..., 0]
        per_position += label_smoothing * (log_normaliser - mean_logit)
    count = int(np.count_nonzero(kept))
    total = np.sum(per_position, where=kept)
    loss = _scalar(total / count if count else np.nan, logits.dtype)

    def backward(d_loss):
        d_logits = exp_shifted
        d_logits /= sum_exp
        if label_smoothing:
            d_logits -= label_smoothing / logits.shape[-1]
        picked = np.take_along_axis(d_logits, classes, axis=-1)
        np.put_along_axis(d_logits, classes, picked - (1 - label_smoothing), axis=-1)
        d_logits *= (d_loss / count) if count else 0
        if count < kept.size:
            d_logits *= kept[..., None]
        return d_logits, None

    return loss, backward


def _cross_entropy_probabilities(logits, row_max, exp_shifted, sum_exp, target, label_smoothing):
    log_probs = logits - row_max
    log_probs -= np.log(sum_exp)
    smoothed = target
    if label_smoothing:
        smoothed = target * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
    positions = log_probs.size // logits.shape[-1]
    loss = _scalar(-np.sum(smoothed * log_probs) / positions, logits.dtype)

    def backward(d_loss):
        scale = d_loss / positions
        d_logits = exp_shifted
        d_logits /= sum_exp
        d_logits *= smoothed.sum(axis=-1, keepdims=True)
        d_logits -= smoothed
        d_logits *= scale
        d_target = log_probs
        d_target *= -(1 - label_smoothing) * scale
        return d_logits, d_target

    return loss, backward


def binary_cross_entropy(probs, target):
    """-mean(t log p + (1 - t) log(1 - p)), each log clamped at -100 as torch does.

    The target gradient log(1 - p) - log(p) uses the clamped logs, so it stays finite at
    p = 0 or 1 where torch's -logit(p) is infinite.
    """
    with np.errstate(divide="ignore"):  # log(0) = -inf, then clamped
        log_p = np.maximum(np.log(probs), _BCE_LOG_FLOOR)
        log_not_p = np.maximum(np.log1p(-probs), _BCE_LOG_FLOOR)
    per_element = target * (log_p - log_not_p)
    per_element += log_not_p
    loss = _scalar(-np.mean(per_element), probs.dtype)

    def backward(d_loss):
        scale = d_loss / per_element.size
        denominator = np.maximum(probs * (1 - probs), _BCE_EPSILON)
        d_probs = (probs - target) / denominator
        d_probs *= scale
        d_target = log_not_p - log_p
        d_target *= scale
        return unbroadcast(d_probs, probs.shape), _target_gradient(target, d_target)

    return loss, backward


def binary_cross_entropy_with_logits(logits, target):
    """mean(max(x, 0) - x t + log(1 + exp(-|x|))): the sigmoid never saturates to log(0)."""
    with np.errstate(under="ignore"):
        softplus_tail = np.log1p(np.exp(-np.abs(logits)))
    per_element = np.maximum(logits, 0) - logits * target
    per_element += softplus_tail
    loss = _scalar(np.mean(per_element), logits.dtype)

    def backward(d_loss):
        scale = d_loss / per_element.size
        d_logits = sigmoid(logits)[0] - target
        d_logits *= scale
        return unbroadcast(d_logits, logits.shape), _target_gradient(target, -logits * scale)

    return loss, backward
