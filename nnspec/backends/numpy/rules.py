"""How each op of the catalogue runs in NumPy: a thin rule per op over the kernels.

A rule takes the node, its input arrays (batch first, PyTorch layout), its parameters by
local name and the run context, and returns `(out, backward)`; `backward(d_out)` returns
`(input_grads, param_grads)`. Per-sample dims of the IR (batch implicit) become array axes
here. Regular ops get a rule derived from their catalogue entry (`derived_rule`: the kernel
called on inputs, weights and attributes); the irregular ones are written by hand, by
family, in `rules_layers.py` and `rules_tensor.py`, and win. `RULES` must cover every op of `nnspec.ir.ops.OPS` — a test checks it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from nnspec.backends.numpy import rules_layers, rules_tensor  # noqa: F401  (they register)
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
from nnspec.backends.numpy.rules_base import HAND_WRITTEN, Rule, inputs_only, with_params
from nnspec.ir.graph import Node
from nnspec.ir.ops import OPS, OpDef, tensor_keywords


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
            return with_params(out, n_inputs, weights)
    elif weights and attrs:
        def run(node, ins, params, ctx):
            out = kernel(*ins, *[params.get(w) for w in weights],
                         **{a: node.attrs[a] for a in attrs})
            return with_params(out, n_inputs, weights)
    elif weights:
        def run(node, ins, params, ctx):
            return with_params(kernel(*ins, *[params.get(w) for w in weights]), n_inputs,
                                weights)
    elif opdef.random:
        def run(node, ins, params, ctx):
            kwargs = {a: node.attrs[a] for a in attrs}
            return inputs_only(kernel(*ins, **kwargs, train=ctx.train, rng=ctx.rng))
    elif attrs:
        def run(node, ins, params, ctx):
            return inputs_only(kernel(*ins, **{a: node.attrs[a] for a in attrs}))
    else:
        def run(node, ins, params, ctx):
            return inputs_only(kernel(*ins))
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


# the hand-written rules (registered as their modules load) win over derived ones
RULES.update(HAND_WRITTEN)

for _name, _opdef in OPS.items():
    if _name not in RULES and (_derived := derived_rule(_opdef)) is not None:
        RULES[_name] = _derived
