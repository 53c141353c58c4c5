"""The generated file of every spec in specs/, read as a user would: one class per spec
block, a config dataclass for the model's hyperparameters, no hyperparameter left as a
literal in the model, and a module built with other hyperparameters has the parameter
count `nnspec summary --set` gives for them."""

from __future__ import annotations

import ast as pyast
import io
import json
import tokenize
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnspec.backends.torch import generate
from nnspec.cli import main
from nnspec.spec import load

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.nn"))


def _module(code: str) -> types.ModuleType:
    module = types.ModuleType("generated")
    exec(compile(code, "<generated>", "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - code under test
    return module


def _classes(code: str) -> dict[str, pyast.ClassDef]:
    tree = pyast.parse(code)
    return {n.name: n for n in tree.body if isinstance(n, pyast.ClassDef)}


def _summary_params(path: Path, changed: dict) -> int | None:
    args = ["summary", str(path), "--format", "json"]
    for name, value in changed.items():
        args += ["--set", f"{name}={value}"]
    done = CliRunner().invoke(main, args)
    return json.loads(done.stdout)["total_params"] if done.exit_code == 0 else None


def _other_values(value) -> list:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [2 * value, value + value // 2, value // 2]
    return [value / 2] if isinstance(value, float) else []


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_one_class_per_spec_block(path):
    spec = load(path)
    classes = _classes(generate(spec))
    for block in spec.program.definitions("block"):
        mine = [c for c in classes.values()
                if (pyast.get_docstring(c) or "").startswith(f"`block {block.name}`")]
        assert len(mine) <= 1, f"block {block.name}: {[c.name for c in mine]}"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_model_takes_a_config_and_writes_no_hyperparameter_as_a_literal(path):
    spec = load(path)
    code = generate(spec)
    classes = _classes(code)
    model = classes[spec.graph.name]
    hyper = {k: v for k, v in spec.graph.hyper.items() if not isinstance(v, bool)}
    if not hyper:
        return
    config = classes[f"{spec.graph.name}Config"]
    assert any(getattr(d, "id", None) == "dataclass" for d in config.decorator_list)
    fields = [n.target.id for n in config.body if isinstance(n, pyast.AnnAssign)]
    assert fields == list(spec.graph.hyper)
    # a number that is one hyperparameter's value alone, and not a small count that a
    # layer could take for its own reasons, must be written as that hyperparameter
    values = list(hyper.values())
    distinct = {v for v in values if isinstance(v, int) and v >= 10 and values.count(v) == 1}
    body = pyast.get_source_segment(code, model)
    found = {int(t.string) for t in tokenize.generate_tokens(io.StringIO(body).readline)
             if t.type == tokenize.NUMBER and t.string.isdigit()}  # code, not comments
    assert not found & distinct, f"literals {found & distinct} are hyperparameters"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_other_hyperparameters_give_the_parameter_count_of_summary(path):
    spec = load(path)
    module = _module(generate(spec))
    model_class = getattr(module, spec.graph.name)
    config_class = getattr(module, f"{spec.graph.name}Config", None)
    if config_class is None:
        pytest.skip("no hyperparameters")
    tried = 0
    for name, value in spec.graph.hyper.items():
        for other in _other_values(value):
            expected = _summary_params(path, {name: other})
            if expected is None:
                continue  # that value does not build (a size that no longer divides)
            with torch.device("meta"):
                model = model_class(config_class(**{name: other}))
            got = sum(p.numel() for p in model.parameters())
            assert got == expected, f"{name}={other}: {got} != {expected}"
            tried += 1
            break
    assert tried, "no other hyperparameter value builds"
