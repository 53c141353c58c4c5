"""The documentation says what the code does: generated op tables are current, every
diagnostic code is explained, and the example specs in the language reference check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnspec.diagnostics import render_text
from nnspec.spec import check_text

ROOT = Path(__file__).parent.parent
LANGUAGE = ROOT / "docs" / "language.md"
DIAGNOSTICS = ROOT / "docs" / "diagnostics.md"
CODE = re.compile(r"""["']([EN]\d{3})["']""")


def test_op_tables_in_the_language_reference_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, "docs/language.md is stale: run python scripts/gen_docs.py"


def codes_in_source() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in sorted((ROOT / "nnspec").rglob("*.py")):
        for code in CODE.findall(path.read_text()):
            where.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return where


def codes_in_docs() -> set[str]:
    return set(re.findall(r"^\| ([EN]\d{3}) \|", DIAGNOSTICS.read_text(), re.MULTILINE))


def test_every_diagnostic_code_used_in_the_source_is_documented():
    missing = {code: files for code, files in codes_in_source().items()
               if code not in codes_in_docs()}
    assert not missing, f"add these codes to docs/diagnostics.md: {missing}"


def test_every_documented_code_is_used():
    unused = codes_in_docs() - set(codes_in_source())
    assert not unused, f"docs/diagnostics.md lists codes nothing raises: {sorted(unused)}"


def test_documented_codes_are_unique():
    rows = re.findall(r"^\| ([EN]\d{3}) \|", DIAGNOSTICS.read_text(), re.MULTILINE)
    assert len(rows) == len(set(rows))


def full_specs(path: Path) -> list[str]:
    """Fenced code blocks that hold a whole spec: a `model Name ... {` line and no `...`
    placeholder (the grammar sketches at the top of the reference have both)."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL)
    return [b for b in blocks if re.search(r"^model \w+.*\{\s*$", b, re.MULTILINE)
            and "..." not in b]


EXAMPLES = [(path.name, i, block) for path in (LANGUAGE, ROOT / "README.md")
            for i, block in enumerate(full_specs(path))]


def test_the_reference_has_full_examples():
    assert sum(name == "language.md" for name, _, _ in EXAMPLES) >= 2


@pytest.mark.parametrize("name,index,block", EXAMPLES,
                         ids=[f"{name}-{i}" for name, i, _ in EXAMPLES])
def test_full_spec_examples_check_cleanly(name: str, index: int, block: str):
    errors = [d for d in check_text(block, f"{name}#{index}") if d.severity == "error"]
    assert not errors, render_text(errors)


def test_every_snippet_in_the_reference_parses_or_is_a_sketch():
    """Smaller snippets (`proj = dense(64)` ...) are not whole specs, but each must at least
    be valid syntax inside a model body, except the grammar sketches with placeholders."""
    from nnspec.syntax.parser import parse

    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", LANGUAGE.read_text(),
                        re.MULTILINE | re.DOTALL)
    for block in blocks:
        if "..." in block or re.search(r"^(model|block|fn|train) ", block, re.MULTILINE):
            continue
        wrapped = "model Snippet {\n" + block + "\n}\n"
        parse(wrapped, "snippet")  # raises SpecError on a syntax error


def test_every_cookbook_excerpt_is_code_of_the_spec_it_cites():
    """The cookbook quotes the example specs, which the other tests check; a quoted line
    that drifts from its spec fails here."""
    cookbook = (LANGUAGE.parent / "cookbook.md").read_text()
    sections = re.split(r"^## ", cookbook, flags=re.MULTILINE)[1:]
    assert len(sections) >= 6
    for section in sections:
        cited = re.search(r"`specs/(\w+)\.nn`", section).group(1)
        spec = (LANGUAGE.parent.parent / "specs" / f"{cited}.nn").read_text()
        for block in re.findall(r"```nnspec\n(.*?)```", section, re.DOTALL):
            for line in block.splitlines():
                code = line.split("#")[0].strip()
                assert not code or code in spec, f"{cited}: {code}"
