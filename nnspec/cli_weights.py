"""`nnspec import-weights` and `nnspec export-weights`: other programs' checkpoints in, the
same names out, through a declared layout (nnspec/weights/layout.py).

cli.py registers them on the `nnspec` group with its spec loader (`weight_commands`), so
this module does not import cli.py. Like every command, they print user errors (a pickle, a
checkpoint that does not fit, a layout that does not read) and exit 1, never a traceback.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path

import click

SPEC = click.Path(path_type=str)
LAYOUT_HELP = ("A layout file: how the checkpoint's names and layouts map to the spec's "
               "(docs/weights.md). Without one, the names must be the spec's own.")


def _fail(message: str, hint: str | None = None) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)
    sys.exit(1)


def _layout_or_exit(path: Path | None):
    from nnspec.weights.layout import Layout, LayoutError, read_layout

    if path is None:
        return Layout()
    try:
        return read_layout(path)
    except LayoutError as err:
        _fail(str(err))


def weight_commands(load_spec: Callable) -> list[click.Command]:
    """The two commands; `load_spec(file, model, overrides)` gives the checked spec (or
    prints its diagnostics and exits)."""

    @click.command("import-weights")
    @click.argument("file", type=SPEC)
    @click.argument("checkpoint", type=click.Path(path_type=Path))
    @click.option("-o", "--output", "out", required=True,
                  type=click.Path(dir_okay=False, allow_dash=True),
                  help="The weights file to write (.safetensors, under the spec's names), "
                  "for `nnspec predict/eval --weights` and the generated load_weights (- for "
                  "stdout).")
    @click.option("--layout", type=click.Path(path_type=Path), default=None, help=LAYOUT_HELP)
    @click.option("--fresh", "fresh", multiple=True, metavar="PATTERN",
                  help="Parameters that start from a fresh initialisation instead of the "
                  "checkpoint, e.g. a new head: --fresh 'fc.*'. Repeatable.")
    @click.option("--allow-pickle", is_flag=True,
                  help="Read a .pt/.bin pickle. Loading a pickle can run any code its author put "
                  "in it; nnspec then uses torch's restricted loader, but prefer safetensors.")
    @click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Seed of the fresh initialisation (--fresh).")
    @click.option("--model", default=None, help="Which model of the file.")
    @click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                  help="Override a model hyperparameter (e.g. a new number of classes).")
    def import_weights(file: str, checkpoint: Path, out: str, layout: Path | None,
                       fresh: tuple[str, ...], allow_pickle: bool, seed: int, model: str | None,
                       overrides: tuple[str, ...]):
        """Check CHECKPOINT against the spec FILE (every name and shape, through --layout) and
        write its weights under the spec's names. Differences are listed as a table (exit 1)."""
        import numpy as np
        from safetensors.numpy import save

        from nnspec.outputs import OutputError, write_output
        from nnspec.weights.checkpoint import CheckpointError, read_checkpoint
        from nnspec.weights.layout import to_spec

        spec = load_spec(file, model, overrides)
        rules = _layout_or_exit(layout)
        try:
            tensors = read_checkpoint(checkpoint, allow_pickle)
        except CheckpointError as err:
            _fail(err.message, err.hint)
        graph = spec.graph
        shapes = {name: tuple(p.spec.shape) for name, p in graph.params.items()}
        is_fresh = lambda name: any(fnmatch.fnmatchcase(name, p) for p in fresh)
        arrays, problems = to_spec(tensors, shapes, rules, is_fresh)
        if problems:
            click.echo(f"error: {checkpoint} does not fit {graph.name} of {file}"
                       f"{' through ' + str(layout) if layout else ''}:", err=True)
            click.echo(problems.table(), err=True)
            click.echo("  hint: fix the spec's names (`as`, `seq`) or write a layout "
                       "(docs/weights.md); --fresh PATTERN starts a replaced layer afresh",
                       err=True)
            sys.exit(1)
        if any(is_fresh(name) for name in shapes):
            from nnspec.backends.numpy.model import NumpyModel
            from nnspec.training.budget import TooBig, check_fits

            try:  # the fresh weights are allocated here: refuse what cannot fit first
                check_fits(graph, what=f"initialising {graph.name}", batch=1, param_copies=2)
            except TooBig as err:
                _fail(err.message, err.hint)

            initial = NumpyModel(graph, seed=seed).state_dict()
            arrays.update({n: initial[n] for n in shapes if is_fresh(n)})
        arrays = {n: np.require(np.asarray(arrays[n], dtype=graph.params[n].spec.dtype),
                                requirements="C") for n in shapes}
        data = save(arrays, metadata={"model": graph.name, "imported_from": checkpoint.name})
        try:
            where = write_output(out, data, make_parents=True)
        except OutputError as err:
            _fail(err.message, err.hint)
        except OSError as err:
            _fail(f"cannot write {out}: {err}")
        kept = sum(1 for n in shapes if not is_fresh(n))
        click.echo(f"wrote {where}: {kept} of {len(shapes)} tensors from {checkpoint}"
                   + (f", {len(shapes) - kept} fresh" if kept < len(shapes) else ""),
                   err=where == "standard output")


    @click.command("export-weights")
    @click.argument("file", type=SPEC)
    @click.argument("weights", type=click.Path(path_type=Path))
    @click.option("-o", "--output", "out", required=True,
                  type=click.Path(dir_okay=False, allow_dash=True),
                  help="The .safetensors file to write, under the checkpoint's names (- for "
                  "stdout).")
    @click.option("--layout", type=click.Path(path_type=Path), default=None, help=LAYOUT_HELP)
    @click.option("--model", default=None, help="Which model of the file.")
    @click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                  help="Override a model hyperparameter (as when the weights were made).")
    def export_weights(file: str, weights: Path, out: str, layout: Path | None,
                       model: str | None, overrides: tuple[str, ...]):
        """Write WEIGHTS (a weights file or run directory of the spec FILE) under the names and
        layouts of --layout, so the reference implementation loads them (strict)."""
        import numpy as np
        from safetensors.numpy import save

        from nnspec.outputs import OutputError, write_output
        from nnspec.training.rundir import RunDirError, read_safetensors
        from nnspec.weights.layout import from_spec

        spec = load_spec(file, model, overrides)
        rules = _layout_or_exit(layout)
        source = weights
        if weights.is_dir():
            source = next((weights / n for n in ("best.safetensors", "last.safetensors")
                           if (weights / n).is_file()), weights / "best.safetensors")
        try:
            arrays, _ = read_safetensors(source)
            spec.graph.check_weights(arrays)
            converted = from_spec(arrays, rules)
            where = write_output(out, save({n: np.require(a, requirements="C")
                                            for n, a in converted.items()},
                                           metadata={"format": "pt"}), make_parents=True)
        except (RunDirError, OutputError) as err:
            _fail(err.message, err.hint)
        except ValueError as err:
            _fail(f"{source}: {err}")
        except OSError as err:
            _fail(f"cannot write {out}: {err}")
        click.echo(f"wrote {where}: {len(converted)} tensors", err=where == "standard output")

    return [import_weights, export_weights]


