"""Time one training step of real workloads through the NumPy interpreter and through the
spec's generated PyTorch module (same weights, same batch), interleaved in one process.

Each workload is one `.nn` spec under bench/specs/ plus a batch size: `WORKLOADS` below is the
only list to extend. Per workload it prints ms per step of each backend, the ratio
numpy/torch (lower is better), the peak memory of each backend's steps (each backend in a
fresh process of its own, as its user runs it, its runtime loaded and its model built: the
resident peak `VmHWM` is reset through /proc/self/clear_refs, the optimizer made, and the
figure is the peak over three steps minus the resident size before them: optimizer state,
gradients, activations and scratch) and the achieved GFLOP/s of each
against the machine's float32 GEMM rate, measured first. FLOPs per step are counted as
3 x 2 x MACs x batch (forward, then input and weight gradients), from `nnspec summary`'s MACs.

Run: python bench/bench_real.py [--repeats 7] [--block 5] [--only resnet] [--batches 8,64,256]
[--lengths 32,64,128,256,512] [--memory-only] [--variants]
(`--batches` times every chosen workload at each batch size instead of its own, `--lengths`
every sequence workload at each length, to show how the step time grows; `--variants` times
VARIANTS instead, other widths, depths, head sizes and lengths of the same kinds.)
`BENCH_THREADS` (default 2) is the thread count of both backends, NumPy's BLAS included; on a
busy machine use 1, as multithreaded runs then mostly measure spin-waiting.
Ratios from interleaved blocks in one process are steadier than absolute times (which move
20-30% with the machine's load); the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPECS = Path(__file__).parent / "specs"


@dataclass(frozen=True)
class Workload:
    """A spec and the batch it is timed at; `dims` fixes the symbolic dims of its inputs
    (e.g. {"T": 64}), `vocab` bounds integer token inputs, `hyper` overrides the model's
    hyperparameters (as `--set` does), `length` names the one `--lengths` sweeps and
    `train` is a train section for a spec without one (the reference specs in specs/)."""

    name: str
    spec: str
    batch: int
    dims: dict = field(default_factory=dict)
    vocab: int = 0
    hyper: dict = field(default_factory=dict)
    length: str = ""
    train: str = ""


WORKLOADS = [
    Workload("residual CNN 1x8x8 w32 bn", "digits_resnet.nn", 64),
    Workload("CIFAR ResNet-20 3x32x32 16/32/64 bn", "resnet_cifar.nn", 32),
    Workload("MobileNetV2-style depthwise 3x32x32", "mobilenet_cifar.nn", 32),
    Workload("ViT encoder 64x48 d128 L4 h4", "vit_encoder.nn", 32, length="patches"),
    Workload("tiny GPT T64 d128 L4 h4", "tiny_gpt.nn", 32, vocab=65, length="ctx"),
    Workload("char GRU LM T64 H256", "char_gru_lm.nn", 32, vocab=65, length="ctx"),
    Workload("U-Net 1x64x64 16/32/64 (tconv, upsample)", "unet_small.nn", 8),
    Workload("LeNet-5 1x28x28", "lenet5.nn", 64),
]

# The same kinds at other widths, depths, head sizes, lengths and batches (`--variants`): a
# speed-up that only the configurations above get, or a cliff elsewhere, shows here. The
# LSTM, the LLaMA-style decoder, the ImageNet-style stem, grouped and transposed
# convolutions with leaky ReLU (DCGAN) are kinds WORKLOADS lacks.
VARIANTS = [
    Workload("char LSTM LM T64 H256", "char_lstm_lm.nn", 32, vocab=65, length="ctx"),
    Workload("char LSTM LM 2 layers T128 H512 b16", "char_lstm_lm.nn", 16, vocab=65,
             hyper={"ctx": 128, "hidden": 512, "layers": 2}),
    Workload("char GRU LM T128 H512 b64", "char_gru_lm.nn", 64, vocab=65,
             hyper={"ctx": 128, "hidden": 512}),
    Workload("char GRU LM T32 H128 b128", "char_gru_lm.nn", 128, vocab=65,
             hyper={"ctx": 32, "hidden": 128}),
    Workload("ViT d192 h3 (head 64) L6 T65", "vit_encoder.nn", 32,
             hyper={"d": 192, "heads": 3, "layers": 6, "patches": 65}),
    Workload("ViT d256 h8 L4 T196 b16", "vit_encoder.nn", 16,
             hyper={"d": 256, "heads": 8, "patches": 196}),
    Workload("ViT d64 h2 L2 T16 b64", "vit_encoder.nn", 64,
             hyper={"d": 64, "heads": 2, "layers": 2, "patches": 16}),
    Workload("GPT d256 h8 L4 T128 b16", "tiny_gpt.nn", 16, vocab=65,
             hyper={"d": 256, "heads": 8, "ctx": 128}),
    Workload("GPT d384 h6 L2 T256 b8", "tiny_gpt.nn", 8, vocab=65,
             hyper={"d": 384, "heads": 6, "layers": 2, "ctx": 256}),
    Workload("GPT d64 h4 (head 16) L2 T100", "tiny_gpt.nn", 32, vocab=65,
             hyper={"d": 64, "heads": 4, "layers": 2, "ctx": 100}),
    Workload("mini LLaMA d256 h8/kv2 L4 T128 b16", "mini_llama.nn", 16, vocab=256,
             length="ctx"),
    Workload("ResNet 32/64/128 2 blocks/stage", "resnet_wide.nn", 32),
    Workload("ResNet 16/32/64 2 blocks/stage 64x64 b16", "resnet_wide.nn", 16,
             hyper={"w": 16, "size": 64}),
    Workload("ResNet 8/16/32 2 blocks/stage b128", "resnet_wide.nn", 128, hyper={"w": 8}),
    Workload("ResNet 128/256/512 2 blocks 16x16 b16", "resnet_wide.nn", 16,
             hyper={"w": 128, "size": 16}),
    Workload("ResNet 64/128/256 2 blocks 16x16 b32", "resnet_wide.nn", 32,
             hyper={"w": 64, "size": 16}),
    Workload("grouped convs, 8 groups of 8 and 16", "grouped_net.nn", 32),
    Workload("grouped convs, 32 groups of 4", "grouped_net.nn", 32,
             hyper={"w": 128, "g": 32}),
    Workload("7x7/2 stem, 3x3/2 max pool, 5x5 64x64", "stem_net.nn", 32),
    Workload("MobileNetV2-style b8", "mobilenet_cifar.nn", 8),
    Workload("MobileNetV2-style b128", "mobilenet_cifar.nn", 128),
    Workload("U-Net 8/16/32 1x32x32 b32", "unet_small.nn", 32, hyper={"width": 8, "size": 32}),
    Workload("U-Net 32/64/128 1x64x64 b4", "unet_small.nn", 4, hyper={"width": 32}),
    Workload("U-Net 64/128/256 1x32x32 b4", "unet_small.nn", 4,
             hyper={"width": 64, "size": 32}),
    # the reference specs as written for ImageNet, at CIFAR-like sizes: ResNet-50's
    # bottlenecks (1x1 layers onto 2x2 to 16x16 maps), torchvision's MobileNetV2 and VGG-16
    # (its classifier 25088 -> 4096 -> 4096 at batch 8)
    Workload("ResNet-50 3x64x64 b8", "../../specs/resnet50.nn", 8,
             hyper={"size": 64, "classes": 10},
             train="train ResNet50 { loss cross_entropy; optimizer sgd(lr = 0.1, "
                   "momentum = 0.9); batch 8 }"),
    Workload("MobileNetV2 3x64x64 b16", "../../specs/mobilenet_v2.nn", 16,
             hyper={"size": 64, "classes": 10},
             train="train MobileNetV2 { loss cross_entropy; optimizer sgd(lr = 0.1, "
                   "momentum = 0.9); batch 16 }"),
    Workload("VGG-16 3x32x32 b8", "../../specs/vgg16.nn", 8,
             hyper={"size": 32, "classes": 10},
             train="train VGG16 { loss cross_entropy; optimizer sgd(lr = 0.01, "
                   "momentum = 0.9); batch 8 }"),
    # DCGAN's two networks as the PyTorch examples write them: 4x4/2 transposed convolutions
    # from 100 noise values to a 3x64x64 image, and 4x4/2 convolutions with leaky ReLU back
    # down (MSE to a random target for both: the benchmark's targets are not probabilities)
    Workload("DCGAN generator 100 -> 3x64x64 b32", "../../specs/dcgan.nn", 32,
             train="train Generator { loss mse; optimizer adam(lr = 2e-4); batch 32 }"),
    Workload("DCGAN discriminator 3x64x64 b32", "../../specs/dcgan.nn", 32,
             train="train Discriminator { loss mse; optimizer adam(lr = 2e-4); batch 32 }"),
]


# a pause before each timed block, so the other backend's idle threads have stopped
# spin-waiting: torch's OpenMP workers and OpenBLAS's spin for a while after their work and
# took a core from the next block (in one process or two). At two threads NumPy's ResNet-20
# steps, 155 ms alone, measured 169-336 ms right after torch's, 157-176 ms after the pause,
# and torch's 83-100 ms, 65-70 ms after it; one thread each has no such workers
SETTLE_SECONDS = 0.3


def load_workload(workload: Workload):
    from nnspec.spec import load, load_text

    path = SPECS / workload.spec
    if workload.train:
        return load_text(path.read_text() + "\n" + workload.train, str(path),
                         overrides=workload.hyper)
    return load(path, overrides=workload.hyper)


def make_batch(spec, workload: Workload, rng) -> tuple:
    """Random inputs of the declared types and targets shaped like the model's output."""
    arrays = []
    for name in spec.graph.inputs:
        declared = spec.graph.node(name).type
        shape = (workload.batch, *(workload.dims.get(d, d) for d in declared.shape))
        if declared.dtype == "int64":
            arrays.append(rng.integers(0, workload.vocab, shape))
        else:
            arrays.append(rng.standard_normal(shape).astype(np.float32))
    x = arrays[0] if len(arrays) == 1 else tuple(arrays)
    # the output's shape from its type, not from running the model: a forward pass here
    # would leave freed memory in the process and hide part of the measured steps' peak
    declared = spec.graph.node(spec.graph.outputs[0]).type
    out_shape = (workload.batch, *(workload.dims.get(d, d) for d in declared.shape))
    target_type = spec.train.loss_graph.node("target").type
    if target_type.dtype == "int64":  # class indices: classes last, or first of a map's
        maps = len(declared.shape) >= 3
        positions = out_shape[:1] + out_shape[2:] if maps else out_shape[:-1]
        target = rng.integers(0, out_shape[1] if maps else out_shape[-1], positions)
    else:
        target = rng.standard_normal(out_shape).astype(np.float32)
    return x, target


