"""Training steps and Python's cycle collector: a step's tape starts no collections, and
the cycles other code makes between steps are still collected (``nnspec.collector``)."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from nnspec import collector
from nnspec.backends.numpy.model import NumpyModel
from nnspec.spec import load_text

# deep enough that a step's tape (closures, tuples, dicts) is over the youngest
# generation's threshold of 700 objects: each step started a collection before
SPEC = """
model Deep {
  input x: [8]
  x -> %s dense(3) as out
}
train Deep { loss cross_entropy; optimizer sgd(lr = 0.1) }
""" % ("dense(8) -> relu -> " * 150)


def _steps(model, count):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    target = np.array([0, 1, 2, 1])
    for _ in range(count):
        model.loss(x, target)
        model.backward()


def test_steps_start_no_collections():
    model = NumpyModel.from_spec(load_text(SPEC, "deep.nn"), seed=0)
    _steps(model, 3)
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        gc.collect()  # counts start from zero
        collections.clear()
        _steps(model, 50)
    finally:
        gc.callbacks.remove(count)
    assert collections == []


def test_cycles_made_between_steps_are_still_collected(monkeypatch):
    monkeypatch.setattr(collector, "MOVES_A_COLLECTION", 10)

    class Node:
        pass

    model = NumpyModel.from_spec(load_text(SPEC, "deep.nn"), seed=0)
    node = Node()
    node.itself = node  # a cycle: refcounting alone never frees it
    alive = weakref.ref(node)
    del node
    _steps(model, 10)  # 20 moves of survivors, so at least one full collection
    assert alive() is None
