"""Lowering to Relax: weights as parameters in their stored dtype, our converter
table (built-in and user-registered), errors that name the node and the op."""
import numpy as np
import pytest
from onnx import TensorProto

import onnxforge
from onnxforge.codegen import get_lowering, register_lowering, registered_lowerings, unregister_lowering
from onnxforge.codegen.lower import lower
from onnxforge.ir import LoweringError
from tests.codegen import models


def test_weights_are_parameters_in_their_stored_dtype():
    lowered = lower(onnxforge.load(models.int8_weights()))
    params = dict(lowered.params)
    assert params["w_int8"].dtype == np.int8 and params["w_int8"].shape == (32, 16)
    assert "w_zero_point" in params  # 16 elements: a weight, kept as stored (int8)
    names = [p.name for p in lowered.mod["main"].params]
    assert names[0] == "x" and names[1:] == list(params)  # inputs first, then params in order


def test_small_and_integer_tensors_stay_constants():
    lowered = lower(onnxforge.load(models.transformer_block()))
    params = dict(lowered.params)
    assert all(a.dtype == np.float32 and a.size >= 16 for a in params.values())
    assert len(params) == 16  # 6 weights, 6 biases, 2 x LayerNorm scale and bias; no shapes, no scalars


def test_custom_op_without_lowering_names_node_and_op():
    with pytest.raises(LoweringError, match=r"node 'n_y': no lowering for op com\.example\.Square; register one with "
                                            r"onnxforge\.codegen\.register_lowering\('Square', domain='com\.example'\)"):
        lower(onnxforge.load(models.custom_op()))


def test_custom_domain_never_borrows_a_standard_converter():
    with pytest.raises(LoweringError, match=r"no lowering for op com\.example\.Relu"):
        lower(onnxforge.load(models.custom_op("Relu")))


@pytest.fixture
def square_lowering():
    from tvm import relax

    @register_lowering("Square", domain="com.example")
    def square(bb, node, inputs):
        return relax.op.multiply(inputs[0], inputs[0])

    yield square
    unregister_lowering("Square", domain="com.example")


def test_registered_lowering_is_used(square_lowering):
    assert registered_lowerings()["com.example.Square"] is square_lowering
    pkg = onnxforge.compile(onnxforge.load(models.custom_op()), pipeline="-O0")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(pkg(x=x)["y"], np.maximum(x, 0) ** 2, rtol=1e-6)


def test_duplicate_registration_is_an_error(square_lowering):
    with pytest.raises(LoweringError, match="already registered by .*square.*replace=True"):
        register_lowering("Square", domain="com.example")(lambda bb, node, inputs: inputs[0])
    replacement = register_lowering("Square", domain="com.example", replace=True)(lambda bb, node, inputs: inputs[0])
    assert get_lowering("Square", "com.example") is replacement


def test_failing_lowering_names_node_and_op():
    @register_lowering("Square", domain="com.example")
    def broken(bb, node, inputs):
        raise ValueError("cannot square that")

    try:
        with pytest.raises(LoweringError, match=r"node 'n_y' \(op com\.example\.Square\): cannot square that"):
            lower(onnxforge.load(models.custom_op()))
    finally:
        unregister_lowering("Square", domain="com.example")


def test_unsupported_standard_op_names_the_node():
    g = models.Graph()
    g.op("Col2Im", "x", g.const(np.array([4, 4], np.int64)), g.const(np.array([2, 2], np.int64)), out="y")
    proto = g.model([("x", [1, 4, 9], TensorProto.FLOAT)], [("y", [1, 1, 4, 4], TensorProto.FLOAT)], opset=18)
    with pytest.raises(LoweringError, match=r"node 'n_y': no lowering for op Col2Im"):
        lower(onnxforge.load(proto))


def test_builtin_swish_lowering():
    g = models.Graph()
    g.op("Swish", "x", alpha=1.5, out="y")
    proto = g.model([("x", [3, 5], TensorProto.FLOAT)], [("y", [3, 5], TensorProto.FLOAT)], opset=24)
    pkg = onnxforge.compile(onnxforge.load(proto), pipeline="-O0")
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(pkg(x=x)["y"], x / (1 + np.exp(-1.5 * x)), rtol=1e-5, atol=1e-6)


def test_pow_by_small_integer_is_multiplication():
    """Pow(x, 2) must not become powf: TVM's CUDA code is built with fast math, where
    powf(x, 2) is NaN for negative x (found on an H100). Other exponents keep power."""
    g = models.Graph()
    g.op("Pow", "x", g.const(np.float32(2.0)), out="sq")
    g.op("Pow", g.op("Abs", "x"), g.const(np.float32(0.5)), out="root")
    proto = g.model([("x", [3, 5], TensorProto.FLOAT)], [("sq", [3, 5], TensorProto.FLOAT), ("root", [3, 5], TensorProto.FLOAT)])
    lowered = lower(onnxforge.load(proto))
    script = lowered.mod["main"].script()
    assert script.count("R.power") == 1 and "R.multiply" in script
    x = -np.abs(np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)) - 0.1
    out = onnxforge.compile(onnxforge.load(proto), pipeline="-O0")(x=x)
    np.testing.assert_allclose(out["sq"], x * x, rtol=1e-6)
    np.testing.assert_allclose(out["root"], np.sqrt(-x), rtol=1e-5)


