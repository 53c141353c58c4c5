"""Linear, embedding and dropout kernels: torch as the oracle (central differences in
test_kernel_gradients.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels.dense import linear
from nnspec.backends.numpy.kernels.dropout import dropout
from nnspec.backends.numpy.kernels.embedding import embedding
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = pytest.mark.strict_numerics

FEW = settings(max_examples=20, deadline=None)


# --- linear ------------------------------------------------------------------------------


@pytest.mark.torch
@FEW
@given(
    leading=st.lists(st.integers(1, 4), max_size=3),
    in_features=st.integers(1, 9),
    out_features=st.integers(1, 9),
    has_bias=st.booleans(),
)
def test_linear_matches_torch(leading, in_features, out_features, has_bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((*leading, in_features), np.float32)
    weight = rng.standard_normal((out_features, in_features), np.float32)
    bias = rng.standard_normal(out_features, np.float32) if has_bias else None
    y, backward = linear(x, weight, bias)
    tx, tweight, tbias = (as_torch(a) for a in (x, weight, bias))
    ty = F.linear(tx, tweight, tbias)
    assert_close(y, ty)
    dy = rng.standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    dx, dweight, dbias = backward(dy)
    assert_close(dx, tx.grad)
    assert_close(dweight, tweight.grad)
    if has_bias:
        assert_close(dbias, tbias.grad)
    else:
        assert dbias is None


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, in_features, out_features, strided", [
    (300, 70, 200, False), (257, 128, 384, True), (0, 64, 96, False)])
def test_linear_adds_its_product_to_the_bias_as_torch(dtype, rows, in_features, out_features,
                                                      strided):
    """Products large enough for BLAS to add them to the bias written first (gemm with beta
    = 1), rows of a wider array, an empty batch."""
    rng = np.random.default_rng(rows)
    wide = rng.standard_normal((rows, in_features + 5 * strided)).astype(dtype)
    x = wide[:, :in_features]
    weight = rng.standard_normal((out_features, in_features)).astype(dtype)
    bias = rng.standard_normal(out_features).astype(dtype)
    y, _ = linear(x, weight, bias)
    assert y.dtype == dtype
    expected = F.linear(*(as_torch(a) for a in (x, weight, bias)))
    if dtype == np.float32:
        assert_close(y, expected)
    else:
        np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_linear_names_the_feature_mismatch():
    with pytest.raises(ValueError, match="expects 4 input features"):
        linear(np.zeros((2, 3), np.float32), np.zeros((5, 4), np.float32), None)


# --- embedding ---------------------------------------------------------------------------


@pytest.mark.torch
@FEW
@given(
    index_shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    num_embeddings=st.integers(1, 6),
    dim=st.integers(1, 5),
    padding=st.booleans(),
)
def test_embedding_matches_torch(index_shape, num_embeddings, dim, padding):
    rng = np.random.default_rng(2)
    indices = rng.integers(0, num_embeddings, index_shape)  # small vocab: many repeats
    weight = rng.standard_normal((num_embeddings, dim), np.float32)
    padding_idx = num_embeddings // 2 if padding else None
    y, backward = embedding(indices, weight, padding_idx=padding_idx)
    tweight = as_torch(weight)
    ty = F.embedding(torch.tensor(indices), tweight, padding_idx=padding_idx)
    assert_close(y, ty)
    dy = rng.standard_normal(y.shape, np.float32)
    ty.backward(torch.tensor(dy))
    dindices, dweight = backward(dy)
    assert dindices is None
    assert_close(dweight, tweight.grad)


def test_embedding_accumulates_repeated_indices_and_skips_padding():
    weight = np.zeros((4, 2), np.float32)
    indices = np.array([[1, 1, 3], [1, 0, 3]])
    _, backward = embedding(indices, weight, padding_idx=3)
    _, dweight = backward(np.ones((2, 3, 2), np.float32))
    np.testing.assert_array_equal(dweight, [[1, 1], [3, 3], [0, 0], [0, 0]])


@pytest.mark.parametrize("bad", [[0, 5], [-1, 2]])
def test_embedding_rejects_indices_outside_the_table(bad):
    with pytest.raises(IndexError, match=r"out of range \[0, 5\)"):
        embedding(np.array(bad), np.zeros((5, 2), np.float32))


# --- dropout -----------------------------------------------------------------------------


def test_dropout_drops_a_fraction_p_and_scales_survivors():
    x = np.random.default_rng(4).uniform(1, 2, (200, 500)).astype(np.float32)
    y, backward = dropout(x, p=0.3, train=True, rng=np.random.default_rng(5))
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    dy = np.full_like(x, 2.0)
    (dx,) = backward(dy)
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_allclose(dx[kept], np.float32(2 / 0.7), rtol=1e-6)


@pytest.mark.torch
def test_dropout_scaling_agrees_with_torch():
    x = np.random.default_rng(6).uniform(1, 2, (50, 40)).astype(np.float32)
    torch_y = F.dropout(torch.tensor(x), p=0.25, training=True).numpy()
    y, _ = dropout(x, p=0.25, train=True, rng=np.random.default_rng(7))
    for output in (y, torch_y):
        survivors = output != 0
        np.testing.assert_allclose(output[survivors], x[survivors] / 0.75, rtol=1e-6)


def test_dropout_is_the_identity_in_evaluation_and_at_p_zero():
    x = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    for p, train in [(0.5, False), (0.0, True)]:
        y, backward = dropout(x, p=p, train=train, rng=np.random.default_rng(9))
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(backward(x)[0], x)


def test_dropout_at_p_one_zeroes_everything():
    x = np.ones((3, 4), np.float32)
    y, backward = dropout(x, p=1.0, train=True, rng=np.random.default_rng(10))
    assert not y.any() and not backward(x)[0].any()


def test_dropout_is_reproducible_from_the_generator_seed():
    x = np.ones((8, 8), np.float32)
    first, _ = dropout(x, p=0.5, train=True, rng=np.random.default_rng(11))
    second, _ = dropout(x, p=0.5, train=True, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(first, second)


def test_dropout_rejects_a_probability_outside_zero_one():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        dropout(np.ones(3, np.float32), p=1.5, train=True, rng=np.random.default_rng(0))
