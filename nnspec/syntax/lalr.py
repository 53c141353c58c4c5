"""The LALR(1) parser of nnspec/grammar/nnspec.lark: a lexer and a table-driven parser whose
reductions call the AST builder directly, so no parse tree is ever made.

Lark analyses the grammar; `python scripts/gen_grammar_tables.py` writes what it found to
`grammar/nnspec.tables.json` (plain JSON: no pickle, no cache), and running needs only that
file, not Lark. The file records the grammar it was made from (compared as text: no hash
library to import at start-up): when it differs (an edited grammar) the grammar is analysed
with Lark instead, so the grammar file stays the single source of the syntax. A test keeps
the shipped file current.

Each rule of the grammar is reduced the way Lark would shape its tree (tokens written as
"quoted strings" dropped, `_rule`s spliced into their parent, `?rule`s with one child
replaced by it, `[optional]` parts that are absent given as None), then handed to the
builder's method named after the rule (or its `-> alias`) as `method(span, children)`. The
span runs from the first to the last token of the rule, as Lark's positions do: a child in
parentheses counts its parentheses, a bare token does not.

`Tables.parse` is the hot path of every check (an editor re-checks on each keystroke), so
it is one loop that lexes, applies the newline rule of syntax/lexing.py and takes the LALR
actions, with symbols numbered and each rule turned into a function of its own shape
(`_reducer`, made when a parse first reduces the rule; `children` is then a tuple or a
list); `lex` and `lexing.statement_newlines` are the same steps one at a time, for the
formatter and for the tokens a syntax error's message looks back on.
"""

from __future__ import annotations

import functools
import json
import re
from operator import itemgetter
from pathlib import Path

from nnspec.collector import collector_paused
from nnspec.diagnostics import Source, Span
from nnspec.syntax.lexing import (
    CLOSERS,
    CONTINUE_AFTER,
    CONTINUE_BEFORE,
    MAX_BRACKETS,
    OPENERS,
    Lexeme,
    TooDeep,
    statement_newlines,
)

GRAMMAR = "grammar/nnspec.lark"
TABLES = "grammar/nnspec.tables.json"
FORMAT = 4  # of the tables file; a file in another format is not used
PACKAGE = Path(__file__).resolve().parent.parent  # the installed `nnspec` directory
STARTS = ("start", "value")  # `start` parses a file; `value` one expression (`--set d=64`)
END = "$END"
_BAD_CHAR = "BAD_CHAR_"  # the lexer's last alternative: a character no terminal starts with
_AT_END = "AT_END_"  # the end of the text, after ignored text
_NEWLINE, _STRING = "_NL", "STRING"  # the terminals the newline rule singles out
_BRACKETS = OPENERS | CLOSERS


class SyntaxFailure(Exception):
    """Where parsing stopped. A token the grammar does not allow there (`token`, with the
    terminals that `expected` could have come instead; `token.type` is "$END" at the end of
    the text, and `before` the tokens the parser took), or a character no token starts
    with (`token` is None)."""

    def __init__(self, token: Lexeme | None, expected: frozenset, pos: int, line: int,
                 column: int, before: list[Lexeme] | None = None):
        super().__init__(f"syntax error at {line}:{column}")
        self.token, self.expected, self.before = token, expected, before or []
        self.pos, self.line, self.column = pos, line, column


