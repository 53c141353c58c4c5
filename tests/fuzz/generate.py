"""Generated specs: random programs of the .nn language (nnspec/grammar/nnspec.lark) built
from its constructs -- constants, fns, blocks with parameters, models, pipelines with `as`
names (words, numbers, dotted paths), residuals, concat, conditionals, repeat, `seq(...)`,
subscripts and slices, `a, b = ...` unpacking (chunk, split, recurrent states), learned
`param`s, `@`, attention masks, `noise`, several outputs with loss expressions over them,
and train sections. Most are valid or nearly so, so the inputs reach the builder, the shape
rules and the backends, not only the parser."""

from __future__ import annotations

import random

ACTIVATIONS = ["relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "silu", "relu6",
               "elu", "leaky_relu(0.2)", "gelu(approximate = \"tanh\")", "dropout(0.1)",
               "dropout", "swish"]
# (layer, the family of its output: None keeps the input's)
VECTOR_LAYERS = [("dense({u})", None), ("dense({u}, bias = false)", None), ("linear({u})", None),
                 ("layernorm", None), ("batchnorm", None), ("dropout(0.5)", None),
                 ("reshape([{k}, -1])", "sequence"), ("rmsnorm", None),
                 ("seq(dense({u}), relu, dense({u}))", None), ("reshape([{u}, 1, 1])", "image")]
SEQUENCE_LAYERS = [("lstm({u})", None), ("gru({u}, bidirectional = true)", None),
                   ("rnn({u}, layers = {k})", None), ("lstm({u}, last = true)", "vector"),
                   ("attention({h})", None), ("attention({h}, causal = true)", None),
                   ("layernorm", None), ("dense({u})", None),
                   ("conv1d({u}, {k}, padding = \"same\")", None), ("maxpool1d({k})", None),
                   ("mean(dim = 0)", "vector"), ("flatten", "vector"), ("select(0)", "vector"),
                   ("gru({u}, layers = {k})", None), ("rnn({u}, bidirectional = true)", None),
                   ("attention({h}, kv_heads = 1, rope = true)", None), ("rmsnorm", None),
                   ("conv_transpose1d({u}, {k}, stride = 2)", None), ("upsample(2)", None),
                   ("upsample(2, mode = \"linear\")", None), ("seq(layernorm, dense({u}))", None)]
IMAGE_LAYERS = [("conv2d({u}, {k})", None), ("conv2d({u}, {k}, stride = 2, padding = 1)", None),
                ("conv2d({u}, 3, padding = \"same\", groups = 1)", None), ("maxpool({k})", None),
                ("avgpool(2, stride = 1)", None), ("batchnorm", None),
                ("global_avgpool", "vector"), ("adaptive_avgpool([2, 2])", None),
                ("flatten", "vector"), ("reshape([-1])", "vector"),
                ("conv_transpose2d({u}, {k}, stride = 2, padding = 1)", None),
                ("conv_transpose2d({u}, 4, bias = false)", None), ("upsample(2)", None),
                ("upsample(2, mode = \"bilinear\", align_corners = true)", None),
                ("upsample(size = [{u}, {u}])", None), ("pixel_shuffle(2)", None),
                ("pixel_unshuffle(2)", None), ("seq(conv2d({u}, 1), batchnorm, relu)", None)]
TOKEN_LAYERS = [("embedding({v}, {u})", "sequence"), ("positions({t}, {u})", "sequence"),
                ("sinusoidal({t}, {u})", "sequence")]
DATA = ["digits", "moons(noise = 0.1)", "xor", "spirals", "sine", "adding", "recall",
        "char_lm(length = 16)", "digits(shape = [1, 8, 8])", 'csv("train.csv", target = "y")',
        'npz("data.npz")']
LOSSES = ["cross_entropy", "cross_entropy(label_smoothing = 0.1)", "mse", "l1",
          "binary_cross_entropy(logits = true)"]
# Losses written over named outputs, inputs and targets (`pred`, `target`, the model's names).
LOSS_EXPRS = ["mse(h0, target) + 0.1 * mean(h1 ^ 2)", "cross_entropy(pred, target)",
              "l1(h0, x)", "binary_cross_entropy(sigmoid(h0), target) + mean(a0)",
              "64 * mse(pred, x) + mean(exp(h1) - h1)", "mean((pred - target) ^ 2)"]
