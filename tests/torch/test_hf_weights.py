"""Hugging Face checkpoints in and out through a declared layout (specs/*.layout).

The references are `transformers`' GPT2LMHeadModel and BertModel built from their config
classes with random weights (nothing is downloaded), saved with `save_pretrained` as
safetensors, imported with `nnspec import-weights --layout`, run by the NumPy interpreter and
the generated torch module, and exported back with `nnspec export-weights`: the reference
loads the export with `strict=True` and gives the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.torch.runtime import load_generated, load_numpy_state
from nnspec.cli import main
from nnspec.spec import load
from nnspec.training.rundir import read_safetensors

pytestmark = pytest.mark.torch
SPECS = Path(__file__).resolve().parents[2] / "specs"


def nnspec_cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def assert_agree(got: np.ndarray, want: np.ndarray) -> None:
    """Within 1e-4 of the output's scale."""
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())


def round_trip(tmp_path, reference, spec_name, overrides, inputs, reference_output):
    """Save, import, compare both backends, export, reload strictly, compare again."""
    reference.eval()
    reference.save_pretrained(tmp_path / "ref", safe_serialization=True)
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    spec_file, layout = SPECS / f"{spec_name}.nn", SPECS / f"{spec_name}.layout"
    imported = tmp_path / "imported.safetensors"
    nnspec_cli("import-weights", spec_file, tmp_path / "ref" / "model.safetensors",
               "--layout", layout, "-o", imported, *sets)
    with torch.no_grad():
        want = reference_output(reference, *inputs).numpy()

    spec = load(spec_file, overrides=overrides)
    arrays, _ = read_safetensors(imported)
    interpreter = NumpyModel(spec.graph)
    interpreter.load_state_dict(arrays)
    feeds = tuple(t.numpy() for t in inputs)
    assert_agree(interpreter.forward(feeds if len(feeds) > 1 else feeds[0]), want)

    _, model_class = load_generated(spec)
    generated = model_class().eval()
    load_numpy_state(generated, spec.graph, arrays)  # a tied weight follows its owner
    with torch.no_grad():
        assert_agree(generated(*inputs).numpy(), want)

    exported = tmp_path / "exported.safetensors"
    nnspec_cli("export-weights", spec_file, imported, "--layout", layout, "-o", exported, *sets)
    fresh = type(reference)(reference.config).eval()
    back, _ = read_safetensors(exported)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    with torch.no_grad():
        assert_agree(reference_output(fresh, *inputs).numpy(), want)


