"""Hand-written NumPy rules of the tensor families: reshapes and selection, softmax,
merges, reductions, losses with options, transposes, slicing, padding and learned
parameters (see `rules.py` for the rule contract)."""

from __future__ import annotations

import numpy as np

from nnspec.backends.numpy.kernels import activations, elementwise, losses, shape
from nnspec.backends.numpy.rules_base import (
    HAND_WRITTEN,
    array_axis,
    inputs_only,
    rule,
)
from nnspec.ir.graph import Node
from nnspec.ir.ops import permutation

# ---- feed-forward and shape --------------------------------------------------------------


@rule("add")
def _add(node: Node, inputs, params, ctx):
    """A sum, or a residual join and the relu that alone reads it (``ctx.activation``)."""
    kernel = elementwise.add_relu if ctx.activation == "relu" else elementwise.add
    return inputs_only(kernel(*inputs))


@rule("mul")
def _mul(node: Node, inputs, params, ctx):
    """A product, or a gated one: silu of the operand that ``ctx.activation`` names ("silu",
    its index), whose node passes its input through (``elementwise.silu_mul``)."""
    if ctx.activation is None:
        return inputs_only(elementwise.mul(*inputs))
    first = ctx.activation[1] == 0  # read now: the context moves on to the next node
    gate, up = inputs if first else inputs[::-1]
    out, backward = elementwise.silu_mul(gate, up)

    def gated_backward(d_out):
        d_gate, d_up = backward(d_out)
        return ((d_gate, d_up) if first else (d_up, d_gate)), {}

    return out, gated_backward


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
    axis = array_axis(node, node.attrs.dim)
    out = np.take(x, node.attrs.index, axis=axis)

    def backward(d_out):
        dx = np.zeros_like(x)
        index = [slice(None)] * x.ndim
        index[axis] = node.attrs.index
        dx[tuple(index)] = d_out
        return (dx,), {}

    return out, backward


# ---- activations ---------------------------------------------------------------------------


def _softmax_like(fn):
    def run(node, ins, params, ctx):
        return inputs_only(fn(ins[0], dim=array_axis(node, node.attrs.dim)))

    return run


HAND_WRITTEN["softmax"] = _softmax_like(activations.softmax)
HAND_WRITTEN["log_softmax"] = _softmax_like(activations.log_softmax)


# ---- elementwise, merges, reductions -------------------------------------------------------


@rule("clip")
def _clip(node, ins, params, ctx):
    return inputs_only(elementwise.clip(ins[0], lo=node.attrs.min, hi=node.attrs.max))


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
    out, backward = elementwise.concat(arrays, axis=array_axis(node, node.attrs.dim))
    return out, lambda d_out: (restore(backward(d_out)), {})


def _reduction(fn):
    def run(node, ins, params, ctx):
        a = node.attrs
        if a.dim is None:
            axis = None
        else:
            dims = (a.dim,) if isinstance(a.dim, int) else tuple(a.dim)
            axis = tuple(array_axis(node, d) for d in dims)
        return inputs_only(fn(ins[0], axis=axis, keepdims=a.keepdim))

    return run


HAND_WRITTEN["mean"] = _reduction(elementwise.mean)
HAND_WRITTEN["sum"] = _reduction(elementwise.sum)
HAND_WRITTEN["max"] = _reduction(elementwise.max)


@rule("scalar")
def _scalar(node, ins, params, ctx):
    return np.asarray(node.attrs.value, dtype=np.float32), lambda d_out: ((), {})


# ---- losses --------------------------------------------------------------------------------


@rule("binary_cross_entropy")
def _bce(node, ins, params, ctx):
    a = node.attrs
    if a.logits:
        return inputs_only(losses.binary_cross_entropy_with_logits(
            ins[0], ins[1], pos_weight=a.pos_weight, reduction=a.reduction))
    return inputs_only(losses.binary_cross_entropy(ins[0], ins[1], reduction=a.reduction))


# ---- tensor ops: transpose, permute, slicing, stack, pad, learned parameters ---------------


def _axis_of(node: Node, dim: int, rank: int) -> int:
    """A per-sample dim of a `rank`-d sample as a non-negative array axis."""
    return dim % rank + (1 if node.type.batched else 0)


@rule("transpose")
def _transpose(node, ins, params, ctx):
    rank = node.type.rank
    return inputs_only(shape.transpose(ins[0], axis0=_axis_of(node, node.attrs.dim0, rank),
                                        axis1=_axis_of(node, node.attrs.dim1, rank)))


@rule("permute")
def _permute(node, ins, params, ctx):
    dims = permutation(node.type.rank, node.attrs.dims)
    axes = (0, *(d + 1 for d in dims)) if node.type.batched else dims
    return inputs_only(shape.permute(ins[0], axes=axes))


@rule("slice")
def _slice(node, ins, params, ctx):
    a = node.attrs
    return inputs_only(shape.slice_axis(ins[0], axis=_axis_of(node, a.dim, node.type.rank),
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
    return inputs_only(shape.pad(x, widths=tuple(widths), value=node.attrs.value))


@rule("parameter")
def _parameter(node, ins, params, ctx):
    return params[""], lambda d_out: ((), {"": d_out})
