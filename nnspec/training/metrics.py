"""The metrics a train section can ask for, computed the same way by `train` and `eval`.

- `accuracy`: the fraction of samples (or of positions for `[T, C]`, of pixels for `[C, H, W]`
  outputs) whose arg-max class equals the label; with `binary_cross_entropy` the prediction is thresholded instead
  (0.5 on probabilities, 0 on logits). Labels equal to cross_entropy's `ignore_index` are
  not counted.
- `mae`, `mse`: mean absolute / squared error over every output element.

Sums are kept in float64 across batches, so a metric does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnspec.ir import ops

NAMES = ("accuracy", "mae", "mse")


class MetricError(ValueError):
    """A metric that cannot be computed for this loss and these targets."""


def accuracy_kind(loss: str, loss_args: dict, target_is_ids: bool) -> str:
    """How `accuracy` reads a prediction for this loss: 'argmax', 'probs' or 'logits'."""
    if loss in ops.CLASS_INDEX_LOSSES:
        return "argmax" if target_is_ids else "argmax_probs"
    if loss == "binary_cross_entropy":
        return "logits" if loss_args.get("logits") else "probs"
    if target_is_ids:
        return "argmax"
    raise MetricError("`accuracy` counts correct classes, but the targets are numbers to "
                      "regress on; use `mae` or `mse` for this loss")


class MetricSums:
    """Running sums of the requested metrics over batches of (prediction, target)."""

    def __init__(self, names: Sequence[str], accuracy: str | None = None,
                 ignore_index: int | None = None):
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise MetricError(f"unknown metric `{unknown[0]}`")
        self.names = tuple(names)
        self.accuracy = accuracy
        self.ignore_index = ignore_index
        self._sums = dict.fromkeys(self.names, 0.0)
        self._counts = dict.fromkeys(self.names, 0)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        for name in self.names:
            total, count = _METRICS[name](self, pred, target)
            self._sums[name] += total
            self._counts[name] += count

    def values(self) -> dict[str, float]:
        return {n: self._sums[n] / self._counts[n] if self._counts[n] else float("nan")
                for n in self.names}

    def _accuracy(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
        kind = self.accuracy
        if kind == "argmax":
            correct = pred.argmax(axis=ops.class_dim(pred.ndim - 1) + 1) == target
            if self.ignore_index is not None:
                counted = target != self.ignore_index
                return float(np.count_nonzero(correct & counted)), int(np.count_nonzero(counted))
        elif kind == "argmax_probs":
            axis = ops.class_dim(pred.ndim - 1) + 1
            correct = pred.argmax(axis=axis) == target.argmax(axis=axis)
        else:
            threshold = 0.0 if kind == "logits" else 0.5
            correct = (pred > threshold) == (target > 0.5)
        return float(np.count_nonzero(correct)), int(correct.size)


def _abs_error(sums: MetricSums, pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    diff = pred.astype(np.float64) - target
    return float(np.abs(diff).sum()), diff.size


def _squared_error(sums: MetricSums, pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    diff = pred.astype(np.float64) - target
    return float(np.dot(diff.ravel(), diff.ravel())), diff.size


_METRICS = {"accuracy": MetricSums._accuracy, "mae": _abs_error, "mse": _squared_error}
