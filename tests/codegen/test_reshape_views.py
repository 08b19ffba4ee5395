"""Reshapes whose dims are symbolic expressions (a feature map's size in a package
built for any image size) stay views instead of per-element copy kernels
(codegen/reshape_views.py), and packages with them match onnxruntime at any size."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

tvm = pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")

from tvm import relax, tirx  # noqa: E402
from tvm.relax.backend.cpu_generic import pipeline as cpu  # noqa: E402

from onnxforge.codegen.reshape_views import with_reshape_views  # noqa: E402


def _module(dims, shape_of):
    """relu -> reshape to (d0, d1, d2 * d3) -> relu, the input's dims given."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(dims, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(x))
            z = bb.emit(relax.op.reshape(y, shape_of(dims)))
            out = bb.emit_output(relax.op.nn.relu(z))
        bb.emit_func_output(out)
    return bb.get()


def _legalized(mod):
    target = tvm.target.Target("llvm")
    with target:
        return tvm.transform.Sequential(with_reshape_views(cpu.legalize_passes(target))[:1])(mod)


def _reshape_kernels(mod) -> int:
    return sum(1 for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "reshape" in gv.name_hint)


def test_expression_dims_stay_a_view_and_plain_ones_are_legalized():
    b, h, w = (tirx.Var(n, "int64") for n in "bhw")
    flat = lambda d: [d[0], d[1], d[2] * d[3]]  # noqa: E731
    pooled = _legalized(_module([b, 4, (h - 1) // 8 + 1, (w - 1) // 8 + 1], flat))
    assert _reshape_kernels(pooled) == 0 and "R.reshape" in pooled["main"].script()
    swap = lambda d: [d[0], d[1], d[3], d[2]]  # noqa: E731
    for dims, shape_of in (([b, 4, h, w], swap), ([1, 4, 6, 10], flat)):  # variables, numbers: TVM's path as before
        mod = _legalized(_module(dims, shape_of))
        assert _reshape_kernels(mod) == 1 and "R.reshape" not in mod["main"].script()


def test_unpinned_package_with_such_reshapes_matches_onnxruntime(tmp_path):
    import onnxforge

    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["r"]),
             helper.make_node("Reshape", ["r", "target"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], axis=-1)]
    target = helper.make_tensor("target", TensorProto.INT64, [3], [0, 3, -1])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [target])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    package = onnxforge.compile(str(path), "x86", "-O2")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 16, 20), (2, 3, 11, 9)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(package(x=x)["y"], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
