"""The op catalogue: the one place that says which ops exist.

Each `OpDef` holds an op's attributes (types, defaults, checks), its shape rule, the
shapes of its parameters (PyTorch's names and layouts), its multiply-add count per sample
and its traits: whether it needs a batch axis, broadcasts, draws random numbers, is written
as an operator, its PyTorch name, its NumPy kernel and its diagram label. Backends derive
the regular ops from those traits and keep hand-written code only for irregular ones (the
way sqlglot's generator prints any function from its arguments). It imports neither numpy
nor torch; `register` adds ops (a plugin's, a test's) after import.

Shape rules see per-sample `TensorType`s (batch implicit) and raise `ShapeError`, a small
span-free error; the IR builder attaches the span of the layer and where its input came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from nnspec.ir.types import (
    Dim,
    TensorType,
    broadcast,
    dim_add,
    dim_floordiv,
    dim_mul,
    dim_prod,
    is_concrete,
)


class ShapeError(Exception):
    """A shape rule's complaint, with an optional hint; spans are added by the caller."""

    def __init__(self, message: str, hint: str | None = None, code: str = "E301"):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


REQUIRED = object()

AttrKind = Literal["int", "float", "bool", "str", "ints", "dims", "floats", "scales", "padding",
                   "layer", "tensor"]  # scales: a number, or one per spatial dim


@dataclass(frozen=True)
class Attr:
    """An op attribute (or an optimizer's hyperparameter) with its type, default and checks.

    A `tensor` attribute is a keyword whose value is a tensor (a mask): it is passed by
    keyword only, defaults to None, and becomes an extra input of the node, after the
    positional ones; the resolved attribute holds that input's index (see `tensor_keywords`).
    """

    name: str
    kind: AttrKind
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # None is an allowed value
    variadic: bool = False  # the last attribute may collect extra positional arguments


@dataclass(frozen=True, init=False)
class ParamSpec:
    """A parameter or buffer: PyTorch shape and the init scheme both backends follow."""

    shape: tuple[int, ...]
    init: str  # uniform_fan_in | kaiming_uniform | normal | ones | zeros | rnn_uniform
    fan_in: int = 0
    trainable: bool = True
    std: float = 1.0  # for "normal"
    dtype: str = "float32"

    def __init__(self, shape: tuple[int, ...], init: str, fan_in: int = 0,
                 trainable: bool = True, std: float = 1.0, dtype: str = "float32"):
        # Made by every shape-checked layer with weights: fields set in one step (see Span).
        object.__setattr__(self, "__dict__", {"shape": shape, "init": init, "fan_in": fan_in,
                                              "trainable": trainable, "std": std,
                                              "dtype": dtype})


