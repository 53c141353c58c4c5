"""Pausing Python's cyclic garbage collector around work that allocates many objects and
makes no reference cycles: parsing, building the IR, an interpreter's training step. The
collector would only rescan what refcounting frees anyway (a quarter of a 10,000-layer
check; 6% of a ResNet-20 step, whose process holds a few hundred thousand objects)."""

from __future__ import annotations

import gc
import itertools
from contextlib import contextmanager

# Moving survivors to the oldest generation also resets the youngest's count, so the
# collections that objects made between steps (a trainer's) would have started may never
# come: every this many moves a full collection runs instead, which finds any cycles
# among them (every 500 steps. Before, a ResNet-20 step's young collections took 0.1 ms
# each, and a full one, about 140 ms in a process holding numba and torch, came about every
# hundred steps).
MOVES_A_COLLECTION = 1000
_moves = itertools.count(1)


@contextmanager
def collector_paused(*, freeze_survivors: bool = False):
    """Pause the collector, restoring it after (unless the caller had it off).
    ``freeze_survivors`` moves what survived to the oldest generation (freeze, unfreeze):
    after a build of many long-lived objects the first collection would otherwise rescan
    all of them at once, and after a training step's forward the tape it keeps for the
    backward would be rescanned and promoted, generation by generation, until full
    collections of the whole process came every hundred steps or so."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze_survivors:
            if next(_moves) % MOVES_A_COLLECTION == 0:
                gc.collect()
            else:
                gc.freeze()
                gc.unfreeze()
        if enabled:
            gc.enable()
