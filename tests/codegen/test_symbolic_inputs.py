"""Inputs as users' models declare them: Paddle-style -1 dims are symbolic (compile
unpinned, or pin them), 0-d inputs stay 0-d through the package and the runtime;
a lowering error suggests pinning only when pinning changes the outcome; the CLI
prints shapes like [batch,3,...] as text, not markup."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxforge
from onnxforge.codegen import register_lowering, unregister_lowering
from onnxforge.codegen.compiler import pin_input_shapes
from onnxforge.ir import DataError, LoweringError
from onnxforge.passes.check import compare_outputs, run_ort
from onnxforge.tools.cli import main

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def paddle_scalar_model() -> onnx.ModelProto:
    """x [-1, 4] (a Paddle export's batch), sr an int64 scalar (silero-vad's sample
    rate): y = (x @ W) * sr / 16000."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array(1 / 16000, np.float32), "k")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Cast", ["sr"], ["srf"], to=F),
             helper.make_node("Mul", ["srf", "k"], ["scale"]), helper.make_node("Mul", ["h", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "paddle_scalar", [helper.make_tensor_value_info("x", F, [-1, 4]),
                                                       helper.make_tensor_value_info("sr", I64, [])],
                              [helper.make_tensor_value_info("y", F, [-1, 3])], [w, k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def paddle_package(tmp_path_factory):
    # a ModelProto straight in (compile loads it)
    return onnxforge.compile(paddle_scalar_model(), "x86", "-O1", output=tmp_path_factory.mktemp("pkg") / "paddle.ofpkg")


def test_minus_one_dims_compile_unpinned_and_scalars_stay_0d(paddle_package):
    assert paddle_package.inputs[0].shape == ("x_dim0", 4)
    assert paddle_package.inputs[1].shape == () and paddle_package.inputs[1].dtype == "int64"
    model = onnxforge.load(paddle_scalar_model())
    for batch, sr in ((1, 16000), (3, 8000)):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32), "sr": np.array(sr)}
        got = paddle_package(feeds)
        assert got["y"].shape == (batch, 3)
        diff = compare_outputs(run_ort(model, feeds), got, 1e-5, 1e-5)
        assert diff.ok, diff


def test_a_scalar_input_given_as_1d_is_refused_with_the_expected_rank(paddle_package):
    with pytest.raises(DataError, match="rank 1, expected rank 0"):
        paddle_package(x=np.ones((1, 4), np.float32), sr=np.array([16000]))


def test_minus_one_dims_can_be_pinned():
    pinned = pin_input_shapes(onnxforge.load(paddle_scalar_model()), {"x": (2, 4)})
    assert pinned.graph.inputs[0].shape == (2, 4) and pinned.graph.outputs[0].shape == (2, 3)
    with pytest.raises(DataError, match="dim 1 is 4 in the model, cannot pin it to 5"):
        pin_input_shapes(onnxforge.load(paddle_scalar_model()), {"x": (2, 5)})


def test_pinning_one_input_pins_the_dims_it_shares():
    """silero-vad: state [2,batch,128] follows input [batch,sequence]."""
    graph = helper.make_graph([helper.make_node("ReduceSum", ["state"], ["s"], keepdims=0),
                               helper.make_node("Identity", ["input"], ["y"])], "g",
                              [helper.make_tensor_value_info("input", F, ["batch", "sequence"]),
                               helper.make_tensor_value_info("state", F, [2, "batch", 128])],
                              [helper.make_tensor_value_info("y", F, None), helper.make_tensor_value_info("s", F, None)])
    model = onnxforge.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    pinned = pin_input_shapes(model, {"input": (1, 512)})
    assert [v.shape for v in pinned.graph.inputs] == [(1, 512), (2, 1, 128)]
    with pytest.raises(DataError, match="pins batch to 1"):
        pin_input_shapes(model, {"input": (1, 512), "state": (2, 3, 128)})


# ---------------------------------------------------------------- pin hints
def _one_op(op_type, domain, shape, extra_nodes=(), inits=()):
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node, *extra_nodes], "g", [helper.make_tensor_value_info("x", F, shape)],
                              [helper.make_tensor_value_info("y", F, None)], list(inits))
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return onnxforge.load(helper.make_model(graph, opset_imports=opsets))


