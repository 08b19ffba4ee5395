"""layernorm, gelu and attention fusions on small models in the exporters'
shapes; outputs checked against onnxruntime, second runs change nothing, near
misses change nothing."""
import math
from collections import Counter

import numpy as np

import onnx
import pytest
from onnx import TensorProto, numpy_helper

import onnxforge
from onnxforge.ir.onnx_io import to_proto
from tests.conftest import run_and_check
from tests.models import fusion as fm

F = TensorProto.FLOAT


def ops(model):
    return Counter((f"{n.domain}." if n.domain else "") + n.op_type for n in model.graph.all_nodes())


def unchanged(proto, pipeline):
    return not onnxforge.optimize(onnxforge.load(proto), pipeline).changed


# ---------------------------------------------------------------- layernorm
@pytest.mark.parametrize("variant,gamma,beta,opset", [
    ("pow-div", True, True, 17), ("mul-reciprocal", True, True, 17), ("pow-div", True, False, 17),
    ("pow-div", False, False, 17), ("mul-div", True, True, 18),
])
def test_layernorm_variants_fuse(variant, gamma, beta, opset):
    proto, _ = fm.layer_norm(variant, gamma=gamma, beta=beta, opset=opset)
    result = run_and_check(proto, "fuse{patterns=layernorm}", atol=1e-5, rtol=1e-4)
    assert ops(result.model) == Counter({"LayerNormalization": 1})
    node = result.model.graph.nodes[0]
    assert node.attr("axis") == -1 and math.isclose(node.attr("epsilon"), 1e-5, rel_tol=1e-6)
    assert len(node.inputs) == (3 if beta else 2)


@pytest.mark.parametrize("opset,form", [(17, "reciprocal"), (18, "div"), (23, "reciprocal")])
def test_rmsnorm_fuses_below_and_from_opset_23(opset, form):
    # below 23: one call of the model-local function onnxforge.RMSNormalization,
    # which onnxruntime and the onnx checker read and codegen inlines
    proto = fm.rms_norm(opset=opset, form=form)
    result = run_and_check(proto, "fuse{patterns=rmsnorm}", atol=1e-5, rtol=1e-4)
    saved = to_proto(result.model)
    onnx.checker.check_model(saved, full_check=True)
    if opset >= 23:
        assert ops(result.model) == Counter({"RMSNormalization": 1}) and not saved.functions
    else:
        assert ops(result.model) == Counter({"onnxforge.RMSNormalization": 1})
        assert [(f.domain, f.name) for f in saved.functions] == [("onnxforge", "RMSNormalization")]
        assert result.model.graph.nodes[0].attr("axes") == [-1]
    assert unchanged(proto, "fuse{patterns=rmsnorm standard_only=true}") == (opset < 23)


def test_rmsnorm_function_compiles():
    proto = fm.rms_norm(opset=17, gamma=False)
    model = onnxforge.load(proto)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    package = onnxforge.compile(onnxforge.optimize(model, "fuse{patterns=rmsnorm}").model, "x86", "-O0")
    expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)
    (out,) = package({"x": x}).values()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_layernorm_over_two_trailing_axes():
    proto, _ = fm.layer_norm(axes=(-2, -1), batch=2)
    result = run_and_check(proto, "fuse{patterns=layernorm}", atol=1e-5, rtol=1e-4)
    assert ops(result.model) == Counter({"LayerNormalization": 1})
    assert result.model.graph.nodes[0].attr("axis") == -2


def test_existing_layernorms_are_counted():
    proto, _ = fm.layer_norm()
    once = onnxforge.optimize(onnxforge.load(proto), "fuse").model
    again = onnxforge.optimize(once, "fuse")
    assert not again.changed and again.records[0].stats == {"LayerNormalization_in_model": 1}


@pytest.mark.parametrize("kwargs", [
    {"eps_inside": False},        # epsilon after the square root: a different function
    {"axes": (1,)},               # normalizes over the sequence axis, not the hidden one
    {"opset": 16},                # no LayerNormalization before opset 17
])
def test_layernorm_near_misses(kwargs):
    proto, _ = fm.layer_norm(**kwargs)
    assert unchanged(proto, "fuse{patterns=layernorm}")


def test_layernorm_with_an_extra_reader_of_the_variance_is_left():
    proto, net = fm.layer_norm()
    variance = next(n for n in proto.graph.node if n.op_type == "ReduceMean" and n.input[0].startswith("pow")).output[0]
    proto.graph.output.add().CopyFrom(fm.build.tensor(variance, ["batch", 5, 1]))
    assert unchanged(proto, "fuse{patterns=layernorm}")


# ---------------------------------------------------------------- gelu
@pytest.mark.parametrize("form,grouping,opset,expected", [
    ("erf", 0, 17, "com.microsoft.Gelu"), ("erf", 1, 17, "com.microsoft.Gelu"), ("erf", 2, 17, "com.microsoft.Gelu"),
    ("tanh", 0, 17, "com.microsoft.FastGelu"), ("erf", 0, 20, "Gelu"), ("tanh", 2, 20, "Gelu"),
])
def test_gelu_forms_fuse(form, grouping, opset, expected):
    proto, _ = fm.gelu(form, grouping, opset=opset)
    result = run_and_check(proto, "fuse{patterns=gelu}", atol=1e-5, rtol=1e-4)
    assert ops(result.model) == Counter({"MatMul": 1, expected: 1})
    gelu = result.model.graph.nodes[-1]
    assert gelu.attr("approximate", "none") == ("tanh" if form == "tanh" and opset >= 20 else "none")


