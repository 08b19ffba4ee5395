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


# depthwise conv (kernels.c onnxforge_dwconv2d_plane): kernel, strides, pads (t, l, b, r), bias, input h x w
_DW_CASES = [
    ((3, 3), (1, 1), [1, 1, 1, 1], False, (17, 23)),
    ((3, 3), (2, 2), [1, 1, 1, 1], True, (16, 20)),
    ((5, 5), (2, 2), [2, 2, 2, 2], True, (15, 22)),
    ((3, 3), (1, 1), [0, 2, 1, 0], True, (9, 13)),  # asymmetric
    ((5, 5), (1, 1), [1, 0, 2, 3], False, (12, 9)),  # asymmetric
    ((3, 3), (2, 2), [0, 0, 1, 1], True, (14, 14)),  # TF "SAME" stride 2 (EfficientNet-Lite)
    ((5, 5), (2, 2), [1, 2, 2, 1], True, (7, 40)),  # asymmetric, window wider than some rows
    # stride 1 with ow >= 32 takes the row-ring path, narrower planes the flat one
    ((3, 3), (1, 1), [1, 1, 1, 1], False, (5, 40)),
    ((5, 5), (1, 1), [2, 1, 0, 2], True, (6, 37)),
    # PP-OCR's stride (2, 1) (specialised) and other windows / strides (the generic path)
    ((3, 3), (2, 1), [1, 1, 1, 1], True, (12, 40)),
    ((5, 5), (2, 1), [2, 2, 2, 2], False, (9, 33)),
    ((3, 5), (1, 3), [0, 2, 1, 1], True, (10, 26)),
]


@pytest.mark.parametrize("k,s,act", [((3, 3), (2, 2), "Relu"), ((5, 5), (2, 1), "HardSwish"), ((3, 3), (1, 2), None)])
def test_strided_depthwise_in_16_channel_blocks(tmp_path, k, s, act):
    """depthwise.c: 40 channels (two full blocks and a partial one), two images, 21 output
    rows (three bands, the last short), odd widths (register transposes and their scalar
    tails), the activation folded in; against onnxruntime."""
    pytest.importorskip("scipy_openblas32")
    import onnx

    import onnxforge
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower

    model = _dw_model(k, s, [1, 2, 1, 0], True, (42, 37), c=40)
    if act:
        model.graph.node[0].output[0] = "c"
        model.graph.node.append(helper.make_node(act, ["c"], ["y"]))
    path = tmp_path / "dw.onnx"
    onnx.save(model, path)
    text = DispatchBLAS()(lower(onnxforge.load(path)).mod).script(show_meta=False)
    assert "onnxforge_dwconv2d_block" in text and (act is None or act.lower() not in text.lower().replace("_", ""))
    x = np.random.default_rng(6).standard_normal((2, 40, 42, 37)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    pkg = onnxforge.compile(path, target="x86", pipeline="-O1", output=tmp_path / "dw.ofpkg", cpu_kernels="blas")
    np.testing.assert_allclose(pkg(x=x)["y"], ref, rtol=1e-5, atol=1e-5)


def _dw_model(k, s, p, bias, hw, c=12, n=2):
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 1) + k).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], kernel_shape=list(k), strides=list(s), pads=p, group=c)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("case", _DW_CASES, ids=lambda c: f"k{c[0][0]}{c[0][1]}s{c[1][0]}{c[1][1]}p{''.join(map(str, c[2]))}"
                         f"{'b' if c[3] else ''}")
