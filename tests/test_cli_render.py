"""`nnspec render` as a user runs it: formats, broken specs, a machine without `dot`."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

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


# ---- where the diagram goes: stdout, devices, places that cannot be written -------------------


def test_dash_writes_dot_text_to_stdout_and_no_file(tmp_path):
    spec = str(ROOT / "specs" / "resnet18.nn")
    (tmp_path / "-").write_text("left by an older nnspec")
    result = run(spec, "-o", "-", "--format", "dot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert run(spec, "-o", "r.dot", cwd=tmp_path).returncode == 0
    assert result.stdout == (tmp_path / "r.dot").read_text(encoding="utf-8")
    assert (tmp_path / "-").read_text() == "left by an older nnspec"


@pytest.mark.dot
@pytest.mark.parametrize("fmt, magic", [(None, b"<?xml"), ("svg", b"<?xml"), ("png", b"\x89PNG"),
                                        ("pdf", b"%PDF")])
def test_dash_writes_rendered_bytes_to_stdout(fmt, magic, tmp_path):
    args = ["-o", "-"] + (["--format", fmt] if fmt else [])
    result = subprocess.run([sys.executable, "-m", "nnspec.cli", "render",
                             str(ROOT / "specs" / "lenet5.nn"), *args], capture_output=True,
                            timeout=120, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(magic)
    if magic == b"<?xml":
        assert "c1" in " ".join(ET.fromstring(result.stdout).itertext())
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_closes_stdout_gets_no_traceback():
    process = subprocess.Popen([sys.executable, "-m", "nnspec.cli", "render",
                                str(ROOT / "specs" / "resnet18.nn"), "-o", "-", "--format", "dot"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the diagram is written
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 1
    assert "stdout was closed" in stderr and "Traceback" not in stderr


def test_dev_null_is_written_into_never_replaced():
    result = run(str(ROOT / "specs" / "digits_mlp.nn"), "-o", os.devnull, "--format", "dot")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # no "wrote /dev/null"
    assert Path(os.devnull).is_char_device()


@pytest.mark.parametrize("where", ["/proc/x.svg", "afile/x.svg", "afile/deeper/x.dot"])
def test_unwritable_places_are_a_clear_error(where, tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    result = run(str(ROOT / "specs" / "digits_mlp.nn"), "-o", where, "--format", "dot",
                 cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot write {where}: ")
    assert "Traceback" not in result.stderr
    if where.startswith("afile"):
        assert "afile is a file, not a folder" in result.stderr
    assert (tmp_path / "afile").read_text() == "not a folder\n"


def test_an_empty_output_name_is_a_usage_error():
    result = run(str(ROOT / "specs" / "digits_mlp.nn"), "-o", "")
    assert result.returncode == 2
    assert "the output name is empty" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.dot
def test_a_million_character_model_name_renders(tmp_path):
    name = "M" * 1_000_000
    spec = tmp_path / "long.nn"
    spec.write_text(f"model {name} {{\n  input x: [4]\n  x -> dense(4) as {name.lower()} -> relu\n}}\n")
    result = run(str(spec), "-o", str(tmp_path / "long.svg"))
    assert result.returncode == 0, result.stderr[-2000:]
    svg = (tmp_path / "long.svg").read_text(encoding="utf-8")
    assert "M" * 70 + "…" in " ".join(ET.fromstring(svg).itertext())
    assert len(svg) < 100_000