def fine_tuning_options(command):
    """`nnspec train`'s options to start from imported weights and freeze parameters: the
    command-line twins of the train section's init, init_layout, fresh and freeze."""
    options = [
        click.option("--init", type=click.Path(path_type=Path), default=None,
                     metavar="WEIGHTS", help="Start from these weights (a .safetensors file or "
                     "a run directory) instead of a fresh initialisation: fine-tuning."),
        click.option("--init-layout", type=click.Path(path_type=Path), default=None,
                     metavar="LAYOUT", help="How --init's names map to the spec's "
                     "(docs/weights.md)."),
        click.option("--fresh", multiple=True, metavar="PATTERN",
                     help="Parameters not taken from --init (a new head), e.g. 'fc.*'. "
                     "Repeatable; replaces the train section's `fresh`."),
        click.option("--freeze", multiple=True, metavar="PATTERN",
                     help="Parameters the optimizer leaves alone, e.g. 'layer1.*'. "
                     "Repeatable; replaces the train section's `freeze`."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def with_fine_tuning(train, graph, init: Path | None, init_layout: Path | None,
                     fresh: tuple[str, ...], freeze: tuple[str, ...]):
    """The train section with the command line's fine-tuning options; paths made absolute
    (the section's own are read beside the spec). A pattern that names no parameter is a
    usage error, as in the spec."""
    import dataclasses

    from nnspec.ir.train import matches_any

    for flag, patterns, trainable in (("--fresh", fresh, False), ("--freeze", freeze, True)):
        names = [n for n, p in graph.params.items() if p.spec.trainable or not trainable]
        for pattern in patterns:
            if not any(matches_any(n, (pattern,)) for n in names):
                raise click.UsageError(f"{flag} {pattern!r} names no "
                                       f"{'trainable ' if trainable else ''}parameter of "
                                       f"`{graph.name}` (`nnspec summary` lists them)")
    changes = {"init": init and str(init.resolve()),
               "init_layout": init_layout and str(init_layout.resolve()),
               "fresh": fresh or None, "freeze": freeze or None}
    return dataclasses.replace(train, **{k: v for k, v in changes.items() if v is not None})
