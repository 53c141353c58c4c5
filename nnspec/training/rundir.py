"""The run directory: what a training run leaves behind, written so a crash never corrupts it.

Every file is written by `nnspec.outputs.write_atomic`: whole to a hidden `.NAME.partial`
sibling, flushed to disk (fsync) and renamed over NAME, so a reader (or a run killed at any
instant) sees either the old file or the new one, never half of one; a failed write removes
its partial file. A `.partial` file left by a killed run is removed when the directory is
next opened.

Layout (see docs/training.md):

    config.json          the resolved settings, the spec's fingerprint and the data's description
    resume.safetensors   everything `--resume` needs, in one file: weights, optimizer and
                         schedule state, RNG states, the position (epoch, step, batch) and
                         the metrics history; it is the run's single commit point
    last.safetensors     the latest weights (plain safetensors, loadable by torch)
    best.safetensors     the weights with the lowest validation loss so far
    metrics.csv          one row per finished epoch
    loss.png             the loss and metric curves

The process training a run holds an exclusive flock() on the directory itself.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nnspec.outputs import write_atomic

CONFIG = "config.json"
RESUME = "resume.safetensors"
LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.csv"
PLOT = "loss.png"
CONFUSION = "confusion.png"  # classification runs
TENSORBOARD = "tensorboard"  # a directory of event files, with `--log tensorboard`
_HELD: dict[str, int] = {}  # resolved run path -> its flock()ed directory descriptor
RUN_FILES = (CONFIG, RESUME, LAST, BEST, METRICS, PLOT, CONFUSION)
FORMAT = "nnspec-run-1"

_MODEL = "model."
_OPTIM = "optimizer."
_SCHEDULE = "schedule."


class RunDirError(Exception):
    """A run directory that cannot be used as asked (a user situation, not a bug)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


# ---------------------------------------------------------------- files


def write_json(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str]) -> None:
    from safetensors.numpy import save

    arrays = {name: np.require(array, requirements="C") for name, array in tensors.items()}
    write_atomic(path, save(arrays, metadata=dict(metadata)))


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file; RunDirError if it is missing or damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RunDirError(f"{path}: is a directory, not a weights file") from None
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise RunDirError(f"{path}: not a readable safetensors file ({error})",
                          "weights files are written by `nnspec train` or "
                          "safetensors.torch.save_file") from None
    return tensors, metadata


def write_metrics(path: Path, columns: list[str], history: list[dict]) -> None:
    """The whole history as CSV (rewritten each epoch: small, and always consistent)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    write_atomic(path, buffer.getvalue().encode())


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------- fingerprints


def fingerprint(spec) -> dict:
    """What a run depends on, in a canonical JSON form: the model's layers and parameters,
    the loss and the spec's own train section. Two specs with equal fingerprints train alike."""
    return {
        "model": spec.graph.name,
        "params": [[name, list(p.spec.shape)] for name, p in spec.graph.params.items()],
        "nodes": [_node(n) for n in spec.graph.nodes],
        "loss": [_node(n) for n in spec.train.loss_graph.nodes] if spec.train else [],
        "train": spec.train.to_json() if spec.train else None,
    }


def _node(node) -> list:
    shape = [str(d) for d in node.type.shape] if node.type is not None else None
    return [node.name, node.op, list(node.inputs), _plain(dict(node.attrs)), shape,
            node.type.dtype if node.type is not None else None]


