"""The training loop on the NumPy interpreter: epochs of shuffled minibatches, validation,
checkpoints, and resuming exactly where a run stopped.

Determinism: `seed` fixes the initial weights (the interpreter's generator), dropout
(the model's generator, `seed + 1`) and the batch order (a generator of its own); the data
and its split never depend on it. Each epoch shuffles once with the batch-order generator,
steps the optimizer once per batch, evaluates on the held-out split, steps the lr schedule
(once per epoch, as torch's documented pattern) and commits a checkpoint.

Checkpoints are committed at the end of an epoch once `checkpoint_every` seconds have passed
since the last one, and always at the last epoch, an early stop or a signal, so runs of
many tiny epochs do not spend their time in fsync. A checkpoint holds the generators'
states, the batch-order generator's state at the start of the epoch and the number of
batches done in it, so a run stopped between two steps (Ctrl-C) resumes with the same
permutation at the same batch and ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

import nnspec
from nnspec.backends.numpy.model import NumpyModel
from nnspec.diagnostics import Diagnostic, DiagnosticError, SpecError
from nnspec.ir import ops
from nnspec.ir.train import Setting, TrainConfig
from nnspec.training import budget, rundir
from nnspec.training.backend import TrainableModel
from nnspec.training.data import fit_dataset, load_data, read_by_name, target_use
from nnspec.training.datasets import Dataset
from nnspec.training.loaders import iterate_minibatches
from nnspec.training.metrics import MetricSums, accuracy_kind
from nnspec.training.plot import plot_available, plot_history
from nnspec.training.rundir import RunDir, RunDirError

EVAL_CHUNK = 512  # samples per forward pass when evaluating
CHECKPOINT_EVERY = 2.0  # seconds: an atomic write costs 2-10 ms of fsync, an epoch can be 5 ms


class OverrideError(ValueError):
    """A command-line override that cannot be applied (a usage error)."""


# ---------------------------------------------------------------- settings


def shuffle_rng(seed: int) -> np.random.Generator:
    """The batch-order generator: its own stream, apart from init (seed) and dropout (seed+1)."""
    return np.random.default_rng([seed, 0x5EED])


def parse_setting(key: str, text: str) -> Setting:
    """`--data` / `--optimizer` text in the spec's syntax, e.g. `digits(shape = [1, 8, 8])`,
    `csv("f.csv", target = "y")`, `sgd(lr = 0.1, momentum = 0.9)`; a bare file name ending in
    .csv/.npz/.npy is also a data setting. An optimizer keeps only the hyperparameters the
    text gives (checked like the spec's), so `apply_overrides` can tell what to carry over.
    Raises OverrideError."""
    from nnspec.diagnostics import render_inline
    from nnspec.ir.build import Builder
    from nnspec.ir.train import data_setting, hyper_setting
    from nnspec.syntax import ast
    from nnspec.syntax.parser import parse_value

    suffix = Path(text).suffix.lower()
    if key == "data" and "(" not in text and suffix in (".csv", ".npz", ".npy"):
        return Setting(suffix[1:], {"path": text}, None)
    try:
        expr = parse_value(text, f"--{key}")
        setting = ast.Setting(expr.span, key, (expr,))
        program = ast.Program(expr.span.source, ())
        builder = Builder(program)
        if key == "data":
            return data_setting(builder, setting)
        resolved = hyper_setting(builder, setting, ops.OPTIMIZERS, "optimizer")
        expr = setting.values[0]
        given = set()
        if isinstance(expr, ast.Call):
            hyper = [a.name for a in ops.OPTIMIZERS[resolved.name].hyper]
            given = {*hyper[:len(expr.args)], *(k.name for k in expr.kwargs)}
        return Setting(resolved.name, {k: v for k, v in resolved.args.items() if k in given},
                       None)
    except SpecError as error:
        raise OverrideError(f"cannot read --{key} {text!r}: "
                            f"{render_inline(error.diagnostics[0])}") from None
    except DiagnosticError as error:
        d = error.diagnostic
        raise OverrideError(f"--{key} {text!r}: {d.message}" + (f" ({d.hint})" if d.hint else "")
                            ) from None


def apply_overrides(train: TrainConfig, *, epochs: int | None = None, batch: int | None = None,
                    lr: float | None = None, optimizer: Setting | None = None,
                    seed: int | None = None, val: float | None = None,
                    data: Setting | None = None, early_stop: int | None = None) -> TrainConfig:
    """The train section with command-line overrides applied (None keeps the spec's value).

    A new optimizer starts from torch's defaults and keeps the spec's learning rate unless
    it sets its own; `--lr` wins over both. Raises OverrideError for unknown names.
    """
    chosen = train.optimizer
    if optimizer is not None:
        if optimizer.name not in ops.OPTIMIZERS:
            from nnspec.diagnostics import did_you_mean

            raise OverrideError(f"unknown optimizer `{optimizer.name}`; "
                                + (did_you_mean(optimizer.name, ops.OPTIMIZERS)
                                   or f"choose one of: {', '.join(ops.OPTIMIZERS)}"))
        allowed = {a.name: a.default for a in ops.OPTIMIZERS[optimizer.name].hyper}
        unknown = [k for k in optimizer.args if k not in allowed]
        if unknown:
            raise OverrideError(f"{optimizer.name} has no hyperparameter `{unknown[0]}`; its "
                                f"hyperparameters are {', '.join(allowed)}")
        args = {**allowed, "lr": train.optimizer.args.get("lr", allowed["lr"]), **optimizer.args}
        chosen = Setting(optimizer.name, args, None)
    if lr is not None:
        chosen = Setting(chosen.name, {**chosen.args, "lr": lr}, chosen.span)
    changes = {"epochs": epochs, "batch": batch, "seed": seed, "val": val, "data": data,
               "early_stop": early_stop}
    return dataclasses.replace(train, optimizer=chosen,
                               **{k: v for k, v in changes.items() if v is not None})


def build_optimizer(setting: Setting, model: TrainableModel):
    """The optimizer of `setting` over the model's parameters; a user's value the
    optimizer refuses is located at the spec's setting or the `--optimizer` option."""
    try:
        return model.make_optimizer(setting)
    except ValueError as error:  # values the catalogue's checks let through, e.g. betas >= 1
        if setting.span is not None:
            raise SpecError([Diagnostic("E163", str(error), setting.span)]) from None
        raise OverrideError(f"--optimizer: {error}") from None


def describe_optimizer(setting: Setting) -> str:
    defaults = {a.name: a.default for a in ops.OPTIMIZERS[setting.name].hyper}
    shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in setting.args.items() if k == "lr" or v != defaults.get(k)]
    return f"{setting.name}({', '.join(shown)})"


# ---------------------------------------------------------------- the model's backend
#
# The loop drives any `TrainableModel` (nnspec.training.backend): the NumpyModel, or a
# TorchModel (nnspec.backends.torch.runtime: the generated PyTorch module).

BACKENDS = ("numpy", "torch")


def on_backend(backend: str, spec, train: TrainConfig, model: NumpyModel) -> TrainableModel:
    """The model to train: the interpreter itself, or the generated torch module starting
    from the interpreter's (seeded) weights."""
    if backend == "numpy":
        return model
    from nnspec.backends.torch.runtime import TorchModel

    return TorchModel.from_numpy(spec, train, model)


# ---------------------------------------------------------------- evaluation


def evaluate(model: TrainableModel, train: TrainConfig, x: np.ndarray, y: np.ndarray,
             chunk: int = EVAL_CHUNK) -> dict[str, float]:
    """The loss and the train section's metrics on (x, y), in eval mode (no dropout, batch
    norm's running statistics); the loss is averaged over samples."""
    ids = y.dtype == np.int64
    loss, _, args = target_use(train) if train.metrics else (None, None, {})
    kind = accuracy_kind(loss, args, ids) if "accuracy" in train.metrics else None
    ignore = args.get("ignore_index") if loss in ops.CLASS_INDEX_LOSSES else None
    sums = MetricSums(train.metrics, kind, ignore)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        total += model.loss(xb, yb, train=False) * len(xb)
        if train.metrics:
            sums.update(_compared_output(model(xb), train), yb)
    return {"loss": total / len(x), **sums.values()}


def _compared_output(out, train: TrainConfig) -> np.ndarray:
    """Of several outputs, the one the loss compares with the data's target (metrics
    score that one)."""
    if not isinstance(out, tuple):
        return out
    _, name, _ = target_use(train)
    return out[[n for n, _ in train.outputs].index(name)]


# ---------------------------------------------------------------- the run


@dataclass
class Outcome:
    """How a run ended: finished | early_stop | interrupted | diverged | done_before."""

    status: str
    message: str
    history: list[dict] = field(default_factory=list)


@dataclass
class _Position:
    """Where the run is, and everything else a resume must restore besides arrays."""

    epoch: int = 0  # finished epochs
    step: int = 0  # optimizer steps so far
    batch: int = 0  # batches done in the current epoch
    epoch_rng: dict | None = None  # batch-order generator state at the start of this epoch
    loss_sum: float = 0.0  # this epoch's sum of batch loss * batch size
    samples: int = 0
    best_val_loss: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    status: str = "running"
    history: list[dict] = field(default_factory=list)


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads between steps, so a checkpoint is only
    ever taken of a consistent state; a second signal interrupts at once."""

    def __init__(self):
        self.signal: int | None = None
        self._saved: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


class Trainer:
    """One run of one spec on one data set into one run directory."""

    def __init__(self, spec, train: TrainConfig, dataset: Dataset, model: TrainableModel,
                 run: RunDir, progress, config: dict,
                 checkpoint_every: float = CHECKPOINT_EVERY):
        self.spec = spec
        self.train = train
        self.data = dataset
        self.model = model
        self.run = run
        self.progress = progress
        self.config = config
        self.optimizer = build_optimizer(train.optimizer, self.model)
        self.schedule = nnspec.make_schedule(spec, self.optimizer, train.epochs)
        self.batches = shuffle_rng(train.seed)
        self.at = _Position()
        self.checkpoint_every = checkpoint_every
        self._committed = (time.monotonic(), 0)  # when, and after which epoch
        self._unsaved_best: tuple[dict, dict] | None = None  # best weights not yet on disk
        self.columns = ["epoch", "step", "train_loss", "val_loss",
                        *(f"val_{m}" for m in train.metrics), "lr", "seconds"]
        self.weights_meta = {
            "model": spec.graph.name, "model_hash": config["model_hash"],
            "spec_hash": config["spec_hash"], "nnspec_version": nnspec.__version__,
            "class_names": json.dumps(dataset.class_names)}

    # ---- checkpoints ----------------------------------------------------------------------

    def _meta(self, epoch: int, val_loss: float | None) -> dict[str, str]:
        extra = {"epoch": str(epoch), "step": str(self.at.step)}
        if val_loss is not None:
            extra["val_loss"] = repr(val_loss)
        return {**self.weights_meta, **extra}

    def checkpoint(self) -> None:
        """Commit the run's state: new best weights, the resume file (the commit point),
        then the plain weights and the metrics table, each written atomically."""
        at = self.at
        self._flush_best()
        state = dataclasses.asdict(at)
        state.update(spec_hash=self.config["spec_hash"],
                     batches=self.batches.bit_generator.state,
                     dropout=self.model.dropout_state)
        weights = self.model.state_dict()
        self.run.write_checkpoint(weights, self.optimizer.state_dict(),
                                  self.schedule.state_dict() if self.schedule else None, state)
        last_val = at.history[-1]["val_loss"] if at.history else None
        self.run.write_weights(rundir.LAST, weights, self._meta(at.epoch, last_val))
        rundir.write_metrics(self.run.file(rundir.METRICS), self.columns, at.history)
        self._committed = (time.monotonic(), at.epoch)

    def _flush_best(self) -> None:
        if self._unsaved_best is not None:
            self.run.write_weights(rundir.BEST, *self._unsaved_best)
            self._unsaved_best = None

    def restore(self) -> None:
        """Continue from the run directory's resume file."""
        weights, optim, schedule, state = self.run.read_checkpoint()
        if state.get("spec_hash") != self.config["spec_hash"]:
            raise RunDirError(f"{self.run.file(rundir.RESUME)}: the checkpoint belongs to "
                              "another run (its spec fingerprint differs from config.json)")
        try:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(optim)
            if self.schedule is not None:
                self.schedule.load_state_dict(schedule)
        except (ValueError, KeyError) as error:
            raise RunDirError(f"{self.run.file(rundir.RESUME)}: does not fit the model "
                              f"({error})") from None
        self.batches.bit_generator.state = state.pop("batches")
        self.model.dropout_state = state.pop("dropout")
        state.pop("spec_hash")
        self.at = _Position(**state)
        self._committed = (time.monotonic(), self.at.epoch)
        if self.at.history:
            rundir.write_metrics(self.run.file(rundir.METRICS), self.columns, self.at.history)

    def plot(self) -> None:
        if self.at.history and plot_available():
            plot_history(self.at.history, self.run.file(rundir.PLOT), self.spec.graph.name)

    # ---- the loop -----------------------------------------------------------------------

    def run_to_end(self) -> Outcome:
        """Train until the last epoch, an early stop, a signal or a non-finite loss."""
        at = self.at
        if at.status in ("finished", "early_stop"):
            return Outcome("done_before", f"{self.run} already finished ({self._best_summary()}); "
                           "nothing to do", at.history)
        at.status = "running"
        try:
            with _StopRequest() as stop, np.errstate(all="ignore"):
                while at.epoch < self.train.epochs:
                    outcome = self._epoch(stop)
                    if outcome is not None:
                        return outcome
            return Outcome("finished", f"finished {at.epoch} epochs: {self._best_summary()}",
                           at.history)
        finally:
            self.progress.close()
            self.plot()

    def _epoch(self, stop: _StopRequest) -> Outcome | None:
        at, train, model, optimizer = self.at, self.train, self.model, self.optimizer
        number = at.epoch + 1
        steps = math.ceil(len(self.data.x_train) / train.batch)
        if at.batch == 0:
            at.epoch_rng = self.batches.bit_generator.state
        else:  # resuming inside an epoch: redraw its permutation, skip the batches done
            self.batches.bit_generator.state = at.epoch_rng
        batches = islice(iterate_minibatches(self.data.x_train, self.data.y_train, train.batch,
                                             self.batches), at.batch, None)
        self.progress.epoch_started(number, train.epochs, steps, at.batch)
        started = time.perf_counter()
        clip, progress = train.clip, self.progress
        for x, y in batches:
            loss = model.loss(x, y)
            if not math.isfinite(loss):
                return self._diverged(f"the training loss became {loss} at epoch {number}, "
                                      f"step {at.step + 1} (batch {at.batch + 1} of {steps})")
            model.backward()
            if clip:
                model.clip_grad_norm(clip)
            optimizer.step()
            at.step += 1
            at.batch += 1
            at.loss_sum += loss * len(x)
            at.samples += len(x)
            progress.step(loss)
            if stop.signal is not None and at.batch < steps:
                return self._interrupted(stop.signal)
        return self._end_epoch(number, started, stop)

    def _end_epoch(self, number: int, started: float, stop: _StopRequest) -> Outcome | None:
        at, train = self.at, self.train
        scores = evaluate(self.model, train, self.data.x_val, self.data.y_val)
        seconds = time.perf_counter() - started
        val_loss = scores.pop("loss")
        if not math.isfinite(val_loss):
            return self._diverged(f"the validation loss became {val_loss} after epoch {number} "
                                  f"(step {at.step})")
        row = {"epoch": number, "step": at.step, "train_loss": at.loss_sum / at.samples,
               "val_loss": val_loss, **{f"val_{k}": v for k, v in scores.items()},
               "lr": self.optimizer.lr, "seconds": round(seconds, 3)}
        at.history.append(row)
        if at.best_val_loss is None or val_loss < at.best_val_loss:
            at.best_val_loss, at.best_epoch, at.bad_epochs = val_loss, number, 0
            self._unsaved_best = (self.model.state_dict(), self._meta(number, val_loss))
        else:
            at.bad_epochs += 1
        if self.schedule is not None:
            self.schedule.step()
        at.epoch, at.batch, at.epoch_rng, at.loss_sum, at.samples = number, 0, None, 0.0, 0
        stopping = train.early_stop and at.bad_epochs >= train.early_stop
        if stopping:
            at.status = "early_stop"
        elif at.epoch == train.epochs:
            at.status = "finished"
        due = time.monotonic() - self._committed[0] >= self.checkpoint_every
        if due or stopping or stop.signal is not None or at.epoch == train.epochs:
            self.checkpoint()
        self.progress.epoch_finished(epoch_line(row, train.epochs))
        if stopping:
            return Outcome("early_stop", f"early stop: no better val_loss for {at.bad_epochs} "
                           f"epochs; {self._best_summary()}", at.history)
        if stop.signal is not None and at.epoch < train.epochs:
            return self._interrupted(stop.signal)
        return None

    def _interrupted(self, signum: int) -> Outcome:
        self.at.status = "interrupted"
        self.checkpoint()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        where = (f"epoch {self.at.epoch + 1}, after batch {self.at.batch}" if self.at.batch
                 else f"the end of epoch {self.at.epoch}")
        return Outcome("interrupted", f"stopped by {name} at {where} (step {self.at.step}); "
                       f"the checkpoint is saved: continue with `nnspec train --resume "
                       f"{self.run}`", self.at.history)

    def _diverged(self, what: str) -> Outcome:
        self._flush_best()
        epoch = self._committed[1]
        kept = f"the last good checkpoint (end of epoch {epoch})" if epoch else \
            "the initial weights"
        lr = self.optimizer.lr
        return Outcome("diverged", f"{what}; training stopped. {kept[0].upper()}{kept[1:]} "
                       f"stay in {self.run}. "
                       f"Try a lower learning rate (it is {lr:g}: --lr {lr / 10:g}) or "
                       "gradient clipping (`clip 1.0` in the train section)", self.at.history)

    def _best_summary(self) -> str:
        at = self.at
        if not at.history:
            return "no epoch finished"
        row = at.history[at.best_epoch - 1]
        extra = "".join(f", {k} {v:.4f}" for k, v in row.items()
                        if k.startswith("val_") and k != "val_loss")
        return f"best val_loss {at.best_val_loss:.4f} at epoch {at.best_epoch}{extra}"


def epoch_line(row: dict, epochs: int) -> str:
    """One epoch as one plain line: the same text on a terminal and in a log file."""
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    parts += [f"{key} {value:.4f}" for key, value in row.items()
              if key.endswith(("loss", "accuracy", "mae", "mse"))]
    parts += [f"lr {row['lr']:.3g}", f"{row['seconds']:.2f}s"]
    return "  ".join(parts)


# ---------------------------------------------------------------- starting and resuming


def prepare(spec, train: TrainConfig, *, val: float | None, base_dir: Path,
            training: bool = True) -> tuple[Dataset, str, NumpyModel]:
    """The data, checked against a freshly initialised model and the loss (SpecError:
    E216-E219), where its validation samples come from, and that model. Raises
    budget.TooBig first when training (or, with training=False, evaluating) the model
    would not fit in memory."""
    if train.data is None:
        from nnspec.training.data import data_error

        span = next((t.span for t in spec.program.trains if t.model == spec.graph.name), None)
        raise data_error("E216", f"train `{spec.graph.name}` names no data", span,
                         "add a `data` line (e.g. `data digits`) or pass --data")
    dataset, split = load_data(train.data, base_dir=base_dir, val=val, loss=train.loss.name,
                               names=read_by_name(spec.graph, train))
    samples = len(dataset.x_train) + len(dataset.x_val)
    if training:
        budget.check_fits(spec.graph, what=f"training {spec.graph.name}",
                          batch=min(train.batch, samples),
                          param_copies=budget.TRAIN_PARAM_COPIES,
                          activation_copies=budget.TRAIN_ACTIVATION_COPIES, training=True)
    else:  # a second copy of the weights beside the loaded model
        budget.check_fits(spec.graph, what=f"evaluating {spec.graph.name}",
                          batch=min(EVAL_CHUNK, samples), param_copies=2)
    probe = NumpyModel(spec.graph, seed=train.seed, train=train)
    return fit_dataset(probe, train, dataset), split, probe


def start(spec, spec_path: str, train: TrainConfig, *, out: Path | None, default_out: Path,
          force: bool, model_overrides: dict, data_from_cli: bool, val: float | None,
          progress, checkpoint_every: float = CHECKPOINT_EVERY, backend: str = "numpy"
          ) -> tuple[Trainer, str | None]:
    """A new run on `backend` (numpy or torch): data checked, run directory claimed, config
    and first checkpoint written. Returns the trainer and a note about the directory chosen
    (or None)."""
    base_dir = Path() if data_from_cli else Path(spec_path).parent
    dataset, split, model = prepare(spec, train, val=val, base_dir=base_dir)
    build_optimizer(train.optimizer, model)  # bad hyperparameters fail before any file is written
    if train.init is not None or train.init_layout is not None or train.fresh:
        from nnspec.weights.finetune import start_from_init  # fine-tuning (docs/weights.md)

        for line in start_from_init(model, train, Path(spec_path).parent):
            progress.info(line)
    model = on_backend(backend, spec, train, model)
    fp = rundir.fingerprint(spec)
    spec_hash = rundir.digest(fp)
    run, note = rundir.claim(out, default_out, spec_hash, force)
    data = dict(train.data.args)
    if "path" in data:
        data["path"] = str((base_dir / data["path"]).resolve())
    config = {
        "nnspec_version": nnspec.__version__,
        "backend": backend,
        "spec": str(Path(spec_path).resolve()),
        "model": spec.graph.name,
        "overrides": model_overrides,
        "spec_hash": spec_hash,
        "model_hash": rundir.digest({"params": fp["params"], "nodes": fp["nodes"]}),
        "train": train.to_json(),
        "data": {"setting": {"name": train.data.name, **data},
                 "from": "command line" if data_from_cli else "spec", "val": val,
                 "split": split, "description": dataset.description,
                 "attribution": dataset.attribution, "train_samples": len(dataset.x_train),
                 "val_samples": len(dataset.x_val), "input_shape": list(dataset.input_shape),
                 "class_names": dataset.class_names},
        "fingerprint": fp,
    }
    run.write_config(_json_ready(config))
    trainer = Trainer(spec, train, dataset, model, run, progress, config, checkpoint_every)
    trainer.checkpoint()
    return trainer, note


def resume(run: RunDir, spec_path: str | None, progress,
           checkpoint_every: float = CHECKPOINT_EVERY) -> Trainer:
    """Continue the run in `run`, after checking that the spec still fingerprints the same."""
    from nnspec.spec import load

    config = run.read_config()
    run.lock()
    path = spec_path or config["spec"]
    if not Path(path).is_file():
        raise RunDirError(f"the run's spec {path} is gone",
                          "pass the spec file: nnspec train FILE --resume DIR")
    spec = load(path, config["model"], config["overrides"] or None)
    if spec.train is None:
        raise RunDirError(f"{path}: has no train section for `{config['model']}`")
    fp = _json_ready(rundir.fingerprint(spec))
    if rundir.digest(fp) != config["spec_hash"]:
        change = rundir.first_difference(config["fingerprint"], fp) or "its fingerprint differs"
        raise RunDirError(f"the spec changed since {run} was started: {change}",
                          "resuming continues the run exactly, so the spec must be the one "
                          "it started with; start a new run with --out (or --force)")
    train = _train_from_json(spec, config)
    from_cli = config["data"]["from"] != "spec"
    base_dir = Path() if from_cli else Path(path).parent
    dataset, _, model = prepare(spec, train, val=config["data"]["val"], base_dir=base_dir)
    model = on_backend(config.get("backend", "numpy"), spec, train, model)
    run.remove_partials()
    trainer = Trainer(spec, train, dataset, model, run, progress, config, checkpoint_every)
    if run.exists(rundir.RESUME):
        trainer.restore()
    return trainer


def _train_from_json(spec, config: dict) -> TrainConfig:
    saved = config["train"]
    own = spec.train
    optimizer = dict(saved["optimizer"])
    name = optimizer.pop("name")
    same = name == own.optimizer.name and _json_ready(own.optimizer.args) == optimizer
    data = config["data"]["setting"]
    data_setting = own.data if config["data"]["from"] == "spec" else Setting(
        data["name"], {k: v for k, v in data.items() if k != "name"}, None)
    return dataclasses.replace(
        own, epochs=saved["epochs"], batch=saved["batch"], seed=saved["seed"], val=saved["val"],
        clip=saved["clip"], early_stop=saved["early_stop"], metrics=tuple(saved["metrics"]),
        freeze=tuple(saved.get("freeze", own.freeze)),
        optimizer=own.optimizer if same else Setting(name, optimizer, None), data=data_setting)


def _json_ready(value):
    """Through JSON and back: tuples become lists, as they will be when read from disk."""
    return json.loads(json.dumps(value))
