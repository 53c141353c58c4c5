"""Time one training step of the transformer and recurrent workloads (bench/specs/) through
the NumPy interpreter and through the spec's generated PyTorch module, same weights and same
batch, in interleaved blocks in one process; then the step time against sequence length.

Run: python bench/bench_transformer.py [--repeats 5] [--block 5] [--lengths 32,64,128,256,512]
A temporary harness: its workloads are meant to join bench/bench_real.py's table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.numpy.optim import make_optimizer
from nnspec.backends.torch.runtime import TorchModel
from nnspec.spec import load_text

HERE = Path(__file__).parent / "specs"

# name, spec file, the model parameter holding the sequence length, vocabulary (None: floats)
WORKLOADS = [
    ("ViT encoder 64x48 d128 L4 h4", "vit_encoder.nn", "patches", None),
    ("tiny GPT T64 d128 L4 h4", "tiny_gpt.nn", "ctx", 65),
    ("char GRU LM T64 H256", "char_gru_lm.nn", "ctx", 65),
]


def spec_at_length(file: str, length_param: str, length: int | None):
    text = (HERE / file).read_text()
    if length is not None:
        text = re.sub(rf"\b{length_param} = \d+", f"{length_param} = {length}", text, count=1)
    return load_text(text, str(HERE / file))


def steps_for(spec, vocab, batch, rng):
    """A NumPy step and a torch step over the same weights and the same batch."""
    ours = NumpyModel.from_spec(spec, seed=0)
    theirs = TorchModel(spec, ours.state_dict(), seed=0)
    input_type = spec.graph.node(spec.graph.inputs[0]).type
    shape = (batch,) + tuple(input_type.shape)
    if vocab is None:
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.integers(0, 10, batch)
    else:
        x = rng.integers(0, vocab, shape)
        y = rng.integers(0, vocab, shape)
    opt = spec.train.optimizer
    numpy_optimizer = make_optimizer(opt.name, ours.buffer, **opt.args)
    torch_optimizer = theirs.make_optimizer()

    def numpy_step():
        ours.loss(x, y)
        ours.backward()
        numpy_optimizer.step()

    def torch_step():
        theirs.loss(x, y)
        theirs.backward()
        torch_optimizer.step()

    return numpy_step, torch_step


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def compare(numpy_step, torch_step, repeats: int, block: int) -> tuple[float, float, float]:
    """Median ms of each and the median of the per-block ratios."""
    for _ in range(2):
        numpy_step()
        torch_step()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(numpy_step, block))
        b.append(timed(torch_step, block))
    ratio = statistics.median(x / y for x, y in zip(a, b))
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3, ratio


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", default="32,64,128,256,512")
    parser.add_argument("--only", default="", help="substring of the workloads to run")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.1f}; batch {args.batch}; median of "
          f"{args.repeats} interleaved blocks of {args.block} steps; threads "
          f"{torch.get_num_threads()}")
    print(f"{'workload':<44}{'numpy ms':>10}{'torch ms':>10}{'ratio':>8}")
    chosen = [w for w in WORKLOADS if args.only in w[0]]
    for name, file, length_param, vocab in chosen:
        steps = steps_for(spec_at_length(file, length_param, None), vocab, args.batch, rng)
        na, nb, ratio = compare(*steps, args.repeats, args.block)
        print(f"{name:<44}{na:>10.1f}{nb:>10.1f}{ratio:>8.2f}", flush=True)
    if not args.lengths:
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    print(f"\nstep time against sequence length, batch {args.batch} (numpy / torch ms, ratio)")
    for name, file, length_param, vocab in chosen:
        cells = []
        for length in lengths:
            steps = steps_for(spec_at_length(file, length_param, length), vocab, args.batch, rng)
            na, nb, ratio = compare(*steps, max(3, args.repeats // 2), max(1, args.block // 2))
            cells.append(f"T{length}: {na:.0f}/{nb:.0f} {ratio:.2f}")
        print(f"{name:<30}" + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
