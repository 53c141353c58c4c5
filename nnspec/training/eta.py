"""How long the run will take, said once after its first steps, and on the NumPy backend a
note that `--backend torch` exists when the run looks long and PyTorch is installed (a
note only: the default backend never changes behind the user's back).

The estimate is the rate of the first steps times the steps left; evaluation after each
epoch is not in it, so it is a lower bound on runs with a large validation split. The very
first step is not timed: it pays once for what the rest reuse (the interpreter's compiled
loops load, or compile on a machine's first run: seconds that would have multiplied into
the estimate).
"""

from __future__ import annotations

import importlib.util
import time

from nnspec.training.progress import format_duration, format_rate

FIRST_LOOK = 2.0  # seconds of steps the estimate is taken from
MIN_STEPS = 3  # ... and at least this many steps after the first
WORTH_SAYING = 10.0  # a run that will be over sooner gets no estimate
SUGGEST_TORCH = 180.0  # seconds: a NumPy run longer than this mentions --backend torch


def torch_installed() -> bool:
    """Whether torch can be imported, without importing it (that takes seconds)."""
    return importlib.util.find_spec("torch") is not None


class RunEstimate:
    """Counts steps from `start`; `step()` returns the lines to print, once."""

    def __init__(self, backend: str, steps_left: int, clock=time.perf_counter):
        self.backend = backend
        self.steps_left = steps_left
        self.clock = clock
        self.done = steps_left <= 0
        self._steps = 0
        self._started = None  # when the first step ended

    def step(self) -> list[str]:
        if self.done:
            return []
        if self._started is None:
            self._started = self.clock()
            return []
        self._steps += 1
        seconds = self.clock() - self._started
        if seconds < FIRST_LOOK or self._steps < MIN_STEPS:
            return []
        self.done = True
        total = seconds / self._steps * self.steps_left
        if total < WORTH_SAYING:
            return []
        lines = [(f"estimated time: about {format_duration(total)} for {self.steps_left:,} "
                  f"steps ({format_rate(self._steps, seconds)}, from {self._steps} steps "
                  f"after the first; evaluation not included)")]
        if self.backend == "numpy" and total > SUGGEST_TORCH and torch_installed():
            lines.append("note: PyTorch is installed; `--backend torch` trains the same spec "
                         "through its generated PyTorch module, which can be much faster for "
                         "convolutional and large models")
        return lines