OPTIMIZERS = ["adam(lr = 1e-3)", "sgd(lr = 0.1, momentum = 0.9, nesterov = true)",
              "adamw(lr = 3e-4, weight_decay = 0.01)", "rmsprop", "adagrad(lr = 0.01)"]
SCHEDULES = ["cosine(warmup = 2)", "step(step_size = 10, gamma = 0.5)", "cosine"]
LABELS = ["fc", "proj", "attn", "conv", "head", "0", "1", "encoder.layer.0", "blocks.1.mlp",
          "model.norm"]
WILD = ["0", "-1", "1000000000", "2.5", '"x"', "true", "none", "[1, 2]", "10 ** 20", "1 / 0",
        "7 % 0", "2 ^ 70", "-3 * 4"]


class _Program:
    """One random program under construction; `rng` decides everything."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.blocks: list[tuple[str, list[str]]] = []  # (name, required params)
        self.fns: list[str] = []
        self.consts: list[str] = []

    def number(self, low=1, high=64) -> str:
        r = self.rng
        if r.random() < 0.02:
            return r.choice(WILD)
        if self.consts and r.random() < 0.1:
            return r.choice(self.consts)
        n = str(r.choice([low, high, 4, 8, 16, 32] if r.random() < 0.7 else
                         [r.randint(low, high)]))
        if r.random() < 0.05:
            n = f"{n} * {r.randint(1, 4)}" if r.random() < 0.5 else f"({n} + {r.randint(0, 3)})"
        return n

    def layer(self, family: str, scope: list[str]) -> tuple[str, str]:
        """(layer text, the family of its output)."""
        r = self.rng
        if self.blocks and family != "tokens" and r.random() < 0.2:
            name, params = r.choice(self.blocks)
            args = ", ".join(self.number() for _ in params)
            call = f"{name}({args})" if args or r.random() < 0.5 else name
            if r.random() < 0.4:
                call = f"repeat({self.number(1, 4)}, {call})"
            return call, family
        if self.fns and family != "tokens" and r.random() < 0.1:
            return r.choice(self.fns), family
        table = {"vector": VECTOR_LAYERS, "sequence": SEQUENCE_LAYERS, "image": IMAGE_LAYERS,
                 "tokens": TOKEN_LAYERS}[family]
        if family != "tokens":
            table = table + [(a, None) for a in ACTIVATIONS]
        template, after = r.choice(table)
        text = template.format(u=self.number(4, 32), k=r.randint(1, 3), h=r.choice([1, 2, 4]),
                               v=self.number(2, 100), t=self.number(4, 32))
        if scope and "(" in text and r.random() < 0.1:
            text = text.replace("(", f"({r.choice(scope)}, ", 1)
        return text, after or family

    def pipeline(self, start: str, family: str, scope: list[str]) -> tuple[str, str]:
        r = self.rng
        stages = []
        for i in range(r.randint(1, 5)):
            stage, family = self.layer(family, scope)
            if r.random() < 0.15:
                label = r.choice(LABELS)
                stage += f" as {label}{i if not label.isdigit() else ''}"
            stages.append(stage)
        return " -> ".join([start] + stages), family

    def expression(self, names: dict[str, str], scope: list[str]) -> tuple[str, str]:
        r = self.rng
        x = r.choice(sorted(names))
        family = names[x]
        same = [n for n, f in names.items() if f == family]
        kind = r.randrange(14)
        if kind >= 8:
            grown = self.grown_expression(x, family, same)
            if grown:
                return grown
        if kind == 0 and family != "tokens":
            body, _ = self.pipeline(x, family, scope)
            return f"{x} + ({body})", family
        if kind == 1 and family != "tokens":
            dim = ", dim = 0" if r.random() < 0.3 else ""
            return f"concat({x}, {r.choice(same)}{dim})", family
        if kind == 2 and scope:
            body, _ = self.pipeline(x, family, scope)
            return f"{x} if {r.choice(scope)} == {self.number(1, 4)} else ({body})", family
        if kind == 3 and family != "tokens":
            return (f"{r.choice(['0.5', '2', x])} * {x} {r.choice(['+', '-', '*', '/'])} "
                    f"{r.choice(same)}"), family
        if kind == 4 and self.fns and family != "tokens":
            return f"{r.choice(self.fns)}({x})", family
        return self.pipeline(x, family, scope)

    def grown_expression(self, x: str, family: str, same: list[str]) -> tuple[str, str] | None:
        """The constructs the language gained after the first fuzzer: subscripts and slices,
        `@`, noise, masks over attention."""
        r = self.rng
        if family == "tokens":
            return None
        choices = {
            "vector": [(f"{x}[:{self.number(1, 8)}]", "vector"), (f"{x}[1:]", "vector"),
                       (f"{x} + 0.1 * noise({x})", "vector"), (f"{x}[0]", None),
                       (f"{x}[::2]", "vector")],
            "sequence": [(f"{x}[0]", "vector"), (f"{x}[:, 1:3]", "sequence"),
                         (f"{x}[..., :{self.number(1, 8)}]", "sequence"), (f"{x}[-1]", "vector"),
                         (f"softmax({x} @ transpose({r.choice(same)}, -1, -2)) @ {x}", "sequence"),
                         ((f"{x} -> attention({r.choice([1, 2])}, attn_mask = {x} @ "
                           f"transpose({x}, -1, -2))"), "sequence"),
                         (f"{x} -> attention({r.choice(same)}, {r.choice([1, 2, 4])})", "sequence"),
                         (f"{x} * noise({x})", "sequence")],
            "image": [(f"{x}[0]", None), (f"{x}[:, 1:, 1:]", "image"), (f"{x}[..., ::2]", "image"),
                      (f"{x} @ {r.choice(same)}", "image")],
        }[family]
        text, after = r.choice(choices)
        return (text, after) if after else None

    def statement(self, names: dict[str, str], i: int) -> tuple[list[str], dict[str, str]] | None:
        """A statement that binds several names or a learned tensor, or None."""
        r = self.rng
        x = r.choice(sorted(names))
        family = names[x]
        kind = r.randrange(6)
        if family == "tokens" and kind < 3:
            return [f"  pad{i} = {x} == 0",
                    f"  e{i} = {x} -> embedding({self.number(2, 100)}, {self.number(4, 32)})",
                    f"  m{i} = e{i} -> attention(2, key_padding_mask = pad{i})"], \
                {f"e{i}": "sequence", f"m{i}": "sequence"}
        if family == "sequence" and kind == 0:
            cell = r.choice(["lstm", "gru", "rnn"])
            u = self.number(4, 32)
            states = "h{i}, c{i}" if cell == "lstm" else "h{i}"
            states = states.format(i=i)
            return [f"  o{i}, {states} = {x} -> {cell}({u}, states = true)",
                    f"  s{i} = {x} -> {cell}({states}, {u})"], {f"o{i}": "sequence",
                                                                 f"s{i}": "sequence"}
        if family in ("vector", "sequence") and kind == 1:
            pieces = r.choice([f"chunk({x}, 2, dim = -1)", f"split({x}, [1, 1], dim = -1)",
                               f"chunk({x}, {r.randint(1, 3)})"])
            return [f"  a{i}, b{i} = {pieces}"], {f"a{i}": family, f"b{i}": family}
        if kind == 2 and family != "tokens":
            shape = {"vector": "[{d}]", "sequence": "[1, {d}]", "image": "[{d}, 1, 1]"}[family]
            init = r.choice(["", " = normal(std = 0.02)", " = zeros", " = ones"])
            return [f"  param p{i}: {shape.format(d=self.number(1, 32))}{init}",
                    f"  q{i} = {x} + p{i}"], {f"q{i}": family}
        return None

    def input_line(self, name: str, family: str, scope: list[str]) -> str:
        r = self.rng
        dims = {"vector": 1, "sequence": 2, "image": 3, "tokens": 1}[family]
        symbolic = ["T", "C", "H", "W", "d", "F"] + scope
        shape = [r.choice(symbolic) if r.random() < 0.1 else self.number(2, 32)
                 for _ in range(dims)]
        if r.random() < 0.05:
            shape.append(self.number())
        dtype = "int" if family == "tokens" else ("float" if r.random() < 0.1 else "")
        return f"  input {name}: {dtype}[{', '.join(shape)}]"

    def body(self, family: str, scope: list[str]) -> list[str]:
        r = self.rng
        names = {"x": family}
        lines = [self.input_line("x", family, scope)]
        if r.random() < 0.15:
            lines.append(self.input_line("y", family, scope))
            names["y"] = family
        for i in range(r.randint(0, 4)):
            grown = self.statement(names, i) if r.random() < 0.3 else None
            if grown:
                lines += grown[0]
                names.update(grown[1])
                continue
            text, names[f"h{i}"] = self.expression(names, scope)
            lines.append(f"  h{i} = {text}")
        last = self.expression(names, scope)[0]
        named = [n for n in names if n != "x"]
        if named and r.random() < 0.2:  # several outputs
            last = ", ".join(r.sample(named, min(len(named), r.randint(1, 3))) + [f"({last})"])
        lines.append(f"  {last}")
        return lines

    def params(self, allow_empty=True) -> list[tuple[str, str | None]]:
        r = self.rng
        names = r.sample(["d", "heads", "hidden", "k", "width", "n", "p", "layers"],
                         r.randint(0 if allow_empty else 1, 3))
        return [(n, self.number() if r.random() < 0.4 else None) for n in names]

    def const(self) -> str:
        name = self.rng.choice(["width", "depth", "D", "hidden"]) + str(len(self.consts))
        line = f"{name} = {self.number()}"
        self.consts.append(name)
        return line

    def fn(self) -> str:
        name = f"act{len(self.fns)}"
        self.fns.append(name)
        body = self.rng.choice(["x * sigmoid(beta * x)", "relu(x) + 0.1 * x",
                                "where(x < 0, 0.5 * x, x)", "x - mean(x)",
                                "clip(x, min = -1, max = 1)", "x ^ 2"])
        return f"fn {name}(x, beta = 1.0) {{\n  {body}\n}}"

    def definition(self, kind: str, name: str) -> str:
        r = self.rng
        params = self.params()
        required = [n for n, default in params if default is None]
        text = ", ".join(n if default is None else f"{n} = {default}" for n, default in params)
        header = f"{kind} {name}({text})" if params or r.random() < 0.5 else f"{kind} {name}"
        family = r.choice(["vector", "sequence", "image", "tokens"] if kind == "model"
                          else ["vector", "sequence", "image"])
        lines = self.body(family, [n for n, _ in params])
        if kind == "block":
            self.blocks.append((name, required))
        elif required:  # a model's parameters need defaults
            header = f"{kind} {name}({', '.join(f'{n} = {self.number()}' for n, _ in params)})"
        return header + " {\n" + "\n".join(lines) + "\n}"

    def train(self, model: str) -> str:
        r = self.rng
        required = [f"data {r.choice(DATA)}", f"loss {r.choice(LOSSES + self.fns + LOSS_EXPRS)}"]
        settings = [f"optimizer {r.choice(OPTIMIZERS)}", f"epochs {r.randint(1, 30)}",
                    f"batch {r.choice([1, 16, 64])}", "metrics accuracy",
                    f"schedule {r.choice(SCHEDULES)}", f"seed {r.randint(0, 9)}",
                    "val 0.2", "clip 1.0", "early_stop 3"]
        chosen = required + r.sample(settings, r.randint(0, len(settings)))
        if r.random() < 0.1:
            chosen = r.sample(chosen, r.randint(0, len(chosen)))
        return f"train {model} {{\n" + "\n".join(f"  {s}" for s in chosen) + "\n}"

    def program(self) -> str:
        r = self.rng
        items = []
        for _ in range(r.randint(0, 2)):
            items.append(self.const())
        for _ in range(r.randint(0, 2)):
            items.append(self.fn())
        for i in range(r.randint(0, 3)):
            items.append(self.definition("block", f"Block{i}"))
        models = [f"Net{i}" for i in range(r.choice([1, 1, 1, 2]))]
        for name in models:
            items.append(self.definition("model", name))
        if r.random() < 0.6:
            items.append(self.train(r.choice(models)))
        return "\n\n".join(items) + "\n"


def generated(rng: random.Random) -> tuple[str, str]:
    """(text, how it was made): a random program of the language."""
    return _Program(rng).program(), "generated"
