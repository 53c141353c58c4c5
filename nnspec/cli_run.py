"""`nnspec predict` and `nnspec eval`: trained weights on new samples or a data set."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nnspec.cli_common import (
    OUTPUT,
    SPEC,
    fail,
    fail_plain,
    fits_or_exit,
    load_trained,
    write_or_exit,
    wrote,
)
from nnspec.diagnostics import SpecError


@click.command()
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
    from nnspec.training.evaluation import EVAL_CHUNK
    from nnspec.training.loaders import DataError

    spec, net, metadata = load_trained(file, model, overrides, weights)
    data = spec.train.data if spec.train else None
    target = data.args.get("target", "y") if data is not None and data.name == "csv" else None
    try:
        x = load_inputs(inputs, drop_column=target, inputs=spec.graph.inputs)
    except DataError as err:
        fail_plain(err.message, err.hint)
    try:
        x = fit_inputs(net, x, None, what=f"the samples in {inputs}")
    except SpecError as err:
        fail(err.diagnostics)
    fits_or_exit(spec, "predicting with", 1, min(len(x), EVAL_CHUNK))
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
        where = write_or_exit(output, buffer.getvalue())
        wrote(f"{len(y)} predictions of shape {list(y.shape[1:])} to {where}", where)
        return
    from nnspec.ir.ops import CLASS_INDEX_LOSSES, class_dim

    classifier = spec.train is not None and spec.train.loss.name in CLASS_INDEX_LOSSES
    names = _class_names(metadata, weights)
    if not classifier:
        for row in y:
            click.echo(" ".join(f"{v:.6g}" for v in row.ravel()))
        return
    labels = [name.encode("unicode_escape").decode() for name in names or []]
    glue = "" if labels and all(len(name) == 1 for name in names) else " "  # characters
    for row in y:
        ids = np.atleast_1d(row.argmax(axis=class_dim(row.ndim))).ravel()  # pixels row by row
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
        where = write_or_exit(output, buffer.getvalue())
        wrote(f"{len(outputs)} outputs ({', '.join(outputs)}) as .npz to {where}", where)
        return
    stem = output.removesuffix(".npy")
    for name, y in outputs.items():
        buffer = io.BytesIO()
        np.save(buffer, y)
        where = write_or_exit(f"{stem}.{name}.npy", buffer.getvalue())
        wrote(f"{len(y)} `{name}` predictions of shape {list(y.shape[1:])} to {where}", where)


def _class_names(metadata: dict, weights: Path) -> list[str] | None:
    """The weights' `class_names` metadata (a JSON list of strings), or None with a warning
    when it is something else (a hand-edited or foreign file)."""
    text = metadata.get("class_names")
    if not text:
        return None
    try:
        names = json.loads(text)
    except (ValueError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        click.echo(f"warning: {weights}: the class_names metadata is not a JSON list of "
                   "strings; printing class numbers", err=True)
        return None
    return names


@click.command("eval")
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

    spec, net, _ = load_trained(file, model, overrides, weights)
    if spec.train is None:
        fail_plain(f"{file}: has no train section for `{spec.name}`, so no loss or metrics",
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
        fail_plain(err.message, err.hint)
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
    width = max(map(len, scores))
    for key, value in scores.items():
        click.echo(f"  {key:<{width}}  {value:.4f}")


