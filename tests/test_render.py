"""Diagrams: golden DOT for every spec, real rendering through Graphviz `dot`, and drawings of
specs with errors.

Golden files live in tests/golden/dot/; `pytest --update-golden` rewrites them. Tests that run
the real `dot` are marked `dot` and fail (never skip) with the install command when it is
missing: CI installs Graphviz.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.backends import graphviz as gv
from nnspec.backends.graphviz import (
    MAX_VISIBLE_NODES,
    RenderError,
    RenderWarning,
    render,
    render_svg,
    to_dot,
)
from nnspec.frontend import analyze
from nnspec.ir import ops
from nnspec.ir.graph import Graph, Node
from nnspec.ir.types import TensorType
from nnspec.spec import load, load_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.nn"))
GOLDEN = Path(__file__).parent / "golden" / "dot"
ERRORS = sorted((Path(__file__).parent / "errors").glob("*.nn"))
NODE_LINE = re.compile(r'^\s*"([^"]+)" \[')


@pytest.fixture(autouse=True)
def _dot_binary(request):
    """Tests marked `dot` fail, never skip, when Graphviz is missing."""
    if request.node.get_closest_marker("dot") and shutil.which("dot") is None:
        pytest.fail("the Graphviz `dot` binary is missing; install it with "
                    "`apt-get install graphviz` (CI does)", pytrace=False)


@pytest.fixture(scope="module")
def specs():
    return {path.stem: load(path) for path in SPECS}


def boxes(dot: str) -> list[str]:
    """Ids of the drawn nodes (not edges, not the footer)."""
    return [m.group(1) for line in dot.splitlines() if " -> " not in line
            for m in [NODE_LINE.match(line)] if m and m.group(1) != "@train"]


def shown_layers(graph: Graph) -> list[str]:
    """IR layers a default drawing shows: not scalars, not `result`s (edges of their layer),
    not instances 1.. of a repeat."""
    repeats = [p for p, s in graph.scopes.items() if s.kind == "repeat"]
    out = []
    for node in graph.nodes:
        later = any(node.name.startswith(r + ".") and
                    node.name[len(r) + 1:].split(".")[0] != "0" for r in repeats)
        if node.op not in ("scalar", "result") and not later:
            out.append(node.name)
    return out


def svg_text(svg: str) -> str:
    """Every title, tooltip and text of an SVG (it must parse as XML)."""
    root = ET.fromstring(svg)
    parts = []
    for element in root.iter():
        parts.append(element.text or "")
        parts.extend(v for k, v in element.attrib.items() if k.endswith("title"))
    return "\n".join(parts)


def partial_graph(text: str, path: str = "<test>") -> tuple[Graph | None, tuple]:
    """What `nnspec render` draws of a spec with errors: the front end's partial graph."""
    analysis = analyze(text, path)
    return analysis.graph, analysis.diagnostics


# ---- golden DOT, determinism ------------------------------------------------------------


