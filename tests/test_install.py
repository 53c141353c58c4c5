"""A plain install from a built wheel, in a fresh venv without torch and without this
checkout on the path, checks and summarises specs: the grammar ships inside the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "specs").glob("*.nn"))
NOT_SOURCE = shutil.ignore_patterns(".git", "tests", ".hypothesis", "__pycache__", "*.egg-info",
                                    "build", "dist", "runs", ".venv", ".pytest_cache",
                                    ".ruff_cache")


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            timeout=300, check=False, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the working tree, so the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", work / "dist",
        cwd=source)
    [built] = (work / "dist").glob("nnspec-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_ships_the_grammar_and_the_sample_data(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnspec/grammar/nnspec.lark" in names
    assert "nnspec/grammar/nnspec.tables.json" in names  # the parser tables, not analysed at start
    assert "nnspec/data/digits.npz" in names
    assert not any(name.startswith(("tests/", "specs/")) for name in names)


@pytest.mark.slow
def test_a_plain_install_checks_and_summarises(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, nnspec = venv / "bin" / "python", venv / "bin" / "nnspec"
    run(python, "-m", "pip", "install", "-q", wheel)

    where = run(python, "-c", "import importlib.util as u, nnspec; from importlib import "
                "resources; print(nnspec.__file__); print(resources.files('nnspec') / "
                "'grammar' / 'nnspec.lark'); print(u.find_spec('torch'))", cwd=tmp_path)
    package, grammar, torch = where.stdout.split("\n")[:3]
    assert package.startswith(str(venv)) and grammar.startswith(str(venv))
    assert torch == "None"

    checked = run(nnspec, "check", *SPECS, cwd=tmp_path)
    assert checked.stdout.count(": ok") == len(SPECS)
    summary = run(nnspec, "summary", ROOT / "specs" / "resnet18.nn", "--format", "json",
                  cwd=tmp_path)
    assert json.loads(summary.stdout)["total_params"] == 11_689_512
    broken = tmp_path / "broken.nn"
    broken.write_text("model M {\n  input x: [4]\n  x -> dense(3\n}\n")
    result = subprocess.run([str(nnspec), "check", str(broken)], capture_output=True, text=True,
                            timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{broken}:3:13: error[E001]: this `(` is never closed" in result.stderr
