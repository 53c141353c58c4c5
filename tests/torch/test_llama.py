"""The LLaMA specs: published parameter counts, and a tiny configuration (`--set`) against
transformers' LlamaForCausalLM built from a tiny LlamaConfig (no download): the same
parameters under the same names (after the documented renaming below), and the same logits
from its weights through the generated module and through the NumPy interpreter."""

from __future__ import annotations

import importlib.util
import math
import types
from pathlib import Path

import numpy as np
import pytest

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.torch import generate
from nnspec.spec import load

SPECS = Path(__file__).resolve().parents[2] / "specs"
TINY = {"vocab": 50, "ctx": 7, "d": 16, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 24,
        "eps": 1e-5, "theta": 500}
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="needs transformers (the LLaMA oracle)")


def llama_name(name: str) -> str:
    """nnspec's name of a LlamaForCausalLM key: the same (the specs label their layers
    `model.embed_tokens`, `model.layers`, `model.norm`)."""
    return name


@pytest.mark.parametrize("spec, total", [("tinyllama.nn", 1_100_048_384),
                                         ("llama2_7b.nn", 6_738_415_616)])
def test_the_llama_specs_have_the_published_parameter_counts(spec, total):
    graph = load(SPECS / spec).graph
    assert sum(math.prod(p.spec.shape) for p in graph.params.values()) == total


def tiny_reference(kv_heads: int):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=TINY["vocab"], hidden_size=TINY["d"],
                         intermediate_size=TINY["ff"], num_hidden_layers=TINY["layers"],
                         num_attention_heads=TINY["heads"], num_key_value_heads=kv_heads,
                         rms_norm_eps=TINY["eps"], rope_theta=float(TINY["theta"]),
                         max_position_embeddings=TINY["ctx"], tie_word_embeddings=False,
                         attention_bias=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.torch
@needs_transformers
@pytest.mark.parametrize("spec, kv_heads", [("tinyllama.nn", 2), ("llama2_7b.nn", 4)])
def test_a_tiny_llama_gives_llama_for_causal_lms_logits(spec, kv_heads):
    torch = pytest.importorskip("torch")
    graph = load(SPECS / spec, overrides=TINY | {"kv_heads": kv_heads}).graph
    reference = tiny_reference(kv_heads)
    weights = {llama_name(k): v.detach().numpy().copy()
               for k, v in reference.state_dict().items()}
    ours = {name: p.spec.shape for name, p in graph.params.items()}
    assert ours == {name: tuple(w.shape) for name, w in weights.items()}

    tokens = np.random.default_rng(0).integers(0, TINY["vocab"], (2, TINY["ctx"]))
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens)).logits.numpy()

    module = types.ModuleType("generated")
    code = compile(generate(load(SPECS / spec, overrides=TINY | {"kv_heads": kv_heads})),
                   "<generated>", "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102
    model = getattr(module, graph.name)().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        got = model(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    interpreter = NumpyModel(graph, seed=0)
    interpreter.load_state_dict(weights)
    np.testing.assert_allclose(interpreter.forward(tokens), expected, rtol=1e-4, atol=1e-4)
