"""Generated specs: random programs of the .nn language (nnspec/grammar/nnspec.lark) built
from its constructs -- constants, fns, blocks with parameters, models, pipelines with `as`
names, residuals, concat, conditionals, repeat and train sections. Most are valid or nearly
so, so the inputs reach the builder, the shape rules and the backends, not only the parser."""

from __future__ import annotations

import random

ACTIVATIONS = ["relu", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "silu", "relu6",
               "elu", "leaky_relu(0.2)", "gelu(approximate = \"tanh\")", "dropout(0.1)",
               "dropout", "swish"]
# (layer, the family of its output: None keeps the input's)
VECTOR_LAYERS = [("dense({u})", None), ("dense({u}, bias = false)", None), ("linear({u})", None),
                 ("layernorm", None), ("batchnorm", None), ("dropout(0.5)", None),
                 ("reshape([{k}, -1])", "sequence")]
SEQUENCE_LAYERS = [("lstm({u})", None), ("gru({u}, bidirectional = true)", None),
                   ("rnn({u}, layers = {k})", None), ("lstm({u}, last = true)", "vector"),
                   ("attention({h})", None), ("attention({h}, causal = true)", None),
                   ("layernorm", None), ("dense({u})", None),
                   ("conv1d({u}, {k}, padding = \"same\")", None), ("maxpool1d({k})", None),
                   ("mean(dim = 0)", "vector"), ("flatten", "vector"), ("select(0)", "vector")]
IMAGE_LAYERS = [("conv2d({u}, {k})", None), ("conv2d({u}, {k}, stride = 2, padding = 1)", None),
                ("conv2d({u}, 3, padding = \"same\", groups = 1)", None), ("maxpool({k})", None),
                ("avgpool(2, stride = 1)", None), ("batchnorm", None),
                ("global_avgpool", "vector"), ("adaptive_avgpool([2, 2])", None),
                ("flatten", "vector"), ("reshape([-1])", "vector")]
TOKEN_LAYERS = [("embedding({v}, {u})", "sequence"), ("positions({t}, {u})", "sequence"),
                ("sinusoidal({t}, {u})", "sequence")]
DATA = ["digits", "moons(noise = 0.1)", "xor", "spirals", "sine", "adding", "recall",
        "char_lm(length = 16)", "digits(shape = [1, 8, 8])", 'csv("train.csv", target = "y")',
        'npz("data.npz")']
LOSSES = ["cross_entropy", "cross_entropy(label_smoothing = 0.1)", "mse", "l1",
          "binary_cross_entropy(logits = true)"]
OPTIMIZERS = ["adam(lr = 1e-3)", "sgd(lr = 0.1, momentum = 0.9, nesterov = true)",
              "adamw(lr = 3e-4, weight_decay = 0.01)", "rmsprop", "adagrad(lr = 0.01)"]
SCHEDULES = ["cosine(warmup = 2)", "step(step_size = 10, gamma = 0.5)", "cosine"]
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
                stage += f" as {r.choice(['fc', 'proj', 'attn', 'conv', 'head'])}{i}"
            stages.append(stage)
        return " -> ".join([start] + stages), family

    def expression(self, names: dict[str, str], scope: list[str]) -> tuple[str, str]:
        r = self.rng
        x = r.choice(sorted(names))
        family = names[x]
        same = [n for n, f in names.items() if f == family]
        kind = r.randrange(8)
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
            text, names[f"h{i}"] = self.expression(names, scope)
            lines.append(f"  h{i} = {text}")
        lines.append(f"  {self.expression(names, scope)[0]}")
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
        required = [f"data {r.choice(DATA)}", f"loss {r.choice(LOSSES + self.fns)}"]
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
