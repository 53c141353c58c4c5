"""Central differences in float64 for every kernel: the backward of sum(out * probe) for every
input and parameter. Needs no torch, so the plain install runs it; a coverage test fails when a
public kernel has no case here."""

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from nnspec.backends.numpy import kernels
from nnspec.backends.numpy.gradcheck import check_gradients
from nnspec.backends.numpy.kernels import activations as act
from nnspec.backends.numpy.kernels import elementwise as ew
from nnspec.backends.numpy.kernels import losses
from nnspec.backends.numpy.kernels import shape as shape_kernels
from nnspec.backends.numpy.kernels.attention import attention, rope, scaled_dot_product
from nnspec.backends.numpy.kernels.conv import conv1d, conv2d
from nnspec.backends.numpy.kernels.conv_transpose import conv_transpose1d, conv_transpose2d
from nnspec.backends.numpy.kernels.dense import linear
from nnspec.backends.numpy.kernels.dropout import dropout
from nnspec.backends.numpy.kernels.embedding import embedding
from nnspec.backends.numpy.kernels.noise import noise
from nnspec.backends.numpy.kernels.norm_batch import batch_norm
from nnspec.backends.numpy.kernels.norm_group import group_norm, instance_norm
from nnspec.backends.numpy.kernels.norm_layer import layer_norm
from nnspec.backends.numpy.kernels.norm_rms import rms_norm
from nnspec.backends.numpy.kernels.pool import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    avg_pool1d,
    avg_pool2d,
    max_pool1d,
    max_pool2d,
)
from nnspec.backends.numpy.kernels.recurrent import last_step, rnn, rnn_states
from nnspec.backends.numpy.kernels.resample import pixel_shuffle, pixel_unshuffle, upsample
from tests.numpy.helpers import recurrent_params

pytestmark = pytest.mark.strict_numerics


@dataclass(frozen=True)
class Case:
    """`call` is `kernel` with its attributes bound (the kernel itself by default); `arrays`
    draws its arguments from a seeded generator; `differentiable` as in check_gradients."""

    kernel: Callable
    arrays: Callable[[np.random.Generator], list]
    call: Callable | None = None
    differentiable: frozenset | None = None
    atol: float = 1e-6


CASES: dict[str, Case] = {}


def normal(*shape):
    return lambda rng: [rng.standard_normal(shape)]


# --- activations -------------------------------------------------------------------------


def off_the_kinks(rng):
    """Values across every activation's range that stay clear of relu's, leaky_relu's, elu's
    and relu6's kinks at 0 and 6."""
    x = rng.standard_normal((3, 5)) * 4
    x[np.abs(x) < 1e-2] = 0.5
    x[np.abs(x - 6) < 1e-2] = 5.5
    x[0, :2] = [6.5, 7.0]  # above relu6's cap
    return [x]


ACTIVATIONS = {
    "relu": (act.relu, act.relu),
    "sigmoid": (act.sigmoid, act.sigmoid),
    "tanh": (act.tanh, act.tanh),
    "gelu": (act.gelu, act.gelu),
    "gelu_tanh": (act.gelu, lambda x: act.gelu(x, approximate="tanh")),
    "leaky_relu": (act.leaky_relu, act.leaky_relu),
    "leaky_relu_0.2": (act.leaky_relu, lambda x: act.leaky_relu(x, negative_slope=0.2)),
    "elu": (act.elu, act.elu),
    "elu_alpha_0.5": (act.elu, lambda x: act.elu(x, alpha=0.5)),
    "silu": (act.silu, act.silu),
    "relu6": (act.relu6, act.relu6),
    "softmax": (act.softmax, act.softmax),
    "log_softmax": (act.log_softmax, act.log_softmax),
}
for name, (kernel, call) in ACTIVATIONS.items():
    CASES[name] = Case(kernel, off_the_kinks, call)
CASES["softmax_dim0"] = Case(act.softmax, normal(3, 4, 2), lambda x: act.softmax(x, dim=0))
CASES["log_softmax_dim1"] = Case(act.log_softmax, normal(3, 4, 2),
                                 lambda x: act.log_softmax(x, dim=1))


# --- recurrent ---------------------------------------------------------------------------

FEATURES, HIDDEN = 2, 2


def recurrent(mode, layers, bidirectional, has_bias=True, nonlinearity="tanh", summary=False):
    """rnn with its parameter dict spread into arguments; `summary` adds last_step on top."""
    names = list(recurrent_params(mode, FEATURES, HIDDEN, layers, bidirectional, has_bias,
                                  np.random.default_rng(0)))
    options = {"mode": mode, "hidden": HIDDEN, "layers": layers, "bidirectional": bidirectional,
               "nonlinearity": nonlinearity}

    def arrays(rng):
        params = recurrent_params(mode, FEATURES, HIDDEN, layers, bidirectional, has_bias, rng,
                                  np.float64)
        return [rng.standard_normal((2, 3, FEATURES)), *params.values()]

    def call(x, *weights):
        out, backward = rnn(x, dict(zip(names, weights)), **options)
        summary_backward = None
        if summary:
            out, summary_backward = last_step(out, hidden=HIDDEN, bidirectional=bidirectional)

        def spread_backward(d_out):
            if summary_backward:
                (d_out,) = summary_backward(d_out)
            dx, d_params = backward(d_out)
            return (dx, *(d_params[name] for name in names))

        return out, spread_backward

    return Case(rnn, arrays, call, atol=1e-7)


