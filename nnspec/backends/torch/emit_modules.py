"""Ops without weights as `nn.*` modules, for chains written as one `nn.Sequential`.

A labelled chain (`seq(conv2d(..), batchnorm, relu6)`, `seq(dense(..), relu, dropout(0.5))`)
is called whole in `forward` only if every member is a module, as torchvision writes
`Conv2dNormActivation` and VGG's `classifier`. The module is read off the op's own forward
line, `F.relu6(x)` -> `nn.ReLU6()`, `F.max_pool2d(x, 2)` -> `nn.MaxPool2d(2)`, so its
numbers and keywords are the function's; an op whose forward is anything else stays a
function call and ends the chain.
"""

from __future__ import annotations

from nnspec.backends.torch.emit import FORWARD
from nnspec.backends.torch.emit_site import Site
from nnspec.backends.torch.source import Group, expr
from nnspec.ir.graph import Node
from nnspec.ir.types import TensorType

# function -> module taking the same arguments after the input (and no training flag)
_MODULES = {
    "F.relu": "nn.ReLU", "F.relu6": "nn.ReLU6", "F.gelu": "nn.GELU", "F.silu": "nn.SiLU",
    "F.elu": "nn.ELU", "F.leaky_relu": "nn.LeakyReLU", "torch.sigmoid": "nn.Sigmoid",
    "torch.tanh": "nn.Tanh", "F.dropout": "nn.Dropout",
    "F.max_pool1d": "nn.MaxPool1d", "F.max_pool2d": "nn.MaxPool2d",
    "F.avg_pool1d": "nn.AvgPool1d", "F.avg_pool2d": "nn.AvgPool2d",
    "F.adaptive_avg_pool1d": "nn.AdaptiveAvgPool1d",
    "F.adaptive_avg_pool2d": "nn.AdaptiveAvgPool2d",
    "F.adaptive_max_pool1d": "nn.AdaptiveMaxPool1d",
    "F.adaptive_max_pool2d": "nn.AdaptiveMaxPool2d",
}
_INPUT = "\0input"


def stateless_module(node: Node, types: list[TensorType]) -> Group | None:
    """`nn.ReLU6()` for a node written `F.relu6(x)`; None where no module says the same."""
    if node.module is not None or len(node.inputs) != 1:
        return None
    site = Site(node, [(_INPUT,)], types, (), "x", "self.training", set())
    lines = FORWARD[node.op](site)
    if len(lines) != 1 or lines[0].unpack or len(lines[0].value) != 1:
        return None
    value = lines[0].value[0]
    if not isinstance(value, Group) or value.opening != "(" or len(value.prefix) != 1:
        return None
    module = _MODULES.get(value.prefix[0])
    if module is None or not value.items or value.items[0] != (_INPUT,):
        return None
    items = tuple(i for i in value.items[1:] if not (i and i[0] == "training="))
    if any(part == _INPUT for item in items for part in item):
        return None
    return Group(expr(module), "(", items, ")")

