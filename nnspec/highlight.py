"""A Pygments lexer for `.nn` specs, registered under the `pygments.lexers` entry point so
`pygmentize`, Sphinx and MkDocs highlight specs once nnspec is installed.

Op, loss, optimizer and schedule names come from the catalogue, so a new op is highlighted
without touching this file.
"""

from __future__ import annotations

from typing import ClassVar

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

from nnspec.ir import ops

DECLARATIONS = ("model", "block", "fn", "train")
KEYWORDS = ("input", "param", "as", "if", "else", "and", "or", "not", "repeat")
CONSTANTS = ("true", "false", "none")


def catalogue_names() -> tuple[str, ...]:
    names = set(ops.OPS) | set(ops.ALIASES) | set(ops.LOSSES) | set(ops.OPTIMIZERS) \
        | set(ops.SCHEDULES) | set(ops.METRICS)
    return tuple(sorted(names, key=lambda n: (-len(n), n)))


class NnspecLexer(RegexLexer):
    """The .nn network-spec language of nnspec."""

    name = "nnspec"
    aliases: ClassVar[list[str]] = ["nnspec", "nn"]
    filenames: ClassVar[list[str]] = ["*.nn"]
    mimetypes: ClassVar[list[str]] = ["text/x-nnspec"]
    url = "https://github.com/nnspec/nnspec"

    tokens: ClassVar[dict] = {
        "root": [
            (r"[ \t\f]+", Whitespace),
            (r"\r?\n", Whitespace),
            (r"\\[ \t\f]*\r?\n", Text),  # a line continued with `\`
            (r"#.*?$", Comment.Single),
            (r'"', String.Double, "string"),
            (r"(model|block|fn)(\s+)([A-Za-z_][A-Za-z0-9_]*)",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (r"(train)(\s+)([A-Za-z_][A-Za-z0-9_]*)",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (r"(input|param)(\s+)([A-Za-z_][A-Za-z0-9_]*)",
             bygroups(Keyword, Whitespace, Name.Variable)),
            (r"(as)(\s+)([A-Za-z0-9_][A-Za-z0-9_.]*)",
             bygroups(Keyword, Whitespace, Name.Label)),
            (r"(int|float)(?=\[)", Keyword.Type),
            (words(DECLARATIONS, suffix=r"\b"), Keyword.Declaration),
            (words(KEYWORDS, suffix=r"\b"), Keyword),
            (words(CONSTANTS, suffix=r"\b"), Keyword.Constant),
            (words(catalogue_names(), prefix=r"\b", suffix=r"\b(?!\s*=[^=])"), Name.Builtin),
            (r"([A-Za-z_][A-Za-z0-9_]*)(\s*)(=)(?!=)",
             bygroups(Name.Attribute, Whitespace, Operator)),
            (r"[A-Za-z_][A-Za-z0-9_]*", Name),
            (r"(\d+\.\d*|\.\d+|\d+)[eE][+-]?\d+", Number.Float),
            (r"\d+\.\d*|\.\d+", Number.Float),
            (r"\d+", Number.Integer),
            (r"->|\*\*|==|!=|<=|>=|\.\.\.|[-+*/%^<>=@:]", Operator),
            (r"[()\[\]{},;.]", Punctuation),
        ],
        "string": [
            (r'\\.', String.Escape),
            (r'[^"\\\n]+', String.Double),
            (r'"', String.Double, "#pop"),
            (r"\n", String.Double, "#pop"),  # an unclosed string ends with its line
        ],
    }
