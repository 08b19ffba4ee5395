"""codegen/cpu/schedules.py's LongReduction: one long reduction over the innermost
axis (GlobalAveragePool, ReduceSum, ReduceMax) is split into vector partial sums
instead of one serial chain of adds per output; results match onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("op,shape,attrs", [("GlobalAveragePool", (1, 24, 40, 48), {}),
                                            ("ReduceSum", (3, 5, 1040), {"keepdims": 0}),
                                            ("ReduceMax", (2, 4096), {})])
def test_long_reductions_take_vector_partial_sums(tmp_path, op, shape, attrs):
    """One long reduction over the innermost axis (schedules.LongReduction): rfactor'ed
    into vector partial sums, and the result matches onnxruntime."""
    import onnx
    import tvm

    import onnxforge
    from onnxforge.codegen.cpu.schedules import LongReduction
    from onnxforge.codegen.lower import lower
    from onnxforge.ir.onnx_io import load

    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes")] if op != "GlobalAveragePool" else []
    node = helper.make_node(op, ["x", "axes"] if inits else ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    mod = tvm.relax.transform.LegalizeOps()(lower(load(model)).mod)
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    scheduled = [LongReduction().apply(f, tvm.target.Target("llvm"), False) for f in funcs]
    assert any(s is not None and "_rf" in s.mod.script() for s in scheduled)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnxforge.compile(path, target="x86", pipeline="cleanup", output=tmp_path / "m.ofpkg")(x=x)["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