def test_no_pin_hint_for_a_missing_op():
    model = _one_op("Mystery", "com.example", ["batch", 16])
    with pytest.raises(LoweringError) as info:
        onnxforge.compile(model, "x86", "-O0")
    assert "no lowering for op com.example.Mystery" in str(info.value)
    assert "--input-shape" not in str(info.value) and "pin" not in str(info.value)


@pytest.fixture
def static_only_lowering():
    """A lowering that, like some of TVM's converters, needs static shapes."""
    @register_lowering("NeedsStatic", domain="test.pin")
    def lower_needs_static(bb, node, inputs):
        from tvm import relax

        if not node.inputs[0].is_static_shape():
            raise LoweringError(f"NeedsStatic: input shape {node.inputs[0].type_str()} is not static")
        return relax.op.nn.relu(inputs[0])

    yield
    unregister_lowering("NeedsStatic", domain="test.pin")


def test_pin_hint_when_only_the_pinned_model_lowers(static_only_lowering, tmp_path):
    model = _one_op("NeedsStatic", "test.pin", ["batch", 16])
    with pytest.raises(LoweringError) as info:
        onnxforge.compile(model, "x86", "-O0", output=tmp_path / "m.ofpkg")
    message = str(info.value)
    assert "is not static" in message and "--input-shape x=1,16" in message and "input_shapes={'x': (1, 16)}" in message
    pkg = onnxforge.compile(model, "x86", "-O0", input_shapes={"x": (1, 16)}, output=tmp_path / "m.ofpkg")
    assert pkg.inputs[0].shape == (1, 16)


def test_pin_hint_for_a_frontend_that_needs_static_shapes():
    """TopK whose k is computed from the input's shape: TVM's importer wants a
    constant k, which only pinning gives. The hint names the sizes onnxruntime
    ran (the sequence dim n at 16)."""
    one, two = (numpy_helper.from_array(np.array([v], np.int64), n) for v, n in ((1, "one"), (2, "two")))
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s", "one", "two"], ["k"]),
             helper.make_node("TopK", ["x", "k"], ["y", "i"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, "n"])],
                              [helper.make_tensor_value_info("y", F, None)], [one, two])
    model = onnxforge.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    try:
        onnxforge.compile(model, "x86", "-O0")
    except LoweringError as exc:
        assert "TopK" in str(exc) and "--input-shape x=1,16" in str(exc)
    else:
        pytest.skip("TopK with a run-time k lowers unpinned now: no hint needed")


# ---------------------------------------------------------------- CLI text
def _bracket_model(path):
    """Input x[0] of shape [batch,3,h,w]: rich would read [batch,3,h,w] as markup."""
    graph = helper.make_graph([helper.make_node("Relu", ["x[0]"], ["y"])], "g",
                              [helper.make_tensor_value_info("x[0]", F, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", F, ["batch", 3, "h", "w"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_inspect_prints_bracketed_shapes_and_names(tmp_path, capsys):
    path = _bracket_model(tmp_path / "b.onnx")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "x[0]" in text and "float[batch,3,h,w]" in text


def test_compile_prints_bracketed_shapes(tmp_path, capsys):
    path = _bracket_model(tmp_path / "b.onnx")
    assert main(["compile", str(path), "-O0", "-o", str(tmp_path / "b.ofpkg")]) == 0
    text = capsys.readouterr().out
    assert "x[0]: float32[batch,3,h,w]" in text and "y: float32[batch,3,h,w]" in text


def test_compare_invents_inputs_and_says_so(paddle_package, tmp_path, capsys):
    onnx.save(paddle_scalar_model(), tmp_path / "p.onnx")
    assert main(["compare", str(tmp_path / "p.onnx"), str(paddle_package.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["invented_inputs"]["shapes"] == {"x": [1, 4], "sr": []}
    assert main(["compare", str(tmp_path / "p.onnx"), str(paddle_package.path)]) == 0
    assert "invented random inputs x: float32[1,4], sr: int64[]" in " ".join(capsys.readouterr().err.split())
