"""The benchmark's peak-memory runs count what a training step holds, for both backends alike.

A dense 2048 x 2048 layer trained with Adam at batch 2 holds its gradient and Adam's two
moments (three times its 16 MiB) and almost no activations: each backend's figure must
include all three (the optimizer's state made at creation by nnspec, at the first step by
torch), and nnspec's little else (not its compiled jobs' loading, not torch's model).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch

BENCH = Path(__file__).resolve().parents[2] / "bench"

SPEC = """
model Wide {
  input x: [2048]
  x -> dense(2048, bias = false) -> dense(10, bias = false)
}
train Wide { loss cross_entropy; optimizer adam(lr = 1e-3); batch 2 }
"""


def test_each_backend_counts_its_gradients_and_optimizer_state(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(BENCH))
    bench_real = pytest.importorskip("bench_real")
    spec = tmp_path / "wide.nn"
    spec.write_text(SPEC)
    workload = bench_real.Workload("wide", str(spec), 2)
    ours, theirs = bench_real.peak_memory_mib(workload, threads=1)
    weight_mib = 2048 * 2048 * 4 / 2**20
    # nnspec's: the three and a few MiB more; torch's: at least the three (its first Adam
    # step allocated 33-65 MiB more here)
    assert 3 * weight_mib * 0.97 <= ours <= 3 * weight_mib + 6, (ours, theirs)
    assert theirs >= 3 * weight_mib * 0.97, (ours, theirs)
    sys.modules.pop("bench_real", None)
