"""Mutated specs: every file of specs/ and tests/errors/ (found afresh, so a new example spec
joins the corpus by being added) after a few edits of the kinds that typing, truncation and
hostile users produce (deletions, duplications, swaps, grammar terminals and the newer
constructs, huge numbers, deep nesting, unicode)."""

from __future__ import annotations

import random
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIRS = ("specs", "tests/errors")

_WORD = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|->|\*\*|[<>=!]=|\S")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")

# Numbers that have broken compilers before: int() limits, float overflow, 64-bit edges.
HUGE_NUMBERS = ["0", "00", "1000000000", "10000000000000", str(2 ** 31), str(2 ** 63),
                str(2 ** 64 + 1), "1" + "0" * 40, "9" * 5000, "1e308", "1e999", "1e-999",
                "0.0000001", "123456789.123456789e300", "4294967297", "1." + "0" * 400]
UNICODE = ["\u00e9", "\u03bb", "\u2192", "\u200b", "\u200f", "\ufeff", "\u0301", "\U0001f600",
           "\u4e2d", "\u00a0", "\u2028", "\x00", "\x0c", "\r", "\t", "\x7f", "\u0660",
           "\uff10", "\u2212", "\u00b2", "\u1d2c"]


@cache
def corpus() -> tuple[tuple[str, str], ...]:
    """(name, text) of every corpus file, sorted so a seed always means the same inputs."""
    files = sorted(p for d in CORPUS_DIRS for p in (ROOT / d).glob("*.nn"))
    return tuple((str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in files)


@cache
def terminals() -> tuple[str, ...]:
    """The grammar's keywords and punctuation (its quoted strings) plus words it gives meaning
    to (op names, data sets, optimizers) and a few that look like them."""
    grammar = (ROOT / "nnspec" / "grammar" / "nnspec.lark").read_text(encoding="utf-8")
    quoted = set(re.findall(r'"([^"\\]+)"', grammar))
    words = {"dense", "conv1d", "conv2d", "maxpool", "avgpool", "global_avgpool", "flatten",
             "reshape", "select", "batchnorm", "layernorm", "embedding", "positions",
             "sinusoidal", "attention", "rnn", "lstm", "gru", "relu", "softmax", "concat",
             "repeat", "where", "mean", "sum", "max", "scalar", "x", "y", "T", "B", "d", "int",
             "float", "data", "loss", "optimizer", "schedule", "epochs", "batch", "metrics",
             "seed", "val", "clip", "early_stop", "digits", "moons", "csv", "npz", "adam",
             "sgd", "cosine", "step", "cross_entropy", "mse", "accuracy", "tie", "causal",
             "layers", "units", "kernel", "stride", "padding", '"same"', '"valid"', '""',
             '"\\"', "#", "\\\n", "\n", ";", "-1", "0", "1", "0.5", "1e-3", "-0",
             # what the language grew: its examples are in specs/ (vae, seq2seq, unet, vit...)
             "seq", "param", "noise", "chunk", "split", "transpose", "permute", "states",
             "key_padding_mask", "attn_mask", "conv_transpose2d", "conv_transpose1d", "upsample",
             "pixel_shuffle", "pixel_unshuffle", "rmsnorm", "kv_heads", "rope", "x[0]",
             "x[:, 1:]", "x[..., :2]", "a, b =", "as 0", "as a.b.0", "@", "...", "::",
             "normal(std = 0.02)"}
    return tuple(sorted(quoted | words))


def _span(rng: random.Random, n: int, longest: int) -> tuple[int, int]:
    i = rng.randint(0, n)
    return i, min(n, i + rng.randint(1, longest))


def _tokens(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


def _replace_token(rng, text, pick) -> str:
    words = _tokens(text)
    if not words:
        return text + pick(rng)
    w = rng.choice(words)
    return text[:w.start()] + pick(rng) + text[w.end():]


def delete(rng, text):
    i, j = _span(rng, len(text), rng.choice([1, 3, 12, 80]))
    return text[:i] + text[j:]


def duplicate(rng, text):
    i, j = _span(rng, len(text), rng.choice([1, 10, 60, 400]))
    k = rng.randint(0, len(text))
    return text[:k] + text[i:j] * rng.choice([1, 1, 2, 10]) + text[k:]


def duplicate_line(rng, text):
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines[i:i] = [lines[i]] * rng.choice([1, 2, 50])
    return "\n".join(lines)


def swap_tokens(rng, text):
    words = _tokens(text)
    if len(words) < 2:
        return text
    a, b = sorted(rng.sample(range(len(words)), 2))
    first, second = words[a], words[b]
    return (text[:first.start()] + second.group() + text[first.end():second.start()]
            + first.group() + text[second.end():])


def swap_lines(rng, text):
    lines = text.split("\n")
    if len(lines) > 1:
        a, b = rng.sample(range(len(lines)), 2)
        lines[a], lines[b] = lines[b], lines[a]
    return "\n".join(lines)


def terminal(rng, text):
    """Replace a token with, or insert, one of the grammar's terminals."""
    if rng.random() < 0.5:
        return _replace_token(rng, text, lambda r: r.choice(terminals()))
    k = rng.randint(0, len(text))
    return text[:k] + rng.choice(terminals()) + rng.choice(["", " "]) + text[k:]


def huge_number(rng, text):
    numbers = list(_NUMBER.finditer(text))
    value = rng.choice(HUGE_NUMBERS)
    if rng.random() < 0.3:
        value = "-" + value
    if not numbers:
        return text + value
    m = rng.choice(numbers)
    return text[:m.start()] + value + text[m.end():]


def deep_nesting(rng, text):
    """Wrap a token in many brackets, unary minuses or a long chain of operators."""
    words = _tokens(text)
    if not words:
        return text
    w = rng.choice(words)
    depth = rng.choice([10, 70, 300, 3000])
    kind = rng.randrange(5)
    if kind == 0:
        new = "(" * depth + w.group() + ")" * depth
    elif kind == 1:
        new = "[" * depth + w.group() + "]" * depth
    elif kind == 2:
        new = "-" * depth + w.group()
    elif kind == 3:
        new = w.group() + " -> relu" * depth
    else:
        new = " + ".join([w.group()] * depth)
    return text[:w.start()] + new + text[w.end():]


def unicode(rng, text):
    k = rng.randint(0, len(text))
    piece = rng.choice(UNICODE) if rng.random() < 0.8 else chr(rng.randint(0x80, 0x2FFFF))
    if 0xD800 <= ord(piece[0]) <= 0xDFFF:  # lone surrogates cannot be UTF-8 files
        piece = "\ufffd"
    return text[:k] + piece + text[k:]


def flip_byte(rng, text):
    """A byte-level edit, decoded as the CLI would after replacing what is not UTF-8."""
    data = bytearray(text.encode("utf-8"))
    if not data:
        return text
    i = rng.randrange(len(data))
    data[i] = rng.randrange(256)
    return data.decode("utf-8", errors="replace")


def truncate(rng, text):
    return text[:rng.randint(0, len(text))]


def splice(rng, text):
    """A stretch of another corpus file pasted in."""
    other = rng.choice(corpus())[1]
    i, j = _span(rng, len(other), 300)
    k = rng.randint(0, len(text))
    return text[:k] + other[i:j] + text[k:]


MUTATIONS = (delete, duplicate, duplicate_line, swap_tokens, swap_lines, terminal,
             huge_number, deep_nesting, unicode, flip_byte, truncate, splice)


def mutated(rng: random.Random, text: str | None = None) -> tuple[str, str]:
    """(text, how it was made): a corpus file (or `text`) after one to five mutations."""
    name = "given"
    if text is None:
        name, text = rng.choice(corpus())
    edits = []
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        mutation = rng.choice(MUTATIONS)
        text = mutation(rng, text)
        edits.append(mutation.__name__)
    return text, f"{name} + {', '.join(edits)}"
