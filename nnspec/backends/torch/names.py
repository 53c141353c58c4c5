"""What of a spec may reach generated code: checked identifiers and literal numbers.

The grammar already admits only ASCII identifiers, but the generator checks again at its own
boundary: every name is matched against `IDENTIFIER` and every value is printed by `literal`,
which knows numbers, booleans, tuples of them and a short list of option strings. Names that
become `state_dict` keys (layer labels) cannot be renamed, so those that would clash with
Python or with `nn.Module` are rejected with a diagnostic; names that do not reach the weights
(classes, functions, arguments) are renamed instead.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

from nnspec.diagnostics import Diagnostic, Span, SpecError

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INDEX = re.compile(r"(0|[1-9][0-9]*)\Z")

PYTHON_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))

# Public attributes of nn.Module, nn.ModuleDict and nn.ModuleList (torch 2.x): a submodule
# of one of these names would replace a method (`forward`, `eval`) or fail to register.
# Names starting with `_` are refused wholesale: torch keeps its own state there.
MODULE_ATTRIBUTES = frozenset((
    "T_destination", "add_module", "append", "apply", "bfloat16", "buffers", "call_super_init",
    "children", "clear", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extend",
    "extra_repr", "float", "forward", "get_buffer", "get_extra_state", "get_parameter",
    "get_submodule", "half", "insert", "ipu", "items", "keys", "load_state_dict", "modules",
    "mtia", "named_buffers", "named_children", "named_modules", "named_parameters",
    "parameters", "pop", "register_backward_hook", "register_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train",
    "training", "type", "update", "values", "xpu", "zero_grad",
))

# Option strings a spec may choose (each attribute validates its choices); nothing else of
# the spec's text is ever printed inside quotes.
OPTION_STRINGS = frozenset({"same", "valid", "none", "tanh", "relu",
                            "mean", "sum", "batchmean",  # loss reductions
                            "nearest", "linear", "bilinear"})  # upsample modes


def reject(message: str, span: Span | None, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic("E501", message, span, hint)])


def checked_identifier(name: str, span: Span | None = None) -> str:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise reject(f"`{name!r}` is not a plain ASCII identifier and cannot appear in "
                     "generated code", span)
    return name


def module_component(name: str, span: Span | None) -> str:
    """One component of a `state_dict` prefix: a label, an auto name or a repeat index."""
    if isinstance(name, str) and INDEX.match(name):
        return name
    checked_identifier(name, span)
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name.startswith("_") \
            or name in MODULE_ATTRIBUTES:
        why = ("is a Python keyword" if keyword.iskeyword(name) or keyword.issoftkeyword(name)
               else "starts with `_`, which PyTorch reserves for a module's own state"
               if name.startswith("_") else f"is the name of the nn.Module attribute `{name}`")
        raise reject(f"the layer name `{name}` {why}, so it cannot name a PyTorch submodule",
                     span, "pick another label with `as`; the label is the weights' name")
    return name


class Namespace:
    """Names in one Python scope; `claim` hands out a free, safe variant of a wanted name."""

    def __init__(self, taken=()):
        self.taken: set[str] = set(taken)

    def claim(self, wanted: str) -> str:
        checked_identifier(wanted)
        name = wanted
        if name in PYTHON_NAMES or (name.startswith("__") and name.endswith("__")):
            name += "_"
        base, n = name, 1
        while name in self.taken:
            n += 1
            name = f"{base}{n}" if not base.endswith("_") else f"{base}{n}_"
        self.taken.add(name)
        return name


def literal(value) -> str:
    """Python source for a value of the IR: ints, floats (incl. inf and nan), bools, None,
    tuples of these, and option strings."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, str) and value in OPTION_STRINGS:
        return f'"{value}"'
    raise reject(f"the value {value!r} cannot be written into generated code", None)


def file_label(path: str) -> str:
    """A spec's file name for comments: its base name with anything unusual replaced, so a
    hostile file name cannot end a comment and start code."""
    base = re.split(r"[\\/]", str(path))[-1] or "spec"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)


def camel(name: str) -> str:
    """`convs` -> `Convs`, `layer_2` -> `Layer2`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Unit"
