"""The LALR parser of nnspec/grammar/nnspec.lark, loaded from tables shipped beside it.

Analysing the grammar takes a third of a cold `nnspec check`, and Lark's own cache is a
pickle that every run would load from a directory other users or programs can write to.
So the analysed tables ship as plain JSON (`grammar/nnspec.tables.json`, made by
`python scripts/gen_grammar_tables.py`), loaded through Lark's deserialiser, the one its
standalone parsers use. The file records the grammar's hash and Lark's version; when
either differs (an edited grammar, another Lark) the grammar is analysed instead, so the
grammar file stays the single source of the syntax. A test keeps the shipped file current.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources

import lark
from lark import Lark
from lark.grammar import Rule
from lark.lexer import TerminalDef

from nnspec.syntax.lexing import Newlines

GRAMMAR = "grammar/nnspec.lark"
TABLES = "grammar/nnspec.tables.json"
# `start` parses a file; `value` parses one expression on its own (`--set d=64`).
OPTIONS = {"parser": "lalr", "lexer": "basic", "propagate_positions": True,
           "maybe_placeholders": True, "start": ["start", "value"]}
_INT_KEYS = "int_keyed"  # JSON objects have string keys; Lark's tables are keyed by numbers


@functools.cache
def parser() -> Lark:
    """The parser: newlines that do not end a statement are dropped before it sees them."""
    return _load(Newlines())


@functools.cache
def lexer() -> Lark:
    """The same tables without the post-lexer, for a token stream that keeps every newline."""
    return _load(None)


def grammar_text() -> str:
    return resources.files("nnspec").joinpath(GRAMMAR).read_text(encoding="utf-8")


def _load(postlex) -> Lark:
    grammar = grammar_text()
    tables = _shipped_tables()
    if tables is None or any(tables.get(k) != v for k, v in _fingerprint(grammar).items()):
        return Lark(grammar, postlex=postlex, **OPTIONS)
    return Lark._load_from_dict(tables["data"], tables["memo"], postlex=postlex)


def _fingerprint(grammar: str) -> dict:
    return {"grammar_sha256": hashlib.sha256(grammar.encode("utf-8")).hexdigest(),
            "lark": lark.__version__}


@functools.cache
def _shipped_tables() -> dict | None:
    try:
        text = resources.files("nnspec").joinpath(TABLES).read_text(encoding="utf-8")
        return json.loads(text, object_hook=_from_json)
    except (OSError, ValueError):
        return None


def build_tables(grammar: str) -> dict:
    """Analyse the grammar; the result is what `grammar/nnspec.tables.json` holds."""
    analysed = Lark(grammar, postlex=Newlines(), **OPTIONS)
    data, memo = analysed.memo_serialize([TerminalDef, Rule])
    data["options"] = {k: v for k, v in data["options"].items() if k != "postlex"}
    data["parser"]["parser"] = _canonical(data["parser"]["parser"])
    return {**_fingerprint(grammar), "data": _to_json(data), "memo": _to_json(memo)}


def _canonical(table: dict) -> dict:
    """The same parse table with states numbered breadth-first from the start states and
    tokens by name: Lark numbers them in the order of sets keyed by object identity, so
    without this one grammar gives a different file at each run."""
    names = table["tokens"]
    token_ids = {name: i for i, name in enumerate(sorted(names.values()))}
    order = [table["start_states"][start] for start in sorted(table["start_states"])]
    renumber = {old: new for new, old in enumerate(dict.fromkeys(order))}
    queue = list(renumber)
    while queue:
        state = queue.pop(0)
        for token in sorted(table["states"][state], key=names.__getitem__):
            action, arg = table["states"][state][token]
            if action == 0 and arg not in renumber:  # a shift (or goto) to a new state
                renumber[arg] = len(renumber)
                queue.append(arg)
    for state in sorted(set(table["states"]) - set(renumber)):
        renumber[state] = len(renumber)

    def action(action_arg):
        action, arg = action_arg
        return (action, renumber[arg] if action == 0 else arg)

    states = {renumber[state]: {token_ids[names[t]]: action(a) for t, a in
                                sorted(actions.items(), key=lambda item: names[item[0]])}
              for state, actions in table["states"].items()}
    return {"tokens": {i: name for name, i in token_ids.items()},
            "states": dict(sorted(states.items())),
            "start_states": {k: renumber[v] for k, v in sorted(table["start_states"].items())},
            "end_states": {k: renumber[v] for k, v in sorted(table["end_states"].items())}}


def tables_json(grammar: str) -> str:
    return json.dumps(build_tables(grammar), separators=(",", ":")) + "\n"


def _to_json(value):
    if isinstance(value, dict):
        if value and all(isinstance(k, int) for k in value):
            return {_INT_KEYS: [[k, _to_json(v)] for k, v in value.items()]}
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(obj: dict):
    pairs = obj.get(_INT_KEYS)
    return dict(pairs) if pairs is not None and len(obj) == 1 else obj