class Attrs(dict):
    """Resolved attributes; read as `a.kernel` or `a["kernel"]`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Torch:
    """How a regular op reads in PyTorch, so the torch backend needs no code for it.

    `name` is a function called on the op's inputs (`F.relu`, `torch.tanh`) or, for an op
    with weights, the `nn.*` module built in `__init__` and called in `forward`. `args` are a
    module's positional constructor values, `keywords` its keyword arguments (a function's
    too): `"hint=source"` or just `"source"` (then the hint is the same name), where the
    source is an attribute or `input[i]`, the first input's per-sample dim i. A keyword is
    written only when its attribute differs from the catalogue default, so defaults are
    stated once, here. `weight_std` names the attribute holding the std of a module's
    normal weight initialisation (written when it differs from its default).
    """

    name: str
    args: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    weight_std: str = ""

    @property
    def is_module(self) -> bool:
        return self.name.startswith("nn.")


@dataclass(frozen=True)
class OpDef:
    """An op of the catalogue: its attributes, shape rule, weights and traits.

    Traits (what backends derive the regular ops from):
    - `needs_batch`: its kernels see a leading batch axis, so an unbatched input (a position
      table) runs as a batch of one.
    - `broadcast`: operands broadcast per sample (a batched operand of lower rank gets unit
      dims after its batch dim).
    - `random`: draws random numbers while training; the NumPy kernel takes `train` and
      `rng`, the torch call reads the module's training flag.
    - `shape_only`: reads nothing of its input but the shape (`randn_like`); diagrams draw
      that edge dotted, and it makes no residual branch.
    - `symbol`: the operator in spec text (`+`, `^`, `<=`), with one input a prefix (`-`).
    - `torch`: the PyTorch function or module (see `Torch`).
    - `kernel`: the NumPy kernel, `"function"` in `nnspec.backends.numpy.kernels` or
      `"module:function"` anywhere; empty means a kernel function named like the op. Its
      leading positional parameters take the inputs, the next ones the weights (by local
      name), its keyword-only ones the attributes of the same name.
    - `results`: for an op that can give several tensors (a recurrent layer's final states),
      their names and types in order, the main output first (types None when called with
      `None` for the inputs' types: its shape rule failed); empty when it gives one. The
      builder then makes a `result` node per tensor (see `result`) and the op's own value is
      the tuple of them.
    - `label`: what a diagram writes after the op's name (None: required values, then
      `name=value` for attributes off their default). Each entry is a template over the
      attributes (`"{heads} heads"`, `"{num} → {dim}"`), or `"attr?template"`, written only
      when `attr` differs from its default (`"bias?no bias"`).
    """

    name: str
    family: str  # linear conv pool norm recurrent attention embedding activation merge shape
    #              math regularization loss
    doc: str
    infer: Callable[[list[TensorType], Attrs], TensorType]
    attrs: tuple[Attr, ...] = ()
    arity: tuple[int, int | None] = (1, 1)  # (min, max) tensor inputs; max None = variadic
    params: Callable[[list[TensorType], Attrs], dict[str, ParamSpec]] | None = None
    macs: Callable[[list[TensorType], TensorType, Attrs], Dim] | None = None
    inputs_doc: str = "[..]"
    outputs_doc: str = "same"
    aliases: tuple[str, ...] = field(default=())
    needs_batch: bool = False
    broadcast: bool = False
    random: bool = False
    shape_only: bool = False
    symbol: str = ""
    torch: Torch | None = None
    kernel: str = ""
    label: tuple[str, ...] | None = None
    results: Callable[[list[TensorType] | None, Attrs],
                      tuple[tuple[str, TensorType | None], ...]] | None = None

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.attrs if a.name == name), None)

    @property
    def has_params(self) -> bool:
        return self.params is not None

    # What the builder asks of every node of the op, worked out once per op:

    @cached_property
    def positional(self) -> tuple[Attr, ...]:
        """The attributes a call may pass by position (`layer` and `tensor` ones only by
        keyword)."""
        return tuple(a for a in self.attrs if a.kind not in ("layer", "tensor"))

    @cached_property
    def defaults(self) -> dict[str, Any] | None:
        """The attributes of a call without arguments (`relu`), or None when one is
        required."""
        if any(a.default is REQUIRED for a in self.attrs):
            return None
        return {a.name: a.default for a in self.attrs}

    @cached_property
    def tensor_attrs(self) -> tuple[str, ...]:
        """The tensor keywords (masks), which become inputs of the node."""
        return tuple(a.name for a in self.attrs if a.kind == "tensor")

    @cached_property
    def layer_attrs(self) -> tuple[str, ...]:
        """The attributes naming another layer (`tie = wte`), which a node does not keep."""
        return tuple(a.name for a in self.attrs if a.kind == "layer")


# ---- helpers used by the shape rules -------------------------------------------------------


def _ints(value, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise ShapeError(f"`{name}` needs {n} values here, got {len(value)}")
    return tuple(value)


def _require_rank(x: TensorType, ranks: tuple[int, ...], op: str, layout: str, hint=None):
    if x.rank not in ranks:
        fix = hint
        if fix is None and x.rank < min(ranks):
            fix = f"add `reshape` to give it the {layout} layout"
        elif fix is None:
            fix = "add `flatten` or `reshape` first"
        raise ShapeError(f"{op} expects {layout} but got {x}", fix, code="E302")


def _require_float(x: TensorType, op: str):
    if x.dtype != "float32":
        raise ShapeError(f"{op} needs float values but got integer tokens {x}",
                         "integer inputs go through `embedding` first", code="E303")


def conv_pads(a: Attrs, spatial: int) -> tuple[tuple[int, int], ...]:
    """Explicit (low, high) padding per spatial dim; `same` puts the extra on the high side
    as torch does."""
    kernel = _ints(a.kernel, spatial, "kernel")
    dilation = _ints(a.get("dilation", 1), spatial, "dilation")
    if a.padding == "valid":
        return ((0, 0),) * spatial
    if a.padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in _ints(a.padding, spatial, "padding"))


def _window_out(size: Dim, kernel: int, stride: int, pads: tuple[int, int], dilation: int) -> Dim:
    span = dilation * (kernel - 1) + 1
    if isinstance(size, int):
        full = size + pads[0] + pads[1] - span
        if full < 0:
            raise ShapeError(f"the window ({span}) is larger than the padded input ({size + sum(pads)})",
                             "use a smaller kernel or more padding, or remove a pooling layer",
                             code="E304")
        return full // stride + 1
    return dim_add(dim_floordiv(dim_add(size, sum(pads) - span), stride), 1)


def _channels_check(c_in: Dim, groups: int, out: int, op: str):
    if not isinstance(c_in, int):
        raise ShapeError(f"{op} needs a known number of input channels, got `{c_in}`")
    if c_in % groups or out % groups:
        raise ShapeError(f"{op}: groups={groups} must divide both the input channels ({c_in}) "
                         f"and the output channels ({out})")


def _in_features(x: TensorType, op: str) -> int:
    last = x.shape[-1] if x.shape else None
    if not isinstance(last, int):
        raise ShapeError(f"{op} needs a known feature size as the last dim, got {x}",
                         "declare that dim as a number")
    return last


def _same(ins, a):
    return ins[0]


def _same_float(op):
    def rule(ins, a):
        _require_float(ins[0], op)
        return ins[0]

    return rule


def _dim_index(rank: int, dim: int, op: str) -> int:
    if not -rank <= dim < rank:
        raise ShapeError(f"{op}: dim {dim} is out of range for a {rank}-d sample shape",
                         f"per-sample dims run from 0 to {rank - 1} (or -1 for the last); "
                         "the batch dim is implicit")
    return dim % rank


def _bias(units: int, fan_in: int, bias: bool) -> dict[str, ParamSpec]:
    return {"bias": ParamSpec((units,), "uniform_fan_in", fan_in)} if bias else {}


# ---- feed-forward ------------------------------------------------------------------------


def _dense_infer(ins, a):
    x = ins[0]
    _require_float(x, "dense")
    if x.rank == 0:
        raise ShapeError("dense needs at least one feature dim", code="E302")
    _in_features(x, "dense")
    return x.with_shape(x.shape[:-1] + (a.units,))


def _dense_params(ins, a):
    fan_in = ins[0].shape[-1]
    weight = {"weight": ParamSpec((a.units, fan_in), "kaiming_uniform", fan_in)}
    return weight | _bias(a.units, fan_in, a.bias)


def _dense_macs(ins, out, a):
    return dim_mul(out.numel, ins[0].shape[-1])


def _select_infer(ins, a):
    x = ins[0]
    if x.rank == 0:
        raise ShapeError("select needs at least one dim", code="E302")
    axis = _dim_index(x.rank, a.dim, "select")
    size = x.shape[axis]
    if isinstance(size, int) and not -size <= a.index < size:
        raise ShapeError(f"select: index {a.index} is out of range for dim {a.dim} of size {size}")
    return x.with_shape(x.shape[:axis] + x.shape[axis + 1:])


def _flatten_infer(ins, a):
    return ins[0].with_shape((dim_prod(ins[0].shape),))


def _monomial_of(d: Dim) -> tuple[tuple[str, ...], int] | None:
    """A dim as (its symbols sorted, its integer factor), to compare products written in
    any order (`T*8` is `8*T`); None for a dim that is not a product (`T-1`)."""
    if isinstance(d, int):
        return (), d
    symbols, factor = [], 1
    for part in d.split("*"):
        if part.isdigit():
            factor *= int(part)
        elif part.isidentifier():
            symbols.append(part)
        else:
            return None
    return tuple(sorted(symbols)), factor


def _reshape_infer(ins, a):
    target = [a.shape] if isinstance(a.shape, (int, str)) else list(a.shape)
    x = ins[0]
    if any(isinstance(d, int) and (d == 0 or d < -1) for d in target):
        raise ShapeError(f"reshape: dims must be positive (or one -1), got {target}")
    unknown = [d for d in target if d == -1 or isinstance(d, str)]
    if len(unknown) > 1:
        raise ShapeError(f"reshape: at most one dim can be -1 or symbolic, got {target}",
                         "give the other dims as numbers")
    if is_concrete(x.shape) and is_concrete(target):
        total = math.prod(x.shape)
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if total % known:
                raise ShapeError(f"cannot reshape {x} ({total} values) into {list(target)}")
            target[target.index(-1)] = total // known
        elif known != total:
            raise ShapeError(f"cannot reshape {x} ({total} values) into {list(target)} "
                             f"({known} values)")
        return x.with_shape(tuple(target))
    have = _monomial_of(x.numel)
    want = _monomial_of(dim_prod(d for d in target if d != -1))
    if -1 in target:
        rest = _divide_monomials(have, want)
        if rest is None:
            raise ShapeError(f"reshape with -1 cannot tell the missing size of {x} into "
                             f"{list(target)}", "name the dim instead of -1")
        target[target.index(-1)] = rest
    elif have is not None and want is not None and have != want:
        raise ShapeError(f"cannot reshape {x} ({x.numel} values) into {list(target)}")
    return x.with_shape(tuple(target))


def _divide_monomials(have, want) -> Dim | None:
    if have is None or want is None or have[1] % want[1]:
        return None
    symbols = list(have[0])
    for s in want[0]:
        if s not in symbols:
            return None
        symbols.remove(s)
    return dim_prod([*symbols, have[1] // want[1]])


# ---- convolution and pooling ---------------------------------------------------------------


def _conv_rule(spatial: int):
    op = f"conv{spatial}d"
    layout = "[C, L]" if spatial == 1 else "[C, H, W]"

    def infer(ins, a):
        x = ins[0]
        _require_float(x, op)
        _require_rank(x, (spatial + 1,), op, layout)
        _channels_check(x.shape[0], a.groups, a.channels, op)
        kernel = _ints(a.kernel, spatial, "kernel")
        stride = _ints(a.stride, spatial, "stride")
        dilation = _ints(a.dilation, spatial, "dilation")
        if a.padding == "same" and any(s != 1 for s in stride):
            raise ShapeError(f"{op}: padding=\"same\" needs stride 1 (as in PyTorch)")
        pads = conv_pads(a, spatial)
        sizes = tuple(_window_out(n, k, s, p, d)
                      for n, k, s, p, d in zip(x.shape[1:], kernel, stride, pads, dilation))
        return x.with_shape((a.channels,) + sizes)

    def params(ins, a):
        c_in = ins[0].shape[0]
        kernel = _ints(a.kernel, spatial, "kernel")
        fan_in = c_in // a.groups * math.prod(kernel)
        weight = {"weight": ParamSpec((a.channels, c_in // a.groups) + kernel, "kaiming_uniform",
                                      fan_in)}
        return weight | _bias(a.channels, fan_in, a.bias)

    def macs(ins, out, a):
        kernel = _ints(a.kernel, spatial, "kernel")
        return dim_mul(out.numel, ins[0].shape[0] // a.groups * math.prod(kernel))

    return infer, params, macs


def _pool_rank(x: TensorType, op: str, spatial: int | None) -> int:
    ranks = (spatial + 1,) if spatial else (2, 3)
    layout = {2: "[C, L]", 3: "[C, H, W]"}
    _require_rank(x, ranks, op, " or ".join(layout[r] for r in ranks))
    return x.rank - 1


def _pool_rule(kind: str, spatial: int | None):
    op = f"{kind}pool{spatial or ''}{'d' if spatial else ''}"

    def infer(ins, a):
        x = ins[0]
        _require_float(x, op)
        n = _pool_rank(x, op, spatial)
        kernel = _ints(a.kernel, n, "kernel")
        stride = _ints(a.stride if a.stride is not None else kernel, n, "stride")
        padding = _ints(a.padding, n, "padding")
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise ShapeError(f"{op}: padding must be at most half the kernel (as in PyTorch)")
        sizes = tuple(pool_out(s, k, st, p, a.ceil_mode)
                      for s, k, st, p in zip(x.shape[1:], kernel, stride, padding))
        return x.with_shape(x.shape[:1] + sizes)

    return infer


def pool_out(size: Dim, kernel: int, stride: int, padding: int, ceil_mode: bool) -> Dim:
    """torch's pooling output length: with `ceil_mode` a last, partial window counts when it
    starts inside the input or its left padding."""
    if not ceil_mode:
        return _window_out(size, kernel, stride, (padding, padding), 1)
    if not isinstance(size, int):
        return dim_add(dim_floordiv(dim_add(size, 2 * padding - kernel + stride - 1), stride), 1)
    _window_out(size, kernel, stride, (padding, padding), 1)  # the same check for a window
    out = (size + 2 * padding - kernel + stride - 1) // stride + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def _pool_macs(ins, out, a):
    return 0


def _adaptive_rule(op: str):
    def infer(ins, a):
        x = ins[0]
        _require_float(x, op)
        n = _pool_rank(x, op, None)
        return x.with_shape(x.shape[:1] + _ints(a.size, n, "size"))

    return infer


def _global_infer(ins, a):
    x = ins[0]
    _require_float(x, "global_avgpool")
    _pool_rank(x, "global_avgpool", None)
    return x.with_shape(x.shape[:1])


# ---- normalisation -------------------------------------------------------------------------


def _batchnorm_infer(ins, a):
    x = ins[0]
    _require_float(x, "batchnorm")
    _require_rank(x, (1, 2, 3), "batchnorm", "[C], [C, L] or [C, H, W]")
    if not isinstance(x.shape[0], int):
        raise ShapeError(f"batchnorm needs a known channel count, got {x}")
    return x


def _batchnorm_params(ins, a):
    c = ins[0].shape[0]
    out = {}
    if a.affine:
        out = {"weight": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")}
    return out | {
        "running_mean": ParamSpec((c,), "zeros", trainable=False),
        "running_var": ParamSpec((c,), "ones", trainable=False),
        "num_batches_tracked": ParamSpec((), "zeros", trainable=False, dtype="int64"),
    }


def _layernorm_infer(ins, a):
    x = ins[0]
    _require_float(x, "layernorm")
    if x.rank < a.dims:
        raise ShapeError(f"layernorm over the last {a.dims} dims needs a rank >= {a.dims}, got {x}")
    if not is_concrete(x.shape[-a.dims:]):
        raise ShapeError(f"layernorm needs known sizes for the normalised dims, got {x}")
    return x


def _layernorm_params(ins, a):
    shape = tuple(ins[0].shape[-a.dims:])
    if not a.affine:
        return {}
    return {"weight": ParamSpec(shape, "ones"), "bias": ParamSpec(shape, "zeros")}


# ---- embeddings and positions --------------------------------------------------------------


def _embedding_infer(ins, a):
    x = ins[0]
    if x.dtype != "int64":
        raise ShapeError(f"embedding looks up integer tokens but got float values {x}",
                         "declare the input as `int[...]`", code="E303")
    if a.padding_idx is not None and not 0 <= a.padding_idx < a.num:
        raise ShapeError(f"padding_idx {a.padding_idx} is outside the vocabulary (0..{a.num - 1})")
    return TensorType(x.shape + (a.dim,), "float32", x.batched)


def _embedding_params(ins, a):
    return {"weight": ParamSpec((a.num, a.dim), "normal", std=a.std)}


def _positions_infer(ins, a):
    if not ins:
        return TensorType((a.max_len, a.dim), "float32", batched=False)
    x = ins[0]
    if x.rank == 0:
        raise ShapeError("positions needs a sequence input [T, ...]", code="E302")
    length = x.shape[0]
    if isinstance(length, int) and length > a.max_len:
        raise ShapeError(f"the sequence ({length}) is longer than max_len ({a.max_len})",
                         f"raise max_len to at least {length}")
    return TensorType((length, a.dim), "float32", batched=False)


def _positions_params(ins, a):
    return {"weight": ParamSpec((a.max_len, a.dim), "normal", std=a.std)}


# ---- attention and recurrence --------------------------------------------------------------


def attention_layout(ins, a) -> str:
    """Which parameter layout an attention layer has: `packed` (nn.MultiheadAttention's
    in_proj_weight: self-attention, or keys/values of the query's size), `separate` (its
    q_proj_weight, k_proj_weight, v_proj_weight: keys/values of another size), or `llama`
    (q_proj, k_proj, v_proj, o_proj: grouped-query heads or rotary embeddings, which
    nn.MultiheadAttention cannot express)."""
    if a.rope or (a.kv_heads is not None and a.kv_heads != a.heads):
        return "llama"
    memory = attention_memory(ins, a)
    return "separate" if memory.shape[-1] != ins[0].shape[-1] else "packed"


def attention_memory(ins, a):
    """The keys' and values' source: the second positional input, else the queries."""
    return ins[1] if positional_arity(OPS["attention"], a, len(ins)) == 2 else ins[0]


def _attention_infer(ins, a):
    x = ins[0]
    memory = attention_memory(ins, a)
    for t, what in ((x, "queries"), (memory, "keys/values")):
        _require_float(t, "attention")
        _require_rank(t, (2,), "attention", f"{what} [T, E] (a sequence of vectors)")
    e = _in_features(x, "attention")
    _in_features(memory, "attention")
    if e % a.heads:
        raise ShapeError(f"attention: the embedding size {e} is not divisible by heads={a.heads}",
                         f"pick heads dividing {e}")
    kv_heads = a.kv_heads or a.heads
    if a.heads % kv_heads:
        raise ShapeError(f"attention: kv_heads={kv_heads} must divide heads={a.heads}",
                         "each key/value head serves a group of query heads")
    if a.rope and (e // a.heads) % 2:
        raise ShapeError(f"attention: rotary embeddings need an even head size, got "
                         f"{e // a.heads}")
    steps, keys = x.shape[0], memory.shape[0]
    if a.causal and steps != keys:
        raise ShapeError(f"attention: causal attention needs as many keys as queries, got "
                         f"{keys} keys for {steps} queries",
                         "mask cross-attention with `attn_mask` instead")
    given = tensor_keywords(OPS["attention"], a)
    if "key_padding_mask" in given:
        _mask_check(ins[given["key_padding_mask"]], (keys,), "key_padding_mask", "[S]")
    if "attn_mask" in given:
        _mask_check(ins[given["attn_mask"]], (steps, keys), "attn_mask", "[T, S]")
    return x


def _mask_check(mask: TensorType, shape: tuple, name: str, layout: str):
    if mask.dtype == "int64":
        raise ShapeError(f"attention: `{name}` must be boolean (true = masked out) or float "
                         f"(added to the scores), got integer tokens {mask}",
                         "compare to make a boolean mask, e.g. `tokens == 0`", code="E303")
    if mask.rank != len(shape) or any(isinstance(m, int) and isinstance(s, int) and m != s
                                      for m, s in zip(mask.shape, shape)):
        shown = ", ".join(str(d) for d in shape)
        raise ShapeError(f"attention: `{name}` must be {layout} = [{shown}] per sample, got "
                         f"{mask}", code="E305")


def _attention_params(ins, a):
    e = ins[0].shape[-1]
    m = attention_memory(ins, a).shape[-1]
    layout = attention_layout(ins, a)
    if layout == "llama":
        kv = (a.kv_heads or a.heads) * (e // a.heads)
        out = {}
        for name, rows, fan in (("q_proj", e, e), ("k_proj", kv, m), ("v_proj", kv, m),
                                ("o_proj", e, e)):
            out[f"{name}.weight"] = ParamSpec((rows, fan), "kaiming_uniform", fan)
            if a.bias:
                out[f"{name}.bias"] = ParamSpec((rows,), "uniform_fan_in", fan)
        return out
    if layout == "packed":
        out = {"in_proj_weight": ParamSpec((3 * e, e), "xavier_uniform", e)}
    else:
        out = {f"{p}_proj_weight": ParamSpec((e, e if p == "q" else m), "xavier_uniform", e)
               for p in "qkv"}
    if a.bias:
        out["in_proj_bias"] = ParamSpec((3 * e,), "zeros")
    out["out_proj.weight"] = ParamSpec((e, e), "kaiming_uniform", e)
    if a.bias:
        out["out_proj.bias"] = ParamSpec((e,), "zeros")
    return out


def _attention_macs(ins, out, a):
    (t, e), memory = ins[0].shape, attention_memory(ins, a)
    s, m = memory.shape
    kv = (a.kv_heads or a.heads) * (e // a.heads)
    projections = dim_add(dim_mul(t, 2 * e * e), dim_mul(s, 2 * m * kv))
    scores = dim_mul(dim_mul(t, s), 2 * e)  # q @ k^T and attn @ v
    return dim_add(projections, scores)


def _rope_infer(ins, a):
    x = ins[0]
    _require_float(x, "rope")
    _require_rank(x, (3,), "rope", "[T, heads, head_dim]",
                  "reshape first: `reshape(T, heads, d / heads)`")
    if not isinstance(x.shape[-1], int) or x.shape[-1] % 2:
        raise ShapeError(f"rope needs a known, even head size as the last dim, got {x}")
    return x


def _rmsnorm_infer(ins, a):
    x = ins[0]
    _require_float(x, "rmsnorm")
    if x.rank == 0:
        raise ShapeError("rmsnorm needs a feature dim to normalise over", code="E302")
    _in_features(x, "rmsnorm")
    return x


def _rmsnorm_params(ins, a):
    return {"weight": ParamSpec((ins[0].shape[-1],), "ones")} if a.affine else {}


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent_rule(mode: str):
    kinds = ("h_n", "c_n") if mode == "lstm" else ("h_n",)

    def state_type(ins, a) -> TensorType:
        """torch's h_n / c_n layout per sample: [layers * directions, hidden]."""
        return TensorType((a.layers * (2 if a.bidirectional else 1), a.hidden), "float32",
                          any(t.batched for t in ins))

    def infer(ins, a):
        x = ins[0]
        _require_float(x, mode)
        _require_rank(x, (2,), mode, "[T, F] (a sequence of feature vectors)")
        _in_features(x, mode)
        _initial_states(ins, a)
        width = a.hidden * (2 if a.bidirectional else 1)
        # one sequence for every sample (a position table) from per-sample states: a batch
        out = TensorType((width,) if a.last else (x.shape[0], width), "float32",
                         any(t.batched for t in ins))
        return out

    def _initial_states(ins, a):
        starts = ins[1:]
        if starts and len(starts) != len(kinds):
            raise ShapeError(f"{mode} starts from {' and '.join(kinds)}: give "
                             f"{len(kinds)} initial states, not {len(starts)}",
                             "`x -> lstm(state, 64)` with `state` from `out, h, c = ... "
                             "lstm(64, states = true)`, or `lstm(x, h0, c0, 64)`")
        want = state_type(ins, a)
        for kind, start in zip(kinds, starts):
            if start.shape != want.shape or start.dtype != "float32":
                raise ShapeError(f"{mode}: the initial {kind[0]} must be {want} "
                                 f"([layers * directions, hidden], as torch's {kind[0]}_0 per "
                                 f"sample), got {start}", code="E301")
        if a.states and not any(t.batched for t in ins):
            raise ShapeError(f"{mode} with states = true needs a batch of sequences, but "
                             f"{ins[0]} is one table for every sample", code="E302")

    def results(ins, a):
        """None types when `ins` is None (the layer's shape rule failed)."""
        if not a.states:
            return ()
        if ins is None:
            return tuple((kind, None) for kind in ("output", *kinds))
        return (("output", infer(ins, a)), *((kind, state_type(ins, a)) for kind in kinds))

    def params(ins, a):
        gates = _GATES[mode] * a.hidden
        dirs = ("", "_reverse") if a.bidirectional else ("",)
        out = {}
        for layer in range(a.layers):
            fan = ins[0].shape[-1] if layer == 0 else a.hidden * len(dirs)
            for suffix in dirs:
                k = f"l{layer}{suffix}"
                out[f"weight_ih_{k}"] = ParamSpec((gates, fan), "rnn_uniform", a.hidden)
                out[f"weight_hh_{k}"] = ParamSpec((gates, a.hidden), "rnn_uniform", a.hidden)
                if a.bias:
                    out[f"bias_ih_{k}"] = ParamSpec((gates,), "rnn_uniform", a.hidden)
                    out[f"bias_hh_{k}"] = ParamSpec((gates,), "rnn_uniform", a.hidden)
        return out

    def macs(ins, out, a):
        dirs = 2 if a.bidirectional else 1
        per_step = 0
        for layer in range(a.layers):
            fan = ins[0].shape[-1] if layer == 0 else a.hidden * dirs
            per_step += dirs * _GATES[mode] * a.hidden * (fan + a.hidden)
        return dim_mul(ins[0].shape[0], per_step)

    return infer, params, macs, results


# ---- elementwise, merges, reductions -------------------------------------------------------


def _broadcast_infer(op, shown):
    def infer(ins, a):
        x, y = ins
        shape = broadcast(x, y)
        if shape is None:
            raise ShapeError(f"`{shown}` cannot combine {x} and {y}: the shapes "
                             "do not match",
                             "make both sides the same shape (e.g. a `dense` to match the "
                             "feature size)", code="E305")
        if x.dtype != y.dtype and "int64" in (x.dtype, y.dtype) and op in ("add", "sub", "mul"):
            raise ShapeError(f"`{op}` mixes integer tokens {x if x.dtype == 'int64' else y} "
                             "with float values", "embed the tokens first", code="E303")
        dtype = "float32" if "float32" in (x.dtype, y.dtype) else x.dtype
        return TensorType(shape, dtype, x.batched or y.batched)

    return infer


def _compare_infer(ins, a):
    out = _broadcast_infer("compare", "compare")(ins, a)
    return TensorType(out.shape, "bool", out.batched)


def _where_infer(ins, a):
    cond, x, y = ins
    first = broadcast(cond, x)
    shape = broadcast(TensorType(first, batched=cond.batched), y) if first is not None else None
    if shape is None:
        raise ShapeError(f"where: {cond}, {x} and {y} do not broadcast together", code="E305")
    return TensorType(shape, "float32", cond.batched or x.batched or y.batched)


def _concat_infer(ins, a):
    first = ins[0]
    for other in ins[1:]:
        if other.rank != first.rank:
            raise ShapeError(f"concat needs inputs of the same rank, got {first} and {other}",
                             code="E305")
    axis = _dim_index(first.rank, a.dim, "concat")
    for other in ins[1:]:
        for i, (p, q) in enumerate(zip(first.shape, other.shape)):
            if i != axis and p != q:
                raise ShapeError(f"concat along dim {a.dim}: {first} and {other} differ in dim {i}",
                                 code="E305")
    total: Dim = 0
    for x in ins:
        total = dim_add(total, x.shape[axis])
    shape = first.shape[:axis] + (total,) + first.shape[axis + 1:]
    return TensorType(shape, first.dtype, any(x.batched for x in ins))


def _reduce_infer(op):
    def infer(ins, a):
        x = ins[0]
        if a.dim is None:
            return TensorType((1,) * x.rank if a.keepdim else (), "float32", batched=False)
        dims = (a.dim,) if isinstance(a.dim, int) else tuple(a.dim)
        axes = {_dim_index(x.rank, d, op) for d in dims}
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape) if a.keepdim or i not in axes)
        return x.with_shape(shape)

    return infer


