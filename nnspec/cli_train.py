"""`nnspec train`: a run directory from a spec's train section, on either backend."""

from __future__ import annotations

from pathlib import Path

import click

from nnspec.cli_common import (
    NEEDS_TORCH,
    SPEC,
    fail,
    fail_plain,
    load_or_exit,
    parse_overrides,
)
from nnspec.cli_weights import fine_tuning_options, with_fine_tuning
from nnspec.diagnostics import SpecError


class _Device(click.ParamType):
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto`: the form is checked here, and whether that
    device exists only when torch is loaded to train."""

    name = "cpu|cuda|cuda:N|mps|auto"

    def convert(self, value, param, ctx):
        kind, colon, index = str(value).partition(":")
        if kind in ("cpu", "mps", "auto") and not colon:
            return kind
        if kind == "cuda" and (not colon or index.isascii() and index.isdigit()):
            return f"cuda:{int(index)}" if colon else kind
        self.fail(f"{value!r} is not a device: use cpu, cuda, cuda:N (a GPU's index, "
                  "cuda:0 the first), mps or auto", param, ctx)


DEVICE = _Device()


@click.command()
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
              help="Stop after N epochs without a better val_loss, or the column the "
              "train section's `early_stop` watches (0: never).")
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
@click.option("--device", type=DEVICE, default=None,
              help="With --backend torch: where to train (cpu, cuda, cuda:N for the Nth GPU, "
              "mps or auto, which picks a GPU if there is one) [default: cpu]. With --resume: "
              "continue a torch run there.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="With --backend torch: autocast to this type (weights stay float32; fp16 "
              "adds a gradient scaler) [default: fp32].")
@click.option("--compile", "compiled", is_flag=True,
              help="With --backend torch: run the module through torch.compile.")
@click.option("--log", "log", type=click.Choice(["tensorboard"]), default=None,
              help="Also write TensorBoard event files into the run directory's tensorboard/ "
              "(needs tensorboard: pip install \"nnspec[tensorboard]\").")
@click.option("--log-every", type=click.IntRange(min=1), default=None, metavar="STEPS",
              help="Print a progress line every STEPS steps.")
@click.option("--log-every-seconds", type=click.FloatRange(min=0.0), default=10.0,
              show_default=True, metavar="SECONDS",
              help="When the output is not a terminal, print a progress line at most this "
              "often (0: epoch lines only).")
@fine_tuning_options
def train(file: str | None, out: Path | None, resume: Path | None, force: bool,
          epochs: int | None, batch: int | None, lr: float | None, optimizer: str | None,
          seed: int | None, val: float | None, data: str | None, early_stop: int | None,
          checkpoint_every: float, model: str | None, overrides: tuple[str, ...],
          backend: str | None, device: str | None, precision: str | None, compiled: bool,
          log: str | None, log_every: int | None, log_every_seconds: float,
          init: Path | None, init_layout: Path | None, fresh: tuple[str, ...],
          freeze: tuple[str, ...]):
    """Train the model of FILE on the NumPy interpreter (or, with --backend torch, through
    its generated PyTorch module), as its train section says.

    Writes the run directory: config.json, best/last.safetensors, resume.safetensors,
    metrics.csv, loss.png and (classification) confusion.png. Ctrl-C saves a checkpoint
    (exit 130); a non-finite loss stops the run (exit 1). See docs/training.md.
    """
    from nnspec.training import loop, tensorboard_log
    from nnspec.training.backend import BackendError
    from nnspec.training.budget import TooBig
    from nnspec.training.progress import make_progress
    from nnspec.training.rundir import RunDir, RunDirError, release_runs

    if log == "tensorboard" and not tensorboard_log.available():
        fail_plain("--log tensorboard needs the tensorboard package", tensorboard_log.INSTALL)
    progress = make_progress(log_every_seconds=log_every_seconds, log_every=log_every)
    try:
        if resume is not None:
            given = {"--epochs": epochs, "--batch": batch, "--lr": lr, "--optimizer": optimizer,
                     "--seed": seed, "--val": val, "--data": data, "--early-stop": early_stop,
                     "--model": model, "--set": overrides or None, "--force": force or None,
                     "--backend": backend, "--precision": precision,
                     "--compile": compiled or None, "--log": log, "--init": init,
                     "--init-layout": init_layout, "--fresh": fresh or None,
                     "--freeze": freeze or None}
            clash = [flag for flag, value in given.items() if value is not None]
            if clash:
                raise click.UsageError(f"--resume continues a run with the settings it started "
                                       f"with, so {clash[0]} cannot be combined with it")
            if out is not None and out.resolve() != resume.resolve():
                raise click.UsageError("--resume DIR writes to DIR; leave out --out")
            trainer = loop.resume(RunDir(resume), file, progress, checkpoint_every,
                                  device=device)
            at = trainer.at
            progress.info(f"resuming {resume} at epoch {at.epoch + 1}"
                          + (f", batch {at.batch + 1}" if at.batch else "")
                          + f" (step {at.step})")
        else:
            if file is None:
                raise click.UsageError("give the spec FILE to train, or --resume DIR")
            torch_settings = _torch_settings(backend, device, precision, compiled)
            hyper = parse_overrides(overrides)
            spec = load_or_exit(file, model, hyper)
            if spec.train is None:
                fail_plain(f"{file}: has no train section for `{spec.name}`",
                            f"add `train {spec.name} {{ data ... loss ... }}`")
            config = loop.apply_overrides(
                spec.train, epochs=epochs, batch=batch, lr=lr, seed=seed, val=val,
                early_stop=early_stop,
                optimizer=loop.parse_setting("optimizer", optimizer) if optimizer else None,
                data=loop.parse_setting("data", data) if data else None)
            config = with_fine_tuning(config, spec.graph, init, init_layout, fresh, freeze)
            held_out = val if val is not None else (
                spec.train.val if "val" in spec.train.spans else None)
            default_out = Path("runs") / Path(file).stem
            trainer, note = loop.start(
                spec, file, config, out=out, default_out=default_out, force=force,
                model_overrides=hyper, data_from_cli=data is not None,
                val=held_out, progress=progress, checkpoint_every=checkpoint_every,
                backend=backend or "numpy", torch_settings=torch_settings, log=log)
            if note:
                click.echo(f"note: {note}", err=True)
            _train_header(trainer)
        outcome = trainer.run_to_end()
    except SpecError as err:
        fail(err.diagnostics)
    except (RunDirError, TooBig, BackendError) as err:
        fail_plain(err.message, err.hint)
    except loop.OverrideError as err:
        raise click.UsageError(str(err)) from None
    except OSError as err:  # a full disk or a read-only run directory
        fail_plain(f"cannot write {err.filename or 'the run directory'}: "
                    f"{err.strerror or err}")
    except KeyboardInterrupt:
        progress.close()
        fail_plain("interrupted; the last checkpoint saved (if any) is kept", code=130)
    except ImportError as err:
        if err.name != "torch":
            raise
        progress.close()
        fail_plain("the torch backend needs PyTorch", NEEDS_TORCH)
    finally:
        release_runs()  # the run directory is free for the next train or --resume
    if outcome.status == "interrupted":
        fail_plain(outcome.message, code=130)
    if outcome.status == "diverged":
        fail_plain(outcome.message)
    click.echo(outcome.message)
    if outcome.status != "done_before":
        run = trainer.run
        plot = ", loss.png" if run.exists("loss.png") else " (pip install matplotlib for loss.png)"
        plot += ", confusion.png" if run.exists("confusion.png") else ""
        click.echo(f"weights: {run.file('best.safetensors')} (best), last.safetensors; "
                   f"metrics.csv{plot}")


def _torch_settings(backend: str | None, device: str | None, precision: str | None,
                    compiled: bool):
    """--device/--precision/--compile, which only the torch backend takes."""
    from nnspec.training.backend import TorchSettings

    given = [flag for flag, value in (("--device", device), ("--precision", precision),
                                      ("--compile", compiled)) if value]
    if backend != "torch":
        if given:
            raise click.UsageError(f"{given[0]} needs --backend torch (the NumPy interpreter "
                                   "runs on the CPU in float32)")
        return None
    return TorchSettings(device or "cpu", precision or "fp32", compiled)


def _train_header(trainer) -> None:
    from nnspec.training.settings import describe_optimizer

    t, data, config = trainer.train, trainer.data, trainer.config
    params = sum(a.size for a in trainer.model.params.values())
    trainer.progress.info(
        f"{trainer.spec.name} ({params:,} parameters) on {config['data']['setting']['name']}: "
        f"{len(data.x_train)} training / {len(data.x_val)} validation samples "
        f"({config['data']['split']})")
    schedule = f", {t.schedule.name} schedule" if t.schedule else ""
    backend = f", on PyTorch ({trainer.model.describe()})" if config["backend"] == "torch" else ""
    trainer.progress.info(
        f"{t.epochs} epochs, batch {t.batch}, {describe_optimizer(t.optimizer)}{schedule}, "
        f"seed {t.seed}{backend} -> {trainer.run}")

