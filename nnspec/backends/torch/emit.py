"""How each op of the catalogue is written in PyTorch: an `nn.*` constructor for layers with
weights, and the `forward` expression(s) for every op.

The NumPy interpreter is the meaning of each op; these rules say the same thing in torch.
Per-sample dims of the IR become torch dims one further right when the value is batched.
Every number goes through a `Num`, so a block class can turn it into a constructor argument.
Regular ops are written from their catalogue traits (`derived_forward`, `derived_init`: an
operator, a `Torch` function or module, a module call for a layer with weights); the
irregular ones below are written by hand and win. `FORWARD` must cover every op of
`nnspec.ir.ops.OPS` (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nnspec.backends.torch.names import literal
from nnspec.backends.torch.source import Expr, Group, Num, Stmt, call, expr, list_of
from nnspec.backends.torch.source import is_simple_power_operand as _simple
from nnspec.diagnostics import SpecError
from nnspec.ir.graph import Node
from nnspec.ir.ops import (
    OPS,
    OpDef,
    attention_layout,
    attention_memory,
    conv_pads,
    param_shape,
    permutation,
    tensor_keywords,
)
from nnspec.ir.types import TensorType


@dataclass
class Site:
    """Where an op is written: its node, input expressions and types, and how to reach its
    module (`self.conv1`, or a loop variable)."""

    node: Node
    args: list[Expr]
    types: list[TensorType]
    module: Expr = ()
    target: str = "x"  # the variable the op's value goes to (multi-line ops reuse it)
    training: str = "self.training"
    helpers: set[str] = field(default_factory=set)

    @property
    def x(self) -> Expr:
        return self.args[0]

    @property
    def a(self):
        return self.node.attrs

    @property
    def out(self) -> TensorType:
        return self.node.type


@dataclass(frozen=True)
class Line:
    """One forward assignment. `unpack`: the call returns a pair whose first item is kept
    (`h, _ = self.lstm(h)`); `shape`: the value's type when it is not the node's own."""

    value: Expr
    unpack: bool = False
    shape: TensorType | None = None


def torch_dim(dim: int, t: TensorType) -> int:
    """A per-sample dim as a torch dim: negative dims count from the end either way."""
    return dim + 1 if dim >= 0 and t.batched else dim


def _ints(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _one(value):
    """`3` for `(3, 3)`: torch accepts either, and the short form reads better."""
    return value[0] if isinstance(value, tuple) and len(set(value)) == 1 else value


# ---- the catalogue's `Torch` forms ---------------------------------------------------------


Init = Callable[[Node, list[TensorType]], Group]
Forward = Callable[[Site], list[Line]]


class _Table(dict):
    """Hand-written and derived entries; an op registered after import (a plugin's, a
    test's) gets its derived entry when it is looked up."""

    def __init__(self, derive: Callable[[OpDef], Callable | None], entries: dict):
        super().__init__(entries)
        self._derive = derive

    def __missing__(self, op: str):
        opdef = OPS.get(op)
        derived = self._derive(opdef) if opdef is not None else None
        if derived is None:
            raise KeyError(op)
        return derived


def _binding(text: str) -> tuple[str, str]:
    """`"in_features=input[-1]"` -> (hint, source); a bare name is both."""
    hint, _, source = text.partition("=")
    return hint, source or hint


def _value(source: str, attrs, ins: list[TensorType], hint: str) -> Num:
    """An attribute's value, or `input[i]`: the first input's per-sample dim i (derived from
    the input, so a block's constructor names it after the layer's own values)."""
    if source.startswith("input["):
        return Num(ins[0].shape[int(source[len("input["):-1])], hint, False)
    return Num(attrs[source], hint)


def _keywords(opdef: OpDef, attrs, ins: list[TensorType]) -> dict[str, Num]:
    """The torch form's keywords; one at its catalogue default is left out when printed."""
    out = {}
    for hint, source in map(_binding, opdef.torch.keywords):
        value = _value(source, attrs, ins, hint)
        if not source.startswith("input["):
            value = _with_default(value, opdef.attr(source).default)
        out[hint] = value
    return out


def _with_default(num: Num, default) -> Num:
    """`num`, left out of a call when its text is `default`'s (see `source.substitute`)."""
    try:
        text = literal(default)
    except SpecError:
        return num
    return Num(num.value, num.hint, num.primary, num.comment, text)


def _module_args(node: Node, ins: list[TensorType]) -> list[Num]:
    return [_value(source, node.attrs, ins, hint)
            for hint, source in map(_binding, OPS[node.op].torch.args)]


def _default(node: Node, name: str):
    return OPS[node.op].attr(name).default


# ---- constructors of layers with weights ---------------------------------------------------


def _conv(spatial: int):
    def init(node: Node, ins: list[TensorType]) -> Group:
        a = node.attrs
        kwargs = {"stride": _with_default(Num(_one(a.stride), "stride"),
                                          _default(node, "stride"))}
        if a.padding == "same":
            kwargs["padding"] = Num("same", "padding")
        else:
            pads = tuple(low for low, _ in conv_pads(a, spatial))
            kwargs["padding"] = _with_default(Num(_one(pads), "padding"), 0)
        for name in ("dilation", "groups", "bias"):
            kwargs[name] = _with_default(Num(_one(a[name]), name), _default(node, name))
        return call(f"nn.Conv{spatial}d", Num(ins[0].shape[0], "in_channels", False),
                    Num(a.channels, "out_channels"), Num(_one(a.kernel), "kernel_size"),
                    **kwargs)

    return init


def _batchnorm(node, ins):
    kind = "2d" if ins[0].rank == 3 else "1d"
    return call(f"nn.BatchNorm{kind}", *_module_args(node, ins),
                **_keywords(OPS[node.op], node.attrs, ins))


def _instancenorm(node, ins):
    kind = "2d" if ins[0].rank == 3 else "1d"
    return call(f"nn.InstanceNorm{kind}", *_module_args(node, ins),
                **_keywords(OPS[node.op], node.attrs, ins))


def _layernorm(node, ins):
    shape = tuple(ins[0].shape[-node.attrs.dims:])
    return call("nn.LayerNorm", Num(shape[0] if len(shape) == 1 else shape, "normalized_shape",
                                    False), **_keywords(OPS[node.op], node.attrs, ins))


def _batch_first(node, ins):
    """The module form, batch first (and `bidirectional=True`, a flag torch takes last)."""
    kwargs = {**_keywords(OPS[node.op], node.attrs, ins), "batch_first": "True"}
    if node.attrs.get("bidirectional"):
        kwargs["bidirectional"] = "True"
    return call(OPS[node.op].torch.name, *_module_args(node, ins), **kwargs)


def _attention_init(node, ins):
    """nn.MultiheadAttention where it can express the layer, else the generated file's
    GroupedQueryAttention (LLaMA's parameter names)."""
    a = node.attrs
    memory = attention_memory(ins, a)
    if attention_layout(ins, a) != "llama":
        kwargs = _keywords(OPS["attention"], a, ins)
        if memory is not ins[0] and memory.shape[-1] != ins[0].shape[-1]:
            kwargs["kdim"] = kwargs["vdim"] = Num(memory.shape[-1], "kdim", False)
        return call("nn.MultiheadAttention", *_module_args(node, ins), **kwargs,
                    batch_first="True")
    # kv_heads always written: a use with as many key/value heads as heads reads like one
    # with fewer, so both share a class
    kwargs = {"kv_heads": Num(a.heads if a.kv_heads is None else a.kv_heads, "kv_heads")}
    if memory.shape[-1] != ins[0].shape[-1]:
        kwargs["kdim"] = Num(memory.shape[-1], "kdim", False)
    if not a.bias:
        kwargs["bias"] = "False"
    kwargs["dropout"] = _with_default(Num(a.dropout, "dropout"), 0.0)
    if a.rope:
        kwargs["rope_theta"] = Num(a.rope_theta, "rope_theta")
    return call("GroupedQueryAttention", *_module_args(node, ins), **kwargs)


def derived_init(opdef: OpDef) -> Init | None:
    """`nn.Module(args..., keywords...)` from the op's `Torch` module form."""
    if opdef.torch is None or not opdef.torch.is_module:
        return None
    args = [_binding(a) for a in opdef.torch.args]

    def init(node: Node, ins: list[TensorType]) -> Group:
        values = [_value(source, node.attrs, ins, hint) for hint, source in args]
        return call(opdef.torch.name, *values, **_keywords(opdef, node.attrs, ins))

    return init


INIT: dict[str, Init] = _Table(derived_init, {
    "conv1d": _conv(1),
    "conv2d": _conv(2),
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "instancenorm": _instancenorm,
    "attention": _attention_init,
    "rnn": _batch_first,
    "lstm": _batch_first,
    "gru": _batch_first,
})


def init_extra(node: Node, module: Expr) -> list[Stmt]:
    """Initialisation the spec asks for beyond torch's default (an embedding's `std`), and
    state built once instead of in every forward (a causal mask)."""
    torch = OPS[node.op].torch
    attr = OPS[node.op].attr(torch.weight_std) if torch is not None and torch.weight_std else None
    if attr is None or node.attrs[attr.name] == attr.default:
        return _causal_buffer(node, module)
    return [Stmt(None, expr(call("nn.init.normal_", expr(module, ".weight"),
                                 std=Num(node.attrs[attr.name], attr.name))))]


def _causal_steps(node: Node) -> int | None:
    """The fixed sequence length of a causal self-attention layer in nn.MultiheadAttention
    that is given no mask of its own (None if symbolic)."""
    a = node.attrs
    if node.op != "attention" or not a.get("causal") or node.type is None \
            or a.get("attn_mask") is not None or a.get("rope") \
            or a.get("kv_heads") not in (None, a.get("heads")):
        return None
    steps = node.type.shape[-2] if node.type.rank >= 2 else None
    return steps if isinstance(steps, int) else None


def _causal_buffer(node: Node, module: Expr) -> list[Stmt]:
    """The causal mask as a buffer of the attention module (not saved with the weights),
    built once at the layer's full length; `forward` takes its top-left corner."""
    steps = _causal_steps(node)
    if steps is None:
        return []
    ones = call("torch.ones", Num(steps, "steps"), Num(steps, "steps"), dtype="torch.bool")
    mask = expr(ones, ".triu(1)")
    return [Stmt(None, expr(call(expr(module, ".register_buffer"), '"causal_mask"', mask,
                                 persistent="False")))]


# ---- forward expressions -------------------------------------------------------------------


def _dropout(s: Site) -> list[Line]:
    return [Line(expr(call("F.dropout", s.x, p=Num(s.a.p, "p"), training=s.training)))]


def _flatten(s: Site) -> list[Line]:
    return [Line(expr(s.x, ".flatten(1)" if s.types[0].batched else ".flatten()"))]


def _reshape(s: Site) -> list[Line]:
    """A symbolic dim (at most one, the shape rule checks) is the one torch works out."""
    shape = (s.a.shape,) if isinstance(s.a.shape, (int, str)) else s.a.shape
    dims = [Num(d, "size") if isinstance(d, int) else "-1" for d in shape]
    if s.types[0].batched:
        dims.insert(0, expr(s.x, ".shape[0]"))
    return [Line(expr(call(expr(s.x, ".reshape"), *dims)))]


def _select(s: Site) -> list[Line]:
    dim = torch_dim(s.a.dim, s.types[0])
    return [Line(expr(call(expr(s.x, ".select"), Num(dim, "dim"), Num(s.a.index, "index"))))]


def _pool(kind: str):
    def forward(s: Site) -> list[Line]:
        spatial = s.types[0].rank - 1
        kwargs = {}
        if s.a.stride != _default(s.node, "stride"):
            kwargs["stride"] = Num(_one(s.a.stride), "stride")
        if _one(s.a.padding) != _default(s.node, "padding"):
            kwargs["padding"] = Num(_one(s.a.padding), "padding")
        if s.a.ceil_mode:
            kwargs["ceil_mode"] = "True"
        if not s.a.get("count_include_pad", True):
            kwargs["count_include_pad"] = "False"
        return [Line(expr(call(f"F.{kind}_pool{spatial}d", s.x, Num(_one(s.a.kernel), "kernel_size"),
                               **kwargs)))]

    return forward


def _adaptive(kind: str):
    def forward(s: Site) -> list[Line]:
        spatial = s.types[0].rank - 1
        size = _ints(s.a.size, spatial)
        return [Line(expr(call(f"F.adaptive_{kind}_pool{spatial}d", s.x,
                               Num(_one(size), "output_size"))))]

    return forward


def _upsample(s: Site) -> list[Line]:
    """F.interpolate reads a sample's first dim as the batch: an unbatched input gets one."""
    kwargs = _keywords(OPS["upsample"], s.a, s.types)
    if s.types[0].batched:
        return [Line(expr(call("F.interpolate", s.x, **kwargs)))]
    return [Line(expr(call("F.interpolate", expr(s.x, "[None]"), **kwargs), "[0]"))]


def _global_avgpool(s: Site) -> list[Line]:
    t = s.types[0]
    dims = tuple(torch_dim(d, t) for d in range(1, t.rank))
    return [Line(expr(call(expr(s.x, ".mean"), dim=_dims_text(dims))))]


def _dims_text(dims: tuple[int, ...]) -> str:
    return str(dims[0]) if len(dims) == 1 else "(" + ", ".join(map(str, dims)) + ")"


def _positions_forward(s: Site) -> list[Line]:
    if not s.args:
        return [Line(expr(s.module, ".weight"))]
    steps = expr(s.x, ".shape[1]" if s.types[0].batched else ".shape[0]")
    return [Line(expr(call(s.module, call("torch.arange", steps, device=expr(s.x, ".device")))))]


def _sinusoidal(s: Site) -> list[Line]:
    s.helpers.add("sinusoidal_positions")
    if not s.args:
        return [Line(expr(call("sinusoidal_positions", Num(s.a.max_len, "max_len"),
                               Num(s.a.dim, "dim"))))]
    steps = expr(s.x, ".shape[1]" if s.types[0].batched else ".shape[0]")
    return [Line(expr(call("sinusoidal_positions", steps, Num(s.a.dim, "dim"),
                           expr(s.x, ".device"))))]


def _attention_forward(s: Site) -> list[Line]:
    """`x, _ = self.attn(x, m, m, key_padding_mask=..., attn_mask=..., need_weights=False)`
    for nn.MultiheadAttention (a causal mask joined to a given one; a per-sample mask
    repeated per head, as it wants); `self.attn(x, m, ...)` for GroupedQueryAttention."""
    (x, *rest), masks = split_args(s)
    memory = rest[0] if rest else x
    given = tensor_keywords(OPS["attention"], s.a)
    types = {name: s.types[i] for name, i in given.items()}
    llama = attention_layout(s.types, s.a) == "llama"
    batched = s.types[0].batched
    kwargs = {}
    if "key_padding_mask" in masks:
        pad = masks["key_padding_mask"]
        if batched and not types["key_padding_mask"].batched and not llama:
            pad = expr(call(expr(pad, ".expand"), expr(x, ".shape[0]"), "-1"))
        kwargs["key_padding_mask"] = pad
    if "attn_mask" in masks:
        mask = masks["attn_mask"]
        if s.a.causal and not llama:
            s.helpers.add("causal_mask")
            hidden = expr(call("causal_mask", x))
            mask = (expr(mask, " | ", hidden) if types["attn_mask"].dtype == "bool" else
                    expr(call(expr(mask, ".masked_fill"), hidden, 'float("-inf")')))
        if types["attn_mask"].batched and not llama:  # (B * heads, T, S), as torch wants
            mask = expr(call(expr(mask, ".repeat_interleave"), Num(s.a.heads, "num_heads"), "0"))
        kwargs["attn_mask"] = mask
    elif s.a.causal and _causal_steps(s.node) is not None:
        steps = expr(x, ".shape[-2]")
        kwargs["attn_mask"] = expr(s.module, ".causal_mask[: ", steps, ", : ", steps, "]")
    elif s.a.causal and not llama:
        s.helpers.add("causal_mask")
        kwargs["attn_mask"] = expr(call("causal_mask", x))
    if llama:
        s.helpers.update(("rotary_embedding", "GroupedQueryAttention"))
        if s.a.causal:
            kwargs["is_causal"] = "True"
        args = (x, memory) if rest else (x,)
        if not batched:
            return [Line(expr(call(s.module, *(expr(a, "[None]") for a in args), **kwargs),
                              "[0]"))]
        return [Line(expr(call(s.module, *args, **kwargs)))]
    kwargs["need_weights"] = "False"
    if s.a.causal and "attn_mask" not in masks:
        kwargs["is_causal"] = "True"
    return [Line(expr(call(s.module, x, memory, memory, **kwargs)), unpack=True)]


def _rope_forward(s: Site) -> list[Line]:
    s.helpers.add("rotary_embedding")
    return [Line(expr(call("rotary_embedding", s.x, Num(s.a.theta, "theta"), seq_dim="-3")))]


def _initial_state(s: Site, i: int) -> Expr:
    """An initial state in torch's (layers * dirs, B, H) layout: ours is batch first, or one
    state for every sample."""
    if s.types[i].batched:
        return expr(call(expr(s.args[i], ".transpose"), "0", "1"), ".contiguous()")
    batch = expr(s.x, ".shape[0]")  # the sequences are batched when a state is not
    return expr(call(expr(s.args[i], "[:, None].expand"), "-1", batch, "-1"), ".contiguous()")


def _recurrent_forward(s: Site) -> list[Line]:
    """`out, _ = self.lstm(x)`; from initial states `self.lstm(x, (h0, c0))`; with
    `states = true` the value is the tuple (out, h_n[, c_n]), states batch first, that the
    `result` nodes pick from."""
    t = s.types[0]
    a = s.a
    dirs = 2 if a.bidirectional else 1
    starts = [_initial_state(s, i) for i in range(1, len(s.args))]
    args = [s.x]
    if not t.batched and s.out.batched:  # one sequence for every sample's states
        batch = expr(next(e for e, u in zip(s.args, s.types) if u.batched), ".shape[0]")
        args = [expr(call(expr(s.x, "[None].expand"), batch, "-1", "-1"))]
    if starts:
        args.append(Group((), "(", tuple(starts), ")") if len(starts) > 1 else starts[0])
    module_call = expr(call(s.module, *args))
    if not a.states:
        if not a.last:
            return [Line(module_call, unpack=True)]
        sequence = t.with_shape((t.shape[0], a.hidden * dirs))
        return [Line(module_call, unpack=True, shape=sequence),
                Line(_last_step(s, (s.target,)))]
    output = expr(s.target, "[0]")
    if a.last:
        output = _last_step(s, output)
    finals = [expr(s.target, "[1]")] if s.node.op != "lstm" else [
        expr(s.target, "[1][0]"), expr(s.target, "[1][1]")]
    finals = [expr(call(expr(f, ".transpose"), "0", "1")) for f in finals]
    return [Line(module_call), Line(expr(Group((), "(", (output, *finals), ")")))]


def _last_step(s: Site, sequence: Expr) -> Expr:
    """The top layer's final state from the output sequence: the forward direction's last
    step, and the backward direction's first."""
    batch = ":, " if s.types[0].batched else ""
    if s.a.bidirectional:
        h = Num(s.a.hidden, "hidden_size")
        last = expr(sequence, "[", batch, "-1, :", h, "]")
        first = expr(sequence, "[", batch, "0, ", h, ":]")
        return expr(call("torch.cat", list_of([last, first]), dim="-1"))
    return expr(sequence, f"[{batch}-1]")


def _result(s: Site) -> list[Line]:
    return [Line(expr(s.x, f"[{s.a.index}]"))]


def _softmax(name: str):
    def forward(s: Site) -> list[Line]:
        dim = torch_dim(s.a.dim, s.types[0])
        return [Line(expr(call(name, s.x, dim=Num(dim, "dim"))))]

    return forward


def _aligned(s: Site, i: int) -> Expr:
    """An operand of a broadcasting op. IR broadcasting aligns per-sample shapes, so a batched
    operand of lower rank gets its missing dims after the batch dim (`a[:, None]`); an
    unbatched one lines up from the right as torch does by itself."""
    t = s.types[i]
    missing = s.out.rank - t.rank
    if t.batched and missing > 0:
        return expr(s.args[i], "[:, " + ", ".join(["None"] * missing) + "]")
    return s.args[i]


def _binary_operator(s: Site, symbol: str) -> list[Line]:
    left, right = _aligned(s, 0), _aligned(s, 1)
    if symbol == "**":
        hug = _simple(_plain(left)) and _simple(_plain(right))
        return [Line(expr(left, "**" if hug else " ** ", right))]
    return [Line(expr(left, f" {symbol} ", right))]


def _plain(e: Expr) -> str:
    """Operand text for the `**` spacing rule (a literal counts as a number)."""
    return "".join(p if isinstance(p, str) else _num_text(p) for p in e)


def _num_text(n) -> str:
    value = getattr(n, "value", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "-1" if value < 0 else "1"
    return "x"


def _concat(s: Site) -> list[Line]:
    batched = s.out.batched
    parts = []
    for e, t in zip(s.args, s.types):
        if batched and not t.batched:  # a shared table joins each sample: give it a batch
            sample = next(a for a, u in zip(s.args, s.types) if u.batched)
            e = expr(call(expr(e, ".expand"), expr(sample, ".shape[0]"),
                          *(["-1"] * t.rank)))
        parts.append(e)
    dim = torch_dim(s.a.dim, s.out)
    return [Line(expr(call("torch.cat", list_of(parts), dim=Num(dim, "dim"))))]


def _reduction(method: str):
    def forward(s: Site) -> list[Line]:
        a = s.a
        t = s.types[0]
        if a.dim is None:
            value = expr(s.x, f".{method}()")
            if a.keepdim and t.rank:
                value = expr(value, ".reshape(" + ", ".join(["1"] * t.rank) + ")")
            return [Line(value)]
        dims = (a.dim,) if isinstance(a.dim, int) else tuple(a.dim)
        dims = tuple(torch_dim(d % t.rank, t) for d in dims)
        kwargs = {"dim": Num(dims[0] if len(dims) == 1 else dims, "dim")}
        if a.keepdim:
            kwargs["keepdim"] = "True"
        if method == "max":
            if len(dims) == 1:  # gradient to the first maximum, as the interpreter does
                return [Line(expr(call(expr(s.x, ".max"), **kwargs), ".values"))]
            return [Line(expr(call("torch.amax", s.x, **kwargs)))]
        return [Line(expr(call(expr(s.x, f".{method}"), **kwargs)))]

    return forward


def _scalar(s: Site) -> list[Line]:
    return [Line(expr(Num(s.a.value, "c")))]


# ---- losses (the losses helper's block) ----


def _class_loss(function: str):
    """cross_entropy / nll with the class dim last: [T, C] scores flatten so every position
    is a sample (the losses come back shaped per position with reduction="none"); a class
    `weight` becomes a tensor on the scores' device."""

    def forward(s: Site) -> list[Line]:
        pred, target = s.args
        scores = pred
        if s.types[0].rank > 1:
            pred = expr(pred, ".flatten(0, -2)")
            target = expr(target, ".flatten()" if s.types[1].dtype == "int64"
                          else ".flatten(0, -2)")
        kwargs = _keywords(OPS[s.node.op], s.a, s.types)
        if s.a.weight is not None:
            kwargs["weight"] = expr(call("torch.tensor", list_of(
                [Num(w, "weight") for w in s.a.weight]), device=expr(scores, ".device")))
        value = expr(call(function, pred, target, **kwargs))
        if s.a.reduction == "none" and s.types[0].rank > 1:
            value = expr(call(expr(value, ".reshape"), expr(scores, ".shape[:-1]")))
        return [Line(value)]

    return forward


def _binary_cross_entropy(s: Site) -> list[Line]:
    name = "F.binary_cross_entropy_with_logits" if s.a.logits else "F.binary_cross_entropy"
    kwargs = {}
    if s.a.pos_weight is not None:
        kwargs["pos_weight"] = expr(call("torch.tensor", list_of(
            [Num(w, "pos_weight") for w in s.a.pos_weight]), device=expr(s.args[0], ".device")))
    if s.a.reduction != "mean":
        kwargs["reduction"] = Num(s.a.reduction, "reduction")
    return [Line(expr(call(name, s.args[0], s.args[1], **kwargs)))]


def _noise(s: Site) -> list[Line]:
    """Samples while training (torch's generator, seeded by the run), the mean at eval."""
    s.helpers.add("noise_like")
    return [Line(expr(call("noise_like", s.x, s.training)))]


# ---- tensor ops: transpose, permute, slicing, stack, pad, learned parameters ---------------


def _transpose(s: Site) -> list[Line]:
    t = s.types[0]
    dims = (Num(torch_dim(d, t), "dim") for d in (s.a.dim0, s.a.dim1))
    return [Line(expr(call(expr(s.x, ".transpose"), *dims)))]


def _permute(s: Site) -> list[Line]:
    t = s.types[0]
    dims = [torch_dim(d, t) for d in permutation(t.rank, s.a.dims)]
    if t.batched:
        dims.insert(0, 0)
    return [Line(expr(call(expr(s.x, ".permute"), *(Num(d, "dim") for d in dims))))]


def _slice(s: Site) -> list[Line]:
    """`x[:, 1:3]`, `x[..., :64]`: NumPy's subscript, the batch dim kept whole."""
    a, t = s.a, s.types[0]
    parts: list = [str(a.start) if a.start is not None else "", ":",
                   str(a.stop) if a.stop is not None else ""]
    if a.step != 1:
        parts += [":", str(a.step)]
    if a.dim < 0:
        index = ["..., ", *parts, ", :" * (-a.dim - 1)]
    else:
        index = [":, " * (a.dim + t.batched), *parts]
    return [Line(expr(s.x, "[", *index, "]"))]


def _stack(s: Site) -> list[Line]:
    parts = []
    for e, t in zip(s.args, s.types):
        if s.out.batched and not t.batched:  # a shared tensor joins each sample
            sample = next(a for a, u in zip(s.args, s.types) if u.batched)
            e = expr(call(expr(e, ".expand"), expr(sample, ".shape[0]"), *(["-1"] * t.rank)))
        parts.append(e)
    dim = torch_dim(s.a.dim, s.out)
    return [Line(expr(call("torch.stack", list_of(parts), dim=Num(dim, "dim"))))]


def _pad(s: Site) -> list[Line]:
    pads = (s.a.pads,) if isinstance(s.a.pads, int) else s.a.pads
    widths = Group((), "(", tuple(expr(Num(p, "pad")) for p in pads), ")")
    return [Line(expr(call("F.pad", s.x, widths, **_keywords(OPS["pad"], s.a, s.types))))]


def _parameter_init(node: Node, ins: list[TensorType]) -> Group:
    """`nn.Parameter(torch.zeros(1, 768))`; normal draws `torch.empty(...).normal_(std=...)`."""
    a = node.attrs
    dims = [Num(d, "size") for d in param_shape(a)]
    if a.init == "normal":
        value = call(expr(call("torch.empty", *dims), ".normal_"), std=Num(a.std, "std"))
    else:
        value = call(f"torch.{a.init}", *dims)
    return call("nn.Parameter", value)


def split_args(s: Site) -> tuple[list[Expr], dict[str, Expr]]:
    """A site's positional input expressions, and its tensor keywords (masks) by name."""
    given = tensor_keywords(OPS[s.node.op], s.a)
    positional = len(s.args) - len(given)
    return s.args[:positional], {name: s.args[i] for name, i in given.items()}


def derived_forward(opdef: OpDef) -> Forward | None:
    """An operator (`a + b`, `-x`), a layer with weights called as its module (with a batch
    of one for an unbatched input when the op needs a batch), or the `Torch` function called
    on the inputs with the keywords off their default (and the training flag if random)."""
    if opdef.symbol:
        symbol = "**" if opdef.symbol == "^" else opdef.symbol
        if opdef.arity == (1, 1):
            return lambda s: [Line(expr(symbol, s.x))]
        return lambda s: _binary_operator(s, symbol)
    if opdef.has_params:
        def module_call(s: Site) -> list[Line]:
            args, tensors = split_args(s)
            if opdef.needs_batch and not s.types[0].batched:
                return [Line(expr(call(s.module, expr(s.x, "[None]"), **tensors), "[0]"))]
            return [Line(expr(call(s.module, *args, **tensors)))]

        return module_call
    if opdef.torch is None or opdef.torch.is_module:
        return None

    def function_call(s: Site) -> list[Line]:
        args, tensors = split_args(s)
        if opdef.broadcast:
            args = [_aligned(s, i) for i in range(len(args))]
        kwargs = {**_keywords(opdef, s.a, s.types), **tensors}
        if opdef.random:
            kwargs["training"] = s.training
        return [Line(expr(call(opdef.torch.name, *args, **kwargs)))]

    return function_call


FORWARD: dict[str, Forward] = _Table(derived_forward, {
    "dropout": _dropout,
    "flatten": _flatten,
    "reshape": _reshape,
    "select": _select,
    "maxpool": _pool("max"),
    "maxpool1d": _pool("max"),
    "maxpool2d": _pool("max"),
    "avgpool": _pool("avg"),
    "avgpool1d": _pool("avg"),
    "avgpool2d": _pool("avg"),
    "adaptive_avgpool": _adaptive("avg"),
    "adaptive_maxpool": _adaptive("max"),
    "global_avgpool": _global_avgpool,
    "upsample": _upsample,
    "positions": _positions_forward,
    "sinusoidal": _sinusoidal,
    "attention": _attention_forward,
    "rope": _rope_forward,
    "rnn": _recurrent_forward,
    "lstm": _recurrent_forward,
    "gru": _recurrent_forward,
    "result": _result,
    "softmax": _softmax("F.softmax"),
    "log_softmax": _softmax("F.log_softmax"),
    "concat": _concat,
    "mean": _reduction("mean"),
    "sum": _reduction("sum"),
    "max": _reduction("max"),
    "scalar": _scalar,
    "cross_entropy": _class_loss("F.cross_entropy"),
    "nll": _class_loss("F.nll_loss"),
    "binary_cross_entropy": _binary_cross_entropy,
    "noise": _noise,
    "transpose": _transpose,
    "permute": _permute,
    "slice": _slice,
    "stack": _stack,
    "pad": _pad,
    "parameter": lambda s: [Line(expr(s.module))],
})
INIT["parameter"] = _parameter_init

for _table, _derive in ((FORWARD, derived_forward), (INIT, derived_init)):
    for _name, _opdef in OPS.items():
        if _name not in _table and (_derived := _derive(_opdef)) is not None:
            _table[_name] = _derived
