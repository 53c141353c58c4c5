"""The `nnspec` command: the one edge where diagnostics are rendered and exit codes chosen.

Exit codes: 0 success, 1 errors in a spec (or its data), 2 wrong usage, 130 Ctrl-C. Heavy
imports (torch, numpy backends) happen inside the commands that need them.
"""

from __future__ import annotations

import signal
import sys

# A Ctrl-C while the modules load and the commands are defined (the first ~50 ms, before
# they can catch it) exits 130 as quietly as a later one; the usual KeyboardInterrupt is
# back at the end of this module. (Not in another thread, which cannot set handlers.)
_UNTIL_LOADED = signal.getsignal(signal.SIGINT)
if _UNTIL_LOADED is signal.default_int_handler:
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))
    except ValueError:
        _UNTIL_LOADED = None

from pathlib import Path

import click

from nnspec import __version__
from nnspec.cli_common import SPEC, color, fail, layer_budget, load_or_exit, parse_overrides, report
from nnspec.cli_editor import fmt_command, lsp_command
from nnspec.cli_run import evaluate, predict
from nnspec.cli_sample import sample
from nnspec.cli_torch import compile_command, export_command
from nnspec.cli_train import train
from nnspec.cli_weights import weight_commands
from nnspec.diagnostics import Diagnostic, render_json

INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


def _interrupted() -> None:
    click.echo("interrupted", err=True)
    sys.exit(INTERRUPTED)


class _Commands(click.Group):
    """The command group; Ctrl-C while reading the options or running a command exits 130
    without a traceback (train catches it itself, to save a checkpoint first)."""

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:  # in click's own work around the command
            _interrupted()

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted()


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="nnspec")
@click.option("--max-layers", type=click.IntRange(1), default=None, metavar="N",
              help="Refuse a model that expands to more than N layers (default 100,000; "
              "`compile` writes code for up to 5,000).")
def main(max_layers: int | None):
    """nnspec: write a neural network as a short .nn spec; check its shapes, summarise it,
    draw it, train it in NumPy or compile it to PyTorch.

    \b
    Quick start:
      nnspec check specs/digits_mlp.nn
      nnspec summary specs/resnet18.nn
      nnspec render specs/resnet18.nn -o resnet18.svg
      nnspec train specs/digits_mlp.nn
    The language is described in docs/language.md.
    """


main.add_command(fmt_command)
main.add_command(lsp_command)

for command in (train, predict, evaluate, sample, compile_command, export_command):
    main.add_command(command)


@main.command()
@click.argument("files", nargs=-1, required=True, type=SPEC)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json lists every diagnostic with its code and span.")
def check(files: tuple[str, ...], fmt: str):
    """Check FILES: syntax, names, arguments, every tensor shape and the train section.

    Exits 0 when every file is valid, 1 when any has errors. Never imports torch.
    """
    from nnspec.frontend import analyze_file

    everything: list[Diagnostic] = []
    failed = 0
    for path in files:
        diagnostics = list(analyze_file(path, every_model=True,
                                        max_layers=layer_budget()).diagnostics)
        errors = [d for d in diagnostics if d.severity == "error"]
        failed += bool(errors)
        everything.extend(diagnostics)
        if fmt == "text":
            report(diagnostics)
            if not errors:
                click.echo(f"{path}: ok")
    if fmt == "json":
        click.echo(render_json(everything))
    elif failed:
        count = sum(d.severity == "error" for d in everything)
        click.echo(f"{count} error{'s' if count != 1 else ''} in {failed} file"
                   f"{'s' if failed != 1 else ''}", err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("file", type=SPEC)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "md"]),
              default="table", show_default=True)
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="Show N levels of nesting: blocks at level N become one row each "
              "(1: top-level rows only).")
@click.option("--expand", is_flag=True, help="Show every repetition of a repeat.")
@click.option("--model", default=None, help="Which model of the file (default: the trained one, "
              "else the last).")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter.")
def summary(file: str, fmt: str, depth: int | None, expand: bool, model: str | None,
            overrides: tuple[str, ...]):
    """Per-layer output shapes, parameter counts and multiply-adds of the model in FILE,
    computed from the IR (the model is never run)."""
    from nnspec import summary as summary_mod

    spec = load_or_exit(file, model, parse_overrides(overrides), notes=False)
    result = summary_mod.summarize(spec.graph, depth=depth, expand=expand)
    renderers = {"table": lambda s: summary_mod.render_table(s, color=color(sys.stdout)),
                 "json": summary_mod.render_json, "csv": summary_mod.render_csv,
                 "md": summary_mod.render_markdown}
    click.echo(renderers[fmt](result))


def _spec_or_partial_graph(path: str, model: str | None, overrides: dict):
    """The spec, or for a spec with errors what could be built of it (for a diagram that
    shows where they are) with the errors; exits 1 when nothing could be built."""
    from nnspec.frontend import analyze_file
    from nnspec.spec import Spec

    analysis = analyze_file(path, model, overrides, max_layers=layer_budget())
    if analysis.ok:
        return Spec.from_analysis(analysis), []
    if analysis.graph is None:
        fail(list(analysis.errors))
    return analysis.graph, list(analysis.errors)


@main.command()
@click.argument("file", type=SPEC)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, allow_dash=True),
              default=None, help="Output file [default: FILE's name with the format's suffix; "
              "- for stdout].")
@click.option("--format", "fmt", type=click.Choice(["svg", "png", "pdf", "dot"]), default=None,
              help="Default: the output's suffix, else svg.")
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="Fold blocks nested N levels deep into one box each.")
@click.option("--direction", type=click.Choice(["TB", "LR"]), default="TB", show_default=True)
@click.option("--detail", type=click.Choice(["min", "normal", "full"]), default="normal",
              show_default=True)
@click.option("--expand", is_flag=True, help="Draw every copy of a repeat.")
@click.option("--model", default=None, help="Which model of the file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter.")
def render(file: str, out: str | None, fmt: str | None, depth: int | None, direction: str,
           detail: str, expand: bool, model: str | None, overrides: tuple[str, ...]):
    """Draw the model in FILE with Graphviz (svg, png, pdf, or dot text).

    A spec with errors still draws what could be built, the failing layer in red, and the
    command exits 1.
    """
    import warnings

    from nnspec.backends import graphviz as gv

    values = parse_overrides(overrides)
    if out is None:
        out = str(Path(Path(file).name).with_suffix("." + (fmt or "svg")))
    try:
        fmt = gv.format_for(out, fmt)
    except gv.RenderError as err:
        raise click.BadParameter(str(err), param_hint="--output") from None
    target, failed = _spec_or_partial_graph(file, model, values)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gv.RenderWarning)
        try:
            written = gv.render(target, out, fmt, depth=depth, direction=direction,
                                detail=detail, expand=expand)
        except gv.RenderError as err:
            report(failed)
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    where = "stdout" if out == gv.STDOUT else written
    if failed:
        report(failed)
        click.echo(f"drew what could be built, failing layers in red: {where}", err=True)
        sys.exit(1)
    if out != gv.STDOUT and written.is_file():  # stdout or a device holds the diagram itself
        click.echo(f"wrote {written}")


def _load_spec(file: str, model: str | None, overrides: tuple[str, ...]):
    return load_or_exit(file, model, parse_overrides(overrides), notes=False)


for command in weight_commands(_load_spec):
    main.add_command(command)

if _UNTIL_LOADED is signal.default_int_handler:  # loaded: the commands catch Ctrl-C now
    signal.signal(signal.SIGINT, _UNTIL_LOADED)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # between the imports and the first command
        sys.exit(INTERRUPTED)
