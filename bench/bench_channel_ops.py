"""Time the per-channel ops of convolutional nets one layer at a time: the NumPy kernel's
forward and backward against torch eager's (forward, then every gradient), interleaved in
one process, at the shapes the MobileNet, ResNet and U-Net workloads of `bench_real.py` run,
and DCGAN's and a GroupNorm U-Net's (leaky ReLU, 4x4/2 transposed convolutions, group norm,
bilinear up-sampling: kernels that were 2-30x torch's time before 2026-12-07).

Per case it prints the NumPy ms, the torch ms and their ratio (lower is better), medians of
interleaved blocks. `BENCH_THREADS` (default 2) sets both backends' thread counts, NumPy's
BLAS included; on a busy machine use 1, which also times CPU time instead of wall time.

Run: python bench/bench_channel_ops.py [--only depthwise|batchnorm|dcgan] [--repeats 7]
[--block 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

BATCH = {"mobilenet": 32, "resnet": 32, "unet": 8, "dcgan": 32}


@dataclass(frozen=True)
class Case:
    op: str
    net: str
    shape: tuple  # the input's (C, H, W), batch from BATCH
    stride: int = 1


CASES = [
    *(Case("depthwise", "mobilenet", shape, stride) for shape, stride in [
        ((32, 32, 32), 1), ((96, 32, 32), 2), ((144, 16, 16), 1), ((144, 16, 16), 2),
        ((192, 8, 8), 1), ((192, 8, 8), 2), ((384, 4, 4), 1)]),
    *(Case(op, "mobilenet", shape) for op in ("batchnorm", "relu6") for shape in [
        (32, 32, 32), (96, 32, 32), (96, 16, 16), (144, 16, 16), (192, 8, 8), (384, 4, 4)]),
    *(Case(op, "resnet", shape) for op in ("batchnorm", "relu") for shape in [
        (16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    Case("relu", "unet", (16, 64, 64)),
    Case("maxpool", "unet", (16, 64, 64)),
    Case("maxpool", "unet", (32, 32, 32)),
    Case("concat", "unet", (32, 32, 32)),
    Case("concat", "unet", (16, 64, 64)),
    Case("upsample", "unet", (32, 32, 32)),
    Case("conv_transpose", "unet", (64, 16, 16), 2),
    *(Case("leaky_relu", "dcgan", shape) for shape in [(64, 32, 32), (128, 16, 16)]),
    *(Case("tconv4x4", "dcgan", shape, 2) for shape in [(512, 4, 4), (256, 8, 8),
                                                         (128, 16, 16)]),
    *(Case("groupnorm", "unet", shape) for shape in [(32, 64, 64), (64, 32, 32)]),
    Case("bilinear", "unet", (32, 32, 32)),
]


def numpy_step(case: Case, x: np.ndarray, rng):
    """A function running the NumPy kernel's forward and backward once."""
    from nnspec.backends.numpy.kernels import (
        activations,
        conv,
        conv_transpose,
        elementwise,
        norm_batch,
        norm_group,
        pool,
        resample,
    )

    channels = x.shape[1]
    dy = None  # the output gradient, made on the first call (its shape is the output's)
    if case.op == "depthwise":
        weight = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)

        def forward():
            return conv.conv2d(x, weight, None, stride=(case.stride,) * 2,
                               padding=((1, 1), (1, 1)), dilation=(1, 1), groups=channels)
    elif case.op == "batchnorm":
        weight, bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        mean, var = np.zeros(channels, np.float32), np.ones(channels, np.float32)

        def forward():
            return norm_batch.batch_norm(x, weight, bias, mean, var, train=True)
    elif case.op in ("relu", "relu6"):
        def forward():
            return getattr(activations, case.op)(x)
    elif case.op == "maxpool":
        def forward():
            return pool.max_pool2d(x, kernel=(2, 2), stride=(2, 2), padding=((0, 0), (0, 0)))
    elif case.op == "concat":
        def forward():
            return elementwise.concat([x, x], axis=1)
    elif case.op == "upsample":
        def forward():
            return resample.upsample(x, scale_factor=2, mode="nearest")
    elif case.op == "conv_transpose":
        weight = rng.standard_normal((channels, channels // 2, 2, 2)).astype(np.float32)
        bias = np.zeros(channels // 2, np.float32)

        def forward():
            return conv_transpose.conv_transpose2d(x, weight, bias, stride=2)
    elif case.op == "leaky_relu":
        def forward():
            return activations.leaky_relu(x, negative_slope=0.2)
    elif case.op == "tconv4x4":
        weight = (rng.standard_normal((channels, channels // 2, 4, 4)) * 0.05).astype(np.float32)

        def forward():
            return conv_transpose.conv_transpose2d(x, weight, None, stride=2, padding=1)
    elif case.op == "groupnorm":
        weight, bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)

        def forward():
            return norm_group.group_norm(x, weight, bias, groups=8)
    elif case.op == "bilinear":
        def forward():
            return resample.upsample(x, scale_factor=2, mode="bilinear")
    else:
        raise ValueError(case.op)

    def step():
        nonlocal dy
        y, backward = forward()
        if dy is None:
            dy = rng.standard_normal(y.shape).astype(np.float32)
        backward(dy)

    return step


def torch_step(case: Case, x: np.ndarray, rng):
    """A function running torch's forward and every gradient once."""
    import torch
    import torch.nn.functional as F

    channels = x.shape[1]
    tx = torch.tensor(x, requires_grad=True)
    leaves = [tx]
    if case.op == "depthwise":
        weight = torch.tensor(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32),
                              requires_grad=True)
        leaves.append(weight)

        def forward():
            return F.conv2d(tx, weight, None, stride=case.stride, padding=1, groups=channels)
    elif case.op == "batchnorm":
        weight = torch.ones(channels, requires_grad=True)
        bias = torch.zeros(channels, requires_grad=True)
        leaves += [weight, bias]
        mean, var = torch.zeros(channels), torch.ones(channels)

        def forward():
            return F.batch_norm(tx, mean, var, weight, bias, training=True)
    elif case.op in ("relu", "relu6"):
        fn = getattr(F, case.op)

        def forward():
            return fn(tx)
    elif case.op == "maxpool":
        def forward():
            return F.max_pool2d(tx, 2)
    elif case.op == "concat":
        def forward():
            return torch.cat([tx, tx], dim=1)
    elif case.op == "upsample":
        def forward():
            return F.interpolate(tx, scale_factor=2, mode="nearest")
    elif case.op == "conv_transpose":
        weight = torch.tensor(rng.standard_normal((channels, channels // 2, 2, 2))
                              .astype(np.float32), requires_grad=True)
        bias = torch.zeros(channels // 2, requires_grad=True)
        leaves += [weight, bias]

        def forward():
            return F.conv_transpose2d(tx, weight, bias, stride=2)
    elif case.op == "leaky_relu":
        def forward():
            return F.leaky_relu(tx, 0.2)
    elif case.op == "tconv4x4":
        weight = torch.tensor((rng.standard_normal((channels, channels // 2, 4, 4)) * 0.05)
                              .astype(np.float32), requires_grad=True)
        leaves.append(weight)

        def forward():
            return F.conv_transpose2d(tx, weight, None, stride=2, padding=1)
    elif case.op == "groupnorm":
        weight = torch.ones(channels, requires_grad=True)
        bias = torch.zeros(channels, requires_grad=True)
        leaves += [weight, bias]

        def forward():
            return F.group_norm(tx, 8, weight, bias)
    elif case.op == "bilinear":
        def forward():
            return F.interpolate(tx, scale_factor=2, mode="bilinear")
    else:
        raise ValueError(case.op)
    dy = None

    def step():
        nonlocal dy
        y = forward()
        if dy is None:
            dy = torch.tensor(rng.standard_normal(tuple(y.shape)).astype(np.float32))
        torch.autograd.grad(y, leaves, dy)

    return step


# at more than one thread, a pause before each timed block so that the other backend's idle
# workers have stopped spin-waiting and no longer hold a core (as in bench_real.py)
SETTLE_SECONDS = 0.3


def _seconds(fn, steps: int, clock) -> float:
    start = clock()
    for _ in range(steps):
        fn()
    return (clock() - start) / steps


def main():
    import torch
    from threadpoolctl import threadpool_limits

    from nnspec.backends.numpy.allocator import keep_freed_memory

    keep_freed_memory()  # as the interpreter does: freed blocks are reused, not faulted in again
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="cases whose op or net contains this (a|b)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved blocks per backend")
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    args = parser.parse_args()
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")
    # one thread: CPU time, which other processes on a busy machine disturb far less than
    # wall time; more threads: wall time (CPU time would count their spin-waiting)
    clock = time.process_time if threads == 1 else time.perf_counter
    print(f"forward + backward per layer, median of {args.repeats} interleaved blocks of "
          f"{args.block}; {threads} thread(s) each, {'CPU' if threads == 1 else 'wall'} time; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'op':<15}{'net':<10}{'input (N, C, H, W)':<22}{'stride':>6}"
          f"{'numpy ms':>10}{'torch ms':>10}{'ratio':>7}")
    parts = args.only.lower().split("|")
    ratios = []
    for case in CASES:
        if not any(part in f"{case.op} {case.net}" for part in parts):
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((BATCH[case.net], *case.shape)).astype(np.float32)
        ours, theirs = numpy_step(case, x, rng), torch_step(case, x, rng)
        for _ in range(2):
            ours()
            theirs()
        a, b = [], []
        settle = SETTLE_SECONDS if threads > 1 else 0.0
        for _ in range(args.repeats):
            time.sleep(settle)
            a.append(_seconds(ours, args.block, clock))
            time.sleep(settle)
            b.append(_seconds(theirs, args.block, clock))
        na, nb = statistics.median(a), statistics.median(b)
        ratios.append(na / nb)
        shape = str((BATCH[case.net], *case.shape))
        print(f"{case.op:<15}{case.net:<10}{shape:<22}{case.stride:>6}"
              f"{na * 1e3:>10.3f}{nb * 1e3:>10.3f}{na / nb:>7.2f}", flush=True)
    if ratios:
        print(f"geometric mean ratio {statistics.geometric_mean(ratios):.2f}; "
              f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