def test_depthwise_conv_matches_onnxruntime(tmp_path, case):
    pytest.importorskip("scipy_openblas32")
    import onnx

    import onnxforge
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower

    k, s, p, bias, hw = case
    model = _dw_model(*case)
    path = tmp_path / "dw.onnx"
    onnx.save(model, path)
    # the conv really goes to the C kernels: planes at stride 1, 16-channel blocks when strided
    mod = DispatchBLAS()(lower(onnxforge.load(path)).mod)
    assert ("onnxforge_dwconv2d_block" if max(s) > 1 else "onnxforge_dwconv2d_plane") in mod.script(show_meta=False)
    x = np.random.default_rng(3).standard_normal((2, 12, *hw)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    pkg = onnxforge.compile(path, target="x86", pipeline="-O1", output=tmp_path / "dw.ofpkg", cpu_kernels="blas")
    out = list(pkg(x=x).values())[0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def _dw_reference(x, w, b, s, p):
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    oh, ow = (h + p[0] + p[2] - kh) // s[0] + 1, (wd + p[1] + p[3] - kw) // s[1] + 1
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            out += w[None, :, 0, i, j, None, None] * xp[:, :, i:i + s[0] * oh:s[0], j:j + s[1] * ow:s[1]]
    return (out + (0 if b is None else b[None, :, None, None])).astype(np.float32)


@pytest.mark.parametrize("k,s,p,clamp", [((3, 3), (2, 2), [1, 0, 0, 1], None), ((7, 7), (1, 1), [3, 3, 3, 3], (-0.5, 0.7)),
                                         ((3, 5), (1, 2), [1, 2, 1, 2], (0.0, np.inf))])
def test_depthwise_kernel_bias_and_generic_path(tmp_path, monkeypatch, k, s, p, clamp):
    """The fused bias and clamp (the epilogue) and the generic (non-specialised) window,
    called directly, with the planes over TVM's thread pool (the non-default loop)."""
    pytest.importorskip("scipy_openblas32")
    import tvm
    from tvm import te

    from onnxforge.codegen.cpu import extern_calls
    from onnxforge.codegen.cpu.extern_calls import dwconv_te

    monkeypatch.setattr(extern_calls, "DW_PARALLEL", True)
    monkeypatch.setattr(extern_calls, "DW_PARALLEL_MIN_FLOPS", 0)  # this small a conv would run serially
    from onnxforge.codegen.cpu.pipeline import export_kwargs

    n, c, h, wd = 1, 5, 11, 19
    kh, kw = k
    oh, ow = (h + p[0] + p[2] - kh) // s[0] + 1, (wd + p[1] + p[3] - kw) // s[1] + 1
    x = te.placeholder((n, c, h, wd), "float32", name="x")
    w = te.placeholder((c, 1, kh, kw), "float32", name="w")
    b = te.placeholder((c,), "float32", name="b")
    lo, hi = clamp or (-np.inf, np.inf)
    y = dwconv_te(x, w, b, out_shape=(n, c, oh, ow), kh=kh, kw=kw, strides=list(s), pad=p, name="dw", lo=lo, hi=hi)
    func = te.create_prim_func([x, w, b, y]).with_attr("global_symbol", "dw")
    assert "T.parallel" in func.script(show_meta=False)
    built = tvm.compile(tvm.IRModule({"dw": func}), "llvm")
    so = str(tmp_path / "dw.so")
    built.export_library(so, **export_kwargs("blas"))
    lib = tvm.runtime.load_module(so)
    rng = np.random.default_rng(4)
    xs, ws, bs = (rng.standard_normal(t).astype(np.float32) for t in ((n, c, h, wd), (c, 1, kh, kw), (c,)))
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((n, c, oh, ow), np.float32), dev)
    lib["dw"](*(tvm.runtime.tensor(a, dev) for a in (xs, ws, bs)), out)
    ref = _dw_reference(xs, ws, bs, s, p)
    if clamp:
        assert (ref < clamp[0]).any() or (ref > clamp[1]).any()  # the clamp has work to do
        ref = np.clip(ref, *clamp)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_blas_package_names_and_preloads_its_openblas(tmp_path, monkeypatch):
    pytest.importorskip("scipy_openblas32")
    import sys

    import onnxforge
    from onnxforge.codegen.cpu.blas import BLAS_SONAME
    from onnxforge.codegen.manifest import PackageError
    from onnxforge.tools.example import build_example

    pkg = onnxforge.compile(onnxforge.load(build_example()), "x86", "-O1", output=tmp_path / "m.ofpkg", cpu_kernels="blas")
    assert pkg.manifest["native_libraries"] == [{"soname": BLAS_SONAME, "python_package": "scipy-openblas32"}]
    monkeypatch.setitem(sys.modules, "scipy_openblas32", None)  # as on a device without the package
    with pytest.raises(PackageError, match="pip install scipy-openblas32"):
        onnxforge.runtime.load(tmp_path / "m.ofpkg")


def _epilogue_model(opset=17):
    """Conv/MatMul epilogues DispatchBLAS folds into kernels.c (bias, Relu, Clip) and
    ones it must leave alone (a value read twice, a run-time bound)."""
    rng = np.random.default_rng(5)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"W1": f(8, 3, 3, 3), "b1": f(8), "W2": f(8, 1, 3, 3), "b2": f(8), "W3": f(6, 8, 1, 1), "b3": f(6),
             "M": f(10, 7), "bm": f(7), "lo": np.array(-0.5, np.float32), "hi": np.array(6.0, np.float32)}
    inits = [numpy_helper.from_array(v, k) for k, v in inits.items()]

    def clip(i, o, lo, hi):
        if opset < 11:  # bounds as attributes
            return helper.make_node("Clip", [i], [o], **({} if lo is None else {"min": lo}), max=hi)
        return helper.make_node("Clip", [i, "" if lo is None else "lo", "hi"], [o])
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),  # im2col
        clip("c1", "r1", -0.5, 6.0),
        helper.make_node("Conv", ["r1", "W2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),  # depthwise
        clip("c2", "r2", None, 6.0),  # max only
        helper.make_node("Conv", ["r2", "W3", "b3"], ["c3"]),  # 1x1
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("MatMul", ["y", "M"], ["m1"]),
        helper.make_node("Add", ["m1", "bm"], ["m2"]),
        helper.make_node("Relu", ["m2"], ["m3"]),  # read twice: the add stays, the relu is not folded
        helper.make_node("Add", ["m2", "m3"], ["m4"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 12, 14]),
                     helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 10])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r3", "m4")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [17, 10])