def make_steps(workload: Workload, seed: int = 0):
    """(numpy step, torch step): one training step each, from the same weights and batch."""
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.backends.torch.runtime import TorchModel

    spec = load_workload(workload)
    x, target = make_batch(spec, workload, np.random.default_rng(seed))
    ours = NumpyModel.from_spec(spec, seed=seed)
    theirs = TorchModel(spec, ours.state_dict(), seed)
    our_optimizer = ours.make_optimizer(spec.train.optimizer)
    their_optimizer = theirs.make_optimizer(spec.train.optimizer)

    def numpy_step():
        ours.loss(x, target)
        ours.backward()
        our_optimizer.step()

    def torch_step():
        theirs.loss(x, target)
        theirs.backward()
        their_optimizer.step()

    return numpy_step, torch_step


def step_flops(workload: Workload) -> float:
    from nnspec.summary import summarize

    macs = summarize(load_workload(workload).graph).macs
    return 6.0 * macs * workload.batch if isinstance(macs, int) else float("nan")


def gemm_gflops(size: int = 1024, repeats: int = 5) -> float:
    """The best float32 GEMM rate of NumPy's BLAS on this machine, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    best = min(_seconds(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def _seconds(fn, steps: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _give_back_freed_memory() -> None:
    """Return the set-up's freed memory to the system (glibc's malloc_trim), so that the
    steps measured after it cannot reuse it unseen."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def _warm_torch() -> None:
    """Two steps of a throwaway three-layer net: torch's first backward starts its runtime
    (the autograd engine's thread, oneDNN), about 90 MiB on this machine whatever the
    model (LeNet-5's first three steps grew 98 MiB without it, 14 with it). It is loaded
    before the measured steps, as nnspec's compiled jobs are: a library's cost, not a
    step's."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), target).backward()
        optimizer.step()


def _peak_growth(workload: Workload, backend: int, threads: int, steps: int,
                 weights_path: str, queue) -> None:
    """In a child process that runs one backend, as its user would: the resident peak of
    the first steps above the resident size once the model is built (MiB), the optimizer
    made after that so that its state counts for both backends (nnspec's at creation,
    torch's at the first step)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    spec = load_workload(workload)
    x, target = make_batch(spec, workload, np.random.default_rng(0))
    if backend == 1:  # torch, with glibc's allocator as a torch user has it and the weights
        import torch  # from a file, as a checkpoint's; no interpreter model in the process

        from nnspec.backends.torch.runtime import TorchModel

        torch.set_num_threads(threads)
        _warm_torch()
        from safetensors.numpy import load_file

        weights = load_file(weights_path)
        model = TorchModel(spec, weights, seed=0)
        del weights  # (not given back: the steps may reuse it, in torch's favour)
    else:
        from nnspec.backends.numpy.kernels import (  # the compiled jobs load on their first
            attention_tiles,  # run: a library's load, as torch's runtime is
            avg_pool,
            columns,
            frames,
            gemm,
            gru_steps,
            lstm_steps,
            max_pool,
            parallel,
            tiled,
            winograd,
        )
        from nnspec.backends.numpy.model import NumpyModel

        model = NumpyModel.from_spec(spec, seed=0)
        parallel.warm_up()
        for module in (tiled, gemm, frames, columns, gru_steps, lstm_steps, max_pool, avg_pool,
                       winograd, attention_tiles):
            module.load()
    gc.collect()
    if backend == 0:  # the initialisation's temporaries, kept in the process (``allocator``),
        # would hold a step's activations unseen: ResNet-50's 3x64x64 b8 peak 181 -> 235 MiB
        _give_back_freed_memory()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    before = _status_kib("VmRSS")
    optimizer = model.make_optimizer(spec.train.optimizer)
    for _ in range(steps):
        model.loss(x, target)
        model.backward()
        optimizer.step()
    queue.put((_status_kib("VmHWM") - before) / 1024.0)


def peak_memory_mib(workload: Workload, threads: int, steps: int = 3
                    ) -> tuple[float, float]:
    """(numpy, torch) growth of the resident peak over a few training steps, each backend in
    a fresh process of its own: one backend's steps never reuse memory the other's set-up
    freed (both in one process, torch's steps had reused the interpreter model's freed
    memory: the ResNet of 128/256/512 on 16x16 maps read 74-88 MiB, 159-171 alone), and
    both start from the same weights (written to a file here)."""
    import tempfile

    from safetensors.numpy import save_file

    from nnspec.backends.numpy.model import NumpyModel

    context = multiprocessing.get_context("spawn")
    peaks = []
    with tempfile.TemporaryDirectory() as folder:
        weights_path = os.path.join(folder, "weights.safetensors")
        save_file(NumpyModel.from_spec(load_workload(workload), seed=0).state_dict(),
                  weights_path)
        for backend in (0, 1):
            queue = context.Queue()
            child = context.Process(target=_peak_growth, args=(
                workload, backend, threads, steps, weights_path, queue))
            child.start()
            peaks.append(queue.get())
            child.join()
    return peaks[0], peaks[1]


def _blas() -> str:
    from threadpoolctl import threadpool_info

    from nnspec.backends.numpy.kernels import gemm

    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    found = ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} x{i['num_threads']}"
                      for i in info) or "?"
    return f"{found} (its large products on nnspec's tiles)" if gemm.blas_is_narrow() else found


