"""The metrics a train section can ask for, computed the same way by `train` and `eval`.

- `accuracy`: the fraction of samples (or of positions for `[T, C]`, of pixels for
  `[C, H, W]` outputs) whose arg-max class equals the label; with `binary_cross_entropy` the prediction is thresholded instead
  (0.5 on probabilities, 0 on logits). Labels equal to cross_entropy's `ignore_index` are
  not counted.
- `top_k_accuracy(k = 5)` (its column: `top5_accuracy`): the label is among the k highest
  scores.
- `perplexity`: exp of the mean negative log-likelihood of the labels (class-index losses).
- `precision`, `recall`, `f1`: macro averages over the classes that occur in the labels or
  the predictions (scikit-learn's `average="macro"`; a class never predicted has precision
  0), from a confusion matrix kept over every batch.
- `mae`, `mse`: mean absolute / squared error over every output element.

Sums are kept in float64 across batches, so a metric does not depend on the batch size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nnspec.ir import ops

NAMES = ("accuracy", "top_k_accuracy", "perplexity", "precision", "recall", "f1", "mae", "mse")
CONFUSION = ("precision", "recall", "f1")  # read from the confusion matrix
_TOP_K = re.compile(r"top(\d+)_accuracy$")


class MetricError(ValueError):
    """A metric that cannot be computed for this loss and these targets."""


def top_k(name: str) -> int | None:
    """k of a `topK_accuracy` column name, else None."""
    match = _TOP_K.match(name)
    return int(match.group(1)) if match else None


def known(name: str) -> bool:
    return name in NAMES or top_k(name) is not None


def accuracy_kind(loss: str, loss_args: dict, target_is_ids: bool) -> str:
    """How classification metrics read a prediction for this loss: 'argmax',
    'argmax_probs' (one-hot targets), 'probs' or 'logits' (binary, thresholded)."""
    if loss in ops.CLASS_INDEX_LOSSES:
        return "argmax" if target_is_ids else "argmax_probs"
    if loss == "binary_cross_entropy":
        return "logits" if loss_args.get("logits") else "probs"
    if target_is_ids:
        return "argmax"
    raise MetricError("classification metrics count correct classes, but the targets are "
                      "numbers to regress on; use `mae` or `mse` for this loss")


def check_metric(name: str, loss: str, loss_args: dict, target_is_ids: bool,
                 classes: int) -> None:
    """MetricError when `name` cannot score this loss's predictions (`classes`: the size
    of the output's last axis)."""
    if name in ("mae", "mse"):
        if target_is_ids:
            raise MetricError(f"`{name}` compares outputs with targets of the same shape, but "
                              "the targets are class ids; use `accuracy` for classification")
        return
    kind = accuracy_kind(loss, loss_args, target_is_ids)
    if (name == "perplexity" or top_k(name)) and kind != "argmax":
        raise MetricError(f"`{name}` reads class scores against class-index labels "
                          "(cross_entropy or nll)")
    if name == "perplexity" and loss not in ops.CLASS_INDEX_LOSSES:
        raise MetricError("`perplexity` needs a cross_entropy or nll loss")
    k = top_k(name)
    if k is not None and k > classes:
        raise MetricError(f"`{name}` looks at the top {k} of {classes} classes")