for mode, nonlinearity in [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]:
    prefix = f"{mode}_{nonlinearity}" if mode == "rnn" else mode
    CASES[f"{prefix}_2_layers_bidirectional"] = recurrent(mode, 2, True, nonlinearity=nonlinearity)
for mode in ("rnn", "lstm", "gru"):
    CASES[f"{mode}_3_layers"] = recurrent(mode, 3, False)
    CASES[f"{mode}_without_bias"] = recurrent(mode, 1, True, has_bias=False)
    CASES[f"{mode}_last_step"] = recurrent(mode, 2, True, summary=True)
def recurrent_states(mode, bidirectional, unbatched_start=False, dropout=0.0):
    """rnn_states from given initial states; its results flattened into one output, so one
    probe checks the gradients through the sequence and every final state at once."""
    layers = 2
    names = list(recurrent_params(mode, FEATURES, HIDDEN, layers, bidirectional, True,
                                  np.random.default_rng(0)))
    kinds = 2 if mode == "lstm" else 1
    directions = 2 if bidirectional else 1

    def arrays(rng):
        params = recurrent_params(mode, FEATURES, HIDDEN, layers, bidirectional, True, rng,
                                  np.float64)
        shape = (layers * directions, HIDDEN) if unbatched_start else (
            2, layers * directions, HIDDEN)
        starts = [rng.standard_normal(shape) for _ in range(kinds)]
        return [rng.standard_normal((2, 3, FEATURES)), *starts, *params.values()]

    def call(x, *rest):
        starts, weights = rest[:kinds], rest[kinds:]
        rng = np.random.default_rng(5) if dropout else None  # the same mask every call
        outs, backward = rnn_states(x, starts, dict(zip(names, weights)), mode=mode,
                                    hidden=HIDDEN, layers=layers, bidirectional=bidirectional,
                                    dropout=dropout, rng=rng)
        flat = np.concatenate([o.reshape(2, -1) for o in outs], axis=1)

        def spread_backward(d_flat):
            pieces = np.split(d_flat, np.cumsum([o[0].size for o in outs])[:-1], axis=1)
            dx, *d_starts, d_params = backward(*(p.reshape(o.shape)
                                                 for p, o in zip(pieces, outs)))
            return (dx, *d_starts, *(d_params[name] for name in names))

        return flat, spread_backward

    return Case(rnn_states, arrays, call, atol=1e-7)


for mode in ("rnn", "lstm", "gru"):
    CASES[f"{mode}_states_bidirectional"] = recurrent_states(mode, True)
    CASES[f"{mode}_states_one_start_for_all"] = recurrent_states(mode, False, True)
    CASES[f"{mode}_states_dropout"] = recurrent_states(mode, False, dropout=0.4)

for bidirectional in (False, True):
    CASES[f"last_step_{'bidirectional' if bidirectional else 'forward'}"] = Case(
        last_step, normal(2, 4, (1 + bidirectional) * HIDDEN),
        lambda x, b=bidirectional: last_step(x, hidden=HIDDEN, bidirectional=b))


# --- attention, dense, embedding, dropout --------------------------------------------------


def attention_case(names, memory, kv_heads=2, causal=False, rope_theta=None,
                   masks=(), shapes=None, embed=6):
    """The attention kernel with its weights (by `names`) and float masks as positional
    arrays, so every one of them is checked (a memory of 5 features, or none)."""
    def arrays(rng):
        found = [rng.standard_normal((2, 4, embed)),
                 rng.standard_normal((2, 3, 5)) if memory else None]
        found += [rng.uniform(-0.5, 0.5, shapes[n]) for n in names]
        return found + [rng.standard_normal(m) for m in masks]

    def call(x, source, *rest):
        weights = dict(zip(names, rest[:len(names)]))
        out, backward = attention(x, source, weights, *rest[len(names):], heads=2,
                                  kv_heads=kv_heads, causal=causal, dropout=0.0,
                                  rope_theta=rope_theta)

        def flat_backward(d_out):
            dx, d_memory, d_weights, d_padding, d_mask = backward(d_out)
            grads = (dx, d_memory, *(d_weights.get(n) for n in names))
            return grads + (d_padding, d_mask)[:len(masks)]

        return out, flat_backward

    return Case(attention, arrays, call, atol=1e-7)


PACKED = {"in_proj_weight": (18, 6), "in_proj_bias": (18,), "out_proj.weight": (6, 6),
          "out_proj.bias": (6,)}
SEPARATE = {"q_proj_weight": (6, 6), "k_proj_weight": (6, 5), "v_proj_weight": (6, 5),
            "in_proj_bias": (18,), "out_proj.weight": (6, 6)}
LLAMA = {"q_proj.weight": (8, 8), "k_proj.weight": (4, 5), "v_proj.weight": (4, 5),
         "o_proj.weight": (8, 8), "o_proj.bias": (8,)}
