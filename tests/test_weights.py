"""Checkpoints in and out: layouts (names, transposes, packed parts, tied aliases), the
import-weights table of differences, pickle refusal, a fresh head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from nnspec.cli import main
from nnspec.weights.layout import LayoutError, from_spec, parse_layout, to_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
TINY = """
model Tiny(classes = 3) {
  input x: [4]
  x -> seq(dense(8), relu) as body -> dense(classes) as fc
}
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_layout_renames_transposes_packs_and_aliases():
    layout = parse_layout("""
        # comment
        blocks.{i}.qkv_weight <- enc.{i}.q.weight, enc.{i}.k.weight,
                                 enc.{i}.v.weight   transpose
        emb.weight <- model.emb.weight | head.weight
        {name} <- model.{name}
        ignore model.mask
    """)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(3))
    emb = rng.standard_normal((5, 2)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    file = {"enc.0.q.weight": q, "enc.0.k.weight": k, "enc.0.v.weight": v,
            "model.emb.weight": emb, "head.weight": emb, "model.blocks.0.bias": bias,
            "model.mask": np.zeros(1, np.float32)}
    shapes = {"blocks.0.qkv_weight": (9, 2), "emb.weight": (5, 2), "blocks.0.bias": (6,)}
    arrays, problems = to_spec(file, shapes, layout)
    assert not problems
    np.testing.assert_array_equal(arrays["blocks.0.qkv_weight"],
                                  np.concatenate([q.T, k.T, v.T]))
    back = from_spec(arrays, layout)
    assert set(back) == set(file) - {"model.mask"}
    for name, array in back.items():
        np.testing.assert_array_equal(array, file[name])


def test_differences_are_listed_one_by_one():
    layout = parse_layout("a.weight <- x.weight transpose")
    _, problems = to_spec({"x.weight": np.zeros((2, 3)), "extra": np.zeros(1)},
                          {"a.weight": (2, 3), "b.bias": (3,)}, layout)
    assert problems.mismatched == [("a.weight", (2, 3), (3, 2), "x.weight")]
    assert problems.missing == [("b.bias", "b.bias")]
    assert problems.unexpected == [("extra", (1,))]


@pytest.mark.parametrize("text, line, words", [
    ("a <- ", 1, "separated by"),
    ("\n\na.{i} <- b.{j}", 3, "`{j}` is not on the left"),
    ("a b <- c", 1, "a rule reads"),
    ("a <- b, c | d", 1, "as many parts"),
    ("ignore", 1, "needs the checkpoint names"),
])
def test_layout_mistakes_name_their_line(text, line, words):
    with pytest.raises(LayoutError) as caught:
        parse_layout(text, "l.layout")
    assert caught.value.line == line and words in caught.value.message


def _tiny_checkpoint(tmp_path, **shapes) -> Path:
    rng = np.random.default_rng(0)
    tensors = {"body.0.weight": (8, 4), "body.0.bias": (8,), "fc.weight": (3, 8),
               "fc.bias": (3,)}
    tensors.update(shapes)
    path = tmp_path / "ckpt.safetensors"
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in tensors.items()
               if s is not None}, str(path))
    return path


