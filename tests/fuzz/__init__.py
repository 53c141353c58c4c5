"""The fuzz harness: inputs (mutated corpus files, generated programs), the oracle that runs
one input through check, summary, render and compile, and a runner with per-input limits.

`tests/test_fuzz.py` runs it in-process for a few seconds; `make fuzz` (scripts/fuzz.py)
runs 100,000 inputs in worker processes and saves every crasher under tests/fuzz_cases/.
"""
