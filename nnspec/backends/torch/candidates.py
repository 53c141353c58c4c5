"""What a number of a generated class may be written as: a parameter of the spec, or one of
the spec's expressions (`4 * d`, `hidden = C * expand`), with its values use by use and
build by build, so that a number is that expression where the values agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

from nnspec.backends.torch.source import Num
from nnspec.backends.torch.spec_exprs import expressions, is_arithmetic
from nnspec.backends.torch.variants import UNKNOWN
from nnspec.ir.arithmetic import is_number
from nnspec.syntax import ast


@dataclass(frozen=True)
class Candidate:
    """A name or spec expression a number may be: its values cell by cell, its texts."""

    values: tuple
    init: str
    forward: str
    comment: str
    local: str = ""  # the spec's name for it (`hidden = C * expand`), if it names one

    @cached_property
    def key(self) -> tuple:
        return key_values(self.values)


def spec_locals(spec: ast.Definition | None) -> dict[str, str]:
    """The spec's local sizes (`hidden = C * expand`) by their expression (only arithmetic
    can be one: a tensor's 3,000-term sum is not, and its repr would recurse per term)."""
    body = spec.body if spec is not None else ()
    return {repr(s.value): s.name for s in body
            if isinstance(s, ast.Assign) and is_arithmetic(s.value)}


def param_candidates(spec: ast.Definition | None, params: list[str], envs: list[dict],
                     is_model: bool, locals_: Mapping[str, str]) -> list[Candidate]:
    """The parameters (a block's arguments, the model's config fields) and the spec's
    expressions of them."""
    def texts(name: str) -> tuple[str, str, str]:
        if is_model:
            return f"config.{name}", f"self.config.{name}", name
        return name, f"self.{name}", name

    out = [Candidate(tuple(env[p] for env in envs), *texts(p)) for p in params]
    if spec is None or not params:
        return out
    multiples = _multiples(out) if is_model else []
    for e in expressions(spec, frozenset(params)):
        values = tuple(e.value(env) for env in envs)
        if any(v is None for v in values):
            continue
        integral = all(isinstance(v, int) for v in values)
        init, forward, comment = zip(*(texts(p) for p in params))
        out.append(Candidate(values, e.text(dict(zip(params, init)), integral),
                             e.text(dict(zip(params, forward)), integral),
                             e.text(dict(zip(params, comment)), integral),
                             locals_.get(repr(e.node), "")))
    return out + multiples


def dim_candidates(spec: ast.Definition | None, params: list[str], envs: list[dict],
                   symbols: list[tuple[str, str, list]], extras: list[list],
                   extra_names: list[str], locals_: Mapping[str, str]
                   ) -> list[tuple[Candidate, str]]:
    """The spec's expressions of its input's dims (`hidden = C * expand` for `input x:
    [C, H, W]`) where an extra argument holds that dim (`in_channels`), written with it;
    each with the argument it needs. `symbols`: the input's dims, (position, name, sizes
    use by use)."""
    if spec is None or not extras:
        return []
    out = []
    for _, symbol, sizes in symbols:
        index = next((i for i, e in enumerate(extras)
                      if agrees(key_of(e), key_values(sizes))), None)
        if index is None or symbol in params:
            continue
        arg = extra_names[index]
        for e in expressions(spec, frozenset(params) | {symbol}):
            if symbol not in e.names or isinstance(e.node, ast.Name):
                continue
            values = tuple(e.value({**env, symbol: size}) for env, size in zip(envs, sizes))
            if any(v is None for v in values):
                continue
            integral = all(isinstance(v, int) for v in values)
            texts = [e.text({**{p: f"{prefix}{p}" for p in params}, symbol: dim}, integral)
                     for prefix, dim in (("", arg), ("self.", f"self.{arg}"), ("", symbol))]
            out.append((Candidate(values, *texts, locals_.get(repr(e.node), "")), arg))
    return out