def test_conv_and_matmul_epilogues_fold_into_kernels(tmp_path, opset):
    pytest.importorskip("scipy_openblas32")
    import onnx

    import onnxforge
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower

    path = tmp_path / "e.onnx"
    onnx.save(_epilogue_model(opset), path)
    dispatch = DispatchBLAS()
    text = dispatch(lower(onnxforge.load(path)).mod)["main"].script(show_meta=False)
    assert dispatch.count == 4
    # the three conv epilogues fold; the matmul takes its bias, the add read twice stays
    assert "R.clip" not in text and "R.nn.conv2d" not in text
    assert text.count("R.add(") == 1 and text.count("R.nn.relu") == 1
    rng = np.random.default_rng(6)
    feeds = {"x": rng.standard_normal((2, 3, 12, 14)).astype(np.float32) * 2,
             "y": rng.standard_normal((2, 5, 10)).astype(np.float32)}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    pkg = onnxforge.compile(path, target="x86", pipeline="-O0", output=tmp_path / "e.ofpkg", cpu_kernels="blas")
    out = pkg(**feeds)
    assert (ref[0] == 0).any()  # the relu clamps something
    for name, r in zip(("r3", "m4"), ref):
        np.testing.assert_allclose(out[name], r, rtol=1e-4, atol=1e-4)


def test_conv_clip_with_crossed_bounds_matches_onnxruntime(tmp_path):
    """min > max: ONNX (and onnxruntime) give max everywhere; the clip is not folded."""
    pytest.importorskip("scipy_openblas32")
    import onnx

    import onnxforge

    w = numpy_helper.from_array(np.random.default_rng(7).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    bounds = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 1.0), ("hi", -1.0))]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]),
                               helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *bounds])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "c.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(8).standard_normal((1, 3, 5, 5)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = onnxforge.compile(path, target="x86", pipeline="-O0", output=tmp_path / "c.ofpkg", cpu_kernels="blas")(x=x)
    np.testing.assert_array_equal(out["y"], ref)


