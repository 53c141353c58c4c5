"""`nnspec sample`: a small character model trained here on `char_lm`, sampled on the
interpreter and through the generated module's `generate`.

Greedy decoding (temperature 0) gives the same text in both backends, also past the
model's context (both crop to the last `ctx` tokens); user mistakes exit 1 with a message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnspec.cli import main
from nnspec.sampling import Vocabulary, choose, language_model
from nnspec.spec import load, load_text

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One token at a time of a tiny model gains nothing from threads, and on a busy
    2-core machine torch's spinning workers make it 20 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

ROOT = Path(__file__).resolve().parents[2]
DATA = "char_lm(chars = 12000, length = 32)"
# a small GPT (learned positions: cropping matters) and a small LSTM, both at ctx 32
MODELS = {
    "gpt": ("specs/tiny_gpt.nn", ("d=32", "layers=1", "ctx=32"), 4),
    "lstm": ("specs/char_lstm_lm.nn", ("d=16", "hidden=32", "ctx=32"), 12),
}


def _sets(overrides) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[str, tuple[str, ...], Path]]:
    """Each model trained for a few epochs (loss well under the unigram ~2.9 nats)."""
    out = {}
    for key, (spec, overrides, epochs) in MODELS.items():
        run = tmp_path_factory.mktemp("runs") / key
        result = CliRunner().invoke(main, ["train", str(ROOT / spec), *_sets(overrides),
                                           "--epochs", str(epochs), "--data", DATA,
                                           "-o", str(run)])
        assert result.exit_code == 0, result.output
        out[key] = (str(ROOT / spec), overrides, run)
    return out


def _sample(trained, key: str, *args: str, code: int = 0) -> str:
    spec, overrides, run = trained[key]
    result = CliRunner().invoke(main, ["sample", spec, *_sets(overrides), "-w", str(run),
                                       *args])
    assert result.exit_code == code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                      SystemExit)
    return result.output


@pytest.mark.parametrize("key", MODELS)
def test_greedy_text_is_the_same_in_both_backends(trained, key):
    prompt = "the cat "
    texts = [_sample(trained, key, "--prompt", prompt, "--tokens", "60", "--temperature", "0",
                     "--backend", backend).rstrip("\n") for backend in ("numpy", "torch")]
    assert texts[0] == texts[1]
    text = texts[0]
    assert text.startswith(prompt) and len(text) == len(prompt) + 60  # past ctx = 32
    assert len(set(text[len(prompt):])) >= 3  # a trained model, not one repeated character


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_long_prompt_is_cropped_to_the_context(trained, backend):
    """The model sees the last 32 tokens: what comes before them changes nothing."""
    tail = "the old man walks by the river. "
    assert len(tail) == 32
    outs = [_sample(trained, "gpt", "--prompt", head + tail, "--tokens", "20",
                    "--temperature", "0", "--backend", backend).rstrip("\n")[len(head):]
            for head in ("", "a dog sings in the garden. ")]
    assert outs[0] == outs[1]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_top_k_one_is_greedy_and_seeds_repeat(trained, backend):
    common = ("--prompt", "she ", "--tokens", "30", "--backend", backend)
    greedy = _sample(trained, "gpt", *common, "--temperature", "0")
    assert _sample(trained, "gpt", *common, "--top-k", "1", "--temperature", "1.5") == greedy
    drawn = [_sample(trained, "gpt", *common, "--temperature", "2", "--seed", str(s))
             for s in (1, 1, 2)]
    assert drawn[0] == drawn[1] and drawn[0] != drawn[2]


def test_the_interpreter_samples_without_importing_torch(trained):
    spec, overrides, run = trained["lstm"]
    code = ("import sys\nfrom nnspec.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n"
            "    print('torch' in sys.modules, done.code)")
    done = subprocess.run([sys.executable, "-c", code, "sample", spec, *_sets(overrides),
                           "-w", str(run), "-p", "the ", "-n", "5"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines()[-1] == "False 0", done.stdout + done.stderr
    assert done.stdout.startswith("the ")


def test_token_ids_in_and_out(trained):
    """Ids continue like the text they encode; char_lm's vocabulary is in the weights."""
    vocabulary = Vocabulary.from_metadata({"class_names": _names(trained)})
    ids = ",".join(str(i) for i in vocabulary.encode("the cat "))
    by_ids = _sample(trained, "lstm", "--prompt-ids", ids, "--tokens", "10",
                     "--temperature", "0")
    by_text = _sample(trained, "lstm", "--prompt", "the cat ", "--tokens", "10",
                      "--temperature", "0")
    assert by_ids == by_text


