"""Broken specs as data: each `tests/errors/*.nn` says in its first lines which errors it must
give and where (`# expect: E301 at 7:12`), and this file holds every one to it.

The corpus is written the way people get things wrong (typos, missing brackets, wrong
arguments, shape mismatches, bad train sections); a new file is picked up automatically.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnspec.cli import main
from nnspec.diagnostics import render_text
from nnspec.spec import check_text

CORPUS = Path(__file__).parent / "errors"
FILES = sorted(CORPUS.glob("*.nn"))
EXPECT = re.compile(r"^# expect: ([EN]\d{3})(?: at (\d+):(\d+))?\s*$")


def expectations(text: str) -> list[tuple[str, int | None, int | None]]:
    """The leading `# expect:` lines: (code, line, col); line and col are None for a
    diagnostic about the whole file (e.g. E103, no model)."""
    out = []
    for line in text.splitlines():
        match = EXPECT.match(line)
        if match is None:
            break
        code, row, col = match.groups()
        out.append((code, int(row) if row else None, int(col) if col else None))
    return out


def test_the_corpus_is_large_and_every_file_says_what_it_expects():
    assert len(FILES) >= 30
    for path in FILES:
        assert expectations(path.read_text()), f"{path.name} has no `# expect:` line"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_errors_have_the_expected_codes_and_positions(path: Path):
    text = path.read_text()
    errors = [d for d in check_text(text, path.name) if d.severity == "error"]
    got = [(d.code, d.span and d.span.line, d.span and d.span.col) for d in errors]
    assert got == expectations(text), render_text(errors)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_rendering_quotes_the_line_with_a_caret(path: Path):
    text = path.read_text()
    lines = text.splitlines()
    for d in (d for d in check_text(text, path.name) if d.span is not None):
        rendered = render_text([d]).splitlines()
        assert rendered[0].startswith(f"{path.name}:{d.span.line}:{d.span.col}: error[{d.code}]")
        quoted = lines[d.span.line - 1]
        assert any(line.endswith("| " + quoted) for line in rendered[1:]), rendered
        caret = next(line for line in rendered if line.lstrip().startswith("|"))
        assert caret.index("^") - caret.index("|") - 2 == d.span.col - 1, rendered
        assert d.message and not d.message.endswith(".")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_check_exits_1_without_a_traceback(path: Path):
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def test_the_installed_command_reports_every_file_and_exits_1():
    """One real process over the whole corpus: exit code 1, each file named, no traceback."""
    result = subprocess.run([sys.executable, "-m", "nnspec.cli", "check", *map(str, FILES)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for path in FILES:
        assert str(path) in result.stderr
    total = sum(len(expectations(p.read_text())) for p in FILES)
    assert f"{total} errors in {len(FILES)} files" in result.stderr
