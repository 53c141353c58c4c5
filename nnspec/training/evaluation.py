"""The loss and metrics of a model on a data set, in eval mode: what `train` reports after
every epoch and `eval` prints."""

from __future__ import annotations

import numpy as np

from nnspec.ir import ops
from nnspec.ir.train import TrainConfig
from nnspec.training.backend import TrainableModel
from nnspec.training.data import target_use
from nnspec.training.metrics import MetricError, MetricSums, accuracy_kind

EVAL_CHUNK = 512  # samples per forward pass when evaluating


def evaluate(model: TrainableModel, train: TrainConfig, x: np.ndarray, y: np.ndarray,
             chunk: int = EVAL_CHUNK, confusion: bool = False) -> dict[str, float]:
    """The loss and the train section's metrics on (x, y), in eval mode (no dropout, batch
    norm's running statistics); the loss is averaged over samples. With `confusion=True`
    (a classification run) the result also holds the confusion matrix under "confusion"
    (rows: true classes, columns: predicted)."""
    sums = _metric_sums(train, y, confusion)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        total += model.loss(xb, yb, train=False) * len(xb)
        if sums is not None:
            sums.update(_compared_output(model(xb), train), yb)
    scores = {"loss": total / len(x), **(sums.values() if sums is not None else {})}
    if confusion and sums is not None:
        scores["confusion"] = sums.confusion
    return scores


def classifies(train: TrainConfig, y: np.ndarray) -> bool:
    """Whether predictions are classes (so a confusion matrix means something)."""
    if not train.targets or y.dtype.names:
        return False
    loss, _, args = target_use(train)
    try:
        accuracy_kind(loss, args, y.dtype == np.int64)
    except MetricError:
        return False
    return True


def _metric_sums(train: TrainConfig, y: np.ndarray, confusion: bool) -> MetricSums | None:
    confusion = confusion and classifies(train, y)
    if not (train.metrics or confusion):
        return None
    loss, _, args = target_use(train)
    ids = y.dtype == np.int64
    needs_classes = confusion or any(m not in ("mae", "mse") for m in train.metrics)
    kind = accuracy_kind(loss, args, ids) if needs_classes else None
    ignore = args.get("ignore_index") if loss in ops.CLASS_INDEX_LOSSES else None
    scores = "log_probs" if loss == "nll" else "probs" if train.fused_softmax else "logits"
    return MetricSums(train.metrics, kind, ignore, scores, confusion)


def _compared_output(out, train: TrainConfig) -> np.ndarray:
    """Of several outputs, the one the loss compares with the data's target (metrics
    score that one)."""
    if not isinstance(out, tuple):
        return out
    _, name, _ = target_use(train)
    return out[[n for n, _ in train.outputs].index(name)]
