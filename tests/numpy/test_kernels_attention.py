"""Attention, rotary embedding, RMSNorm and layer norm kernels: torch's nn.MultiheadAttention and
transformers' LlamaAttention / LlamaRMSNorm as the oracles (central differences in
test_kernel_gradients.py)."""

import functools
import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.kernels import attention as attention_kernels
from nnspec.backends.numpy.kernels import attention_tiles
from nnspec.backends.numpy.kernels.attention import (
    CAUSAL_BLOCK,
    attention,
    rope,
    scaled_dot_product,
)
from nnspec.backends.numpy.kernels.norm_layer import layer_norm
from nnspec.backends.numpy.kernels.norm_rms import rms_norm
from tests.numpy.helpers import F, as_torch, assert_close, torch

pytestmark = pytest.mark.strict_numerics

FEW = settings(max_examples=25, deadline=None)
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="needs transformers (the LLaMA oracle)")


def draw(rng, *shape):
    return rng.uniform(-0.5, 0.5, shape).astype(np.float32)


def mha_weights(rng, embed, kdim, has_bias):
    """nn.MultiheadAttention's parameters: packed in_proj when kdim == embed, else separate."""
    if kdim == embed:
        weights = {"in_proj_weight": draw(rng, 3 * embed, embed)}
    else:
        weights = {"q_proj_weight": draw(rng, embed, embed),
                   "k_proj_weight": draw(rng, embed, kdim), "v_proj_weight": draw(rng, embed, kdim)}
    weights["out_proj.weight"] = draw(rng, embed, embed)
    if has_bias:
        weights |= {"in_proj_bias": draw(rng, 3 * embed), "out_proj.bias": draw(rng, embed)}
    return weights


def load_into(module, weights):
    with torch.no_grad():
        for name, value in weights.items():
            module.get_parameter(name).copy_(torch.from_numpy(value))


def check_weight_grads(module, weights, d_weights):
    assert set(d_weights) == set(weights)
    for name, grad in d_weights.items():
        assert_close(grad, module.get_parameter(name).grad)


# --- multi-head attention against nn.MultiheadAttention ------------------------------------


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
def test_self_attention_matches_torch(batch, steps, heads, head_dim, causal, has_bias):
    check_self_attention(batch, steps, heads, head_dim, causal, has_bias)


@pytest.mark.torch
@pytest.mark.parametrize("steps", [CAUSAL_BLOCK + 1, 2 * CAUSAL_BLOCK + 7])
def test_causal_attention_over_several_query_blocks_matches_torch(steps):
    check_self_attention(2, steps, 2, 3, True, True)


def check_self_attention(batch, steps, heads, head_dim, causal, has_bias):
    embed = heads * head_dim
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, steps, embed)).astype(np.float32)
    weights = mha_weights(rng, embed, embed, has_bias)
    y, backward = attention(x, None, weights, heads=heads, kv_heads=heads, causal=causal,
                            dropout=0.0)
    probe = rng.standard_normal(y.shape).astype(np.float32)
    dx, d_memory, d_weights, _, _ = backward(probe)

    module = torch.nn.MultiheadAttention(embed, heads, bias=has_bias, batch_first=True)
    load_into(module, weights)
    mask = torch.triu(torch.full((steps, steps), float("-inf")), 1) if causal else None
    tx = as_torch(x)
    ty, _ = module(tx, tx, tx, attn_mask=mask, need_weights=False)
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    assert_close(dx, tx.grad)
    assert d_memory is None
    check_weight_grads(module, weights, d_weights)


@pytest.mark.torch
@pytest.mark.parametrize("kdim", [8, 5], ids=["packed", "separate"])
@pytest.mark.parametrize("masks", ["bool", "float"])
@pytest.mark.parametrize("per_sample_mask", [False, True])
def test_cross_attention_with_both_masks_matches_torch(kdim, masks, per_sample_mask):
    """Queries from x, keys/values from memory; a key-padding mask and an attention mask,
    boolean (True hides) or additive float (which also gets its gradient)."""
    check_cross_attention(kdim, masks, per_sample_mask, steps=4)