def _cpu() -> str:
    """The processor's model name: machines of one kind differ (an AMD EPYC and an Intel Xeon
    gave ResNet-20 2.4 and 3.0 at two threads), so every table says which it came from."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "?"


def main():
    import torch
    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7, help="interleaved blocks per backend")
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--only", default="",
                        help="run the workloads whose name contains this (or any of a|b)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure the peaks only (no timing)")
    parser.add_argument("--batches", default="", help="comma-separated batch sizes to sweep")
    parser.add_argument("--lengths", default="",
                        help="comma-separated sequence lengths to sweep (sequence workloads)")
    parser.add_argument("--variants", action="store_true",
                        help="time VARIANTS (other sizes of the same kinds) instead")
    args = parser.parse_args()
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    # the same thread count for NumPy's BLAS, whatever OMP_NUM_THREADS says
    threadpool_limits(threads, user_api="blas")
    gemm = gemm_gflops()
    print(f"one training step: median of {args.repeats} interleaved blocks of {args.block} "
          f"steps; {_cpu()}, {os.cpu_count()} cores; torch threads {threads}; numpy BLAS "
          f"{_blas()}; float32 GEMM {gemm:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")
    print("MiB = resident peak over 3 steps (the optimizer made first) above the resident "
          "size with the model built (VmHWM after clear_refs), each backend in a process of "
          "its own, its runtime loaded")
    print(f"{'workload':<40}{'numpy ms':>9}{'torch ms':>9}{'ratio':>7}"
          f"{'np MiB':>8}{'pt MiB':>8}{'np GF/s':>8}{'pt GF/s':>8}{'% GEMM':>7}")
    chosen = [w for w in (VARIANTS if args.variants else WORKLOADS)
              if any(part in w.name.lower() for part in args.only.lower().split("|"))]
    if args.batches:
        chosen = [dataclasses.replace(w, name=f"{w.name} b{batch}", batch=batch)
                  for w in chosen for batch in map(int, args.batches.split(","))]
    if args.lengths:
        chosen = [dataclasses.replace(w, name=f"{w.name} T{n}", hyper={w.length: n})
                  for w in chosen if w.length for n in map(int, args.lengths.split(","))]
    for workload in chosen:
        if args.memory_only:
            mem = peak_memory_mib(workload, threads)
            print(f"{workload.name:<40}{'':>25}{mem[0]:>8.1f}{mem[1]:>8.1f}", flush=True)
            continue
        ours, theirs = make_steps(workload)
        for _ in range(2):
            ours()
            theirs()
        a, b = [], []
        for _ in range(args.repeats):
            time.sleep(SETTLE_SECONDS)
            a.append(_seconds(ours, args.block))
            time.sleep(SETTLE_SECONDS)
            b.append(_seconds(theirs, args.block))
        na, nb = statistics.median(a), statistics.median(b)
        mem = (float("nan"),) * 2 if args.no_memory else peak_memory_mib(workload, threads)
        flops = step_flops(workload)
        print(f"{workload.name:<40}{na * 1e3:>9.1f}{nb * 1e3:>9.1f}{na / nb:>7.2f}"
              f"{mem[0]:>8.1f}{mem[1]:>8.1f}{flops / na / 1e9:>8.1f}{flops / nb / 1e9:>8.1f}"
              f"{100 * flops / na / 1e9 / gemm:>7.0f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