def _plain(value):
    """Attribute values as JSON data (tuples as lists), so the fingerprint round-trips."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def first_difference(old: dict, new: dict) -> str | None:
    """A sentence naming the first thing that differs between two fingerprints, or None.

    Parameters come first (the question a resume really asks is whether the weights still
    fit), then layers, then the loss, then train settings.
    """
    old_params, new_params = dict(map(tuple, _pairs(old["params"]))), dict(
        map(tuple, _pairs(new["params"])))
    for name, shape in old_params.items():
        if name not in new_params:
            return f"the parameter `{name}` {list(shape)} is no longer in the spec"
        if new_params[name] != shape:
            return (f"the parameter `{name}` is {list(shape)} in the run but "
                    f"{list(new_params[name])} in the spec")
    for name, shape in new_params.items():
        if name not in old_params:
            return f"the spec has a new parameter `{name}` {list(shape)}"
    if old["model"] != new["model"]:
        return f"the run trained the model `{old['model']}`, the spec gives `{new['model']}`"
    for what, key in (("layer", "nodes"), ("loss node", "loss")):
        old_nodes = {n[0]: n for n in old[key]}
        new_nodes = {n[0]: n for n in new[key]}
        for name, node in old_nodes.items():
            if name not in new_nodes:
                return f"the {what} `{name}` ({node[1]}) is no longer in the spec"
            if new_nodes[name] != node:
                return f"the {what} `{name}` changed: {_node_change(node, new_nodes[name])}"
        for name, node in new_nodes.items():
            if name not in old_nodes:
                return f"the spec has a new {what} `{name}` ({node[1]})"
        if [n[0] for n in old[key]] != [n[0] for n in new[key]]:
            return f"the {what}s are connected in a different order"
    old_train, new_train = old["train"] or {}, new["train"] or {}
    for key in dict.fromkeys([*old_train, *new_train]):
        if old_train.get(key) != new_train.get(key):
            return (f"the train setting `{key}` changed from {_show(old_train.get(key))} "
                    f"to {_show(new_train.get(key))}")
    return None


def _pairs(params: list) -> list:
    return [(name, tuple(shape)) for name, shape in params]


def _node_change(old: list, new: list) -> str:
    labels = ("name", "op", "inputs", "arguments", "shape", "dtype")
    for label, before, after in zip(labels, old, new):
        if before != after:
            return f"its {label} was {_show(before)}, now {_show(after)}"
    return "it differs"


def _show(value) -> str:
    return "unset" if value is None else json.dumps(value)


# ---------------------------------------------------------------- the directory


class RunDir:
    """A run directory on disk; every write goes through `write_atomic`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return self.file(name).is_file()

    def is_run(self) -> bool:
        return self.exists(CONFIG)

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunDirError(f"{self.path}: is a file, not a directory",
                              "choose another --out") from None
        except OSError as error:
            raise RunDirError(f"{self.path}: cannot create the run directory "
                              f"({error.strerror or error})") from None
        self.lock()
        self.remove_partials()

    def lock(self) -> None:
        """Hold the run for this process until `release_runs()` (or its exit): a second
        `train` or `--resume` of the directory from another process is refused instead of
        training it twice over. The lock is flock() on the directory itself, so no file is
        added to it and a killed process lets go at once."""
        import fcntl

        key = str(self.path.resolve())
        if key in _HELD:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as error:
            raise RunDirError(f"{self.path}: cannot open the run directory "
                              f"({error.strerror or error})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise RunDirError(f"run {self.path} is in use by process {owner}",
                              "wait for it to finish, or stop it first") from None
        _HELD[key] = fd

    def remove_partials(self) -> None:
        """Drop writes that a killed run left unfinished (the real files are intact)."""
        for partial in self.path.glob(".*.partial"):
            partial.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the files a run writes (and nothing else), for --force."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.file(TENSORBOARD), ignore_errors=True)
        self.remove_partials()

    def read_config(self) -> dict:
        path = self.file(CONFIG)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: is not an nnspec run directory (no {CONFIG})",
                              "pass the --out directory of an earlier `nnspec train`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunDirError(f"{path}: cannot be read ({error})") from None
        except RecursionError:  # arrays nested thousands deep: no config of ours
            raise RunDirError(f"{path}: is not the config of an nnspec run") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise RunDirError(f"{path}: is not the config of an nnspec run")
        return config

    def write_config(self, config: dict) -> None:
        write_json(self.file(CONFIG), {"format": FORMAT, **config})

    def write_weights(self, name: str, weights: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str]) -> None:
        write_safetensors(self.file(name), weights, {"format": "pt", **metadata})

    def write_checkpoint(self, weights: Mapping[str, np.ndarray],
                         optimizer: Mapping[str, np.ndarray],
                         schedule: Mapping[str, np.ndarray] | None, state: dict) -> None:
        """The resume file: all arrays under prefixes, the rest as JSON metadata."""
        tensors = {_MODEL + k: v for k, v in weights.items()}
        tensors.update({_OPTIM + k: v for k, v in optimizer.items()})
        tensors.update({_SCHEDULE + k: v for k, v in (schedule or {}).items()})
        write_safetensors(self.file(RESUME), tensors, {"nnspec": json.dumps(state)})

    def read_checkpoint(self):
        """(weights, optimizer state, schedule state, training state) from the resume file."""
        tensors, metadata = read_safetensors(self.file(RESUME))
        try:
            state = json.loads(metadata["nnspec"])
        except (KeyError, json.JSONDecodeError, RecursionError):
            raise RunDirError(f"{self.file(RESUME)}: holds no nnspec training state") from None
        parts: tuple[dict, dict, dict] = ({}, {}, {})
        for name, array in tensors.items():
            for prefix, part in zip((_MODEL, _OPTIM, _SCHEDULE), parts):
                if name.startswith(prefix):
                    part[name[len(prefix):]] = array
        check_weights(self.file(RESUME), parts[0])
        return (*parts, state)



