"""Graph rewrites for training: what the loss reads may differ from what the model predicts.

`fuse_softmax`: a model whose output is a softmax over the classes, trained with
`cross_entropy` on that output, is trained on the softmax's input instead (exposed as the
output `logits`), because cross-entropy of logits is computed stably as one log-softmax. Predictions still give
probabilities; every backend trains from the same rewritten bindings, so none special-cases
the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nnspec.ir import ops
from nnspec.ir.graph import Binding, Graph


@dataclass(frozen=True)
class FusedSoftmax:
    softmax: str  # the model's softmax node the loss no longer reads
    outputs: tuple[tuple[str, str], ...]  # the outputs training reads, `logits` among them
    bindings: tuple[Binding, ...]  # the loss's inputs, the fused one now bound to `logits`


def fuse_softmax(model: Graph, loss: Graph, bindings: tuple[Binding, ...]
                 ) -> FusedSoftmax | None:
    """The rewrite when the loss's only use of the model's one output, a softmax over the
    last dim, is as the logits of `cross_entropy`; else None."""
    outputs = model.named_outputs
    if len(outputs) != 1:
        return None
    users = loss.consumers()
    for i, binding in enumerate(bindings):
        if binding.source != "output":
            continue
        node = model.node(outputs[binding.name])
        uses = [loss.node(u) for u in users[binding.node]]
        if node.op != "softmax" or not uses or not _over_classes(node):
            continue
        if all(u.op == "cross_entropy" and u.inputs[0] == binding.node
               and binding.node not in u.inputs[1:] for u in uses):
            logits = _free_name("logits", outputs, model.inputs)
            fused = replace(binding, name=logits)
            return FusedSoftmax(node.name, (*outputs.items(), (logits, node.inputs[0])),
                                (*bindings[:i], fused, *bindings[i + 1:]))
    return None


def _over_classes(softmax) -> bool:
    """The softmax runs over the dim cross_entropy reads the classes from (`ops.class_dim`:
    the last of [T, C], the first of [C, H, W])."""
    rank = softmax.type.rank
    return rank > 0 and softmax.attrs.dim % rank == ops.class_dim(rank)


def _free_name(name: str, *taken) -> str:
    used = set().union(*taken)
    candidate, i = name, 0
    while candidate in used:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def unread_nodes(model: Graph, train) -> frozenset[str]:
    """Nodes only the outputs training does not read need (the fused softmax): a training
    step skips them. Nodes no output needs still run, as they always did."""
    read = {dict(train.outputs)[b.name] for b in train.bindings if b.source == "output"}
    return frozenset(_needed(model, set(model.outputs)) - _needed(model, read))


def _needed(model: Graph, wanted: set[str]) -> set[str]:
    needed = set(wanted)
    for node in reversed(model.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    return needed
