"""Generated classes parameterised like the spec: a block used at several sizes is one class
whose sizes are its arguments, a `forward` reads them through `self`, and the model takes a
config of its hyperparameters."""

from __future__ import annotations

import types

import numpy as np
import pytest

from nnspec.backends.torch import generate
from nnspec.spec import load_text

torch = pytest.importorskip("torch")

SQUEEZE_EXCITE = """
block SE(r) {
  input x: [C, H, W]
  s = x -> global_avgpool -> dense(C / r) -> relu -> dense(C) -> sigmoid -> reshape(C, 1, 1)
  x * s
}
model Net(classes = 10) {
  input image: [3, 8, 8]
  image -> conv2d(16, 3, padding = 1) -> SE(4) -> conv2d(32, 3, padding = 1) -> SE(4)
        -> global_avgpool -> dense(classes)
}
"""


def _module(code: str) -> types.ModuleType:
    module = types.ModuleType("generated")
    exec(compile(code, "<generated>", "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - code under test
    return module


def _run_like_the_interpreter(spec) -> None:
    from nnspec.backends.numpy.model import NumpyModel

    graph = spec.graph
    reference = NumpyModel(graph, seed=0)
    model = getattr(_module(generate(spec)), graph.name)()
    model.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in reference.state_dict().items()}, strict=False)
    model.eval()
    shape = [2, *graph.node(graph.inputs[0]).type.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = reference.forward(x)
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), expected,
                               rtol=1e-4, atol=1e-5)


def test_a_reshape_by_an_input_dim_in_a_shared_class_runs():
    """Issue 10 bug 1: the shared class's forward used a constructor argument as a name."""
    spec = load_text(SQUEEZE_EXCITE, "se.nn")
    code = generate(spec)
    assert code.count("class SE(") == 1
    _run_like_the_interpreter(spec)


# Each spec's generated file, instantiated with other hyperparameters through its config,
# must be the model nnspec builds with those values (`--set`): same weights, same outputs.
OTHER_SIZES = {
    "gpt2_small": {"layers": 3, "d": 48, "vocab": 50, "ctx": 8, "heads": 6},
    "tiny_gpt": {"layers": 3, "d": 32, "vocab": 20, "ctx": 8, "heads": 2},
    "bert_base": {"layers": 1, "d": 32, "vocab": 40, "seq": 8, "max_len": 16, "heads": 2},
    "digits_cnn": {"classes": 7},
    "resnet18": {"classes": 5},
}


def _weights_and_inputs(spec):
    from nnspec.backends.numpy.model import NumpyModel

    graph = spec.graph
    reference = NumpyModel(graph, seed=0)
    rng = np.random.default_rng(0)
    arrays = []
    for name in graph.inputs:
        t = graph.node(name).type
        shape = [2, *(d if isinstance(d, int) else 5 for d in t.shape)]
        arrays.append(rng.integers(0, 2, shape) if t.dtype == "int64"
                      else rng.standard_normal(shape).astype(np.float32))
    expected = reference.forward(tuple(arrays) if len(arrays) > 1 else arrays[0])
    return reference.state_dict(), arrays, expected


@pytest.mark.parametrize("stem", sorted(OTHER_SIZES))
def test_the_config_gives_the_model_built_with_other_hyperparameters(stem):
    from nnspec.spec import load

    path = f"specs/{stem}.nn"
    other = OTHER_SIZES[stem]
    module = _module(generate(load(path)))
    model_class = getattr(module, load(path).graph.name)
    config = getattr(module, f"{model_class.__name__}Config")(**other)
    model = model_class(config)
    resized = load(path, overrides=other)
    weights, arrays, expected = _weights_and_inputs(resized)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=False)
    assert not unexpected
    assert set(missing) <= {k for k in model.state_dict() if k not in weights}
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(int(np.prod(p.spec.shape)) for p in resized.graph.params.values()
                        if p.spec.trainable)
    model.eval()
    out = model(*(torch.from_numpy(a) for a in arrays))
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_one_class_per_block_with_the_spec_parameters_as_arguments():
    from nnspec.spec import load

    code = generate(load("specs/gpt2_small.nn"))
    assert code.count("class Block(") == 1
    # the causal mask's length is not a parameter of the block: it comes first, as a number
    # no parameter gives (here the model's ctx)
    assert "def __init__(self, steps, d, heads):" in code
    assert "nn.Linear(d, 4 * d)" in code
    assert "[Block(config.ctx, config.d, config.heads) for _ in range(config.layers)]" in code
    for literal in ("768", "3072", "50257"):
        assert literal not in code.split("class GPT2SmallConfig")[0].split("class Block(")[1]


