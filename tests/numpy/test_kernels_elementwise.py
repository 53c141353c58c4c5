"""Elementwise, comparison, reduction and concat kernels: torch as the oracle in float32 (with
broadcasting and Python-number operands); central differences in test_kernel_gradients.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnspec.backends.numpy.gradcheck import check_gradients
from nnspec.backends.numpy.kernels import elementwise as ew
from nnspec.backends.numpy.kernels import parallel
from tests.numpy.helpers import assert_close, torch, torch_op

pytestmark = pytest.mark.strict_numerics(under="ignore")  # tiny gradients flush to 0

FEW = settings(max_examples=15, deadline=None)


def normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def away_from_zero(rng, shape):
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)


def run_numpy(kernel, operands):
    out, backward = kernel(*operands)
    probe = np.asarray(np.random.default_rng(99).standard_normal(out.shape), dtype=out.dtype)
    return out, probe, backward(probe)


def is_float_array(operand):
    return isinstance(operand, np.ndarray) and operand.dtype.kind == "f"


def assert_matches_torch(kernel, torch_fn, operands, rtol=1e-4, atol=1e-5):
    """Forward and the gradients of sum(out * probe) agree with torch; non-float operands
    (Python numbers, masks) get no gradient."""
    out, probe, grads = run_numpy(kernel, operands)
    tensors = [
        torch.tensor(o, requires_grad=is_float_array(o)) if isinstance(o, np.ndarray) else o
        for o in operands
    ]
    out_torch = torch_fn(*tensors)
    assert_close(out, out_torch, rtol=rtol, atol=atol)
    (out_torch * torch.tensor(probe)).sum().backward()
    assert len(grads) == len(operands)
    for operand, tensor, grad in zip(operands, tensors, grads):
        if not is_float_array(operand):
            assert grad is None
            continue
        assert_close(grad, tensor.grad, rtol=rtol, atol=atol)


# name -> (NumPy kernel, torch function, sampler of the first operand, of the second)
BINARY = {
    "add": (ew.add, torch_op("add"), normal, normal),
    "sub": (ew.sub, torch_op("sub"), normal, normal),
    "mul": (ew.mul, torch_op("mul"), normal, normal),
    "div": (ew.div, torch_op("div"), normal, away_from_zero),
    "pow": (ew.pow, torch_op("pow"), positive, normal),
    "maximum": (ew.maximum, torch_op("maximum"), normal, normal),
    "minimum": (ew.minimum, torch_op("minimum"), normal, normal),
}

broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                    max_side=4)


@pytest.mark.torch
@pytest.mark.parametrize("name", BINARY)
@FEW
@given(shapes=broadcast_pairs, seed=st.integers(0, 2**16))
def test_binary_ops_broadcast_like_torch(name, shapes, seed):
    kernel, torch_fn, sample_a, sample_b = BINARY[name]
    rng = np.random.default_rng(seed)
    shape_a, shape_b = shapes.input_shapes
    operands = [sample_a(rng, shape_a), sample_b(rng, shape_b)]
    assert_matches_torch(kernel, torch_fn, operands)


@pytest.mark.torch
@pytest.mark.parametrize("shape_b", [(8, 32, 1, 1), (1, 32, 1, 1), (32, 1, 1), (8, 1, 1, 1),
                                     (1, 1, 1, 16), ()])
@pytest.mark.parametrize("swapped", [False, True])
def test_products_with_an_operand_broadcast_along_trailing_axes_match_torch(shape_b, swapped):
    """An SE gate's or a per-channel scale's product: the broadcast operand's gradient as dot
    products of rows (``_product_grad``), the other's as a product; on either side."""
    rng = np.random.default_rng(12)
    operands = [normal(rng, (8, 32, 16, 16)), normal(rng, shape_b)]
    assert_matches_torch(ew.mul, torch_op("mul"), operands[::-1] if swapped else operands)


