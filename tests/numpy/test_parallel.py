"""Work split across the cores (kernels/workers.py, kernels/parallel.py) against the same
work whole, at sizes over the split thresholds: element-wise loops and batch norm's column
loops give the whole loop's values bit for bit, loops that sum along a row (layer norm, the
softmax's totals) the same to float32 rounding (the jobs' compiled copy of a loop may order
a vectorised sum differently), and attention split by heads what one core gives."""

import threading

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import attention, fused, parallel, workers

F = np.float32
rng = np.random.default_rng(0)
SPLIT = workers.parts() > 1
needs_two = pytest.mark.skipif(not SPLIT, reason="OpenBLAS runs one thread here")


@needs_two
def test_parts_follow_the_blas_thread_count():
    _, get_threads, set_threads = workers._openblas()  # as threadpoolctl sets it
    threads = get_threads()
    set_threads(1)
    try:
        assert workers.parts() == 1
    finally:
        set_threads(threads)
    assert workers.parts() == threads


@needs_two
def test_in_parts_runs_every_part_on_its_own_thread_and_blas_single_threaded_meanwhile():
    seen = {}

    def part(number):
        seen[number] = (threading.get_ident(), workers.parts())

    workers.in_parts(part, 2)
    assert sorted(seen) == [0, 1]
    assert seen[0][0] == threading.get_ident() and seen[1][0] != seen[0][0]
    assert seen[0][1] == seen[1][1] == 1  # nested loops run whole, BLAS one thread
    assert workers.parts() == 2  # restored


def test_in_parts_raises_a_parts_error_after_every_part_is_done():
    finished = []

    def part(number):
        if number == 1:
            raise ValueError("part one")
        finished.append(number)

    with pytest.raises(ValueError, match="part one"):
        workers.in_parts(part, 2)
    assert finished == [0]
    assert workers.parts() >= 1


def _activation_case(kernel, coefficient, size, with_slope):
    x = (rng.standard_normal(size) * 3).astype(F)
    x[::997] = np.nan
    whole = (np.empty_like(x), np.empty_like(x))
    split = (np.empty_like(x), np.empty_like(x))
    kernel(x, whole[0], whole[1] if with_slope else np.empty(0, F), with_slope,
           *(F(c) for c in coefficient))
    parallel.activation(kernel, x, split[0], split[1] if with_slope else None, with_slope,
                        *coefficient)
    return whole, split


@needs_two
@pytest.mark.parametrize(("kernel", "coefficient"), [
    (fused.gelu, ()), (fused.gelu_tanh, ()), (fused.silu, ()), (fused.sigmoid, ()),
    (fused.tanh_activation, ()), (fused.leaky_relu, (0.2,)), (fused.elu, (0.7,))])
@pytest.mark.parametrize("size", [parallel.ACTIVATION_MIN_VALUES + 7, 3 << 17])
def test_activations_in_parts_are_the_whole_loops_bits(kernel, coefficient, size):
    for with_slope in (True, False):
        (out, slope), (split_out, split_slope) = _activation_case(kernel, coefficient, size,
                                                                  with_slope)
        np.testing.assert_array_equal(split_out, out)
        if with_slope:
            np.testing.assert_array_equal(split_slope, slope)


@needs_two
def test_relu_in_parts_is_the_whole_loops_and_writes_no_slope():
    x = (rng.standard_normal(3 << 17) * 3).astype(F)
    x[::997] = np.nan
    whole, split, untouched = np.empty_like(x), np.empty_like(x), np.full(4, 7, F)
    fused.relu(x, whole, untouched, True)
    parallel.activation(fused.relu, x, split, None, False)
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_array_equal(whole, np.where(x > 0, x, np.where(np.isnan(x), x, 0)))
    assert (untouched == 7).all()


@needs_two
@pytest.mark.parametrize("k", [1, 8])  # layer norm, group norm's weight rows
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_in_parts(k, affine):
    count, size = 8 * 131, 160  # rows not a multiple of the parts
    rows = (rng.standard_normal((count, size)) * 4 + 50).astype(F)
    weight = rng.standard_normal((k, size)).astype(F)
    bias = rng.standard_normal((k, size)).astype(F)
    outputs = []
    for run in (fused.layer_norm_forward, parallel.layer_norm_forward):
        x_hat, inv_std = np.empty_like(rows), np.empty(count, F)
        out = np.empty_like(rows) if affine else x_hat
        run(rows, weight, bias, affine, 1e-5, x_hat, out, inv_std)
        outputs.append((x_hat, out, inv_std))
    for whole, split in zip(*outputs):
        np.testing.assert_allclose(split, whole, rtol=2e-6, atol=2e-6)
    x_hat, _, inv_std = outputs[0]
    d_out = rng.standard_normal((count, size)).astype(F)
    grads = []
    for run in (fused.layer_norm_backward, parallel.layer_norm_backward):
        d_x, d_weight, d_bias = np.empty_like(rows), np.empty_like(weight), np.empty_like(bias)
        run(d_out, x_hat, weight, affine, inv_std, d_x, d_weight, d_bias)
        grads.append((d_x, d_weight, d_bias))
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=2e-6, atol=2e-6)
    if affine:  # summed in parts, then added: float32 rounding apart
        for whole, split in zip(grads[0][1:], grads[1][1:]):
            np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-4)


