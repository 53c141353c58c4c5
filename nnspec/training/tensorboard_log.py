"""`--log tensorboard`: TensorBoard event files in the run directory's `tensorboard/`.

The writer is tensorboardX (`pip install "nnspec[tensorboard]"`): it writes the event
format without TensorFlow or torch, so a NumPy run needs neither. Per step: the training
loss and the gradient norm (before clipping), averaged over windows so an epoch gives at
most `POINTS_PER_EPOCH` points and a point is written at most every `MIN_INTERVAL` seconds
(tensorboardX takes about 0.2 ms per scalar: writing every step of a 0.1 ms step would
triple the run); per epoch: the train and validation loss, every metric and
the learning rate, all against the optimizer step. A resumed run appends a new event file
to the same directory, and TensorBoard joins them.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

POINTS_PER_EPOCH = 200
MIN_INTERVAL = 0.02  # seconds
INSTALL = 'pip install "nnspec[tensorboard]" (tensorboardX)'


def available() -> bool:
    return importlib.util.find_spec("tensorboardX") is not None


def tag(column: str) -> str:
    """metrics.csv's column -> TensorBoard's tag, grouped: loss/train, val/accuracy, lr."""
    if column.endswith("_loss"):
        return f"loss/{column.removesuffix('_loss')}"
    if column.startswith("val_"):
        return f"val/{column.removeprefix('val_')}"
    return column


class TensorBoardLogger:
    def __init__(self, directory: Path, steps_per_epoch: int):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(directory))
        self.window = max(1, steps_per_epoch // POINTS_PER_EPOCH)
        self._loss = self._norm = 0.0
        self._count = 0
        self._written = 0.0

    def step(self, step: int, loss: float, grad_norm: float | None) -> None:
        self._loss += loss
        self._norm += grad_norm if grad_norm is not None else math.nan
        self._count += 1
        now = time.perf_counter()
        if self._count >= self.window and now - self._written >= MIN_INTERVAL:
            self._written = now
            self.writer.add_scalar("step/loss", self._loss / self._count, step)
            if math.isfinite(self._norm):
                self.writer.add_scalar("step/grad_norm", self._norm / self._count, step)
            self._loss = self._norm = 0.0
            self._count = 0

    def epoch(self, row: dict) -> None:
        for column, value in row.items():
            if column not in ("epoch", "step", "seconds"):
                self.writer.add_scalar(tag(column), value, row["step"])
        self.writer.add_scalar("epoch", row["epoch"], row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
