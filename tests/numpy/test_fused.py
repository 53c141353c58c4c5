"""The compiled loops of `kernels/fused.py` against float64 NumPy, over shapes, spans and values
chosen by hypothesis: the kernels' torch tests cover their meaning at a few shapes, these the
loops' own arithmetic (the written-out exp, the column spans, the row reductions) anywhere."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import fused
from nnspec.backends.numpy.kernels.norm_batch import batch_norm
from nnspec.backends.numpy.kernels.norm_layer import layer_norm


def test_the_exp_is_within_3e_7_of_the_true_one_down_to_where_float32_flushes():
    x = np.concatenate([-np.geomspace(1e-30, 87.0, 2_000_000), np.zeros(1)]).astype(np.float32)
    peaks = np.empty(1, np.float32)
    out, totals = np.empty((1, x.size), np.float32), np.empty(1, np.float32)
    fused.exp_rows(x[None], out, peaks, totals)  # (the row's peak is its 0)
    want = np.exp(x.astype(np.float64))
    assert peaks[0] == 0 and np.max(np.abs(out[0] / want - 1)) < 3e-7
    below = np.array([[0.0, -87.5, -100.0, -1e30, -np.inf]], np.float32)
    got = np.empty_like(below)
    fused.exp_rows(below, got, peaks, totals)
    np.testing.assert_array_equal(got[0], [1, 0, 0, 0, 0])
    with_nan = np.array([[0.0, np.nan, -1.0]], np.float32)  # whatever its peak, NaN on
    fused.exp_rows(with_nan, np.empty_like(with_nan), peaks, totals)
    assert np.isnan(totals[0])


@settings(max_examples=60, deadline=None)
@given(samples=st.integers(2, 9), channels=st.integers(1, 5),
       positions=st.integers(1, 40) | st.integers(fused.BY_CHANNEL_MIN_POSITIONS, 150),
       span=st.integers(1, 70), offset=st.floats(-1e3, 1e3), train=st.booleans(),
       activation=st.sampled_from([None, "relu", "relu6", "leaky_relu"]),
       seed=st.integers(0, 2**16))
def test_batch_norm_loops_match_float64_numpy(samples, channels, positions, span, offset,
                                               train, activation, seed):
    """Any column span, maps of any size (the chunks' loops, and a channel at a time from
    BY_CHANNEL_MIN_POSITIONS), means far from zero (the shift keeps the variance), each
    activation; forward and backward against the textbook formulas in float64."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((samples, channels, positions)) * 2 + offset).astype(np.float32)
    weight, bias = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    running = [rng.standard_normal(channels).astype(np.float32) + offset,
               rng.uniform(0.5, 2.0, channels).astype(np.float32) * 4]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    old_span = fused.COLUMN_SPAN
    fused.COLUMN_SPAN = span
    try:
        y, backward = batch_norm(x, weight, bias, *(r.copy() for r in running), train=train,
                                 activation=("leaky_relu", 0.2) if activation == "leaky_relu"
                                 else activation)
        dx, dweight, dbias, _, _ = backward(dy)
    finally:
        fused.COLUMN_SPAN = old_span

    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, weight, bias, dy))
    if train:
        mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    else:
        mean, var = (r.astype(np.float64) for r in running)
    inv_std = 1 / np.sqrt(var + 1e-5)
    x_hat = (x64 - mean[:, None]) * inv_std[:, None]
    pre = x_hat * w64[:, None] + b64[:, None]
    if activation == "leaky_relu":
        want = np.where(pre > 0, pre, 0.2 * pre)
        factor = np.where(y > 0, 1.0, np.float64(np.float32(0.2)))  # the float32 slope
    else:
        upper = {None: np.inf, "relu": np.inf, "relu6": 6.0}[activation]
        lower = -np.inf if activation is None else 0.0
        want = np.clip(pre, lower, upper)
        # the gradient passes where the (float32) output is strictly inside the clamp
        factor = (y > lower) & (y < upper) if activation else np.ones(y.shape, bool)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)  # 4e-5 at 1e3 with a rounded mean
    g = dy64 * factor
    want_dbias = g.sum(axis=(0, 2))
    want_dweight = (g * x_hat).sum(axis=(0, 2))
    d_hat = g * w64[:, None]
    if train:
        count = samples * positions
        want_dx = inv_std[:, None] * (d_hat - d_hat.sum(axis=(0, 2))[:, None] / count
                                      - x_hat * (d_hat * x_hat).sum(axis=(0, 2))[:, None] / count)
    else:
        want_dx = d_hat * inv_std[:, None]
    scale = 1 + np.abs(dy64).sum() / dy64.size
    np.testing.assert_allclose(dbias, want_dbias, rtol=1e-4, atol=1e-4 * scale * samples)
    np.testing.assert_allclose(dweight, want_dweight, rtol=1e-3, atol=1e-3 * scale * samples)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=1e-3 * scale)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), size=st.integers(1, 300), offset=st.floats(-1e3, 1e3),
       affine=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_norm_loops_match_float64_numpy(rows, size, offset, affine, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, size)) + offset).astype(np.float32)
    weight = rng.standard_normal(size).astype(np.float32) if affine else None
    bias = rng.standard_normal(size).astype(np.float32) if affine else None
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, backward = layer_norm(x, weight, bias)
    dx, dweight, dbias = backward(dy)

    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    w64 = np.ones(size) if weight is None else weight.astype(np.float64)
    b64 = np.zeros(size) if bias is None else bias.astype(np.float64)
    inv_std = 1 / np.sqrt(x64.var(axis=1, keepdims=True) + 1e-5)
    x_hat = (x64 - x64.mean(axis=1, keepdims=True)) * inv_std
    np.testing.assert_allclose(y, x_hat * w64 + b64, rtol=1e-5, atol=1e-5)
    d_hat = dy64 * w64
    want_dx = inv_std * (d_hat - d_hat.mean(axis=1, keepdims=True)
                         - x_hat * (d_hat * x_hat).mean(axis=1, keepdims=True))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=1e-3)
    if affine:
        np.testing.assert_allclose(dweight, (dy64 * x_hat).sum(axis=0), rtol=1e-3,
                                   atol=1e-3 * rows)
        np.testing.assert_allclose(dbias, dy64.sum(axis=0), rtol=1e-4, atol=1e-4 * rows)
    else:
        assert dweight is None and dbias is None


