"""The diagram's colours and fonts, shared by the boxes (`dot`) and the legend (`labels`)."""

from __future__ import annotations

from nnspec.ir import ops

FONT = "Helvetica,Arial,sans-serif"
INK, MUTED, EDGE, SKIP_EDGE = "#333333", "#8a8a8a", "#6e6e6e", "#3f7fbf"
ERROR_FILL, ERROR_LINE, ERROR_TEXT = "#fde4e4", "#d32f2f", "#b71c1c"
UNCHECKED_FILL, UNCHECKED_LINE = "#f7f7f7", "#b0b0b0"
FOLDED_FILL, FOLDED_LINE = "#eef1f6", "#6d7f95"
IO_FILL, IO_LINE = "#ffffff", "#4d4d4d"

# op family -> (fill, line, legend name); a test checks every family of the catalogue is here
FAMILY_STYLES: dict[str, tuple[str, str, str]] = {
    "conv": ("#d7e5f5", "#4f7cae", "convolution"),
    "linear": ("#e3ddf3", "#7161a6", "dense"),
    "pool": ("#d4ede7", "#3e8e7e", "pooling"),
    "norm": ("#e4f0d5", "#6b9944", "normalisation"),
    "activation": ("#fde8d0", "#c47b2a", "activation"),
    "attention": ("#f8dada", "#b05656", "attention"),
    "recurrent": ("#f2e5cd", "#977642", "recurrent"),
    "embedding": ("#f5e1f0", "#985585", "embedding"),
    "merge": ("#fff2c2", "#ad8d24", "merge"),
    "shape": ("#ebebeb", "#808080", "reshape"),
    "math": ("#f2efe9", "#8f8576", "math"),
    "regularization": ("#fafafa", "#a3a3a3", "dropout"),
    "loss": ("#fbdcc9", "#b6623a", "loss"),
}
OTHER_STYLE = ("#f2f2f2", "#8a8a8a", "other")


def family(op: str) -> str:
    """The op's family in the catalogue; "other" for what the catalogue does not know."""
    opdef = ops.lookup(op)
    return opdef.family if opdef else "other"


def style(family_name: str) -> tuple[str, str, str]:
    """(fill, line, legend name) of a family."""
    return FAMILY_STYLES.get(family_name, OTHER_STYLE)
