"""The training loop on either backend: epochs of shuffled minibatches, validation,
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

import numpy as np

import nnspec
from nnspec.ir.train import TrainConfig
from nnspec.training import rundir
from nnspec.training.backend import TrainableModel
from nnspec.training.datasets import Dataset
from nnspec.training.eta import RunEstimate
from nnspec.training.evaluation import classifies, evaluate
from nnspec.training.loaders import iterate_minibatches
from nnspec.training.plot import plot_available, plot_confusion, plot_history
from nnspec.training.rundir import RunDir, RunDirError
from nnspec.training.settings import build_optimizer

CHECKPOINT_EVERY = 2.0  # seconds: an atomic write costs 2-10 ms of fsync, an epoch can be 5 ms
CONFUSION_MAX_CLASSES = 100  # a larger matrix is no longer a picture anyone reads


def shuffle_rng(seed: int) -> np.random.Generator:
    """The batch-order generator: its own stream, apart from init (seed) and dropout (seed+1)."""
    return np.random.default_rng([seed, 0x5EED])



@dataclass
class Outcome:
    """How a run ended: finished | early_stop | stopped (by a callback) | interrupted |
    diverged | done_before."""

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
    best_score: float | None = None  # of the column early stopping watches (val_loss)
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
                 checkpoint_every: float = CHECKPOINT_EVERY, callbacks=(), logger=None):
        """`callbacks` are called with each epoch's history row after it is committed; one
        returning True stops the run there (resumable). `logger` (a TensorBoardLogger or
        None) receives every step and every epoch."""
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
        self.callbacks = tuple(callbacks)
        self.logger = logger
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
        if "best_val_loss" in state:  # a run started before early stopping watched any column
            state["best_score"] = state.pop("best_val_loss")
        self.at = _Position(**state)
        self._committed = (time.monotonic(), self.at.epoch)
        if self.at.history:
            rundir.write_metrics(self.run.file(rundir.METRICS), self.columns, self.at.history)

    def plot(self) -> None:
        if self.at.history and plot_available():
            plot_history(self.at.history, self.run.file(rundir.PLOT), self.spec.graph.name)
            if self.at.status in ("finished", "early_stop"):
                self._plot_confusion()

    def _plot_confusion(self) -> None:
        """confusion.png of the validation split with the run's last weights."""
        data = self.data
        if not len(data.x_val) or not classifies(self.train, data.y_val):
            return
        with np.errstate(all="ignore"):
            matrix = evaluate(self.model, self.train, data.x_val, data.y_val,
                              confusion=True)["confusion"]
        if len(matrix) <= CONFUSION_MAX_CLASSES:
            plot_confusion(matrix, data.class_names, self.run.file(rundir.CONFUSION),
                           f"{self.spec.graph.name}: validation, epoch {self.at.epoch}")

    # ---- the loop -----------------------------------------------------------------------

    def run_to_end(self) -> Outcome:
        """Train until the last epoch, an early stop, a signal or a non-finite loss."""
        at = self.at
        if at.status in ("finished", "early_stop"):
            return Outcome("done_before", f"{self.run} already finished ({self._best_summary()}); "
                           "nothing to do", at.history)
        at.status = "running"
        steps = math.ceil(len(self.data.x_train) / self.train.batch)
        self.estimate = RunEstimate(self.config.get("backend", "numpy"),
                                    (self.train.epochs - at.epoch) * steps - at.batch)
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
            if self.logger is not None:
                self.logger.close()
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
        clip, progress, logger, estimate = train.clip, self.progress, self.logger, self.estimate
        for x, y in batches:
            loss = model.loss(x, y)
            if not math.isfinite(loss):
                return self._diverged(f"the training loss became {loss} at epoch {number}, "
                                      f"step {at.step + 1} (batch {at.batch + 1} of {steps})")
            model.backward()
            norm = model.clip_grad_norm(clip) if clip else None
            if norm is None and logger is not None and logger.due():
                norm = model.clip_grad_norm(math.inf)  # the norm alone, for the log
            optimizer.step()
            at.step += 1
            at.batch += 1
            at.loss_sum += loss * len(x)
            at.samples += len(x)
            progress.step(loss)
            if logger is not None:
                logger.step(at.step, loss, norm)
            if not estimate.done:
                for line in estimate.step():
                    progress.info(line)
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
        if self._improves(row):
            at.best_score, at.best_epoch, at.bad_epochs = row[train.early_stop_metric], number, 0
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
        if self.logger is not None:
            self.logger.epoch(row)
        if stopping:
            return Outcome("early_stop", f"early stop: no better {train.early_stop_metric} "
                           f"for {at.bad_epochs} epochs; {self._best_summary()}", at.history)
        wants_stop = [callback(dict(row)) for callback in self.callbacks]  # each one is called
        if any(wants_stop) and at.epoch < train.epochs:
            at.status = "stopped"
            self.checkpoint()
            return Outcome("stopped", f"stopped by a callback after epoch {at.epoch}; "
                           f"{self._best_summary()}", at.history)
        if stop.signal is not None and at.epoch < train.epochs:
            return self._interrupted(stop.signal)
        return None

    def _improves(self, row: dict) -> bool:
        """Whether the watched column beats the best so far (NaN never does)."""
        value, best = row[self.train.early_stop_metric], self.at.best_score
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best if self.train.early_stop_mode == "min" else value > best

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
        if not at.best_epoch:
            return f"no epoch improved {self.train.early_stop_metric}"
        row = at.history[at.best_epoch - 1]
        watched = self.train.early_stop_metric
        extra = "".join(f", {k} {v:.4f}" for k, v in row.items()
                        if k.startswith("val_") and k != watched)
        return f"best {watched} {row[watched]:.4f} at epoch {at.best_epoch}{extra}"


def epoch_line(row: dict, epochs: int) -> str:
    """One epoch as one plain line: the same text on a terminal and in a log file."""
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    parts += [f"{key} {value:.4f}" for key, value in row.items()
              if key.endswith("loss") or key.startswith("val_")]
    parts += [f"lr {row['lr']:.3g}", f"{row['seconds']:.2f}s"]
    return "  ".join(parts)
