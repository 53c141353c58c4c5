"""Property tests of the front end.

1. Any text -- random characters, token soup, or the example specs with characters and
   tokens deleted, inserted, duplicated and swapped -- gives a list of diagnostics (maybe
   empty) from `check_text`, never another exception, and every span is inside the file.
2. Random valid networks (chains of dense/conv/pool/norm/recurrent/attention layers with
   consistent shapes, some wrapped in residuals) build, and the inferred output shape and
   parameter count equal a straightforward recomputation with PyTorch's formulas.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.diagnostics import Diagnostic
from nnspec.spec import check_text, load_text

SPECS = {p.name: p.read_text() for p in sorted((Path(__file__).parent.parent / "specs")
                                                .glob("*.nn"))}
TEXT_SETTINGS = settings(max_examples=200, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
SPEC_SETTINGS = settings(max_examples=50, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


def assert_only_diagnostics(text: str) -> list[Diagnostic]:
    diagnostics = check_text(text, "fuzz.nn")
    assert isinstance(diagnostics, list)
    lines = text.count("\n") + 1
    for d in diagnostics:
        assert isinstance(d, Diagnostic)
        assert re.fullmatch(r"[EN]\d{3}", d.code)
        assert d.message
        if d.span is not None:
            assert 1 <= d.span.line <= lines, (d, text)
            assert d.span.col >= 1
        for note in d.notes:
            if note.span is not None and note.span.path == "fuzz.nn":
                assert 1 <= note.span.line <= lines
    return diagnostics


# ---- any text -----------------------------------------------------------------------------

TOKENS = ["model", "block", "fn", "train", "input", "as", "if", "else", "and", "or", "not",
          "true", "false", "none", "repeat", "dense", "conv2d", "relu", "lstm", "attention",
          "embedding", "concat", "x", "y", "M", "B", "d", "T", "int", "float", "(", ")", "[", "]",
          "{", "}", "->", ",", "=", ":", ";", "+", "-", "*", "/", "^", "**", "%", "<", "<=",
          "==", "!=", "0", "1", "3", "-1", "64", "0.5", "1e-3", "1e999", '"same"', '"', "'",
          "#", "\\", "\n", "\n  ", "\t", "loss", "mse", "data", "digits", "optimizer", "adam"]


@TEXT_SETTINGS
@given(st.text(max_size=300))
def test_random_text_gives_only_diagnostics(text):
    assert_only_diagnostics(text)


@TEXT_SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60),
       st.lists(st.sampled_from([" ", "", "\n"]), min_size=60, max_size=60))
def test_token_soup_gives_only_diagnostics(tokens, gaps):
    assert_only_diagnostics("".join(t + g for t, g in zip(tokens, gaps)))


_WORD = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?(?:e-?\d+)?|->|\S")


@st.composite
def mutated_spec(draw):
    """An example spec after one to four edits of the kinds typing produces."""
    text = SPECS[draw(st.sampled_from(sorted(SPECS)))]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "swap", "replace"]))
        n = len(text)
        i = draw(st.integers(0, n))
        if kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 12)):]
        elif kind == "insert":
            piece = draw(st.sampled_from(TOKENS) | st.characters(codec="utf-8"))
            text = text[:i] + piece + text[i:]
        elif kind == "duplicate":
            j = min(n, i + draw(st.integers(1, 40)))
            k = draw(st.integers(0, n))
            text = text[:k] + text[i:j] + text[k:]
        else:
            words = list(_WORD.finditer(text))
            if len(words) < 2:
                continue
            a, b = sorted(draw(st.lists(st.integers(0, len(words) - 1), min_size=2,
                                        max_size=2, unique=True)))
            first, second = words[a], words[b]
            replacement = (second.group() if kind == "swap"
                           else draw(st.sampled_from(TOKENS)))
            if kind == "swap":
                text = (text[:first.start()] + second.group() + text[first.end():second.start()]
                        + first.group() + text[second.end():])
            else:
                text = text[:first.start()] + replacement + text[first.end():]
    return text


@TEXT_SETTINGS
@given(mutated_spec())
def test_mutated_specs_give_only_diagnostics(text):
    assert_only_diagnostics(text)


def test_every_example_spec_is_clean_before_mutation():
    for name, text in SPECS.items():
        errors = [d for d in check_text(text, name) if d.severity == "error"]
        assert not errors, (name, errors)


# ---- random valid networks ----------------------------------------------------------------


@st.composite
def valid_network(draw):
    """(spec text, expected output shape, expected parameter count).

    Shapes and parameter counts are recomputed here with the textbook/PyTorch formulas,
    independently of the catalogue: out = (n + 2p - k) // s + 1 for windows,
    Linear F*u + u, Conv C_out*C_in*k^d + C_out, LSTM 4h(F + h) + 8h per direction, ...
    """
    family = draw(st.sampled_from(["vector", "image", "sequence"]))
    if family == "vector":
        shape = (draw(st.integers(1, 48)),)
    elif family == "image":
        shape = (draw(st.integers(1, 4)), draw(st.integers(4, 20)), draw(st.integers(4, 20)))
    else:
        shape = (draw(st.integers(1, 12)), draw(st.sampled_from([4, 6, 8, 12, 16])))
    lines = [f"  input x: [{', '.join(map(str, shape))}]"]
    params = 0
    current = "x"
    for i in range(draw(st.integers(1, 8))):
        layer, new_shape, new_params = draw(_layer_for(shape))
        residual = new_shape == shape and draw(st.booleans())
        name = f"h{i}"
        if residual:
            lines.append(f"  {name} = {current} + ({current} -> {layer})")
        else:
            lines.append(f"  {name} = {current} -> {layer}")
        shape, params, current = new_shape, params + new_params, name
    lines.append(f"  {current}")
    return "model Random {\n" + "\n".join(lines) + "\n}\n", shape, params


def _layer_for(shape):
    """A strategy of (layer text, output shape, parameter count) valid for `shape`."""
    activations = st.sampled_from(["relu", "tanh", "sigmoid", "gelu", "silu", "elu",
                                   "leaky_relu(0.2)", "dropout(0.1)", "softmax"])
    same = activations.map(lambda a: (a, shape, 0))
    options = [same, st.just(("layernorm", shape, 2 * shape[-1]))]
    features = shape[-1]
    if len(shape) in (1, 2):
        options.append(st.integers(1, 32).map(
            lambda u: (f"dense({u})", shape[:-1] + (u,), features * u + u)))
        options.append(st.integers(1, 32).map(
            lambda u: (f"dense({u}, bias = false)", shape[:-1] + (u,), features * u)))
    if len(shape) == 1:
        options.append(st.just(("batchnorm", shape, 2 * features)))
    if len(shape) == 2:
        options.append(_recurrent(shape))
        heads = [h for h in (1, 2, 4) if features % h == 0]
        options.append(st.sampled_from(heads).map(
            lambda h: (f"attention({h})", shape, 4 * features * features + 4 * features)))
        options.append(st.just(("flatten", (shape[0] * shape[1],), 0)))
    if len(shape) == 3:
        options.append(_conv(shape))
        options.append(st.just(("batchnorm", shape, 2 * shape[0])))
        options.append(st.just(("global_avgpool", shape[:1], 0)))
        options.append(st.just(("flatten", (shape[0] * shape[1] * shape[2],), 0)))
        if min(shape[1:]) >= 2:
            options.append(st.tuples(st.sampled_from(["maxpool", "avgpool"]),
                                     st.integers(2, min(3, *shape[1:]))).map(
                lambda p: (f"{p[0]}({p[1]})", (shape[0], shape[1] // p[1], shape[2] // p[1]), 0)))
    return st.one_of(options)


def _window(n, k, s, p):
    return (n + 2 * p - k) // s + 1


@st.composite
def _conv(draw, shape):
    c_in, h, w = shape
    k = draw(st.integers(1, min(5, h, w)))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2))
    c = draw(st.integers(1, 8))
    text = f"conv2d({c}, {k}, stride = {s}, padding = {p})"
    return text, (c, _window(h, k, s, p), _window(w, k, s, p)), c * c_in * k * k + c


@st.composite
def _recurrent(draw, shape):
    steps, features = shape
    mode = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    hidden = draw(st.integers(1, 16))
    bidirectional = draw(st.booleans())
    last = draw(st.booleans())
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[mode]
    dirs = 2 if bidirectional else 1
    per_direction = gates * hidden * (features + hidden) + 2 * gates * hidden
    text = (f"{mode}({hidden}, bidirectional = {str(bidirectional).lower()}, "
            f"last = {str(last).lower()})")
    out = (hidden * dirs,) if last else (steps, hidden * dirs)
    return text, out, dirs * per_direction


@SPEC_SETTINGS
@given(valid_network())
def test_random_valid_networks_build_with_the_recomputed_shape_and_params(network):
    text, shape, params = network
    assert assert_only_diagnostics(text) == [], text
    spec = load_text(text, "random.nn")
    assert spec.graph.output_type.shape == shape, text
    assert spec.summary().total_params == params, text
