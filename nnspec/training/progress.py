"""What a training run prints: a live bar on a terminal, plain lines elsewhere.

On a terminal (rich.progress) the bar shows the epoch, the steps done, the running mean
loss of the epoch, the rate and the time left in the epoch; every finished epoch leaves one
line above it. Piped to a file, CI or a notebook, there are no control characters, so logs
stay greppable: a progress line at most every `log_every_seconds` (10 by default) and/or
every `log_every` steps, and one line per epoch. Both print the same epoch lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_REFRESH = 0.1  # seconds between bar updates: a step can take well under a millisecond
LOG_EVERY_SECONDS = 10.0


def format_rate(steps: float, seconds: float) -> str:
    """`12 steps/s`, `2.5 steps/s`, or `2.5 s/step` when a step takes longer than a second
    (so 0.4 steps/s never prints as 0)."""
    if steps <= 0 or seconds <= 0:
        return "- steps/s"
    rate = steps / seconds
    if rate >= 10:
        return f"{rate:.0f} steps/s"
    if rate >= 1:
        return f"{rate:.1f} steps/s"
    return f"{seconds / steps:.1f} s/step"


def format_duration(seconds: float) -> str:
    """`45s`, `3m 20s`, `2h 05m`: what a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class PlainProgress:
    """Lines only. A step costs one clock read; a progress line is written when
    `log_every_seconds` passed since the last line (0: never) or every `log_every` steps."""

    def __init__(self, stream: TextIO, *, log_every_seconds: float = LOG_EVERY_SECONDS,
                 log_every: int | None = None):
        self.stream = stream
        self.log_every_seconds = log_every_seconds
        self.log_every = log_every
        self._epoch = self._epochs = self._total = self._done = self._steps = 0
        self._loss_sum = 0.0
        self._started = 0.0
        self._last_line: float | None = None  # when the last line was written

    def info(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self._epoch, self._epochs, self._total, self._done = epoch, epochs, steps, done
        self._steps, self._loss_sum = 0, 0.0
        self._started = time.perf_counter()
        if self._last_line is None:  # later epochs count from the last epoch line
            self._last_line = self._started

    def step(self, loss: float) -> None:
        self._steps += 1
        self._loss_sum += loss
        now = time.perf_counter()
        by_steps = self.log_every and self._steps % self.log_every == 0
        by_time = self.log_every_seconds and now - self._last_line >= self.log_every_seconds
        if (by_steps or by_time) and self._done + self._steps < self._total:
            self._last_line = now
            self.info(self.progress_line(now))

    def progress_line(self, now: float) -> str:
        """Where the epoch is: step, loss so far, rate and the time left in the epoch."""
        seconds = now - self._started
        at = self._done + self._steps
        left = (self._total - at) * seconds / self._steps
        width = len(str(self._epochs))
        return (f"epoch {self._epoch:>{width}}/{self._epochs}  step {at}/{self._total}  "
                f"loss {self._loss_sum / self._steps:.4f}  {format_rate(self._steps, seconds)}"
                f"  epoch ends in {format_duration(left)}")

    def epoch_finished(self, line: str) -> None:
        self._last_line = time.perf_counter()
        self.info(line)

    def close(self) -> None:
        pass


class RichProgress(PlainProgress):
    """A transient rich bar for the current epoch; epoch lines persist above it."""

    def __init__(self, stream: TextIO, *, log_every: int | None = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(stream, log_every_seconds=0, log_every=log_every)
        self.console = Console(file=stream, highlight=False)
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self.task = None
        self._shown = 0.0

    def info(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        super().epoch_started(epoch, epochs, steps, done)
        fields = {"epoch": f"{epoch}/{epochs}", "loss": "-", "rate": "- steps/s"}
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, completed=done, **fields)
        else:
            self.progress.reset(self.task, total=steps, completed=done, **fields)
        self._shown = self._started

    def step(self, loss: float) -> None:
        super().step(loss)
        now = time.perf_counter()
        if now - self._shown >= _REFRESH or self._done + self._steps == self._total:
            self._shown = now
            self.progress.update(self.task, completed=self._done + self._steps,
                                 loss=f"{self._loss_sum / self._steps:.4f}",
                                 rate=format_rate(self._steps, now - self._started))

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def make_progress(stream: TextIO | None = None, *, log_every_seconds: float = LOG_EVERY_SECONDS,
                  log_every: int | None = None) -> PlainProgress:
    """The rich bar when `stream` (stdout by default) is a terminal, plain lines otherwise."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return RichProgress(stream, log_every=log_every)
    return PlainProgress(stream, log_every_seconds=log_every_seconds, log_every=log_every)
