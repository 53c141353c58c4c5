"""The text of the `char_lm` set: English-like sentences from a small grammar (subjects,
verbs, objects, places, times, connectives), so spelling, word order and punctuation are
learnable while word choice stays random; and the windows cut from it."""

from __future__ import annotations

import numpy as np

_SUBJECTS = (
    "the cat",
    "the old dog",
    "a small bird",
    "the farmer",
    "my sister",
    "our teacher",
    "the young king",
    "a tired sailor",
    "the baker",
    "her brother",
    "the quiet girl",
    "a fox",
)
_VERBS = (
    "sees",
    "finds",
    "likes",
    "follows",
    "paints",
    "carries",
    "watches",
    "calls",
    "helps",
    "remembers",
    "visits",
    "feeds",
)
_OBJECTS = (
    "the river",
    "a red boat",
    "the green hill",
    "an apple",
    "the little house",
    "a letter",
    "the moon",
    "a basket of bread",
    "the garden gate",
    "an old map",
    "the white horse",
)
_PLACES = (
    "near the river",
    "in the garden",
    "on the hill",
    "at the market",
    "by the old bridge",
    "under the tall tree",
    "in the village",
)
_TIMES = ("every morning", "at night", "in the spring", "after dinner", "on sunday", "once again")
_CONNECTIVES = ("and then", "but", "so", "because")
_FRAGMENTS = (*_SUBJECTS, *_VERBS, *_OBJECTS, *_PLACES, *_TIMES, *_CONNECTIVES)
CHAR_ALPHABET = "".join(sorted(set("".join(_FRAGMENTS)) | set(" .,\n")))


def sentences(rng: np.random.Generator, size: int) -> str:
    """Paragraphs of three to six grammar-made sentences, cut to exactly `size` characters."""

    def pick(words: tuple[str, ...]) -> str:
        return words[rng.integers(len(words))]

    def sentence() -> str:
        clause = f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}"
        form = rng.integers(4)
        if form == 1:
            return f"{clause} {pick(_PLACES)}."
        if form == 2:
            return f"{pick(_TIMES)}, {clause}."
        if form == 3:
            return (
                f"{clause} {pick(_CONNECTIVES)} {pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}."
            )
        return f"{clause}."

    paragraphs: list[str] = []
    total = 0
    while total < size:
        paragraph = " ".join(sentence() for _ in range(int(rng.integers(3, 7)))) + "\n"
        paragraphs.append(paragraph)
        total += len(paragraph)
    return "".join(paragraphs)[:size]


def windows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: inputs ids[i:i+T], targets ids[i+1:i+T+1]."""
    count = (len(ids) - 1) // length
    inputs = ids[: count * length].reshape(count, length)
    targets = ids[1 : count * length + 1].reshape(count, length)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)
