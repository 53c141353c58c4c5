"""What a training run prints: a live bar on a terminal, one plain line per epoch elsewhere.

On a terminal (rich.progress) the bar shows the epoch, the steps done, the running mean
loss of the epoch and steps/s, and every finished epoch leaves one line above it. Piped to
a file or another program, only those epoch lines are written, with no control
characters, so logs stay greppable. Both print the same epoch lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_REFRESH = 0.1  # seconds between bar updates: a step can take well under a millisecond


class PlainProgress:
    """Lines only; `step` does nothing, so a piped run pays nothing per step."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def info(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def epoch_finished(self, line: str) -> None:
        self.info(line)

    def close(self) -> None:
        pass


class RichProgress:
    """A transient rich bar for the current epoch; epoch lines persist above it."""

    def __init__(self, stream: TextIO):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=stream, highlight=False)
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} steps/s"),
            TimeElapsedColumn(), console=self.console, transient=True)
        self.task = None
        self._loss_sum = 0.0
        self._steps = self._done = self._total = 0
        self._started = self._shown = 0.0

    def info(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        fields = {"epoch": f"{epoch}/{epochs}", "loss": "-", "rate": "-"}
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, completed=done, **fields)
        else:
            self.progress.reset(self.task, total=steps, completed=done, **fields)
        self._loss_sum, self._steps = 0.0, 0
        self._started = self._shown = time.perf_counter()
        self._done, self._total = done, steps

    def step(self, loss: float) -> None:
        self._loss_sum += loss
        self._steps += 1
        now = time.perf_counter()
        if now - self._shown >= _REFRESH or self._done + self._steps == self._total:
            self._shown = now
            self.progress.update(self.task, completed=self._done + self._steps,
                                 loss=f"{self._loss_sum / self._steps:.4f}",
                                 rate=f"{self._steps / (now - self._started):.0f}")

    def epoch_finished(self, line: str) -> None:
        self.info(line)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def make_progress(stream: TextIO | None = None) -> PlainProgress | RichProgress:
    """The rich bar when `stream` (stdout by default) is a terminal, plain lines otherwise."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return RichProgress(stream) if isatty is not None and isatty() else PlainProgress(stream)
