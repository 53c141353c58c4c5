"""An op is its catalogue entry plus its kernel: the backends derive the rest from its traits.

Four toy ops are defined here, in the test module, from nothing but an `OpDef` and a NumPy
kernel: an elementwise `toy_softsign`, a module op with a weight, `toy_rmsnorm`,
`toy_add`, whose second operand is a tensor keyword (as attention's masks are), and a loss,
`toy_soft_margin`. Once registered they check and summarise, run and differentiate in the
interpreter, generate PyTorch code that gives the interpreter's outputs and gradients (the
loss: trains alike through both backends), draw in a diagram and appear in the generated
reference. The coverage tests fail when any op of the catalogue lacks a
NumPy rule, a torch emission or a diagram label, or has traits its backends cannot use.
"""

from __future__ import annotations

import importlib.util
import string
import types
from pathlib import Path

import numpy as np
import pytest

from nnspec.backends import graphviz as gv
from nnspec.backends.numpy.gradcheck import check_gradients
from nnspec.backends.numpy.model import NumpyModel
from nnspec.backends.numpy.rules import RULES
from nnspec.backends.numpy.rules_layers import sinusoidal_table
from nnspec.backends.torch import generate
from nnspec.backends.torch.emit import FORWARD, INIT
from nnspec.ir import ops
from nnspec.ir.graph import Node
from nnspec.ir.types import TensorType
from nnspec.spec import load_text
from nnspec.summary import render_table, summarize

ROOT = Path(__file__).resolve().parent.parent

# ---- the toy ops: a catalogue entry and a kernel each ---------------------------------------


def toy_softsign(x):
    """x / (1 + |x|); backward gives (dx,)."""
    denominator = 1 + np.abs(x)
    out = x / denominator

    def backward(dy):
        return (dy / (denominator * denominator),)

    return out, backward