def in_smallest_blocks(monkeypatch):
    """Attention's blocks one (sample, kv head) pair by CAUSAL_BLOCK queries, causal or not."""
    monkeypatch.setattr(attention_kernels, "SCORE_BLOCK_FLOATS", 1)
    monkeypatch.setattr(attention_kernels, "QUERY_BLOCK_FLOATS", 1)
    monkeypatch.setattr(attention_kernels, "QUERY_BLOCK_LEAST", CAUSAL_BLOCK)
    # a cache of its own meanwhile: plans made before stay out, these stay in
    monkeypatch.setattr(attention_kernels, "_plan",
                        functools.lru_cache(maxsize=32)(attention_kernels._plan.__wrapped__))
    assert len(attention_kernels._plan(1, 1, 1, 135, 135, False, 1)[1]) == 3


@pytest.mark.torch
@pytest.mark.parametrize("masks", ["bool", "float"])
def test_attention_over_several_query_blocks_matches_torch(masks, monkeypatch):
    """Past SCORE_BLOCK_FLOATS of scores, attention runs over blocks of samples, heads and
    queries (here one sample and head at a time, and a 3-block split of 135 queries), masks
    and their gradients sliced per block."""
    in_smallest_blocks(monkeypatch)
    check_self_attention(2, 2 * CAUSAL_BLOCK + 7, 2, 3, False, True)
    check_cross_attention(5, masks, True, steps=2 * CAUSAL_BLOCK + 7)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_recomputed_probabilities_give_the_kept_ones_gradients(causal, dropout, monkeypatch):
    """Past KEPT_PROBABILITIES_KEYS keys the backward recomputes the probabilities (from the
    rows' log-sum-exps) instead of keeping them: every gradient must come out the same, with
    grouped heads, both float masks and attention dropout, over several blocks."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 70, 4, 3)).astype(np.float32)
    k, v = (rng.standard_normal((2, 70, 2, 3)).astype(np.float32) for _ in range(2))
    padding = rng.standard_normal((2, 70)).astype(np.float32)
    mask = rng.standard_normal((70, 70)).astype(np.float32)
    probe = rng.standard_normal(q.shape).astype(np.float32)
    in_smallest_blocks(monkeypatch)

    def run(kept_keys):
        monkeypatch.setattr(attention_kernels, "KEPT_PROBABILITIES_KEYS", kept_keys)
        out, backward = scaled_dot_product(q, k, v, padding, mask, causal=causal,
                                           dropout=dropout, train=True,
                                           rng=np.random.default_rng(0))
        return out, backward(probe)

    kept_out, kept_grads = run(70)
    out, grads = run(0)
    np.testing.assert_allclose(out, kept_out, rtol=1e-5, atol=1e-6)  # normalised apart
    for grad, kept in zip(grads, kept_grads):  # float32 sums in another order
        np.testing.assert_allclose(grad, kept, rtol=1e-5, atol=1e-6 * np.abs(kept).max())


def check_cross_attention(kdim, masks, per_sample_mask, steps):
    rng = np.random.default_rng(1)
    batch, keys, embed, heads = 3, 6, 8, 2
    x = rng.standard_normal((batch, steps, embed)).astype(np.float32)
    memory = rng.standard_normal((batch, keys, kdim)).astype(np.float32)
    mask_shape = (batch, steps, keys) if per_sample_mask else (steps, keys)
    if masks == "bool":
        padding = np.zeros((batch, keys), bool)
        padding[0, -2:] = padding[2, 0] = True
        mask = rng.random(mask_shape) < 0.3
        mask[..., 1] = False  # every query keeps a key
    else:
        padding = rng.standard_normal((batch, keys)).astype(np.float32)
        mask = rng.standard_normal(mask_shape).astype(np.float32)
    weights = mha_weights(rng, embed, kdim, True)
    y, backward = attention(x, memory, weights, padding, mask, heads=heads, kv_heads=heads,
                            causal=False, dropout=0.0)
    probe = rng.standard_normal(y.shape).astype(np.float32)
    dx, d_memory, d_weights, d_padding, d_mask = backward(probe)

    module = torch.nn.MultiheadAttention(embed, heads, kdim=kdim, vdim=kdim, batch_first=True)
    load_into(module, weights)
    tx, tm = as_torch(x), as_torch(memory)
    tp, tmask = (torch.tensor(padding), torch.tensor(mask)) if masks == "bool" else (
        as_torch(padding), as_torch(mask))
    torch_mask = tmask.repeat_interleave(heads, 0) if per_sample_mask else tmask
    ty, _ = module(tx, tm, tm, key_padding_mask=tp, attn_mask=torch_mask, need_weights=False)
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    assert_close(dx, tx.grad)
    assert_close(d_memory, tm.grad)
    check_weight_grads(module, weights, d_weights)
    if masks == "bool":
        assert d_padding is None and d_mask is None
    else:
        assert_close(d_padding, tp.grad)
        assert_close(d_mask, tmask.grad)


def test_causal_attention_ignores_the_future():
    """Changing the last position leaves every earlier output unchanged."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    weights = mha_weights(rng, 4, 4, True)
    before, _ = attention(x, None, weights, heads=2, kv_heads=2, causal=True, dropout=0.0)
    x[:, -1] += 1
    after, _ = attention(x, None, weights, heads=2, kv_heads=2, causal=True, dropout=0.0)
    np.testing.assert_array_equal(before[:, :-1], after[:, :-1])
    assert not np.allclose(before[:, -1], after[:, -1])


