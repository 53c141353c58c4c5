"""What every `nnspec` command shares: loading a spec or trained weights, reading `--set`,
and turning user errors into a rendered message and an exit code (never a traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nnspec.diagnostics import Diagnostic, SpecError, render_inline, render_text

NEEDS_TORCH = 'pip install "nnspec[torch]"'


def color(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def report(diagnostics: list[Diagnostic]) -> None:
    if diagnostics:
        click.echo(render_text(diagnostics, color=color(sys.stderr)), err=True)


def fail(diagnostics: list[Diagnostic]) -> None:
    report(diagnostics)
    errors = sum(d.severity == "error" for d in diagnostics)
    click.echo(f"{errors} error{'s' if errors != 1 else ''}", err=True)
    sys.exit(1)


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """`--set d=64 --set act="gelu"` -> {"d": 64, "act": "gelu"}; values use the .nn syntax
    and may compute (`--set d=4*64`). A value that does not read is a usage error that
    points into it."""
    from nnspec.frontend import evaluate_value

    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip().isidentifier() or not text.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--set")
        try:
            out[name.strip()] = evaluate_value(text, f"--set {name.strip()}")
        except SpecError as err:
            raise click.BadParameter(f"cannot read the value {text!r}: "
                                     f"{render_inline(err.diagnostics[0])}",
                                     param_hint="--set") from None
    return out


def asked_layer_budget() -> int | None:
    """`nnspec --max-layers N`'s N, None when not given."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().params.get("max_layers") if ctx is not None else None


def layer_budget() -> int:
    """The layer budget of this run: `nnspec --max-layers N`, else the front end's default."""
    from nnspec.ir.graph_builder import MAX_LAYERS

    return asked_layer_budget() or MAX_LAYERS


def load_or_exit(path: str, model: str | None = None, overrides: dict | None = None,
                 notes: bool = True):
    from nnspec.spec import load

    try:
        spec = load(path, model, overrides, max_layers=layer_budget())
    except SpecError as err:
        fail(err.diagnostics)
    if notes:  # warnings; notes (N001, the fused softmax) are `nnspec check`'s to say
        report([d for d in spec.notes if d.severity != "note"])
    return spec


SPEC = click.Path(path_type=str)  # a directory is the spec's error (E000), not a usage error

OUTPUT = click.Path(dir_okay=False, allow_dash=True)  # a str, checked by nnspec.outputs


def fail_plain(message: str, hint: str | None = None, code: int = 1) -> None:
    """A user error that has no line in a spec (a run directory, a weights file)."""
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)
    sys.exit(code)



def write_or_exit(target: str, data: bytes) -> str:
    """Write a command's output through nnspec.outputs; a user-facing error exits 1."""
    from nnspec.outputs import OutputError, write_output

    try:
        return write_output(target, data, make_parents=True)
    except OutputError as err:
        fail_plain(err.message, err.hint)


def wrote(message: str, where: str) -> None:
    """`wrote ...`, kept off standard output when the output itself went there."""
    click.echo(f"wrote {message}", err=where == "standard output")


def fits_or_exit(spec, what: str, param_copies: int, batch: int | None = None) -> None:
    """Refuse (exit 1, with the numbers) a model whose weights would not fit in memory,
    before a byte of them is allocated."""
    from nnspec.training.budget import TooBig, check_fits
    from nnspec.training.loop import EVAL_CHUNK

    try:
        check_fits(spec.graph, what=f"{what} {spec.name}", batch=batch or EVAL_CHUNK,
                   param_copies=param_copies)
    except TooBig as err:
        fail_plain(err.message, err.hint)


def load_trained(file: str, model: str | None, overrides: tuple[str, ...], weights: Path,
                  param_copies: int = 2):
    """The spec, a NumPy model with `weights` loaded, and the weights' metadata."""
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.training.rundir import RunDirError, digest, fingerprint, load_weights

    spec = load_or_exit(file, model, parse_overrides(overrides), notes=False)
    fits_or_exit(spec, "loading", param_copies, 1)  # the model and the file's tensors
    net = NumpyModel.from_spec(spec)
    try:
        path, metadata = load_weights(net, weights)
    except RunDirError as err:
        fail_plain(err.message, err.hint)
    fp = fingerprint(spec)
    current = digest({"params": fp["params"], "nodes": fp["nodes"]})
    if metadata.get("model_hash", current) != current:
        click.echo(f"warning: {path} was trained from a different version of this model "
                   "(same parameters, other layers or arguments)", err=True)
    return spec, net, metadata

