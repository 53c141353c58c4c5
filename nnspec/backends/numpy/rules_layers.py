"""Hand-written NumPy rules of the layer families: convolution and pooling, normalisation,
embeddings and positions, attention and recurrence (see `rules.py` for the rule contract)."""

from __future__ import annotations

import math

import numpy as np

from nnspec.backends.numpy.kernels import (
    attention,
    conv,
    norm_batch,
    norm_group,
    norm_layer,
    pool,
    recurrent,
)
from nnspec.backends.numpy.rules_base import HAND_WRITTEN, as_tuple, inputs_only, rule, with_params
from nnspec.ir.ops import OPS, conv_pads, tensor_keywords

# ---- convolution and pooling ---------------------------------------------------------------


def _conv(spatial, kernel_fn):
    def run(node, ins, params, ctx):
        a = node.attrs
        out = kernel_fn(ins[0], params["weight"], params.get("bias"),
                        stride=as_tuple(a.stride, spatial), padding=conv_pads(a, spatial),
                        dilation=as_tuple(a.dilation, spatial), groups=a.groups,
                        input_grad=ctx.input_grad, activation=ctx.activation)
        return with_params(out, 1, ("weight", "bias"))

    return run


HAND_WRITTEN["conv1d"] = _conv(1, conv.conv1d)
HAND_WRITTEN["conv2d"] = _conv(2, conv.conv2d)


def _pool(kind):
    def run(node, ins, params, ctx):
        x = ins[0]
        spatial = x.ndim - 2
        a = node.attrs
        kernel = as_tuple(a.kernel, spatial)
        stride = as_tuple(a.stride if a.stride is not None else kernel, spatial)
        padding = tuple((p, p) for p in as_tuple(a.padding, spatial))
        fn = getattr(pool, f"{kind}_pool{spatial}d")
        counting = {"count_include_pad": a.count_include_pad} if kind == "avg" else {}
        return inputs_only(fn(x, kernel=kernel, stride=stride, padding=padding,
                               ceil_mode=a.ceil_mode, **counting))

    return run


for _name in ("maxpool", "maxpool1d", "maxpool2d"):
    HAND_WRITTEN[_name] = _pool("max")
for _name in ("avgpool", "avgpool1d", "avgpool2d"):
    HAND_WRITTEN[_name] = _pool("avg")


def _adaptive(kind):
    def run(node, ins, params, ctx):
        x = ins[0]
        spatial = x.ndim - 2
        fn = getattr(pool, f"adaptive_{kind}_pool{spatial}d")
        return inputs_only(fn(x, output_size=as_tuple(node.attrs.size, spatial)))

    return run


HAND_WRITTEN["adaptive_avgpool"] = _adaptive("avg")
HAND_WRITTEN["adaptive_maxpool"] = _adaptive("max")


@rule("global_avgpool")
def _global_avgpool(node, ins, params, ctx):
    x = ins[0]
    axes = tuple(range(2, x.ndim))
    count = math.prod(x.shape[2:])
    out = x.mean(axis=axes) if axes else x.copy()

    def backward(d_out):
        dx = np.broadcast_to((d_out / count).reshape(d_out.shape + (1,) * len(axes)), x.shape)
        return (np.ascontiguousarray(dx),), {}

    return out, backward


# ---- normalisation -------------------------------------------------------------------------


@rule("batchnorm")
def _batchnorm(node, ins, params, ctx):
    a = node.attrs
    mean_name, var_name = node.params["running_mean"], node.params["running_var"]
    out = norm_batch.batch_norm(ins[0], params.get("weight"), params.get("bias"),
                                ctx.buffers[mean_name], ctx.buffers[var_name], train=ctx.train,
                                momentum=a.momentum, eps=a.eps, activation=ctx.activation)
    if ctx.train:
        ctx.buffers[node.params["num_batches_tracked"]] += 1
    return with_params(out, 1, ("weight", "bias"))


@rule("layernorm")
def _layernorm(node, ins, params, ctx):
    a = node.attrs
    out = norm_layer.layer_norm(ins[0], params.get("weight"), params.get("bias"),
                                normalized_ndim=a.dims, eps=a.eps)
    return with_params(out, 1, ("weight", "bias"))


