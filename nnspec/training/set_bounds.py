"""Bounds on the options of the generated data sets (`moons(n = ...)`, `recall(classes =
...)`): each checked before a sample is made, so a typo of a few zeros is a sentence, not a
machine brought down by the allocation."""

from __future__ import annotations

import math

import numpy as np

from nnspec.training.loaders import DataError

# Upper bounds of the generated sets' options (docs/training.md): far above any use, far
# below what would take a machine down before a single sample is made.
MAXIMUM = {"n": 10_000_000, "length": 100_000, "classes": 100_000, "vocab": 1_000_000,
           "chars": 100_000_000, "shape": 64}
MAX_NUMBERS = 200_000_000  # numbers in one generated set (800 MB of float32)


def count(option: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(
            f"option `{option}` must be a whole number of at least {minimum}, not {value!r}"
        )
    if value > MAXIMUM[option]:
        raise DataError(f"option `{option}` is {value:,}; the most a generated set takes is "
                        f"{MAXIMUM[option]:,}", hint="for more data, use a file (npz, csv)")
    return int(value)


def check_size(name: str, numbers: int) -> None:
    """Refuse options that together would make a set too big to hold (n x length x ...)."""
    if numbers > MAX_NUMBERS:
        raise DataError(f"these options make `{name}` hold {numbers:,} numbers; the most a "
                        f"generated set holds is {MAX_NUMBERS:,}",
                        hint="lower `n`, `length`, `classes`, `vocab` or `chars`")


def amount(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise DataError(f"option `{option}` must be a number of 0 or more, not {value!r}")
    return float(value)