class MetricSums:
    """Running sums of the requested metrics over batches of (prediction, target).

    `kind` is `accuracy_kind`'s answer; `scores` says what the prediction holds for
    `perplexity`: 'logits', 'probs' (a softmax output) or 'log_probs' (for `nll`).
    With `confusion=True` the confusion matrix is kept even when no metric reads it.
    """

    def __init__(self, names: Sequence[str], kind: str | None = None,
                 ignore_index: int | None = None, scores: str = "logits",
                 confusion: bool = False):
        unknown = [n for n in names if not known(n)]
        if unknown:
            raise MetricError(f"unknown metric `{unknown[0]}`")
        self.names = tuple(names)
        self.kind = kind
        self.ignore_index = ignore_index
        self.scores = scores
        self._sums = dict.fromkeys(self.names, 0.0)
        self._counts = dict.fromkeys(self.names, 0)
        keep = confusion or any(n in CONFUSION for n in self.names)
        self.confusion: np.ndarray | None = np.zeros((0, 0), np.int64) if keep else None

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        if self.kind in ("argmax", "argmax_probs") and pred.ndim - 1 >= 3:
            # [C, H, W] scores keep their classes first (ops.class_dim); every metric below
            # reads them last, as of [C] and [T, C] scores
            pred = np.moveaxis(pred, 1, -1)
            if self.kind == "argmax_probs":
                target = np.moveaxis(target, 1, -1)
        counted = None
        if self.kind == "argmax" and self.ignore_index is not None:
            counted = target != self.ignore_index
        for name in self.names:
            if name in CONFUSION:
                continue
            k = top_k(name)
            if k is not None:
                total, count = _top_k_hits(pred, target, k, counted)
            else:
                total, count = _SUMS[name](self, pred, target, counted)
            self._sums[name] += total
            self._counts[name] += count
        if self.confusion is not None:
            self._add_confusion(pred, target, counted)

    def values(self) -> dict[str, float]:
        out = {}
        for name in self.names:
            if name in CONFUSION:
                out[name] = _macro(self.confusion, name)
            elif not self._counts[name]:
                out[name] = float("nan")
            else:
                mean = self._sums[name] / self._counts[name]
                out[name] = float(np.exp(mean)) if name == "perplexity" else mean
        return out

    def _classes(self, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, true class) per counted position."""
        if self.kind == "argmax":
            return pred.argmax(axis=-1), target
        if self.kind == "argmax_probs":
            return pred.argmax(axis=-1), target.argmax(axis=-1)
        threshold = 0.0 if self.kind == "logits" else 0.5
        return (pred > threshold).astype(np.int64), (target > 0.5).astype(np.int64)

    def _accuracy(self, pred, target, counted) -> tuple[float, int]:
        guess, truth = self._classes(pred, target)
        correct = guess == truth
        if counted is not None:
            return float(np.count_nonzero(correct & counted)), int(np.count_nonzero(counted))
        return float(np.count_nonzero(correct)), int(correct.size)

    def _add_confusion(self, pred, target, counted) -> None:
        guess, truth = self._classes(pred, target)
        if counted is not None:
            guess, truth = guess[counted], truth[counted]
        guess, truth = guess.ravel(), truth.ravel()
        size = max(2 if self.kind in ("probs", "logits") else pred.shape[-1],
                   len(self.confusion), int(truth.max(initial=-1)) + 1)
        counts = np.bincount(truth * size + guess, minlength=size * size).reshape(size, size)
        old = self.confusion
        self.confusion = counts
        self.confusion[:len(old), :len(old)] += old

    def _perplexity(self, pred, target, counted) -> tuple[float, int]:
        scores = pred.astype(np.float64)
        picked = np.take_along_axis(scores, target[..., None].clip(0), axis=-1)[..., 0]
        if self.scores == "logits":
            top = scores.max(axis=-1)
            log_p = picked - top - np.log(np.exp(scores - top[..., None]).sum(axis=-1))
        elif self.scores == "probs":
            log_p = np.log(picked)
        else:
            log_p = picked
        if counted is not None:
            log_p = log_p[counted]
        return float(-log_p.sum()), int(log_p.size)


def _top_k_hits(pred, target, k, counted) -> tuple[float, int]:
    best = np.argpartition(-pred, k - 1, axis=-1)[..., :k]
    hit = (best == target[..., None]).any(axis=-1)
    if counted is not None:
        hit = hit[counted]
    return float(np.count_nonzero(hit)), int(hit.size)


def _macro(confusion: np.ndarray, name: str) -> float:
    """Macro average over the classes present in the labels or the predictions."""
    hits = np.diag(confusion).astype(np.float64)
    truths, guesses = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (truths + guesses) > 0
    if not present.any():
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(guesses > 0, hits / guesses, 0.0)
        recall = np.where(truths > 0, hits / truths, 0.0)
        both = precision + recall
        f1 = np.where(both > 0, 2 * precision * recall / both, 0.0)
    chosen = {"precision": precision, "recall": recall, "f1": f1}[name]
    return float(chosen[present].mean())


def _abs_error(sums: MetricSums, pred, target, counted) -> tuple[float, int]:
    diff = pred.astype(np.float64) - target
    return float(np.abs(diff).sum()), diff.size


def _squared_error(sums: MetricSums, pred, target, counted) -> tuple[float, int]:
    diff = pred.astype(np.float64) - target
    return float(np.dot(diff.ravel(), diff.ravel())), diff.size


_SUMS = {"accuracy": MetricSums._accuracy, "perplexity": MetricSums._perplexity,
         "mae": _abs_error, "mse": _squared_error}
