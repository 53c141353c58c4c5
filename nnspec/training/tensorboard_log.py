"""`--log tensorboard`: TensorBoard event files in the run directory's `tensorboard/`.

The writer is TensorBoard's own event file writer (`pip install "nnspec[tensorboard]"`, the
package that also serves the dashboard): it needs neither TensorFlow nor torch and imports
in a third of a second (tensorboardX imports torch whenever torch is installed: 4 s).

Per step: the training loss averaged over windows of steps, so an epoch gives at most
`POINTS_PER_EPOCH` points and a point is written at most every `MIN_INTERVAL` seconds (an
event costs about 0.1 ms, more than a small model's step), and the gradient norm (before
clipping) of the step each point is written at (the trainer computes it only then: see
`due`). Per epoch: the train and validation loss, every metric and the learning rate. All
against the optimizer step. A resumed run appends a new event file to the same directory,
and TensorBoard joins them.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

POINTS_PER_EPOCH = 200
MIN_INTERVAL = 0.02  # seconds
INSTALL = 'pip install "nnspec[tensorboard]"'


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tag(column: str) -> str:
    """metrics.csv's column -> TensorBoard's tag, grouped: loss/train, val/accuracy, lr."""
    if column.endswith("_loss"):
        return f"loss/{column.removesuffix('_loss')}"
    if column.startswith("val_"):
        return f"val/{column.removeprefix('val_')}"
    return column


class TensorBoardLogger:
    def __init__(self, directory: Path, steps_per_epoch: int):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        directory.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(directory))
        self.window = max(1, steps_per_epoch // POINTS_PER_EPOCH)
        self._loss = 0.0
        self._count = 0
        self._written = 0.0

    def due(self) -> bool:
        """Whether the next step writes a point (so its gradient norm is wanted)."""
        return (self._count + 1 >= self.window
                and time.perf_counter() - self._written >= MIN_INTERVAL)

    def step(self, step: int, loss: float, grad_norm: float | None) -> None:
        """One optimizer step; a point is written when `due()` said so before it."""
        self._loss += loss
        self._count += 1
        if self._count >= self.window and time.perf_counter() - self._written >= MIN_INTERVAL:
            self._written = time.perf_counter()
            values = {"step/loss": self._loss / self._count}
            if grad_norm is not None and math.isfinite(grad_norm):
                values["step/grad_norm"] = grad_norm
            self._write(values, step)
            self._loss = 0.0
            self._count = 0

    def epoch(self, row: dict) -> None:
        values = {tag(column): value for column, value in row.items()
                  if column not in ("step", "seconds")}
        self._write(values, row["step"])
        self.writer.flush()

    def _write(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=name, simple_value=float(value))
                                 for name, value in values.items()])
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self.writer.close()