@needs_two
def test_exp_rows_in_parts():
    rows = (rng.standard_normal((1031, 200)) * 5).astype(F)
    results = []
    for run in (fused.exp_rows, parallel.exp_rows):
        out, peaks, totals = np.empty_like(rows), np.empty(len(rows), F), np.empty(len(rows), F)
        run(rows, out, peaks, totals)
        results.append((out, peaks, totals))
    (out, peaks, totals), (split_out, split_peaks, split_totals) = results
    np.testing.assert_array_equal(peaks, rows.max(axis=1))
    np.testing.assert_array_equal(split_peaks, peaks)
    np.testing.assert_array_equal(split_out, out)
    np.testing.assert_allclose(split_totals, totals, rtol=1e-6)


@needs_two
def test_rotary_turn_in_parts_reads_and_writes_strided_rows():
    """The queries' columns of a projection in, a view into the gradients' columns out, as
    attention passes them: the parts give the whole loop's bits, and the columns around are
    left as they were."""
    steps, heads, half = 37, 3, 8
    width = heads * 2 * half
    source = rng.standard_normal((40 * steps, width + 11)).astype(F)
    angles = rng.uniform(-3, 3, (steps, half))
    cos, sin = np.cos(angles).astype(F), np.sin(angles).astype(F)
    results = []
    for run, first in ((fused.rotate_halves, True), (parallel.rotate_halves, False)):
        target = np.full((len(source), width + 5), 7, F)
        x, out = source[:, 3:3 + width], target[:, 2:2 + width]
        run(x, out, cos, sin, heads, *((0, len(x)) if first else ()))
        results.append(target)
    whole, split = results
    np.testing.assert_array_equal(split, whole)
    assert (whole[:, :2] == 7).all() and (whole[:, 2 + width:] == 7).all()


@needs_two
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_in_parts(amsgrad):
    size = parallel.MEMORY_MIN_VALUES + 333
    grad = rng.standard_normal(size).astype(F)
    start = [rng.standard_normal(size).astype(F) for _ in range(3)] + [
        np.abs(rng.standard_normal(size)).astype(F)]
    scalars = [F(0.999), F(0.1), F(0.999), F(0.001), F(0.03), F(1e-8), F(-1e-3)]
    results = []
    for run in (fused.adam_update, parallel.adam_update):
        data, exp_avg, exp_avg_sq, highest = (a.copy() for a in start)
        exp_avg_sq = np.abs(exp_avg_sq)
        run(data, grad, exp_avg, exp_avg_sq, highest, amsgrad, *scalars)
        results.append((data, exp_avg, exp_avg_sq, highest))
    for whole, split in zip(*results):
        np.testing.assert_array_equal(split, whole)


@needs_two
@pytest.mark.parametrize("momentum_on, first, nesterov", [
    (True, True, False), (True, False, False), (True, False, True), (False, False, False)])
def test_sgd_in_parts(momentum_on, first, nesterov):
    """The SGD step split between the cores gives the whole loop's bits, and the whole loop
    NumPy's sequence of rounded passes (torch's order)."""
    size = parallel.MEMORY_MIN_VALUES + 333
    grad = rng.standard_normal(size).astype(F)
    data0, velocity0 = (rng.standard_normal(size).astype(F) for _ in range(2))
    scalars = (F(0.9), F(0.7), nesterov, F(-0.05))
    results = []
    for run in (fused.sgd_update, parallel.sgd_update):
        data, velocity = data0.copy(), velocity0.copy()
        run(data, grad, velocity, momentum_on, first, *scalars)
        results.append((data, velocity))
    for whole, split in zip(*results):
        np.testing.assert_array_equal(split, whole)
    momentum, one_minus_dampening, _, step = scalars
    velocity = velocity0.copy()
    if momentum_on:
        velocity = grad.copy() if first else velocity * momentum + grad * one_minus_dampening
    g = (grad + velocity * momentum if nesterov else velocity) if momentum_on else grad
    np.testing.assert_array_equal(results[0][0], data0 + g * step)
    np.testing.assert_array_equal(results[0][1], velocity if momentum_on else velocity0)


