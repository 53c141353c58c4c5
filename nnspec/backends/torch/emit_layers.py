"""Torch emission of the layers with weights that need more than their catalogue entry:
constructors computed from attributes (conv padding, BatchNorm1d/2d by rank, attention's
two forms, recurrent layers batch first), the buffers some keep (a causal mask), and their
hand-written `forward` lines (attention with masks and rotary embeddings, recurrent layers
with states, positions)."""

from __future__ import annotations

from nnspec.backends.torch.emit_site import (
    Line,
    Site,
    default_of,
    keywords,
    module_args,
    one,
    split_args,
    with_default,
)
from nnspec.backends.torch.source import Expr, Group, Num, Stmt, call, expr, list_of
from nnspec.ir.graph import Node
from nnspec.ir.ops import (
    OPS,
    attention_layout,
    attention_memory,
    conv_pads,
    tensor_keywords,
)
from nnspec.ir.types import TensorType

# ---- constructors of layers with weights ---------------------------------------------------


def conv(spatial: int):
    def init(node: Node, ins: list[TensorType]) -> Group:
        a = node.attrs
        kwargs = {"stride": with_default(Num(one(a.stride), "stride"),
                                          default_of(node, "stride"))}
        if a.padding == "same":
            kwargs["padding"] = Num("same", "padding")
        else:
            pads = tuple(low for low, _ in conv_pads(a, spatial))
            kwargs["padding"] = with_default(Num(one(pads), "padding"), 0)
        for name in ("dilation", "groups", "bias"):
            kwargs[name] = with_default(Num(one(a[name]), name), default_of(node, name))
        return call(f"nn.Conv{spatial}d", Num(ins[0].shape[0], "in_channels", False),
                    Num(a.channels, "out_channels"), Num(one(a.kernel), "kernel_size"),
                    **kwargs)

    return init


def batchnorm(node, ins):
    kind = "2d" if ins[0].rank == 3 else "1d"
    return call(f"nn.BatchNorm{kind}", *module_args(node, ins),
                **keywords(OPS[node.op], node.attrs, ins))


def instancenorm(node, ins):
    kind = "2d" if ins[0].rank == 3 else "1d"
    return call(f"nn.InstanceNorm{kind}", *module_args(node, ins),
                **keywords(OPS[node.op], node.attrs, ins))


def layernorm(node, ins):
    shape = tuple(ins[0].shape[-node.attrs.dims:])
    return call("nn.LayerNorm", Num(shape[0] if len(shape) == 1 else shape, "normalized_shape",
                                    False), **keywords(OPS[node.op], node.attrs, ins))


def batch_first(node, ins):
    """The module form, batch first (and `bidirectional=True`, a flag torch takes last)."""
    kwargs = {**keywords(OPS[node.op], node.attrs, ins), "batch_first": "True"}
    if node.attrs.get("bidirectional"):
        kwargs["bidirectional"] = "True"
    return call(OPS[node.op].torch.name, *module_args(node, ins), **kwargs)


def attention_init(node, ins):
    """nn.MultiheadAttention where it can express the layer, else the generated file's
    GroupedQueryAttention (LLaMA's parameter names)."""
    a = node.attrs
    memory = attention_memory(ins, a)
    if attention_layout(ins, a) != "llama":
        kwargs = keywords(OPS["attention"], a, ins)
        if memory is not ins[0] and memory.shape[-1] != ins[0].shape[-1]:
            kwargs["kdim"] = kwargs["vdim"] = Num(memory.shape[-1], "kdim", False)
        return call("nn.MultiheadAttention", *module_args(node, ins), **kwargs,
                    batch_first="True")
    # kv_heads always written: a use with as many key/value heads as heads reads like one
    # with fewer, so both share a class
    kwargs = {"kv_heads": Num(a.heads if a.kv_heads is None else a.kv_heads, "kv_heads")}
    if memory.shape[-1] != ins[0].shape[-1]:
        kwargs["kdim"] = Num(memory.shape[-1], "kdim", False)
    if not a.bias:
        kwargs["bias"] = "False"
    kwargs["dropout"] = with_default(Num(a.dropout, "dropout"), 0.0)
    if a.rope:
        kwargs["rope_theta"] = Num(a.rope_theta, "rope_theta")
    return call("GroupedQueryAttention", *module_args(node, ins), **kwargs)


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


def positions_forward(s: Site) -> list[Line]:
    if not s.args:
        return [Line(expr(s.module, ".weight"))]
    steps = expr(s.x, ".shape[1]" if s.types[0].batched else ".shape[0]")
    return [Line(expr(call(s.module, call("torch.arange", steps, device=expr(s.x, ".device")))))]


def sinusoidal(s: Site) -> list[Line]:
    s.helpers.add("sinusoidal_positions")
    if not s.args:
        return [Line(expr(call("sinusoidal_positions", Num(s.a.max_len, "max_len"),
                               Num(s.a.dim, "dim"))))]
    steps = expr(s.x, ".shape[1]" if s.types[0].batched else ".shape[0]")
    return [Line(expr(call("sinusoidal_positions", steps, Num(s.a.dim, "dim"),
                           expr(s.x, ".device"))))]


def attention_forward(s: Site) -> list[Line]:
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


def rope_forward(s: Site) -> list[Line]:
    s.helpers.add("rotary_embedding")
    return [Line(expr(call("rotary_embedding", s.x, Num(s.a.theta, "theta"), seq_dim="-3")))]


def _initial_state(s: Site, i: int) -> Expr:
    """An initial state in torch's (layers * dirs, B, H) layout: ours is batch first, or one
    state for every sample."""
    if s.types[i].batched:
        return expr(call(expr(s.args[i], ".transpose"), "0", "1"), ".contiguous()")
    batch = expr(s.x, ".shape[0]")  # the sequences are batched when a state is not
    return expr(call(expr(s.args[i], "[:, None].expand"), "-1", batch, "-1"), ".contiguous()")


def recurrent_forward(s: Site) -> list[Line]:
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
