"""The example specs: every file in specs/ checks cleanly, and the real architectures give
the parameter counts of their published PyTorch implementations through the real CLI.

Summaries are tested for what a reader relies on: totals equal the graph's parameters and
the sum of the top-level rows, a `repeat` is one "x N" row unless expanded, `--depth`
folds blocks, and every output format parses.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnspec.cli import main
from nnspec.spec import check_text, load
from nnspec.summary import summarize

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.nn"))
IDS = [p.stem for p in SPECS]

# torchvision / Hugging Face reference counts (sum of numel over model.parameters()).
PUBLISHED = {
    "resnet18": 11_689_512,     # torchvision.models.resnet18()
    "gpt2_small": 124_439_808,  # transformers GPT2LMHeadModel, lm_head tied to wte
    "vgg16": 138_357_544,       # torchvision.models.vgg16()
    "bert_base": 109_482_240,   # transformers BertModel (with pooler)
    "lenet5": 61_706,           # LeCun et al. 1998 layout on 1x28x28 with padding 2
    "mobilenet_v2": 3_504_872,  # torchvision.models.mobilenet_v2()
    "vit_b16": 86_567_656,      # torchvision.models.vit_b_16()
}
# torchvision's published GFLOPS (which are multiply-adds of conv and linear layers).
PUBLISHED_GMACS = {"resnet18": 1.814, "vgg16": 15.470,
                   "vit_b16": 17.564}  # conv, linear, and attention's q@k^T and attn@v


def spec_path(stem: str) -> Path:
    return next(p for p in SPECS if p.stem == stem)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def summary_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["summary", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_every_example_spec_checks_cleanly(path: Path):
    diagnostics = check_text(path.read_text(), str(path))
    assert [d for d in diagnostics if d.severity == "error"] == []


def test_nnspec_check_passes_on_the_whole_directory():
    result = run_cli("check", *map(str, SPECS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(SPECS)


@pytest.mark.parametrize("stem", sorted(PUBLISHED))
def test_published_parameter_counts_through_the_cli(stem: str):
    result = run_cli("summary", str(spec_path(stem)), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total_params"] == PUBLISHED[stem]
    assert data["trainable_params"] == PUBLISHED[stem]


def test_gpt2_lists_its_tied_output_weight():
    data = summary_json(str(spec_path("gpt2_small")))
    assert data["tied"] == [{"param": "wte.weight", "also_used_by": ["lm_head"]}]
    lm_head = next(r for r in data["rows"] if r["name"] == "lm_head")
    assert lm_head["params"] == 0  # counted once, at the embedding that owns it
    assert "wte.weight (counted once) also used by lm_head" in CliRunner().invoke(
        main, ["summary", str(spec_path("gpt2_small"))]).output


@pytest.mark.parametrize("stem", sorted(PUBLISHED_GMACS))
def test_macs_match_torchvision(stem: str):
    data = summary_json(str(spec_path(stem)))
    assert round(data["macs"] / 1e9, 3) == PUBLISHED_GMACS[stem]


def test_resnet_buffers_are_batchnorm_statistics():
    graph = load(spec_path("resnet18")).graph
    buffers = {n: p for n, p in graph.params.items() if not p.spec.trainable}
    assert all(n.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
               for n in buffers)
    assert summarize(graph).buffers == 9_620  # torchvision: state_dict numel - parameters
    assert "layer2.0.downsample.1.running_mean" in buffers


@pytest.mark.parametrize("path", SPECS, ids=IDS)
@pytest.mark.parametrize("options", [{}, {"expand": True}, {"depth": 1}, {"depth": 2}],
                         ids=["default", "expand", "depth1", "depth2"])
def test_summary_totals_agree_with_the_graph_and_the_rows(path: Path, options: dict):
    graph = load(path).graph
    s = summarize(graph, **options)
    trainable = sum(math.prod(p.spec.shape) for p in graph.params.values() if p.spec.trainable)
    assert s.total_params == trainable
    top = [r for r in s.rows if r.depth == 0]
    assert sum(r.params for r in top) == s.total_params
    if isinstance(s.macs, int):
        assert sum(r.macs for r in top) == s.macs
    if options.get("depth"):
        assert all(r.depth < options["depth"] for r in s.rows)


def test_a_repeat_is_one_row_unless_expanded():
    path = str(spec_path("gpt2_small"))
    rows = summary_json(path)["rows"]
    repeat = next(r for r in rows if r["name"] == "h")
    assert repeat["op"] == "Block x12" and repeat["count"] == 12
    assert not any(r["name"].startswith("h.") for r in rows)
    table = CliRunner().invoke(main, ["summary", path]).output
    assert "Block x12" in table

    expanded = summary_json(path, "--expand")["rows"]
    copies = {r["name"] for r in expanded if r["depth"] == 1}
    assert copies == {f"h.{i}" for i in range(12)}
    assert sum(r["params"] for r in expanded if r["depth"] == 1) == repeat["params"]
    assert any(r["name"] == "h.11.attn" for r in expanded)


def test_depth_folds_blocks_into_one_row():
    path = str(spec_path("resnet18"))
    top = summary_json(path, "--depth", "1")["rows"]
    assert all("." not in r["name"] for r in top)
    assert [r["name"] for r in top if r["op"] == "seq"] == ["layer1", "layer2", "layer3",
                                                              "layer4"]
    two = {r["name"] for r in summary_json(path, "--depth", "2")["rows"]}
    assert {"layer1.0", "layer4.1"} <= two
    assert not any(name.count(".") > 1 for name in two)
    full = {r["name"] for r in summary_json(path)["rows"]}
    assert "layer2.0.downsample" in full


def test_every_format_parses():
    path = str(spec_path("resnet18"))
    runner = CliRunner()
    rows = summary_json(path)["rows"]

    out = runner.invoke(main, ["summary", path, "--format", "csv"]).output
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["layer"] for r in table] == [r["name"] for r in rows]
    assert sum(int(r["params"]) for r in table if r["depth"] == "0") == PUBLISHED["resnet18"]

    md = runner.invoke(main, ["summary", path, "--format", "md"]).output.splitlines()
    body = [line for line in md if line.startswith("|")]
    assert body[0] == "| layer | op | output | params | MACs |"
    assert len(body) == len(rows) + 2
    assert all(line.count("|") == 6 for line in body)
    assert any("Total params**: 11,689,512" in line for line in md)

    text = runner.invoke(main, ["summary", path]).output
    assert "Total params:" in text and "11,689,512" in text
    assert "layer1" in text and "\x1b[" not in text


def test_symbolic_dims_stay_symbolic_in_the_summary():
    text = """
