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

import json
from pathlib import Path

import click

from nnspec import __version__
from nnspec.cli_editor import fmt_command, lsp_command
from nnspec.diagnostics import Diagnostic, SpecError, render_inline, render_json, render_text

INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


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


def layer_budget() -> int:
    """The layer budget of this run: `nnspec --max-layers N`, else the front end's default."""
    from nnspec.ir.graph_builder import MAX_LAYERS

    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().params.get("max_layers") if ctx is not None else None
    return given or MAX_LAYERS


def load_or_exit(path: str, model: str | None = None, overrides: dict | None = None,
                 notes: bool = True):
    from nnspec.spec import load

    try:
        spec = load(path, model, overrides, max_layers=layer_budget())
    except SpecError as err:
        fail(err.diagnostics)
    if notes:
        report(spec.notes)
    return spec


SPEC = click.Path(path_type=str)  # a directory is the spec's error (E000), not a usage error


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
              help="Refuse a model that expands to more than N layers (default 100,000).")
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
    renderers = {"table": lambda s: summary_mod.render_table(s, color=_color(sys.stdout)),
                 "json": summary_mod.render_json, "csv": summary_mod.render_csv,
                 "md": summary_mod.render_markdown}
    click.echo(renderers[fmt](result))


# ---- training, prediction and evaluation on the NumPy interpreter ---------------------------


def _fail_plain(message: str, hint: str | None = None, code: int = 1) -> None:
    """A user error that has no line in a spec (a run directory, a weights file)."""
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)
    sys.exit(code)


OUTPUT = click.Path(dir_okay=False, allow_dash=True)  # a str, checked by nnspec.outputs


def _write_or_exit(target: str, data: bytes) -> str:
    """Write a command's output through nnspec.outputs; a user-facing error exits 1."""
    from nnspec.outputs import OutputError, write_output

    try:
        return write_output(target, data, make_parents=True)
    except OutputError as err:
        _fail_plain(err.message, err.hint)


def _wrote(message: str, where: str) -> None:
    """`wrote ...`, kept off standard output when the output itself went there."""
    click.echo(f"wrote {message}", err=where == "standard output")


def _fits_or_exit(spec, what: str, param_copies: int, batch: int | None = None) -> None:
    """Refuse (exit 1, with the numbers) a model whose weights would not fit in memory,
    before a byte of them is allocated."""
    from nnspec.training.budget import TooBig, check_fits
    from nnspec.training.loop import EVAL_CHUNK

    try:
        check_fits(spec.graph, what=f"{what} {spec.name}", batch=batch or EVAL_CHUNK,
                   param_copies=param_copies)
    except TooBig as err:
        _fail_plain(err.message, err.hint)


def _load_trained(file: str, model: str | None, overrides: tuple[str, ...], weights: Path,
                  param_copies: int = 2):
    """The spec, a NumPy model with `weights` loaded, and the weights' metadata."""
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.training.rundir import RunDirError, digest, fingerprint, load_weights

    spec = load_or_exit(file, model, parse_overrides(overrides), notes=False)
    _fits_or_exit(spec, "loading", param_copies, 1)  # the model and the file's tensors
    net = NumpyModel.from_spec(spec)
    try:
        path, metadata = load_weights(net, weights)
    except RunDirError as err:
        _fail_plain(err.message, err.hint)
    fp = fingerprint(spec)
    current = digest({"params": fp["params"], "nodes": fp["nodes"]})
    if metadata.get("model_hash", current) != current:
        click.echo(f"warning: {path} was trained from a different version of this model "
                   "(same parameters, other layers or arguments)", err=True)
    return spec, net, metadata


@main.command()
@click.argument("file", required=False, type=SPEC)
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run directory [default: runs/<spec name>, or runs/<spec name>-2, ... if "
              "that one is taken].")
@click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Continue the run in DIR exactly where it stopped (FILE defaults to the "
              "spec it started from).")
@click.option("--force", is_flag=True, help="Start over in an --out that already holds a run.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the train section's epochs.")
@click.option("--batch", type=click.IntRange(min=1), help="Override the batch size.")
@click.option("--lr", type=click.FloatRange(min=0.0), help="Override the learning rate.")
@click.option("--optimizer", metavar="NAME[(ARGS)]",
              help='Replace the optimizer, e.g. "sgd(lr = 0.1, momentum = 0.9)".')
@click.option("--seed", type=click.IntRange(min=0),
              help="Seed of the initial weights, dropout and batch order.")