@needs_two
@pytest.mark.parametrize("activation", [fused.NO_ACTIVATION, fused.RELU, fused.RELU6,
                                        fused.LEAKY_RELU])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels, positions", [(5, 1700), (3, 5000), (300, 3), (1, 40000)])
def test_batch_norm_loops_in_parts(activation, train, channels, positions):
    """Each core takes a run of whole channels: chunks of many channels, channels wider than
    a span, channels of a few columns, one channel (one part); the parts give the whole
    loop's outputs, statistics and gradients to the bit."""
    count = 33
    width = channels * positions
    rows = (rng.standard_normal((count, width)) * 3 + 1).astype(F)
    d_out = rng.standard_normal((count, width)).astype(F)
    weight, bias = (rng.standard_normal(channels).astype(F) for _ in range(2))
    given = rng.standard_normal((5, channels)).astype(F)
    span, slope = fused.COLUMN_SPAN, F(0.2)
    results = []
    for whole in (True, False):
        coefficients, moments = given.copy(), np.full((2, channels), np.nan)
        out, d_x = np.empty_like(rows), np.empty_like(rows)
        gradients, totals = np.empty((4, channels), F), np.empty((2, channels))
        if whole:
            fused.batch_norm_forward(rows, coefficients, moments, weight, bias, 1e-5, train,
                                     activation, slope, out, np.empty((5, width), F), span, 0,
                                     channels)
            fused.batch_norm_backward(d_out, rows, coefficients, train, activation, slope,
                                      gradients, totals, d_x, np.empty((7, width), F), span, 0,
                                      channels)
        else:
            parallel.batch_norm_forward(rows, coefficients, moments, weight, bias, 1e-5, train,
                                        activation, slope, out, span)
            parallel.batch_norm_backward(d_out, rows, coefficients, train, activation, slope,
                                         gradients, totals, d_x, span)
        results.append((coefficients, out, gradients, d_x) + ((moments,) if train else ()))
    for whole, split in zip(*results):
        np.testing.assert_array_equal(split, whole)
    assert np.isfinite(results[0][1]).all() and np.isfinite(results[0][3]).all()


@needs_two
@pytest.mark.parametrize("activation", [fused.NO_ACTIVATION, fused.RELU, fused.LEAKY_RELU])
def test_channel_bias_loops_in_parts(activation):
    """A convolution's bias and relu (or leaky ReLU) in rows: the parts give the whole
    loop's outputs and gradients to the bit, and its row sums to float32 rounding
    (vectorised in another order)."""
    slope = F(0.2)
    samples, channels, positions = 5, 7, 4099  # rows not a multiple of the parts
    out0 = rng.standard_normal((samples * channels, positions)).astype(F)
    out0[3, :5] = np.nan  # NaN stays NaN, and passes its gradient
    bias = rng.standard_normal(channels).astype(F)
    d_out = rng.standard_normal(out0.shape).astype(F)
    results = []
    for module, tail in ((fused, (0, len(out0))), (parallel, ())):
        out = out0.copy()
        module.channel_bias(out, bias, activation, slope, *tail)
        d_in, row_sums = np.empty_like(out), np.empty(len(out), F)
        module.channel_bias_gradient(d_out, out, activation, slope, d_in, row_sums, *tail)
        results.append((out, d_in, row_sums))
    (out, d_in, row_sums), (split_out, split_d_in, split_sums) = results
    np.testing.assert_array_equal(split_out, out)
    np.testing.assert_array_equal(split_d_in, d_in)
    np.testing.assert_allclose(split_sums, row_sums, rtol=1e-5, atol=1e-3)
    expected = out0 + np.tile(bias, samples)[:, None]
    if activation == fused.RELU:
        expected = np.where(expected > 0, expected, np.where(np.isnan(expected), expected, 0))
    if activation == fused.LEAKY_RELU:
        expected = np.where(expected > 0, expected, expected * slope)
    np.testing.assert_array_equal(out, expected)
    passed = {fused.NO_ACTIVATION: d_out, fused.RELU: np.where(out <= 0, 0, d_out),
              fused.LEAKY_RELU: np.where(out > 0, d_out, d_out * slope)}[activation]
    np.testing.assert_array_equal(d_in, passed)
    np.testing.assert_allclose(row_sums, passed.astype(np.float64).sum(axis=1), rtol=1e-4,
                               atol=1e-3)


