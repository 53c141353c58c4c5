"""`nnspec export --format onnx`: the generated module with nnspec's weights through
torch.onnx. The file passes onnx.checker, and onnxruntime gives the NumPy interpreter's
outputs, with the batch (and any symbolic dim) left dynamic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnspec.backends.numpy.model import NumpyModel
from nnspec.cli import main
from nnspec.spec import load, load_text

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from nnspec.backends.torch.export import ExportError, export_onnx

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]


def _inputs(graph, batch: int, steps: int, rng) -> list[np.ndarray]:
    arrays = []
    for name in graph.inputs:
        t = graph.node(name).type
        shape = (batch, *(d if isinstance(d, int) else steps for d in t.shape))
        arrays.append(rng.integers(0, 20, shape) if t.dtype == "int64"
                      else rng.standard_normal(shape).astype(np.float32))
    return arrays


def _agrees_with_the_interpreter(spec, path: Path, reference: NumpyModel,
                                 shapes=((2, 4), (5, 4))) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(spec.graph.inputs)
    rng = np.random.default_rng(0)
    for batch, steps in shapes:
        arrays = _inputs(spec.graph, batch, steps, rng)
        got = session.run(None, dict(zip(spec.graph.inputs, arrays)))[0]
        expected = reference.forward(tuple(arrays) if len(arrays) > 1 else arrays[0])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "recall_lstm", "tiny_gpt"])
def test_exported_specs_give_the_interpreters_outputs(name, tmp_path):
    spec = load(ROOT / "specs" / f"{name}.nn")
    reference = NumpyModel.from_spec(spec, seed=3)
    path = export_onnx(spec, tmp_path / f"{name}.onnx", reference.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]  # no partial left
    _agrees_with_the_interpreter(spec, path, reference)


def test_a_symbolic_dim_stays_dynamic(tmp_path):
    text = """
model Tagger {
  input seq: [T, 6]
  seq -> gru(8, bidirectional = true) -> layernorm -> dense(3) -> log_softmax
}
"""
    spec = load_text(text, "tagger.nn")
    reference = NumpyModel.from_spec(spec, seed=0)
    path = export_onnx(spec, tmp_path / "tagger.onnx", reference.state_dict())
    _agrees_with_the_interpreter(spec, path, reference, shapes=((2, 4), (3, 9)))


def test_several_outputs_are_exported_by_name(tmp_path):
    spec = load(ROOT / "specs" / "vae.nn")
    reference = NumpyModel.from_spec(spec, seed=1)
    path = export_onnx(spec, tmp_path / "vae.onnx", reference.state_dict())
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["recon", "mu", "logvar"]
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    got = session.run(None, {"x": x})
    expected = reference.outputs(x)  # eval mode: the noise is its mean, zero
    for array, name in zip(got, ["recon", "mu", "logvar"]):
        np.testing.assert_allclose(array, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _cli(*args: str, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def test_cli_exports_trained_weights(tmp_path):
    spec_path = tmp_path / "moons.nn"
    spec_path.write_text((ROOT / "specs" / "moons_swish.nn").read_text())
    trained = _cli("train", str(spec_path), "--epochs", "2", "--out", "run", cwd=tmp_path)
    assert trained.exit_code == 0, trained.output
    done = _cli("export", str(spec_path), "--weights", "run", "-o", "m.onnx", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert "wrote m.onnx" in done.stdout and "checked by onnx.checker" in done.stdout
    spec = load(spec_path)
    reference = NumpyModel.from_spec(spec)
    reference.load(tmp_path / "run" / "best.safetensors")
    _agrees_with_the_interpreter(spec, tmp_path / "m.onnx", reference)
    other = tmp_path / "other.nn"
    other.write_text(spec_path.read_text().replace("width = 32", "width = 33"))
    refused = _cli("export", str(other), "--weights", "run", cwd=tmp_path)
    assert refused.exit_code == 1 and "do not fit this model" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "other.onnx").exists()


RECURRENT_STATES = """
model Recurrent(hidden = 6) {
  input seq: [T, 4]
  input h0: [2, hidden]
  input c0: [2, hidden]
  out, h, c = seq -> lstm(h0, c0, hidden, layers = 2, states = true)
  y = out -> dense(3)
  y, h, c
}
"""

GQA = """
model Grouped(d = 16) {
  input x: [T, d]
  x -> attention(4, kv_heads = 2, causal = true) -> dense(3)
}
"""


def _all_outputs_agree(spec, path: Path, reference: NumpyModel, shapes) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(spec.graph.output_names)
    rng = np.random.default_rng(0)
    for batch, steps in shapes:
        arrays = _inputs(spec.graph, batch, steps, rng)
        got = session.run(None, dict(zip(spec.graph.inputs, arrays)))
        expected = reference.outputs(tuple(arrays) if len(arrays) > 1 else arrays[0])
        for array, name in zip(got, spec.graph.output_names):
            np.testing.assert_allclose(array, expected[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)


def test_a_recurrent_model_with_initial_and_final_states_exports(tmp_path):
    spec = load_text(RECURRENT_STATES, "recurrent.nn")
    reference = NumpyModel.from_spec(spec, seed=2)
    path = export_onnx(spec, tmp_path / "recurrent.onnx", reference.state_dict())
    _all_outputs_agree(spec, path, reference, shapes=((2, 5), (3, 7)))


def test_a_recurrent_model_exported_twice_in_one_process_stays_dynamic(tmp_path):
    """torch swaps in its while-loop LSTM/GRU kernel for each export without clearing the
    op's dispatch cache: the second export in a process fixed T at its tracing size."""
    spec = load_text(RECURRENT_STATES, "recurrent.nn")
    reference = NumpyModel.from_spec(spec, seed=2)
    for name in ("first.onnx", "second.onnx"):
        path = export_onnx(spec, tmp_path / name, reference.state_dict())
        _all_outputs_agree(spec, path, reference, shapes=((2, 5), (3, 7)))


def test_a_length_the_exporter_fixes_is_refused_not_written(tmp_path):
    spec = load_text("model Elman {\n  input seq: [T, 4]\n  seq -> rnn(8) -> dense(3)\n}\n",
                     "elman.nn")
    with pytest.raises(ExportError, match=r"fixed the dim `T` of input `seq` at 4"):
        export_onnx(spec, tmp_path / "elman.onnx", NumpyModel.from_spec(spec).state_dict())
    assert list(tmp_path.iterdir()) == []
    fixed = load_text("model Elman {\n  input seq: [9, 4]\n  seq -> rnn(8) -> dense(3)\n}\n",
                      "elman.nn")
    reference = NumpyModel.from_spec(fixed)
    path = export_onnx(fixed, tmp_path / "elman.onnx", reference.state_dict())
    _agrees_with_the_interpreter(fixed, path, reference)


def test_grouped_query_attention_exports(tmp_path):
    spec = load_text(GQA, "gqa.nn")
    reference = NumpyModel.from_spec(spec, seed=4)
    path = export_onnx(spec, tmp_path / "gqa.onnx", reference.state_dict())
    _all_outputs_agree(spec, path, reference, shapes=((2, 5), (3, 8)))


def test_the_batch_dim_is_named_batch(tmp_path):
    spec = load_text(GQA, "gqa.nn")
    path = export_onnx(spec, tmp_path / "gqa.onnx", NumpyModel.from_spec(spec).state_dict())
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
