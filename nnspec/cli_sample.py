"""`nnspec sample`: text (or token ids) from a trained language model, on either backend."""

from __future__ import annotations

from pathlib import Path

import click

from nnspec.cli_common import (
    NEEDS_TORCH,
    SPEC,
    fail_plain,
    load_or_exit,
    load_trained,
    parse_overrides,
)


@click.command()
@click.argument("file", type=SPEC)
@click.option("--weights", "-w", required=True, type=click.Path(path_type=Path),
              help="A .safetensors file, or a run directory (its best weights).")
@click.option("--prompt", "-p", default=None,
              help="The text to continue, in the vocabulary the model was trained on.")
@click.option("--prompt-ids", default=None, metavar="IDS",
              help="The tokens to continue as ids, e.g. 1,2,3 (data without a character "
              "vocabulary).")
@click.option("--tokens", "-n", "new_tokens", type=int, required=True,
              help="How many tokens to add.")
@click.option("--temperature", "-t", type=click.FloatRange(min=0.0), default=1.0,
              show_default=True, help="Divide the scores by this; 0 always takes the most "
              "likely token (greedy).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Draw only among the K most likely tokens.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the draws.")
@click.option("--backend", type=click.Choice(["numpy", "torch"]), default="numpy",
              show_default=True, help="numpy: the interpreter; torch: the generated module's "
              "`generate` (needs torch).")
@click.option("--model", default=None, help="Which model of the file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a model hyperparameter (as when training).")
def sample(file: str, weights: Path, prompt: str | None, prompt_ids: str | None,
           new_tokens: int, temperature: float, top_k: int | None, seed: int, backend: str,
           model: str | None, overrides: tuple[str, ...]):
    """Continue a prompt with a trained language model of FILE (token ids in, next-token
    scores out, e.g. trained on `char_lm`): prints the prompt and the tokens drawn.

    The model sees the last T tokens of the text when it holds more than its input's
    length T. See docs/training.md.
    """
    import numpy as np

    from nnspec.sampling import (
        SampleError,
        Vocabulary,
        check_causal,
        language_model,
        parse_ids,
        sample_numpy,
    )

    if (prompt is None) == (prompt_ids is None):
        raise click.UsageError("give the text to continue with --prompt, or token ids with "
                               "--prompt-ids (one of the two)")
    if new_tokens <= 0:
        fail_plain(f"--tokens {new_tokens}: give a positive number of tokens to add")
    try:  # a model that is no language model is told so before its weights are read
        shape = language_model(load_or_exit(file, model, parse_overrides(overrides),
                                          notes=False).graph)
    except SampleError as err:
        fail_plain(err.message, err.hint)
    spec, net, metadata = load_trained(file, model, overrides, weights)
    vocabulary = Vocabulary.from_metadata(metadata)
    try:
        ids = vocabulary.encode(prompt) if prompt is not None else \
            parse_ids(prompt_ids, shape.vocab)
        if not ids:
            raise SampleError("the prompt is empty; give at least one token to continue")

        def forward(batch):
            with np.errstate(all="ignore"):
                return net(batch)

        check_causal(forward, shape, spec.name)
        if backend == "torch":
            ids = _sample_torch(spec, net.state_dict(), ids, new_tokens, temperature,
                                top_k, seed)
        else:
            probabilities = spec.graph.node(spec.graph.outputs[0]).op == "softmax"
            ids = sample_numpy(forward, shape, ids, new_tokens, temperature=temperature,
                               top_k=top_k, seed=seed, log_scores=probabilities)
    except SampleError as err:
        fail_plain(err.message, err.hint)
    click.echo(vocabulary.decode(ids))


def _sample_torch(spec, weights, ids, new_tokens, temperature, top_k, seed) -> list[int]:
    try:
        from nnspec.backends.torch.runtime import generate_tokens
    except ImportError as err:
        if err.name != "torch":
            raise
        fail_plain("the torch backend needs PyTorch", NEEDS_TORCH)
    try:
        return generate_tokens(spec, weights, ids, new_tokens, temperature=temperature,
                               top_k=top_k, seed=seed)
    except ValueError as err:
        fail_plain(str(err), "sample it with --backend numpy")