class Reduction:
    """One grammar rule: how many stack entries it takes, which of them are its children,
    and which builder method makes its value."""

    __slots__ = ("callback", "expand1", "identity", "inline", "origin", "passes", "plan",
                 "size", "trailing", "unit")

    def __init__(self, origin: str, size: int, callback: str, expand1: bool,
                 plan: list, trailing: int):
        self.origin, self.size, self.callback = origin, size, callback
        self.expand1 = expand1
        self.inline = origin.startswith("_")
        self.plan = tuple((index, splice, nones) for index, splice, nones in plan)
        self.trailing = trailing
        # every entry is a child, as it is: no token left out, spliced or absent
        self.identity = not trailing and self.plan == tuple((i, False, 0) for i in range(size))
        # `?atom: "(" expr ")"`: always one child, which is the value
        self.passes = expand1 and not any(splice for _, splice, _ in self.plan) and (
            len(self.plan) + sum(nones for *_, nones in self.plan) + trailing == 1)
        # `?sum: product`: the child is the value and has its place; only the state changes
        self.unit = self.passes and size == 1

    def children(self, values: list) -> list:
        """The children made of the rule's `size` stack entries, by the plan."""
        out: list = []
        for index, splice, nones in self.plan:
            if nones:
                out += [None] * nones
            if not splice:
                out.append(values[index])
            elif out:
                out += values[index]
            else:  # a left-recursive `_list` grows in place: linear in its length
                out = values[index]
        if self.trailing:
            out += [None] * self.trailing
        return out

    def picker(self):
        """A function of the parse stack giving the rule's children, written for the rule's
        shape: most rules only pick entries, which needs no plan read per reduction. (The
        stack holds a value, its place and a state per entry: `Tables._parse`.)"""
        size = self.size
        if not size:
            return lambda stack: [None] * self.trailing
        # (itemgetter picks without a Python call of its own; a builder's children may be
        # a tuple, an inline rule's are a list its parent splices)
        if self.identity:
            return itemgetter(slice(-_ENTRY * size, None, _ENTRY))
        absent = self.trailing or any(nones for *_, nones in self.plan)
        picks = [_ENTRY * (index - size) for index, _, _ in self.plan]
        if self.plan and not absent and all(splice for _, splice, _ in self.plan):
            head, *rest = picks  # `_list: _list _item _sep`

            def spliced(stack: list) -> list:
                out = stack[head]  # grows in place: linear in the list's length
                for index in rest:
                    out += stack[index]
                return out
            return spliced
        if absent or any(splice for _, splice, _ in self.plan):
            return lambda stack: self.children(stack[len(stack) - _ENTRY * size::_ENTRY])
        if not picks:  # `_sep: _NL`
            return itemgetter(slice(0, 0))
        if len(picks) == 1:  # a list of the one entry
            return itemgetter(slice(picks[0], picks[0] + 1))
        if not self.inline:
            return itemgetter(*picks)
        return lambda stack: [stack[i] for i in picks]


_ENTRY = 3  # stack items per entry: value, place, state
_BAD = (_BAD_CHAR, r"[\s\S]")  # the lexer's last alternative


def _scanner(skipped: str, terminals: list[tuple[str, str]]) -> re.Pattern:
    """The regular expression of the next token: `skipped` (ignored text), then the first
    of the terminals that matches, in order. Each terminal is followed by an empty group
    named after it, not wrapped in one: the regex engine then passes over an alternative
    at its first character, and `match.lastindex` still names the terminal (its group
    closes last); group 1 ends where the token starts."""
    return re.compile(f"({skipped})(?:" + "|".join(
        f"(?:{regexp})(?P<{name}>)" for name, regexp in terminals) + ")")


def _place_of(stack: list, size: int) -> tuple | None:
    """The place from the first to the last of the top `size` entries that take room (an
    empty rule's value takes none); None when none does."""
    placed = [p for p in stack[len(stack) - _ENTRY * size + 1::_ENTRY] if p is not None]
    return (placed[0][0], placed[0][1], placed[-1][2], placed[-1][3]) if placed else None


def _reducer(rule: Reduction, pick, method, source: Source, goto: list):
    """The function that replaces the rule's entries at the top of the stack by one entry:
    the rule's value, its place ((line, col, end_line, end_col), None for no text) and the
    state `goto` gives for the state below; it returns that state. `pick` gives the rule's
    children (`Reduction.picker`)."""
    size = rule.size
    items = _ENTRY * size
    first_place = 1 - items  # where the first entry's place is; the last one's is at -2
    if rule.inline and size:
        def reduce_inline(stack: list) -> int:
            first, last = stack[first_place], stack[-2]
            if first is None or last is None:
                place = _place_of(stack, size)
            else:
                place = (first[0], first[1], last[2], last[3])
            children = pick(stack)
            del stack[-items:]
            state = goto[stack[-1]]
            stack += (children, place, state)
            return state
        return reduce_inline
    if not rule.expand1 and size:
        def reduce_call(stack: list) -> int:
            first, last = stack[first_place], stack[-2]
            if first is None or last is None:
                place = _place_of(stack, size)
                span = Span(source, *place) if place else Span(source, 1, 1, 1, 1)
            else:
                place = (first[0], first[1], last[2], last[3])
                span = Span(source, first[0], first[1], last[2], last[3])
            value = method(span, pick(stack))
            del stack[-items:]
            state = goto[stack[-1]]
            stack += (value, place, state)
            return state
        return reduce_call

    def reduce(stack: list) -> int:  # an empty rule, or a `?rule`
        place = _place_of(stack, size)
        children = pick(stack)
        if rule.inline:
            value = children
        elif rule.expand1 and len(children) == 1:
            value = children[0]
            if isinstance(value, Lexeme):  # a bare token keeps its own place, not its brackets'
                place = (value.line, value.column, value.end_line, value.end_column)
        else:
            value = method(Span(source, *place) if place else Span(source, 1, 1, 1, 1), children)
        if size:
            del stack[-items:]
        state = goto[stack[-1]]
        stack += (value, place, state)
        return state
    return reduce


