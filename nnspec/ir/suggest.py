"""What to suggest for a name that is neither defined nor an op.

A close spelling is suggested only when it is one typo away (two for long names): `dropuot`
is `dropout`, but `randn` is not `rnn`, nor `pad` `add`. Names people bring from torch or
NumPy are recognised as such (`nn.LayerNorm`'s `LayerNorm`, `F.max_pool2d`'s `max_pool2d`,
`randn`), and an unknown op always points at the op list.
"""

from __future__ import annotations

from collections.abc import Iterable

from nnspec.ir import ops

OP_LIST = "docs/language.md#op-reference"

# torch / NumPy names whose op here is called otherwise (maybe with an argument); used when
# the op exists (ops other helpers add this session light up once they are in the catalogue)
FOREIGN_NAMES = {
    "randn": "noise", "randn_like": "noise", "normal": "noise", "gaussian": "noise",
    "bmm": "matmul", "mm": "matmul", "dot": "matmul",
    "cat": "concat", "concatenate": "concat", "hstack": "concat",
    "view": "reshape", "unsqueeze": "reshape", "squeeze": "reshape",
    "swapaxes": "transpose", "movedim": "permute",
    "multiheadattention": "attention", "mha": "attention", "selfattention": "attention",
    "fc": "dense", "conv": "conv2d", "bce": "binary_cross_entropy",
    "bcewithlogits": "binary_cross_entropy(logits = true)", "crossentropy": "cross_entropy",
    "clamp": "clip", "multiply": "mul", "subtract": "sub", "divide": "div", "power": "pow",
    "negative": "neg", "amax": "max", "elman": "rnn", "pixelshuffle": "pixel_shuffle",
    "interpolate": "upsample", "gaussiannoise": "noise",
}


def _folded(name: str) -> str:
    """`nn.MaxPool2d`, `max_pool2d` and `maxpool2d` alike: lower case, no underscores, no
    `Loss` suffix."""
    folded = name.lower().replace("_", "")
    return folded.removesuffix("loss") or folded


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) from a to b."""
    previous2, previous = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _op_named(name: str) -> str | None:
    folded = _folded(name)
    for candidate in (*ops.OPS, *ops.ALIASES):
        if _folded(candidate) == folded:
            return ops.lookup(candidate).name
    target = FOREIGN_NAMES.get(folded)
    if target is None or ops.lookup(target.partition("(")[0]) is None:
        return None
    return target


def close_spelling(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate one typo from `word` (two for words of 8 or more letters), if any; the
    nearest wins, then the one sharing the longest start with `word` (a typo is rarely the
    first letter: `padd` is `pad`, not `add`), then the first."""
    allowed = 1 if len(word) < 8 else 2
    best, best_rank = None, (allowed + 1, 0)
    for candidate in dict.fromkeys(candidates):
        if abs(len(candidate) - len(word)) > allowed or candidate == word:
            continue
        rank = (_distance(word, candidate), -_shared_start(word, candidate))
        if rank < best_rank:
            best, best_rank = candidate, rank
    return best


def _shared_start(a: str, b: str) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def unknown_name_hint(word: str, local_names: Iterable[str]) -> str:
    """The hint for an unknown name: a local name it misspells, else the op it means (torch's
    or NumPy's name for it, or a typo of it), and the op list."""
    local = close_spelling(word, local_names)
    if local is not None:
        return f"did you mean `{local}`?"
    op = _op_named(word)
    if op is not None:
        return f"`{word}` is `{op}` here; every op is in {OP_LIST}"
    op = close_spelling(word, [*ops.OPS, *ops.ALIASES, "repeat", "seq"])
    if op is not None:
        return f"did you mean `{op}`? Every op is in {OP_LIST}"
    return f"not a name defined here nor an op; every op is in {OP_LIST}"