def test_the_causal_mask_is_a_buffer_built_once_not_saved():
    from nnspec.spec import load

    module = _module(generate(load("specs/tiny_gpt.nn", overrides={"layers": 2, "d": 16,
                                                                   "heads": 2, "ctx": 8})))
    model = module.TinyGPT()
    assert "causal_mask(" not in generate(load("specs/tiny_gpt.nn"))
    masks = [b for n, b in model.named_buffers() if n.endswith("causal_mask")]
    assert len(masks) == 2 and all(m.shape == (8, 8) for m in masks)
    assert not any("causal_mask" in k for k in model.state_dict())
    model.eval()
    tokens = torch.randint(0, 28, (2, 8))
    out = model(tokens)
    # causal: the first five outputs do not depend on the last three tokens
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 28
    torch.testing.assert_close(model(changed)[:, :5], out[:, :5])


def test_onnx_names_the_batch_axis_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.backends.torch.export import export_onnx
    from nnspec.spec import load

    spec = load("specs/tiny_gpt.nn", overrides={"layers": 1, "d": 16, "heads": 2, "ctx": 8})
    export_onnx(spec, tmp_path / "m.onnx", NumpyModel(spec.graph, seed=0).state_dict())
    graph = onnx.load(tmp_path / "m.onnx").graph
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_greedy_generation_gives_the_interpreters_tokens():
    """A causal model's `generate` at temperature 0 picks, token by token, what the
    interpreter's scores pick over the same sliding context."""
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.spec import load

    spec = load("specs/tiny_gpt.nn", overrides={"layers": 2, "d": 16, "heads": 2, "ctx": 8})
    reference = NumpyModel(spec.graph, seed=3)
    model = _module(generate(spec)).TinyGPT()
    model.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in reference.state_dict().items()}, strict=False)
    model.eval()
    prompt = np.random.default_rng(0).integers(0, 28, (2, 8))
    tokens = prompt
    for _ in range(6):
        scores = reference.forward(tokens[:, -8:])
        tokens = np.concatenate([tokens, scores[:, -1].argmax(-1)[:, None]], axis=1)
    got = model.generate(torch.from_numpy(prompt), 6, temperature=0)
    np.testing.assert_array_equal(got.numpy(), tokens)
    sampled = [model.generate(torch.from_numpy(prompt), 6, temperature=0.8, top_k=3,
                              generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    torch.testing.assert_close(sampled[0], sampled[1])  # a seeded generator repeats
    assert sampled[0].shape == (2, 14) and int(sampled[0].max()) < 28


def test_only_language_models_get_generate():
    from nnspec.spec import load

    assert "def generate(" in generate(load("specs/char_lstm_lm.nn"))
    assert "def generate(" not in generate(load("specs/digits_cnn.nn"))


FLATTENED = """
block Stem(out, k = 3) {
  input x: [C, H, W]
  x -> conv2d(out, k, padding = 1) -> batchnorm -> relu
}
model Net(width = 8, size = 32, classes = 10) {
  input image: [3, size, size]
  image -> Stem(width) -> maxpool(2) -> maxpool(2) -> flatten -> dense(classes)
}
"""


@pytest.mark.parametrize("other", [{"width": 16}, {"size": 64, "width": 3},
                                   {"size": 16, "classes": 4}])
def test_a_flattened_width_follows_the_hyperparameters_it_is_made_of(other):
    """The spec never writes the dense layer's input width (width * (size / 4)^2): the
    config still gives a model that runs with other sizes, as the interpreter builds it."""
    spec = load_text(FLATTENED)
    code = generate(spec)
    assert "nn.Linear(config.width * config.size ** 2 // 16, config.classes)" in code
    module = _module(code)
    model = module.Net(module.NetConfig(**other))
    resized = load_text(FLATTENED, overrides=other)
    assert sum(p.numel() for p in model.parameters()) == sum(
        int(np.prod(p.spec.shape)) for p in resized.graph.params.values() if p.spec.trainable)
    size = other.get("size", 32)
    assert model(torch.zeros(2, 3, size, size)).shape == (2, other.get("classes", 10))