@rule("instancenorm")
def _instancenorm(node, ins, params, ctx):
    """Running statistics only with track_running_stats; torch's InstanceNorm never counts
    `num_batches_tracked` up."""
    a = node.attrs
    tracked = a.track_running_stats
    mean = ctx.buffers[node.params["running_mean"]] if tracked else None
    var = ctx.buffers[node.params["running_var"]] if tracked else None
    out = norm_group.instance_norm(ins[0], params.get("weight"), params.get("bias"), mean, var,
                                   use_input_stats=ctx.train or not tracked,
                                   momentum=a.momentum, eps=a.eps)
    return with_params(out, 1, ("weight", "bias"))


# ---- embeddings and positions --------------------------------------------------------------


def _length(node, ins) -> int:
    return ins[0].shape[1] if ins else node.attrs.max_len


@rule("positions")
def _positions(node, ins, params, ctx):
    steps = _length(node, ins)
    weight = params["weight"]
    out = weight[:steps]

    def backward(d_out):
        d_weight = np.zeros_like(weight)
        d_weight[:steps] = d_out
        return (None,) * len(ins), {"weight": d_weight}

    return out, backward


def sinusoidal_table(steps: int, dim: int) -> np.ndarray:
    """sin on even features, cos on odd ones, wavelengths 2*pi .. 10000*2*pi (Vaswani et al.)."""
    position = np.arange(steps, dtype=np.float64)[:, None]
    rate = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
    table = np.zeros((steps, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(position * rate)
    table[:, 1::2] = np.cos(position * rate[: dim // 2])
    return table.astype(np.float32)


@rule("sinusoidal")
def _sinusoidal(node, ins, params, ctx):
    out = sinusoidal_table(_length(node, ins), node.attrs.dim)
    return out, lambda d_out: ((None,) * len(ins), {})


# ---- attention and recurrence --------------------------------------------------------------


@rule("attention")
def _attention(node, ins, params, ctx):
    a = node.attrs
    given = tensor_keywords(OPS["attention"], a)
    memory = ins[1] if len(ins) - len(given) == 2 else None
    masks = {name: ins[i] for name, i in given.items()}
    out, backward = attention.attention(
        ins[0], memory, params, heads=a.heads, kv_heads=a.kv_heads or a.heads, causal=a.causal,
        dropout=a.dropout, rope_theta=a.rope_theta if a.rope else None, train=ctx.train,
        rng=ctx.rng, **masks)

    def rule_backward(d_out):
        dx, d_memory, d_params, d_padding, d_mask = backward(d_out)
        mask_grads = {"key_padding_mask": d_padding, "attn_mask": d_mask}
        inputs = (dx,) + ((d_memory,) if memory is not None else ())
        return inputs + tuple(mask_grads[name] for name in given), d_params

    return out, rule_backward


class ResultGrads(tuple):
    """The gradients of a multi-result op's tensors (None where one got none). The reverse
    pass adds the gradients a value gets from several consumers; these add result by
    result."""

    def __add__(self, other):
        return ResultGrads(b if a is None else a if b is None else a + b
                           for a, b in zip(self, other, strict=True))


@rule("result")
def _result(node, ins, params, ctx):
    index, count = node.attrs.index, len(ins[0])

    def backward(d_out):
        return (ResultGrads(d_out if i == index else None for i in range(count)),), {}

    return ins[0][index], backward


def _recurrent(mode):
    def run(node, ins, params, ctx):
        a = node.attrs
        x = ins[0]
        shared = x.ndim == 2  # one sequence (a position table) for every sample's states
        if shared:
            batch = next(state.shape[0] for state in ins[1:] if state.ndim == 3)
            x = np.broadcast_to(x, (batch, *x.shape))
        (output, *finals), backward = recurrent.rnn_states(
            x, tuple(ins[1:]), params, mode=mode, hidden=a.hidden, layers=a.layers,
            bidirectional=a.bidirectional, nonlinearity=a.get("nonlinearity", "tanh"),
            dropout=a.dropout, rng=ctx.rng if ctx.train else None)
        summary_backward = None
        if a.last:
            output, summary_backward = recurrent.last_step(output, hidden=a.hidden,
                                                           bidirectional=a.bidirectional)

        def run_backward(d_out):
            d_output, *d_finals = d_out if a.states else (d_out,)
            if d_output is not None and summary_backward is not None:
                (d_output,) = summary_backward(d_output)
            dx, *d_initial, d_params = backward(d_output, *d_finals)
            return (dx.sum(axis=0) if shared else dx, *d_initial), d_params

        return ((output, *finals) if a.states else output), run_backward

    return run


for _name in ("rnn", "lstm", "gru"):
    HAND_WRITTEN[_name] = _recurrent(_name)
