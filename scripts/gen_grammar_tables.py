"""Regenerate nnspec/grammar/nnspec.tables.json, the LALR tables analysed from the grammar.

Run after editing nnspec/grammar/nnspec.lark (or upgrading Lark):
    python scripts/gen_grammar_tables.py
tests/test_syntax_tables.py fails when the shipped file is stale.
"""

from __future__ import annotations

from pathlib import Path

from nnspec.syntax import lalr

TABLES = Path(__file__).resolve().parent.parent / "nnspec" / lalr.TABLES

if __name__ == "__main__":
    TABLES.write_text(lalr.tables_json(lalr.grammar_text()), encoding="utf-8")
    print(f"wrote {TABLES}")