def test_model_local_functions_are_inlined():
    import onnx
    from onnx import helper

    square = helper.make_function("ai.custom", "Square", ["a"], ["b"], [helper.make_node("Mul", ["a", "a"], ["b"])],
                                  [helper.make_opsetid("", 17)])
    g = models.Graph()
    g.op("Square", "x", domain="ai.custom", out="y")
    proto = g.model([("x", [2, 3], TensorProto.FLOAT)], [("y", [2, 3], TensorProto.FLOAT)],
                    extra_opsets=[("ai.custom", 1)])
    proto.functions.append(square)
    onnx.checker.check_model(proto)
    pkg = onnxforge.compile(onnxforge.load(proto), pipeline="-O0")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(pkg(x=x)["y"], x * x)


@pytest.mark.parametrize("function_opset", [12, 13])
def test_a_local_function_of_another_opset_version_than_the_model_is_inlined(function_opset):
    """A function of opset 12 in a model of opset 13 (what -O2,quantize-weights left on
    PP-OCRv4 rec before raise_opset moved functions along; onnx's checker refuses
    such a file, exporters' functions can still be like that): onnx's inliner alone
    leaves the calls in place; lowering relabels or converts the function first."""
    from onnxforge.passes.fusion.rmsnorm import rms_function

    g = models.Graph()
    g.op("RMSNormalization", "x", g.const(np.full(3, 2.0, np.float32)), domain="onnxforge", axes=[-1], epsilon=1e-5,
         dtype=TensorProto.FLOAT, out="y")
    proto = g.model([("x", [2, 3], TensorProto.FLOAT)], [("y", [2, 3], TensorProto.FLOAT)], opset=13,
                    extra_opsets=[("onnxforge", 1)])
    proto.functions.append(rms_function(function_opset))
    pkg = onnxforge.compile(onnxforge.load(proto), pipeline="-O0")
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * 2
    np.testing.assert_allclose(pkg(x=x)["y"], want, rtol=1e-5, atol=1e-6)


def test_shape_arithmetic_the_frontend_cannot_evaluate_is_folded_first():
    """PP-OCRv4's pattern: Reshape to [0, Shape(x)[1], 3, 4] built by Shape -> Cast
    -> Slice -> Cast -> Concat, Transpose, Slice [0:1] and Squeeze of that axis.
    TVM's frontend leaves the sliced extent symbolic and refuses the Squeeze;
    lowering folds the shape arithmetic, whatever the pipeline, and the compiled
    module matches onnxruntime."""
    from onnxforge.passes.check import compare_outputs, run_ort
    from tests.codegen.models import F, Graph

    g = Graph(5)
    x = g.op("MatMul", "x", g.weight(8, 12))
    i32 = [g.op("Cast", g.const(np.array([v], np.int32)), to=TensorProto.INT64) for v in (0, 3, 4)]
    n = g.op("Slice", g.op("Cast", g.op("Shape", x), to=TensorProto.INT32), *(g.const(np.array([v])) for v in (1, 2, 0, 1)))
    shape = g.op("Concat", i32[0], g.op("Cast", n, to=TensorProto.INT64), i32[1], i32[2], axis=0)
    y = g.op("Transpose", g.op("Reshape", x, shape), perm=[2, 0, 1, 3])
    y = g.op("Slice", y, *(g.const(np.array([v])) for v in (0, 1, 0, 1)))
    g.op("Squeeze", y, axes=[0], out="y")
    model = onnxforge.load(g.model([("x", [1, 5, 8], F)], [("y", [1, 5, 4], F)], opset=12))
    lower(model)  # raised LoweringError (Squeeze of a symbolic extent) before
    pkg = onnxforge.compile(model, target="x86", pipeline="-O0")
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32)}
    assert compare_outputs(run_ort(model, feeds), pkg(**feeds), 1e-5, 1e-5).ok


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_of_a_symbolic_axis_is_a_reshape(opset):
    """ONNX lets a model squeeze an axis whose extent is only known at run time
    (it must be 1 then); TVM's converter refuses any symbolic extent."""
    import onnx
    from onnx import helper as h

    axes = [-1]
    node = h.make_node("Squeeze", ["x", "axes"] if opset >= 13 else ["x"], ["y"], **({} if opset >= 13 else {"axes": axes}))
    inits = [onnx.numpy_helper.from_array(np.array(axes, np.int64), "axes")] if opset >= 13 else []
    graph = h.make_graph([node], "squeeze", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "n"])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    out = onnxforge.compile(onnxforge.load(model), pipeline="-O0")(x=x)["y"]
    np.testing.assert_array_equal(out, x[:, :, 0])