def test_attention_dropout_only_while_training_and_reproducibly():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    weights = mha_weights(rng, 4, 4, True)

    def run(train, seed):
        return attention(x, None, weights, heads=2, kv_heads=2, causal=False, dropout=0.5,
                         train=train, rng=np.random.default_rng(seed))[0]

    plain, _ = attention(x, None, weights, heads=2, kv_heads=2, causal=False, dropout=0.0)
    np.testing.assert_array_equal(run(False, 0), plain)
    np.testing.assert_array_equal(run(True, 0), run(True, 0))
    assert not np.allclose(run(True, 0), plain)
    assert not np.allclose(run(True, 0), run(True, 1))


# --- LLaMA: grouped-query heads and rotary embeddings against transformers ----------------------


def llama_config(embed, heads, kv_heads, has_bias, theta):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=embed, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, attention_bias=has_bias,
                         rope_theta=theta, intermediate_size=2 * embed, vocab_size=11,
                         num_hidden_layers=1)
    config._attn_implementation = "eager"
    return config


@pytest.mark.torch
@needs_transformers
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 1), (4, 4)])
@pytest.mark.parametrize("use_rope", [True, False])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("steps", [5, CAUSAL_BLOCK + 3])
def test_grouped_query_attention_matches_llama(heads, kv_heads, use_rope, has_bias, steps):
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    rng = np.random.default_rng(5)
    batch, head_dim, theta = 2, 4, 500.0
    embed = heads * head_dim
    x = rng.standard_normal((batch, steps, embed)).astype(np.float32)
    config = llama_config(embed, heads, kv_heads, has_bias, theta)
    module = LlamaAttention(config, layer_idx=0)
    weights = {name: draw(rng, *p.shape) for name, p in module.named_parameters()}
    y, backward = attention(x, None, weights, heads=heads, kv_heads=kv_heads, causal=True,
                            dropout=0.0, rope_theta=theta if use_rope else None)
    probe = rng.standard_normal(y.shape).astype(np.float32)
    dx, _, d_weights, _, _ = backward(probe)

    load_into(module, weights)
    tx = as_torch(x)
    if use_rope:
        cos, sin = LlamaRotaryEmbedding(config)(tx, torch.arange(steps)[None])
    else:  # the identity rotation
        cos, sin = torch.ones(1, steps, head_dim), torch.zeros(1, steps, head_dim)
    causal = torch.triu(torch.full((steps, steps), float("-inf")), 1)[None, None]
    ty, _ = module(tx, position_embeddings=(cos, sin), attention_mask=causal)
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    assert_close(dx, tx.grad)
    check_weight_grads(module, weights, d_weights)


@pytest.mark.torch
@needs_transformers
def test_rope_matches_llamas_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    rng = np.random.default_rng(6)
    batch, steps, heads, head_dim = 2, 7, 3, 6
    x = rng.standard_normal((batch, steps, heads, head_dim)).astype(np.float32)
    y, backward = rope(x, theta=10000.0)
    probe = rng.standard_normal(y.shape).astype(np.float32)
    (dx,) = backward(probe)
    config = llama_config(heads * head_dim, heads, heads, False, 10000.0)
    tx = as_torch(x)
    cos, sin = LlamaRotaryEmbedding(config)(tx, torch.arange(steps)[None])
    as_heads = tx.transpose(1, 2)  # transformers' (B, heads, T, d)
    ty, _ = apply_rotary_pos_emb(as_heads, as_heads, cos, sin)
    ty = ty.transpose(1, 2)
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    assert_close(dx, tx.grad)


