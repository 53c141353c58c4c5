"""Inverted dropout: scale kept units by 1/(1-p) in training so evaluation is the identity."""

from __future__ import annotations

import numpy as np


def dropout(x, *, p, train, rng):
    """Zero each element with probability ``p`` drawn from ``rng`` (a numpy Generator) when
    training; backward gives (dx,) through the same mask."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not train or p == 0.0:
        return x, lambda dy: (dy,)
    if p == 1.0:
        return np.zeros_like(x), lambda dy: (np.zeros_like(dy),)
    keep = rng.random(x.shape, dtype=x.dtype) >= p
    scale = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    y = x * scale

    def backward(dy):
        return (dy * scale,)

    return y, backward
