"""The editor-facing commands: `nnspec fmt` and `nnspec lsp` (registered by nnspec/cli.py)."""

from __future__ import annotations

import difflib
import sys

import click

from nnspec.diagnostics import SpecError, render_text


@click.command("fmt")
@click.argument("files", nargs=-1, required=True)
@click.option("--check", is_flag=True,
              help="Change nothing; exit 1 and show a diff if a file is not formatted.")
def fmt_command(files: tuple[str, ...], check: bool):
    """Format FILES in place in the one canonical layout (`-` reads stdin, writes stdout).

    Only whitespace changes: every comment stays, and the meaning is checked to be the same.
    """
    from nnspec.formatter import format_text
    from nnspec.frontend import read_spec

    unformatted, failed = [], False
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else read_spec(name)
            formatted = format_text(text, "<stdin>" if name == "-" else name)
        except SpecError as err:
            click.echo(render_text(err.diagnostics, color=sys.stderr.isatty()), err=True)
            failed = True
            continue
        if name == "-" and not check:
            click.echo(formatted, nl=False)
            continue
        if formatted == text:
            continue
        unformatted.append(name)
        if check:
            diff = difflib.unified_diff(text.splitlines(keepends=True),
                                        formatted.splitlines(keepends=True),
                                        f"{name} (as written)", f"{name} (formatted)")
            click.echo("".join(diff), nl=False)
        else:
            _write(name, formatted)
    if check and unformatted:
        click.echo(f"{len(unformatted)} file{'s' if len(unformatted) != 1 else ''} would be "
                   "reformatted", err=True)
    elif unformatted:
        click.echo(f"formatted {len(unformatted)} file{'s' if len(unformatted) != 1 else ''}",
                   err=True)
    sys.exit(1 if failed or (check and unformatted) else 0)


def _write(name: str, text: str) -> None:
    from nnspec.outputs import OutputError, write_output

    try:
        write_output(name, text.encode())
    except OutputError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


@click.command("lsp")
def lsp_command():
    """Run the language server on stdin/stdout (for editors; needs `pip install nnspec[lsp]`)."""
    try:
        from nnspec.lsp import serve
    except ImportError as err:
        click.echo(f"error: the language server needs pygls ({err.name} is missing)", err=True)
        click.echo("hint: pip install 'nnspec[lsp]'", err=True)
        sys.exit(1)
    serve()
