"""Root-mean-square normalisation (torch.nn.RMSNorm, LLaMA's RMSNorm)."""

from __future__ import annotations

import numpy as np


def rms_norm(x, weight, *, eps):
    """``x / sqrt(mean(x^2, last dim) + eps) * weight``; ``eps`` None is the float32 machine
    epsilon, as torch.nn.RMSNorm takes it. Backward gives ``(dx, d_weight)``."""
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    inv_rms = 1 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + x.dtype.type(eps))
    normed = x * inv_rms
    out = normed * weight if weight is not None else normed

    def backward(dy):
        d_normed = dy * weight if weight is not None else dy
        dx = inv_rms * (d_normed - normed * np.mean(d_normed * normed, axis=-1, keepdims=True))
        d_weight = None
        if weight is not None:
            d_weight = (dy * normed).reshape(-1, x.shape[-1]).sum(axis=0)
        return dx, d_weight

    return out, backward