def _softmax_infer(op):
    def infer(ins, a):
        x = ins[0]
        _require_float(x, op)
        if x.rank == 0:
            raise ShapeError(f"{op} needs at least one dim to normalise over", code="E302")
        _dim_index(x.rank, a.dim, op)
        return x

    return infer


def _scalar_infer(ins, a):
    return TensorType((), "float32", batched=False)


# ---- losses --------------------------------------------------------------------------------
# Every built-in loss takes torch's `reduction`. "none" gives the losses themselves (a
# tensor, e.g. for a custom loss that weighs them); a `train` loss must be a scalar (E215).

_REDUCTIONS = ("mean", "sum", "none")
# losses whose targets are class indices (int [..] for scores [.., C], [H, W] for [C, H, W]):
# data, metrics and predictions treat their models as classifiers
CLASS_INDEX_LOSSES = ("cross_entropy", "nll")


def class_dim(rank: int) -> int:
    """The per-sample dim of class scores of this rank that holds the classes (for
    `CLASS_INDEX_LOSSES`): the last of [C] and [T, C] (a class per position), the first of
    [C, H, W] and [C, D, H, W] — torch's channels, a class per pixel, as a U-Net gives them.
    A batched array's class axis is one more."""
    return 0 if rank >= 3 else rank - 1


