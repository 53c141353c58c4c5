"""Python source as data, laid out the way `ruff format` lays it out.

Generated code is built from small values instead of strings so that two things stay easy:
literal numbers remain `Num`s until sharing has decided them (so instances of one block that
differ only in their numbers can share a class whose constructor takes those numbers;
`substitute` then puts in their text), and long
statements are split exactly as `ruff format` splits them at its default width of 88, so a
generated file is stable under the formatter. Only bracketed groups at the end of a
statement are ever split, which is all the generator produces.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

WIDTH = 88
INDENT = "    "


@dataclass(frozen=True, eq=False)
class Num:
    """A literal value in generated code; it may turn into a constructor parameter.

    `hint` names the parameter it would become; `primary` says the spec gave the value
    directly (a layer's width), not derived it from an input's shape (its input width), which
    decides whose name wins when several values always agree. `comment` values appear only
    in shape comments and never become parameters. `default` is the text of a keyword
    argument's default: the keyword is left out where the value's final text is that, so
    uses at and off the default still read alike and share a class. `named`: the spec writes
    the name `hint` here (a condition's `stride == 1`), so it stays that name even where
    every use has the same value.
    """

    value: Any
    hint: str = "value"
    primary: bool = True
    comment: bool = False
    default: str | None = None
    named: bool = False


@dataclass(frozen=True, eq=False)
class Instance:
    """Placeholder for `ClassName(args)` (or a call of a generated function); the arguments
    are known only once every instance of the callee has been seen."""

    unit: Hashable  # the callee's key (units.UnitKey)
    call_args: tuple = ()  # leading tensor arguments of a function call
    # in a layer a use of a block does not build (`variants.py`): another use's instance,
    # whose arguments are unknown for this use
    unknown: bool = False


Expr = tuple  # of parts: str (code text), Num, Group or Instance


@dataclass(frozen=True, eq=False)
class Group:
    """A bracketed, comma-separated sequence: call arguments, a list, a dict, a
    comprehension (`comprehension=True`: its items are the element and its `for` clause)."""

    prefix: Expr
    opening: str
    items: tuple[Expr, ...]
    closing: str
    comprehension: bool = False
    fold_equal: bool = False  # a list printed as `[item for _ in range(n)]` if its items read alike


def expr(*parts) -> Expr:
    """Flatten strings, Nums, Groups and nested tuples into one expression."""
    out: list = []
    for p in parts:
        if isinstance(p, tuple):
            out.extend(expr(*p))
        elif p != "":
            out.append(p)
    return tuple(out)


def call(func, *args, **kwargs) -> Group:
    items = [expr(a) for a in args]
    items += [expr(f"{key}=", value) for key, value in kwargs.items()]
    return Group(expr(func), "(", tuple(items), ")")


def list_of(items) -> Group:
    return Group((), "[", tuple(expr(i) for i in items), "]")


def module_list(items) -> Group:
    """`nn.ModuleList([...])`, folded to `[item for _ in range(n)]` when the items print the
    same (decided when printing: instances' arguments are only known then)."""
    inner = Group((), "[", tuple(expr(i) for i in items), "]", fold_equal=True)
    return call("nn.ModuleList", inner)


def _folded(group: Group, resolve) -> Group:
    if not group.fold_equal or len(group.items) < 2:
        return group
    texts = {flat(item, resolve) for item in group.items}
    if len(texts) > 1:
        return group
    count = expr(f"for _ in range({len(group.items)})")
    return Group((), "[", (group.items[0], count), "]", comprehension=True)


def dict_of(pairs) -> Group:
    return Group((), "{", tuple(expr(f'"{key}": ', value) for key, value in pairs), "}")


# ---- statements ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Stmt:
    """`target = value  # comment`; with no target, a bare expression (or `return`)."""

    target: str | None
    value: Expr
    comment: Expr = ()
    keyword: Literal["", "return"] = ""


@dataclass(frozen=True, eq=False)
class Block:
    """A compound statement: `header:` followed by an indented body."""

    header: Expr
    body: tuple = ()


def walk(node) -> Iterator[Num | Instance]:
    """Every Num and Instance in a statement or expression, in source order."""
    if isinstance(node, (Num, Instance)):
        yield node
    elif isinstance(node, Group):
        for item in (node.prefix, *node.items):
            yield from walk(item)
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from walk(item)
    elif isinstance(node, Stmt):
        yield from walk(node.value)
        yield from walk(node.comment)
    elif isinstance(node, Block):
        yield from walk(node.header)
        yield from walk(node.body)


def substitute(node, texts: Iterator[str]):
    """`node` with each Num and Instance replaced by the next of `texts`, in `walk`'s order:
    source as plain text, ready to print."""
    if isinstance(node, (Num, Instance)):
        return next(texts)
    if isinstance(node, Group):
        prefix = substitute(node.prefix, texts)
        items = [substitute(i, texts) for i in node.items]
        kept = tuple(new for old, new in zip(node.items, items)
                     if not _at_default(old, new))
        return replace(node, prefix=prefix, items=kept)
    if isinstance(node, tuple):
        return tuple(substitute(item, texts) for item in node)
    if isinstance(node, list):
        return [substitute(item, texts) for item in node]
    if isinstance(node, Stmt):
        value = substitute(node.value, texts)
        return replace(node, value=value, comment=substitute(node.comment, texts))
    if isinstance(node, Block):
        header = substitute(node.header, texts)
        return replace(node, header=header, body=substitute(node.body, texts))
    return node


def _at_default(old: Expr, new: Expr) -> bool:
    """A keyword argument (`stride=<Num>`) whose text came out as its default."""
    return (len(old) == 2 and isinstance(old[0], str) and old[0].endswith("=")
            and isinstance(old[1], Num) and old[1].default is not None
            and new[1] == old[1].default)


# ---- layout ----------------------------------------------------------------------------------

Resolver = Callable[[Any], str]  # Num or Instance -> its text


def flat(e, resolve: Resolver) -> str:
    if isinstance(e, str):
        return e
    if isinstance(e, (Num, Instance)):
        return resolve(e)
    if isinstance(e, Group):
        e = _folded(e, resolve)
        sep = " " if e.comprehension else ", "
        inner = sep.join(flat(i, resolve) for i in e.items)
        return flat(e.prefix, resolve) + e.opening + inner + e.closing
    return "".join(flat(p, resolve) for p in e)


def split_statement(indent: str, head: str, e: Expr, tail: str, resolve: Resolver) -> list[str]:
    """`ruff format`'s right-hand split: break inside the trailing bracket pair, first with
    the contents on one indented line, else one item per line (with a trailing comma when
    there are several)."""
    text = head + flat(e, resolve) + tail
    if len(indent) + len(text) <= WIDTH or not e or not isinstance(e[-1], Group):
        return [indent + text]
    group = _folded(e[-1], resolve)
    opening = indent + head + flat(e[:-1], resolve) + flat(group.prefix, resolve) + group.opening
    closing = indent + group.closing + tail
    inner = indent + INDENT
    sep = " " if group.comprehension else ", "
    one_line = sep.join(flat(i, resolve) for i in group.items)
    if len(inner) + len(one_line) <= WIDTH:
        return [opening, inner + one_line, closing]
    lines = [opening]
    comma = "," if len(group.items) > 1 and not group.comprehension else ""
    for item in group.items:
        lines += split_statement(inner, "", item, comma, resolve)
    return lines + [closing]


def layout(statements, resolve: Resolver, indent: str = "") -> list[str]:
    """Statements as lines. A trailing comment that would make its line too long goes on
    its own line above the statement, which the formatter leaves alone."""
    lines: list[str] = []
    for s in statements:
        if isinstance(s, Block):
            lines.append(indent + flat(s.header, resolve) + ":")
            lines += layout(s.body, resolve, indent + INDENT)
            continue
        head = f"{s.keyword} " if s.keyword else ""
        if s.target is not None:
            head += f"{s.target} = "
        code = split_statement(indent, head, s.value, "", resolve)
        lines += _with_comment(indent, code, s.comment, resolve)
    return lines


def _with_comment(indent: str, code: list[str], comment: Expr, resolve: Resolver) -> list[str]:
    if not comment:
        return code
    note = "# " + flat(comment, resolve)
    if len(code) == 1 and len(code[0]) + 2 + len(note) <= WIDTH:
        return [code[0] + "  " + note]
    return [indent + note] + code


def is_simple_power_operand(text: str) -> bool:
    """`ruff format` hugs `**` (`x**2`) when both operands are names, numbers or attribute
    chains, optionally negated."""
    body = text.removeprefix("-")
    return bool(body) and all(c.isalnum() or c in "._" for c in body) and ".." not in body