def test_products_with_symbolic_batch_and_sequence_go_to_sgemm(tmp_path):
    """MiniLM unpinned: every product (the packed QKV and output projections with M =
    batch * sequence, and attention's two batched products) calls sgemm with sizes
    read at run time; relax's default matmul schedules took 1.2 s per sentence."""
    pytest.importorskip("scipy_openblas32")
    import onnxforge
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower
    from onnxforge.passes.check import compare_outputs, run_ort
    from tests.models import fusion

    model = onnxforge.load(fusion.attention(layers=2)[0])
    optimized = onnxforge.optimize(model, "-O2").model
    dispatch = DispatchBLAS()
    text = dispatch(lower(optimized).mod)["main"].script(show_meta=False)
    assert dispatch.count == 8 and "R.matmul(" not in text  # 2 layers x (QKV, Q@K^T, P@V, output)
    assert text.count("softmax_rows") == 2 and "R.nn.softmax" not in text  # kernels.c's, one per layer
    pkg = onnxforge.compile(optimized, "x86", "-O0", output=tmp_path / "m.ofpkg", cpu_kernels="blas")
    for batch, seq in ((2, 5), (1, 11)):
        feeds = fusion.attention_feeds(batch, seq, seed=seq)
        assert compare_outputs(run_ort(model, feeds), pkg(**feeds), 1e-4, 1e-4).ok


def _conv_model(x_dims, convs):
    """Chained Convs (weight shape, attributes) on input x with the given (symbolic) dims."""
    rng = np.random.default_rng(3)
    nodes, inits, prev = [], [], "x"
    for i, (wshape, attrs) in enumerate(convs):
        inits.append(numpy_helper.from_array(rng.standard_normal(wshape).astype(np.float32) * 0.3, f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(wshape[0]).astype(np.float32), f"b{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], **attrs),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("x_dims,convs,shapes", [
    # 2-D with symbolic batch, height and width: im2col and sgemm sizes read at run time
    (["n", 3, "h", "w"], [((8, 3, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])), ((16, 8, 1, 1), {}),
                          ((4, 16, 3, 1), dict(pads=[1, 0, 1, 0], dilations=[2, 1]))], [(1, 3, 9, 12), (2, 3, 16, 7)]),
    # 1-D (silero-vad's front end) as a conv2d of height 1, static and symbolic length
    ([1, 4, 40], [((8, 4, 5), dict(pads=[2, 2], strides=[2])), ((8, 8, 1), {})], [(1, 4, 40)]),
    (["n", 4, "t"], [((8, 4, 3), dict(pads=[1, 1], dilations=[2])), ((6, 8, 1), {})], [(2, 4, 33), (1, 4, 8)]),
])
def test_convs_with_symbolic_dims_and_conv1d_go_to_sgemm(tmp_path, x_dims, convs, shapes):
    pytest.importorskip("scipy_openblas32")
    import onnxforge
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower

    model = _conv_model(x_dims, convs)
    dispatch = DispatchBLAS()
    text = dispatch(lower(onnxforge.load(model)).mod)["main"].script(show_meta=False)
    assert "R.nn.conv" not in text and dispatch.count >= len(convs)
    pkg = onnxforge.compile(onnxforge.load(model), "x86", "-O2", output=tmp_path / "c.ofpkg", cpu_kernels="blas")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(pkg(x=x)[model.graph.output[0].name], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s,p", [((3, 3), (1, 1), [1, 1, 1, 1]), ((5, 5), (2, 2), [2, 1, 2, 1]),
                                   ((3, 3), (2, 1), [1, 1, 1, 1]), ((1, 7), (1, 1), [0, 3, 0, 3])])
def test_depthwise_conv_with_symbolic_dims_goes_to_the_c_kernels(tmp_path, k, s, p):
    """One package for every batch and image size (PP-OCRv4 rec unpinned: its depthwise
    convs fell to TVM's generic conv schedule, 9x slower than onnxruntime): the plane
    and block kernels take the sizes at run time."""
    pytest.importorskip("scipy_openblas32")
    import onnx

    import onnxforge
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower

    model = _dw_model(k, s, p, True, ("h", "w"), n="n")
    path = tmp_path / "dw_sym.onnx"
    onnx.save(model, path)
    mod = DispatchBLAS()(lower(onnxforge.load(path)).mod)
    assert ("onnxforge_dwconv2d_block" if max(s) > 1 else "onnxforge_dwconv2d_plane") in mod.script(show_meta=False)
    pkg = onnxforge.compile(path, target="x86", pipeline="-O1", output=tmp_path / "dw.ofpkg", cpu_kernels="blas")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 12, 9, 40), (3, 12, 17, 6)]:
        x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        out = list(pkg(x=x).values())[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
