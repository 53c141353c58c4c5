"""The loss and metrics of a model on a data set, in eval mode: what `train` reports after
every epoch and `eval` prints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnspec.ir import ops
from nnspec.ir.train import TrainConfig
from nnspec.training.backend import TrainableModel
from nnspec.training.data import target_of, target_use
from nnspec.training.metrics import MetricError, MetricSums, accuracy_kind

EVAL_CHUNK = 512  # samples per forward pass when evaluating


def evaluate(model: TrainableModel, train: TrainConfig, x: np.ndarray, y: np.ndarray,
             chunk: int = EVAL_CHUNK, confusion: bool = False) -> dict[str, float]:
    """The loss and the train section's metrics on (x, y), in eval mode (no dropout, batch
    norm's running statistics); the loss is averaged over samples. With `confusion=True`
    (a classification run) the result also holds the confusion matrix under "confusion"
    (rows: true classes, columns: predicted)."""
    groups = _groups(train, y, confusion)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        total += model.loss(xb, yb, train=False) * len(xb)
        if groups:
            out = model(xb)
            for group in groups:
                group.sums.update(_scored_output(out, train, group.output),
                                  yb[group.target] if group.target else yb)
    scores = {"loss": total / len(x)}
    for group in groups:
        values = group.sums.values()
        scores.update((column, values[train.metric(column)[0]]) for column in group.columns)
        if group.sums.confusion is not None and confusion:
            scores["confusion"] = group.sums.confusion
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


@dataclass
class _Group:
    """The metrics of one output against one target."""

    output: str | None  # None: the output the loss compares with the target
    target: str | None  # a field of structured targets; None: the one target
    columns: list[str]
    sums: MetricSums


def _groups(train: TrainConfig, y: np.ndarray, confusion: bool) -> list[_Group]:
    by_output: dict[str | None, list[str]] = {}
    for column in train.metrics:
        by_output.setdefault(train.metric(column)[1], []).append(column)
    confusion = confusion and classifies(train, y)
    if confusion:
        by_output.setdefault(None, [])
    groups = []
    for output, columns in by_output.items():
        target = target_of(train, output) if output and y.dtype.names else None
        loss, _, args = target_use(train, target)
        kinds = [train.metric(column)[0] for column in columns]
        keep = confusion and output is None
        needs_classes = keep or any(k not in ("mae", "mse") for k in kinds)
        ids = (y[target] if target else y).dtype == np.int64
        kind = accuracy_kind(loss, args, ids) if needs_classes else None
        ignore = args.get("ignore_index") if loss in ops.CLASS_INDEX_LOSSES else None
        scores = "log_probs" if loss == "nll" else "probs" if train.fused_softmax else "logits"
        groups.append(_Group(output, target, columns,
                             MetricSums(kinds, kind, ignore, scores, keep)))
    return groups


def _scored_output(out, train: TrainConfig, output: str | None) -> np.ndarray:
    """The output a metric scores: the one named, else the one the loss compares with the
    data's target."""
    if not isinstance(out, tuple):
        return out
    name = output or target_use(train)[1]
    return out[[n for n, _ in train.outputs].index(name)]