WEIGHT_LIMIT = 1e15  # far beyond any trained weight; a flipped exponent bit lands past it


def check_weights(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Refuse weights no training leaves behind (NaN, infinities, absurd magnitudes): they
    come from a damaged file, and would otherwise give garbage losses and classes silently."""
    for name, array in tensors.items():
        if array.dtype.kind != "f" or not array.size:
            continue
        finite = np.isfinite(array)
        if not finite.all():
            bad = array.size - int(finite.sum())
            raise RunDirError(f"{path}: the weight `{name}` holds {bad:,} NaN or infinite "
                              f"value{'s' if bad != 1 else ''} (of {array.size:,})",
                              _DAMAGED)
        largest = float(np.abs(array).max())
        if largest > WEIGHT_LIMIT:
            raise RunDirError(f"{path}: the weight `{name}` holds {largest:.3g}, beyond any "
                              f"trained weight (the limit is {WEIGHT_LIMIT:g})", _DAMAGED)


_DAMAGED = ("the file is damaged, or was saved by a run that diverged; use another "
            "checkpoint (best.safetensors, last.safetensors) or train again")


def load_weights(model, path: Path) -> tuple[Path, dict[str, str]]:
    """Load a weights file, or a run directory's best (else last) weights, into `model`.

    Returns the file used and its metadata. Names and shapes must match the model exactly.
    """
    if path.is_dir():
        found = [path / name for name in (BEST, LAST) if (path / name).is_file()]
        if not found:
            raise RunDirError(f"{path}: holds no {BEST} or {LAST}",
                              "pass a .safetensors file or a run directory of `nnspec train`")
        path = found[0]
    tensors, metadata = read_safetensors(path)
    check_weights(path, tensors)
    try:
        model.load_state_dict(tensors)
    except ValueError as error:
        raise RunDirError(f"{path}: {error}",
                          "these weights come from another spec (or other --set values)"
                          ) from None
    return path, metadata


def claim(out: Path | None, default_out: Path, spec_hash: str, force: bool
          ) -> tuple[RunDir, str | None]:
    """The run directory for a new run.

    An explicit --out that already holds a run is an error (resume it, or --force to start
    over); a directory with other files in it is an error unless --force. Without --out, a
    busy default (runs/<spec stem>) moves the new run to the first free runs/<stem>-2, -3...
    """
    if out is None:
        candidate, number = default_out, 1
        while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
            number += 1
            candidate = default_out.with_name(f"{default_out.name}-{number}")
        note = None
        if candidate != default_out:
            note = (f"{default_out} is taken, so this run goes to {candidate} "
                    f"(to continue the earlier run: nnspec train --resume {default_out})")
        run = RunDir(candidate)
        run.create()
        return run, note
    run = RunDir(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: is a file, not a directory", "choose another --out")
    if run.is_run() and not force:
        try:
            config = run.read_config()
        except RunDirError:
            config = {}
        if config.get("spec_hash") == spec_hash:
            raise RunDirError(f"{out} already holds a run of this spec",
                              f"continue it with `nnspec train --resume {out}`, or start it "
                              "over with --force")
        model = config.get("model", "another model")
        raise RunDirError(f"{out} holds a run of another model (`{model}` from "
                          f"{config.get('spec', 'an unknown spec')})",
                          "choose another --out, or --force to replace that run")
    if out.is_dir() and any(out.iterdir()) and not run.is_run() and not force:
        raise RunDirError(f"{out} is not empty and is not an nnspec run directory",
                          "choose a new or empty directory, or --force to write into it")
    run.create()
    if force:
        run.clear()
    return run, None


def release_runs() -> None:
    """Let go of every run this process holds."""
    while _HELD:
        os.close(_HELD.popitem()[1])


def _lock_owner(fd: int) -> str:
    """The process holding the flock on `fd`'s file, from /proc/locks (Linux)."""
    inode = os.fstat(fd).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == \
                str(inode):
            return fields[4]
    return "another process"

