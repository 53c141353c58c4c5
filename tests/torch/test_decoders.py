"""Decoder layers as the language gives them: shapes, parameters and MACs are torch's, the
example specs have the published sizes, and the generated code agrees with the interpreter
for every pooling and resampling option (torch as the oracle throughout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.cli import main
from nnspec.diagnostics import SpecError
from nnspec.spec import load, load_text
from nnspec.summary import summarize
from tests.torch.test_codegen import _compare_with_interpreter

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.torch
SPECS = Path(__file__).resolve().parents[2] / "specs"


def _model(shape: str, body: str):
    return load_text(f"model M {{\n  input x: {shape}\n  x -> {body}\n}}\n", "m.nn").graph


def _flops_macs(module, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


# --- transposed convolution: torch's shape rule, weight layout and MACs ------------------------


@st.composite
def transposed(draw):
    nd = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    return {
        "nd": nd, "groups": groups, "stride": stride, "dilation": dilation,
        "channels": groups * draw(st.integers(1, 3)), "in": groups * draw(st.integers(1, 3)),
        "kernel": draw(st.integers(1, 4)), "padding": draw(st.integers(0, 1)),
        "output_padding": draw(st.integers(0, max(stride, dilation) - 1)),
        "size": draw(st.integers(2, 6)), "bias": draw(st.booleans()),
    }


@settings(max_examples=25, deadline=None)
@given(transposed())
def test_conv_transpose_shape_parameters_and_macs_are_torchs(case):
    nd = case["nd"]
    module = getattr(nn, f"ConvTranspose{nd}d")(
        case["in"], case["channels"], case["kernel"], stride=case["stride"],
        padding=case["padding"], output_padding=case["output_padding"], groups=case["groups"],
        bias=case["bias"], dilation=case["dilation"])
    x = torch.zeros(1, case["in"], *[case["size"]] * nd)
    body = (f"conv_transpose{nd}d({case['channels']}, {case['kernel']}, stride = {case['stride']}, "
            f"padding = {case['padding']}, output_padding = {case['output_padding']}, "
            f"dilation = {case['dilation']}, groups = {case['groups']}, "
            f"bias = {str(case['bias']).lower()})")
    shape = str([case["in"]] + [case["size"]] * nd)
    try:
        expected = module(x)
    except RuntimeError as error:  # "Output size is too small": the same size rule refuses
        assert "too small" in str(error)
        expected = None
    if expected is None or 0 in expected.shape:  # torch sometimes gives an empty tensor
        with pytest.raises(SpecError) as refused:
            _model(shape, body)
        assert refused.value.diagnostics[0].code == "E304"
        return
    graph = _model(shape, body)
    node = graph.nodes[-1]
    assert list(node.type.shape) == list(expected.shape[1:])
    assert {local: list(graph.params[full].spec.shape) for local, full in node.params.items()} \
        == {name: list(p.shape) for name, p in module.named_parameters()}
    assert summarize(graph).macs == _flops_macs(module, x)


def test_ceil_mode_pooling_gives_torchs_sizes():
    for size, kernel, stride, padding in [(55, 3, 2, 0), (8, 3, 2, 1), (7, 2, 2, 0), (6, 3, 3, 1)]:
        expected = nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)(
            torch.zeros(1, 1, size, size))
        graph = _model(f"[1, {size}, {size}]",
                       f"maxpool({kernel}, stride = {stride}, padding = {padding}, "
                       "ceil_mode = true)")
        assert list(graph.nodes[-1].type.shape) == list(expected.shape[1:])


@pytest.mark.parametrize("body, shape", [
    ("upsample(2)", (3, 5, 7)), ("upsample(1.5, mode = \"linear\")", (3, 5)),
    ("upsample(size = [9, 4], mode = \"bilinear\", align_corners = true)", (3, 5, 7)),
    ("upsample(0.5)", (2, 9, 8)),
    ("upsample([2, 3])", (3, 5, 7)), ("upsample(scale_factor = [1.5, 0.5], mode = \"bilinear\")",
                                       (2, 6, 9)),
])
def test_upsample_gives_nn_upsamples_sizes(body, shape):
    graph = _model(str(list(shape)), body)
    a = graph.nodes[-1].attrs
    module = nn.Upsample(size=a.size, scale_factor=a.scale_factor, mode=a.mode,
                         align_corners=a.align_corners if a.mode != "nearest" else None)
    assert list(graph.nodes[-1].type.shape) == list(module(torch.zeros(1, *shape)).shape[1:])


def test_norm_parameters_and_buffers_are_torchs():
    graph = _model("[6, 4, 4]", "groupnorm(3) -> instancenorm(affine = true, "
                   "track_running_stats = true)")
    ours = {name: list(p.spec.shape) for name, p in graph.params.items()}
    theirs = {f"groupnorm_1.{k}": list(v.shape) for k, v in nn.GroupNorm(3, 6).state_dict().items()}
    theirs |= {f"instancenorm_1.{k}": list(v.shape) for k, v in nn.InstanceNorm2d(
        6, affine=True, track_running_stats=True).state_dict().items()}
    assert ours == theirs


# --- every option through both backends ----------------------------------------------------------

OPTIONS = {
    "maxpool_ceil": ("[3, 7, 8]", "maxpool(3, stride = 2, ceil_mode = true)"),
    "maxpool1d_ceil_padding": ("[3, 10]", "maxpool1d(3, stride = 2, padding = 1, ceil_mode = true)"),
    "avgpool_ceil_exclude_pad": ("[3, 7, 8]",
                                 "avgpool(3, 2, 1, ceil_mode = true, count_include_pad = false)"),
    "avgpool2d_exclude_pad": ("[3, 6, 6]", "avgpool2d(3, 2, 1, count_include_pad = false)"),
    "upsample_bilinear_corners": ("[2, 3, 4]",
                                  "upsample(size = [5, 7], mode = \"bilinear\", align_corners = true)"),
    "adaptive_maxpool1d": ("[3, 10]", "adaptive_maxpool(4)"),
    "upsample_nearest_size": ("[3, 5]", "upsample(size = 8)"),
    "upsample_linear": ("[3, 5]", "upsample(2.5, mode = \"linear\")"),
    "upsample_bilinear": ("[2, 4, 3]", "upsample(2, mode = \"bilinear\")"),
    "upsample_nearest_per_axis": ("[2, 3, 4]", "upsample([2, 3])"),
    "upsample_bilinear_per_axis": ("[2, 4, 3]", "upsample([1.5, 2], mode = \"bilinear\")"),
    "upsample_bilinear_size_per_axis": ("[2, 4, 3]",
                                        "upsample(size = [6, 9], mode = \"bilinear\")"),
    "conv_transpose_no_bias": ("[4, 3, 3]", "conv_transpose2d(2, 3, stride = 3, bias = false)"),
    "groupnorm_no_affine": ("[4, 5]", "groupnorm(2, affine = false, eps = 0.001)"),
    "instancenorm_1d": ("[3, 6]", "instancenorm(eps = 0.01)"),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_option_matches_the_interpreter(name):
    shape, body = OPTIONS[name]
    _compare_with_interpreter(load_text(f"model Op {{\n  input x: {shape}\n  x -> {body} -> tanh"
                                        "\n}\n", f"{name}.nn"))


@pytest.mark.parametrize("body, message", [
    ("upsample([2, 3, 4])", "needs 2 values here (one per spatial dim), got 3"),
    ("upsample(scale_factor = [])", "must be a number or a list of numbers"),
    ("upsample([2, true])", "must be a number or a list of numbers"),
    ("upsample([2, 0.1])", "turns a size of 4 into 0"),
])
def test_a_wrong_per_axis_scale_is_a_diagnostic(body, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _model("[2, 5, 4]", body)


def test_a_shared_table_goes_through_upsample_as_a_batch_of_one():
    text = ("model U {\n  input x: [4, 12]\n"
            "  x + (sinusoidal(4, 6) -> upsample(2) -> conv_transpose1d(4, 1))\n}\n")
    _compare_with_interpreter(load_text(text, "u.nn"))


# --- the example specs -----------------------------------------------------------------------------


def _summary(path: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["summary", str(path), *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_unet_has_ronnebergers_31_030_658_parameters():
    assert _summary(SPECS / "unet.nn")["total_params"] == 31_030_658


def test_small_unet_runs_both_backends_alike():
    _compare_with_interpreter(load(SPECS / "unet.nn", overrides={"base": 2, "size": 16}))


def _dcgan_reference():
    """The generator and discriminator of pytorch/examples dcgan/main.py (nz 100, ngf 64,
    ndf 64, nc 3)."""
    nz, ngf, ndf, nc = 100, 64, 64, 3
    generator = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    discriminator = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())
    return {"Generator": (generator, (1, nz, 1, 1)), "Discriminator": (discriminator,
                                                                       (1, nc, 64, 64))}


@pytest.mark.parametrize("model", ["Generator", "Discriminator"])
def test_dcgan_matches_the_pytorch_example(model):
    reference, input_shape = _dcgan_reference()[model]
    expected = sum(p.numel() for p in reference.parameters())
    if model == "Generator":
        assert expected == 3_576_704
    data = _summary(SPECS / "dcgan.nn", "--model", model)
    assert data["total_params"] == expected
    spec = load(SPECS / "dcgan.nn", model=model)
    # the same tensors in the same order: a state_dict moves across by position
    assert [list(p.spec.shape) for p in spec.graph.params.values()] == \
        [list(v.shape) for v in reference.state_dict().values()]
    assert data["macs"] == _flops_macs(reference, torch.zeros(input_shape))
    small = load(SPECS / "dcgan.nn", model=model,
                 overrides={"ngf": 4} if model == "Generator" else {"ndf": 4})
    _compare_with_interpreter(small)


SQUEEZENET = """
block Fire(squeeze, expand) {
  input x: [C, H, W]
  s = x -> conv2d(squeeze, 1) as squeeze -> relu
  concat(s -> conv2d(expand, 1) as expand1x1 -> relu,
         s -> conv2d(expand, 3, padding = 1) as expand3x3 -> relu, dim = 0)
}
model SqueezeNet {
  input image: [3, 224, 224]
  image -> conv2d(96, 7, stride = 2) -> relu -> maxpool(3, stride = 2, ceil_mode = true)
        -> Fire(16, 64) -> Fire(16, 64) -> Fire(32, 128)
        -> maxpool(3, stride = 2, ceil_mode = true)
        -> Fire(32, 128) -> Fire(48, 192) -> Fire(48, 192) -> Fire(64, 256)
        -> maxpool(3, stride = 2, ceil_mode = true)
        -> Fire(64, 256) -> dropout(0.5) -> conv2d(1000, 1) -> relu -> global_avgpool
}
"""


def test_squeezenet_with_ceil_mode_gives_torchvisions_macs():
    """torchvision's squeezenet1_0: 1,248,424 parameters and 0.82 GFLOPS (819M MACs)."""
    graph = load_text(SQUEEZENET, "squeezenet.nn").graph
    s = summarize(graph)
    assert s.total_params == 1_248_424
    assert round(s.macs / 1e6) == 819
