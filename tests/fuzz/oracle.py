"""The oracle: one spec text through the public paths of `check`, `summary`, `render` (DOT
text, no `dot`) and `compile` (torch source, no torch import), as the CLI calls them.

Every input must give a result or diagnostics (nnspec's error values); any other exception
escapes `run` and is the fuzzer's finding. A few cheap invariants are checked on the way:
diagnostics are well formed and render, generated Python parses, and a spec that `check`
accepts also loads.
"""

from __future__ import annotations

import re
import warnings

from nnspec import summary as summary_mod
from nnspec.backends.graphviz import RenderWarning, to_dot
from nnspec.backends.torch.codegen import generate
from nnspec.diagnostics import Diagnostic, SpecError, render_json, render_text
from nnspec.frontend import analyze
from nnspec.spec import check_text, load_text

PATH = "fuzz.nn"
# The command-line options that change what summary, render and compile do.
OPTIONS = (
    {},
    {"depth": 1, "expand": True, "direction": "LR", "detail": "min", "train_script": True},
    {"depth": 2, "detail": "full", "format": "json"},
    {"expand": True, "format": "csv", "detail": "full", "train_script": True},
    {"depth": 3, "format": "md", "direction": "LR"},
)
_CODE = re.compile(r"[EWN]\d{3}")
# Codes after which nothing is built: loading would stop in the same place.
SYNTAX = {"E001", "E002", "E003", "E004"}


class OracleError(AssertionError):
    """An invariant broke without an exception of nnspec's own."""


def check_diagnostics(diagnostics, text: str) -> None:
    """Well-formed values that render as text and JSON, spans inside the file."""
    if not isinstance(diagnostics, list):
        raise OracleError(f"diagnostics are a {type(diagnostics).__name__}, not a list")
    lines = text.count("\n") + 1
    for d in diagnostics:
        if not isinstance(d, Diagnostic) or not _CODE.fullmatch(d.code) or not d.message:
            raise OracleError(f"malformed diagnostic {d!r}")
        if d.span is not None and d.span.path == PATH and not (
                1 <= d.span.line <= lines and d.span.col >= 1):
            raise OracleError(f"diagnostic outside the file: {d.span} {d.message}")
    render_text(diagnostics, color=True)
    render_json(diagnostics)


def _partial_graph(text: str):
    """What `nnspec render` draws of a spec with errors (the front end's partial graph)."""
    return analyze(text, PATH).graph


def _dot(target, options: dict) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RenderWarning)
        return to_dot(target, depth=options.get("depth"), expand=options.get("expand", False),
                      direction=options.get("direction", "TB"),
                      detail=options.get("detail", "normal"))


def _summary(spec, options: dict) -> str:
    result = summary_mod.summarize(spec.graph, depth=options.get("depth"),
                                   expand=options.get("expand", False))
    renderers = {"table": lambda s: summary_mod.render_table(s, color=True),
                 "json": summary_mod.render_json, "csv": summary_mod.render_csv,
                 "md": summary_mod.render_markdown}
    return renderers[options.get("format", "table")](result)


def _compile(spec, options: dict) -> None:
    train_script = bool(options.get("train_script")) and spec.train is not None
    try:
        source = generate(spec, train_script=train_script)
    except SpecError as err:
        check_diagnostics(err.diagnostics, spec.source.text)
        return
    except ValueError:  # a train script for a model it cannot feed: the CLI's clean error
        if train_script:
            return
        raise
    try:
        compile(source, "generated.py", "exec")
    except SyntaxError as err:
        raise OracleError(f"the generated code does not parse: {err}") from None


def run(text: str, options: dict | None = None) -> str:
    """'built' or 'diagnostics'; raises on anything else (the caller shows the input)."""
    return run_all_options(text, (options or {},))


def run_all_options(text: str, option_sets=OPTIONS) -> str:
    """Check and load once, then summary, render and compile with each option set (every
    one of them when replaying a saved case)."""
    diagnostics = check_text(text, PATH)
    check_diagnostics(diagnostics, text)
    checked = not any(d.severity == "error" for d in diagnostics)
    if any(d.code in SYNTAX for d in diagnostics):
        return "diagnostics"  # half the fuzzer's time
    try:
        spec = load_text(text, PATH)
    except SpecError as err:
        check_diagnostics(err.diagnostics, text)
        if checked:
            raise OracleError("`check` accepts the spec but loading it fails: "
                              + render_text(err.diagnostics)) from None
        partial = _partial_graph(text)
        if partial is not None:
            for options in option_sets:
                _dot(partial, options)
        return "diagnostics"
    check_diagnostics(spec.notes, text)
    for options in option_sets:
        _summary(spec, options)
        _dot(spec, options)
        _compile(spec, options)
    return "built"