def test_there_are_specs_to_draw():
    assert len(SPECS) >= 3


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_dot_matches_golden(path, request):
    dot = to_dot(load(path))
    golden = GOLDEN / f"{path.stem}.dot"
    if request.config.getoption("--update-golden"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(dot, encoding="utf-8")
        return
    assert golden.exists(), f"no golden file for {path.name}: run `pytest --update-golden`"
    assert dot == golden.read_text(encoding="utf-8"), (
        f"DOT for {path.name} changed; if intended, run `pytest --update-golden` and review the diff")


def test_golden_files_have_specs():
    stale = sorted({p.stem for p in GOLDEN.glob("*.dot")} - {p.stem for p in SPECS})
    assert not stale, f"golden files without a spec: {stale}"


@pytest.mark.parametrize("options", [{}, {"detail": "full"}, {"depth": 1}, {"expand": True},
                                     {"direction": "LR", "detail": "min"}])
def test_same_spec_same_bytes(options):
    for path in SPECS:
        assert to_dot(load(path), **options) == to_dot(load(path), **options), path.name


def test_same_bytes_across_processes():
    """No set or dict order that depends on string hashing leaks into the DOT."""
    script = ("import sys; from nnspec.spec import load; from nnspec.backends.graphviz import to_dot;"
              "sys.stdout.write(to_dot(load(sys.argv[1]), expand=True))")
    outputs = {subprocess.run([sys.executable, "-c", script, str(ROOT / "specs" / "resnet18.nn")],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert len(outputs) == 1


def test_node_ids_are_ir_names_and_quoted(specs):
    graph = specs["resnet18"].graph
    dot = to_dot(graph)
    names = {n.name for n in graph.nodes}
    for node_id in boxes(dot):
        assert node_id in names or node_id.startswith("@"), node_id
    assert '"layer1.0.conv1" [' in dot


# ---- what a drawing shows -----------------------------------------------------------------


def test_layers_carry_op_key_attributes_and_params(specs):
    dot = to_dot(specs["resnet18"])
    assert "<B>conv2d</B> 64, 7×7, s2" in dot
    assert "<B>conv2d</B> 128, 1×1, s2" in dot
    assert "<B>maxpool</B> 3×3, s2" in dot
    assert "conv1 · 9.54k params" in dot  # conv 64*3*7*7 + its batchnorm 2*64
    assert "11,689,512 parameters" in dot


def test_edges_carry_shapes_with_a_batch_dim(specs):
    dot = to_dot(specs["resnet18"])
    assert 'label="  (B, 64, 112, 112)"' in dot
    assert 'label="  (B, 1000)"' in dot
    assert 'label="  int (B, 1024)"' in to_dot(specs["gpt2_small"])


def test_symbolic_dims_are_shown_by_name():
    dot = to_dot(load_text("model Seq {\n  input x: [T, 8]\n  x -> dense(4) -> relu\n}"))
    assert "(B, T, 8)" in dot and "(B, T, 4)" in dot


def test_inputs_and_outputs_are_their_own_nodes(specs):
    dot = to_dot(specs["bert_base"])
    assert '"tokens" [' in dot and '"segments" [' in dot
    assert '"@output" [' in dot and "<B>output</B>" in dot


def test_followers_fuse_into_one_box_unless_full_detail(specs):
    spec = specs["resnet18"]
    normal, full = to_dot(spec), to_dot(spec, detail="full")
    assert '"bn1" [' not in normal and "batchnorm" in normal
    assert '"bn1" [' in full and '"relu_1" [' in full
    assert len(boxes(full)) > len(boxes(normal))


def test_every_op_family_has_a_colour():
    families = {d.family for d in ops.OPS.values()}
    assert families <= set(gv.FAMILY_STYLES), families - set(gv.FAMILY_STYLES)


def _example_value(attr: ops.Attr):
    if attr.default is not ops.REQUIRED:
        return attr.default
    if attr.choices:
        return attr.choices[0]
    return {"int": 3, "float": 0.5, "bool": True, "ints": 3, "padding": 1, "floats": (0.5,),
            "str": "x"}.get(attr.kind)


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_every_op_of_the_catalogue_has_a_label(name):
    opdef = ops.OPS[name]
    attrs = ops.Attrs((a.name, _example_value(a)) for a in opdef.attrs)
    node = Node("n", name, (), attrs, TensorType((3, 8, 8)), None)
    op, _ = gv.op_text(node)
    assert op


def test_colour_per_family_and_legend(specs):
    dot = to_dot(specs["gpt2_small"])
    fill, line, _ = gv.FAMILY_STYLES["attention"]
    assert f'fillcolor="{fill}", color="{line}"' in dot
    for legend in ("attention", "normalisation", "embedding", "residual"):
        assert f">{legend}</FONT>" in dot or f"> {legend}</FONT>" in dot


def test_residual_edges_read_clearly(specs):
    dot = to_dot(specs["resnet18"])
    skips = [line for line in dot.splitlines() if gv.SKIP_EDGE in line and " -> " in line]
    # identity shortcut: the block's input straight into the `+`
    assert any('"maxpool_1" -> "layer1.0.add_1"' in line for line in skips)
    # projection shortcut: the whole 1x1 conv path is coloured
    assert any('-> "layer2.0.downsample.0"' in line for line in skips)
    assert any('"layer2.0.downsample.0" -> "layer2.0.add_1"' in line for line in skips)
    assert '"layer1.0.add_1" [label="+"' in dot


def edge_lines(dot: str, src: str, dst: str) -> list[str]:
    return [line for line in dot.splitlines() if f'"{src}" -> "{dst}"' in line]


def test_recurrent_states_are_named_edges_of_the_recurrent_box(specs):
    graph = specs["seq2seq"].graph
    dot = to_dot(graph)
    results = [n.name for n in graph.nodes if n.op == "result"]
    assert results and not set(results) & set(boxes(dot))  # no `result` boxes
    assert "<B>result</B>" not in dot
    encoder = next(n.name for n in graph.nodes if n.op == "lstm" and n.name != "decoder")
    h_n, c_n = (f'label="  {port} (B, 1, 128)"' for port in ("h_n", "c_n"))
    into_decoder = edge_lines(dot, encoder, "decoder")
    assert len(into_decoder) == 2
    assert any(h_n in line for line in into_decoder) and any(c_n in line for line in into_decoder)
    # the sequence output goes on to the cross-attention unnamed, with its shape
    assert any('label="  (B, 8, 128)"' in line
               for line in edge_lines(dot, encoder, "cross_attention"))
    # in minimal detail the shapes go, the names stay
    minimal = to_dot(graph, detail="min")
    assert {line.split("label=")[1][:7] for line in edge_lines(minimal, encoder, "decoder")} == \
        {'"  h_n"', '"  c_n"'}


def test_a_state_given_as_an_output_is_named_on_its_output_edge():
    dot = to_dot(load_text("""
model Enc {
  input x: [5, 3]
  out, h = x -> gru(4, states = true)
  out, h
}"""))
    assert '"@output2" [label=<' in dot and "<B>h</B>" in dot
    assert any('label="  h_n (B, 1, 4)"' in line for line in edge_lines(dot, "gru_1", "@output2"))
    assert any('label="  (B, 5, 4)"' in line for line in edge_lines(dot, "gru_1", "@output"))


MASKED = """
model Masked(vocab = 50, d = 16) {
  input tokens: int[6]
  input src: int[5]
  input scores: [6, 5]
  memory = src -> embedding(vocab, d)
  h = tokens -> embedding(vocab, d)
  h -> attention(memory, 4, key_padding_mask = src == 0, attn_mask = scores > 0.5) as cross
}
"""


def test_masks_are_edges_named_by_their_keyword():
    dot = to_dot(load_text(MASKED))
    into = [line for line in dot.splitlines() if '-> "cross"' in line]
    assert len(into) == 4  # queries, keys/values, two masks
    assert sum('label="  key_padding_mask bool (B, 5)"' in line for line in into) == 1
    assert sum('label="  attn_mask bool (B, 6, 5)"' in line for line in into) == 1
    assert "<B>· = 0</B>" in dot and "<B>· &gt; 0.5</B>" in dot


def test_noise_reads_only_a_shape_and_makes_no_residual(specs):
    dot = to_dot(specs["vae"])
    noise = [line for line in dot.splitlines() if '-> "noise_1"' in line]
    assert len(noise) == 1 and 'style="dotted"' in noise[0]
    assert gv.SKIP_EDGE not in "\n".join(line for line in dot.splitlines() if " -> " in line)
    # a real shortcut is still one: seq2seq's decoder output joins its attended context
    assert any(gv.SKIP_EDGE in line for line in edge_lines(to_dot(specs["seq2seq"]), "decoder",
                                                           "concat_1"))


def test_subscripts_read_as_the_spec_writes_them():
    dot = to_dot(load_text("""
model Sub {
  input x: [6, 8]
  x[0] + x[-1] + (x[1:3, ::2] -> flatten) + x[..., :16 - 8][2]
}"""))
    for text in ("[0]", "[-1]", "[1:3]", "[:, ::2]", "[..., :8]"):
        assert f"<B>select</B> {text}" in dot or f"<B>slice</B> {text}" in dot, text


def test_blocks_are_labelled_clusters(specs):
    dot = to_dot(specs["resnet18"])
    assert 'subgraph "cluster_layer2" {' in dot and 'subgraph "cluster_layer2.0" {' in dot
    assert "<B>BasicBlock</B>" in dot and "<B>seq</B>" in dot


def test_depth_folds_blocks_into_single_nodes(specs):
    spec = specs["resnet18"]
    one = to_dot(spec, depth=1)
    assert {"layer1", "layer2", "layer3", "layer4"} <= set(boxes(one))
    assert "cluster_" not in one
    two = to_dot(spec, depth=2)
    assert 'subgraph "cluster_layer1" {' in two and '"layer1.0" [' in two
    assert "cluster_layer1.0" not in two
    assert len(boxes(one)) < len(boxes(two)) < len(boxes(to_dot(spec)))


def test_repeats_are_drawn_once_marked_xN(specs):
    spec = specs["gpt2_small"]
    dot = to_dot(spec)
    assert "<B>Block ×12</B>" in dot
    assert '"h.0.attn" [' in dot and '"h.1.attn" [' not in dot
    assert '"h.0.add_2" -> "h.0.ln_1"' not in dot  # the loop that xN stands for
    expanded = to_dot(spec, expand=True)
    assert '"h.11.attn" [' in expanded and "cluster_h.11" in expanded
    folded = to_dot(spec, depth=1)
    assert '"h" [' in folded and "<B>Block ×12</B>" in folded


VGG_STAGES = """
block Convs(channels, n) {
  input x: [C, H, W]
  x -> repeat(n, conv2d(channels, 3, padding = 1) -> relu) as convs -> maxpool(2)
}
model VGG(classes = 10) {
  input image: [3, 32, 32]
  image -> Convs(64, 2) -> Convs(128, 3) -> flatten -> dense(classes)
}
"""


def test_a_repeat_of_one_box_is_that_box_marked_xN():
    dot = to_dot(load_text(VGG_STAGES))
    assert "<B>×3</B>" in dot and "<B>×2</B>" in dot
    assert "cluster_convs_1.convs" not in dot


def test_scalars_fold_into_their_consumer():
    spec = load_text("""
model Scaled {
  input x: [4]
  h = x -> dense(4)
  0.5 * h - 1
}""")
    dot = to_dot(spec)
    assert "scalar" not in dot
    assert "<B>× 0.5</B>" in dot and "<B>· − 1</B>" in dot
    assert not any(n.startswith("scalar") for n in boxes(dot))


def test_train_section_is_a_footer(specs):
    dot = to_dot(specs["digits_cnn"])
    assert '"@train" [' in dot
    assert "<B>loss</B> cross_entropy(label_smoothing=0.05)" in dot
    assert "<B>optimizer</B> adamw(lr=0.002, weight_decay=0.0001)" in dot
    assert "<B>schedule</B> cosine" in dot
    assert '"@train"' not in to_dot(specs["resnet18"])  # no train section


def test_tall_networks_wrap_into_columns_joined_by_connectors(specs):
    dot = to_dot(specs["resnet18"])
    assert '"@A.out" [' in dot and '"@A.in" [' in dot
    assert '"@A.in" -> "layer2.0.conv1"' in dot
    assert '"@A.out"' not in to_dot(specs["gpt2_small"])  # short enough for one column


def test_options_are_checked(specs):
    spec = specs["digits_mlp"]
    for bad in ({"direction": "BT"}, {"detail": "max"}, {"depth": 0}):
        with pytest.raises(ValueError):
            to_dot(spec, **bad)


# ---- graphs with errors -------------------------------------------------------------------

BROKEN = """
block Res(c) {
  input x: [C, H, W]
  x + (x -> conv2d(c, 3, padding = 1) -> relu)
}

model Broken(classes = 10) {
  input image: [3, 32, 32]
  image -> conv2d(16, 3) -> Res(32) as res
        -> flatten -> dense(classes) -> softmax
}
"""


def test_the_failing_layer_is_red_with_its_error_as_label():
    graph, diagnostics = partial_graph(BROKEN)
    assert diagnostics and graph.node("res.add_1").error
    dot = to_dot(graph)
    failed = next(line for line in dot.splitlines() if line.strip().startswith('"res.add_1" ['))
    assert gv.ERROR_LINE in failed and gv.ERROR_FILL in failed
    assert "cannot combine [16, 30, 30] and [32, 30, 30]" in failed.replace("<BR/>", " ")
    later = next(line for line in dot.splitlines() if line.strip().startswith('"dense_1" ['))
    assert "not checked" in later and "dashed" in later
    assert 'label="  ?"' in dot  # unknown shapes after the failure


@pytest.mark.dot
def test_a_graph_with_errors_renders(tmp_path):
    graph, _ = partial_graph(BROKEN)
    svg = svg_text(render_svg(graph))
    assert "cannot combine" in svg and "res.add_1" in svg


@pytest.mark.dot
def test_every_broken_spec_of_the_error_corpus_still_draws():
    drawn = 0
    for path in ERRORS:
        graph, _ = partial_graph(path.read_text(encoding="utf-8"), str(path))
        if graph is None:
            continue  # nothing to draw: a syntax error, no model, an expression nested too deep
        ET.fromstring(gv.pipe(to_dot(graph), "svg"))
        drawn += 1
    assert drawn >= len(ERRORS) // 3


# ---- big graphs -----------------------------------------------------------------------------


@pytest.mark.dot
def test_thousands_of_layers_are_folded_with_a_warning():
    body = " -> ".join(["dense(8) -> relu"] * 1500)
    spec = load_text(f"model Deep {{\n  input x: [8]\n  x -> {body}\n}}")
    with pytest.warns(RenderWarning, match="too many"):
        dot = to_dot(spec)
    assert len(boxes(dot)) <= MAX_VISIBLE_NODES + 100  # connectors come on top
    assert "layers</B>" in dot
    start = time.perf_counter()
    gv.pipe(dot, "svg")
    assert time.perf_counter() - start < 10


@pytest.mark.dot
def test_an_input_feeding_hundreds_of_far_layers_is_drawn_through_connectors_quickly():
    # every edge from x crossed every rank between: `dot` spun for minutes on 500 of them
    steps = "\n".join(f"  h{i} = h{i - 1} + x" for i in range(1, 300))
    spec = load_text(f"model Fan {{\n  input x: [4]\n  h0 = x -> dense(4)\n{steps}\n  h299\n}}")
    dot = to_dot(spec)
    arrivals = set(re.findall(r'"(@[A-Z0-9]+\.in\d*)" \[', dot))
    assert len(arrivals) > 200
    for i in range(1, 300):  # each sum still has both its inputs
        assert len(re.findall(rf'-> "add_{i}" ', dot)) == 2
    start = time.perf_counter()
    gv.pipe(dot, "svg")
    assert time.perf_counter() - start < 10


def test_expanded_repeats_fold_by_depth_first():
    spec = load_text("""
block B(d) {
  input x: [d]
  x + (x -> dense(d) -> relu -> dense(d))
}
model Wide {
  input x: [8]
  x -> repeat(500, B(8)) as blocks -> dense(2)
}""")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_dot(spec)  # drawn once, marked x500: no warning
    with pytest.warns(RenderWarning, match="folded from depth"):
        dot = to_dot(spec, expand=True)
    assert len(boxes(dot)) <= MAX_VISIBLE_NODES


# ---- rendering through dot -------------------------------------------------------------------


@pytest.mark.dot
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_renders_to_svg_naming_every_layer(path, tmp_path):
    spec = load(path)
    out = render(spec, tmp_path / f"{path.stem}.svg")
    text = svg_text(out.read_text(encoding="utf-8"))
    missing = [name for name in shown_layers(spec.graph) if name not in text]
    assert not missing, f"{path.name}: layers not named in the SVG: {missing}"


@pytest.mark.dot
@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_every_spec_renders_to_png_and_pdf(fmt, magic, tmp_path):
    for path in SPECS:
        out = render(load(path), tmp_path / f"{path.stem}.{fmt}")
        assert out.read_bytes().startswith(magic), path.name


@pytest.mark.dot
@pytest.mark.parametrize("name", ["resnet18", "gpt2_small"])
def test_big_architectures_render_in_under_two_seconds(name, tmp_path):
    start = time.perf_counter()
    render(load(ROOT / "specs" / f"{name}.nn"), tmp_path / f"{name}.svg")
    assert time.perf_counter() - start < 2.0


@pytest.mark.dot
@pytest.mark.parametrize("name", ["resnet18", "gpt2_small"])
def test_big_architectures_fit_one_page(name, specs):
    svg = render_svg(specs[name])
    width, height = (int(v) for v in re.search(r'width="(\d+)pt" height="(\d+)pt"', svg).groups())
    assert width <= 17 * 72 and height <= 17 * 72, (width / 72, height / 72)  # inches


def test_dot_format_needs_no_graphviz(specs, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    out = render(specs["digits_mlp"], tmp_path / "mlp.dot")
    assert out.read_text(encoding="utf-8") == to_dot(specs["digits_mlp"])
    assert render(specs["digits_mlp"], tmp_path / "mlp.gv").exists()


def test_missing_dot_is_a_clear_error(specs, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RenderError, match="apt-get install graphviz"):
        render(specs["digits_mlp"], tmp_path / "mlp.svg")


def test_format_follows_the_suffix_unless_given(specs, tmp_path):
    assert gv.format_for("a/b.SVG") == "svg"
    assert gv.format_for("model.out", "pdf") == "pdf"
    with pytest.raises(RenderError, match="cannot write"):
        render(specs["digits_mlp"], tmp_path / "mlp.jpeg")


@pytest.mark.dot
def test_a_loaded_spec_shows_its_diagram_in_notebooks(specs):
    svg = specs["digits_mlp"]._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "DigitsMLP" in svg_text(svg)


@pytest.mark.dot
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(SPECS), depth=st.sampled_from([None, 1, 2, 3]),
       direction=st.sampled_from(gv.DIRECTIONS), detail=st.sampled_from(gv.DETAILS),
       expand=st.booleans())
def test_every_option_combination_gives_dot_that_dot_accepts(path, depth, direction, detail,
                                                             expand):
    dot = to_dot(load(path), depth=depth, direction=direction, detail=detail, expand=expand)
    ET.fromstring(gv.pipe(dot, "svg"))


# ---- hostile lengths: any name gives DOT that `dot` accepts -------------------------------------

LONG = "n" * 1_000_000


@pytest.mark.dot
def test_long_names_give_short_unique_ids_that_dot_accepts():
    a, b = LONG[:300] + "a", LONG[:300] + "b"  # the same first 300 characters
    spec = load_text(f"model {LONG.upper()} {{\n  input {LONG}: [4]\n"
                     f"  {LONG} -> dense(4) as {a} -> dense(4) as {b}\n}}")
    dot = to_dot(spec)
    ids = boxes(dot)
    assert len(ids) == len(set(ids)) == 4  # input, two layers, output
    assert all(len(i) <= 200 for i in ids)
    assert len(dot) < 20_000
    titles = [t.text for t in ET.fromstring(gv.pipe(dot, "svg")).iter("{http://www.w3.org/2000/svg}title")]
    nodes = [t for t in titles if "->" not in t and t.startswith("n" * 100)]
    assert len(nodes) == len(set(nodes)) == 3


def test_label_text_is_clipped_with_an_ellipsis():
    block, dim = "B" * 1_000_000, "T" * 1_000_000
    spec = load_text(f"block {block}(d) {{\n  input x: [T, d]\n  x -> dense(d) -> relu\n}}\n"
                     f"model M {{\n  input x: [{dim}, 4]\n  x -> {block}(4)\n}}")
    dot = to_dot(spec, detail="full")
    texts = re.findall(r'>([^<>"\n]+)<', dot)  # the text of every HTML-like label
    assert max(len(t) for t in texts) <= 80
    assert "B" * 79 + "…" in dot and "T" * 20 in dot
    assert len(dot) < 20_000


def test_a_long_error_stays_a_few_lines_in_its_box():
    graph, _ = partial_graph(f"model M {{\n  input x: [{'T' * 1_000_000}]\n  x -> conv2d(4, 3)\n}}")
    failed = next(line for line in to_dot(graph).splitlines() if gv.ERROR_LINE in line
                  and "conv2d" in line)
    error = re.search(rf'COLOR="{gv.style.ERROR_TEXT}">(.*?)</FONT>', failed).group(1)
    assert "conv2d expects" in error and error.endswith("…")
    assert error.count("<BR/>") <= 6


def test_fused_followers_beyond_four_are_counted():
    spec = load_text("model M {\n  input x: [4]\n  x -> dense(4)" + " -> relu" * 3000 + "\n}")
    dot = to_dot(spec)
    assert "… 2996 more" in dot
    assert len(dot) < 20_000


# ---- where a diagram is written ---------------------------------------------------------------


def test_stdout_and_devices_get_svg_unless_a_format_is_given():
    assert gv.format_for("-") == "svg" and gv.format_for("-", "dot") == "dot"
    assert gv.format_for(os.devnull) == "svg"
    with pytest.raises(RenderError, match="output name is empty"):
        gv.format_for("")


def test_a_device_is_written_into_and_a_file_replaced(specs, tmp_path):
    render(specs["digits_mlp"], os.devnull, "dot")
    assert Path(os.devnull).is_char_device()
    out = tmp_path / "m.dot"
    out.write_text("old")
    link = tmp_path / "link.dot"
    link.symlink_to(out)
    render(specs["digits_mlp"], link)
    assert link.is_symlink() and out.read_text(encoding="utf-8") == to_dot(specs["digits_mlp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.dot", "m.dot"]  # no partials


def test_unwritable_places_raise_render_error(specs, tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = {tmp_path / "afile" / "m.dot": "afile is a file, not a folder",
             tmp_path: "it is a folder",
             Path("/proc/m.dot"): "cannot create a file in /proc"}
    for where, message in cases.items():
        with pytest.raises(RenderError, match=re.escape(message)):
            render(specs["digits_mlp"], where, "dot")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    """A file-size limit makes the write fail half way, as a full disk would."""
    out = tmp_path / "m.dot"
    out.write_text("the diagram from before")
    script = ("import resource, signal, sys; from nnspec.spec import load;"
              "from nnspec.backends.graphviz import RenderError, render;"
              "spec = load(sys.argv[1]);"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000));\n"
              "try: render(spec, sys.argv[2])\n"
              "except RenderError as err: print(err)")
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "specs" / "resnet18.nn"),
                             str(out)], capture_output=True, text=True, check=True)
    assert result.stdout.startswith(f"cannot write {out}: File too large"), result.stdout
    assert out.read_text() == "the diagram from before"
    assert [p.name for p in tmp_path.iterdir()] == ["m.dot"]


def _fake_dot(folder, script: str):
    dot = folder / "dot"
    dot.write_text("#!/bin/sh\n" + script + "\n")
    dot.chmod(0o755)


def test_a_dot_that_never_finishes_is_stopped_and_reported(tmp_path, monkeypatch):
    _fake_dot(tmp_path, "exec sleep 30")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(RenderError, match="did not finish drawing in 0.5 s"):
        gv.pipe("digraph {}", "svg", seconds=0.5)


def test_a_dot_that_hangs_once_is_run_again(tmp_path, monkeypatch):
    # the first run spins (as Graphviz was seen to in a busy test run); the second draws
    marker = tmp_path / "ran"
    _fake_dot(tmp_path, f'if [ -e {marker} ]; then cat; else touch {marker}; exec sleep 30; fi')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert gv.pipe("digraph {}", "svg", seconds=0.5) == b"digraph {}"
