"""Which newlines end a statement: the one rule of the language the grammar cannot say.

Newlines end statements, except inside brackets, after a token that cannot end an
expression (`->`, `+`, `,`, ...) and before a line that starts with `->`, so long
pipelines can be written one stage per line. The parser and `tokens()` share this rule.
"""

from __future__ import annotations

BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; it is not part of the text
OPENERS = {"(", "["}
CLOSERS = {")", "]"}
# A line that starts with one of these continues the previous one. `-` is not among them:
# a statement may start with a unary minus.
CONTINUE_BEFORE = {"->", "else", "if", "+", "*", "/", "%", "^", "**", "@", "==", "!=", "<", "<=",
                   ">", ">=", "and", "or"}
CONTINUE_AFTER = {"->", "+", "-", "*", "/", "%", "^", "**", "@", ",", "=", "==", "!=", "<", "<=",
                  ">", ">=", "and", "or", "not", "if", "else", ":", "(", "["}


class Newlines:
    """Lark post-lexer that drops the newlines which do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        pending = None
        previous = None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and previous is not None and previous.value not in CONTINUE_AFTER:
                    pending = tok
                continue
            if pending is not None:
                if tok.value not in CONTINUE_BEFORE or tok.type == "STRING":
                    yield pending
                pending = None
            if tok.value in OPENERS and tok.type != "STRING":
                depth += 1
            elif tok.value in CLOSERS and tok.type != "STRING":
                depth = max(0, depth - 1)
            previous = tok
            yield tok
        if pending is not None:
            yield pending
