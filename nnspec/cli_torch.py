"""`nnspec compile` and `nnspec export`: the generated PyTorch file and ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from nnspec.cli_common import (
    OUTPUT,
    SPEC,
    asked_layer_budget,
    fail,
    fail_plain,
    fits_or_exit,
    load_or_exit,
    load_trained,
    parse_overrides,
    write_or_exit,
    wrote,
)
from nnspec.diagnostics import SpecError


@click.command("compile")
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
    from nnspec.backends.torch.codegen import MAX_GENERATED_LAYERS, generate

    spec = load_or_exit(file, model, parse_overrides(overrides))
    if train_script and spec.train is None:
        fail_plain(f"{file}: has no train section for `{spec.name}`, so no training script",
                    f"add `train {spec.name} {{ data ... loss ... }}`")
    try:
        text = generate(spec, train_script=train_script,
                        max_layers=asked_layer_budget() or MAX_GENERATED_LAYERS)
    except SpecError as err:
        fail(err.diagnostics)
    except ValueError as err:  # a train script for a model it cannot feed
        fail_plain(f"{file}: {err}")
    out = out if out is not None else Path(file).stem + ".py"
    try:
        compile(text, out, "exec")  # the file is valid Python before it is written
    except SyntaxError as err:  # a generator bug, never the user's: say so plainly
        fail_plain(f"the generated code does not parse ({err}); please report this spec")
    where = write_or_exit(out, text.encode("utf-8"))
    if where == "standard output":
        return
    click.echo(f"wrote {out}" + (" (run it with --help for training)" if train_script else ""))


@click.command("export")
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

    from nnspec.outputs import OutputError, check_target

    out = out if out is not None else Path(file).stem + ".onnx"
    try:
        check_target(out)  # before torch is imported: seconds, under load half a minute
    except OutputError as err:
        fail_plain(err.message, err.hint)
    missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        fail_plain(f"export goes through torch.onnx, which needs {' and '.join(missing)}",
                    'pip install "nnspec[onnx]"')
    from nnspec.training.budget import EXPORT_BATCH, EXPORT_PARAM_COPIES

    if weights is None:
        from nnspec.backends.numpy.model import NumpyModel

        spec = load_or_exit(file, model, parse_overrides(overrides))
        fits_or_exit(spec, "exporting", EXPORT_PARAM_COPIES, EXPORT_BATCH)
        state = NumpyModel.from_spec(spec).state_dict()
    else:
        spec, net, _ = load_trained(file, model, overrides, weights, EXPORT_PARAM_COPIES + 1)
        state = net.state_dict()
    from nnspec.backends.torch.export import ExportError, export_onnx

    try:
        written = export_onnx(spec, out, state)
    except ExportError as err:
        fail_plain(str(err))
    except OutputError as err:
        fail_plain(err.message, err.hint)
    source = "initial weights" if weights is None else f"weights of {weights}"
    wrote(f"{written} ({spec.name}, {source}; checked by onnx.checker)", written)