@numba.njit
def _tanh_all(x, out):
    for i in range(x.size):
        out[i] = fused.tanh(x[i])


def test_tanh_is_float64s_to_4e7_and_passes_nan_and_the_infinities():
    """The recurrent steps' tanh: within 4e-7 of float64's over [-100, 100], exactly 1 (-1) past
    float32's saturation, NaN for NaN, with no floating-point flag raised."""
    x = np.concatenate([np.linspace(-100, 100, 400_001), [np.nan, np.inf, -np.inf, 0.0, 1e-30]]
                       ).astype(np.float32)
    out = np.empty_like(x)
    with np.errstate(all="raise"):
        _tanh_all(x, out)
    finite = x[:-5]
    assert np.abs(out[:-5] - np.tanh(finite.astype(np.float64))).max() < 4e-7
    assert np.all(out[:-5][finite >= 10] == 1) and np.all(out[:-5][finite <= -10] == -1)
    assert np.isnan(out[-5]) and out[-4] == 1 and out[-3] == -1 and out[-2] == 0
    assert abs(out[-1]) <= 1e-30


def test_batch_norms_jobs_store_runs_not_scatters():
    """``_spread`` writes each channel's value over its run of the chunk's columns; indexed
    from a signed offset, numba's wraparound of negative indices made LLVM's stores there a
    vector scatter, which AMD's cores run a value at a time (the chunks' batch norm, 192
    channels of 8x8 at batch 128: 0.88-0.94 -> 0.77-0.79 ms). The jobs as they run, each
    compiled afresh."""
    from nnspec.backends.numpy.kernels import parallel, workers

    for job in (parallel._batch_norm_forward_job, parallel._batch_norm_backward_job):
        compiled = numba.cfunc(workers.TASK_SIGNATURE, cache=False, error_model="numpy",
                               fastmath=job.fastmath)(job.function)
        assert "llvm.masked.scatter" not in compiled.inspect_llvm()