SCALAR_CASES = {
    "x + 2": (ew.add, torch_op("add"), [normal, 2.0]),
    "2 - x": (ew.sub, torch_op("sub"), [2.0, normal]),
    "x * 0.5": (ew.mul, torch_op("mul"), [normal, 0.5]),
    "1 / x": (ew.div, torch_op("div"), [1.0, away_from_zero]),
    "x / 4": (ew.div, torch_op("div"), [normal, 4.0]),
    "x ^ 2": (ew.pow, torch_op("pow"), [normal, 2]),
    "x ^ 3.0": (ew.pow, torch_op("pow"), [normal, 3.0]),
    "x ^ 0.5": (ew.pow, torch_op("pow"), [positive, 0.5]),
    "x ^ -1.5": (ew.pow, torch_op("pow"), [positive, -1.5]),
    "x ^ 0": (ew.pow, torch_op("pow"), [normal, 0]),
    "2 ^ x": (ew.pow, torch_op("pow"), [2.0, normal]),
    "maximum(x, 0)": (ew.maximum, lambda a, b: torch.clamp(a, min=b), [normal, 0.0]),
    "minimum(x, 1)": (ew.minimum, lambda a, b: torch.clamp(a, max=b), [normal, 1.0]),
}


@pytest.mark.torch
@pytest.mark.parametrize("case", SCALAR_CASES)
def test_python_number_operands_keep_float32_and_get_no_gradient(case):
    kernel, torch_fn, samplers = SCALAR_CASES[case]
    rng = np.random.default_rng(0)
    operands = [s(rng, (3, 4)) if callable(s) else s for s in samplers]
    assert_matches_torch(kernel, torch_fn, operands)
    check_gradients(kernel, operands)


@pytest.mark.torch
def test_pow_gradients_at_zero_base_and_zero_exponent_match_torch():
    base = np.array([0.0, 0.0, 2.0, 3.0], np.float32)
    exponent = np.array([0.0, 2.0, 0.0, 1.5], np.float32)
    assert_matches_torch(ew.pow, torch.pow, [base, exponent])


@pytest.mark.torch
@pytest.mark.parametrize("exponent", [0, 1, 2, 3, 4, -1, -2, -3, -4, 0.5, -0.5, 3.0, 1.5, 5])
def test_pow_by_a_number_matches_torch_at_every_kind_of_value(exponent, monkeypatch):
    """Integer exponents up to 4 and +-0.5 are products and a root, not C's pow (70 ms for
    x ** 3 of 2^20 values): the same values and gradients as torch's, at zeros of both
    signs, infinities, NaN, tiny and negative bases; other exponents keep np.power."""
    x = np.concatenate([np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e19],
                                 np.float32),
                        np.random.default_rng(5).standard_normal(64).astype(np.float32) * 3])
    powered = []
    power = np.power
    monkeypatch.setattr(np, "power", lambda *a, **k: powered.append(a) or power(*a, **k))
    with np.errstate(all="ignore"):
        out, backward = ew.pow(x, exponent)
        assert bool(powered) == (exponent in (1.5, 5))  # (the forward's; its slope's differ)
        (grad, _) = backward(np.ones_like(x))
    assert out.dtype == grad.dtype == np.float32
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.pow(tx, exponent)
    ty.backward(torch.ones_like(ty))
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=2e-6, atol=0)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-5, atol=0)
    numbers = ~np.isnan(out)  # (a NaN's sign bit is nobody's meaning)
    np.testing.assert_array_equal(np.signbit(out[numbers]),
                                  np.signbit(ty.detach().numpy()[numbers]))


@pytest.mark.torch
def test_maximum_and_minimum_split_ties_like_torch():
    a = np.array([1.0, 2.0, 3.0, -1.0], np.float32)
    b = np.array([1.0, 0.0, 3.0, 5.0], np.float32)
    assert_matches_torch(ew.maximum, torch.maximum, [a, b])
    assert_matches_torch(ew.minimum, torch.minimum, [a, b])


@pytest.mark.torch
@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4),
       seed=st.integers(0, 2**16))