# --- RMSNorm ------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("has_weight", [True, False])
def test_rms_norm_matches_torch(eps, has_weight):
    rng = np.random.default_rng(7)
    x = (2 * rng.standard_normal((3, 4, 6)) + 0.5).astype(np.float32)
    weight = rng.standard_normal(6).astype(np.float32) if has_weight else None
    y, backward = rms_norm(x, weight, eps=eps)
    probe = rng.standard_normal(y.shape).astype(np.float32)
    dx, d_weight = backward(probe)
    tx, tw = as_torch(x), as_torch(weight)
    ty = F.rms_norm(tx, (6,), tw, eps)
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    assert_close(dx, tx.grad)
    if has_weight:
        assert_close(d_weight, tw.grad)
    else:
        assert d_weight is None


@pytest.mark.torch
@needs_transformers
def test_rms_norm_matches_llama_rms_norm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    weight = rng.standard_normal(8).astype(np.float32)
    y, backward = rms_norm(x, weight, eps=1e-5)
    probe = rng.standard_normal(y.shape).astype(np.float32)
    dx, d_weight = backward(probe)
    module = LlamaRMSNorm(8, eps=1e-5)
    load_into(module, {"weight": weight})
    tx = as_torch(x)
    ty = module(tx)
    ty.backward(torch.from_numpy(probe))
    assert_close(y, ty)
    assert_close(dx, tx.grad)
    assert_close(d_weight, module.weight.grad)


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


