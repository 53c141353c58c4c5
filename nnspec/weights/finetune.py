"""Fine-tuning: a training run that starts from imported weights.

The train section's `init` (or `nnspec train --init`) names a weights file or a run
directory; `init_layout` maps another program's names to the spec's, as for
`nnspec import-weights`. Parameters matching `fresh` are not looked for in it and keep the
run's own seeded initialisation — a new head of another size on a pretrained backbone —
and each is listed with what the file had under its name. Anything else that does not fit
stops the run before it starts, with the table of differences: a checkpoint is never loaded
in part by accident. Freezing (`freeze`) is the backends' business: see
`TrainConfig.frozen_params`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnspec.ir.graph import Graph
from nnspec.ir.train import TrainConfig, matches_any
from nnspec.training.rundir import RunDirError
from nnspec.weights.checkpoint import CheckpointError, read_checkpoint
from nnspec.weights.layout import Layout, LayoutError, read_layout, to_spec

RUN_WEIGHTS = ("best.safetensors", "last.safetensors")


class InitError(RunDirError):
    """Initial weights that cannot be used (a user situation: message, hint)."""


def weights_file(path: Path) -> Path:
    """A weights file, or the best (else last) weights of a run directory."""
    if path.is_dir():
        found = next((path / n for n in RUN_WEIGHTS if (path / n).is_file()), None)
        if found is None:
            raise InitError(f"{path}: a directory without {' or '.join(RUN_WEIGHTS)}",
                            "init names a weights file or a run directory of `nnspec train`")
        return found
    return path


def initial_weights(graph: Graph, train: TrainConfig, base_dir: Path
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The weights `train.init` gives every parameter not matching `train.fresh`, under the
    spec's names, and one note per fresh parameter. Relative paths are read from base_dir."""
    if train.init is None:
        given = "init_layout" if train.init_layout else "fresh"
        raise InitError(f"`{given}` is about the weights of `init`, which is not set",
                        "add `init \"weights.safetensors\"` to the train section or pass --init")
    source = weights_file(base_dir / train.init)
    layout = Layout()
    if train.init_layout is not None:
        try:
            layout = read_layout(base_dir / train.init_layout)
        except LayoutError as error:
            raise InitError(str(error)) from None
    try:
        tensors = read_checkpoint(source)
    except CheckpointError as error:
        hint = error.hint
        if "pickle" in error.message:
            hint = ("convert it first: nnspec import-weights SPEC FILE --allow-pickle "
                    "-o start.safetensors (docs/weights.md says why pickles are refused)")
        raise InitError(error.message, hint) from None
    for pattern in train.fresh:
        if not any(matches_any(n, (pattern,)) for n in graph.params):
            raise InitError(f"--fresh {pattern!r} names no parameter of `{graph.name}`",
                            "`nnspec summary FILE` lists the parameters")
    shapes = {name: tuple(p.spec.shape) for name, p in graph.params.items()}
    is_fresh = lambda name: matches_any(name, train.fresh)
    arrays, problems = to_spec(tensors, shapes, layout, is_fresh)
    if problems:
        through = f" through {train.init_layout}" if train.init_layout else ""
        raise InitError(f"{source} does not fit {graph.name}{through}:\n{problems.table()}",
                        "fix the spec's names or write a layout (docs/weights.md); "
                        "`fresh \"PATTERN\"` starts a replaced layer afresh")
    notes = [_fresh_note(name, shapes[name], layout, tensors) for name in shapes
             if is_fresh(name)]
    dtypes = {name: p.spec.dtype for name, p in graph.params.items()}
    return {n: np.asarray(a, dtype=dtypes[n]) for n, a in arrays.items()}, notes


def _fresh_note(name: str, shape: tuple, layout: Layout, tensors) -> str:
    _, choices = layout.route(name)
    found = [(n, tensors[n].shape) for names in choices for n in names if n in tensors]
    had = ", ".join(f"{n} {list(s)}" for n, s in found) if found else "nothing under its name"
    return f"fresh: {name} {list(shape)} starts from the initialisation (the file has {had})"


def start_from_init(model, train: TrainConfig, base_dir: Path) -> list[str]:
    """Load `train.init` into a freshly initialised model, fresh parameters kept; the notes
    to show. Raises InitError."""
    arrays, notes = initial_weights(model.graph, train, base_dir)
    state = model.state_dict()
    state.update(arrays)
    model.load_state_dict(state)
    kept = len(arrays)
    frozen = train.frozen_params(model.graph)
    summary = f"init: {kept} of {len(state)} tensors from {train.init}"
    if frozen:
        summary += f"; {len(frozen)} parameters frozen ({', '.join(train.freeze)})"
    return [summary, *notes]