def test_where_broadcasts_and_gives_the_mask_no_gradient(shapes, seed):
    rng = np.random.default_rng(seed)
    shape_cond, shape_a, shape_b = shapes.input_shapes
    cond = np.asarray(rng.random(shape_cond) < 0.5)
    operands = [cond, normal(rng, shape_a), normal(rng, shape_b)]
    assert_matches_torch(ew.where, torch.where, operands)
    check_gradients(ew.where, operands)


@pytest.mark.torch
def test_where_with_number_branches_and_a_comparison_mask():
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    mask, _ = ew.lt(x, 0.0)
    assert_matches_torch(ew.where, torch.where, [mask, x, 0.5])
    assert_matches_torch(ew.where, torch.where, [mask, -1.0, x])


COMPARISONS = {
    "lt": (ew.lt, torch_op("lt")),
    "le": (ew.le, torch_op("le")),
    "gt": (ew.gt, torch_op("gt")),
    "ge": (ew.ge, torch_op("ge")),
    "eq": (ew.eq, torch_op("eq")),
    "ne": (ew.ne, torch_op("ne")),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", COMPARISONS)
def test_comparisons_are_boolean_masks_without_gradient(name):
    kernel, torch_fn = COMPARISONS[name]
    a = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, -1.0]], np.float32)
    b = np.array([1.0, 1.0, 0.0], np.float32)
    for right in (b, 1.0):
        mask, backward = kernel(a, right)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, torch_fn(torch.tensor(a), torch.tensor(right)))
        assert backward(np.ones(mask.shape, np.float32)) == (None, None)


UNARY = {
    "neg": (ew.neg, torch_op("neg"), normal),
    "abs": (ew.abs, torch_op("abs"), normal),
    "exp": (ew.exp, torch_op("exp"), normal),
    "log": (ew.log, torch_op("log"), positive),
    "sqrt": (ew.sqrt, torch_op("sqrt"), positive),
    "clip": (lambda x: ew.clip(x, lo=-0.5, hi=0.7), lambda x: torch.clamp(x, -0.5, 0.7), normal),
    "clip_lo": (lambda x: ew.clip(x, lo=0.1), lambda x: torch.clamp(x, min=0.1), normal),
    "clip_hi": (lambda x: ew.clip(x, hi=-0.2), lambda x: torch.clamp(x, max=-0.2), normal),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", UNARY)
@FEW
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5), seed=st.integers(0, 2**16))
def test_unary_ops_match_torch(name, shape, seed):
    kernel, torch_fn, sample = UNARY[name]
    assert_matches_torch(kernel, torch_fn, [sample(np.random.default_rng(seed), shape)])


@pytest.mark.torch
def test_abs_and_clip_gradients_at_their_kinks_follow_torch():
    x = np.array([-1.0, -0.5, 0.0, 0.7, 2.0], np.float32)
    assert_matches_torch(ew.abs, torch.abs, [x])
    assert_matches_torch(lambda v: ew.clip(v, lo=-0.5, hi=0.7),
                         lambda v: torch.clamp(v, -0.5, 0.7), [x])


def test_clip_needs_a_bound():
    with pytest.raises(ValueError, match="lo and hi"):
        ew.clip(np.zeros(2, np.float32))


def torch_dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


REDUCTIONS = {
    "sum": (ew.sum, lambda x, axis, keep: torch.sum(x, dim=torch_dims(axis, x.ndim),
                                                       keepdim=keep)),
    "mean": (ew.mean, lambda x, axis, keep: torch.mean(x, dim=torch_dims(axis, x.ndim),
                                                          keepdim=keep)),
    "max": (ew.max, lambda x, axis, keep: torch.amax(x, dim=torch_dims(axis, x.ndim),
                                                       keepdim=keep)),
}


