"""How each op of the catalogue runs in NumPy: a thin rule per op over the kernels.

A rule takes the node, its input arrays (batch first, PyTorch layout), its parameters by
local name and the run context, and returns `(out, backward)`; `backward(d_out)` returns
`(input_grads, param_grads)`. Per-sample dims of the IR (batch implicit) become array axes
here. Regular ops get a rule derived from their catalogue entry (`derived_rule`: the kernel
called on inputs, weights and attributes); the irregular ones below are written by hand and
win. `RULES` must cover every op of `nnspec.ir.ops.OPS` — a test checks it.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nnspec.backends.numpy.kernels import (
    activations,
    attention,
    conv,
    conv_transpose,
    dense,
    dropout,
    elementwise,
    embedding,
    losses,
    norm_batch,
    norm_group,
    norm_layer,
    pool,
    recurrent,
    resample,
    shape,
)
from nnspec.ir.graph import Node
from nnspec.ir.ops import OPS, OpDef, conv_pads, permutation, tensor_keywords


@dataclass
class Context:
    train: bool
    rng: np.random.Generator
    buffers: dict[str, np.ndarray]  # batchnorm running statistics, updated in place
    # False while running a node none of whose inputs needs a gradient (none depends on a
    # trainable parameter or on an input whose gradient is wanted): a kernel that takes
    # `input_grad` is told, and skips its input gradient (a first convolution's costs as much
    # as its weight gradient)
    input_grad: bool = True


def _tuple(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _axis(node: Node, dim: int) -> int:
    """A per-sample dim as an axis of the array (batch first when the tensor is batched)."""
    return dim + 1 if dim >= 0 and node.type.batched else dim


def _inputs_only(kernel_out):
    """Wrap a kernel whose backward returns only input gradients."""
    out, backward = kernel_out

    def rule_backward(d_out):
        return tuple(backward(d_out)), {}

    return out, rule_backward


def _with_params(kernel_out, n_inputs: int, names: tuple[str, ...]):
    """Wrap a kernel whose backward returns (inputs..., params...) in argument order."""
    out, backward = kernel_out

    def rule_backward(d_out):
        grads = backward(d_out)
        return tuple(grads[:n_inputs]), {n: g for n, g in zip(names, grads[n_inputs:])
                                        if g is not None}

    return out, rule_backward


Rule = Callable[[Node, list, dict, Context], tuple]


class _Rules(dict):
    """Hand-written rules, then derived ones. An op registered after import (a plugin's, a
    test's) has its rule derived when it is looked up, and remembered while its catalogue
    entry stays the same."""

    def __init__(self):
        super().__init__()
        self._late: dict[str, tuple[OpDef, Rule]] = {}

    def __missing__(self, op: str) -> Rule:
        opdef = OPS.get(op)
        seen = self._late.get(op)
        if seen is not None and seen[0] is opdef:
            return seen[1]
        derived = derived_rule(opdef) if opdef is not None else None
        if derived is None:
            raise KeyError(op)
        self._late[op] = (opdef, derived)
        return derived


RULES: dict[str, Rule] = _Rules()


def rule(*names):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn

    return register


# ---- feed-forward and shape --------------------------------------------------------------


def _reshape_to(x, shape):
    out = x.reshape(shape)

    def backward(d_out):
        return (d_out.reshape(x.shape),), {}

    return out, backward


@rule("flatten")
def _flatten(node, ins, params, ctx):
    return _reshape_to(ins[0], (ins[0].shape[0], -1))


@rule("reshape")
def _reshape(node, ins, params, ctx):
    """A symbolic dim (at most one, the shape rule checks) is the one NumPy works out."""
    dims = tuple(d if isinstance(d, int) else -1 for d in node.type.shape)
    return _reshape_to(ins[0], (ins[0].shape[0],) + dims)


@rule("select")
def _select(node, ins, params, ctx):
    x = ins[0]
    axis = _axis(node, node.attrs.dim)
    out = np.take(x, node.attrs.index, axis=axis)

    def backward(d_out):
        dx = np.zeros_like(x)
        index = [slice(None)] * x.ndim
        index[axis] = node.attrs.index
        dx[tuple(index)] = d_out
        return (dx,), {}

    return out, backward


# ---- convolution and pooling ---------------------------------------------------------------


def _conv(spatial, kernel_fn):
    def run(node, ins, params, ctx):
        a = node.attrs
        out = kernel_fn(ins[0], params["weight"], params.get("bias"),
                        stride=_tuple(a.stride, spatial), padding=conv_pads(a, spatial),
                        dilation=_tuple(a.dilation, spatial), groups=a.groups,
                        input_grad=ctx.input_grad)
        return _with_params(out, 1, ("weight", "bias"))

    return run


RULES["conv1d"] = _conv(1, conv.conv1d)
RULES["conv2d"] = _conv(2, conv.conv2d)


def _pool(kind):
    def run(node, ins, params, ctx):
        x = ins[0]
        spatial = x.ndim - 2
        a = node.attrs
        kernel = _tuple(a.kernel, spatial)
        stride = _tuple(a.stride if a.stride is not None else kernel, spatial)
        padding = tuple((p, p) for p in _tuple(a.padding, spatial))
        fn = getattr(pool, f"{kind}_pool{spatial}d")
        counting = {"count_include_pad": a.count_include_pad} if kind == "avg" else {}
        return _inputs_only(fn(x, kernel=kernel, stride=stride, padding=padding,
                               ceil_mode=a.ceil_mode, **counting))

    return run


for _name in ("maxpool", "maxpool1d", "maxpool2d"):
    RULES[_name] = _pool("max")
for _name in ("avgpool", "avgpool1d", "avgpool2d"):
    RULES[_name] = _pool("avg")


def _adaptive(kind):
    def run(node, ins, params, ctx):
        x = ins[0]
        spatial = x.ndim - 2
        fn = getattr(pool, f"adaptive_{kind}_pool{spatial}d")
        return _inputs_only(fn(x, output_size=_tuple(node.attrs.size, spatial)))

    return run


RULES["adaptive_avgpool"] = _adaptive("avg")
RULES["adaptive_maxpool"] = _adaptive("max")


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
                                momentum=a.momentum, eps=a.eps)
    if ctx.train:
        ctx.buffers[node.params["num_batches_tracked"]] += 1
    return _with_params(out, 1, ("weight", "bias"))


@rule("layernorm")
def _layernorm(node, ins, params, ctx):
    a = node.attrs
    out = norm_layer.layer_norm(ins[0], params.get("weight"), params.get("bias"),
                                normalized_ndim=a.dims, eps=a.eps)
    return _with_params(out, 1, ("weight", "bias"))


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
    return _with_params(out, 1, ("weight", "bias"))


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
    RULES[_name] = _recurrent(_name)


# ---- activations ---------------------------------------------------------------------------


def _softmax_like(fn):
    def run(node, ins, params, ctx):
        return _inputs_only(fn(ins[0], dim=_axis(node, node.attrs.dim)))

    return run


RULES["softmax"] = _softmax_like(activations.softmax)
RULES["log_softmax"] = _softmax_like(activations.log_softmax)


# ---- elementwise, merges, reductions -------------------------------------------------------


def align_batched(node: Node, in_types, arrays):
    """Per-sample broadcasting with the batch first: a batched operand of lower rank gets
    unit axes after its batch axis (NumPy alone would align it against the batch axis).
    Returns the arrays and a function that reshapes their gradients back."""
    rank = node.type.rank
    shapes = [a.shape for a in arrays]
    aligned = [a.reshape(a.shape[:1] + (1,) * (rank - t.rank) + a.shape[1:])
               if t.batched and t.rank < rank else a for a, t in zip(arrays, in_types)]

    def restore(grads):
        return tuple(g if g is None else g.reshape(shape) for g, shape in zip(grads, shapes))

    return aligned, restore


def needs_batch_of_one(op: OpDef, in_types) -> bool:
    """Layers written for batches (conv, pooling, batchnorm, recurrence, attention, reshapes)
    run on an unbatched input (e.g. a position table) as a batch of one."""
    return op.needs_batch and bool(in_types) and not any(t.batched for t in in_types)


@rule("clip")
def _clip(node, ins, params, ctx):
    return _inputs_only(elementwise.clip(ins[0], lo=node.attrs.min, hi=node.attrs.max))


def batch_shared(ins, batched_ndim: int):
    """Inputs joined with batched ones: a shared (unbatched) array, one axis short, is
    repeated for every sample; its gradient sums over the batch."""
    batch = next((a.shape[0] for a in ins if a.ndim == batched_ndim), None)
    if batch is None:
        return list(ins), lambda grads: tuple(grads)
    shared = [a.ndim < batched_ndim for a in ins]
    arrays = [np.broadcast_to(a, (batch,) + a.shape) if s else a for a, s in zip(ins, shared)]

    def restore(grads):
        return tuple(g.sum(axis=0) if s else g for g, s in zip(grads, shared))

    return arrays, restore


@rule("concat")
def _concat(node, ins, params, ctx):
    arrays, restore = batch_shared(ins, node.type.rank + node.type.batched)
    out, backward = elementwise.concat(arrays, axis=_axis(node, node.attrs.dim))
    return out, lambda d_out: (restore(backward(d_out)), {})


def _reduction(fn):
    def run(node, ins, params, ctx):
        a = node.attrs
        if a.dim is None:
            axis = None
        else:
            dims = (a.dim,) if isinstance(a.dim, int) else tuple(a.dim)
            axis = tuple(_axis(node, d) for d in dims)
        return _inputs_only(fn(ins[0], axis=axis, keepdims=a.keepdim))

    return run


RULES["mean"] = _reduction(elementwise.mean)
RULES["sum"] = _reduction(elementwise.sum)
RULES["max"] = _reduction(elementwise.max)


@rule("scalar")
def _scalar(node, ins, params, ctx):
    return np.asarray(node.attrs.value, dtype=np.float32), lambda d_out: ((), {})


# ---- losses --------------------------------------------------------------------------------


@rule("binary_cross_entropy")
def _bce(node, ins, params, ctx):
    a = node.attrs
    if a.logits:
        return _inputs_only(losses.binary_cross_entropy_with_logits(
            ins[0], ins[1], pos_weight=a.pos_weight, reduction=a.reduction))
    return _inputs_only(losses.binary_cross_entropy(ins[0], ins[1], reduction=a.reduction))


# ---- tensor ops: transpose, permute, slicing, stack, pad, learned parameters ---------------


def _axis_of(node: Node, dim: int, rank: int) -> int:
    """A per-sample dim of a `rank`-d sample as a non-negative array axis."""
    return dim % rank + (1 if node.type.batched else 0)


@rule("transpose")
def _transpose(node, ins, params, ctx):
    rank = node.type.rank
    return _inputs_only(shape.transpose(ins[0], axis0=_axis_of(node, node.attrs.dim0, rank),
                                        axis1=_axis_of(node, node.attrs.dim1, rank)))


@rule("permute")
def _permute(node, ins, params, ctx):
    dims = permutation(node.type.rank, node.attrs.dims)
    axes = (0, *(d + 1 for d in dims)) if node.type.batched else dims
    return _inputs_only(shape.permute(ins[0], axes=axes))


@rule("slice")
def _slice(node, ins, params, ctx):
    a = node.attrs
    return _inputs_only(shape.slice_axis(ins[0], axis=_axis_of(node, a.dim, node.type.rank),
                                         start=a.start, stop=a.stop, step=a.step))


@rule("stack")
def _stack(node, ins, params, ctx):
    arrays, restore = batch_shared(ins, node.type.rank + node.type.batched - 1)
    out, backward = shape.stack(arrays, axis=_axis_of(node, node.attrs.dim, node.type.rank))
    return out, lambda d_out: (restore(backward(d_out)), {})


@rule("pad")
def _pad(node, ins, params, ctx):
    x = ins[0]
    pads = (node.attrs.pads,) if isinstance(node.attrs.pads, int) else node.attrs.pads
    widths = [(0, 0)] * x.ndim
    for i in range(len(pads) // 2):
        widths[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    return _inputs_only(shape.pad(x, widths=tuple(widths), value=node.attrs.value))


@rule("parameter")
def _parameter(node, ins, params, ctx):
    return params[""], lambda d_out: ((), {"": d_out})


# ---- regular ops: rules derived from the catalogue -----------------------------------------

KERNEL_MODULES = (activations, attention, conv, dense, dropout, elementwise, embedding, losses,
                  norm_batch, norm_layer, pool, recurrent, shape,
                  conv_transpose, norm_group, resample)


def find_kernel(opdef: OpDef) -> Callable | None:
    """The kernel the catalogue names (`opdef.kernel`), else the kernel function named like
    the op; None when there is none."""
    reference = opdef.kernel or opdef.name
    if ":" in reference:
        module, _, name = reference.partition(":")
        return getattr(importlib.import_module(module), name)
    found = {id(f): f for m in KERNEL_MODULES
             if inspect.isfunction(f := getattr(m, reference, None))}
    if len(found) > 1:
        raise AssertionError(f"several kernels are called `{reference}`: name one in the "
                             f"catalogue entry of `{opdef.name}`")
    return next(iter(found.values()), None)


def derived_rule(opdef: OpDef) -> Rule | None:
    """The rule of a regular op: its kernel called on the inputs, then the weights (its next
    positional parameters, by local name), with its keyword-only parameters taken from the
    attributes of the same name (and `train`, `rng` for a random op). The signature is read
    once, here, not per call. A kernel with a keyword `input_grad` is told whether its
    inputs need a gradient. None for an op without a kernel or with a variable arity."""
    kernel = find_kernel(opdef)
    n_inputs, most = opdef.arity
    if kernel is None or most != n_inputs:
        return None
    parameters = inspect.signature(kernel).parameters.values()
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
    weights = tuple(positional[n_inputs:])
    keyword_only = [p for p in parameters if p.kind is p.KEYWORD_ONLY]
    kinds = {p.name: opdef.attr(p.name).kind for p in keyword_only if opdef.attr(p.name)}
    attrs = tuple(name for name, kind in kinds.items() if kind != "tensor")
    tensors = tuple(name for name, kind in kinds.items() if kind == "tensor")
    context = ("train", "rng") if opdef.random else ()
    told_input_grad = any(p.name == "input_grad" for p in keyword_only)
    unknown = [p.name for p in keyword_only
               if p.name not in attrs + tensors + context and p.default is p.empty]
    if unknown:
        raise AssertionError(f"the kernel of `{opdef.name}` takes {unknown}, which are neither "
                             "attributes of the op nor `train`/`rng` of a random op")
    if tensors:
        return _rule_with_tensor_keywords(opdef, kernel, weights, attrs, tensors,
                                          told_input_grad)
    if told_input_grad and not opdef.random:
        def run(node, ins, params, ctx):
            out = kernel(*ins, *[params.get(w) for w in weights],
                         **{a: node.attrs[a] for a in attrs}, input_grad=ctx.input_grad)
            return _with_params(out, n_inputs, weights)
    elif weights and attrs:
        def run(node, ins, params, ctx):
            out = kernel(*ins, *[params.get(w) for w in weights],
                         **{a: node.attrs[a] for a in attrs})
            return _with_params(out, n_inputs, weights)
    elif weights:
        def run(node, ins, params, ctx):
            return _with_params(kernel(*ins, *[params.get(w) for w in weights]), n_inputs,
                                weights)
    elif opdef.random:
        def run(node, ins, params, ctx):
            kwargs = {a: node.attrs[a] for a in attrs}
            return _inputs_only(kernel(*ins, **kwargs, train=ctx.train, rng=ctx.rng))
    elif attrs:
        def run(node, ins, params, ctx):
            return _inputs_only(kernel(*ins, **{a: node.attrs[a] for a in attrs}))
    else:
        def run(node, ins, params, ctx):
            return _inputs_only(kernel(*ins))
    return run


def _rule_with_tensor_keywords(opdef: OpDef, kernel: Callable, weights: tuple[str, ...],
                               attrs: tuple[str, ...], tensors: tuple[str, ...],
                               told_input_grad: bool) -> Rule:
    """The general derived rule: tensor keywords (masks) go to the kernel's keyword-only
    parameters of the same name (None when not given); its backward returns the positional
    inputs' gradients, the weights', then the tensor keywords' in its keyword order."""

    def run(node, ins, params, ctx):
        given = tensor_keywords(opdef, node.attrs)
        positional = len(ins) - len(given)
        kwargs = {a: node.attrs[a] for a in attrs}
        kwargs.update({t: ins[given[t]] if t in given else None for t in tensors})
        if opdef.random:
            kwargs.update(train=ctx.train, rng=ctx.rng)
        if told_input_grad:
            kwargs["input_grad"] = ctx.input_grad
        out, backward = kernel(*ins[:positional], *[params.get(w) for w in weights], **kwargs)

        def rule_backward(d_out):
            grads = backward(d_out)
            end = positional + len(weights)
            by_keyword = dict(zip(tensors, grads[end:]))
            input_grads = tuple(grads[:positional]) + tuple(by_keyword.get(t) for t in given)
            return input_grads, {w: g for w, g in zip(weights, grads[positional:end])
                                 if g is not None}

        return out, rule_backward

    return run


for _name, _opdef in OPS.items():
    if _name not in RULES and (_derived := derived_rule(_opdef)) is not None:
        RULES[_name] = _derived