def test_rope_reads_any_layout_and_writes_its_gradient_into_a_view():
    """The queries come as a projection's columns, a gradient in any layout; the gradient
    can go straight into the projection gradient's columns."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    probe = rng.standard_normal(x.shape).astype(np.float32)
    y, backward = rope(x, theta=100.0)
    (dx,) = backward(probe)
    columns = np.zeros((2 * 6, 3 * 4 + 5), np.float32)  # a wider array's first columns
    sample_second = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    y_strided, backward_strided = rope(sample_second, theta=100.0)
    backward_strided(np.asfortranarray(probe), into=columns[:, :12].reshape(x.shape))
    np.testing.assert_array_equal(y_strided, y)
    np.testing.assert_array_equal(columns[:, :12].reshape(x.shape), dx)
    assert not columns[:, 12:].any()


@pytest.mark.parametrize("batch, kv_heads, group, steps, causal", [
    (3, 8, 1, 128, True), (32, 3, 1, 65, False), (5, 4, 1, 64, True), (16, 8, 1, 196, False),
    (2, 2, 4, 128, True), (1, 1, 1, 7, False)])
def test_attention_head_blocks_cover_every_pair_once_and_share_evenly_where_split(
        batch, kv_heads, group, steps, causal):
    """``_plan``'s head blocks: every (sample, kv head) pair in exactly one block; where
    the layer runs on two cores, shares within a fifth of each other for these shapes
    (3 samples of 8 heads once made blocks of 16 and 8 pairs)."""
    from nnspec.backends.numpy.kernels.attention import PARALLEL_MIN_SCORES, _plan

    head_blocks, _ = _plan(batch, kv_heads, group, steps, steps, causal, 2)
    covered = np.zeros((batch, kv_heads), int)
    for samples, kvs in head_blocks:
        covered[samples, kvs] += 1
    assert (covered == 1).all()
    if batch * kv_heads * group * steps * steps >= PARALLEL_MIN_SCORES:
        sizes = [(s.stop - s.start) * (k.stop - k.start) for s, k in head_blocks]
        shares = [sum(sizes[part::2]) for part in range(2)]
        assert max(shares) <= 1.2 * min(shares)


def _long_attention(rng, batch, steps, heads, kv_heads, head_dim):
    """q, k and v as views of one packed projection, (N, T, H + 2 KVH, d) (what a layer
    gives the kernel), and an output gradient."""
    packed = rng.standard_normal((batch, steps, heads + 2 * kv_heads, head_dim)
                                 ).astype(np.float32)
    q, k, v = (packed[:, :, :heads], packed[:, :, heads:heads + kv_heads],
               packed[:, :, heads + kv_heads:])
    return q, k, v, rng.standard_normal((batch, steps, heads, head_dim)).astype(np.float32)


def _record_tiles(monkeypatch):
    taken = []
    forward = attention_tiles.forward
    monkeypatch.setattr(attention_tiles, "forward",
                        lambda *args, **kwargs: taken.append(1) or forward(*args, **kwargs))
    return taken


@pytest.mark.torch
@pytest.mark.parametrize("batch, steps, heads, kv_heads, head_dim, causal", [
    (2, 150, 4, 2, 8, True),      # grouped heads, three causal query blocks
    (3, 200, 3, 3, 17, False),    # a head size no tile divides, one query block
    (1, 300, 2, 1, 64, True),     # one kv head for two, wide heads
    (5, 97, 1, 1, 3, False),      # just past the kept probabilities
    (2, 96, 4, 2, 8, True),       # the job keeps them: grouped, causal
    (3, 40, 3, 3, 17, False),     # and at a head size no tile divides
    (4, 24, 2, 1, 32, True),      # at COMPILED_MIN_KEYS
])
def test_long_attention_in_one_compiled_job_matches_torch(monkeypatch, batch, steps, heads,
                                                          kv_heads, head_dim, causal):
    """From COMPILED_MIN_KEYS the forward is ``attention_tiles``' job (past
    KEPT_PROBABILITIES_KEYS the backward makes the probabilities again from what it wrote,
    up to it they are the job's): torch's float64 attention as the oracle for the context
    and all three gradients."""
    taken = _record_tiles(monkeypatch)
    q, k, v, probe = _long_attention(np.random.default_rng(3), batch, steps, heads, kv_heads,
                                     head_dim)
    out, backward = scaled_dot_product(q, k, v, causal=causal, train=True)
    dq, dk, dv, _, _ = backward(probe)
    assert taken == [1]
    for ours, theirs in zip((out, dq, dk, dv), _torch_attention(q, k, v, probe, causal)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def _torch_attention(q, k, v, probe, causal):
    """torch's float64 attention of (N, T, H, d) q, k and v, grouped heads repeated: the
    context and the gradients of all three for ``probe``, in their layouts."""
    group = q.shape[2] // k.shape[2]
    tq, tk, tv = (torch.tensor(a.transpose(0, 2, 1, 3), dtype=torch.float64,
                               requires_grad=True) for a in (q, k, v))
    ty = F.scaled_dot_product_attention(tq, tk.repeat_interleave(group, 1),
                                        tv.repeat_interleave(group, 1), is_causal=causal)
    ty.backward(torch.tensor(probe.transpose(0, 2, 1, 3), dtype=torch.float64))
    return [a.detach().numpy().transpose(0, 2, 1, 3) for a in (ty, tq.grad, tk.grad, tv.grad)]


@pytest.mark.torch
@pytest.mark.parametrize("batch, steps, heads, kv_heads, head_dim, causal, compiled", [
    (2, 64, 4, 2, 32, True, True),      # grouped, causal, one block of 64 queries
    (3, 40, 3, 3, 17, False, True),     # a head size no tile divides
    (2, 65, 3, 3, 64, False, True),     # 65 queries and keys, wide heads
    (1, 24, 2, 1, 32, True, True),      # at COMPILED_MIN_KEYS, one kv head for two
    (2, 50, 6, 3, 24, True, True),      # narrow tiles for the head, wide for 50 keys
    (2, 96, 4, 2, 8, True, True),       # two causal query blocks, dK and dV gathered
    (2, 150, 4, 2, 8, True, True),      # past the kept probabilities: made again, causal
    (3, 200, 3, 3, 17, False, True),    # and not
    (2, 20, 2, 2, 16, False, False),    # under COMPILED_MIN_KEYS: NumPy's backward
])
def test_the_backward_in_a_compiled_job_matches_torch(monkeypatch, batch, steps, heads,
                                                        kv_heads, head_dim, causal, compiled):
    """Where the forward is ``attention_tiles``' job, the backward is its other job: from
    the kept probabilities or making them again, one query block or several (causal),
    writing the gradients through the packed projection's steps; torch's float64
    attention as the oracle."""
    taken = []
    backward_job = attention_tiles.backward
    monkeypatch.setattr(attention_tiles, "backward", lambda *args, **kwargs:
                        taken.append(1) or backward_job(*args, **kwargs))
    rng = np.random.default_rng(6)
    q, k, v, probe = _long_attention(rng, batch, steps, heads, kv_heads, head_dim)
    _, backward = scaled_dot_product(q, k, v, causal=causal, train=True)
    packed = np.full((batch, steps, heads + 2 * kv_heads, head_dim), np.nan, np.float32)
    into = [packed[:, :, :heads], packed[:, :, heads:heads + kv_heads],
            packed[:, :, heads + kv_heads:]]
    dq, dk, dv, _, _ = backward(probe, into=into)
    assert taken == ([1] if compiled else [])
    assert all(given is got for given, got in zip(into, (dq, dk, dv)))
    assert not np.isnan(packed).any()
    for ours, theirs in zip((dq, dk, dv), _torch_attention(q, k, v, probe, causal)[1:]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_the_compiled_job_gives_one_cores_bits_on_two(monkeypatch):
    """Each (sample, kv head) pair is one core's work, whatever the split, forward and
    backward."""
    from nnspec.backends.numpy.kernels import workers

    def run(q, k, v, probe):
        out, backward = scaled_dot_product(q, k, v, causal=True, train=True)
        return out, *backward(probe)[:3]

    for steps in (140, 64):  # the backward's job too at 64 keys
        arrays = _long_attention(np.random.default_rng(4), 3, steps, 4, 2, 16)
        with monkeypatch.context() as patched:
            split = run(*arrays)
            patched.setattr(workers, "parts", lambda: 1)
            for ours, one_core in zip(split, run(*arrays)):
                np.testing.assert_array_equal(one_core, ours)


@pytest.mark.parametrize("case", ["few keys", "padding mask", "dropout", "float64"])
def test_the_compiled_job_takes_only_what_it_can(monkeypatch, case):
    """NumPy's forward for the rest: fewer than COMPILED_MIN_KEYS keys, masks, attention
    dropout and float64."""
    taken = _record_tiles(monkeypatch)
    few = attention_kernels.COMPILED_MIN_KEYS - 1
    steps = few if case == "few keys" else attention_kernels.KEPT_PROBABILITIES_KEYS + 40
    q, k, v, probe = _long_attention(np.random.default_rng(5), 2, steps, 2, 2, 8)
    if case == "float64":
        q, k, v = (a.astype(np.float64) for a in (q, k, v))
    padding = np.zeros((2, steps), bool) if case == "padding mask" else None
    _, backward = scaled_dot_product(q, k, v, padding, causal=False, train=True,
                                     dropout=0.1 if case == "dropout" else 0.0,
                                     rng=np.random.default_rng(0))
    backward(probe)
    assert taken == []


@pytest.mark.parametrize("rows, columns", [(16, 16), (16, 5), (7, 16), (7, 5), (1, 1), (3, 16)])
def test_the_jobs_transposed_blocks_move_each_value_once_and_nothing_else(rows, columns):
    """``_transpose`` (the job's copies of keys, values, queries and context rows):
    destination row c, lane r is source row r's lane c times row c's scale, for r < rows
    and c < columns; nothing past them is written (NaN kept)."""
    import numba

    from nnspec.backends.numpy.kernels.tiled import LANES

    @numba.njit
    def transpose(sources, rows, columns, destinations, scales):
        attention_tiles._transpose(sources.ctypes.data, rows, columns,
                                   destinations.ctypes.data, scales.ctypes.data)

    rows, columns = min(rows, LANES), min(columns, LANES)
    rng = np.random.default_rng(rows * 31 + columns)
    source = np.full((LANES, 40), np.nan, np.float32)
    source[:rows, 3:3 + columns] = rng.standard_normal((rows, columns))
    out = np.full((LANES, 40), np.nan, np.float32)
    scales = rng.standard_normal(LANES).astype(np.float32)
    transpose(np.array([source[r, 3:].ctypes.data for r in range(LANES)], np.int64), rows,
              columns, np.array([out[c, 2:].ctypes.data for c in range(LANES)], np.int64),
              scales)
    expected = source[:rows, 3:3 + columns].T * scales[:columns, None]
    np.testing.assert_allclose(out[:columns, 2:2 + rows], expected, rtol=1e-6)
    written = np.zeros(out.shape, bool)
    written[:columns, 2:2 + rows] = True
    assert np.isnan(out[~written]).all()
