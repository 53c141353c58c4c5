"""Time one full training step (forward, loss, backward, optimizer update) of the NumPy
interpreter and of an idiomatic hand-written PyTorch model on four workloads, interleaved
in one process, and print the ratio numpy/torch (lower is better).

Run: python bench/bench_train.py [--repeats 11] [--block 40]
Some machines here set OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (for old OpenBLAS builds); they
slow a current NumPy, so `make bench` unsets both for the benchmark command alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.numpy.optim import make_optimizer
from nnspec.spec import load

HERE = Path(__file__).parent / "specs"


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                                        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 128, batch_first=True)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class Block(nn.Module):
    def __init__(self, d=128, heads=4):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 512), nn.GELU(), nn.Linear(512, d))
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(64))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


WORKLOADS = [
    # name, spec, torch model, optimizer, input shape, target maker
    ("MLP 64-256-256-10, Adam, batch 64", "mlp.nn", MLP,
     lambda p: torch.optim.Adam(p, lr=1e-3), (64, 64), "classes"),
    ("LeNet-5 1x28x28, SGD momentum, batch 64", "lenet5.nn", LeNet5,
     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), (64, 1, 28, 28), "classes"),
    ("LSTM 16->128, T 50, batch 32, Adam", "lstm.nn", LSTMClassifier,
     lambda p: torch.optim.Adam(p, lr=1e-3), (32, 50, 16), "classes"),
    ("pre-norm transformer block T64 B16 d128 h4, Adam", "transformer.nn", Block,
     lambda p: torch.optim.Adam(p, lr=1e-3), (16, 64, 128), "same"),
]


def numpy_step(spec_path, shape, target_kind, rng):
    spec = load(spec_path)
    model = NumpyModel.from_spec(spec, seed=0)
    opt = spec.train.optimizer
    optimizer = make_optimizer(opt.name, model.buffer, **opt.args)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, 10, shape[0]) if target_kind == "classes" else (
        rng.standard_normal(shape).astype(np.float32))

    def step():
        model.loss(x, y)
        model.backward()
        optimizer.step()

    return step


def torch_step(module_cls, make_opt, shape, target_kind, rng):
    model = module_cls()
    optimizer = make_opt(model.parameters())
    x = torch.tensor(rng.standard_normal(shape).astype(np.float32))
    if target_kind == "classes":
        y = torch.tensor(rng.integers(0, 10, shape[0]))
        loss_fn = nn.functional.cross_entropy
    else:
        y = torch.tensor(rng.standard_normal(shape).astype(np.float32))
        loss_fn = nn.functional.mse_loss

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


# a pause before each block, so the other library's idle worker threads have stopped
# spin-waiting (see bench_real.py: at two threads they took a core from the next block)
SETTLE_SECONDS = 0.3


def timed(fn, steps: int) -> float:
    """Seconds per step over a block of steps: alternating single steps lets the two
    libraries' spinning worker threads slow each other down."""
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _blas() -> str:
    from threadpoolctl import threadpool_info

    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} x{i['num_threads']}"
                     for i in info) or "?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--block", type=int, default=40, help="steps per timed block")
    args = parser.parse_args()
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"one training step: median of {args.repeats} interleaved blocks of {args.block} "
          f"steps, torch threads {threads}, numpy BLAS {_blas()}")
    print(f"{'workload':<52}{'numpy ms':>10}{'torch ms':>10}{'ratio':>8}")
    for name, spec, module_cls, make_opt, shape, kind in WORKLOADS:
        ours = numpy_step(HERE / spec, shape, kind, rng)
        theirs = torch_step(module_cls, make_opt, shape, kind, rng)
        for _ in range(3):
            ours()
            theirs()
        a, b = [], []
        for _ in range(args.repeats):
            time.sleep(SETTLE_SECONDS)
            a.append(timed(ours, args.block))
            time.sleep(SETTLE_SECONDS)
            b.append(timed(theirs, args.block))
        na, nb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        print(f"{name:<52}{na:>10.2f}{nb:>10.2f}{na / nb:>8.2f}")


if __name__ == "__main__":
    main()
