"""Sampling from a trained language model (`nnspec sample`), whichever backend runs it.

A language model here is what the generated module's `generate` serves: one input of token
ids `int[T]` and one output of scores `[T, vocab]`, each position scoring the token after
it. Each new token is drawn from the scores at the last position of the model's context
window (the last `T` tokens, as nanoGPT crops), after dividing by the temperature
(0: always the most likely token) and keeping the `top_k` best. This module holds what both
backends share: the model's shape, the vocabulary, the choice of a token and the NumPy
interpreter's loop; the torch backend runs the generated `generate`
(`nnspec.backends.torch.runtime.generate_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nnspec.ir.graph import Graph


class SampleError(ValueError):
    """A request that cannot be sampled (a user mistake): message and hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class LanguageModel:
    """What sampling needs of a graph: its token input, its context length (None for a
    symbolic length: any window) and its number of token scores."""

    input: str
    context: int | None
    vocab: int


def language_model(graph: Graph) -> LanguageModel:
    """The graph's language-model shape, or SampleError saying why it has none."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise SampleError(f"`{graph.name}` has {len(graph.inputs)} inputs and "
                          f"{len(graph.outputs)} outputs; sampling needs a language model "
                          "(one input of token ids, one output of scores per position)")
    given, out = graph.node(graph.inputs[0]).type, graph.node(graph.outputs[0]).type
    if given.dtype != "int64" or given.rank != 1:
        raise SampleError(f"`{graph.name}` takes {given}, not a sequence of token ids "
                          "(`int[T]`), so it is not a language model to sample from",
                          "sampling needs a model like `input tokens: int[ctx]` -> ... "
                          "-> dense(vocab)")
    if out.rank != 2 or out.shape[0] != given.shape[0] or not isinstance(out.shape[1], int):
        raise SampleError(f"`{graph.name}` gives {out} for {given}; sampling needs scores "
                          "for the next token at every position ([T, vocab])")
    length = given.shape[0]
    return LanguageModel(graph.inputs[0], length if isinstance(length, int) else None,
                         out.shape[1])


# ---------------------------------------------------------------- the vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Token names by id, from the weights' `class_names` metadata (the training data's
    classes: `char_lm`'s characters). Without names, tokens are their ids."""

    names: tuple[str, ...] | None

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Vocabulary:
        try:
            names = json.loads(metadata.get("class_names") or "null")
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return cls(None)
        return cls(tuple(names))

    @property
    def characters(self) -> bool:
        """Every token is one character, so text is a token sequence."""
        return bool(self.names) and all(len(n) == 1 for n in self.names)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, one per character; SampleError names unknown characters."""
        if not self.characters:
            raise SampleError("these weights carry no character vocabulary, so a text prompt "
                              "cannot be encoded", "give token ids: --prompt-ids 1,2,3")
        index = {name: i for i, name in enumerate(self.names)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            shown = ", ".join(repr(c) for c in unknown)
            raise SampleError(f"the prompt has characters the model never saw in training: "
                              f"{shown}", f"the vocabulary is {''.join(self.names)!r}")
        return [index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        """Text for character vocabularies, else names (or ids) separated by spaces; an id
        past the names (a model with more scores than the data had classes) as `<id>`."""
        names = self.names or ()
        words = [names[i] if i < len(names) else f"<{i}>" for i in ids]
        return "".join(words) if self.characters else " ".join(words)


def parse_ids(text: str, vocab: int) -> list[int]:
    """`--prompt-ids 1,2,3` -> [1, 2, 3], each a token id below `vocab`."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise SampleError(f"--prompt-ids {text!r}: expected token ids like 1,2,3")
    ids = [int(p) for p in parts]
    too_big = [i for i in ids if i >= vocab]
    if too_big:
        raise SampleError(f"--prompt-ids: token {too_big[0]} is past the model's vocabulary "
                          f"(ids 0..{vocab - 1})")
    return ids


# ---------------------------------------------------------------- choosing tokens


def choose(scores: np.ndarray, temperature: float, top_k: int | None,
           rng: np.random.Generator) -> int:
    """One token from one position's scores: the best at temperature 0, else a draw from
    softmax(scores / temperature) over the `top_k` best."""
    scores = scores.astype(np.float64)
    if temperature == 0:
        return int(np.argmax(scores))
    scores = scores / temperature
    if top_k is not None and top_k < len(scores):
        cut = np.partition(scores, -top_k)[-top_k]
        scores = np.where(scores < cut, -np.inf, scores)
    weights = np.exp(scores - scores.max())
    return int(rng.choice(len(scores), p=weights / weights.sum()))


def window(ids: list[int], context: int | None) -> list[int]:
    """The tokens the model sees: the last `context` of them."""
    return ids if context is None else ids[-context:]


def sample_numpy(forward: Callable[[np.ndarray], np.ndarray], shape: LanguageModel,
                 ids: list[int], new_tokens: int, *, temperature: float,
                 top_k: int | None, seed: int, log_scores: bool = False) -> list[int]:
    """`ids` followed by `new_tokens` tokens, each chosen from the scores `forward` (a
    batch of windows -> scores [1, T, vocab], eval mode) gives at the last position.

    A window shorter than a fixed context is padded at the end to the model's length: the
    scores at its last real position are those of the window alone only in a causal model,
    which `check_causal` makes sure of first. `log_scores`: the output is probabilities (a
    softmax), whose logarithms are the scores."""
    rng = np.random.default_rng(seed)
    ids = list(ids)
    for _ in range(new_tokens):
        seen = window(ids, shape.context)
        batch = np.zeros((1, shape.context or len(seen)), dtype=np.int64)
        batch[0, :len(seen)] = seen
        scores = forward(batch)[0, len(seen) - 1]
        if log_scores:
            scores = np.log(np.maximum(scores, np.finfo(scores.dtype).tiny))
        ids.append(choose(scores, temperature, top_k, rng))
    return ids


def check_causal(forward: Callable[[np.ndarray], np.ndarray], shape: LanguageModel,
                 name: str) -> None:
    """SampleError unless the scores at each position ignore the tokens after it (else the
    model is no next-token predictor, and padded windows would change what it says)."""
    length = shape.context or 8
    if length < 2:
        return
    tokens = np.random.default_rng(0).integers(0, shape.vocab, (1, length))
    changed = tokens.copy()
    changed[0, -1] = (changed[0, -1] + 1) % shape.vocab
    before, after = forward(tokens)[0, :-1], forward(changed)[0, :-1]
    if not np.allclose(before, after, rtol=1e-4, atol=1e-5):
        raise SampleError(f"`{name}` is not causal: its scores at a position change with "
                          "the tokens after it, so it cannot predict the next token",
                          "a language model sees only the past (`attention(..., causal = "
                          "true)`, a one-directional lstm/gru)")
