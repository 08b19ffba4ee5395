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


@pytest.mark.parametrize("shape,parallel", [((1, 16, 24, 96), False), ((1, 64, 48, 96), True)])
def test_small_kernels_stay_on_the_calling_thread(shape, parallel):
    """Fallback parallelizes a kernel only when its static iteration count reaches
    PARALLEL_MIN_ITERATIONS (waking a sleeping pool worker costs more than a small
    kernel saves); a depthwise conv likewise by its FLOPs."""
    import tvm
    from tvm import te

    from onnxforge.codegen.cpu import extern_calls
    from onnxforge.codegen.cpu.schedules import PARALLEL_MIN_ITERATIONS, Fallback

    assert (np.prod(shape) >= PARALLEL_MIN_ITERATIONS) == parallel
    x = te.placeholder(shape, "float32", name="x")
    y = te.compute(shape, lambda *i: te.max(x(*i), tvm.tirx.const(0.0, "float32")), name="relu")
    func = te.create_prim_func([x, y])
    scheduled = Fallback().apply(func, tvm.target.Target("llvm"), False)
    assert ("T.parallel" in scheduled.mod.script()) == parallel
    n, c, h, w = shape
    for kernel in (1, 3):
        w = te.placeholder((c, 1, kernel, kernel), "float32", name="w")
        dw = extern_calls.dwconv_te(x, w, out_shape=shape, kh=kernel, kw=kernel, strides=[1, 1], pad=[kernel // 2] * 4,
                                    name="dw")
        small = 2 * np.prod(shape) * kernel * kernel < extern_calls.DW_PARALLEL_MIN_FLOPS
        assert ("T.parallel" in te.create_prim_func([x, w, dw]).script(show_meta=False)) == (not small)


def test_depthwise_at_run_time_sizes_picks_serial_or_parallel_then():
    """With sizes known only at run time, the depthwise loop carries both forms and
    the work bound decides between them when the kernel runs."""
    import tvm
    from tvm import te

    from onnxforge.codegen.cpu import extern_calls

    b, h, w = (tvm.tirx.Var(n, "int64") for n in "bhw")
    x = te.placeholder((b, 16, h, w), "float32", name="x")
    k = te.placeholder((16, 1, 3, 3), "float32", name="k")
    dw = extern_calls.dwconv_te(x, k, out_shape=(b, 16, h, w), kh=3, kw=3, strides=[1, 1], pad=[1, 1, 1, 1], name="dw")
    script = te.create_prim_func([x, k, dw]).script(show_meta=False)
    assert "T.parallel" in script and "if " in script and str(extern_calls.DW_PARALLEL_MIN_FLOPS) in script


@pytest.mark.parametrize("op,attrs", [("GlobalAveragePool", {}), ("ReduceMean", {"axes": [2, 3], "keepdims": 0})])
def test_means_of_run_time_size_take_the_row_kernel(tmp_path, op, attrs):
    """A mean over trailing axes whose size is known only at run time (squeeze-excitation
    in a package for any image size) runs as kernels.c's onnxforge_mean_rows and matches
    onnxruntime at two sizes."""
    import onnx
    import tvm

    import onnxforge
    from onnxforge.codegen.cpu.pipeline import front_passes
    from onnxforge.codegen.lower import lower
    from onnxforge.ir.onnx_io import load

    opset = 17 if op == "ReduceMean" else 18  # ReduceMean's axes an attribute up to opset 17
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 24, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    target = tvm.target.Target("llvm")
    with target:
        mod = tvm.transform.Sequential(front_passes(target, "blas"))(lower(load(model)).mod)
    assert "onnxforge_mean_rows" in mod.script(show_meta=False)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    package = onnxforge.compile(path, target="x86", pipeline="-O2", output=tmp_path / "m.ofpkg")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 24, 7, 9), (2, 24, 40, 33)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(package(x=x)["y"], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_run_time_sized_kernels_go_parallel_only_when_large():
    """A kernel whose size is known only at run time carries both loop forms; the
    same iteration bound as for static sizes picks one when it runs."""
    import tvm
    from tvm import te

    from onnxforge.codegen.cpu.schedules import PARALLEL_MIN_ITERATIONS, Fallback, run_time_parallel

    b, h, w = (tvm.tirx.Var(n, "int64") for n in "bhw")
    x = te.placeholder((b, 16, h, w), "float32", name="x")
    y = te.compute(x.shape, lambda *i: te.max(x(*i), tvm.tirx.const(0.0, "float32")), name="relu")
    scheduled = Fallback().apply(te.create_prim_func([x, y]), tvm.target.Target("llvm"), False)
    mod = run_time_parallel(tvm.IRModule({"main": scheduled.mod["main"]}))
    script = mod.script()
    assert "T.parallel" in script and f">= T.int64({PARALLEL_MIN_ITERATIONS})" in script
    assert "onnxforge.parallel_work" not in script  # the marker is consumed
    tvm.tirx.analysis.verify_ssa(mod["main"])  # the body appears twice, with its own variables in each


@pytest.mark.parametrize("pinned", [False, True])
def test_pooling_windows_vectorize_and_match_onnxruntime(tmp_path, pinned):
    """Max pool (with an Add fused after it) and strided average pool, for any size
    and pinned: the window loops go outside the row loop (Fallback via SmallWindow,
    not dlight's Reduction, which recomputes the padded window per output), rows of
    static width vectorize, and both the serial and the parallel form (small and
    large inputs) match onnxruntime."""
    import onnx
    import tvm

    import onnxforge
    from onnxforge.codegen.compiler import pin_input_shapes
    from onnxforge.codegen.cpu.pipeline import front_passes
    from onnxforge.codegen.cpu.schedules import default_schedule_pass
    from onnxforge.codegen.lower import lower
    from onnxforge.ir.onnx_io import load

    nodes = [helper.make_node("MaxPool", ["x"], ["a"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
             helper.make_node("Add", ["a", "x"], ["y"]),
             helper.make_node("AveragePool", ["x"], ["z"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "c", "h", "w"])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "yz"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = [(1, 8, 10, 10), (1, 64, 48, 48)]  # below and above the parallel bound
    for shape in sizes if not pinned else sizes[1:]:
        ir = load(model)
        if pinned:
            ir = pin_input_shapes(ir, {"x": shape})
        target = tvm.target.Target("llvm")
        with target:
            mod = tvm.transform.Sequential([*front_passes(target, "blas"), default_schedule_pass()])(lower(ir).mod)
        script = mod.script(show_meta=False)
        assert "pool_max_update" in script and "pool_sum_update" in script  # window loops outside the row
        assert ("T.vectorized" in script) == pinned
        package = onnxforge.compile(ir, target="x86", pipeline="-O2", output=tmp_path / f"m{pinned}.ofpkg")
        for run_shape in sizes if not pinned else [shape]:
            x = np.random.default_rng(5).standard_normal(run_shape).astype(np.float32)
            got, ref = package(x=x), session.run(None, {"x": x})
            np.testing.assert_allclose(got["y"], ref[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got["z"], ref[1], rtol=1e-5, atol=1e-6)
