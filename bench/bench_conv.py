"""Time convolution layers one by one: the NumPy kernel (forward, then the input and
weight gradients) against torch eager's F.conv2d forward and backward on the same arrays,
interleaved in one process, printing ms per layer of each and the ratio numpy/torch.

The layers are those of the bench/ workloads (CIFAR ResNet, MobileNet-style, U-Net) and
others of the same kinds: widths 8-128, maps 4-64, batches 8-128, strides 1 and 2, 1x1
projections with stride 2, MobileNet's 1x1 expansions and projections, 3x3, 5x5 and 7x7
stems (a stem's input needs no gradient), ResNet-18's widest layers on the small maps of
64x64 images, and grouped convolutions (ResNeXt's 32 groups of 4 channels; 8 groups of 8 and
16). Depthwise ones are in ``bench_channel_ops.py``. Both backends run with a steady heap
(``steady_heap``), as inside a training loop.

Run: python bench/bench_conv.py [--repeats 7] [--only "k3 s2"]
`BENCH_THREADS` (default 2) is the thread count of both backends; on a busy machine use 1,
which times CPU time (time.process_time) instead of wall time: with one thread each, it
moves far less than wall time when other processes share the cores.
Ratios are the median of per-round ratios (one numpy block, one torch block per round), which
move far less than the absolute times; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layer:
    """One convolution: batch, in and out channels, square map, square kernel, stride,
    padding on every side, groups; ``stem`` when its input needs no gradient."""

    batch: int
    channels: int
    out_channels: int
    size: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    stem: bool = False
    groups: int = 1

    @property
    def name(self) -> str:
        kind = " stem" if self.stem else ""
        grouped = f" g{self.groups}" if self.groups > 1 else ""
        return (f"N{self.batch} {self.channels}->{self.out_channels} {self.size}x{self.size} "
                f"k{self.kernel} s{self.stride} p{self.padding}{grouped}{kind}")


LAYERS = [
    # CIFAR ResNet-20, batch 32
    Layer(32, 3, 16, 32, stem=True),
    Layer(32, 16, 16, 32),
    Layer(32, 16, 32, 32, stride=2),
    Layer(32, 16, 32, 32, kernel=1, stride=2, padding=0),
    Layer(32, 32, 32, 16),
    Layer(32, 32, 64, 16, stride=2),
    Layer(32, 32, 64, 16, kernel=1, stride=2, padding=0),
    Layer(32, 64, 64, 8),
    # U-Net 1x64x64, batch 8
    Layer(8, 1, 16, 64, stem=True),
    Layer(8, 16, 16, 64),
    Layer(8, 16, 32, 32),
    Layer(8, 32, 32, 32),
    Layer(8, 32, 64, 16),
    Layer(8, 64, 64, 16),
    Layer(8, 64, 32, 32),
    Layer(8, 32, 16, 64),
    # MobileNet-style stem, 1x1 expansions and projections
    Layer(32, 3, 32, 32, stem=True),
    Layer(32, 16, 96, 32, kernel=1, padding=0),
    Layer(32, 96, 24, 16, kernel=1, padding=0),
    Layer(32, 32, 192, 8, kernel=1, padding=0),
    Layer(32, 384, 64, 4, kernel=1, padding=0),
    # other widths, maps, batches, kernels
    Layer(8, 8, 8, 64),
    Layer(64, 8, 16, 32, stride=2),
    Layer(128, 16, 16, 16),
    Layer(16, 24, 48, 32),
    Layer(32, 48, 48, 8),
    Layer(32, 96, 96, 8),
    Layer(32, 128, 128, 4),
    Layer(64, 64, 128, 8, stride=2),
    Layer(16, 64, 128, 16, kernel=1, stride=2, padding=0),
    Layer(16, 3, 32, 32, kernel=5, padding=2, stem=True),
    Layer(8, 3, 64, 64, kernel=7, stride=2, padding=3, stem=True),
    Layer(16, 16, 16, 24, kernel=5, padding=2),
    # ResNet-18 on 64x64 images: its widest layers on 4x4 and 2x2 maps, batch 16
    Layer(16, 256, 256, 4),
    Layer(16, 512, 512, 2),
    # grouped: 8 channels a group, ResNeXt's 32 groups of 4, 16 a group and strided
    Layer(32, 64, 64, 32, groups=8),
    Layer(32, 128, 128, 16, groups=32),
    Layer(32, 128, 128, 32, stride=2, groups=8),
]


def make_arrays(layer: Layer, rng):
    x = rng.standard_normal((layer.batch, layer.channels, layer.size, layer.size), np.float32)
    weight = rng.standard_normal((layer.out_channels, layer.channels // layer.groups,
                                  layer.kernel, layer.kernel), np.float32) * 0.1
    bias = rng.standard_normal(layer.out_channels, np.float32)
    out = (layer.size + 2 * layer.padding - layer.kernel) // layer.stride + 1
    dy = rng.standard_normal((layer.batch, layer.out_channels, out, out), np.float32)
    return x, weight, bias, dy


def numpy_step(layer: Layer, x, weight, bias, dy):
    from nnspec.backends.numpy.kernels.conv import conv2d

    pad = ((layer.padding, layer.padding),) * 2
    _, backward = conv2d(x, weight, bias, stride=(layer.stride,) * 2, padding=pad,
                         dilation=(1, 1), groups=layer.groups, input_grad=not layer.stem)
    return backward(dy)


def torch_step(layer: Layer, x, weight, bias, dy):
    import torch.nn.functional as F

    for tensor in (x, weight, bias):
        tensor.grad = None
    y = F.conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding,
                 groups=layer.groups)
    y.backward(dy)


def time_block(step, args, reps, clock=time.perf_counter):
    start = clock()
    for _ in range(reps):
        step(*args)
    return (clock() - start) / reps * 1e3


# at more than one thread, a pause before each timed block so that the other backend's idle
# workers (OpenBLAS's, torch's OpenMP ones) have stopped spin-waiting and no longer hold a
# core, as in bench_real.py: without it torch's blocks, timed right after NumPy's, lost a
# core to OpenBLAS's spinning threads (ResNet-20's 32->32 16x16 layer: 3.4 ms alone)
SETTLE_SECONDS = 0.3


def bench_layer(layer: Layer, repeats: int, clock, settle: float, budget_ms: float = 40.0):
    """(numpy ms, torch ms, ratio): medians over interleaved rounds."""
    import torch

    rng = np.random.default_rng(0)
    arrays = make_arrays(layer, rng)
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    for tensor in tensors[:3]:
        tensor.requires_grad_(True)
    tensors[0].requires_grad_(not layer.stem)
    np_args, torch_args = (layer, *arrays), (layer, *tensors)
    once = min(time_block(numpy_step, np_args, 1), time_block(torch_step, torch_args, 1))
    reps = max(1, int(budget_ms / max(once, 1e-3)))
    numpy_ms, torch_ms, ratios = [], [], []
    for _ in range(repeats):
        time.sleep(settle)
        a = time_block(numpy_step, np_args, reps, clock)
        time.sleep(settle)
        b = time_block(torch_step, torch_args, reps, clock)
        numpy_ms.append(a)
        torch_ms.append(b)
        ratios.append(a / b)
    return statistics.median(numpy_ms), statistics.median(torch_ms), statistics.median(ratios)


def steady_heap() -> None:
    """Keep freed memory in the heap for the next allocation, as a training loop's steady
    state does (a ResNet-20 step spends 0.2 ms in the kernel, no page faults), rather than
    handing it back to the OS between the repeated calls of one layer, whose page faults
    would then be timed (7.6 of a 16->16 32x32 layer's 21.6 ms). glibc only; both backends."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD, at its maximum (32 MiB)


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table
    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="", help="layers whose name contains this text")
    args = parser.parse_args()
    steady_heap()
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")
    # one thread each: CPU time, which other processes on a busy machine barely move
    clock = time.process_time if threads == 1 else time.perf_counter
    table = Table(title=f"conv fwd + bwd, {threads} thread(s), "
                        f"{'CPU' if threads == 1 else 'wall'} time, load {os.getloadavg()[0]:.1f}")
    for column in ("layer", "numpy ms", "torch ms", "ratio"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    ratios = []
    console = Console()
    with console.status("") as status:
        for layer in LAYERS:
            if args.only not in layer.name:
                continue
            status.update(f"timing {layer.name}")
            numpy_ms, torch_ms, ratio = bench_layer(layer, args.repeats, clock,
                                                    SETTLE_SECONDS if threads > 1 else 0.0)
            ratios.append(ratio)
            table.add_row(layer.name, f"{numpy_ms:.2f}", f"{torch_ms:.2f}", f"{ratio:.2f}")
    console.print(table)
    if ratios:
        geo = float(np.exp(np.mean(np.log(ratios))))
        print(f"geometric mean ratio {geo:.2f}, worst {max(ratios):.2f}; "
              f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