@click.option("--val", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Held-out fraction for data without a validation split of its own.")
@click.option("--data", metavar="DATA", help='Train on other data: a built-in set '
              '("digits(shape = [1, 8, 8])") or a file (train.csv, data.npz).')
@click.option("--early-stop", type=click.IntRange(min=0), metavar="N",
              help="Stop after N epochs without a better validation loss (0: never).")
@click.option("--checkpoint-every", type=click.FloatRange(min=0.0), default=2.0,
              show_default=True, metavar="SECONDS",
              help="Commit a checkpoint at the end of an epoch once this many seconds have "
              "passed (0: every epoch); the last epoch and Ctrl-C always commit.")
@click.option("--model", default=None, help="Which model of the file (default: the trained one).")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter.")
@click.option("--backend", type=click.Choice(["numpy", "torch"]), default=None,
              help="numpy: the built-in interpreter [default]; torch: the generated PyTorch "
              "module, in this process (needs torch).")
def train(file: str | None, out: Path | None, resume: Path | None, force: bool,
          epochs: int | None, batch: int | None, lr: float | None, optimizer: str | None,
          seed: int | None, val: float | None, data: str | None, early_stop: int | None,
          checkpoint_every: float, model: str | None, overrides: tuple[str, ...],
          backend: str | None):
    """Train the model of FILE on the NumPy interpreter (or, with --backend torch, through
    its generated PyTorch module), as its train section says.

    Writes the run directory: config.json, best/last.safetensors, resume.safetensors,
    metrics.csv and loss.png. Ctrl-C saves a checkpoint (exit 130); a non-finite loss
    stops the run (exit 1). See docs/training.md.
    """
    from nnspec.training import loop
    from nnspec.training.budget import TooBig
    from nnspec.training.progress import make_progress
    from nnspec.training.rundir import RunDir, RunDirError, release_runs

    progress = make_progress()
    try:
        if resume is not None:
            given = {"--epochs": epochs, "--batch": batch, "--lr": lr, "--optimizer": optimizer,
                     "--seed": seed, "--val": val, "--data": data, "--early-stop": early_stop,
                     "--model": model, "--set": overrides or None, "--force": force or None,
                     "--backend": backend}
            clash = [flag for flag, value in given.items() if value is not None]
            if clash:
                raise click.UsageError(f"--resume continues a run with the settings it started "
                                       f"with, so {clash[0]} cannot be combined with it")
            if out is not None and out.resolve() != resume.resolve():
                raise click.UsageError("--resume DIR writes to DIR; leave out --out")
            trainer = loop.resume(RunDir(resume), file, progress, checkpoint_every)
            at = trainer.at
            progress.info(f"resuming {resume} at epoch {at.epoch + 1}"
                          + (f", batch {at.batch + 1}" if at.batch else "")
                          + f" (step {at.step})")
        else:
            if file is None:
                raise click.UsageError("give the spec FILE to train, or --resume DIR")
            hyper = parse_overrides(overrides)
            spec = load_or_exit(file, model, hyper)
            if spec.train is None:
                _fail_plain(f"{file}: has no train section for `{spec.name}`",
                            f"add `train {spec.name} {{ data ... loss ... }}`")
            config = loop.apply_overrides(
                spec.train, epochs=epochs, batch=batch, lr=lr, seed=seed, val=val,
                early_stop=early_stop,
                optimizer=loop.parse_setting("optimizer", optimizer) if optimizer else None,
                data=loop.parse_setting("data", data) if data else None)
            held_out = val if val is not None else (
                spec.train.val if "val" in spec.train.spans else None)
            default_out = Path("runs") / Path(file).stem
            trainer, note = loop.start(
                spec, file, config, out=out, default_out=default_out, force=force,
                model_overrides=hyper, data_from_cli=data is not None,
                val=held_out, progress=progress, checkpoint_every=checkpoint_every,
                backend=backend or "numpy")
            if note:
                click.echo(f"note: {note}", err=True)
            _train_header(trainer)
        outcome = trainer.run_to_end()
    except SpecError as err:
        fail(err.diagnostics)
    except (RunDirError, TooBig) as err:
        _fail_plain(err.message, err.hint)
    except loop.OverrideError as err:
        raise click.UsageError(str(err)) from None
    except OSError as err:  # a full disk or a read-only run directory
        _fail_plain(f"cannot write {err.filename or 'the run directory'}: "
                    f"{err.strerror or err}")
    except KeyboardInterrupt:
        progress.close()
        _fail_plain("interrupted; the last checkpoint saved (if any) is kept", code=130)
    except ImportError as err:
        if err.name != "torch":
            raise
        progress.close()
        _fail_plain("the torch backend needs PyTorch", _NEEDS_TORCH)
    finally:
        release_runs()  # the run directory is free for the next train or --resume
    if outcome.status == "interrupted":
        _fail_plain(outcome.message, code=130)
    if outcome.status == "diverged":
        _fail_plain(outcome.message)
    click.echo(outcome.message)
    if outcome.status != "done_before":
        run = trainer.run
        plot = ", loss.png" if run.exists("loss.png") else " (pip install matplotlib for loss.png)"
        click.echo(f"weights: {run.file('best.safetensors')} (best), last.safetensors; "
                   f"metrics.csv{plot}")


def _train_header(trainer) -> None:
    from nnspec.training.loop import describe_optimizer

    t, data, config = trainer.train, trainer.data, trainer.config
    params = sum(a.size for a in trainer.model.params.values())
    trainer.progress.info(
        f"{trainer.spec.name} ({params:,} parameters) on {config['data']['setting']['name']}: "
        f"{len(data.x_train)} training / {len(data.x_val)} validation samples "
        f"({config['data']['split']})")
    schedule = f", {t.schedule.name} schedule" if t.schedule else ""
    backend = ", on PyTorch" if config["backend"] == "torch" else ""
    trainer.progress.info(
        f"{t.epochs} epochs, batch {t.batch}, {describe_optimizer(t.optimizer)}{schedule}, "
        f"seed {t.seed}{backend} -> {trainer.run}")


@main.command()
@click.argument("file", type=SPEC)
@click.option("--weights", "-w", required=True, type=click.Path(path_type=Path),
              help="A .safetensors file, or a run directory (its best weights).")
@click.option("--input", "-i", "inputs", required=True, type=click.Path(path_type=Path),
              help="Samples to predict: .npy (first axis counts samples), .npz (`x`) or "
              ".csv (a header and feature columns).")
@click.option("--output", "-o", type=OUTPUT, default=None,
              help="Write the raw outputs to this .npy file (- for stdout) instead of "
              "printing them.")
@click.option("--model", default=None, help="Which model of the file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter (as when training).")
def predict(file: str, weights: Path, inputs: Path, output: str | None, model: str | None,
            overrides: tuple[str, ...]):
    """Run the trained model of FILE on new samples. Prints one line per sample (the class
    for classifiers, else the output values), or saves every output with -o."""
    import io

    import numpy as np

    from nnspec.training.data import fit_inputs, load_inputs
    from nnspec.training.loaders import DataError
    from nnspec.training.loop import EVAL_CHUNK

    spec, net, metadata = _load_trained(file, model, overrides, weights)
    data = spec.train.data if spec.train else None
    target = data.args.get("target", "y") if data is not None and data.name == "csv" else None
    try:
        x = load_inputs(inputs, drop_column=target, inputs=spec.graph.inputs)
    except DataError as err:
        _fail_plain(err.message, err.hint)
    try:
        x = fit_inputs(net, x, None, what=f"the samples in {inputs}")
    except SpecError as err:
        fail(err.diagnostics)
    _fits_or_exit(spec, "predicting with", 1, min(len(x), EVAL_CHUNK))
    with np.errstate(all="ignore"):
        chunks = [net.outputs(x[i:i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)]
    outputs = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    if len(outputs) > 1:
        _predict_outputs(outputs, output)
        return
    y = next(iter(outputs.values()))
    if output is not None:
        buffer = io.BytesIO()
        np.save(buffer, y)
        where = _write_or_exit(output, buffer.getvalue())
        _wrote(f"{len(y)} predictions of shape {list(y.shape[1:])} to {where}", where)
        return
    from nnspec.ir.ops import CLASS_INDEX_LOSSES

    classifier = spec.train is not None and spec.train.loss.name in CLASS_INDEX_LOSSES
    names = _class_names(metadata, weights)
    if not classifier:
        for row in y:
            click.echo(" ".join(f"{v:.6g}" for v in row.ravel()))
        return
    labels = [name.encode("unicode_escape").decode() for name in names or []]
    glue = "" if labels and all(len(name) == 1 for name in names) else " "  # characters
    for row in y:
        ids = np.atleast_1d(row.argmax(axis=-1))
        click.echo(glue.join(labels[i] if i < len(labels) else str(i) for i in ids))


def _predict_outputs(outputs: dict, output: str | None) -> None:
    """A model with several outputs: with -o, one .npy file per output named after it
    (`-o pred.npy` writes pred.recon.npy, pred.mu.npy, ...; `-` writes one .npz of them all
    to stdout); else each output's rows under a `# name` line."""
    import io

    import numpy as np

    from nnspec.outputs import STDOUT

    if output is None:
        for name, y in outputs.items():
            click.echo(f"# {name}")
            for row in y:
                click.echo(" ".join(f"{v:.6g}" for v in np.ravel(row)))
        return
    if output == STDOUT:
        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        where = _write_or_exit(output, buffer.getvalue())
        _wrote(f"{len(outputs)} outputs ({', '.join(outputs)}) as .npz to {where}", where)
        return
    stem = output.removesuffix(".npy")
    for name, y in outputs.items():
        buffer = io.BytesIO()
        np.save(buffer, y)
        where = _write_or_exit(f"{stem}.{name}.npy", buffer.getvalue())
        _wrote(f"{len(y)} `{name}` predictions of shape {list(y.shape[1:])} to {where}", where)


def _class_names(metadata: dict, weights: Path) -> list[str] | None:
    """The weights' `class_names` metadata (a JSON list of strings), or None with a warning
    when it is something else (a hand-edited or foreign file)."""
    text = metadata.get("class_names")
    if not text:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        click.echo(f"warning: {weights}: the class_names metadata is not a JSON list of "
                   "strings; printing class numbers", err=True)
        return None
    return names


@main.command("eval")
@click.argument("file", type=SPEC)
@click.option("--weights", "-w", required=True, type=click.Path(path_type=Path),
              help="A .safetensors file, or a run directory (its best weights).")
@click.option("--data", metavar="DATA", default=None,
              help="Evaluate on other data (as in `train --data`) [default: the spec's].")
@click.option("--split", type=click.Choice(["val", "train", "all"]), default=None,
              help="Which samples [default: val for the spec's data, all for --data].")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--model", default=None, help="Which model of the file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter (as when training).")
def evaluate(file: str, weights: Path, data: str | None, split: str | None, fmt: str,
             model: str | None, overrides: tuple[str, ...]):
    """Print the loss and the train section's metrics of trained weights on a data set."""
    import numpy as np

    from nnspec.training import loop
    from nnspec.training.budget import TooBig

    spec, net, _ = _load_trained(file, model, overrides, weights)
    if spec.train is None:
        _fail_plain(f"{file}: has no train section for `{spec.name}`, so no loss or metrics",
                    f"add `train {spec.name} {{ data ... loss ... metrics ... }}`")
    try:
        config = loop.apply_overrides(
            spec.train, data=loop.parse_setting("data", data) if data else None)
        held_out = spec.train.val if "val" in spec.train.spans else None
        base = Path() if data else Path(file).parent
        dataset, _, _ = loop.prepare(spec, config, val=held_out, base_dir=base, training=False)
    except SpecError as err:
        fail(err.diagnostics)
    except TooBig as err:
        _fail_plain(err.message, err.hint)
    except loop.OverrideError as err:
        raise click.UsageError(str(err)) from None
    split = split or ("all" if data else "val")
    parts = {"train": [(dataset.x_train, dataset.y_train)], "val": [(dataset.x_val,
             dataset.y_val)]}
    parts["all"] = parts["train"] + parts["val"]
    x = np.concatenate([p[0] for p in parts[split]])
    y = np.concatenate([p[1] for p in parts[split]])
    with np.errstate(all="ignore"):
        scores = loop.evaluate(net, config, x, y)
    name = config.data.name if config.data.name not in ("csv", "npz", "npy") else \
        Path(config.data.args["path"]).name
    if fmt == "json":
        click.echo(json.dumps({"model": spec.name, "data": name, "split": split,
                               "samples": len(x), **scores}, indent=2))
        return
    click.echo(f"{spec.name} on {name} ({split} split, {len(x)} samples)")
    for key, value in scores.items():
        click.echo(f"  {key:<10} {value:.4f}")



# ---- PyTorch: generated code and ONNX ------------------------------------------------------

_NEEDS_TORCH = 'pip install "nnspec[torch]"'


@main.command("compile")
@click.argument("file", type=SPEC)
@click.option("--backend", type=click.Choice(["torch"]), default="torch", show_default=True,
              help="The target: a standalone PyTorch file.")
@click.option("-o", "--output", "out", type=OUTPUT, default=None,
              help="Output file [default: FILE's name with .py; - for stdout].")
@click.option("--train-script", is_flag=True,
              help="Add a command-line training entry point (python out.py --help; runs "
              "data-parallel under torchrun).")
@click.option("--model", default=None, help="Which model of the file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter.")
def compile_command(file: str, backend: str, out: str | None, train_script: bool,
                    model: str | None, overrides: tuple[str, ...]):
    """Compile the model of FILE to one readable PyTorch file that runs without nnspec:
    a module class per block, the train section's loss_fn, make_optimizer and
    make_scheduler, and save_weights/load_weights for nnspec's safetensors files."""
    from nnspec.backends.torch.codegen import generate

    spec = load_or_exit(file, model, parse_overrides(overrides))
    if train_script and spec.train is None:
        _fail_plain(f"{file}: has no train section for `{spec.name}`, so no training script",
                    f"add `train {spec.name} {{ data ... loss ... }}`")
    try:
        text = generate(spec, train_script=train_script)
    except SpecError as err:
        fail(err.diagnostics)
    except ValueError as err:  # a train script for a model it cannot feed
        _fail_plain(f"{file}: {err}")
    out = out if out is not None else Path(file).stem + ".py"
    try:
        compile(text, out, "exec")  # the file is valid Python before it is written
    except SyntaxError as err:  # a generator bug, never the user's: say so plainly
        _fail_plain(f"the generated code does not parse ({err}); please report this spec")
    where = _write_or_exit(out, text.encode("utf-8"))
    if where == "standard output":
        return
    click.echo(f"wrote {out}" + (" (run it with --help for training)" if train_script else ""))


@main.command("export")
@click.argument("file", type=SPEC)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx",
              show_default=True)
@click.option("--weights", "-w", type=click.Path(path_type=Path), default=None,
              help="A .safetensors file or a run directory [default: nnspec's seeded "
              "initial weights].")
@click.option("-o", "--output", "out", type=OUTPUT, default=None,
              help="Output file [default: FILE's name with .onnx; - for stdout].")
@click.option("--model", default=None, help="Which model of the file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter (as when training).")
def export_command(file: str, fmt: str, weights: Path | None, out: str | None,
                   model: str | None, overrides: tuple[str, ...]):
    """Export the model of FILE, with trained weights, to ONNX through torch.onnx. The file
    passes onnx.checker; its batch and symbolic dims stay dynamic."""
    import importlib.util

    missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        _fail_plain(f"export goes through torch.onnx, which needs {' and '.join(missing)}",
                    'pip install "nnspec[onnx]"')
    from nnspec.training.budget import EXPORT_BATCH, EXPORT_PARAM_COPIES

    if weights is None:
        from nnspec.backends.numpy.model import NumpyModel

        spec = load_or_exit(file, model, parse_overrides(overrides))
        _fits_or_exit(spec, "exporting", EXPORT_PARAM_COPIES, EXPORT_BATCH)
        state = NumpyModel.from_spec(spec).state_dict()
    else:
        spec, net, _ = _load_trained(file, model, overrides, weights, EXPORT_PARAM_COPIES + 1)
        state = net.state_dict()
    from nnspec.backends.torch.export import ExportError, export_onnx
    from nnspec.outputs import OutputError

    out = out if out is not None else Path(file).stem + ".onnx"
    try:
        written = export_onnx(spec, out, state)
    except ExportError as err:
        _fail_plain(str(err))
    except OutputError as err:
        _fail_plain(err.message, err.hint)
    source = "initial weights" if weights is None else f"weights of {weights}"
    _wrote(f"{written} ({spec.name}, {source}; checked by onnx.checker)", written)


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


def _add_weight_commands() -> None:
    from nnspec.cli_weights import weight_commands

    def load_spec(file: str, model: str | None, overrides: tuple[str, ...]):
        return load_or_exit(file, model, parse_overrides(overrides), notes=False)

    for command in weight_commands(load_spec):
        main.add_command(command)


_add_weight_commands()

if _UNTIL_LOADED is signal.default_int_handler:  # loaded: the commands catch Ctrl-C now
    signal.signal(signal.SIGINT, _UNTIL_LOADED)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # between the imports and the first command
        sys.exit(INTERRUPTED)
