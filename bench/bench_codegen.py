"""Time one training step (zero_grad, forward, loss, backward, optimizer step) of the
GENERATED PyTorch module of each bench spec and of the hand-written PyTorch model of
bench_train.py on the same workload, interleaved in one process, and print the ratio
generated/hand-written (target: <= 1.05; the generated code should cost nothing extra).

The generated side uses what the file gives: the model class, `loss_fn` and
`make_optimizer` (the spec's optimizer with every setting spelled out); the hand-written
side takes bench_train.py's models and optimizers. Both start from the same weights and
train on the same batch.

Run: python bench/bench_codegen.py [--repeats 40] [--block 5] [--check]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np
import torch
from bench_train import HERE, WORKLOADS, timed
from torch import nn

from nnspec.backends.torch.runtime import load_generated
from nnspec.spec import load

TARGET = 1.05


def steps(spec_path, module_cls, make_opt, shape, target_kind):
    """Step functions of the generated and the hand-written model, from the same weights
    (copied in parameter order; the two models declare their layers in the same order)
    on the same batch."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal(shape).astype(np.float32))
    if target_kind == "classes":
        y = torch.tensor(rng.integers(0, 10, shape[0]))
        loss_fn = nn.functional.cross_entropy
    else:
        y = torch.tensor(rng.standard_normal(shape).astype(np.float32))
        loss_fn = nn.functional.mse_loss
    module, model_class = load_generated(load(spec_path))
    generated, by_hand = model_class(), module_cls()
    with torch.no_grad():
        for mine, theirs in zip(generated.parameters(), by_hand.parameters(), strict=True):
            mine.copy_(theirs)

    def step(model, optimizer, loss):
        def run():
            optimizer.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            optimizer.step()

        return run

    return (step(generated, module.make_optimizer(generated), module.loss_fn),
            step(by_hand, make_opt(by_hand.parameters()), loss_fn))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if a workload's ratio is above {TARGET}")
    args = parser.parse_args()
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    print(f"one training step, median of {args.repeats} interleaved blocks of {args.block} "
          f"steps, torch threads {threads}")
    print(f"{'workload':<52}{'generated ms':>14}{'by hand ms':>12}{'ratio':>8}")
    worst = 0.0
    for name, spec, module_cls, make_opt, shape, kind in WORKLOADS:
        ours, theirs = steps(HERE / spec, module_cls, make_opt, shape, kind)
        for _ in range(5):
            ours()
            theirs()
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(ours, args.block))
            b.append(timed(theirs, args.block))
        na, nb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        worst = max(worst, na / nb)
        print(f"{name:<52}{na:>14.3f}{nb:>12.3f}{na / nb:>8.3f}")
    print(f"worst ratio {worst:.3f} (target <= {TARGET})")
    return 1 if args.check and worst > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