def test_import_writes_the_spec_names_and_a_mismatch_is_a_table(tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    good = _tiny_checkpoint(tmp_path)
    out = tmp_path / "w.safetensors"
    result = invoke("import-weights", spec, good, "-o", out)
    assert result.exit_code == 0, result.output
    assert load_file(str(out)).keys() == load_file(str(good)).keys()

    bad = _tiny_checkpoint(tmp_path, **{"fc.weight": (5, 8), "fc.bias": None,
                                        "head.weight": (2, 2)})
    result = invoke("import-weights", spec, bad, "-o", tmp_path / "no.safetensors")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert any(line.split()[:2] == ["shape", "fc.weight"] and "spec [3, 8], file gives [5, 8]"
               in line for line in lines)
    assert any(line.split()[:2] == ["missing", "fc.bias"] for line in lines)
    assert any(line.split()[:3] == ["unexpected", "-", "head.weight"] for line in lines)
    assert not (tmp_path / "no.safetensors").exists()


def test_a_new_head_starts_fresh(tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    ckpt = _tiny_checkpoint(tmp_path)
    out = tmp_path / "w.safetensors"
    result = invoke("import-weights", spec, ckpt, "--set", "classes=10", "--fresh", "fc.*",
                    "-o", out)
    assert result.exit_code == 0, result.output
    got, given = load_file(str(out)), load_file(str(ckpt))
    assert got["fc.weight"].shape == (10, 8)
    np.testing.assert_array_equal(got["body.0.weight"], given["body.0.weight"])


# A protocol-0 pickle whose loading would run `touch <marker>`: written as bytes, never
# made by the pickle module.
def _hostile(marker: Path) -> bytes:
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


@pytest.mark.parametrize("name", ["evil.pt", "evil.bin", "evil.safetensors"])
def test_a_pickle_is_refused_and_nothing_in_it_runs(tmp_path, name):
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    marker = tmp_path / "ran"
    evil = tmp_path / name
    evil.write_bytes(_hostile(marker))
    result = invoke("import-weights", spec, evil, "-o", tmp_path / "w.safetensors")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    if name != "evil.safetensors":
        assert "--allow-pickle" in result.output and "run any code" in result.output
    assert not marker.exists()


@pytest.mark.torch
def test_allow_pickle_still_refuses_code(tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_hostile(marker))
    result = invoke("import-weights", spec, evil, "--allow-pickle", "-o", tmp_path / "w.st")
    assert result.exit_code == 1 and "restricted loader refused" in result.output
    assert not marker.exists()


@pytest.mark.torch
def test_allow_pickle_reads_a_plain_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    spec = tmp_path / "tiny.nn"
    spec.write_text(TINY)
    given = load_file(str(_tiny_checkpoint(tmp_path)))
    path = tmp_path / "plain.pt"
    torch.save({k: torch.from_numpy(v) for k, v in given.items()}, path)
    out = tmp_path / "w.safetensors"
    assert invoke("import-weights", spec, path, "-o", out).exit_code == 1
    result = invoke("import-weights", spec, path, "--allow-pickle", "-o", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_file(str(out))["fc.weight"], given["fc.weight"])


def test_the_example_layouts_read():
    for path in SPECS.glob("*.layout"):
        assert parse_layout(path.read_text(), str(path)).rules


def test_imported_weights_load_into_the_interpreter_buffers_included(tmp_path):
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.spec import load

    spec = tmp_path / "bn.nn"
    spec.write_text("model BN {\n  input x: [4]\n  x -> dense(3) as fc -> batchnorm as bn\n}\n")
    rng = np.random.default_rng(0)
    ckpt = tmp_path / "bn.safetensors"
    save_file({"fc.weight": rng.standard_normal((3, 4)).astype(np.float32),
               "fc.bias": np.zeros(3, np.float32), "bn.weight": np.ones(3, np.float32),
               "bn.bias": np.zeros(3, np.float32), "bn.running_mean": np.zeros(3, np.float32),
               "bn.running_var": np.ones(3, np.float32),
               "bn.num_batches_tracked": np.array(7, np.int64)}, str(ckpt))
    out = tmp_path / "w.safetensors"
    assert invoke("import-weights", spec, ckpt, "-o", out).exit_code == 0
    model = NumpyModel(load(spec).graph)
    model.load(out)  # a 0-d buffer stays 0-d
    assert model.state_dict()["bn.num_batches_tracked"] == 7


# ---- fine-tuning from the command line (tests/torch/test_finetune.py: ResNet-18, torch) ----

TRAINED_TINY = TINY + """
train Tiny {
  data      npz("data.npz")
  loss      cross_entropy
  optimizer adamw(lr = 1e-2)
  epochs    2
  batch     8
}
"""


def _tiny_run(tmp_path, *flags, spec_text=TRAINED_TINY):
    spec = tmp_path / "tiny.nn"
    spec.write_text(spec_text)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((40, 4)).astype(np.float32),
             y=rng.integers(0, 3, 40))
    out = tmp_path / "run"
    return invoke("train", spec, "-o", out, "--force", *flags), out


def test_train_init_and_freeze_from_the_command_line(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    result, run = _tiny_run(tmp_path, "--init", ckpt, "--freeze", "body.*")
    assert result.exit_code == 0, result.output
    assert "init: 4 of 4 tensors" in result.output and "2 parameters frozen" in result.output
    given, after = load_file(str(ckpt)), load_file(str(run / "last.safetensors"))
    for name in ("body.0.weight", "body.0.bias"):  # adamw's decay spares them too
        assert np.array_equal(after[name], given[name]), name
    for name in ("fc.weight", "fc.bias"):
        assert not np.array_equal(after[name], given[name]), name
    import json

    train = json.loads((run / "config.json").read_text())["train"]
    assert train["freeze"] == ["body.*"] and train["init"] == str(ckpt.resolve())


def test_init_from_a_run_directory_with_a_new_head(tmp_path):
    first, run = _tiny_run(tmp_path)
    assert first.exit_code == 0, first.output
    start = tmp_path / "first"
    run.rename(start)
    result, run = _tiny_run(tmp_path, "--init", start, "--fresh", "fc.*", "--set", "classes=5",
                            "--lr", "0")
    assert result.exit_code == 0, result.output
    assert "fresh: fc.weight [5, 8] starts from the initialisation (the file has fc.weight " \
           "[3, 8])" in result.output
    best, after = load_file(str(start / "best.safetensors")), load_file(str(run / "last.safetensors"))
    assert np.array_equal(after["body.0.weight"], best["body.0.weight"])
    assert not np.array_equal(after["fc.weight"], best["fc.weight"])


def test_init_in_the_train_section_is_read_beside_the_spec(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    text = TRAINED_TINY.replace("  batch     8\n", f'  batch 8\n  init "{ckpt.name}"\n'
                                '  freeze "fc.weight"\n')
    result, run = _tiny_run(tmp_path, spec_text=text)
    assert result.exit_code == 0, result.output
    given, after = load_file(str(ckpt)), load_file(str(run / "last.safetensors"))
    assert np.array_equal(after["fc.weight"], given["fc.weight"])
    assert not np.array_equal(after["fc.bias"], given["fc.bias"])


@pytest.mark.parametrize("flags, words", [
    (["--freeze", "bdy.*"], "--freeze 'bdy.*' names no trainable parameter"),
    (["--fresh", "fc.*"], "`fresh` is about the weights of `init`, which is not set"),
])
def test_fine_tuning_mistakes_are_plain_errors(tmp_path, flags, words):
    result, _ = _tiny_run(tmp_path, *flags)
    assert result.exit_code in (1, 2) and words in result.output, result.output
    assert "Traceback" not in result.output


def test_a_checkpoint_that_does_not_fit_stops_the_run_with_the_table(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path, **{"fc.weight": (5, 8)})
    result, run = _tiny_run(tmp_path, "--init", ckpt)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert any(line.split()[:2] == ["shape", "fc.weight"] for line in result.output.splitlines())
    assert not (run / "last.safetensors").exists()


def test_a_pickle_given_to_train_init_is_refused_and_nothing_in_it_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_hostile(marker))
    result, _ = _tiny_run(tmp_path, "--init", evil)
    assert result.exit_code == 1 and "is a pickle" in result.output
    assert "import-weights" in result.output and not marker.exists()


# ---- tying to a layer with a dotted label ---------------------------------------------------

TIED = """
model Tied(vocab = 20, d = 8) {
  input tokens: int[5]
  tokens -> embedding(vocab, d) as model.embed_tokens -> layernorm as model.norm
         -> dense(vocab, bias = false, tie = "%s") as lm_head
}
"""


def test_tie_names_a_dotted_label_by_its_path():
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.spec import load_text

    spec = load_text(TIED % "model.embed_tokens")
    assert "lm_head.weight" not in spec.graph.params  # stored once, under the owner's name
    model = NumpyModel(spec.graph, seed=0)
    tokens = np.random.default_rng(0).integers(0, 20, (2, 5))
    emb = model.params["model.embed_tokens.weight"]
    x = emb[tokens]
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    x = x * model.params["model.norm.weight"] + model.params["model.norm.bias"]
    np.testing.assert_allclose(model.forward(tokens), x @ emb.T, rtol=1e-5, atol=1e-5)


def test_tie_to_a_path_that_is_no_layer_is_a_located_error():
    from nnspec.diagnostics import SpecError
    from nnspec.spec import load_text

    with pytest.raises(SpecError) as caught:
        load_text(TIED % "model.embed_token")
    (error,) = caught.value.diagnostics
    assert error.code == "E171" and "`model.embed_token` has no weight" in error.message
    assert error.span.line == 5


@pytest.mark.torch
def test_the_generated_module_ties_by_path_too():
    torch = pytest.importorskip("torch")
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.backends.torch.runtime import load_generated, load_numpy_state
    from nnspec.spec import load_text

    spec = load_text(TIED % "model.embed_tokens")
    interpreter = NumpyModel(spec.graph, seed=0)
    _, model_class = load_generated(spec)
    net = model_class().eval()
    load_numpy_state(net, spec.graph, interpreter.state_dict())
    assert sum(p.numel() for p in net.parameters()) == 20 * 8 + 2 * 8  # one shared weight
    tokens = np.random.default_rng(0).integers(0, 20, (2, 5))
    with torch.no_grad():
        got = net(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(got, interpreter.forward(tokens), rtol=1e-5, atol=1e-5)


def test_several_spec_names_on_the_left_cut_one_tensor_at_the_spec_sizes():
    layout = parse_layout("q.w, k.w, v.w <- qkv.w\n")
    file = {"qkv.w": np.arange(16, dtype=np.float32).reshape(8, 2)}
    shapes = {"q.w": (4, 2), "k.w": (2, 2), "v.w": (2, 2)}
    arrays, problems = to_spec(file, shapes, layout)
    assert not problems
    assert [arrays[n][0, 0] for n in shapes] == [0, 8, 12]
    np.testing.assert_array_equal(from_spec(arrays, layout)["qkv.w"], file["qkv.w"])
    _, problems = to_spec(file, {"q.w": (4, 2), "k.w": (4, 2), "v.w": (4, 2)}, layout)
    assert [m[0] for m in problems.mismatched] == ["q.w", "k.w", "v.w"]  # 12 rows wanted, 8
    with pytest.raises(LayoutError, match="one name on the right"):
        parse_layout("q.w, k.w <- a.w, b.w\n")
