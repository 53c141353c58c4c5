"""ONNX export of a spec's model: the generated PyTorch module, with nnspec's weights,
through `torch.onnx.export` (the torch.export-based exporter), checked by `onnx.checker`.

The batch dim, and every symbolic dim of the spec (`[T, 16]`), stay dynamic in the file.
The model is exported in eval mode and gives what `nnspec predict` gives: a classifier whose
softmax nnspec fuses into the loss for training still ends in its softmax here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

import numpy as np
import torch

from nnspec.backends.torch.runtime import load_generated, load_numpy_state
from nnspec.outputs import STDOUT, staged

EXAMPLE_BATCH = 2  # torch.export treats sizes 0 and 1 as constants; 2 stays symbolic
EXAMPLE_DIM = 4  # the size given to a symbolic dim while tracing


class ExportError(Exception):
    """The exporter or the ONNX checker refused the model (a message for the user)."""


def example_inputs(graph) -> tuple[tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """Inputs to trace with, and which of their dims are dynamic (batch and symbols)."""
    tensors, dynamic = [], []
    named: dict[str, torch.export.Dim] = {}  # one per name: the ONNX axes take these names
    for name in graph.inputs:
        t = graph.node(name).type
        shape = [EXAMPLE_BATCH] if t.batched else []
        shape += [d if isinstance(d, int) else EXAMPLE_DIM for d in t.shape]
        tensors.append(torch.zeros(shape, dtype=torch.long) if t.dtype == "int64"
                       else torch.zeros(shape))
        first = 1 if t.batched else 0
        dims = {first + i: named.setdefault(d, torch.export.Dim(d))
                for i, d in enumerate(t.shape) if not isinstance(d, int)}
        if t.batched:
            dims[0] = named.setdefault("batch", torch.export.Dim("batch"))
        dynamic.append(dims)
    return tuple(tensors), tuple(dynamic)


def export_onnx(spec, out_path, weights: dict[str, np.ndarray]):
    """Write the model of `spec` with `weights` (nnspec's names) to `out_path` (a file, `-` or
    a device, through nnspec.outputs) as ONNX, after `onnx.checker.check_model` accepted it.
    The ONNX outputs are named like the model's (`output` for one made-up name; `recon`,
    `mu`, `logvar` for a model ending in those). Returns how to name the output. Raises
    ExportError, or OutputError for the path."""
    import onnx

    _, model_class = load_generated(spec)
    net = model_class()
    load_numpy_state(net, spec.graph, weights)
    net.eval()
    inputs, dynamic = example_inputs(spec.graph)
    chatter = io.StringIO()
    with staged(out_path, make_parents=True) as tmp:
        try:
            _forget_rnn_kernels()
            with _quiet(), contextlib.redirect_stdout(chatter), \
                    contextlib.redirect_stderr(chatter):
                torch.onnx.export(net, inputs, str(tmp), input_names=list(spec.graph.inputs),
                                  output_names=list(spec.graph.output_names), dynamic_shapes=dynamic, dynamo=True,
                                  external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
            _check_dims_stayed_dynamic(onnx.load(str(tmp)), spec.graph)
        except (OSError, ExportError):
            raise  # the disk (nnspec.outputs explains it), or a file refused above
        except Exception as error:  # the exporter's many error types all mean "cannot export"
            text = str(error).strip()
            first = text.splitlines()[0] if text else type(error).__name__
            raise ExportError(f"torch.onnx could not export {spec.graph.name}: {first}"
                              ) from error
    return "standard output" if os.fspath(out_path) == STDOUT else out_path


def _forget_rnn_kernels():
    """torch.onnx exports an LSTM or GRU over a dynamic sequence length by swapping in a
    while-loop kernel for the export (torch.export._patches); it edits the op's kernel table
    without clearing the op's dispatch cache, so from the second export in a process the
    cached kernel of the first trace wins and the length is fixed at the tracing size
    (`_check_dims_stayed_dynamic` caught it). Clearing the caches makes every export see
    the swap."""
    for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        cache = getattr(op, "_dispatch_cache", None)
        if cache is not None:
            cache.clear()


def _check_dims_stayed_dynamic(model, graph) -> None:
    """The exporter may fix a dim the spec leaves symbolic at its tracing size without a word
    (an Elman `rnn` over `[T, F]`: torch 2.13 has no while-loop form for it); such a file
    would refuse every other size, so it is refused here instead."""
    for value in model.graph.input:
        declared = graph.node(value.name).type
        symbols = (["batch"] if declared.batched else []) + [
            None if isinstance(d, int) else str(d) for d in declared.shape]
        for symbol, dim in zip(symbols, value.type.tensor_type.shape.dim):
            if symbol is not None and not dim.dim_param:
                raise ExportError(
                    f"torch.onnx fixed the dim `{symbol}` of input `{value.name}` at "
                    f"{dim.dim_value}, the size it traced with, so the file would take no "
                    f"other size; give `{symbol}` a fixed size in the spec to export it "
                    f"(torch cannot keep an Elman `rnn`'s length dynamic, for one)")


@contextlib.contextmanager
def _quiet():
    """The exporter warns about things that do not concern the user (torchvision missing,
    deprecations inside torch); keep the command's output to what it did."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