LLAMA_SELF = LLAMA | {"k_proj.weight": (8, 8), "v_proj.weight": (8, 8), "q_proj.bias": (8,)}
for causal in (False, True):
    CASES[f"attention{'_causal' * causal}"] = attention_case(tuple(PACKED), False, causal=causal,
                                                             shapes=PACKED)
    CASES[f"attention_packed_no_bias{'_causal' * causal}"] = attention_case(
        ("in_proj_weight", "out_proj.weight"), False, causal=causal, shapes=PACKED)
CASES["attention_cross_masks"] = attention_case(tuple(SEPARATE), True, masks=((2, 3), (4, 3)),
                                                shapes=SEPARATE)
CASES["attention_cross_per_sample_mask"] = attention_case(
    tuple(SEPARATE), True, masks=((3,), (2, 4, 3)), shapes=SEPARATE)
CASES["attention_multi_query_rope"] = attention_case(tuple(LLAMA), True, kv_heads=1,
                                                     rope_theta=100.0, shapes=LLAMA, embed=8)
CASES["attention_grouped_rope_causal"] = attention_case(
    tuple(LLAMA_SELF), False, kv_heads=2, causal=True, rope_theta=100.0, shapes=LLAMA_SELF, embed=8)
CASES["scaled_dot_product_grouped"] = Case(
    scaled_dot_product, lambda rng: [rng.standard_normal((2, 5, 4, 3)),
                                     rng.standard_normal((2, 6, 2, 3)),
                                     rng.standard_normal((2, 6, 2, 3)),
                                     rng.standard_normal((2, 6)), rng.standard_normal((5, 6))],
    lambda q, k, v, pad, mask: scaled_dot_product(q, k, v, pad, mask, causal=True), atol=1e-7)
# the backward recomputes the probabilities and must apply the same dropout mask again
CASES["scaled_dot_product_dropout"] = Case(
    scaled_dot_product, lambda rng: [rng.standard_normal((2, 5, 4, 3)),
                                     rng.standard_normal((2, 6, 2, 3)),
                                     rng.standard_normal((2, 6, 2, 3)), None, None],
    lambda q, k, v, pad, mask: scaled_dot_product(q, k, v, pad, mask, dropout=0.4, train=True,
                                                  rng=np.random.default_rng(0)), atol=1e-7)
CASES["rope"] = Case(rope, normal(2, 5, 3, 4), lambda x: rope(x, theta=50.0))
CASES["rms_norm"] = Case(rms_norm, lambda rng: [rng.standard_normal((2, 3, 5)),
                                                rng.standard_normal(5)],
                         lambda x, w: rms_norm(x, w, eps=1e-6))
CASES["rms_norm_no_weight"] = Case(rms_norm, lambda rng: [rng.standard_normal((2, 3, 5)), None],
                                   lambda x, w: rms_norm(x, w, eps=None))

CASES["linear"] = Case(linear, lambda rng: [rng.standard_normal((2, 3, 4)),
                                            rng.standard_normal((5, 4)), rng.standard_normal(5)])
CASES["linear_no_bias"] = Case(linear, lambda rng: [rng.standard_normal((2, 4)),
                                                    rng.standard_normal((5, 4)), None])
CASES["linear_vector"] = Case(linear, lambda rng: [rng.standard_normal(4),
                                                   rng.standard_normal((3, 4)),
                                                   rng.standard_normal(3)])
CASES["embedding"] = Case(embedding, lambda rng: [rng.integers(0, 5, (3, 4)),
                                                  rng.standard_normal((5, 3))])
CASES["embedding_3d_indices"] = Case(embedding, lambda rng: [rng.integers(0, 4, (2, 3, 2)),
                                                             rng.standard_normal((4, 2))])
for label, p, train in [("train", 0.4, True), ("eval", 0.4, False), ("p_one", 1.0, True)]:
    # a fresh generator with the same seed at every call: the same mask for every probe
    CASES[f"dropout_{label}"] = Case(
        dropout, normal(4, 5),
        lambda x, p=p, train=train: dropout(x, p=p, train=train, rng=np.random.default_rng(13)))

for label, train in [("train", True), ("eval", False)]:
    # only x's shape is used: x gets no gradient
    CASES[f"noise_{label}"] = Case(
        noise, normal(4, 5),
        lambda x, train=train: noise(x, train=train, rng=np.random.default_rng(13)),
        differentiable=frozenset())


# --- convolution and pooling -------------------------------------------------------------


