"""Batch normalisation over (N, C), (N, C, L) and (N, C, H, W), with torch's running statistics.

Every pass works on the (N, C * L) view of the activations, in one compiled job each way
(``fused.batch_norm_forward``, ``batch_norm_backward``), each core a run of whole channels:
per chunk of channels (or, on maps, per channel: ``fused._by_channel``) the statistics (or
the backward's sums) in one read of x (and dy), the per-channel coefficients, then the
output (dx) in a second read that finds the chunk in the core's cache. Values are taken
about a shift (the first sample's channel means), so that nothing cancels away when a
channel's mean is large against its spread. Against the NumPy passes they first replaced
(32 x 96 x 32 x 32, forward and backward): 15.5 -> 7.0 ms, torch's at two threads 7.0-7.6.
One job a direction, with the per-channel arithmetic inside, where two jobs had some thirty
NumPy calls between them: a 64-channel 8x8 layer at batch 32, forward and backward, 146 ->
100 us; a MobileNetV2-style step 46.3 -> 42.2 ms, ResNet-20 47.2 -> 45.6.

A ReLU, ReLU6 or leaky ReLU that alone reads the output runs inside (``activation``): the
loops clamp (or scale) the output as they write it, and the backward's find what it did to
the gradient from the output found again (x is read there anyway), instead of two more
passes each way and a mask (a DCGAN discriminator's three leaky ReLUs after batch norm took
0.76 ms of its 64 ms step at batch 32 on their own, and kept their slopes).
"""

from __future__ import annotations

import numpy as np

from nnspec.backends.numpy.kernels import fused, parallel

# the activations a batch norm can apply to its own output
ACTIVATIONS = {None: fused.NO_ACTIVATION, "relu": fused.RELU, "relu6": fused.RELU6,
               "leaky_relu": fused.LEAKY_RELU}


def batch_norm(x, weight, bias, running_mean, running_var, *, train, momentum=0.1, eps=1e-5,
               activation=None):
    """Normalise each channel; backward gives (dx, dweight, dbias, None, None).

    Training normalises with the batch statistics and updates the running buffers in place,
    the variance buffer with the unbiased batch variance, as torch does; evaluation uses the
    running buffers. ``weight`` and ``bias`` are None without an affine transform; the running
    buffers may be None in training (torch's track_running_stats=False). ``activation``
    ("relu", "relu6" or ("leaky_relu", its slope)) is applied to the output, and backward
    takes the gradient of what it gives: the same results as the activation's kernel after
    this one.
    """
    activate, slope = fused.activation_code(activation, ACTIVATIONS)
    n, channels = x.shape[:2]
    count = x.size // channels
    has_weight, has_bias = weight is not None, bias is not None
    if train and count < 2:
        raise ValueError(
            f"batch_norm in training needs more than one value per channel, got shape {x.shape}"
        )
    rows = np.ascontiguousarray(x).reshape(n, -1)
    x_shape = x.shape  # the backward keeps the shape and the rows
    dtype = x.dtype
    weight = np.ones(channels, dtype) if weight is None else weight.astype(dtype, copy=False)
    bias = np.zeros(channels, dtype) if bias is None else bias.astype(dtype, copy=False)
    coefficients = np.empty((5, channels), dtype)
    moments = np.empty((2, channels))
    if not train:
        inv_std = (1.0 / np.sqrt(running_var.astype(dtype) + eps)).astype(dtype)
        coefficients[fused.SHIFT] = running_mean
        coefficients[fused.GAP] = 0
        coefficients[fused.INV_STD] = inv_std
        coefficients[fused.SCALE] = inv_std * weight
        coefficients[fused.OFFSET] = bias
    y = np.empty_like(rows)
    # train: y = (x - shift) * scale + bias - gap * scale, scale = weight * inv_std
    slope = dtype.type(slope)
    parallel.batch_norm_forward(rows, coefficients, moments, weight, bias, eps, train, activate,
                                slope, y, fused.COLUMN_SPAN)
    if train and running_mean is not None:
        # mean = shift + gap, with the gap straight from the float64 statistics, not as a
        # difference of the rounded mean and the shift (a mean of 1e4 rounds by 5e-4)
        running_mean *= 1.0 - momentum
        running_mean += momentum * (coefficients[fused.SHIFT] + moments[0]).astype(
            running_mean.dtype)
        running_var *= 1.0 - momentum
        running_var += (momentum * count / (count - 1)) * moments[1].astype(running_var.dtype)

    def backward(dy):
        dy_rows = np.ascontiguousarray(dy, dtype=dtype).reshape(rows.shape)
        # x_hat is never stored: the job finds it again from x and the coefficients
        results = np.empty((4, channels), dtype)
        dx = np.empty_like(dy_rows)
        parallel.batch_norm_backward(dy_rows, rows, coefficients, train, activate, slope,
                                     results, np.empty((2, channels)), dx, fused.COLUMN_SPAN)
        dweight = results[fused.D_WEIGHT] if has_weight else None
        dbias = results[fused.D_BIAS] if has_bias else None
        return dx.reshape(x_shape), dweight, dbias, None, None

    return y.reshape(x_shape), backward
