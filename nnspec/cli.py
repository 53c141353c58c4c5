"""The `nnspec` command: the one edge where diagnostics are rendered and exit codes chosen.

Exit codes: 0 success, 1 errors in a spec (or its data), 2 wrong usage. Heavy imports
(torch, numpy backends) happen inside the commands that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nnspec import __version__
from nnspec.diagnostics import Diagnostic, SpecError, render_json, render_text


def _color(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def report(diagnostics: list[Diagnostic]) -> None:
    if diagnostics:
        click.echo(render_text(diagnostics, color=_color(sys.stderr)), err=True)


def fail(diagnostics: list[Diagnostic]) -> None:
    report(diagnostics)
    errors = sum(d.severity == "error" for d in diagnostics)
    click.echo(f"{errors} error{'s' if errors != 1 else ''}", err=True)
    sys.exit(1)


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """`--set d=64 --set act="gelu"` -> {"d": 64, "act": "gelu"}; values use the .nn syntax."""
    from nnspec.ir.build import Builder, _Frame
    from nnspec.syntax.parser import parse

    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--set")
        try:
            program = parse(f"{name.strip()} = {text}", "--set")
            builder = Builder(program)
            value = builder.consts[name.strip()]
        except SpecError as err:
            raise click.BadParameter(f"cannot read the value {text!r}: "
                                     f"{err.diagnostics[0].message}", param_hint="--set") from None
        if builder.diagnostics:
            raise click.BadParameter(builder.diagnostics[0].message, param_hint="--set")
        out[name.strip()] = value
    return out


def load_or_exit(path: str, model: str | None = None, overrides: dict | None = None,
                 notes: bool = True):
    from nnspec.spec import load

    try:
        spec = load(path, model, overrides)
    except SpecError as err:
        fail(err.diagnostics)
    if notes:
        report(spec.notes)
    return spec


SPEC = click.Path(dir_okay=False, path_type=str)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="nnspec")
def main():
    """nnspec: write a neural network as a short .nn spec; check its shapes, summarise it,
    draw it, train it in NumPy or compile it to PyTorch.

    \b
    Quick start:
      nnspec check specs/digits_mlp.nn
      nnspec summary specs/resnet18.nn
    The language is described in docs/language.md.
    """


@main.command()
@click.argument("files", nargs=-1, required=True, type=SPEC)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json lists every diagnostic with its code and span.")
def check(files: tuple[str, ...], fmt: str):
    """Check FILES: syntax, names, arguments, every tensor shape and the train section.

    Exits 0 when every file is valid, 1 when any has errors. Never imports torch.
    """
    from nnspec.spec import check_text

    everything: list[Diagnostic] = []
    failed = 0
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (
                err.strerror or str(err))
            diagnostics = [Diagnostic("E000", f"cannot read {path}: {reason}", None)]
        else:
            diagnostics = check_text(text, path)
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
    renderers = {"table": lambda s: summary_mod.render_table(s, color=_color(sys.stdout)),
                 "json": summary_mod.render_json, "csv": summary_mod.render_csv,
                 "md": summary_mod.render_markdown}
    click.echo(renderers[fmt](result))


if __name__ == "__main__":
    main()
