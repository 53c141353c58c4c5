"""Regenerate the generated parts of docs/language.md from the op catalogue.

The catalogue is the single source of truth; tests/test_docs.py fails when the doc is stale.
Run: python scripts/gen_docs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from nnspec.ir import ops

BEGIN = "<!-- BEGIN GENERATED: ops -->"
END = "<!-- END GENERATED: ops -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "language.md"

FAMILIES = [
    ("linear", "Feed-forward"), ("shape", "Shape"), ("regularization", "Regularisation"),
    ("conv", "Convolution"), ("pool", "Pooling and up-sampling"), ("norm", "Normalisation"),
    ("embedding", "Embeddings and positions"), ("attention", "Attention"),
    ("recurrent", "Recurrent"), ("activation", "Activations"), ("merge", "Merges"),
    ("math", "Elementwise math and reductions (for `fn`s)"), ("loss", "Losses"),
]


def _default(attr: ops.Attr) -> str:
    if attr.default is ops.REQUIRED:
        return "required"
    value = attr.default
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value is None:
        return "`none`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(map(str, value)) + "]`"
    return f"`{value}`"


def _attr_rows(attrs) -> list[str]:
    rows = []
    for a in attrs:
        extra = []
        if a.choices:
            extra.append("one of " + ", ".join(f'`"{c}"`' for c in a.choices))
        if a.minimum is not None:
            extra.append(f">= {a.minimum}")
        if a.maximum is not None:
            extra.append(f"<= {a.maximum}")
        doc = "; ".join(x for x in (a.doc, *extra) if x)
        rows.append(f"| `{a.name}` | {a.kind} | {_default(a)} | {doc} |")
    return rows


def generate() -> str:
    unlisted = sorted({op.family for op in ops.OPS.values()} - {f for f, _ in FAMILIES})
    if unlisted:
        raise ValueError(f"op families without a section in FAMILIES: {', '.join(unlisted)}")
    out = [BEGIN, ""]
    for family, title in FAMILIES:
        out += [f"### {title}", ""]
        for name, op in ops.OPS.items():
            if op.family != family:
                continue
            aliases = f" (alias: {', '.join(f'`{a}`' for a in op.aliases)})" if op.aliases else ""
            out += [f"#### `{name}`{aliases}", "", op.doc, "",
                    f"- input: `{op.inputs_doc}` -> output: `{op.outputs_doc}`"]
            if op.has_params:
                out.append("- has weights (named as in PyTorch; see the parameter table in "
                           "`nnspec summary`)")
            if op.attrs:
                positional = [a.name for a in op.attrs if a.kind != "layer"]
                out += ["- positional order: " + ", ".join(f"`{p}`" for p in positional), "",
                        "| argument | type | default | notes |", "|---|---|---|---|",
                        *_attr_rows(op.attrs)]
            out.append("")
    out += ["### Optimizers (torch.optim's update rules and defaults)", ""]
    for name, opt in ops.OPTIMIZERS.items():
        out += [f"#### `{name}` — {opt.doc}", "", "| argument | type | default | notes |",
                "|---|---|---|---|", *_attr_rows(opt.hyper), ""]
    out += ["### Schedules", ""]
    for name, sched in ops.SCHEDULES.items():
        out += [f"#### `{name}` — {sched.doc}", "", "| argument | type | default | notes |",
                "|---|---|---|---|", *_attr_rows(sched.hyper), ""]
    out += ["### Metrics", ""]
    out += [f"- `{name}`: {doc}" for name, doc in ops.METRICS.items()]
    out += ["", END]
    return "\n".join(out)


def updated(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + generate() + tail


if __name__ == "__main__":
    text = DOC.read_text()
    new = updated(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    DOC.write_text(new)
    print(f"wrote {DOC}")