def without_class_dim(scores: TensorType) -> tuple:
    """The shape of the class ids for these scores: one id per position or pixel."""
    dim = class_dim(scores.rank)
    return scores.shape[:dim] + scores.shape[dim + 1:]


def _reduction_attr(choices=_REDUCTIONS) -> Attr:
    return Attr("reduction", "str", "mean", "mean or sum of the per-element losses, or "
                "none: the losses themselves (a tensor, not a training loss)", choices=choices)


def _loss_value(per_element: TensorType, a) -> TensorType:
    if a.reduction == "none":
        return per_element
    return TensorType((), "float32", batched=False)


def _loss_same_shape(op):
    def infer(ins, a):
        pred, target = ins
        if broadcast(pred, target) != pred.shape:
            raise ShapeError(f"{op}: the target {target} does not match the prediction {pred}",
                             code="E305")
        if a.get("pos_weight") is not None:
            _pos_weight_check(pred, a)
        return _loss_value(TensorType(pred.shape, "float32", pred.batched or target.batched), a)

    return infer


def _pos_weight_check(pred: TensorType, a):
    if not a.logits:
        raise ShapeError("binary_cross_entropy: `pos_weight` needs `logits = true` (torch's "
                         "binary_cross_entropy of probabilities has none)", code="E161")
    classes = pred.shape[-1] if pred.shape else 1
    if len(a.pos_weight) != 1 and len(a.pos_weight) != classes:
        raise ShapeError(f"binary_cross_entropy: `pos_weight` has {len(a.pos_weight)} values "
                         f"but the prediction {pred} has {classes} classes in its last dim",
                         "give one number per class, or one for all", code="E305")


def _class_weight_check(op: str, scores: TensorType, a):
    classes = scores.shape[class_dim(scores.rank)]
    if a.weight is not None and isinstance(classes, int) and len(a.weight) != classes:
        raise ShapeError(f"{op}: `weight` has {len(a.weight)} values but there are {classes} "
                         "classes", "give one weight per class", code="E305")


def _cross_entropy_infer(ins, a):
    logits, target = ins
    if logits.rank == 0:
        raise ShapeError("cross_entropy needs class scores [C] (or [T, C], [C, H, W]) but the "
                         "model gives a scalar", code="E302")
    ids = without_class_dim(logits)
    if target.dtype == "int64":
        if target.shape != ids:
            raise ShapeError(f"cross_entropy: class indices {target} do not match the scores "
                             f"{logits} (expected int{list(ids)})", code="E305")
    elif target.shape != logits.shape:
        raise ShapeError(f"cross_entropy: class probabilities {target} do not match the scores "
                         f"{logits}", code="E305")
    _class_weight_check("cross_entropy", logits, a)
    return _loss_value(logits.with_shape(ids), a)


def _nll_infer(ins, a):
    log_probs, target = ins
    _require_float(log_probs, "nll")
    if log_probs.rank == 0:
        raise ShapeError("nll needs log-probabilities [C] (or [T, C], [C, H, W]) but gets a "
                         "scalar", code="E302")
    ids = without_class_dim(log_probs)
    if target.dtype != "int64" or target.shape != ids:
        raise ShapeError(f"nll: the target {target} must be class indices "
                         f"int{list(ids)} for the log-probabilities {log_probs}", code="E305")
    _class_weight_check("nll", log_probs, a)
    return _loss_value(log_probs.with_shape(ids), a)


def _kl_div_infer(ins, a):
    if a.reduction == "batchmean":
        a = Attrs(a, reduction="mean")
    return _loss_same_shape("kl_div")(ins, a)


# ---- decoders: transposed convolution, resampling, group and instance norm -----------------


def _transposed_out(size: Dim, kernel: int, stride: int, padding: int, output_padding: int,
                    dilation: int) -> Dim:
    """torch's rule: (L - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1."""
    grown = dilation * (kernel - 1) + output_padding + 1 - 2 * padding
    if isinstance(size, int):
        out = (size - 1) * stride + grown
        if out < 1:
            raise ShapeError(f"a transposed convolution of an input of {size} would give "
                             f"{out}: (L - 1) * stride - 2 * padding + dilation * (kernel - 1) "
                             "+ output_padding + 1 must be at least 1",
                             "use less padding or a larger kernel", code="E304")
        return out
    return dim_add(dim_mul(size, stride), grown - stride)  # `H*2`, not `(H-1)*2+2`


