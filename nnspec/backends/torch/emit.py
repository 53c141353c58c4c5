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

from nnspec.backends.torch.emit_layers import (
    attention_forward,
    attention_init,
    batch_first,
    batchnorm,
    conv,
    instancenorm,
    layernorm,
    positions_forward,
    recurrent_forward,
    rope_forward,
    sinusoidal,
)
from nnspec.backends.torch.emit_site import (
    Forward,
    Init,
    Line,
    Site,
    Table,
    attr_value,
    binding,
    default_of,
    ints,
    keywords,
    one,
    split_args,
    torch_dim,
)
from nnspec.backends.torch.source import Expr, Group, Num, call, expr, list_of
from nnspec.backends.torch.source import is_simple_power_operand as _simple
from nnspec.ir.graph import Node
from nnspec.ir.ops import (
    OPS,
    OpDef,
    class_dim,
    param_shape,
    permutation,
)
from nnspec.ir.types import TensorType

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
        if s.a.stride != default_of(s.node, "stride"):
            kwargs["stride"] = Num(one(s.a.stride), "stride")
        if one(s.a.padding) != default_of(s.node, "padding"):
            kwargs["padding"] = Num(one(s.a.padding), "padding")
        if s.a.ceil_mode:
            kwargs["ceil_mode"] = "True"
        if not s.a.get("count_include_pad", True):
            kwargs["count_include_pad"] = "False"
        return [Line(expr(call(f"F.{kind}_pool{spatial}d", s.x, Num(one(s.a.kernel), "kernel_size"),
                               **kwargs)))]

    return forward


def _adaptive(kind: str):
    def forward(s: Site) -> list[Line]:
        spatial = s.types[0].rank - 1
        size = ints(s.a.size, spatial)
        return [Line(expr(call(f"F.adaptive_{kind}_pool{spatial}d", s.x,
                               Num(one(size), "output_size"))))]

    return forward


def _upsample(s: Site) -> list[Line]:
    """F.interpolate reads a sample's first dim as the batch: an unbatched input gets one."""
    kwargs = keywords(OPS["upsample"], s.a, s.types)
    if s.types[0].batched:
        return [Line(expr(call("F.interpolate", s.x, **kwargs)))]
    return [Line(expr(call("F.interpolate", expr(s.x, "[None]"), **kwargs), "[0]"))]


def _global_avgpool(s: Site) -> list[Line]:
    t = s.types[0]
    dims = tuple(torch_dim(d, t) for d in range(1, t.rank))
    return [Line(expr(call(expr(s.x, ".mean"), dim=_dims_text(dims))))]


def _dims_text(dims: tuple[int, ...]) -> str:
    return str(dims[0]) if len(dims) == 1 else "(" + ", ".join(map(str, dims)) + ")"


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
    is a sample (the losses come back shaped per position with reduction="none"); [C, H, W]
    scores have it first, as torch reads them; a class `weight` becomes a tensor on the
    scores' device."""

    def forward(s: Site) -> list[Line]:
        pred, target = s.args
        scores = pred
        sequence = s.types[0].rank > 1 and class_dim(s.types[0].rank) != 0
        if sequence:
            pred = expr(pred, ".flatten(0, -2)")
            target = expr(target, ".flatten()" if s.types[1].dtype == "int64"
                          else ".flatten(0, -2)")
        kwargs = keywords(OPS[s.node.op], s.a, s.types)
        if s.a.weight is not None:
            kwargs["weight"] = expr(call("torch.tensor", list_of(
                [Num(w, "weight") for w in s.a.weight]), device=expr(scores, ".device")))
        value = expr(call(function, pred, target, **kwargs))
        if s.a.reduction == "none" and sequence:
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
    return [Line(expr(call("F.pad", s.x, widths, **keywords(OPS["pad"], s.a, s.types))))]


def _parameter_init(node: Node, ins: list[TensorType]) -> Group:
    """`nn.Parameter(torch.zeros(1, 768))`; normal draws `torch.empty(...).normal_(std=...)`."""
    a = node.attrs
    dims = [Num(d, "size") for d in param_shape(a)]
    if a.init == "normal":
        value = call(expr(call("torch.empty", *dims), ".normal_"), std=Num(a.std, "std"))
    else:
        value = call(f"torch.{a.init}", *dims)
    return call("nn.Parameter", value)


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
        kwargs = {**keywords(opdef, s.a, s.types), **tensors}
        if opdef.random:
            kwargs["training"] = s.training
        return [Line(expr(call(opdef.torch.name, *args, **kwargs)))]

    return function_call


def derived_init(opdef: OpDef) -> Init | None:
    """`nn.Module(args..., keywords...)` from the op's `Torch` module form."""
    if opdef.torch is None or not opdef.torch.is_module:
        return None
    args = [binding(a) for a in opdef.torch.args]

    def init(node: Node, ins: list[TensorType]) -> Group:
        values = [attr_value(source, node.attrs, ins, hint) for hint, source in args]
        return call(opdef.torch.name, *values, **keywords(opdef, node.attrs, ins))

    return init


INIT: dict[str, Init] = Table(derived_init, {
    "conv1d": conv(1),
    "conv2d": conv(2),
    "batchnorm": batchnorm,
    "layernorm": layernorm,
    "instancenorm": instancenorm,
    "attention": attention_init,
    "rnn": batch_first,
    "lstm": batch_first,
    "gru": batch_first,
})


FORWARD: dict[str, Forward] = Table(derived_forward, {
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
    "positions": positions_forward,
    "sinusoidal": sinusoidal,
    "attention": attention_forward,
    "rope": rope_forward,
    "rnn": recurrent_forward,
    "lstm": recurrent_forward,
    "gru": recurrent_forward,
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
