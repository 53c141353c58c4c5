"""specs/seq2seq.nn: the LSTM encoder-decoder learns the built-in `reverse` task on the NumPy
interpreter (its decoder knows the tokens only through the encoder's final states)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnspec.spec import load

SPEC = Path(__file__).resolve().parent.parent / "specs" / "seq2seq.nn"


def test_the_decoder_knows_the_tokens_only_through_the_encoders_states():
    graph = load(SPEC).graph
    decoder = next(n for n in reversed(graph.nodes) if n.op == "lstm")
    encoder = next(n for n in graph.nodes if n.op == "lstm")
    sources = [graph.node(i) for i in decoder.inputs]
    assert [(s.op, s.attrs.get("name")) for s in sources[1:]] == [("result", "h_n"),
                                                                 ("result", "c_n")]
    assert all(s.inputs == (encoder.name,) for s in sources[1:])
    assert sources[0].op == "positions"  # no token reaches it directly


def test_each_decoder_step_attends_over_the_encoders_outputs():
    graph = load(SPEC).graph
    attention = graph.node("cross_attention")
    queries, memory = (graph.node(i) for i in attention.inputs)
    assert queries.name == "decoder" and memory.op == "result"
    assert memory.attrs.get("name") == "output" or memory.attrs.get("index") == 0


@pytest.mark.slow
def test_seq2seq_learns_to_reverse_to_95_percent_token_accuracy(tmp_path):
    # small matrices: BLAS threads only fight over a shared machine's cores
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "nnspec.cli", "train", str(SPEC), "-o",
                          str(tmp_path / "run"), "--epochs", "6"], check=False, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert float(rows[-1]["val_accuracy"]) >= 0.95, rows[-1]