model Seq {
  input x: [T, 16]
  x -> lstm(32) -> dense(4)
}
"""
    from nnspec.spec import load_text

    s = load_text(text).summary()
    assert s.rows[-1].shape == "[T, 4]"
    assert s.total_params == 4 * 32 * (16 + 32) + 8 * 32 + 32 * 4 + 4
    assert "T" in str(s.macs)


# ---- train sections on a small configuration, through both backends ----------------------

# (--set overrides, --data) that make a spec's train section quick; a spec with a train
# section and no entry here is trained by its own tests (vae, seq2seq, digits ...).
SMALL_TRAINING = {
    "unet": (["base=2", "size=16", "classes=3"], "shapes(n = 40, size = 16, classes = 3)"),
}


def _train_small(stem: str, backend: str, out: Path) -> list[dict]:
    overrides, data = SMALL_TRAINING[stem]
    args = ["train", str(spec_path(stem)), "--epochs", "2", "--batch", "8", "--data", data,
            "--backend", backend, "-o", str(out)]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.torch
@pytest.mark.parametrize("stem", sorted(SMALL_TRAINING))
def test_small_training_runs_alike_on_both_backends(stem: str, tmp_path: Path):
    """Same start, same batches: the interpreter's and the generated module's loss curves
    agree (and the metrics the train section asks for are computed)."""
    pytest.importorskip("torch")
    assert load(spec_path(stem)).train is not None, f"{stem} has no train section"
    numpy_rows = _train_small(stem, "numpy", tmp_path / "numpy")
    torch_rows = _train_small(stem, "torch", tmp_path / "torch")
    assert len(numpy_rows) == len(torch_rows) == 2
    for ours, theirs in zip(numpy_rows, torch_rows):
        for column in ("train_loss", "val_loss", "val_accuracy"):
            assert float(ours[column]) == pytest.approx(float(theirs[column]), rel=2e-3), column
    assert float(numpy_rows[-1]["train_loss"]) < float(numpy_rows[0]["train_loss"])


# ---- the DCGAN pair: two models of one file, each checked, summarised, drawn ---------------


@pytest.mark.parametrize("model, params", [("Generator", 3_576_704),
                                           ("Discriminator", 2_765_568)])
def test_each_dcgan_model_summarises_and_draws(model: str, params: int, tmp_path: Path):
    """Adversarial training is not a train section (docs/cookbook.md); each network is a
    model of its own, run forward and backward in both backends by tests/torch/test_decoders."""
    path = str(spec_path("dcgan"))
    assert summary_json(path, "--model", model)["total_params"] == params
    out = tmp_path / f"{model}.svg"
    result = CliRunner().invoke(main, ["render", path, "--model", model, "-o", str(out)])
    assert result.exit_code == 0, result.output
    svg = out.read_text(encoding="utf-8")
    assert model in svg and f"{params:,} parameters" in svg
    assert ("conv_transpose2d" in svg) == (model == "Generator")