def test_gpt2_weights_import_run_and_export(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_positions=16, n_embd=32, n_layer=2,
                                     n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    reference = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    round_trip(tmp_path, reference, "gpt2_small",
               {"vocab": 96, "ctx": 16, "d": 32, "layers": 2, "heads": 4}, (tokens,),
               lambda model, t: model(input_ids=t).logits)


def test_bert_with_a_padding_mask_import_run_and_export(tmp_path):
    """BertModel's attention_mask (1: a token, 0: padding) hides the padded keys in every
    layer; the two samples are padded differently."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128,
                                     max_position_embeddings=24)
    reference = transformers.BertModel(config)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 80, (2, 12), generator=gen)
    segments = torch.randint(0, 2, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[0, 8:], mask[1, 5:] = 0, 0

    def pooled(model, t, m, s):
        return model(input_ids=t, attention_mask=m, token_type_ids=s).pooler_output

    with torch.no_grad():  # the mask matters: without it the output is another
        unmasked = pooled(reference.eval(), tokens, torch.ones_like(mask), segments)
        assert not torch.allclose(unmasked, pooled(reference, tokens, mask, segments),
                                  atol=1e-3)
    round_trip(tmp_path, reference, "bert_base",
               {"vocab": 80, "max_len": 24, "seq": 12, "d": 32, "layers": 2, "heads": 4},
               (tokens, mask, segments), pooled)


@pytest.mark.slow
def test_gpt2_small_at_full_size_through_torch(tmp_path):
    """specs/gpt2_small.nn as written (124M parameters): import, generated module, export."""
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    reference.save_pretrained(tmp_path / "ref", safe_serialization=True)
    spec_file, layout = SPECS / "gpt2_small.nn", SPECS / "gpt2_small.layout"
    imported = tmp_path / "imported.safetensors"
    nnspec_cli("import-weights", spec_file, tmp_path / "ref" / "model.safetensors",
               "--layout", layout, "-o", imported)
    spec = load(spec_file)
    arrays, _ = read_safetensors(imported)
    _, model_class = load_generated(spec)
    generated = model_class().eval()
    load_numpy_state(generated, spec.graph, arrays)
    tokens = torch.randint(0, 50257, (1, 1024), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(input_ids=tokens).logits.numpy()
        assert_agree(generated(tokens).numpy(), want)
    del generated
    exported = tmp_path / "exported.safetensors"
    nnspec_cli("export-weights", spec_file, imported, "--layout", layout, "-o", exported)
    back, _ = read_safetensors(exported)
    assert {k: v.shape for k, v in back.items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_grouped_query_attention_packed_into_one_tensor_is_cut_into_unequal_parts(tmp_path):
    """LlamaForCausalLM with 4 query heads and 2 key/value heads, its q/k/v projections
    packed into one `qkv_proj` tensor as Phi-3's checkpoints are ([16 + 8 + 8, 16]): a layout
    rule with three spec names on the left cuts it into the spec's q_proj, k_proj, v_proj
    (of unequal sizes) on import, and packs them again on export."""
    from safetensors.numpy import save_file

    overrides = {"vocab": 50, "ctx": 7, "d": 16, "layers": 2, "heads": 4, "kv_heads": 2,
                 "ff": 24, "eps": 1e-5, "theta": 500}
    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0,
        max_position_embeddings=7, tie_word_embeddings=False, attention_bias=False)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    packed = {}
    for name, array in state.items():
        if ".self_attn.q_proj." in name:
            stem = name.replace(".q_proj.", ".{}.")
            packed[stem.format("qkv_proj")] = np.concatenate(
                [state[stem.format(p)] for p in ("q_proj", "k_proj", "v_proj")])
        elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
            packed[name] = array
    assert packed["model.layers.0.self_attn.qkv_proj.weight"].shape == (32, 16)
    save_file(packed, str(tmp_path / "packed.safetensors"))
    layout = tmp_path / "phi3_style.layout"
    layout.write_text("# three spec tensors in one checkpoint tensor, cut at the spec's sizes\n"
                      "{l}.self_attn.q_proj.{p}, {l}.self_attn.k_proj.{p}, "
                      "{l}.self_attn.v_proj.{p} <- {l}.self_attn.qkv_proj.{p}\n")
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    imported = tmp_path / "imported.safetensors"
    nnspec_cli("import-weights", SPECS / "tinyllama.nn", tmp_path / "packed.safetensors",
               "--layout", layout, "-o", imported, *sets)
    arrays, _ = read_safetensors(imported)
    assert arrays["model.layers.1.self_attn.k_proj.weight"].shape == (8, 16)
    np.testing.assert_array_equal(arrays["model.layers.1.self_attn.v_proj.weight"],
                                  state["model.layers.1.self_attn.v_proj.weight"])

    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(tokens).logits.numpy()
    spec = load(SPECS / "tinyllama.nn", overrides=overrides)
    interpreter = NumpyModel(spec.graph)
    interpreter.load_state_dict(arrays)
    assert_agree(interpreter.forward(tokens.numpy()), want)
    _, model_class = load_generated(spec)
    generated = model_class().eval()
    load_numpy_state(generated, spec.graph, arrays)
    with torch.no_grad():
        assert_agree(generated(tokens).numpy(), want)

    exported = tmp_path / "exported.safetensors"
    nnspec_cli("export-weights", SPECS / "tinyllama.nn", imported, "--layout", layout,
               "-o", exported, *sets)
    back, _ = read_safetensors(exported)
    assert back.keys() == packed.keys()
    for name, array in packed.items():
        np.testing.assert_array_equal(back[name], array, err_msg=name)
