"""`nnspec render` as a user runs it: formats, broken specs, a machine without `dot`."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(*args: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", "render", *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
                          check=False)


def test_renders_svg_named_after_the_spec_by_default(tmp_path):
    result = run(str(ROOT / "specs" / "lenet5.nn"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    svg = tmp_path / "lenet5.svg"
    assert result.stdout.strip() == "wrote lenet5.svg"
    text = ET.parse(svg).getroot().itertext()
    assert "c1" in " ".join(text)


def test_dot_output_needs_no_graphviz_binary(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    result = run(str(ROOT / "specs" / "digits_mlp.nn"), "-o", str(tmp_path / "m.dot"), env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.dot").read_text().startswith("digraph")


def test_missing_dot_is_a_clear_message(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    result = run(str(ROOT / "specs" / "digits_mlp.nn"), "-o", str(tmp_path / "m.svg"), env=env)
    assert result.returncode == 1
    assert "apt-get install graphviz" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_spec_is_drawn_with_its_errors_and_exits_1(tmp_path):
    spec = tmp_path / "broken.nn"
    spec.write_text("model M {\n  input x: [64]\n  x -> dense(8) -> conv2d(4, 3) -> relu\n}\n")
    result = run(str(spec), "-o", str(tmp_path / "b.dot"))
    assert result.returncode == 1
    assert "broken.nn:3:20: error[E302]" in result.stderr
    dot = (tmp_path / "b.dot").read_text()
    assert "conv2d expects [C, H, W] but got [8]" in dot


def test_a_spec_that_does_not_parse_draws_nothing(tmp_path):
    spec = tmp_path / "syntax.nn"
    spec.write_text("model M {\n  input x: [64\n}\n")
    result = run(str(spec), "-o", str(tmp_path / "s.svg"))
    assert result.returncode == 1
    assert not (tmp_path / "s.svg").exists()


def test_an_unknown_suffix_is_a_usage_error(tmp_path):
    result = run(str(ROOT / "specs" / "digits_mlp.nn"), "-o", str(tmp_path / "m.jpeg"))
    assert result.returncode == 2
    assert "svg" in result.stderr
