"""Multi-head self-attention and layer norm kernels: torch as the oracle (central differences in
test_kernel_gradients.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels.attention import CAUSAL_BLOCK, multi_head_attention
from nnspec.backends.numpy.kernels.norm_layer import layer_norm
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = pytest.mark.strict_numerics

FEW = settings(max_examples=25, deadline=None)


def attention_arrays(rng, batch, steps, embed, has_bias, dtype=np.float32):
    """Input and parameters in nn.MultiheadAttention's layout: x, in_proj w/b, out_proj w/b."""
    def draw(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(dtype)

    return [
        rng.standard_normal((batch, steps, embed)).astype(dtype),
        draw(3 * embed, embed),
        draw(3 * embed) if has_bias else None,
        draw(embed, embed),
        draw(embed) if has_bias else None,
    ]


# --- multi-head attention ----------------------------------------------------------------


@pytest.mark.torch
@FEW
@given(
    batch=st.integers(1, 3),
    steps=st.sampled_from([1, 2, 3, 5, 6, CAUSAL_BLOCK - 1, CAUSAL_BLOCK + 1]),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    causal=st.booleans(),
    has_bias=st.booleans(),
)
def test_attention_matches_torch(batch, steps, heads, head_dim, causal, has_bias):
    check_attention_against_torch(batch, steps, heads, head_dim, causal, has_bias)


@pytest.mark.torch
@pytest.mark.parametrize("steps", [CAUSAL_BLOCK + 1, 2 * CAUSAL_BLOCK + 7])
def test_causal_attention_over_several_query_blocks_matches_torch(steps):
    check_attention_against_torch(2, steps, 2, 3, True, True)


def check_attention_against_torch(batch, steps, heads, head_dim, causal, has_bias):
    embed = heads * head_dim
    rng = np.random.default_rng(0)
    x, in_weight, in_bias, out_weight, out_bias = attention_arrays(
        rng, batch, steps, embed, has_bias
    )
    y, backward = multi_head_attention(x, in_weight, in_bias, out_weight, out_bias,
                                       heads=heads, causal=causal)
    probe = rng.standard_normal(y.shape, np.float32)
    dx, d_in_weight, d_in_bias, d_out_weight, d_out_bias = backward(probe)

    module = torch.nn.MultiheadAttention(embed, heads, bias=has_bias, batch_first=True)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.from_numpy(in_weight))
        module.out_proj.weight.copy_(torch.from_numpy(out_weight))
        if has_bias:
            module.in_proj_bias.copy_(torch.from_numpy(in_bias))
            module.out_proj.bias.copy_(torch.from_numpy(out_bias))
    mask = torch.triu(torch.full((steps, steps), float("-inf")), 1) if causal else None
    tx = torch.tensor(x, requires_grad=True)
    ty, _ = module(tx, tx, tx, attn_mask=mask, need_weights=False)
    ty.backward(torch.from_numpy(probe))

    assert_close(y, ty)
    assert_close(dx, tx.grad)
    assert_close(d_in_weight, module.in_proj_weight.grad)
    assert_close(d_out_weight, module.out_proj.weight.grad)
    if has_bias:
        assert_close(d_in_bias, module.in_proj_bias.grad)
        assert_close(d_out_bias, module.out_proj.bias.grad)
    else:
        assert d_in_bias is None and d_out_bias is None


def test_causal_attention_ignores_the_future():
    """Changing the last position leaves every earlier output unchanged."""
    x, *params = attention_arrays(np.random.default_rng(3), 2, 5, 4, True)
    before, _ = multi_head_attention(x, *params, heads=2, causal=True)
    x[:, -1] += 1
    after, _ = multi_head_attention(x, *params, heads=2, causal=True)
    np.testing.assert_array_equal(before[:, :-1], after[:, :-1])
    assert not np.allclose(before[:, -1], after[:, -1])


def test_attention_rejects_heads_that_do_not_divide_the_embedding():
    x, *params = attention_arrays(np.random.default_rng(4), 1, 2, 6, True)
    with pytest.raises(ValueError, match="divide"):
        multi_head_attention(x, *params, heads=4, causal=False)


# --- layer norm --------------------------------------------------------------------------


@pytest.mark.torch
@FEW
@given(
    leading=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    normalized=st.lists(st.integers(2, 6), min_size=1, max_size=2),
    has_weight=st.booleans(),
    has_bias=st.booleans(),
)
def test_layer_norm_matches_torch(leading, normalized, has_weight, has_bias):
    # a single normalised element is always 0; torch then returns its rounding error * 1/sqrt(eps)
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((*leading, *normalized)) + 1).astype(np.float32)
    weight = rng.standard_normal(normalized).astype(np.float32) if has_weight else None
    bias = rng.standard_normal(normalized).astype(np.float32) if has_bias else None
    y, backward = layer_norm(x, weight, bias, normalized_ndim=len(normalized))
    probe = rng.standard_normal(y.shape).astype(np.float32)
    grads = backward(probe)

    tensors = [as_torch(a) for a in (x, weight, bias)]
    ty = F.layer_norm(tensors[0], tuple(normalized), tensors[1], tensors[2])
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    for grad, tensor in zip(grads, tensors):
        if tensor is None:
            assert grad is None
        else:
            assert_close(grad, tensor.grad)


def test_layer_norm_of_a_constant_row_is_the_bias():
    """eps keeps a zero-variance row finite: it normalises to zero, leaving the bias."""
    x = np.full((2, 5), 3.0, np.float32)
    bias = np.arange(5, dtype=np.float32)
    y, _ = layer_norm(x, np.ones(5, np.float32), bias)
    np.testing.assert_allclose(y, np.broadcast_to(bias, (2, 5)), atol=1e-6)
