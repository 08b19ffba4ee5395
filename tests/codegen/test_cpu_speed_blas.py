"""cpu_kernels="schedule"/"blas" (codegen/cpu, issue 7): same outputs as onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")


def _model():
    rng = np.random.default_rng(0)
    inits = {
        "W1": rng.standard_normal((16, 8, 3, 3)), "W2": rng.standard_normal((32, 16, 1, 1)),
        "W3": rng.standard_normal((32, 1, 3, 3)), "M": rng.standard_normal((20, 24)),
        "G": rng.standard_normal((10, 24)), "b": rng.standard_normal((10,)),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    inits += [numpy_helper.from_array(np.array([1, -1], np.int64), "shp"),
              numpy_helper.from_array(np.array([6, 24], np.int64), "shp2")]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"]),
        helper.make_node("Conv", ["c2", "W3"], ["c3"], pads=[1, 1, 1, 1], group=32),
        helper.make_node("Reshape", ["c3", "shp"], ["f"]),
        helper.make_node("MatMul", ["y", "M"], ["m1"]),
        helper.make_node("Reshape", ["m1", "shp2"], ["m2"]),
        helper.make_node("Gemm", ["m2", "G", "b"], ["g1"], transB=1),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["y", "yt"], ["att"]),
        helper.make_node("Softmax", ["att"], ["sm"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 20]),
                     helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 20])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("f", "g1", "sm")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mode", ["schedule", "blas"])
def test_cpu_kernels_match_onnxruntime(tmp_path, monkeypatch, mode):
    if mode == "blas":
        pytest.importorskip("scipy_openblas32")
    import onnx

    import onnxforge

    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 16, 20)).astype(np.float32)
    y = rng.standard_normal((1, 6, 20)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "y": y})
    monkeypatch.setenv("ONNXFORGE_CPU_KERNELS", mode)
    pkg = onnxforge.compile(path, target="x86", pipeline="-O1", output=tmp_path / "m.ofpkg")
    out = list(pkg(x=x, y=y).values())
    for r, o in zip(ref, out):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max())))


def test_compile_option_reaches_the_package(tmp_path):
    pytest.importorskip("scipy_openblas32")
    import numpy as np

    import onnxforge
    from onnxforge.ir import PipelineError
    from onnxforge.passes.check import run_ort
    from onnxforge.tools.example import build_example

    model = onnxforge.load(build_example())
    pkg = onnxforge.compile(model, "x86", "-O2", output=tmp_path / "m.ofpkg", cpu_kernels="blas")
    assert pkg.manifest["cpu_kernels"] == "blas"
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32), dtype=np.float32)
    got = onnxforge.runtime.load(tmp_path / "m.ofpkg")(input=x)["probs"]
    np.testing.assert_allclose(got, run_ort(model, {"input": x})["probs"], atol=1e-4)
    with pytest.raises(PipelineError, match="cpu_kernels"):
        onnxforge.compile(model, "x86", cpu_kernels="fast")
