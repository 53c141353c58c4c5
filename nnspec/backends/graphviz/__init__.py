"""Architecture diagrams: the IR as Graphviz DOT text, and rendering through the real `dot`.

What a reader needs to recognise a network is decided before `dot` lays anything out:

- a layer followed by shape-preserving ops (batch norm, activation, dropout) that nothing
  else reads is drawn as one box (`conv2d 64, 3x3` over `batchnorm · relu`), unless
  `detail="full"`; the tensor shape is the same on both sides, so nothing is lost;
- a `repeat` is drawn once, its first instance inside a cluster marked `xN` (the way papers
  draw "N x" around a transformer layer), or as one box marked `xN` when that instance is
  one box; `expand=True` draws every instance;
- blocks nested `depth` levels deep or more fold into one node each;
- numbers used as operands (`0.5 * x`) become part of their consumer's label;
- a network too tall for a page is laid out in columns joined by lettered connectors;
- a graph that would still have more than `MAX_VISIBLE_NODES` boxes is folded further
  (lower depth, then runs of layers) with a `RenderWarning` issued through `warnings`, so
  `dot` never runs for minutes.

A graph built from a spec with errors draws too: a failed layer is red with its error as
its label, and what depends on it is grey with unknown shapes.

The stages, one module each: `view` (what is drawn) -> `layout` (columns) -> `labels`
(what each box says) -> `dot` (DOT text) -> `render` (the real `dot`, output files).
"""

from nnspec.backends.graphviz.dot import DETAILS, DIRECTIONS, to_dot
from nnspec.backends.graphviz.labels import op_text
from nnspec.backends.graphviz.render import (
    FORMATS,
    INSTALL_HINT,
    STDOUT,
    RenderError,
    format_for,
    pipe,
    render,
    render_svg,
)
from nnspec.backends.graphviz.style import (
    ERROR_FILL,
    ERROR_LINE,
    FAMILY_STYLES,
    SKIP_EDGE,
)
from nnspec.backends.graphviz.view import MAX_VISIBLE_NODES, RenderWarning

__all__ = [
    "DETAILS", "DIRECTIONS", "ERROR_FILL", "ERROR_LINE", "FAMILY_STYLES", "FORMATS",
    "INSTALL_HINT", "MAX_VISIBLE_NODES", "SKIP_EDGE", "STDOUT", "RenderError", "RenderWarning",
    "format_for", "op_text", "pipe", "render", "render_svg", "to_dot",
]
