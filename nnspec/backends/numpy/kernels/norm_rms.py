"""Root-mean-square normalisation (torch.nn.RMSNorm, LLaMA's RMSNorm).

As layer norm, two compiled loops (``fused``): one pass over each row forward, one back.
"""

from __future__ import annotations

import numpy as np

from nnspec.backends.numpy.kernels import fused
from nnspec.backends.numpy.kernels.norm_layer import flat_parameter


def rms_norm(x, weight, *, eps):
    """``x / sqrt(mean(x^2, last dim) + eps) * weight``; ``eps`` None is the float32 machine
    epsilon, as torch.nn.RMSNorm takes it. Backward gives ``(dx, d_weight)``."""
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    size = x.shape[-1]
    rows = np.ascontiguousarray(x).reshape(-1, size)
    dtype = rows.dtype
    affine = weight is not None
    scale = flat_parameter(weight, size, dtype, 1)
    normed = np.empty_like(rows)
    out = np.empty_like(rows) if affine else normed  # outputs are read-only to their callers
    inv_rms = np.empty(len(rows), dtype)
    fused.rms_norm_forward(rows, scale, affine, eps, normed, out, inv_rms)

    def backward(dy):
        dy_rows = np.ascontiguousarray(dy, dtype=dtype).reshape(-1, size)
        dx = np.empty_like(dy_rows)
        d_weight = np.empty(size, dtype)
        fused.rms_norm_backward(dy_rows, normed, scale, affine, inv_rms, dx, d_weight)
        return dx.reshape(x.shape), (d_weight.reshape(weight.shape) if affine else None)

    return out.reshape(x.shape), backward
