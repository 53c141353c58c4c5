"""`nnspec.fit`: `nnspec train` from Python, for notebooks and scripts.

The same run directory, checkpoints, resume and early stopping as the command line: it
calls `loop.start` / `loop.resume` and the same `Trainer`, so a run started here can be
continued with `nnspec train --resume DIR` and the other way round.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nnspec.ir.train import Setting

Callback = Callable[[dict], Any]


class History(list):
    """One dict per finished epoch (the rows of metrics.csv), with how the run ended."""

    def __init__(self, rows: Iterable[dict], status: str, message: str, run: Path):
        super().__init__(rows)
        self.status = status  # finished | early_stop | stopped | interrupted | diverged | done_before
        self.message = message
        self.run = run  # the run directory

    def column(self, name: str) -> list[float]:
        """One column over the epochs, e.g. `history.column("val_loss")`."""
        return [row[name] for row in self]

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, {self.status}, run={str(self.run)!r})"


def fit(spec, data: str | None = None, *, epochs: int | None = None, backend: str = "numpy",
        callbacks: Iterable[Callback] = (), out: str | Path | None = None,
        resume: bool = False, force: bool = False, batch: int | None = None,
        lr: float | None = None, optimizer: str | None = None, seed: int | None = None,
        val: float | None = None, early_stop: int | None = None, model: str | None = None,
        log: str | None = None, progress: bool = True, **overrides) -> History:
    """Train a spec as its train section says and return the per-epoch history.

    `spec` is a `.nn` path or a `Spec` loaded from a file; keyword arguments not listed
    here override the model's hyperparameters (`hidden=64`), the listed ones are
    `nnspec train`'s options (`data="digits(shape = [1, 8, 8])"` or a file name, as
    `--data`). Each callback is called with every epoch's row after its checkpoint; one
    returning True stops the run there (it can be resumed). `resume=True` continues the
    run in `out` when there is one (with the settings it started with, so no overrides),
    else starts it. Errors in the spec raise `SpecError`; a run directory that cannot be
    used raises `RunDirError`.
    """
    from nnspec.spec import Spec, load
    from nnspec.training import loop
    from nnspec.training.progress import PlainProgress, make_progress
    from nnspec.training.rundir import RunDir, release_runs

    path = _spec_path(spec)
    if backend not in loop.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(loop.BACKENDS)}, not {backend!r}")
    if log is not None and log not in loop.LOGS:
        raise ValueError(f"log must be one of {', '.join(loop.LOGS)}, not {log!r}")
    options = {"data": data, "epochs": epochs, "batch": batch, "lr": lr,
               "optimizer": optimizer, "seed": seed, "val": val, "early_stop": early_stop,
               "model": model, **overrides}
    reporter = make_progress() if progress else PlainProgress(io.StringIO())
    out = Path(out) if out is not None else None
    try:
        if resume and out is not None and RunDir(out).is_run():
            given = [k for k, v in options.items() if v is not None]
            if given:
                raise ValueError(f"resume=True continues the run in {out} with the settings "
                                 f"it started with, so `{given[0]}` cannot be given")
            trainer = loop.resume(RunDir(out), str(path), reporter, callbacks=callbacks)
        else:
            if isinstance(spec, Spec) and not overrides and model is None:
                loaded = spec
            else:
                loaded = load(path, model or (spec.name if isinstance(spec, Spec) else None),
                              overrides or None)
            if loaded.train is None:
                raise ValueError(f"{path}: has no train section for `{loaded.name}`")
            train = loop.apply_overrides(
                loaded.train, epochs=epochs, batch=batch, lr=lr, seed=seed, val=val,
                early_stop=early_stop,
                optimizer=loop.parse_setting("optimizer", optimizer) if optimizer else None,
                data=_data_setting(data))
            held_out = val if val is not None else (
                loaded.train.val if "val" in loaded.train.spans else None)
            trainer, note = loop.start(
                loaded, str(path), train, out=out, default_out=Path("runs") / path.stem,
                force=force, model_overrides=overrides or dict(loaded.overrides), data_from_cli=data is not None,
                val=held_out, progress=reporter, backend=backend, callbacks=callbacks,
                log=log)
            if note:
                reporter.info(f"note: {note}")
        outcome = trainer.run_to_end()
        reporter.info(outcome.message)
    finally:
        release_runs()
    return History(outcome.history, outcome.status, outcome.message, trainer.run.path)


def _spec_path(spec) -> Path:
    from nnspec.spec import Spec

    if isinstance(spec, Spec):
        path = Path(spec.source.path)
        if not path.is_file():
            raise ValueError("fit records the spec's file in the run directory (to resume "
                             f"it), but this Spec was not loaded from a file ({path}); "
                             "save the text to a .nn file and pass its path")
        return path
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no spec file {path}")
    return path


def _data_setting(data) -> Setting | None:
    from nnspec.training import loop

    if data is None or isinstance(data, Setting):
        return data
    return loop.parse_setting("data", str(data))