class Tables:
    """The analysed grammar: the lexer's terminals and the parser's actions."""

    def __init__(self, data: dict):
        self.terminals = [tuple(t) for t in data["terminals"]]  # (name, regexp), in match order
        self.keywords: dict[str, dict[str, str]] = data["keywords"]  # NAME -> {"model": "MODEL"}
        self.ignore = frozenset(data["ignore"])
        self.literals: dict[str, str] = data["literals"]  # LPAR -> "(": for messages
        self.states: list[dict[str, int]] = data["states"]  # >= 0 shift/goto, < 0 reduce ~n
        self.start_states: dict[str, int] = data["start_states"]
        self.end_states: dict[str, int] = data["end_states"]
        self.rules = [Reduction(*rule) for rule in data["rules"]]
        self.kept_terminals = frozenset(data["kept"])  # the tokens rules keep as children
        self.units: dict[tuple[int, int, int], int] = {}  # memo of `_after_units`
        # What the parser reads: ignored text (spaces, comments) is skipped before each token
        # rather than found as a token of its own; at the end only ignored text remains.
        ignored = "|".join(regexp for name, regexp in self.terminals if name in self.ignore)
        kept = [(name, regexp) for name, regexp in self.terminals if name not in self.ignore]
        self.next_token = _scanner(f"(?:{ignored})*", [*kept, (_AT_END, r"\Z"), _BAD])
        self._number_symbols()

    def _number_symbols(self) -> None:
        """Terminals and rules as list indexes for `parse`: `rows[state][symbol]` is the
        action (None: a syntax error), `group_symbols[match.lastindex]` a token's terminal.
        The end and a bad character come last, so one comparison tells both apart."""
        names = {name for row in self.states for name in row}
        names |= {name for name, _ in self.terminals} | {r.origin for r in self.rules}
        names |= {kind for words in self.keywords.values() for kind in words.values()}
        names -= {END, _BAD_CHAR}
        self.symbols = [*sorted(names), END, _BAD_CHAR]
        ids = {name: i for i, name in enumerate(self.symbols)}
        self.rows = [[None] * len(ids) for _ in self.states]
        for row, actions in zip(self.rows, self.states):
            for name, action in actions.items():
                row[ids[name]] = action
        aliases = {_AT_END: END}
        self.group_symbols = [None] * (self.next_token.groups + 1)
        for name, group in self.next_token.groupindex.items():
            self.group_symbols[group] = ids[aliases.get(name, name)]
        self.keyword_symbols = [None] * len(ids)  # NAME -> {"model": MODEL's number}
        for name, words in self.keywords.items():
            self.keyword_symbols[ids[name]] = {word: ids[kind] for word, kind in words.items()}
        self.rule_symbols = [ids[r.origin] for r in self.rules]
        self.gotos = {symbol: [row[symbol] for row in self.rows]  # a rule's state after it,
                      for symbol in set(self.rule_symbols)}  # by the state below it
        self.pickers = [r.picker() for r in self.rules]
        self.kept = [name in self.kept_terminals for name in self.symbols]
        self.newline, self.string = ids.get(_NEWLINE), ids.get(_STRING)

    @functools.cached_property
    def every_token(self) -> re.Pattern:
        """Every token, spaces and comments too: for the formatter, so compiled on first use
        (`check` never needs it)."""
        return _scanner("", [*self.terminals, _BAD])

    def callbacks(self) -> set[str]:
        """The builder methods the rules call."""
        return {r.callback for r in self.rules if not r.passes and not r.inline}

    # ---- lexing ---------------------------------------------------------------------------

    def lex(self, text: str, keep_ignored: bool = False):
        """The lexemes of `text` (spaces and comments too with `keep_ignored`); raises
        SyntaxFailure at a character no token starts with, when the lexer reaches it."""
        scanner = self.every_token if keep_ignored else self.next_token
        keywords = self.keywords
        line, line_start = 1, 0
        for match in scanner.finditer(text):
            kind = match.lastgroup
            start, skipped = match.end(1), match.start()
            if skipped < start and "\n" in text[skipped:start]:  # a `\` that joins lines
                line += text.count("\n", skipped, start)
                line_start = text.rindex("\n", skipped, start) + 1
            column = start - line_start + 1
            if kind == _AT_END:
                return
            if kind == _BAD_CHAR:
                raise SyntaxFailure(None, frozenset(), start, line, column)
            value = text[start:match.end()]
            first_line = line
            if "\n" in value:
                line += value.count("\n")
                line_start = start + value.rindex("\n") + 1
            if kind in keywords:
                kind = keywords[kind].get(value, kind)
            yield Lexeme(kind, value, start, first_line, column, line,
                         start + len(value) - line_start + 1)

    # ---- parsing --------------------------------------------------------------------------

    def parse(self, text: str, start: str, builder, source: Source):
        """Parse `text` from the rule `start`, calling `builder`'s methods as rules are
        reduced; the value of the whole text, or SyntaxFailure (lexing.TooDeep for
        brackets nested past the limit).

        The parse makes a handful of objects per token and frees almost none: the cyclic
        garbage collector, paused meanwhile, would walk the growing heap again and again
        (15-20% of a 10,000-layer parse) to find nothing; after the parse it looks at the
        new objects once."""
        with collector_paused():
            return self._parse(text, start, builder, source)

    def _parse(self, text: str, start: str, builder, source: Source):
        """One loop does what `statement_newlines(self.lex(text))` and an LALR driver would do
        token by token (the tokens a syntax error's message needs are lexed again then)."""
        rows, units, symbols, rules = self.rows, self.units, self.symbols, self.rules
        group_symbols, keyword_symbols, kept = self.group_symbols, self.keyword_symbols, self.kept
        newline, string = self.newline, self.string
        end = len(symbols) - 2  # and a bad character is end + 1
        reducers: list = [None] * len(self.rules)  # each rule's `_reducer`, made on first use
        state = self.start_states[start]
        end_state = self.end_states[start]
        # The stack: the start state, then per entry a value (a Lexeme, a builder's result),
        # its place ((line, col, end_line, end_col), None if it takes no room) and the state
        # after it; `state` is its top.
        stack: list = [state]
        line, line_start, last_end = 1, 0, 0  # last_end: where the previous match ended
        depth = 0  # brackets open
        previous = None  # the text of the last token other than a newline
        pending = None  # a newline that ends a statement, unless the next line continues it:
        # its text, offset and place, made a Lexeme only if it does not
        later = later_kind = later_place = None  # a token that waits while `pending` is taken
        for match in self.next_token.finditer(text):
            group = match.lastindex
            kind = group_symbols[group]
            begin, stop = match.end(1), match.end()
            if last_end != begin and text.find("\n", last_end, begin) >= 0:  # a `\` joined
                line += text.count("\n", last_end, begin)  # lines in the ignored text
                line_start = text.rindex("\n", last_end, begin) + 1
            last_end = stop
            value = text[begin:stop]
            column = begin - line_start + 1
            if kind == newline:
                first_line = line
                line += value.count("\n")
                line_start = begin + value.rindex("\n") + 1
                if depth == 0 and previous is not None and previous not in CONTINUE_AFTER:
                    pending = (value, begin, first_line, column, line, stop - line_start + 1)
                continue
            words = keyword_symbols[kind]
            if words is not None:
                kind = words.get(value, kind)
            if kind >= end:
                if kind > end:
                    raise SyntaxFailure(None, frozenset(), begin, line, column)
                tok, place = _END, None
            elif "\n" in value:  # a token over several lines
                place = (line, column, line + value.count("\n"),
                         stop - begin - value.rindex("\n"))
                line, line_start = place[2], begin + value.rindex("\n") + 1
                tok = Lexeme(symbols[kind], value, begin, *place)
            else:
                end_column = column + stop - begin
                place = (line, column, line, end_column)
                tok = Lexeme(symbols[kind], value, begin, line, column, line,
                             end_column) if kept[kind] else None
            if value in _BRACKETS and kind != string:
                if value in OPENERS:
                    depth += 1
                    if depth > MAX_BRACKETS:
                        raise TooDeep(Lexeme(symbols[kind], value, begin, *place))
                elif depth:
                    depth -= 1
            if pending is not None:
                if value not in CONTINUE_BEFORE or kind == string:
                    later, later_kind, later_place = tok, kind, place
                    tok, kind, place = Lexeme(_NEWLINE, *pending), newline, pending[2:]
                pending = None
            previous = value
            while True:
                action = rows[state][kind]
                if action is None:  # (a token no rule keeps has no Lexeme yet)
                    raise self._unexpected(tok or Lexeme(symbols[kind], value, begin, *place),
                                           state, text)
                if action >= 0:
                    stack += (tok, place, action)
                    state = action
                    if later_kind is None:
                        break
                    tok, kind, place, later_kind = later, later_kind, later_place, None
                    continue
                rule = ~action
                reduce = reducers[rule]
                if reduce is None:
                    if rules[rule].unit:  # `x` becomes an atom, ..., an expression at once
                        key = (stack[-4], state, kind)
                        top = units.get(key)
                        if top is None:
                            top = units[key] = self._after_units(*key)
                        stack[-1] = state = top
                        continue
                    reduce = reducers[rule] = self._reducer(rule, builder, source)
                state = reduce(stack)
                if state == end_state and kind == end:
                    return stack[-3]

    def _reducer(self, number: int, builder, source: Source):
        """The reducing function of rule `number`, calling `builder`'s method."""
        rule = self.rules[number]
        method = None if rule.inline or rule.passes else getattr(builder, rule.callback)
        return _reducer(rule, self.pickers[number], method, source,
                        self.gotos[self.rule_symbols[number]])

    def _after_units(self, below: int, top: int, kind: int) -> int:
        """The state after every unit reduction that `kind` asks for in `top` over `below`."""
        rows, rules = self.rows, self.rules
        action = rows[top][kind]
        while action is not None and action < 0 and rules[~action].unit:
            top = rows[below][self.rule_symbols[~action]]
            action = rows[top][kind]
        return top

    def _unexpected(self, tok: Lexeme, state: int, text: str) -> SyntaxFailure:
        """The failure at `tok`, with the tokens taken before it lexed again."""
        expected = frozenset(s for s in self.states[state] if s.isupper())
        before = []
        for taken in statement_newlines(self.lex(text)):
            if tok is not _END and taken.start_pos >= tok.start_pos:
                break
            before.append(taken)
        return SyntaxFailure(tok, expected, tok.start_pos, tok.line, tok.column, before)