def toy_rmsnorm(x, weight, *, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; backward gives (dx, dweight)."""
    inv_rms = 1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    x_hat = x * inv_rms
    out = x_hat * weight

    def backward(dy):
        d_weight = (dy * x_hat).reshape(-1, x.shape[-1]).sum(axis=0)
        g = dy * weight
        dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
        return dx, d_weight

    return out, backward


def toy_add(x, *, other):
    """x + other, `other` a tensor keyword; backward gives (dx, d_other)."""
    out = x if other is None else x + other

    def backward(dy):
        return dy, None if other is None else dy

    return out, backward


def toy_soft_margin(pred, target, *, reduction):
    """log(1 + exp(-target * pred)) per element (F.soft_margin_loss), reduced; backward
    gives (d_pred, d_target)."""
    margin = -target * pred
    per_element = np.logaddexp(0, margin)
    if reduction == "none":
        loss, share = per_element, lambda d: d
    else:
        count = per_element.size if reduction == "mean" else 1
        loss = np.asarray(per_element.sum() / count, pred.dtype)
        share = lambda d: np.full_like(per_element, d / count)
    sigmoid = 1 / (1 + np.exp(-margin))

    def backward(d_loss):
        g = share(d_loss) * sigmoid
        return (-target * g).astype(pred.dtype), (-pred * g).astype(target.dtype)

    return loss.astype(pred.dtype), backward


def _same_shape(ins, a):
    return ins[0]


def _scalar_loss(ins, a):
    pred, target = ins
    if target.shape != pred.shape:
        raise ops.ShapeError(f"the target {target} does not match the prediction {pred}")
    return pred if a.reduction == "none" else TensorType((), "float32", batched=False)


SOFTSIGN = ops.OpDef(
    "toy_softsign", "activation", "x / (1 + |x|)", _same_shape,
    torch=ops.Torch("F.softsign"), kernel=f"{__name__}:toy_softsign")

RMSNORM = ops.OpDef(
    "toy_rmsnorm", "norm", "RMS normalisation over the last dim (torch.nn.RMSNorm).",
    _same_shape, (ops.Attr("eps", "float", doc="added to the mean square", minimum=0.0),),
    params=lambda ins, a: {"weight": ops.ParamSpec((ins[0].shape[-1],), "ones")},
    torch=ops.Torch("nn.RMSNorm", ("normalized_shape=input[-1]",), ("eps",)),
    kernel=f"{__name__}:toy_rmsnorm")

ADD = ops.OpDef(
    "toy_add", "math", "x + other, the second operand a tensor keyword.", _same_shape,
    (ops.Attr("other", "tensor", None, "a tensor the shape of x"),),
    torch=ops.Torch("torch.add"), kernel=f"{__name__}:toy_add")

SOFT_MARGIN = ops.OpDef(
    "toy_soft_margin", "loss", "Two-class logistic loss of targets -1 or 1.", _scalar_loss,
    (ops.Attr("reduction", "str", "mean", choices=("mean", "sum", "none")),), arity=(2, 2),
    torch=ops.Torch("F.soft_margin_loss", keywords=("reduction",)),
    kernel=f"{__name__}:toy_soft_margin")

TOYS = {
    "toy_softsign": (SOFTSIGN, "[4, 6]", "x * 3.0 -> toy_softsign", "return F.softsign(x)"),
    "toy_rmsnorm": (RMSNORM, "[5, 6]", "x -> toy_rmsnorm(1e-3) -> dense(3)",
                    "self.toy_rmsnorm_1 = nn.RMSNorm(6, eps=0.001)"),
    "toy_add": (ADD, "[4, 6]", "y = x * x\n  x -> toy_add(other = y) -> tanh",
                "torch.add(x, other=h)"),
}


@pytest.fixture(params=sorted(TOYS))
def toy(request):
    opdef, shape, body, code = TOYS[request.param]
    with ops.registered(opdef):
        spec = load_text(f"model Toy {{\n  input x: {shape}\n  {body}\n}}\n", "toy.nn")
        yield types.SimpleNamespace(opdef=opdef, spec=spec, code=code)
    assert ops.lookup(opdef.name) is None


def _both_backends(spec, seed: int = 0):
    """The generated module with the interpreter's weights gives the interpreter's outputs
    and gradients of sum(out * d) (float32, eval mode)."""
    torch = pytest.importorskip("torch")
    reference = NumpyModel(spec.graph, seed=seed)
    module = types.ModuleType("generated")
    exec(compile(generate(spec), "<generated>", "exec"), module.__dict__)  # noqa: S102
    model = getattr(module, spec.graph.name)()
    model.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in reference.state_dict().items()}, strict=False)
    model.eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([2, *spec.graph.node(spec.graph.inputs[0]).type.shape])
    x = x.astype(np.float32)
    expected = reference.forward(x, record=True)
    d_out = rng.standard_normal(expected.shape).astype(np.float32)
    grads = reference.backward(d_out)
    inputs = torch.tensor(x, requires_grad=True)
    out = model(inputs)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    (out * torch.from_numpy(d_out)).sum().backward()
    params = dict(model.named_parameters())
    for name, grad in grads.items():
        np.testing.assert_allclose(params[name].grad.numpy(), grad, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(inputs.grad.numpy(), reference.input_grads[spec.graph.inputs[0]],
                               rtol=1e-4, atol=1e-5)


# ---- a toy op gets every backend ------------------------------------------------------------


def test_the_toy_kernels_have_the_gradients_of_central_differences():
    x = np.random.default_rng(0).standard_normal((3, 5))
    check_gradients(toy_softsign, [x])
    signs = np.sign(np.random.default_rng(2).standard_normal((3, 5)))
    for reduction in ("mean", "sum", "none"):
        check_gradients(lambda p, t, r=reduction: toy_soft_margin(p, t, reduction=r), [x, signs])
    weight = np.random.default_rng(1).standard_normal(5)
    check_gradients(lambda x, w: toy_rmsnorm(x, w, eps=1e-3), [x, weight])


def test_a_toy_op_checks_summarises_and_runs_in_the_interpreter(toy):
    node = next(n for n in toy.spec.graph.nodes if n.op == toy.opdef.name)
    assert toy.opdef.name in render_table(summarize(toy.spec.graph))
    model = NumpyModel(toy.spec.graph, seed=0)
    x = np.random.default_rng(0).standard_normal([2, *toy.spec.graph.node("x").type.shape])
    assert model.activations(x.astype(np.float32))[node.name].shape[1:] == node.type.shape


def test_a_toy_op_generates_torch_code_with_the_interpreters_outputs_and_gradients(toy):
    assert toy.code in generate(toy.spec)
    _both_backends(toy.spec)


def test_a_toy_op_draws_with_a_label(toy):
    node = next(n for n in toy.spec.graph.nodes if n.op == toy.opdef.name)
    assert gv.op_text(node)[0] == toy.opdef.name
    assert toy.opdef.name in gv.to_dot(toy.spec)


TOY_LOSS_SPEC = """
model Scorer {
  input x: [6]
  x -> dense(8) -> tanh -> dense(3)
}
train Scorer { loss toy_soft_margin; optimizer sgd(lr = 0.5); batch 8 }
"""


def test_a_toy_loss_trains_alike_through_both_backends_and_draws():
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.runtime import TorchModel
    from nnspec.training.loop import build_optimizer

    with ops.registered(SOFT_MARGIN):
        spec = load_text(TOY_LOSS_SPEC, "toy_loss.nn")
        assert "F.soft_margin_loss(pred, target)" in generate(spec)  # the loss_fn
        reference = NumpyModel.from_spec(spec, seed=0)
        twin = TorchModel.from_numpy(spec, spec.train, reference)
        optimizers = [build_optimizer(spec.train.optimizer, m) for m in (reference, twin)]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 6)).astype(np.float32)
        y = np.sign(rng.standard_normal((8, 3))).astype(np.float32)
        curves: list[list[float]] = [[], []]
        torch.manual_seed(0)
        for _ in range(5):
            for model, optimizer, curve in zip((reference, twin), optimizers, curves):
                curve.append(model.loss(x, y))
                model.backward()
                optimizer.step()
        np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5)
        assert curves[0][-1] < curves[0][0]
        node = Node("n", "toy_soft_margin", ("p", "t"), ops.Attrs(reduction="sum"),
                    TensorType(()), None)
        assert gv.op_text(node) == ("toy_soft_margin", "reduction=sum")
        assert "#### `toy_soft_margin`" in _gen_docs().generate()


def _gen_docs() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_toy_op_appears_in_the_generated_reference(toy):
    text = _gen_docs().generate()
    assert f"#### `{toy.opdef.name}`\n\n{toy.opdef.doc}" in text
    for attr in toy.opdef.attrs:
        assert f"| `{attr.name}` | {attr.kind} |" in text


def test_an_op_of_a_new_family_needs_a_section_in_the_reference():
    toy_family = ops.OpDef("toy_op", "toy_family", "", _same_shape)
    with ops.registered(toy_family), pytest.raises(ValueError, match="toy_family"):
        _gen_docs().generate()


def test_registration_refuses_a_taken_name_and_cleans_up():
    with pytest.raises(ValueError, match="already has an op `relu`"):
        ops.register(ops.OpDef("relu", "activation", "", _same_shape))
    with pytest.raises(ValueError, match="`swish`"):
        ops.register(ops.OpDef("toy", "activation", "", _same_shape, aliases=("swish",)))
    with ops.registered(SOFTSIGN):
        assert RULES["toy_softsign"] and FORWARD["toy_softsign"]
    for table in (RULES, FORWARD):
        with pytest.raises(KeyError):
            table["toy_softsign"]
    assert ops.lookup("toy") is None and ops.OPS["relu"].torch.name == "F.relu"


def test_a_re_registered_op_gets_its_new_kernel():
    x = np.array([[-2.0, 0.5]], np.float32)
    node = Node("n", "toy_softsign", ("x",), ops.Attrs(), TensorType((2,)), None)
    with ops.registered(SOFTSIGN):
        first = RULES["toy_softsign"](node, [x], {}, None)[0]
    with ops.registered(ops.OpDef("toy_softsign", "activation", "", _same_shape,
                                  kernel="nnspec.backends.numpy.kernels.activations:relu")):
        second = RULES["toy_softsign"](node, [x], {}, None)[0]
    np.testing.assert_allclose(first, x / (1 + np.abs(x)))
    np.testing.assert_array_equal(second, np.maximum(x, 0))


# ---- every op of the catalogue has what its backends need -----------------------------------


def _example_attrs(opdef: ops.OpDef) -> ops.Attrs:
    values = {"int": 3, "float": 0.5, "bool": True, "ints": 3, "padding": 1, "str": "x"}
    return ops.Attrs((a.name, a.default if a.default is not ops.REQUIRED else
                      a.choices[0] if a.choices else values.get(a.kind)) for a in opdef.attrs)


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_every_op_has_a_numpy_rule_a_torch_emission_and_a_diagram_label(name):
    opdef = ops.OPS[name]
    assert name in RULES, f"`{name}` needs a NumPy kernel (or a hand-written rule)"
    assert name in FORWARD, f"`{name}` needs a `Torch` form (or a hand-written emitter)"
    if opdef.has_params:
        assert name in INIT, f"`{name}` has weights: it needs an `nn.*` module form"
    node = Node("n", name, (), _example_attrs(opdef), TensorType((3, 8, 8)), None)
    for full in (False, True):
        op, text = gv.op_text(node, full)
        assert op and isinstance(text, str)


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_every_trait_names_what_the_op_has(name):
    opdef = ops.OPS[name]
    attrs = {a.name for a in opdef.attrs}
    if opdef.symbol:
        assert opdef.arity in ((1, 1), (2, 2)), "operators take one or two operands"
    if opdef.broadcast:
        assert opdef.arity[0] >= 2, "only ops of several operands broadcast"
    if opdef.torch is not None:
        assert opdef.torch.is_module == opdef.has_params, "`nn.*` forms are for ops with weights"
        for binding in opdef.torch.args + opdef.torch.keywords:
            source = binding.partition("=")[2] or binding
            assert source in attrs or source.startswith("input["), binding
        assert not opdef.torch.weight_std or opdef.torch.weight_std in attrs
    for template in opdef.label or ():
        flag, conditional, text = template.partition("?")
        assert not conditional or flag in attrs, template
        fields = {f for _, f, _, _ in string.Formatter().parse(text or template) if f}
        assert fields <= attrs, template


# ---- the traits at work on built-in ops -----------------------------------------------------


def test_select_from_an_unbatched_table_runs_in_both_backends():
    spec = load_text("model M {\n  input x: [6]\n  x + (sinusoidal(4, 6) -> select(1))\n}\n",
                     "select.nn")
    out = NumpyModel(spec.graph).forward(np.zeros((2, 6), np.float32))
    np.testing.assert_allclose(out, np.broadcast_to(sinusoidal_table(4, 6)[1], (2, 6)))
    _both_backends(spec)


def test_attrs_read_as_attributes_and_missing_ones_are_attribute_errors():
    a = ops.Attrs(kernel=3)
    assert a.kernel == 3 and getattr(a, "stride", None) is None
    with pytest.raises(AttributeError, match="stride"):
        a.stride  # noqa: B018