@pytest.mark.parametrize("alpha,opset,expected", [
    (1.702, 17, "com.microsoft.QuickGelu"), (1.702, 24, "Swish"), (1.5, 17, None),  # 1.5: not GELU's constant
])
def test_quick_gelu(alpha, opset, expected):
    """x * sigmoid(1.702 x) (CLIP): QuickGelu below opset 24, Swish(alpha) from it;
    compiled, it matches onnxruntime."""
    net = fm.Net()
    x = net.op("MatMul", "x", net.weight(8, 16))
    y = net.op("Mul", x, net.op("Sigmoid", net.op("Mul", x, net.const(np.float32(alpha)))))
    proto = net.model([("x", ["batch", 8], F)], [y], opset=opset)
    if expected is None:
        assert unchanged(proto, "fuse{patterns=gelu}")
        return
    result = run_and_check(proto, "fuse{patterns=gelu}", atol=1e-5, rtol=1e-4)
    assert ops(result.model) == Counter({"MatMul": 1, expected: 1})
    assert result.model.graph.nodes[-1].attr("alpha") == pytest.approx(alpha)
    if opset == 17:
        feeds = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
        package = onnxforge.compile(result.model, target="x86", pipeline="-O0", input_shapes={"x": (3, 8)})
        reference = onnxforge.passes.check.run_ort(onnxforge.load(proto), feeds)
        np.testing.assert_allclose(list(package(feeds).values())[0], list(reference.values())[0], rtol=1e-5, atol=1e-5)


def test_gelu_near_misses():
    """Not fused: a wrong constant, standard_only below opset 20, an extra reader
    of the Erf, a scale that is fed at run time."""
    assert unchanged(fm.gelu(sqrt2=1.5)[0], "fuse{patterns=gelu}")
    assert unchanged(fm.gelu()[0], "fuse{patterns=gelu standard_only=true}")
    proto, _ = fm.gelu()
    erf = next(n for n in proto.graph.node if n.op_type == "Erf").output[0]
    proto.graph.output.add().CopyFrom(fm.build.tensor(erf, ["batch", 16]))
    assert unchanged(proto, "fuse{patterns=gelu}")
    proto, _ = fm.gelu()
    half = next(i for i in proto.graph.initializer if numpy_helper.to_array(i).tolist() == 0.5)
    proto.graph.initializer.remove(half)
    proto.graph.input.add().CopyFrom(fm.build.tensor(half.name, []))
    assert unchanged(proto, "fuse{patterns=gelu}")


# ---------------------------------------------------------------- attention
# scale 0.3: not 1/sqrt(head size); Attention (and TVM's converter) take no other
# scale, so it goes into Q's weights
@pytest.mark.parametrize("kwargs", [{}, {"scale_form": "div"}, {"mask": False}, {"layers": 2}, {"scale": 0.3}])
def test_attention_fuses_to_one_com_microsoft_node(kwargs):
    proto, _ = fm.attention(**kwargs)
    feeds = fm.attention_feeds()
    if not kwargs.get("mask", True):
        feeds.pop("mask")
    result = run_and_check(proto, "fuse{patterns=attention}", atol=1e-5, rtol=1e-4, feeds=feeds)
    counts = ops(result.model)
    layers = kwargs.get("layers", 1)
    assert counts["com.microsoft.Attention"] == layers and counts["Softmax"] == 0 and counts["Reshape"] == 0
    assert counts["MatMul"] == layers  # only the output projections stay
    if kwargs.get("mask", True):
        assert counts["Expand"] == 1  # the [B, N, S, S] bias is built once and shared
        expand = next(n for n in result.model.graph.nodes if n.op_type == "Expand")
        static = all(isinstance(d, int) for d in expand.inputs[0].shape)
        # a static target is a constant (TVM's CUDA build fails on a computed one), else computed
        assert (expand.inputs[1].const_value() is not None) == static
    attention = next(n for n in result.model.graph.nodes if n.op_type == "Attention")
    assert attention.attr("num_heads") == 4 and "scale" not in attention.attributes
    assert result.model.opset_imports.get("com.microsoft") == 1


@pytest.mark.parametrize("kwargs", [
    {"mask_axes": (1, 3)},     # the mask broadcast over queries: wrong axis
    {"softmax_axis": 2},       # normalizes over queries
    {"extra_user": True},      # the Q projection is read elsewhere
])
def test_attention_near_misses(kwargs):
    proto, _ = fm.attention(**kwargs)
    assert unchanged(proto, "fuse{patterns=attention}")


def test_attention_standard_only_keeps_plain_onnx():
    assert unchanged(fm.attention()[0], "fuse{patterns=attention standard_only=true}")


def test_attention_bias_target_is_a_constant_for_static_shapes():
    """With pinned shapes the [B, N, S, S] Expand target is a constant (shared by the
    layers): TVM 0.27's CUDA build fails on a computed one."""
    import onnxforge
    from onnxforge.codegen.compiler import pin_input_shapes
    from onnxforge.ir.onnx_io import to_proto

    proto, _ = fm.attention(layers=2)
    pinned = pin_input_shapes(onnxforge.load(proto), {"x": (2, 5, 16), "mask": (2, 5)})
    result = run_and_check(to_proto(pinned), "fold-constants,fuse{patterns=attention}", atol=1e-5, rtol=1e-4, feeds=fm.attention_feeds())
    expands = [n for n in result.model.graph.nodes if n.op_type == "Expand"]
    assert len(expands) == 1 and expands[0].inputs[1].const_value().tolist() == [2, 4, 5, 5]
    assert ops(result.model)["Shape"] == 0