_END = Lexeme(END, "", 0, 1, 1, 1, 1)  # after the last token (messages do not show its place)


# ---- the tables: shipped, or analysed from an edited grammar --------------------------------


def grammar_text() -> str:
    return (PACKAGE / GRAMMAR).read_text(encoding="utf-8")


@functools.cache
def tables() -> Tables:
    grammar = grammar_text()
    shipped = _shipped_tables()
    if shipped is None or shipped.get("grammar") != grammar or shipped.get("format") != FORMAT:
        shipped = build_tables(grammar)
    return Tables(shipped)


def _shipped_tables() -> dict | None:
    try:
        return json.loads((PACKAGE / TABLES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tables_json(grammar: str) -> str:
    return json.dumps(build_tables(grammar), separators=(",", ":")) + "\n"


def build_tables(grammar: str) -> dict:
    """Analyse the grammar with Lark; the result is what `grammar/nnspec.tables.json` holds."""
    from lark import Lark
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    analysed = Lark(grammar, parser="lalr", lexer="basic", maybe_placeholders=True,
                    start=list(STARTS))
    data, memo = analysed.memo_serialize([TerminalDef, Rule])
    rules = {i: r for i, r in memo.items() if r["__type__"] == "Rule"}
    rule_ids = {memo_id: n for n, memo_id in enumerate(sorted(rules))}
    lexer_conf = data["parser"]["lexer_conf"]
    terminals = [memo[t["@"]] if "@" in t else t for t in lexer_conf["terminals"]]
    table = _canonical(data["parser"]["parser"])
    names = table["tokens"]
    states = [{names[token]: (arg if action == 0 else ~rule_ids[arg["@"]])
               for token, (action, arg) in table["states"][state].items()}
              for state in range(len(table["states"]))]
    return {"grammar": grammar, "format": FORMAT,
            **_lexer_tables(terminals, lexer_conf["ignore"]),
            "states": states, "start_states": table["start_states"],
            "end_states": table["end_states"],
            "rules": [_rule_entry(rules[memo_id]) for memo_id in sorted(rules)],
            "kept": _kept_terminals(rules.values())}


def _kept_terminals(rules) -> list[str]:
    """The terminals some rule keeps as a child (NAME, NUMBER, ...): the parser makes a
    Lexeme only for these; the others (`(`, `model`, newlines) only take their place."""
    return sorted({symbol["name"] for rule in rules for symbol in rule["expansion"]
                   if symbol["__type__"] == "Terminal" and (
                       rule["options"]["keep_all_tokens"] or not symbol.get("filter_out"))})


def _lexer_tables(terminals: list[dict], ignore: list[str]) -> dict:
    """Terminals in the order Lark's basic lexer tries them; string terminals that another
    terminal also matches (`model` is a NAME) become keywords of that terminal."""
    def width(t):
        return t["pattern"]["_width"][1] if "_width" in t["pattern"] else len(
            t["pattern"]["value"])

    def regexp(t):
        value = t["pattern"]["value"]
        return re.escape(value) if t["pattern"]["__type__"] == "PatternStr" else value

    ordered = sorted(terminals, key=lambda t: (-t["priority"], -width(t),
                                               -len(t["pattern"]["value"]), t["name"]))
    strings = [t for t in ordered if t["pattern"]["__type__"] == "PatternStr"]
    keywords: dict[str, dict[str, str]] = {}
    for t in ordered:
        if t["pattern"]["__type__"] != "PatternRE":
            continue
        for s in strings:
            value = s["pattern"]["value"]
            found = re.match(regexp(t), value)
            if s["priority"] == t["priority"] and found and found.group(0) == value:
                keywords.setdefault(t["name"], {})[value] = s["name"]
    embedded = {name for words in keywords.values() for name in words.values()}
    return {"terminals": [(t["name"], regexp(t)) for t in ordered if t["name"] not in embedded],
            "keywords": keywords, "ignore": sorted(ignore),
            "literals": {s["name"]: s["pattern"]["value"] for s in strings}}


def _rule_entry(rule: dict) -> list:
    """[origin, size, callback, expand1, plan, trailing]: what Lark's tree builder would do
    with the rule's children (see Reduction)."""
    expansion, options = rule["expansion"], rule["options"]
    empty = list(options["empty_indices"] or ())
    if empty:  # how many absent `[optional]` parts come before each symbol, and after all
        bits = "".join(str(int(b)) for b in empty)
        nones_at = [len(ones) for ones in bits.split("0")]
    else:
        nones_at = [0] * (len(expansion) + 1)
    plan, nones = [], 0
    for i, symbol in enumerate(expansion):
        nones += nones_at[i]
        terminal = symbol["__type__"] == "Terminal"
        if options["keep_all_tokens"] or not (terminal and symbol.get("filter_out")):
            plan.append((i, not terminal and symbol["name"].startswith("_"), nones))
            nones = 0
    trailing = nones + nones_at[len(expansion)]
    callback = rule["alias"] or options["template_source"] or rule["origin"]["name"]
    return [rule["origin"]["name"], len(expansion), callback,
            bool(options["expand1"] and not rule["alias"]), plan, trailing]


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