def _names(trained) -> str:
    from nnspec.training.rundir import read_safetensors

    _, metadata = read_safetensors(trained["lstm"][2] / "best.safetensors")
    return metadata["class_names"]


@pytest.mark.parametrize(("args", "message"), [
    (("--prompt", "THE", "--tokens", "5"), "characters the model never saw in training: 'E'"),
    (("--prompt", "the", "--tokens", "0"), "give a positive number of tokens"),
    (("--prompt", "", "--tokens", "3"), "the prompt is empty"),
    (("--prompt-ids", "1,2,99", "--tokens", "3"), "past the model's vocabulary (ids 0..27)"),
    (("--prompt-ids", "1;2", "--tokens", "3"), "expected token ids"),
])
def test_user_mistakes_exit_1_with_a_message(trained, args, message):
    assert message in _sample(trained, "lstm", *args, code=1)


def test_both_prompts_or_none_is_a_usage_error(trained):
    assert "one of the two" in _sample(trained, "lstm", "--tokens", "3", code=2)
    assert "one of the two" in _sample(trained, "lstm", "--prompt", "a", "--prompt-ids", "1",
                                       "--tokens", "3", code=2)


def test_missing_weights_and_models_that_are_no_language_model(trained, tmp_path):
    runner = CliRunner()
    spec, overrides, run = trained["lstm"]
    result = runner.invoke(main, ["sample", spec, *_sets(overrides), "-w",
                                  str(tmp_path / "nothing"), "--prompt", "a", "--tokens", "3"])
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(main, ["sample", str(ROOT / "specs/digits_mlp.nn"), "-w", str(run),
                                  "--prompt", "a", "--tokens", "3"])
    assert result.exit_code == 1 and "not a language model" in result.output
    bidirectional = tmp_path / "bi.nn"
    bidirectional.write_text("""
model Bi(vocab = 28, ctx = 16) {
  input chars: int[ctx]
  chars -> embedding(vocab, 8) -> lstm(8, bidirectional = true) -> dense(vocab)
}
train Bi { data char_lm(length = 16, chars = 2000); loss cross_entropy; optimizer adam; epochs 1 }
""")
    result = runner.invoke(main, ["train", str(bidirectional), "-o", str(tmp_path / "bi")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["sample", str(bidirectional), "-w", str(tmp_path / "bi"),
                                  "--prompt", "the", "--tokens", "3"])
    assert result.exit_code == 1 and "is not causal" in result.output


def test_language_model_shapes():
    assert language_model(load(ROOT / "specs/tiny_gpt.nn").graph).context == 64
    symbolic = load_text("model M { input t: int[T]\n t -> embedding(10, 4) -> dense(10) }")
    assert language_model(symbolic.graph).context is None
    assert language_model(symbolic.graph).vocab == 10


def test_choose_keeps_to_the_top_k():
    scores = np.array([0.0, 3.0, 1.0, 2.5, -1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert choose(scores, 0.0, None, rng) == 1
    drawn = {choose(scores, 5.0, 2, rng) for _ in range(200)}
    assert drawn == {1, 3}
    drawn = {choose(scores, 5.0, None, rng) for _ in range(400)}
    assert drawn == {0, 1, 2, 3, 4}


def test_token_ids_of_data_without_characters(tmp_path):
    """A causal model trained on `sort` (tokens named 0..11): ids in, names out, the same
    greedy continuation in both backends; text prompts are refused with the way out."""
    spec = tmp_path / "sort_lm.nn"
    spec.write_text("""
model SortLM(vocab = 12, ctx = 8) {
  input tokens: int[ctx]
  tokens -> embedding(vocab, 16) -> gru(32) -> dense(vocab)
}
train SortLM {
  data sort(length = 8, vocab = 12, n = 1000); loss cross_entropy; optimizer adam(lr = 1e-2)
  epochs 2
}
""")
    runner = CliRunner()
    done = runner.invoke(main, ["train", str(spec), "-o", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    common = ["sample", str(spec), "-w", str(tmp_path / "run"), "-n", "10", "-t", "0"]
    outs = [runner.invoke(main, [*common, "--prompt-ids", "3,1,11", "--backend", backend])
            for backend in ("numpy", "torch")]
    assert [o.exit_code for o in outs] == [0, 0], outs[0].output + outs[1].output
    assert outs[0].output == outs[1].output
    words = outs[0].output.split()
    assert words[:3] == ["3", "1", "11"] and len(words) == 13
    assert all(0 <= int(w) < 12 for w in words)
    refused = runner.invoke(main, [*common, "--prompt", "31"])
    assert refused.exit_code == 1 and "--prompt-ids" in refused.output
