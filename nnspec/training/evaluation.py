"""The loss and metrics of a model on a data set, in eval mode: what `train` reports after
every epoch and `eval` prints."""

from __future__ import annotations

import numpy as np

from nnspec.ir import ops
from nnspec.ir.train import TrainConfig
from nnspec.training.backend import TrainableModel
from nnspec.training.data import target_use
from nnspec.training.metrics import MetricSums, accuracy_kind

EVAL_CHUNK = 512  # samples per forward pass when evaluating


def evaluate(model: TrainableModel, train: TrainConfig, x: np.ndarray, y: np.ndarray,
             chunk: int = EVAL_CHUNK) -> dict[str, float]:
    """The loss and the train section's metrics on (x, y), in eval mode (no dropout, batch
    norm's running statistics); the loss is averaged over samples."""
    ids = y.dtype == np.int64
    loss, _, args = target_use(train) if train.metrics else (None, None, {})
    kind = accuracy_kind(loss, args, ids) if "accuracy" in train.metrics else None
    ignore = args.get("ignore_index") if loss in ops.CLASS_INDEX_LOSSES else None
    sums = MetricSums(train.metrics, kind, ignore)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        total += model.loss(xb, yb, train=False) * len(xb)
        if train.metrics:
            sums.update(_compared_output(model(xb), train), yb)
    return {"loss": total / len(x), **sums.values()}


def _compared_output(out, train: TrainConfig) -> np.ndarray:
    """Of several outputs, the one the loss compares with the data's target (metrics
    score that one)."""
    if not isinstance(out, tuple):
        return out
    _, name, _ = target_use(train)
    return out[[n for n, _ in train.outputs].index(name)]
