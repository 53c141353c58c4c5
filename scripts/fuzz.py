"""Fuzz nnspec's front end and backends: `make fuzz` (100,000 inputs by default).

Each input (a mutated spec from specs/ or tests/errors/, or a generated program) runs
through check, summary, render (DOT) and compile (torch source) in a worker process under
a time limit and a memory limit. Any exception that is not nnspec's diagnostics, any hang
and any memory-limit hit is a finding; the shortest input of each distinct finding is
saved under tests/fuzz_cases/ (tracebacks minimised), where tests/test_fuzz.py replays it.

With --cli the inputs are hostile command lines instead (tests/fuzz/hostile.py): train,
eval, predict, import-weights, compile, render... with odd option values and damaged data
files, weights and run directories, run in-process; each must exit 0, 1, 2 or 130. Their
findings are saved as .json scenarios beside the .nn cases.

    python scripts/fuzz.py --count 100000 [--seed S] [--workers 2] [--time-limit 10] [--cli]
    python scripts/fuzz.py --replay            # only replay tests/fuzz_cases/
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "fuzz_cases"
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.runner import Campaign, replay, save_cases


def _replay(args) -> int:
    cases = sorted([*CASES.glob("*.nn"), *CASES.glob("*.json")])
    results = replay(cases, args.workers, args.time_limit, args.memory << 20)
    failed = {p: r for p, r in results.items() if r.failed}
    for path, result in sorted(failed.items()):
        print(f"  still failing: {path.relative_to(ROOT)}: {result.signature}")
    print(f"replayed {len(cases)} saved cases: {len(cases) - len(failed)} pass, "
          f"{len(failed)} still fail")
    return len(failed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", default=None, help="default: a fresh one (printed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--memory", type=int, default=3072, help="MiB of address space a "
                        "worker may add to what it was forked with")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop starting new inputs after this long")
    parser.add_argument("--replay", action="store_true", help="only replay the saved cases")
    parser.add_argument("--cli", action="store_true", help="hostile command lines and data "
                        "files instead of specs")
    parser.add_argument("--no-save", action="store_true", help="do not write new cases")
    args = parser.parse_args(argv)
    if args.replay:
        return 1 if _replay(args) else 0
    seed = args.seed or os.urandom(4).hex()
    campaign = Campaign(seed, args.count, args.workers, args.time_limit, args.memory << 20,
                        args.minutes * 60 if args.minutes else float("inf"), cli=args.cli)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` keeps the findings too
    print(f"fuzzing {args.count:,} {'command lines' if args.cli else 'inputs'}, seed {seed} (rerun: --seed {seed})", flush=True)
    try:
        campaign.run(lambda line: print(line, flush=True))
    except KeyboardInterrupt:  # Ctrl-C, or kill (a background job ignores SIGINT)
        print("interrupted: the summary covers the inputs tried so far")
    if campaign.findings and not args.no_save:
        campaign.minimise_tracebacks()
        for path in save_cases(campaign.findings.values(), CASES):
            print(f"  saved {path.relative_to(ROOT)}")
    print(campaign.summary())
    return 1 if campaign.findings else 0


if __name__ == "__main__":
    sys.exit(main())