def _conv_transpose_rule(spatial: int):
    op = f"conv_transpose{spatial}d"
    layout = "[C, L]" if spatial == 1 else "[C, H, W]"

    def infer(ins, a):
        x = ins[0]
        _require_float(x, op)
        _require_rank(x, (spatial + 1,), op, layout)
        _channels_check(x.shape[0], a.groups, a.channels, op)
        kernel, stride, padding, output_padding, dilation = (
            _ints(a[name], spatial, name)
            for name in ("kernel", "stride", "padding", "output_padding", "dilation"))
        for extra, s, d in zip(output_padding, stride, dilation):
            if extra >= s and extra >= d:
                raise ShapeError(f"{op}: output_padding ({extra}) must be smaller than either "
                                 f"stride ({s}) or dilation ({d}), as in PyTorch",
                                 "output_padding only picks among the sizes a strided "
                                 "convolution maps to the same output")
        sizes = tuple(_transposed_out(*dims) for dims in zip(x.shape[1:], kernel, stride,
                                                               padding, output_padding, dilation))
        return x.with_shape((a.channels,) + sizes)

    def params(ins, a):
        kernel = _ints(a.kernel, spatial, "kernel")
        fan_in = a.channels // a.groups * math.prod(kernel)  # torch: weight.size(1) * kernel
        weight = {"weight": ParamSpec((ins[0].shape[0], a.channels // a.groups) + kernel,
                                      "kaiming_uniform", fan_in)}
        return weight | _bias(a.channels, fan_in, a.bias)

    def macs(ins, out, a):
        """FlopCounterMode's count: every input position times the whole (grouped) kernel."""
        kernel = _ints(a.kernel, spatial, "kernel")
        per_position = ins[0].shape[0] * (a.channels // a.groups) * math.prod(kernel)
        return dim_mul(dim_prod(ins[0].shape[1:]), per_position)

    return infer, params, macs


def _conv_transpose_attrs() -> tuple[Attr, ...]:
    return (
        Attr("channels", "int", doc="output channels", minimum=1),
        Attr("kernel", "ints", doc="kernel size (one int or one per spatial dim)", minimum=1),
        Attr("stride", "ints", 1, minimum=1),
        Attr("padding", "ints", 0, "cut from both ends of the output", minimum=0),
        Attr("output_padding", "ints", 0, "added to the high end of the output (below stride "
             "or dilation)", minimum=0),
        Attr("dilation", "ints", 1, minimum=1),
        Attr("groups", "int", 1, minimum=1),
        _BIAS,
    )


def _conv_transpose_torch(spatial: int) -> Torch:
    return Torch(f"nn.ConvTranspose{spatial}d",
                 ("in_channels=input[0]", "out_channels=channels", "kernel_size=kernel"),
                 ("stride", "padding", "output_padding", "groups", "bias", "dilation"))


def _upsample_infer(ins, a):
    x = ins[0]
    _require_float(x, "upsample")
    n = _pool_rank(x, "upsample", None)
    if (a.size is None) == (a.scale_factor is None):
        raise ShapeError("upsample needs exactly one of `size` and `scale_factor`",
                         "`upsample(2)` doubles every spatial dim; `upsample(size = [32, 32])` "
                         "gives that size")
    needed = {"linear": 1, "bilinear": 2}.get(a.mode)
    if needed is not None and n != needed:
        fix = {1: '"linear"', 2: '"bilinear"'}[n]
        raise ShapeError(f'upsample: mode "{a.mode}" needs a {needed + 1}-d sample '
                         f"({'[C, L]' if needed == 1 else '[C, H, W]'}), got {x}",
                         f"use mode {fix} or \"nearest\" for this input", code="E302")
    if a.align_corners and needed is None:
        raise ShapeError("upsample: align_corners applies only to the interpolating modes "
                         '("linear", "bilinear"), as in PyTorch')
    if a.size is not None:
        return x.with_shape(x.shape[:1] + _ints(a.size, n, "size"))
    scales = _per_axis(a.scale_factor, n, "scale_factor")
    return x.with_shape(x.shape[:1] + tuple(_scaled(d, s) for d, s in zip(x.shape[1:], scales)))


def _per_axis(value, n: int, name: str) -> tuple:
    """A number for every spatial dim, or a list with one per dim (`scale_factor = [2, 3]`)."""
    if not isinstance(value, tuple):
        return (value,) * n
    if len(value) != n:
        raise ShapeError(f"`{name}` needs {n} values here (one per spatial dim), got "
                         f"{len(value)}", "a single number scales every dim")
    return value


def _scaled(size: Dim, scale: float) -> Dim:
    if not isinstance(size, int):
        if scale != int(scale):
            raise ShapeError(f"upsample by {scale:g} needs known spatial sizes, got `{size}`",
                             "use a whole scale_factor or a fixed `size`")
        return dim_mul(size, int(scale))
    out = math.floor(size * scale)  # torch: floor(double(size) * scale)
    if out < 1:
        raise ShapeError(f"upsample by {scale:g} turns a size of {size} into {out}",
                         code="E304")
    return out


def _pixel_shuffle_infer(ins, a):
    x = ins[0]
    _require_float(x, "pixel_shuffle")
    _require_rank(x, (3,), "pixel_shuffle", "[C, H, W]")
    c, h, w = x.shape
    r = a.upscale
    if not isinstance(c, int) or c % (r * r):
        raise ShapeError(f"pixel_shuffle({r}) needs channels divisible by {r * r}, got {x}",
                         f"give the layer before it a multiple of {r * r} channels")
    return x.with_shape((c // (r * r), dim_mul(h, r), dim_mul(w, r)))


def _pixel_unshuffle_infer(ins, a):
    x = ins[0]
    _require_float(x, "pixel_unshuffle")
    _require_rank(x, (3,), "pixel_unshuffle", "[C, H, W]")
    c, h, w = x.shape
    r = a.downscale
    if not is_concrete(x.shape) or h % r or w % r:
        raise ShapeError(f"pixel_unshuffle({r}) needs known height and width divisible by {r}, "
                         f"got {x}")
    return x.with_shape((c * r * r, h // r, w // r))


def _channel_count(x: TensorType, op: str) -> int:
    if x.rank == 0 or not isinstance(x.shape[0], int):
        raise ShapeError(f"{op} needs a known channel count as the first dim, got {x}",
                         code="E302")
    return x.shape[0]


def _groupnorm_infer(ins, a):
    x = ins[0]
    _require_float(x, "groupnorm")
    c = _channel_count(x, "groupnorm")
    if c % a.groups:
        raise ShapeError(f"groupnorm: {a.groups} groups must divide the channels ({c}), "
                         "as in PyTorch", f"pick groups dividing {c}")
    return x


def _affine_params(ins, a):
    c = ins[0].shape[0]
    return {"weight": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")} if a.affine \
        else {}


def _instancenorm_infer(ins, a):
    x = ins[0]
    _require_float(x, "instancenorm")
    _require_rank(x, (2, 3), "instancenorm", "[C, L] or [C, H, W]")
    _channel_count(x, "instancenorm")
    if is_concrete(x.shape[1:]) and math.prod(x.shape[1:]) < 2:
        raise ShapeError(f"instancenorm needs more than one spatial value per channel, got {x}",
                         code="E302")
    return x


def _instancenorm_params(ins, a):
    c = ins[0].shape[0]
    out = _affine_params(ins, a)
    if a.track_running_stats:
        out |= {"running_mean": ParamSpec((c,), "zeros", trainable=False),
                "running_var": ParamSpec((c,), "ones", trainable=False),
                "num_batches_tracked": ParamSpec((), "zeros", trainable=False, dtype="int64")}
    return out


_conv_t1 = _conv_transpose_rule(1)
_conv_t2 = _conv_transpose_rule(2)


# ---- the catalogue -------------------------------------------------------------------------

_BIAS = Attr("bias", "bool", True, "add a learned bias")
_conv1 = _conv_rule(1)
_conv2 = _conv_rule(2)
_rnn, _lstm, _gru = (_recurrent_rule(m) for m in ("rnn", "lstm", "gru"))


def _result_infer(ins, a):
    raise ShapeError("`result` is made by layers that give several tensors; unpack those "
                     "instead: `out, h = x -> gru(64, states = true)`", code="E302")


def _conv_attrs() -> tuple[Attr, ...]:
    return (
        Attr("channels", "int", doc="output channels", minimum=1),
        Attr("kernel", "ints", doc="kernel size (one int or one per spatial dim)", minimum=1),
        Attr("stride", "ints", 1, minimum=1),
        Attr("padding", "padding", 0, 'ints, "same" or "valid"'),
        Attr("dilation", "ints", 1, minimum=1),
        Attr("groups", "int", 1, minimum=1),
        _BIAS,
    )


def _pool_attrs(kind: str = "max") -> tuple[Attr, ...]:
    attrs = (
        Attr("kernel", "ints", doc="window size", minimum=1),
        Attr("stride", "ints", None, "defaults to the kernel size", minimum=1, optional=True),
        Attr("padding", "ints", 0, minimum=0),
        Attr("ceil_mode", "bool", False, "round the output size up: a last, partial window "
             "counts (torch's ceil_mode)"),
    )
    if kind == "avg":
        attrs += (Attr("count_include_pad", "bool", True, "padded zeros count in the divisor"),)
    return attrs


def _recurrent_attrs(mode: str) -> tuple[Attr, ...]:
    attrs = (
        Attr("hidden", "int", doc="hidden size", minimum=1),
        Attr("layers", "int", 1, "stacked layers", minimum=1, maximum=1000),
        Attr("bidirectional", "bool", False),
        Attr("last", "bool", False, "return only the last step [H] instead of the sequence [T, H]"),
        _BIAS,
    )
    if mode == "rnn":
        attrs += (Attr("nonlinearity", "str", "tanh", choices=("tanh", "relu")),)
    return attrs + (
        Attr("states", "bool", False, "also give the final states, torch's h_n (and an lstm's "
             "c_n), each [layers * directions, hidden]: `out, h = x -> gru(64, states = "
             "true)`"),
        Attr("dropout", "float", 0.0, "dropout on the outputs of every layer but the last, "
             "while training", minimum=0.0, maximum=1.0),
    )


def _recurrent_torch(mode: str) -> Torch:
    """`batch_first=True` and the `bidirectional` flag are the torch backend's to write."""
    keywords = ("num_layers=layers",) + (("nonlinearity",) if mode == "rnn" else ()) + (
        "bias", "dropout")
    return Torch(f"nn.{mode.upper()}", ("input_size=input[-1]", "hidden_size=hidden"), keywords)


def _recurrent_label(mode: str) -> tuple[str, ...]:
    flags = ("{hidden}", "layers?{layers} layers", "bidirectional?bidirectional", "last?last step",
             "dropout?dropout {dropout}")
    return flags + (("nonlinearity?{nonlinearity}",) if mode == "rnn" else ())


def _activation(name, doc, torch, attrs=(), aliases=(), label=None):
    return OpDef(name, "activation", doc, _same_float(name), attrs, aliases=aliases,
                 torch=Torch(torch, keywords=tuple(a.name for a in attrs)), label=label)


def _unary_math(name, doc, torch="", symbol=""):
    return OpDef(name, "math", doc, _same_float(name), symbol=symbol,
                 torch=Torch(torch) if torch else None)


def _binary(name, family, doc, symbol="", torch=""):
    return OpDef(name, family, doc, _broadcast_infer(name, symbol or name), arity=(2, 2),
                 inputs_doc="a, b", outputs_doc="broadcast of a and b", broadcast=True,
                 symbol=symbol, torch=Torch(torch) if torch else None)


def _loss(name, doc, infer, torch="", attrs=(), inputs_doc="pred, target"):
    torch_form = Torch(torch, keywords=tuple(a.name for a in attrs)) if torch else None
    return OpDef(name, "loss", doc, infer, attrs, arity=(2, 2), inputs_doc=inputs_doc,
                 outputs_doc='scalar (per element with reduction="none")', torch=torch_form)


_REDUCE_ATTRS = (
    Attr("dim", "ints", None, "per-sample dim(s); none reduces everything incl. the batch",
         optional=True),
    Attr("keepdim", "bool", False),
)

OPS: dict[str, OpDef] = {}


ALIASES: dict[str, str] = {}
LOSSES: tuple[str, ...] = ()


def register(*defs: OpDef) -> None:
    """Add ops to the catalogue. An op whose traits say how it runs (a `torch` form, a NumPy
    kernel) then works in every backend; irregular ops also need their hand-written rules."""
    global LOSSES
    for d in defs:
        taken = [n for n in (d.name, *d.aliases) if n in OPS or n in ALIASES]
        if taken:
            raise ValueError(f"the catalogue already has an op `{taken[0]}`")
        OPS[d.name] = d
        ALIASES.update((alias, d.name) for alias in d.aliases)
    LOSSES = tuple(name for name, d in OPS.items() if d.family == "loss")


def unregister(*names: str) -> None:
    """Remove ops `register` added (a test's toy ops)."""
    global LOSSES
    for name in names:
        d = OPS.pop(name)
        for alias in d.aliases:
            del ALIASES[alias]
    LOSSES = tuple(name for name, d in OPS.items() if d.family == "loss")


@contextmanager
def registered(*defs: OpDef) -> Iterator[None]:
    """The catalogue with `defs` added, for the duration of a `with` block."""
    register(*defs)
    try:
        yield
    finally:
        unregister(*(d.name for d in defs))


register(
    OpDef("dense", "linear", "Fully connected layer over the last dim (torch.nn.Linear).",
          _dense_infer, (Attr("units", "int", doc="output features", minimum=1), _BIAS,
                         Attr("tie", "layer", None, "share the weight of a named layer "
                              "(e.g. an embedding)", optional=True)),
          params=_dense_params, macs=_dense_macs, inputs_doc="[..., F]",
          outputs_doc="[..., units]", aliases=("linear",), kernel="linear",
          torch=Torch("nn.Linear", ("in_features=input[-1]", "out_features=units"), ("bias",)),
          label=("{units}", "bias?no bias")),
    OpDef("dropout", "regularization", "Zeroes values with probability p while training.",
          _same, (Attr("p", "float", 0.5, minimum=0.0, maximum=1.0),), random=True,
          label=("{p}",)),
    OpDef("flatten", "shape", "Flattens each sample to one dim.", _flatten_infer,
          outputs_doc="[prod(dims)]", needs_batch=True),
    OpDef("reshape", "shape", "Reshapes each sample; one dim may be -1.", _reshape_infer,
          (Attr("shape", "dims", doc="the new per-sample shape: `reshape(8, 8)`, "
                "`reshape([8, 8])`, `reshape(T, heads, d / heads)`", variadic=True),),
          outputs_doc="shape", needs_batch=True,
          label=("{shape}",)),
    OpDef("select", "shape", "Takes one position along a per-sample dim, dropping that dim "
          "(e.g. the first token: `select(0)`; the last: `select(-1)`).", _select_infer,
          (Attr("index", "int"), Attr("dim", "int", 0)), outputs_doc="shape without dim"),
    OpDef("conv1d", "conv", "1-d convolution (torch.nn.Conv1d).", _conv1[0], _conv_attrs(),
          params=_conv1[1], macs=_conv1[2], inputs_doc="[C, L]", outputs_doc="[channels, L']",
          needs_batch=True),
    OpDef("conv2d", "conv", "2-d convolution (torch.nn.Conv2d).", _conv2[0], _conv_attrs(),
          params=_conv2[1], macs=_conv2[2], inputs_doc="[C, H, W]",
          outputs_doc="[channels, H', W']", needs_batch=True),
    OpDef("maxpool", "pool", "Max pooling; 1-d or 2-d follows the input.",
          _pool_rule("max", None), _pool_attrs(), macs=_pool_macs,
          inputs_doc="[C, L] or [C, H, W]", needs_batch=True),
    OpDef("maxpool1d", "pool", "1-d max pooling.", _pool_rule("max", 1), _pool_attrs(),
          macs=_pool_macs, inputs_doc="[C, L]", needs_batch=True),
    OpDef("maxpool2d", "pool", "2-d max pooling.", _pool_rule("max", 2), _pool_attrs(),
          macs=_pool_macs, inputs_doc="[C, H, W]", needs_batch=True),
    OpDef("avgpool", "pool", "Average pooling (padded zeros count in the divisor unless "
          "count_include_pad=false, as in torch); 1-d or 2-d follows the input.", _pool_rule("avg", None), _pool_attrs("avg"),
          macs=_pool_macs, inputs_doc="[C, L] or [C, H, W]", needs_batch=True),
    OpDef("avgpool1d", "pool", "1-d average pooling.", _pool_rule("avg", 1), _pool_attrs("avg"),
          macs=_pool_macs, inputs_doc="[C, L]", needs_batch=True),
    OpDef("avgpool2d", "pool", "2-d average pooling.", _pool_rule("avg", 2), _pool_attrs("avg"),
          macs=_pool_macs, inputs_doc="[C, H, W]", needs_batch=True),
    OpDef("adaptive_avgpool", "pool", "Average pooling to a fixed output size.",
          _adaptive_rule("adaptive_avgpool"), (Attr("size", "ints", doc="output size per spatial dim", minimum=1),),
          macs=_pool_macs, inputs_doc="[C, L] or [C, H, W]", outputs_doc="[C, size...]",
          needs_batch=True),
    OpDef("global_avgpool", "pool", "Averages over all spatial positions.", _global_infer,
          macs=_pool_macs, inputs_doc="[C, ...]", outputs_doc="[C]", needs_batch=True),
    OpDef("batchnorm", "norm", "Batch normalisation over the channel dim (BatchNorm1d/2d by "
          "rank); running statistics with torch's momentum.", _batchnorm_infer,
          (Attr("eps", "float", 1e-5, minimum=0.0), Attr("momentum", "float", 0.1, minimum=0.0,
                                                          maximum=1.0),
           Attr("affine", "bool", True)), params=_batchnorm_params,
          inputs_doc="[C], [C, L] or [C, H, W]", aliases=("batchnorm1d", "batchnorm2d"),
          needs_batch=True, torch=Torch("nn.BatchNorm1d", ("num_features=input[0]",),
                                        ("eps", "momentum", "affine"))),
    OpDef("layernorm", "norm", "Layer normalisation over the last `dims` dims.",
          _layernorm_infer, (Attr("eps", "float", 1e-5, minimum=0.0), Attr("affine", "bool", True),
                             Attr("dims", "int", 1, "how many trailing dims to normalise",
                                  minimum=1)), params=_layernorm_params,
          torch=Torch("nn.LayerNorm", keywords=("eps", "elementwise_affine=affine"))),
    OpDef("embedding", "embedding", "Looks up a learned vector per integer token.",
          _embedding_infer, (Attr("num", "int", doc="vocabulary size", minimum=1),
                             Attr("dim", "int", doc="vector size", minimum=1),
                             Attr("padding_idx", "int", None, optional=True),
                             Attr("std", "float", 1.0, "std of the normal initialisation "
                                  "(torch's default 1; GPT-style models use 0.02)", minimum=0.0)),
          params=_embedding_params, inputs_doc="int[...]", outputs_doc="[..., dim]",
          torch=Torch("nn.Embedding", ("num_embeddings=num", "embedding_dim=dim"),
                      ("padding_idx",), weight_std="std"),
          label=("{num} → {dim}",)),
    OpDef("positions", "embedding", "Learned position embeddings; with an input, as many "
          "positions as its first dim.", _positions_infer,
          (Attr("max_len", "int", minimum=1), Attr("dim", "int", minimum=1),
           Attr("std", "float", 1.0, "std of the normal initialisation", minimum=0.0)),
          arity=(0, 1), params=_positions_params, inputs_doc="optional [T, ...]",
          outputs_doc="[T, dim] (or [max_len, dim])",
          torch=Torch("nn.Embedding", ("max_len", "dim"), weight_std="std"),
          label=("{max_len} × {dim}",)),
    OpDef("sinusoidal", "embedding", "Fixed sine/cosine position encodings (Vaswani et al.).",
          _positions_infer, (Attr("max_len", "int", minimum=1), Attr("dim", "int", minimum=2)),
          arity=(0, 1), inputs_doc="optional [T, ...]", outputs_doc="[T, dim] (or [max_len, dim])",
          label=("{max_len} × {dim}",)),
    OpDef("attention", "attention", "Multi-head attention: self-attention, or cross-attention "
          "with keys/values from a second input (`x -> attention(memory, 8)`); masks, "
          "grouped-query heads, rotary embeddings. torch.nn.MultiheadAttention's parameters "
          "(packed in_proj), or LLaMA's q_proj, k_proj, v_proj, o_proj with kv_heads < heads "
          "or rope.", _attention_infer,
          (Attr("heads", "int", minimum=1), Attr("causal", "bool", False, "mask future positions"),
           _BIAS,
           Attr("kv_heads", "int", None, "key/value heads, dividing heads (grouped-query; 1: "
                "multi-query); none: as many as heads", optional=True, minimum=1),
           Attr("dropout", "float", 0.0, "dropout on the attention weights while training",
                minimum=0.0, maximum=1.0),
           Attr("rope", "bool", False, "rotary position embedding of queries and keys (LLaMA)"),
           Attr("rope_theta", "float", 10000.0, "the rotary embedding's base", minimum=1.0),
           Attr("key_padding_mask", "tensor", None, "[S] per sample: true hides that key "
                "(padding), or a float added to its scores"),
           Attr("attn_mask", "tensor", None, "[T, S]: true hides key s from query t, or a "
                "float added to the scores")),
          arity=(1, 2), params=_attention_params, macs=_attention_macs,
          inputs_doc="[T, E], optional memory [S, M]", outputs_doc="[T, E]", needs_batch=True,
          random=True,
          torch=Torch("nn.MultiheadAttention", ("embed_dim=input[-1]", "num_heads=heads"),
                      ("dropout", "bias")),
          label=("{heads} heads", "kv_heads?{kv_heads} kv heads", "causal?causal", "rope?rope",
                 "dropout?dropout {dropout}", "bias?no bias",
                 "key_padding_mask?padding mask", "attn_mask?mask")),
    OpDef("rope", "embedding", "Rotary position embedding (LLaMA's rotate_half convention) of "
          "a [T, heads, head_dim] tensor, positions along T.", _rope_infer,
          (Attr("theta", "float", 10000.0, "the base of the rotation frequencies", minimum=1.0),),
          inputs_doc="[T, heads, head_dim]", needs_batch=True,
          label=("theta?θ {theta}",)),
    OpDef("rmsnorm", "norm", "Root-mean-square normalisation over the last dim with a learned "
          "scale (torch.nn.RMSNorm; eps none: the float32 machine epsilon, as torch).",
          _rmsnorm_infer, (Attr("eps", "float", None, optional=True, minimum=0.0),
                           Attr("affine", "bool", True)),
          params=_rmsnorm_params, kernel="nnspec.backends.numpy.kernels.norm_rms:rms_norm",
          torch=Torch("nn.RMSNorm", ("normalized_shape=input[-1]",),
                      ("eps", "elementwise_affine=affine"))),
    # ---- recurrent (the losses helper's block) ----
    OpDef("rnn", "recurrent", "Elman RNN (torch.nn.RNN).", _rnn[0], _recurrent_attrs("rnn"),
          arity=(1, 2), params=_rnn[1], macs=_rnn[2], inputs_doc="[T, F], optional h0",
          outputs_doc="[T, H] or [H]; with states: and h_n", needs_batch=True,
          torch=_recurrent_torch("rnn"), label=_recurrent_label("rnn"), results=_rnn[3]),
    OpDef("lstm", "recurrent", "LSTM, gates i,f,g,o (torch.nn.LSTM).", _lstm[0],
          _recurrent_attrs("lstm"), arity=(1, 3), params=_lstm[1], macs=_lstm[2],
          inputs_doc="[T, F], optional h0, c0", outputs_doc="[T, H] or [H]; with states: "
          "and h_n, c_n", needs_batch=True, torch=_recurrent_torch("lstm"),
          label=_recurrent_label("lstm"), results=_lstm[3]),
    OpDef("gru", "recurrent", "GRU, gates r,z,n (torch.nn.GRU).", _gru[0], _recurrent_attrs("gru"),
          arity=(1, 2), params=_gru[1], macs=_gru[2], inputs_doc="[T, F], optional h0",
          outputs_doc="[T, H] or [H]; with states: and h_n", needs_batch=True,
          torch=_recurrent_torch("gru"), label=_recurrent_label("gru"), results=_gru[3]),
    OpDef("result", "shape", "One tensor of a layer that gives several (made by the builder "
          "when such a layer is applied: `out, h, c = x -> lstm(64, states = true)`).",
          _result_infer, (Attr("index", "int", minimum=0), Attr("name", "str")),
          inputs_doc="a layer's results", outputs_doc="its index-th tensor",
          label=("{name}",)),
    _activation("relu", "max(x, 0)", "F.relu"),
    _activation("sigmoid", "1 / (1 + exp(-x))", "torch.sigmoid"),
    _activation("tanh", "hyperbolic tangent", "torch.tanh"),
    OpDef("softmax", "activation", "Normalises to probabilities along `dim`.",
          _softmax_infer("softmax"), (Attr("dim", "int", -1),)),
    OpDef("log_softmax", "activation", "log(softmax(x)), computed stably.",
          _softmax_infer("log_softmax"), (Attr("dim", "int", -1),)),
    _activation("gelu", "Gaussian error linear unit (exact erf form by default).", "F.gelu",
                (Attr("approximate", "str", "none", choices=("none", "tanh")),),
                label=("approximate?{approximate}",)),
    _activation("leaky_relu", "x if x > 0 else negative_slope * x", "F.leaky_relu",
                (Attr("negative_slope", "float", 0.01),),
                label=("negative_slope?{negative_slope}",)),
    _activation("elu", "x if x > 0 else alpha * (exp(x) - 1)", "F.elu",
                (Attr("alpha", "float", 1.0),)),
    _activation("silu", "x * sigmoid(x) (swish)", "F.silu", aliases=("swish",)),
    _activation("relu6", "min(max(x, 0), 6) (MobileNet)", "F.relu6"),
    _binary("add", "merge", "Elementwise sum (`a + b`), broadcasting.", symbol="+"),
    _binary("sub", "merge", "Elementwise difference (`a - b`).", symbol="-"),
    _binary("mul", "merge", "Elementwise product (`a * b`).", symbol="*"),
    _binary("div", "math", "Elementwise quotient (`a / b`).", symbol="/"),
    _binary("pow", "math", "Elementwise power (`a ^ b`).", symbol="^"),
    _binary("maximum", "math", "Elementwise maximum.", torch="torch.maximum"),
    _binary("minimum", "math", "Elementwise minimum.", torch="torch.minimum"),
    OpDef("concat", "merge", "Joins inputs along a per-sample dim.", _concat_infer,
          (Attr("dim", "int", -1),), arity=(2, None), inputs_doc="a, b, ...",
          outputs_doc="joined along dim"),
    _unary_math("neg", "-x", symbol="-"),
    _unary_math("abs", "|x|", "torch.abs"),
    _unary_math("exp", "e^x", "torch.exp"),
    _unary_math("log", "natural logarithm", "torch.log"),
    _unary_math("sqrt", "square root", "torch.sqrt"),
    OpDef("clip", "math", "Clamps values into [min, max].", _same_float("clip"),
          (Attr("min", "float", None, optional=True), Attr("max", "float", None, optional=True)),
          torch=Torch("torch.clamp", keywords=("min", "max"))),
    OpDef("where", "math", "Picks a where cond holds, else b.", _where_infer, arity=(3, 3),
          inputs_doc="cond, a, b", outputs_doc="broadcast", broadcast=True,
          torch=Torch("torch.where")),
    *(OpDef(name, "math", f"Elementwise comparison `{sym}` (a mask; no gradient).",
            _compare_infer, arity=(2, 2), inputs_doc="a, b", outputs_doc="bool mask",
            broadcast=True, symbol=sym)
      for name, sym in (("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="), ("eq", "=="),
                        ("ne", "!="))),
    OpDef("mean", "math", "Mean over dims (all dims incl. the batch by default).",
          _reduce_infer("mean"), _REDUCE_ATTRS),
    OpDef("sum", "math", "Sum over dims (all dims incl. the batch by default).",
          _reduce_infer("sum"), _REDUCE_ATTRS),
    OpDef("max", "math", "Maximum over dims (all dims incl. the batch by default).",
          _reduce_infer("max"), _REDUCE_ATTRS),
    OpDef("scalar", "math", "A number used as a tensor operand.", _scalar_infer,
          (Attr("value", "float"),), arity=(0, 0), outputs_doc="scalar"),
    # ---- losses (the losses helper's block) ----
    _loss("mse", "Mean squared error.", _loss_same_shape("mse"), "F.mse_loss",
          (_reduction_attr(),)),
    _loss("l1", "Mean absolute error.", _loss_same_shape("l1"), "F.l1_loss",
          (_reduction_attr(),)),
    _loss("huber", "Huber loss: 0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta) "
          "(F.huber_loss).", _loss_same_shape("huber"), "F.huber_loss",
          (Attr("delta", "float", 1.0, minimum=0.0), _reduction_attr())),
    _loss("smooth_l1", "Smooth L1: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta "
          "(F.smooth_l1_loss).", _loss_same_shape("smooth_l1"), "F.smooth_l1_loss",
          (Attr("beta", "float", 1.0, minimum=0.0), _reduction_attr())),
    _loss("cross_entropy", "Cross-entropy from logits over the class dim (the last of [C] and "
          "[T, C], the first of [C, H, W]: a class per pixel, as torch); targets are class "
          "indices or probabilities.", _cross_entropy_infer, "F.cross_entropy",
          attrs=(Attr("label_smoothing", "float", 0.0, minimum=0.0, maximum=1.0),
                 Attr("ignore_index", "int", -100),
                 Attr("weight", "floats", None, "a weight per class; the mean is weighted",
                      optional=True),
                 _reduction_attr()),
          inputs_doc="logits [..., C] or [C, H, W], target"),
    _loss("nll", "Negative log-likelihood of log-probabilities over the class dim, as "
          "cross_entropy's (after `log_softmax`); targets are class indices (F.nll_loss).",
          _nll_infer, "F.nll_loss",
          attrs=(Attr("weight", "floats", None, "a weight per class; the mean is weighted",
                      optional=True),
                 Attr("ignore_index", "int", -100), _reduction_attr()),
          inputs_doc="log_probs [..., C] or [C, H, W], int target"),
    _loss("kl_div", "KL divergence as torch's F.kl_div: the input is log-probabilities, the "
          "target probabilities (or log-probabilities with log_target).", _kl_div_infer,
          "F.kl_div", (_reduction_attr(("mean", "batchmean", "sum", "none")),
                       Attr("log_target", "bool", False)),
          inputs_doc="log_probs, target"),
    _loss("binary_cross_entropy", "Binary cross-entropy of probabilities (or of logits with "
          "logits=true, computed stably).", _loss_same_shape("binary_cross_entropy"),
          attrs=(Attr("logits", "bool", False, "the prediction is a logit, not a probability"),
                 Attr("pos_weight", "floats", None, "weight of the positive term, one per "
                      "class of the last dim or one for all (needs logits=true)",
                      optional=True),
                 _reduction_attr())),
)


# ---- sampling ------------------------------------------------------------------------------

register(
    OpDef("noise", "math", "Standard-normal samples shaped like x (torch.randn_like) "
          "while training, drawn from the run's seeded generator; zeros at eval, the mean, so "
          "a VAE's `mu + exp(0.5 * logvar) * noise(mu)` predicts from the mean. No gradient "
          "flows to x.", _same_float("noise"), random=True, shape_only=True,
          outputs_doc="same as x",
          kernel="nnspec.backends.numpy.kernels.noise:noise"),
)


# ---- tensor ops: transpose, permute, matmul, slicing, stack, pad, learned parameters -----


def _transpose_infer(ins, a):
    x = ins[0]
    if x.rank < 2:
        raise ShapeError(f"transpose needs two per-sample dims to swap, got {x}",
                         "the batch dim is implicit and cannot be moved", code="E302")
    i, j = _dim_index(x.rank, a.dim0, "transpose"), _dim_index(x.rank, a.dim1, "transpose")
    shape = list(x.shape)
    shape[i], shape[j] = shape[j], shape[i]
    return x.with_shape(shape)


def permutation(rank: int, dims) -> tuple[int, ...]:
    """`permute`'s dims as non-negative per-sample dims (checked by its shape rule)."""
    return tuple(d % rank for d in ((dims,) if isinstance(dims, int) else dims))


def _permute_infer(ins, a):
    x = ins[0]
    dims = (a.dims,) if isinstance(a.dims, int) else tuple(a.dims)
    if len(dims) != x.rank:
        raise ShapeError(f"permute needs one dim per per-sample dim of {x} ({x.rank}), got "
                         f"{len(dims)}", "the batch dim is implicit and stays first",
                         code="E302")
    axes = tuple(_dim_index(x.rank, d, "permute") for d in dims)
    if sorted(axes) != list(range(x.rank)):
        raise ShapeError(f"permute: {list(dims)} is not an order of the dims 0..{x.rank - 1}")
    return x.with_shape(tuple(x.shape[i] for i in axes))


def _matmul_infer(ins, a):
    x, y = ins
    for t in ins:
        _require_float(t, "matmul")
        if t.rank == 0:
            raise ShapeError("`@` multiplies vectors and matrices, not a scalar",
                             "use `*` to scale by a number", code="E302")
    if x.batched and x.rank == 1 and (y.batched or y.rank > 2):
        raise ShapeError(f"`@`: a batched vector {x} multiplies only a shared matrix or vector",
                         "reshape it to one row first: `reshape(1, n)`", code="E302")
    if y.batched and y.rank == 1:
        raise ShapeError(f"`@`: a batched vector {y} cannot be the right operand",
                         "reshape it to one column first: `reshape(n, 1)`", code="E302")
    left = x.shape if x.rank > 1 else (1,) + x.shape
    right = y.shape if y.rank > 1 else y.shape + (1,)
    if left[-1] != right[-2]:
        raise ShapeError(f"`@` cannot multiply {x} by {y}: {left[-1]} != {right[-2]} (the last "
                         "dim of the left operand must equal the second-to-last of the right)",
                         "transpose one side, e.g. `a @ transpose(b, -1, -2)`", code="E305")
    lead = broadcast(TensorType(left[:-2], batched=x.batched),
                     TensorType(right[:-2], batched=y.batched))
    if lead is None:
        raise ShapeError(f"`@` cannot broadcast the leading dims of {x} and {y}", code="E305")
    shape = lead + left[-2:-1] * (x.rank > 1) + right[-1:] * (y.rank > 1)
    return TensorType(shape, "float32", x.batched or y.batched)


def _matmul_macs(ins, out, a):
    return dim_mul(out.numel, ins[0].shape[-1])


def slice_size(size: Dim, start: int | None, stop: int | None, step: int) -> Dim:
    """How many positions `start:stop:step` takes from a dim of `size` (NumPy's rule); a
    symbolic size is sliced only where the count does not depend on it, or by a fixed
    offset with step 1 (`x[1:]` of T is T-1)."""
    if isinstance(size, int):
        first, end, stride = slice(start, stop, step).indices(size)  # a dim past 2^63 too
        count = max(0, (end - first + stride - (1 if stride > 0 else -1)) // stride)
        if count == 0:
            raise ShapeError(f"the slice {_slice_text(start, stop, step)} of a dim of size "
                             f"{size} is empty", code="E304")
        return count
    first = start or 0
    if step == 1 and stop is None:
        return -first if first < 0 else dim_add(size, -first)
    if step == 1 and (first < 0) == (stop < 0) and stop > first:
        return stop - first  # both counted from the start, or both from the end
    if step == 1 and first >= 0 > stop:
        return dim_add(size, stop - first)
    raise ShapeError(f"the slice {_slice_text(start, stop, step)} of the symbolic dim {size} "
                     "has no size known in advance", "declare that dim as a number",
                     code="E301")


def _slice_text(start, stop, step) -> str:
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    return text + (f":{step}" if step != 1 else "")


def _slice_infer(ins, a):
    x = ins[0]
    if x.rank == 0:
        raise ShapeError("slice needs at least one per-sample dim", code="E302")
    axis = _dim_index(x.rank, a.dim, "slice")
    size = slice_size(x.shape[axis], a.start, a.stop, a.step)
    return x.with_shape(x.shape[:axis] + (size,) + x.shape[axis + 1:])


def _stack_infer(ins, a):
    first = ins[0]
    for other in ins[1:]:
        if other.shape != first.shape:
            raise ShapeError(f"stack needs inputs of one shape, got {first} and {other}",
                             code="E305")
    axis = _dim_index(first.rank + 1, a.dim, "stack")
    shape = first.shape[:axis] + (len(ins),) + first.shape[axis:]
    return TensorType(shape, first.dtype, any(x.batched for x in ins))


def _pad_infer(ins, a):
    x = ins[0]
    pads = (a.pads,) if isinstance(a.pads, int) else tuple(a.pads)
    if len(pads) % 2:
        raise ShapeError(f"pad takes pairs (before, after), last dim first as torch's F.pad, "
                         f"got {len(pads)} values")
    if len(pads) // 2 > x.rank:
        raise ShapeError(f"pad: {len(pads) // 2} dims padded but {x} has {x.rank} per-sample "
                         "dims", "the batch dim is implicit and cannot be padded", code="E302")
    shape = list(x.shape)
    for i in range(len(pads) // 2):
        shape[-1 - i] = dim_add(shape[-1 - i], pads[2 * i] + pads[2 * i + 1])
    return x.with_shape(shape)


def param_shape(a: Attrs) -> tuple[int, ...]:
    return (a.shape,) if isinstance(a.shape, int) else tuple(a.shape)


def _parameter_infer(ins, a):
    return TensorType(param_shape(a), "float32", batched=False)


def _parameter_params(ins, a):
    """The one tensor, named after the node itself (its local name is empty)."""
    return {"": ParamSpec(param_shape(a), a.init, std=a.std)}


PARAM_INITS = ("zeros", "ones", "normal")

register(
    OpDef("transpose", "shape", "Swaps two per-sample dims (`transpose(k, -1, -2)`).",
          _transpose_infer, (Attr("dim0", "int"), Attr("dim1", "int")),
          outputs_doc="dims dim0 and dim1 swapped", label=("{dim0} ↔ {dim1}",)),
    OpDef("permute", "shape", "Reorders the per-sample dims (the batch stays first).",
          _permute_infer, (Attr("dims", "ints", doc="the new order of the per-sample dims",
                                variadic=True),),
          outputs_doc="dims reordered", label=("{dims}",)),
    OpDef("matmul", "math", "Matrix product (`a @ b`, torch.matmul) with broadcast leading "
          "dims; a shared (unbatched) operand applies to every sample.", _matmul_infer,
          arity=(2, 2), macs=_matmul_macs, inputs_doc="a [..., n, k], b [..., k, m]",
          outputs_doc="[..., n, m]", broadcast=True, symbol="@"),
    OpDef("slice", "shape", "Positions start:stop:step of one per-sample dim (`x[:, 1:3]` "
          "writes it).", _slice_infer,
          (Attr("start", "int", None, optional=True), Attr("stop", "int", None, optional=True),
           Attr("step", "int", 1, minimum=1), Attr("dim", "int", 0)),
          outputs_doc="dim cut to the slice"),
    OpDef("stack", "merge", "Joins same-shaped inputs along a new per-sample dim.",
          _stack_infer, (Attr("dim", "int", 0),), arity=(2, None), inputs_doc="a, b, ...",
          outputs_doc="[n, ...] at dim"),
    OpDef("pad", "shape", "Constant padding as torch's F.pad: (before, after) pairs from the "
          "last dim backwards.", _pad_infer,
          (Attr("pads", "ints", doc="[before, after] of the last dim, then of the one before...",
                minimum=0), Attr("value", "float", 0.0)),
          outputs_doc="padded", torch=Torch("F.pad", keywords=("value",)),
          label=("{pads}", "value?value {value}")),
    OpDef("parameter", "embedding", "A learned tensor of its own (written `param name: "
          "[dims] = init`); shared by every sample.", _parameter_infer,
          (Attr("shape", "ints", doc="its shape", minimum=1, variadic=True),
           Attr("init", "str", "zeros", choices=PARAM_INITS),
           Attr("std", "float", 1.0, "std of the normal initialisation", minimum=0.0)),
          arity=(0, 0), params=_parameter_params, inputs_doc="none", outputs_doc="shape",
          label=("{shape}", "init?{init}")),
)


register(
    OpDef("conv_transpose1d", "conv", "1-d transposed convolution (torch.nn.ConvTranspose1d): "
          "the gradient of conv1d with respect to its input; weight [C, channels / groups, k].",
          _conv_t1[0], _conv_transpose_attrs(), params=_conv_t1[1], macs=_conv_t1[2],
          inputs_doc="[C, L]", outputs_doc="[channels, L']", needs_batch=True,
          torch=_conv_transpose_torch(1)),
    OpDef("conv_transpose2d", "conv", "2-d transposed convolution (torch.nn.ConvTranspose2d): "
          "H' = (H - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1.",
          _conv_t2[0], _conv_transpose_attrs(), params=_conv_t2[1], macs=_conv_t2[2],
          inputs_doc="[C, H, W]", outputs_doc="[channels, H', W']", needs_batch=True,
          torch=_conv_transpose_torch(2)),
    OpDef("upsample", "pool", "Up-sampling by `scale_factor` or to `size` (torch.nn.Upsample): "
          "nearest, or linear interpolation (\"linear\" for [C, L], \"bilinear\" for [C, H, W]).",
          _upsample_infer,
          (Attr("scale_factor", "scales", None, "multiplies the spatial sizes (floor): one "
                "number for all, or one per dim (`[2, 3]`)", minimum=0.0, optional=True),
           Attr("size", "ints", None, "output size per spatial dim", minimum=1, optional=True),
           Attr("mode", "str", "nearest", choices=("nearest", "linear", "bilinear")),
           Attr("align_corners", "bool", False, "corner pixels of input and output line up")),
          macs=_pool_macs, inputs_doc="[C, L] or [C, H, W]", outputs_doc="[C, size...]",
          needs_batch=True,
          torch=Torch("F.interpolate", keywords=("size", "scale_factor", "mode",
                                                 "align_corners")),
          label=("scale_factor?×{scale_factor}", "size?{size}", "mode?{mode}",
                 "align_corners?align corners")),
    OpDef("pixel_shuffle", "shape", "Moves channels into space: [C * r², H, W] -> "
          "[C, H * r, W * r] (torch.nn.PixelShuffle, sub-pixel convolution).",
          _pixel_shuffle_infer, (Attr("upscale", "int", doc="r", minimum=1),),
          inputs_doc="[C * r², H, W]", outputs_doc="[C, H * r, W * r]",
          torch=Torch("F.pixel_shuffle", keywords=("upscale_factor=upscale",)),
          label=("×{upscale}",)),
    OpDef("pixel_unshuffle", "shape", "The inverse of pixel_shuffle: [C, H * r, W * r] -> "
          "[C * r², H, W] (torch.nn.PixelUnshuffle).",
          _pixel_unshuffle_infer, (Attr("downscale", "int", doc="r", minimum=1),),
          inputs_doc="[C, H * r, W * r]", outputs_doc="[C * r², H, W]",
          torch=Torch("F.pixel_unshuffle", keywords=("downscale_factor=downscale",)),
          label=("÷{downscale}",)),
    OpDef("adaptive_maxpool", "pool", "Max pooling to a fixed output size (torch's bins; the "
          "gradient goes to each bin's first maximum).", _adaptive_rule("adaptive_maxpool"),
          (Attr("size", "ints", doc="output size per spatial dim", minimum=1),),
          macs=_pool_macs, inputs_doc="[C, L] or [C, H, W]", outputs_doc="[C, size...]",
          needs_batch=True),
    OpDef("groupnorm", "norm", "Group normalisation (torch.nn.GroupNorm): statistics per "
          "sample over each group of channels and all positions.", _groupnorm_infer,
          (Attr("groups", "int", doc="channel groups (num_groups)", minimum=1),
           Attr("eps", "float", 1e-5, minimum=0.0), Attr("affine", "bool", True)),
          params=_affine_params, inputs_doc="[C, ...]", needs_batch=True, kernel="group_norm",
          torch=Torch("nn.GroupNorm", ("num_groups=groups", "num_channels=input[0]"),
                      ("eps", "affine"))),
    OpDef("instancenorm", "norm", "Instance normalisation (InstanceNorm1d/2d by rank): "
          "statistics per sample and channel; running statistics only with "
          "track_running_stats.", _instancenorm_infer,
          (Attr("eps", "float", 1e-5, minimum=0.0),
           Attr("momentum", "float", 0.1, minimum=0.0, maximum=1.0),
           Attr("affine", "bool", False, "a learned per-channel scale and shift (torch's "
                "default: none)"),
           Attr("track_running_stats", "bool", False, "keep running statistics and use them "
                "in evaluation")),
          params=_instancenorm_params, inputs_doc="[C, L] or [C, H, W]", needs_batch=True,
          torch=Torch("nn.InstanceNorm1d", ("num_features=input[0]",),
                      ("eps", "momentum", "affine", "track_running_stats"))),
)


def lookup(name: str) -> OpDef | None:
    return OPS.get(ALIASES.get(name, name))


def tensor_keywords(opdef: OpDef, attrs) -> dict[str, int]:
    """The tensor keywords a node was given, each with the index of its input (they follow
    the positional inputs, in the order of the op's attributes)."""
    return {a.name: attrs[a.name] for a in opdef.attrs
            if a.kind == "tensor" and attrs.get(a.name) is not None}


def positional_arity(opdef: OpDef, attrs, inputs: int) -> int:
    """How many of a node's `inputs` were passed by position (the rest are tensor keywords)."""
    return inputs - len(tensor_keywords(opdef, attrs))


# ---- optimizers, schedules, metrics: hyperparameters and torch.optim's defaults -------------


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    doc: str
    hyper: tuple[Attr, ...]


OPTIMIZERS: dict[str, OptimizerDef] = {
    d.name: d
    for d in (
        OptimizerDef("sgd", "torch.optim.SGD", (
            Attr("lr", "float", 1e-3, minimum=0.0), Attr("momentum", "float", 0.0, minimum=0.0),
            Attr("dampening", "float", 0.0), Attr("nesterov", "bool", False),
            Attr("weight_decay", "float", 0.0, minimum=0.0))),
        OptimizerDef("adam", "torch.optim.Adam", (
            Attr("lr", "float", 1e-3, minimum=0.0), Attr("betas", "floats", (0.9, 0.999)),
            Attr("eps", "float", 1e-8, minimum=0.0), Attr("weight_decay", "float", 0.0, minimum=0.0),
            Attr("amsgrad", "bool", False))),
        OptimizerDef("adamw", "torch.optim.AdamW", (
            Attr("lr", "float", 1e-3, minimum=0.0), Attr("betas", "floats", (0.9, 0.999)),
            Attr("eps", "float", 1e-8, minimum=0.0), Attr("weight_decay", "float", 1e-2, minimum=0.0),
            Attr("amsgrad", "bool", False))),
        OptimizerDef("rmsprop", "torch.optim.RMSprop", (
            Attr("lr", "float", 1e-2, minimum=0.0), Attr("alpha", "float", 0.99),
            Attr("eps", "float", 1e-8, minimum=0.0), Attr("weight_decay", "float", 0.0, minimum=0.0),
            Attr("momentum", "float", 0.0, minimum=0.0), Attr("centered", "bool", False))),
        OptimizerDef("adagrad", "torch.optim.Adagrad", (
            Attr("lr", "float", 1e-2, minimum=0.0), Attr("lr_decay", "float", 0.0, minimum=0.0),
            Attr("weight_decay", "float", 0.0, minimum=0.0),
            Attr("initial_accumulator_value", "float", 0.0, minimum=0.0),
            Attr("eps", "float", 1e-10, minimum=0.0))),
    )
}

SCHEDULES: dict[str, OptimizerDef] = {
    d.name: d
    for d in (
        OptimizerDef("step", "multiply the lr by gamma every step_size epochs (StepLR)", (
            Attr("step_size", "int", minimum=1), Attr("gamma", "float", 0.1, minimum=0.0),
            Attr("warmup", "int", 0, "linear warm-up epochs", minimum=0))),
        OptimizerDef("cosine", "cosine annealing to eta_min over the run (CosineAnnealingLR)", (
            Attr("eta_min", "float", 0.0, minimum=0.0),
            Attr("warmup", "int", 0, "linear warm-up epochs", minimum=0))),
    )
}

METRICS = {  # nnspec/training/metrics.py computes them
    "accuracy": "fraction of samples (or positions) whose arg-max class equals the label",
    "top_k_accuracy": "`top_k_accuracy(k = 5)`: the label is among the k highest scores "
                      "(its column: `top5_accuracy`)",
    "perplexity": "exp of the mean negative log-likelihood of the labels",
    "precision": "macro-averaged precision over the classes",
    "recall": "macro-averaged recall over the classes",
    "f1": "macro-averaged F1 score over the classes",
    "mae": "mean absolute error",
    "mse": "mean squared error",
}
