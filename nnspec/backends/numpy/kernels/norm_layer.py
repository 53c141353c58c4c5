"""Layer normalisation over the trailing dimensions, as torch's F.layer_norm computes it.

Row statistics come from BLAS matrix-vector products and `einsum` row dots (one pass each,
no squared temporary), and every broadcast product writes into a fresh `empty_like` array:
NumPy's own allocation for a (rows, size) * (size,) product measured 4-8x slower here.
"""

from __future__ import annotations

import math

import numpy as np

from nnspec.backends.numpy.kernels.dense import column_sums


def layer_norm(x, weight, bias, *, normalized_ndim=1, eps=1e-5):
    """Normalise each sample over its last ``normalized_ndim`` axes (biased variance).

    ``weight`` and ``bias`` have the normalised shape, or are None without an affine
    transform. Backward gives ``(dx, dweight, dbias)``.
    """
    shape = x.shape  # backward keeps the shape, not x
    normalized_shape = shape[x.ndim - normalized_ndim:]
    size = math.prod(normalized_shape)
    rows = x.reshape(-1, size)
    averaging = np.full(size, 1 / size, rows.dtype)  # rows @ averaging: the row means
    # OpenBLAS's gemv may raise FE_INVALID on finite data (numpy#24067): a NaN in x still
    # gives NaN means, so only the spurious flag is silenced
    with np.errstate(invalid="ignore"):
        means = rows @ averaging
    x_hat = np.subtract(rows, means[:, None], out=np.empty_like(rows))
    inv_std = inverse_root_mean_square(x_hat, eps)
    x_hat *= inv_std
    if weight is None:
        y = x_hat.copy()
    else:
        y = np.multiply(x_hat, weight.reshape(size), out=np.empty_like(x_hat))
    if bias is not None:
        y += bias.reshape(size)

    def backward(dy):
        dy_rows = dy.reshape(-1, size)
        if weight is None:
            d_x_hat = dy_rows
        else:
            d_x_hat = np.multiply(dy_rows, weight.reshape(size), out=np.empty_like(dy_rows))
        # x_hat has zero mean and unit variance per row, which removes those two directions
        d_mean = d_x_hat @ averaging
        d_scale = np.einsum("ij,ij->i", d_x_hat, x_hat)
        d_scale *= 1 / size
        dx = np.multiply(x_hat, d_scale[:, None], out=np.empty_like(x_hat))
        np.subtract(d_x_hat, dx, out=dx)
        dx -= d_mean[:, None]
        dx *= inv_std
        dweight = None if weight is None else (
            np.einsum("ij,ij->j", dy_rows, x_hat).reshape(weight.shape))
        dbias = None if bias is None else (
            column_sums(dy_rows)).reshape(bias.shape)
        return dx.reshape(shape), dweight, dbias

    return y.reshape(shape), backward


def inverse_root_mean_square(rows, eps):
    """1 / sqrt(mean(rows^2) + eps) of each row, as a (rows, 1) column: the scale of layer
    norm (of centred rows) and of RMS norm."""
    mean_square = np.einsum("ij,ij->i", rows, rows)
    mean_square *= 1 / rows.shape[1]
    mean_square += eps
    inverse = np.sqrt(mean_square, out=mean_square)
    np.reciprocal(inverse, out=inverse)
    return inverse[:, None]
