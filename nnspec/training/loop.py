"""Starting and resuming a training run: the data checked against the model, the run
directory claimed, the trainer (nnspec.training.trainer) set up on the chosen backend.

This is the training API the CLI and `nnspec.fit` use; it also names the pieces they need
from the modules beside it (settings, evaluation, trainer).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import nnspec
from nnspec.backends.numpy.model import NumpyModel
from nnspec.ir.train import Setting, TrainConfig
from nnspec.training import budget, rundir
from nnspec.training.backend import TorchSettings, TrainableModel
from nnspec.training.data import fit_dataset, load_data, read_by_name
from nnspec.training.datasets import Dataset
from nnspec.training.evaluation import EVAL_CHUNK, evaluate
from nnspec.training.rundir import RunDir, RunDirError
from nnspec.training.settings import (
    OverrideError,
    apply_overrides,
    build_optimizer,
    describe_optimizer,
    parse_setting,
)
from nnspec.training.trainer import CHECKPOINT_EVERY, Outcome, Trainer, epoch_line

__all__ = ["BACKENDS", "CHECKPOINT_EVERY", "EVAL_CHUNK", "LOGS", "Outcome", "OverrideError", "Trainer",
           "apply_overrides", "build_optimizer", "describe_optimizer", "epoch_line", "evaluate",
           "on_backend", "parse_setting", "prepare", "resume", "start"]

BACKENDS = ("numpy", "torch")


def on_backend(backend: str, spec, train: TrainConfig, model: NumpyModel,
               settings: TorchSettings | None = None) -> TrainableModel:
    """The model to train: the interpreter itself, or the generated torch module starting
    from the interpreter's (seeded) weights, on the device and precision of `settings`."""
    if backend == "numpy":
        return model
    from nnspec.backends.torch.runtime import TorchModel

    return TorchModel.from_numpy(spec, train, model, settings)


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
          progress, checkpoint_every: float = CHECKPOINT_EVERY, backend: str = "numpy",
          callbacks=(), log: str | None = None, torch_settings: TorchSettings | None = None
          ) -> tuple[Trainer, str | None]:
    """A new run on `backend` (numpy or torch, with `torch_settings`): data checked, run directory claimed, config
    and first checkpoint written. Returns the trainer and a note about the directory chosen
    (or None)."""
    base_dir = Path() if data_from_cli else Path(spec_path).parent
    dataset, split, model = prepare(spec, train, val=val, base_dir=base_dir)
    build_optimizer(train.optimizer, model)  # bad hyperparameters fail before any file is written
    if train.init is not None or train.init_layout is not None or train.fresh:
        from nnspec.weights.finetune import start_from_init  # fine-tuning (docs/weights.md)

        for line in start_from_init(model, train, Path(spec_path).parent):
            progress.info(line)
    model = on_backend(backend, spec, train, model, torch_settings)
    fp = rundir.fingerprint(spec)
    spec_hash = rundir.digest(fp)
    run, note = rundir.claim(out, default_out, spec_hash, force)
    data = dict(train.data.args)
    if "path" in data:
        data["path"] = str((base_dir / data["path"]).resolve())
    config = {
        "nnspec_version": nnspec.__version__,
        "backend": backend,
        **({"torch": (torch_settings or TorchSettings()).to_json()} if backend == "torch" else {}),
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
        "log": log,
    }
    run.write_config(_json_ready(config))
    trainer = Trainer(spec, train, dataset, model, run, progress, config, checkpoint_every,
                      callbacks, _logger(log, run, train, dataset))
    trainer.checkpoint()
    return trainer, note


def resume(run: RunDir, spec_path: str | None, progress,
           checkpoint_every: float = CHECKPOINT_EVERY, callbacks=(),
           device: str | None = None) -> Trainer:
    """Continue the run in `run`, after checking that the spec still fingerprints the same
    (logging as it started: `log` of config.json); a torch run may continue on another
    `device` (its checkpoints are CPU arrays)."""
    from nnspec.spec import load

    config = run.read_config()
    if device is not None and config.get("backend", "numpy") != "torch":
        raise OverrideError(f"--device: {run} trains on the NumPy interpreter (CPU)")
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
    settings = TorchSettings.from_json(config.get("torch"))
    if device is not None:
        settings = dataclasses.replace(settings, device=device)
    model = on_backend(config.get("backend", "numpy"), spec, train, model, settings)
    run.remove_partials()
    trainer = Trainer(spec, train, dataset, model, run, progress, config, checkpoint_every,
                      callbacks, _logger(config.get("log"), run, train, dataset))
    if run.exists(rundir.RESUME):
        trainer.restore()
    return trainer


LOGS = ("tensorboard",)


def _logger(log: str | None, run: RunDir, train: TrainConfig, dataset: Dataset):
    """The run's logger besides metrics.csv (`--log tensorboard`), or None."""
    if log is None:
        return None
    from nnspec.training.tensorboard_log import TensorBoardLogger

    steps = math.ceil(len(dataset.x_train) / train.batch)
    return TensorBoardLogger(run.file(rundir.TENSORBOARD), steps)


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
        early_stop_metric=saved.get("early_stop_metric", "val_loss"),
        early_stop_mode=saved.get("early_stop_mode", "min"),
        metric_outputs=tuple(tuple(pair) for pair in saved.get("metric_outputs", ())),
        freeze=tuple(saved.get("freeze", own.freeze)),
        optimizer=own.optimizer if same else Setting(name, optimizer, None), data=data_setting)


def _json_ready(value):
    """Through JSON and back: tuples become lists, as they will be when read from disk."""
    return json.loads(json.dumps(value))