def _multiples(params: list[Candidate]) -> list[Candidate]:
    """`2 * hidden` .. `8 * hidden`: sizes the spec does not write but its layers make (a
    concat of two `hidden`-wide values), tried after the spec's own expressions. Only for
    the model: the probes change its hyperparameters, so such a size is seen to follow
    one; a block's sizes may follow its input instead, which no argument says."""
    out = []
    for c in params:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in c.values):
            out += [Candidate(tuple(k * v for v in c.values), f"{k} * {c.init}",
                               f"{k} * {c.forward}", f"{k} * {c.comment}") for k in range(2, 9)]
    return out


def monomials(vectors: list[tuple], candidates: list[Candidate], envs: list[dict],
               params: list[str]) -> list[Candidate]:
    """The model's sizes that follow its hyperparameters but are no expression the spec
    writes (a flatten's width, `1024 * config.width`), each as a product of powers of them.

    Only for the model, whose builds are the probes: each probe changes one hyperparameter,
    so how a size moves between two builds gives that hyperparameter's power in it. Without
    this such a size stayed the literal of the spec's configuration, and the class built
    with another config did not run."""
    out: list[Candidate] = []
    for nums in vectors:
        if any(n.comment for n in nums):
            continue  # a shape comment's dims have their own names (`H/2`)
        values = [n.value for n in nums]
        known = {v for v in values if v is not UNKNOWN}
        if len(known) < 2 or not all(type(v) is int and v > 0 for v in known):
            continue
        if any(agrees(c.key, key_of(nums)) for c in [*candidates, *out]):
            continue
        found = _monomial(values, envs, params)
        if found is not None:
            out.append(found)
    return out


def _monomial(values: list, envs: list[dict], params: list[str]) -> Candidate | None:
    base, first = envs[0], values[0]
    if first is UNKNOWN:
        return None
    powers: dict[str, int] = {}
    for env, value in zip(envs[1:], values[1:]):
        changed = [p for p in params if env.get(p) != base.get(p)]
        if value is UNKNOWN or len(changed) != 1:
            continue
        name = changed[0]
        was, now = base[name], env[name]
        if not (type(was) is int and type(now) is int and was > 0 and now > 0 and was != now):
            return None
        power = round(math.log(value / first) / math.log(now / was))
        if not 0 <= power <= 4 or powers.get(name, power) != power:
            return None
        powers[name] = power
    powers = {name: power for name, power in powers.items() if power}
    if not powers:
        return None
    made = Fraction(first, math.prod(base[name] ** power for name, power in powers.items()))
    for env, value in zip(envs, values):
        if value is not UNKNOWN and made * math.prod(env[name] ** power for name, power
                                                     in powers.items()) != value:
            return None
    if made.numerator != 1 and made.denominator != 1:
        return None

    def text(prefix: str) -> str:
        factors = [f"{prefix}{name}" + (f" ** {power}" if power > 1 else "")
                   for name, power in powers.items()]
        if made.numerator > 1:
            factors.insert(0, str(made.numerator))
        product = " * ".join(factors)
        return product if made.denominator == 1 else f"{product} // {made.denominator}"

    return Candidate(tuple(values), text("config."), text("self.config."), text(""))


def key_of(nums) -> tuple:
    return key_values(n.value if isinstance(n, Num) else n for n in nums)


def agrees(a: tuple, b: tuple) -> bool:
    """Two keys cell by cell, an unknown cell agreeing with anything."""
    unknown = key_values([UNKNOWN])[0]
    return all(x == y or unknown in (x, y) for x, y in zip(a, b))


def key_values(values) -> tuple:
    """Values compared by kind and value: a bool is no number, but the spec's `10000` is the
    `10000.0` a float attribute made of it."""
    return tuple(("number", repr(float(v))) if is_number(v) and not isinstance(v, bool)
                 else (type(v).__name__, repr(v)) for v in values)
