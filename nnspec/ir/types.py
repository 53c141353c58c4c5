"""Tensor types of the IR: per-sample shapes whose dims are ints or named symbols.

The batch dimension is implicit (`batched=True`); a loss or a full reduction drops it.
Symbolic dims are strings (`"T"`); arithmetic on them builds a readable expression
(`"T-2"`) so a shape can still be printed and compared.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

Dim = int | str
_set = object.__setattr__  # how a frozen dataclass sets its fields


def _wrap(d: Dim) -> str:
    text = str(d)
    return f"({text})" if isinstance(d, str) and any(c in text for c in "+-*/") else text


_OFFSET = re.compile(r"(.*[^+\-*/(])([+-]\d+)")


def dim_add(a: Dim, b: Dim) -> Dim:
    """Sum of dims; constant offsets of a symbol fold (`T-3` + 1 is `T-2`, not `T-3+1`)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, int):
        a, b = b, a  # the symbol first: `T+1`, never `0+T`
    if b == 0:
        return a
    if isinstance(b, int):
        match = _OFFSET.fullmatch(a)
        base, offset = (match[1], int(match[2])) if match else (a, 0)
        total = offset + b
        return base if total == 0 else f"{base}{total:+d}"
    merged = _add_terms(a, b)
    return merged if merged is not None else f"{a}+{_wrap(b)}"


# A monomial: a product of symbols times an optional integer, e.g. `T*T*200`.
_MONOMIAL = re.compile(r"([A-Za-z_]\w*(?:\*[A-Za-z_]\w*)*)(?:\*(\d+))?")


def _monomial(text: str) -> tuple[str, int] | None:
    match = _MONOMIAL.fullmatch(text)
    return (match[1], int(match[2] or 1)) if match else None


def _add_terms(a: str, b: str) -> str | None:
    """Sums of monomials collect like terms (`T*640000+T*200` is `T*640200`); None when
    either side is not such a sum."""
    terms = [_monomial(t) for t in a.split("+")] + [_monomial(t) for t in b.split("+")]
    if any(t is None for t in terms):
        return None
    collected: dict[str, int] = {}
    for base, factor in terms:
        collected[base] = collected.get(base, 0) + factor
    return "+".join(base if k == 1 else f"{base}*{k}" for base, k in collected.items())


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 0 or b == 0:
        return 0
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int):
        a, b = b, a  # the symbol first: `T*200`
    term = _monomial(a)
    if term is not None and isinstance(b, int):
        base, factor = term
        return f"{base}*{factor * b}"
    if term is not None and isinstance(b, str) and _monomial(b) is not None:
        (base, factor), (other, other_factor) = term, _monomial(b)
        k = factor * other_factor
        return f"{base}*{other}" if k == 1 else f"{base}*{other}*{k}"
    return f"{_wrap(a)}*{_wrap(b)}"


def dim_floordiv(a: Dim, b: int) -> Dim:
    if isinstance(a, int):
        return a // b
    return a if b == 1 else f"{_wrap(a)}/{b}"


def dim_prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def is_concrete(dims) -> bool:
    return all(isinstance(d, int) for d in dims)


@dataclass(frozen=True, init=False)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "float32"  # float32 | int64 | bool
    batched: bool = True

    def __init__(self, shape: tuple[Dim, ...], dtype: str = "float32", batched: bool = True):
        # One per node: the fields set in one step, not three guarded assignments (see Span).
        _set(self, "__dict__", {"shape": shape, "dtype": dtype, "batched": batched})

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> Dim:
        return dim_prod(self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(tuple(shape), self.dtype, self.batched)

    def __str__(self) -> str:
        prefix = {"float32": "", "int64": "int", "bool": "bool"}[self.dtype]
        body = "[" + ", ".join(str(d) for d in self.shape) + "]"
        if not self.batched and not self.shape:
            return prefix + "scalar"
        return prefix + body

    def with_batch(self, batch: str = "B") -> str:
        """The shape as a full tensor, e.g. `(B, 3, 32, 32)`."""
        dims = ((batch,) if self.batched else ()) + self.shape
        return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def broadcast(a: TensorType, b: TensorType) -> tuple[Dim, ...] | None:
    """NumPy broadcasting of per-sample shapes; None when they do not broadcast."""
    out = []
    for x, y in zip(reversed((1,) * (b.rank - a.rank) + a.shape),
                    reversed((1,) * (a.rank - b.rank) + b.shape)):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def numel_int(shape) -> int | None:
    return math.prod(shape) if is_concrete(shape) else None