@st.composite
def reduction_cases(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    ndim = len(shape)
    axis = draw(st.one_of(
        st.none(),
        st.integers(-ndim, ndim - 1),
        st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
    ))
    return shape, axis, draw(st.booleans()), draw(st.integers(0, 2**16))


@pytest.mark.torch
@pytest.mark.parametrize("name", REDUCTIONS)
@settings(max_examples=25, deadline=None)
@given(case=reduction_cases())
def test_reductions_match_torch(name, case):
    shape, axis, keepdims, seed = case
    kernel, torch_fn = REDUCTIONS[name]
    x = normal(np.random.default_rng(seed), shape)
    assert_matches_torch(lambda v: kernel(v, axis=axis, keepdims=keepdims),
                         lambda v: torch_fn(v, axis, keepdims), [x])


@pytest.mark.torch
def test_max_sends_the_gradient_to_the_first_maximum_like_torch_max_dim():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], np.float32)
    for dim in (0, 1):
        assert_matches_torch(lambda v, d=dim: ew.max(v, axis=d),
                             lambda v, d=dim: torch.max(v, dim=d).values, [x])
    (grad,) = ew.max(x)[1](np.float32(1.0))
    np.testing.assert_array_equal(grad, [[0, 1, 0], [0, 0, 0]])
    (grad,) = ew.max(x, axis=(0, 1), keepdims=True)[1](np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(grad, [[0, 1, 0], [0, 0, 0]])


def test_reductions_stay_float32_and_return_arrays():
    x = np.ones((3, 4), np.float32)
    for kernel in (ew.sum, ew.mean, ew.max):
        out, _ = kernel(x)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == ()


@pytest.mark.torch
@FEW
@given(count=st.integers(1, 4), axis=st.integers(-3, 2), seed=st.integers(0, 2**16))
def test_concat_matches_torch_cat(count, axis, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, count)
    arrays = []
    for size in sizes:
        shape = [2, 3, 2]
        shape[axis] = int(size)
        arrays.append(normal(rng, tuple(shape)))

    def kernel(*xs):
        return ew.concat(xs, axis=axis)

    def torch_fn(*xs):
        return torch.cat(xs, dim=axis)

    assert_matches_torch(kernel, torch_fn, arrays)
    check_gradients(kernel, arrays)


@pytest.mark.torch
def test_where_of_same_shape_operands_in_one_pass_is_torchs_with_nan_gradients():
    """Same-shape float32 operands take the compiled pass (``fused.select``); the gradient
    not chosen is 0 even where d_out is NaN or infinite, as torch's."""
    rng = np.random.default_rng(13)
    shape = (8, 64, 257)
    cond = rng.random(shape) < 0.5
    a, b = normal(rng, shape), normal(rng, shape)
    out, backward = ew.where(cond, a, b)
    np.testing.assert_array_equal(out, torch.where(torch.tensor(cond), torch.tensor(a),
                                                   torch.tensor(b)).numpy())
    d_out = normal(rng, shape)
    d_out.reshape(-1)[::101] = np.nan
    d_out.reshape(-1)[1::103] = np.inf
    ta, tb = (torch.tensor(x, requires_grad=True) for x in (a, b))
    torch.where(torch.tensor(cond), ta, tb).backward(torch.tensor(d_out))
    _, d_a, d_b = backward(d_out)
    np.testing.assert_array_equal(d_a, ta.grad.numpy())
    np.testing.assert_array_equal(d_b, tb.grad.numpy())


def test_unbroadcast_sums_back_to_each_operand_shape():
    grad = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(ew.unbroadcast(grad, (4,)), grad.sum(axis=(0, 1)))
    np.testing.assert_array_equal(ew.unbroadcast(grad, (3, 1)), grad.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(ew.unbroadcast(grad, ()), grad.sum())
    assert ew.unbroadcast(grad, (2, 3, 4)) is grad


@pytest.mark.torch
@pytest.mark.parametrize("size", [(4, 5), (8, 64, 32, 32)])  # one part, and in parts
def test_add_relu_is_torch_relu_of_the_sum_with_its_gradient(size):
    """The residual join the interpreter fuses: float32 operands of one shape take the
    compiled pass (in parts when large); NaN and the infinities pass as in torch."""
    rng = np.random.default_rng(0)
    a, b = normal(rng, size), normal(rng, size)
    a.flat[:4] = [np.nan, np.inf, -np.inf, 0.0]
    b.flat[:4] = [1.0, 1.0, 1.0, -0.0]
    out, backward = ew.add_relu(a, b)
    d_out = normal(rng, size)
    d_a, d_b = backward(d_out)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    t_out = torch.relu(ta + tb)
    t_out.backward(torch.from_numpy(d_out))
    assert_close(out, t_out)
    assert_close(d_a, ta.grad)
    assert_close(d_b, tb.grad)


@pytest.mark.parametrize("size", [(4, 5), (8, 64, 32, 32), (3, 1 << 17)])
def test_a_large_same_shape_add_on_both_cores_is_numpys_sum(size, monkeypatch):
    """float32 joins of one shape from MEMORY_MIN_VALUES values take the compiled pass in
    parts: to the bit NumPy's sum (NaN and the infinities too), its gradient each
    operand's."""
    taken = []
    split = parallel.add
    monkeypatch.setattr(parallel, "add", lambda *args: taken.append(1) or split(*args))
    rng = np.random.default_rng(2)
    a, b = normal(rng, size), normal(rng, size)
    a.flat[:4] = [np.nan, np.inf, -np.inf, 0.0]
    b.flat[:4] = [1.0, -np.inf, 1.0, -0.0]
    with np.errstate(invalid="ignore"):  # inf - inf
        want = a + b
        out, backward = ew.add(a, b)
    assert bool(taken) == (a.size >= parallel.MEMORY_MIN_VALUES)
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.float32 and np.signbit(out.flat[3]) == np.signbit(want.flat[3])
    d_out = normal(rng, size)
    d_a, d_b = backward(d_out)
    np.testing.assert_array_equal(d_a, d_out)
    np.testing.assert_array_equal(d_b, d_out)


def test_add_relu_of_operands_that_broadcast_is_the_two_kernels():
    a = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    b = np.float32([1.0, -1.0, 0.5])
    out, backward = ew.add_relu(a, b)
    np.testing.assert_array_equal(out, np.maximum(a + b, 0))
    d_a, d_b = backward(np.ones_like(out))
    np.testing.assert_array_equal(d_a, (a + b > 0).astype(np.float32))
    np.testing.assert_array_equal(d_b, (a + b > 0).sum(axis=0, dtype=np.float32))


@pytest.mark.torch
@pytest.mark.parametrize("size", [(3, 7), (64, 1030)])
def test_silu_mul_is_torchs_gated_product_with_its_gradients(size):
    """The SwiGLU product the interpreter fuses: float32 operands of one shape take the
    compiled pass (in parts when large); NaN and the infinities pass as in torch."""
    rng = np.random.default_rng(1)
    a, b = normal(rng, size) * 4, normal(rng, size)
    a.flat[:5] = [np.nan, np.inf, -np.inf, 0.0, -100.0]
    b.flat[:5] = [1.0, 1.0, 1.0, -0.0, 2.0]
    out, backward = ew.silu_mul(a, b)
    d_out = normal(rng, size)
    d_a, d_b = backward(d_out)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    t_out = torch.nn.functional.silu(ta) * tb
    t_out.backward(torch.from_numpy(d_out))
    assert_close(out, t_out)
    assert_close(d_a, ta.grad)
    assert_close(d_b, tb.grad)


def test_silu_mul_of_operands_that_broadcast_is_the_two_kernels():
    a = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
    b = np.float32([1.0, -1.0, 0.5])
    out, backward = ew.silu_mul(a, b)
    silu = a / (1 + np.exp(-a))
    np.testing.assert_allclose(out, silu * b, rtol=1e-6)
    d_a, d_b = backward(np.ones_like(out))
    np.testing.assert_allclose(d_b, silu.sum(axis=0), rtol=1e-6)
    sigmoid = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(d_a, np.broadcast_to(b, a.shape) * sigmoid * (1 + a * (1 - sigmoid)),
                               rtol=1e-5)