def convolution(nd, has_bias, groups=2, stride=(2, 1), padding=((1, 2), (0, 1)),
                dilation=(1, 2), channels=(4, 2)):
    attrs = {"stride": stride[:nd], "padding": padding[:nd], "dilation": dilation[:nd],
             "groups": groups}
    in_channels, out_channels = channels
    kernel = {1: conv1d, 2: conv2d}[nd]

    def arrays(rng):
        return [rng.standard_normal((2, in_channels, *(5, 4)[:nd])),
                rng.standard_normal((out_channels, in_channels // groups, *(3, 2)[:nd])),
                rng.standard_normal(out_channels) if has_bias else None]

    return Case(kernel, arrays, lambda x, w, b: kernel(x, w, b, **attrs))


for nd in (1, 2):
    CASES[f"conv{nd}d"] = convolution(nd, True)
    CASES[f"conv{nd}d_no_bias"] = convolution(nd, False)
CASES["conv2d_depthwise"] = convolution(2, True, groups=3, stride=(2, 2),
                                        padding=((1, 1), (1, 1)), dilation=(1, 1),
                                        channels=(3, 6))

POOLS = {
    "max_pool2d": (max_pool2d, {"kernel": (3, 2), "stride": (1, 2),
                                "padding": ((1, 0), (1, 1))}),
    "max_pool2d_stride_2": (max_pool2d, {"kernel": (2, 2), "stride": (2, 2),
                                         "padding": ((0, 0), (0, 0))}),
    "avg_pool2d": (avg_pool2d, {"kernel": (3, 2), "stride": (1, 2), "padding": ((1, 0), (1, 1))}),
    "max_pool1d": (max_pool1d, {"kernel": (3,), "stride": (2,), "padding": ((1, 1),)}),
    "avg_pool1d": (avg_pool1d, {"kernel": (3,), "stride": (2,), "padding": ((0, 1),)}),
    "adaptive_avg_pool2d": (adaptive_avg_pool2d, {"output_size": (3, 2)}),
    "global_avg_pool2d": (adaptive_avg_pool2d, {"output_size": 1}),
    "adaptive_avg_pool1d": (adaptive_avg_pool1d, {"output_size": (4,)}),
}
for name, (kernel, attrs) in POOLS.items():
    shape = (2, 2, 5, 6) if kernel in (max_pool2d, avg_pool2d, adaptive_avg_pool2d) else (2, 2, 5)
    CASES[name] = Case(kernel, normal(*shape), lambda x, k=kernel, a=attrs: k(x, **a))


# --- normalisation -----------------------------------------------------------------------


def batch_normalisation(shape, train, affine=True):
    def arrays(rng):
        channels = shape[1]
        return [rng.standard_normal(shape) * 2 + 0.5,
                rng.standard_normal(channels) if affine else None,
                rng.standard_normal(channels) if affine else None,
                rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)]

    def call(x, weight, bias, running_mean, running_var):
        # copies: training updates the buffers, which must not drift between probes
        return batch_norm(x, weight, bias, running_mean.copy(), running_var.copy(), train=train)

    return Case(batch_norm, arrays, call, frozenset({0, 1, 2}) if affine else frozenset({0}))


for shape in [(6, 3), (4, 3, 5), (3, 2, 4, 5)]:
    for train in (True, False):
        CASES[f"batch_norm_{len(shape)}d_{'train' if train else 'eval'}"] = batch_normalisation(
            shape, train)
CASES["batch_norm_no_affine"] = batch_normalisation((4, 3, 5), True, affine=False)


def layer_normalisation(normalized_ndim, affine):
    normalized = (2, 3, 4)[3 - normalized_ndim:]

    def arrays(rng):
        return [rng.standard_normal((2, 3, 4)),
                rng.standard_normal(normalized) if affine else None,
                rng.standard_normal(normalized) if affine else None]

    return Case(layer_norm, arrays,
                lambda *a: layer_norm(*a, normalized_ndim=normalized_ndim), atol=1e-7)


for normalized_ndim in (1, 2):
    for affine in (True, False):
        CASES[f"layer_norm_{normalized_ndim}d{'' if affine else '_no_affine'}"] = (
            layer_normalisation(normalized_ndim, affine))


# --- elementwise, comparisons, reductions, concat -----------------------------------------


def positive(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def away_from_zero(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def gaussian(*shape):
    return lambda rng: rng.standard_normal(shape)


def operands(*samplers):
    """Arguments drawn by samplers; plain numbers pass as they are (they get no gradient)."""
    return lambda rng: [s(rng) if callable(s) else s for s in samplers]


BINARY = {"add": (ew.add, gaussian), "sub": (ew.sub, gaussian), "mul": (ew.mul, gaussian),
          "div": (ew.div, away_from_zero), "pow": (ew.pow, gaussian),
          "maximum": (ew.maximum, gaussian), "minimum": (ew.minimum, gaussian)}
for name, (kernel, second) in BINARY.items():
    first = positive if name == "pow" else gaussian
    CASES[f"{name}_broadcast_row"] = Case(kernel, operands(first(2, 3), second(3)))
    CASES[f"{name}_broadcast_outer"] = Case(kernel, operands(first(2, 1), second(1, 3)))

def sums_off_the_kink(rng):
    """Two operands whose sum stays clear of relu's kink at 0."""
    a, b = rng.standard_normal((2, 3, 5))
    a[np.abs(a + b) < 1e-2] += 0.5
    return [a, b]


CASES["add_relu"] = Case(ew.add_relu, sums_off_the_kink)
CASES["add_relu_broadcast"] = Case(ew.add_relu, lambda rng: [
    rng.standard_normal((2, 3)) + 3, rng.standard_normal(3)])
CASES["silu_mul"] = Case(ew.silu_mul, operands(gaussian(3, 5), gaussian(3, 5)))
CASES["silu_mul_broadcast"] = Case(ew.silu_mul, operands(gaussian(2, 3), gaussian(3)))

NUMBER_OPERANDS = {
    "x + 2": (ew.add, [gaussian(3, 4), 2.0]),
    "2 - x": (ew.sub, [2.0, gaussian(3, 4)]),
    "x * 0.5": (ew.mul, [gaussian(3, 4), 0.5]),
    "1 / x": (ew.div, [1.0, away_from_zero(3, 4)]),
    "x / 4": (ew.div, [gaussian(3, 4), 4.0]),
    "x ^ 2": (ew.pow, [gaussian(3, 4), 2]),
    "x ^ 3.0": (ew.pow, [gaussian(3, 4), 3.0]),
    "x ^ 0.5": (ew.pow, [positive(3, 4), 0.5]),
    "x ^ -1.5": (ew.pow, [positive(3, 4), -1.5]),
    "x ^ 0": (ew.pow, [gaussian(3, 4), 0]),
    "2 ^ x": (ew.pow, [2.0, gaussian(3, 4)]),
    "maximum(x, 0)": (ew.maximum, [gaussian(3, 4), 0.0]),
    "minimum(x, 1)": (ew.minimum, [gaussian(3, 4), 1.0]),
}
for name, (kernel, samplers) in NUMBER_OPERANDS.items():
    CASES[name] = Case(kernel, operands(*samplers))

UNARY = {
    "neg": (ew.neg, gaussian, ew.neg), "abs": (ew.abs, gaussian, ew.abs),
    "exp": (ew.exp, gaussian, ew.exp), "log": (ew.log, positive, ew.log),
    "sqrt": (ew.sqrt, positive, ew.sqrt),
    "clip": (ew.clip, gaussian, lambda x: ew.clip(x, lo=-0.5, hi=0.7)),
    "clip_lo": (ew.clip, gaussian, lambda x: ew.clip(x, lo=0.1)),
    "clip_hi": (ew.clip, gaussian, lambda x: ew.clip(x, hi=-0.2)),
}
for name, (kernel, sample, call) in UNARY.items():
    CASES[name] = Case(kernel, operands(sample(3, 4)), call)


def mask(*shape):
    return lambda rng: rng.random(shape) < 0.5


CASES["where"] = Case(ew.where, operands(mask(2, 1, 3), gaussian(2, 3), gaussian(3)))
CASES["where_number_branch"] = Case(ew.where, operands(mask(4, 3), gaussian(4, 3), 0.5))
for name in ("lt", "le", "gt", "ge", "eq", "ne"):
    # a mask has no gradient: check_gradients asserts None for both operands
    CASES[name] = Case(getattr(ew, name), operands(gaussian(2, 3), gaussian(3)),
                       differentiable=frozenset())

for name, kernel in {"sum": ew.sum, "mean": ew.mean, "max": ew.max}.items():
    for axis in (None, 1, -1, (0, 2)):
        for keepdims in (False, True):
            CASES[f"{name}_axis_{axis}{'_keepdims' * keepdims}"] = Case(
                kernel, normal(2, 3, 2),
                lambda x, k=kernel, a=axis, keep=keepdims: k(x, axis=a, keepdims=keep))
CONCATS = {1: operands(gaussian(2, 1, 3), gaussian(2, 2, 3), gaussian(2, 3, 3)),
           -1: operands(gaussian(2, 3, 1), gaussian(2, 3, 2))}
for axis, arrays in CONCATS.items():
    CASES[f"concat_axis_{axis}"] = Case(ew.concat, arrays,
                                        lambda *xs, a=axis: ew.concat(xs, axis=a))


# --- shape kernels: transpose, permute, slicing, stack, pad, matmul ----------------------

CASES["transpose"] = Case(shape_kernels.transpose, normal(2, 3, 4),
                          lambda x: shape_kernels.transpose(x, axis0=0, axis1=2))
CASES["permute"] = Case(shape_kernels.permute, normal(2, 3, 4),
                        lambda x: shape_kernels.permute(x, axes=(1, 2, 0)))
CASES["slice_axis_step_2"] = Case(shape_kernels.slice_axis, normal(2, 7, 3),
                                  lambda x: shape_kernels.slice_axis(x, axis=1, start=1, stop=-1, step=2))
CASES["stack_axis_1"] = Case(shape_kernels.stack, operands(gaussian(2, 3), gaussian(2, 3)),
                             lambda *xs: shape_kernels.stack(xs, axis=1))
CASES["pad"] = Case(shape_kernels.pad, normal(2, 3, 4),
                    lambda x: shape_kernels.pad(x, widths=((0, 0), (1, 2), (3, 0)), value=0.5))
for left, right in [((2, 3, 4), (4, 5)), ((4,), (2, 4, 3)), ((2, 1, 3, 4), (3, 4, 2)),
                    ((3, 4), (4,))]:
    CASES[f"matmul_{left}_{right}"] = Case(shape_kernels.matmul, operands(gaussian(*left),
                                                                 gaussian(*right)))


# --- losses ------------------------------------------------------------------------------


def class_indices(rng):
    return [rng.standard_normal((3, 2, 4)), np.array([[0, 3], [-100, 1], [2, 2]])]


def class_probabilities(rng):
    return [rng.standard_normal((3, 2, 4)), rng.dirichlet(np.ones(4), (3, 2))]


for smoothing in (0.0, 0.3):
    for label, arrays in [("indices", class_indices), ("probabilities", class_probabilities)]:
        CASES[f"cross_entropy_{label}_smoothing_{smoothing}"] = Case(
            losses.cross_entropy, arrays,
            lambda *a, s=smoothing: losses.cross_entropy(*a, label_smoothing=s), atol=1e-7)
CASES["cross_entropy_ignore_index_2"] = Case(
    losses.cross_entropy, lambda rng: [rng.standard_normal((5, 3)), np.array([2, 0, 1, 2, 1])],
    lambda *a: losses.cross_entropy(*a, ignore_index=2), atol=1e-7)

CASES["mse"] = Case(losses.mse, operands(gaussian(3, 4), gaussian(3, 4)), atol=1e-7)
CASES["mse_integer_target"] = Case(
    losses.mse, lambda rng: [rng.standard_normal(4), rng.integers(-2, 3, 4)], atol=1e-7)
CASES["l1"] = Case(losses.l1, operands(gaussian(3, 4), gaussian(3, 4)), atol=1e-7)
CASES["binary_cross_entropy"] = Case(
    losses.binary_cross_entropy, lambda rng: [rng.uniform(0.02, 0.98, (3, 4)),
                                              rng.random((3, 4))], atol=1e-7)
CASES["binary_cross_entropy_with_logits"] = Case(
    losses.binary_cross_entropy_with_logits, lambda rng: [rng.standard_normal((3, 4)) * 2,
                                                          rng.random((3, 4))], atol=1e-7)

WEIGHTS = [0.5, 2.0, 1.0, 3.0]
for reduction in ("sum", "none"):
    for label, arrays in [("indices", class_indices), ("probabilities", class_probabilities)]:
        CASES[f"cross_entropy_{label}_weighted_{reduction}"] = Case(
            losses.cross_entropy, arrays,
            lambda *a, r=reduction: losses.cross_entropy(*a, weight=WEIGHTS, reduction=r,
                                                         label_smoothing=0.2), atol=1e-7)
    CASES[f"mse_{reduction}"] = Case(
        losses.mse, operands(gaussian(3, 4), gaussian(3, 4)),
        lambda *a, r=reduction: losses.mse(*a, reduction=r), atol=1e-7)
CASES["cross_entropy_indices_weighted_mean"] = Case(
    losses.cross_entropy, class_indices,
    lambda *a: losses.cross_entropy(*a, weight=WEIGHTS, label_smoothing=0.1), atol=1e-7)
CASES["nll_weighted"] = Case(
    losses.nll, class_indices, lambda *a: losses.nll(*a, weight=WEIGHTS), atol=1e-7)
CASES["nll_none"] = Case(losses.nll, class_indices,
                         lambda *a: losses.nll(*a, reduction="none"), atol=1e-7)
for log_target in (False, True):
    CASES[f"kl_div_log_target_{log_target}"] = Case(
        losses.kl_div, lambda rng, lt=log_target: [
            rng.standard_normal((3, 4)),
            np.log(rng.dirichlet(np.ones(4), 3)) if lt else rng.dirichlet(np.ones(4), 3)],
        lambda *a, lt=log_target: losses.kl_div(*a, reduction="batchmean", log_target=lt),
        atol=1e-7)
CASES["huber"] = Case(losses.huber, operands(gaussian(3, 4), gaussian(3, 4)),
                      lambda *a: losses.huber(*a, delta=0.6), atol=1e-7)
CASES["smooth_l1"] = Case(losses.smooth_l1, operands(gaussian(3, 4), gaussian(3, 4)),
                          lambda *a: losses.smooth_l1(*a, beta=0.6), atol=1e-7)
CASES["binary_cross_entropy_with_logits_pos_weight"] = Case(
    losses.binary_cross_entropy_with_logits,
    lambda rng: [rng.standard_normal((3, 4)) * 2, rng.random((3, 4))],
    lambda *a: losses.binary_cross_entropy_with_logits(*a, pos_weight=[0.5, 2.0, 1.0, 3.0],
                                                       reduction="sum"), atol=1e-7)


# --- decoders: transposed convolution, resampling, group and instance norm, pooling options --


def transposed_convolution(nd, has_bias, groups=2, stride=(2, 1), padding=(1, 0),
                           output_padding=(1, 1), dilation=(1, 2), kernel_size=(3, 2)):
    attrs = {"stride": stride[:nd], "padding": padding[:nd],
             "output_padding": output_padding[:nd], "dilation": dilation[:nd], "groups": groups}
    kernel = {1: conv_transpose1d, 2: conv_transpose2d}[nd]

    def arrays(rng):
        return [rng.standard_normal((2, 4, *(3, 4)[:nd])),
                rng.standard_normal((4, 6 // groups, *kernel_size[:nd])),
                rng.standard_normal(6) if has_bias else None]

    return Case(kernel, arrays, lambda x, w, b: kernel(x, w, b, **attrs))


for nd in (1, 2):
    CASES[f"conv_transpose{nd}d"] = transposed_convolution(nd, True)
    CASES[f"conv_transpose{nd}d_no_bias"] = transposed_convolution(nd, False, groups=1)
CASES["conv_transpose2d_unet_up"] = transposed_convolution(  # the windows tile the output
    2, True, groups=1, stride=(2, 2), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1),
    kernel_size=(2, 2))
CASES["conv_transpose1d_tiling_groups"] = transposed_convolution(
    1, False, stride=(3,), padding=(0,), output_padding=(0,), dilation=(1,), kernel_size=(3,))

DECODER_POOLS = {
    "max_pool2d_ceil": (max_pool2d, {"kernel": (3, 3), "stride": (2, 2),
                                     "padding": ((0, 0), (1, 1)), "ceil_mode": True}),
    "avg_pool2d_ceil": (avg_pool2d, {"kernel": (3, 2), "stride": (2, 2),
                                     "padding": ((1, 1), (0, 0)), "ceil_mode": True}),
    "avg_pool1d_exclude_pad": (avg_pool1d, {"kernel": (3,), "stride": (2,),
                                            "padding": ((1, 1),), "count_include_pad": False}),
    "adaptive_max_pool2d": (adaptive_max_pool2d, {"output_size": (3, 4)}),
    "adaptive_max_pool1d": (adaptive_max_pool1d, {"output_size": (3,)}),
}
for name, (kernel, attrs) in DECODER_POOLS.items():
    shape = (2, 2, 5) if kernel.__name__.endswith("1d") else (2, 2, 6, 7)
    CASES[name] = Case(kernel, normal(*shape), lambda x, k=kernel, a=attrs: k(x, **a))

UPSAMPLES = {
    "nearest_2d_scale": ((2, 2, 3, 4), {"scale_factor": 2.0}),
    "nearest_1d_size": ((2, 2, 5), {"size": (8,)}),
    "linear_1d_scale": ((2, 2, 4), {"scale_factor": 1.5, "mode": "linear"}),
    "bilinear_2d": ((2, 2, 3, 4), {"scale_factor": 2.0, "mode": "bilinear"}),
    "bilinear_2d_align_corners": ((2, 2, 3, 4), {"size": (5, 7), "mode": "bilinear",
                                                 "align_corners": True}),
    "bilinear_2d_per_axis": ((2, 2, 3, 4), {"scale_factor": (2.0, 1.5), "mode": "bilinear"}),
    "nearest_2d_per_axis": ((2, 2, 3, 4), {"scale_factor": (3.0, 2.0)}),
}
for name, (shape, attrs) in UPSAMPLES.items():
    CASES[f"upsample_{name}"] = Case(upsample, normal(*shape),
                                     lambda x, a=attrs: upsample(x, **a))
CASES["pixel_shuffle"] = Case(pixel_shuffle, normal(2, 8, 2, 3),
                              lambda x: pixel_shuffle(x, upscale=2))
CASES["pixel_unshuffle"] = Case(pixel_unshuffle, normal(2, 2, 4, 6),
                                lambda x: pixel_unshuffle(x, downscale=2))


def group_normalisation(shape, affine, groups):
    def arrays(rng):
        channels = shape[1]
        return [rng.standard_normal(shape) * 2 + 0.5,
                rng.standard_normal(channels) if affine else None,
                rng.standard_normal(channels) if affine else None]

    return Case(group_norm, arrays, lambda *a: group_norm(*a, groups=groups), atol=1e-7)


def instance_normalisation(affine, tracked, use_input_stats):
    def arrays(rng):
        return [rng.standard_normal((2, 3, 4)) * 2 + 0.5,
                rng.standard_normal(3) if affine else None,
                rng.standard_normal(3) if affine else None,
                rng.standard_normal(3) if tracked else None,
                rng.uniform(0.5, 2.0, 3) if tracked else None]

    def call(x, weight, bias, running_mean, running_var):
        # copies: the running buffers move in training and must not drift between probes
        def copy(a):
            return None if a is None else a.copy()

        return instance_norm(x, weight, bias, copy(running_mean), copy(running_var),
                             use_input_stats=use_input_stats)

    return Case(instance_norm, arrays, call, frozenset({0, 1, 2}), atol=1e-7)


for affine in (True, False):
    suffix = "" if affine else "_no_affine"
    CASES[f"group_norm{suffix}"] = group_normalisation((2, 6, 3, 2), affine, groups=3)
    CASES[f"instance_norm{suffix}"] = instance_normalisation(affine, False, True)
CASES["group_norm_1d"] = group_normalisation((3, 4, 5), True, groups=2)
CASES["instance_norm_tracked_train"] = instance_normalisation(True, True, True)
CASES["instance_norm_tracked_eval"] = instance_normalisation(True, True, False)


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_central_differences(name):
    case = CASES[name]
    arrays = case.arrays(np.random.default_rng(sum(map(ord, name))))  # a fixed seed per case
    check_gradients(case.call or case.kernel, arrays, case.differentiable, atol=case.atol)


# --- coverage ----------------------------------------------------------------------------

# Public functions of the kernel modules that are not kernels (no `(out, backward)`).
NOT_KERNELS = {
    "attention.rotary_tables",
    "dense.affine", "dense.column_sums",
    "norm_layer.flat_parameter", "norm_layer.normalise_rows", "norm_layer.normalise_rows_backward",
    "fused.warm_up", "fused.activation_code",
    # fused's loops in parts (the kernels' cases run them; tests/numpy/test_parallel.py
    # compares them with the loops whole) and the workers that run the parts
    "parallel.activation", "parallel.adam_update", "parallel.batch_norm_backward",
    "parallel.batch_norm_forward", "parallel.exp_rows",
    "parallel.layer_norm_backward", "parallel.layer_norm_forward",
    "parallel.warm_up", "workers.float_bits", "workers.parts", "workers.run", "workers.in_parts",
    "parallel.add", "parallel.add_relu", "parallel.relu_gradient", "parallel.sgd_update",
    "parallel.rotate_halves", "parallel.silu_mul", "parallel.silu_mul_gradient",
    "parallel.channel_bias", "parallel.channel_bias_gradient", "parallel.fill_rows",
    "parallel.repeat_rows", "parallel.sum_row_blocks",
    # float32 only: test_kernels_decoders.py's compiled interpolation against torch
    "parallel.interpolate", "parallel.interpolate_gradient",
    # float32 only: test_kernels_activations.py's softmax rows against torch
    "parallel.softmax_rows", "parallel.softmax_rows_gradient",
    # float32 only: test_kernels_decoders.py's group norm against torch
    "parallel.group_norm_forward", "parallel.group_norm_backward",
    # a strided convolution's stride phases: test_parallel.py against NumPy's copy, the
    # convolutions on them here and in test_kernels_conv.py against torch
    "parallel.stride_phases",
    # where a weight gradient is written: test_interpreter.py's slot tests
    "gradient_slots.offered", "gradient_slots.empty",
    # a convolution's bias and fused relu: conv2d's cases here (with a bias), and
    # test_kernels_conv.py against torch with the relu; an empty batch's convolution:
    # test_kernels_conv.py against torch's shapes
    "conv.with_bias", "conv.no_samples",
    # wide 3x3 layers by Winograd's transforms, float32 only: test_winograd.py against torch
    "winograd.conv", "winograd.backward", "winograd.applies", "winograd.forward_pays",
    "winograd.load",
    "blas.accumulates", "blas.add_product", "blas.transpose", "blas.address",
    # products on the tiles where BLAS runs narrow vectors: test_gemm.py against float64
    "gemm.matmul", "gemm.add_product", "gemm.load", "gemm.matmul_on_panels", "gemm.panels_pay",
    # conv2d's products and frames: test_tiled.py, test_kernels_conv.py against torch
    "tiled.products", "tiled.sums", "tiled.load", "tiled.aligned_empty", "tiled.direct_products",
    "tiled.direct_sums", "tiled.sums_are_products",
    "frames.copy", "frames.applies", "frames.load",
    # attention's forward and backward in compiled jobs (the float64 cases
    # here take NumPy's): test_kernels_attention.py against torch
    "attention_tiles.forward", "attention_tiles.backward", "attention_tiles.applies",
    "attention_tiles.load",
    "columns.gather", "columns.gather_panels", "columns.scatter", "columns.applies",
    "columns.load",  # test_columns.py
    # the float32 LSTM's steps (float64 takes NumPy's passes, whose cases are here):
    # test_kernels_recurrent.py against torch and those passes
    "lstm_steps.direction", "lstm_steps.load", "tiled.panels",
    "tiled.empty_panels", "tiled.aligned_array", "gru_steps.load",
    "recurrent_cells.feature_major",  # a layout: the recurrent layers' cases here
    # max and average pooling's compiled loops, the float32 path of max_pool1d/2d,
    # avg_pool1d/2d and adaptive max pooling (their cases check float64): test_kernels_conv.py and test_kernels_decoders.py
    # against torch
    "max_pool.max_pool", "max_pool.applies", "max_pool.load", "max_pool.adaptive_max_pool",
    "avg_pool.avg_pool", "avg_pool.applies", "avg_pool.load",
    "windows.check_spatial", "windows.crop_padding", "windows.crop_to_batch_first",
    "windows.kernel_offsets", "windows.offset_index", "windows.output_size", "windows.pad_spatial",
    "windows.padded_output_size",
    "windows.scatter_windows", "windows.pad_into_phases", "windows.gather_from_phases",
    "windows.phase_reads", "windows.phase_regions",
    "elementwise.unbroadcast", "elementwise.sum_of",  # add's sum: add's cases
    "compile_cache.install", "compile_cache.stamp",  # numba's cache key: test_compile_cache.py
}


def public_functions():
    """'module.name' -> function for every public function defined in a kernel module."""
    found = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, value in vars(module).items():
            if (inspect.isfunction(value) and not name.startswith("_")
                    and value.__module__ == module.__name__):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_public_kernel_has_a_gradient_case():
    functions = public_functions()
    checked = {case.kernel for case in CASES.values()}
    missing = sorted(name for name, function in functions.items()
                     if name not in NOT_KERNELS and function not in checked)
    assert not missing, f"kernels without a case in CASES: {missing}"
    assert NOT_KERNELS <= functions.keys(), "NOT_KERNELS names a function that is gone"
    assert len(functions) - len(NOT_KERNELS) >= 45  # the discovery itself finds the kernels
