"""The .nn language's front half: text -> tokens -> AST.

`parse(text, path)` reads a file into an `ast.Program`; `parse_value(text, path)` reads one
expression (a value given on the command line); `tokens(text, path)` lists every token with
comments and newlines, for tools that keep the layout. Each raises `SpecError` with located
diagnostics.
"""

from nnspec.syntax.parser import MAX_INT, parse, parse_value
from nnspec.syntax.tokens import Token, tokens

__all__ = ["MAX_INT", "Token", "parse", "parse_value", "tokens"]