@needs_two
def test_filled_rows_in_parts_are_the_vector_in_every_row(monkeypatch):
    """A dense layer's bias written ahead of its product: every row, whichever part wrote
    it (rows not a multiple of the parts), and the loop whole gives the same."""
    vector = rng.standard_normal(130).astype(F)
    vector[7] = np.nan
    runs = []
    for least in (1, 1 << 40):  # split, and NumPy's fill whole
        monkeypatch.setattr(parallel, "FILL_MIN_VALUES", least)
        out = np.full((4099, 130), 7.0, F)
        parallel.fill_rows(vector, out)
        runs.append(out)
    loop = np.full((4099, 130), 7.0, F)
    fused.fill_rows(vector, loop)
    for out in (*runs, loop):
        np.testing.assert_array_equal(out, np.broadcast_to(vector, out.shape))


@needs_two
@pytest.mark.parametrize("row_repeats, column_repeats", [(2, 2), (1, 3), (3, 1)])
def test_repeated_rows_and_their_block_sums_in_parts(row_repeats, column_repeats):
    """Nearest up-sampling's repeat and its gradient's block sums split by rows (an odd
    count) give the loops' values whole, to the bit."""
    rows = rng.standard_normal((parallel.MEMORY_MIN_VALUES // 37 + 1, 37)).astype(F)
    wide = (len(rows) * row_repeats, 37 * column_repeats)
    out, whole = np.empty(wide, F), np.empty(wide, F)
    parallel.repeat_rows(rows, row_repeats, column_repeats, out)
    fused.repeat_rows(rows, row_repeats, column_repeats, whole)
    np.testing.assert_array_equal(out, whole)
    np.testing.assert_array_equal(out[row_repeats - 1::row_repeats, column_repeats - 1::
                                      column_repeats], rows)
    d_out = rng.standard_normal(wide).astype(F)
    sums, whole_sums = np.empty_like(rows), np.empty_like(rows)
    parallel.sum_row_blocks(d_out, row_repeats, column_repeats, sums)
    fused.sum_row_blocks(d_out, row_repeats, column_repeats, whole_sums)
    np.testing.assert_array_equal(sums, whole_sums)
    np.testing.assert_allclose(sums, d_out.reshape(len(rows), row_repeats, 37, column_repeats)
                               .sum(axis=(1, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [(2, 2), (3, 3), (1, 2), (2, 1), (2, 3)])
def test_stride_phases_in_parts_are_numpys_transposing_copy(stride):
    """A strided convolution's stride phases (``fused.stride_phases``), split by planes and
    whole, are NumPy's copy of the six-axis view."""
    channels, out = 7, (9, 10)
    spatial = (out[0] * stride[0], out[1] * stride[1])
    n = parallel.MEMORY_MIN_VALUES // (channels * spatial[0] * spatial[1]) + 1  # split
    x = rng.standard_normal((n, channels, *spatial)).astype(F)
    expected = np.ascontiguousarray(
        x.reshape(n, channels, out[0], stride[0], out[1], stride[1])
        .transpose(0, 3, 5, 1, 2, 4)).reshape(n, -1, channels, *out)
    phases, whole = (np.full(expected.shape, np.nan, F) for _ in range(2))
    parallel.stride_phases(x, phases)
    fused.stride_phases(x, whole, 0, n * channels)
    np.testing.assert_array_equal(phases, expected)
    np.testing.assert_array_equal(whole, expected)


def test_strided_arrays_run_whole():
    x = rng.standard_normal(2 * parallel.ACTIVATION_MIN_VALUES).astype(F)
    out = np.empty(2 * x.size, F)[::2]  # strided: the jobs could not see it
    parallel.activation(fused.silu, x, out, None, False)
    expected = np.empty_like(x)
    fused.silu(x, expected, np.empty(0, F), False)
    np.testing.assert_array_equal(out, expected)


@needs_two
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_split_by_heads_is_one_cores_result(causal, kv_heads, monkeypatch):
    batch, steps, heads, dim = 8, 96, 4, 16
    q = rng.standard_normal((batch, steps, heads, dim)).astype(F)
    k, v = (rng.standard_normal((batch, steps, kv_heads, dim)).astype(F) for _ in range(2))
    d_context = rng.standard_normal(q.shape).astype(F)
    monkeypatch.setattr(attention, "PARALLEL_MIN_SCORES", 0)
    monkeypatch.setattr(attention, "COMPILED_MIN_KEYS", steps + 1)  # NumPy's forward
    counts = []
    in_parts = workers.in_parts
    monkeypatch.setattr(workers, "in_parts",
                        lambda function, count: counts.append(count) or in_parts(function, count))
    split_context, split_back = attention.scaled_dot_product(q, k, v, causal=causal)
    split_grads = split_back(d_context)[:3]
    assert counts == [2, 2]  # forward and backward both split
    monkeypatch.setattr(attention, "_parts", lambda head_blocks, scores: 1)
    context, back = attention.scaled_dot_product(q, k, v, causal=causal)
    grads = back(d_context)[:3]
    np.testing.assert_array_equal(split_context, context)
    for split, whole in zip(split_grads, grads):
        np.testing.assert_array_equal(split, whole)



@needs_two
def test_in_parts_lets_go_of_its_function():
    # what a part's closure holds (attention's arrays) must be freed when the caller drops
    # it, not when the cycle collector next runs (a tiny GPT's step peak was 105 -> 139 MiB)
    import gc
    import weakref

    class Held:
        pass

    held = Held()
    alive = weakref.ref(held)

    def part(number, held=held):
        pass

    gc.disable()
    try:
        workers.in_parts(part, 2)
        del part, held
        assert alive() is None
    finally:
        gc.enable()


def test_warm_up_loads_every_job():
    parallel.warm_up()
    jobs = [job for job in vars(parallel).values() if isinstance(job, workers.Task)]
    assert len(jobs) >= 11
    assert all("compiled" in vars(job) for job in jobs)


@needs_two
def test_work_split_inside_a_part_runs_there():
    # a worker that queued work for the workers would wait for itself
    x = rng.standard_normal(4 * parallel.ACTIVATION_MIN_VALUES).astype(F)
    outs = [np.empty_like(x) for _ in range(2)]
    inner = []

    def part(number):
        workers.in_parts(inner.append, 2)
        parallel.activation(fused.silu, x, outs[number], None, False)

    workers.in_parts(part, 2)
    assert sorted(inner) == [0, 0, 1, 1]
    np.testing.assert_array_equal(outs[0], outs[1])


@workers.Task
def _meeting_job(args, range_m, range_n, sa, sb, part):
    """params (parts, sync address, marks address, seen address, rounds): each round, every
    part marks its own slot, the parts meet, and each adds up the others' marks."""
    params = workers.parameters(args, 5)
    parts, sync = params[0], params[1]
    marks, seen = workers.integers(params, 2, parts), workers.integers(params, 3, parts + 1)
    first, end = part, part + 1
    if not workers.together(sync, part, parts):
        if part != 0:
            return 0
        first, end = 0, parts
        seen[parts] = 1  # alone
    for round_ in range(params[4]):
        for p in range(first, end):
            marks[p] = round_ + 1
        if end - first == 1:
            workers.meet(sync + 8, parts, 2 * round_ + 1)
        for p in range(first, end):
            for other in range(parts):
                seen[p] += marks[other]
        if end - first == 1:
            workers.meet(sync + 8, parts, 2 * round_ + 2)
    return 0


@pytest.mark.parametrize("one_after_another", [False, True])
def test_parts_meet_or_one_does_them_all(one_after_another):
    """Parts that run at once meet between phases (each sees every mark of the round);
    parts run one after another (``workers.run``'s fallback) would wait for each other for
    ever, so the first does every part's work and the late one nothing."""
    if not SPLIT and not one_after_another:
        pytest.skip("OpenBLAS runs one thread here")
    parts, rounds = 2, 50
    sync = np.zeros(2, np.int64)
    marks = np.zeros(parts, np.int64)
    seen = np.zeros(parts + 1, np.int64)
    params = np.array([parts, sync.ctypes.data, marks.ctypes.data, seen.ctypes.data, rounds],
                      np.int64)
    if one_after_another:
        for part in range(parts):
            _meeting_job.compiled.ctypes(params.ctypes.data, None, None, None, None, part)
    else:
        workers.run(_meeting_job, params)
    expected = parts * rounds * (rounds + 1) // 2  # every part's marks of every round
    np.testing.assert_array_equal(seen, [expected, expected, int(one_after_another)])


@needs_two
def test_gated_product_in_parts_is_the_whole_loops_bits():
    size = parallel.ACTIVATION_MIN_VALUES * 3 + 5
    d_out, a, b = ((rng.standard_normal(size) * 3).astype(F) for _ in range(3))
    a[::997] = np.nan
    results = []
    for forward, gradient in ((fused.silu_mul, fused.silu_mul_gradient),
                              (parallel.silu_mul, parallel.silu_mul_gradient)):
        out, d_a, d_b = (np.empty(size, F) for _ in range(3))
        forward(a, b, out)
        gradient(d_out, a, b, d_a, d_b)
        results.append((out, d_a, d_b))
    for whole, split in zip(*results):
        np.testing.assert_array_equal(split, whole)
