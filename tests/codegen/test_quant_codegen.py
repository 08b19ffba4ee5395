"""Quantized models through codegen: the outputs of quantize-weights (int8 per
channel, int4/uint4 blocks), quantize-static (QDQ) and quantize-dynamic
(MatMulInteger) compile for x86 and match onnxruntime; int4 weights stay packed two
per byte in weights.npz; dequantize feeds BLAS through a parallel, vectorised kernel.

The reference is onnxruntime with ORT_DISABLE_ALL: its fused QDQ kernels
(ORT_ENABLE_ALL) compute in integers and round differently (see TVM-NOTES)."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxforge
from onnxforge.codegen import quant
from onnxforge.passes.check import compare_outputs, sample_inputs
from tests.codegen.models import Graph

F = TensorProto.FLOAT
PIPELINES = {
    "int8": "quantize-weights",
    "int4": "quantize-weights{bits=4 granularity=block block=32}",
    "uint4": "quantize-weights{bits=4 granularity=block block=16 symmetric=false}",
    "int4-u8scales": "quantize-weights{bits=4 granularity=block block=32 scales=uint8}",
    "static": "quantize-static{sensitivity=false}",
    "dynamic": "quantize-dynamic",
}


def quant_net():
    """conv 3->32 (3x3) -> relu -> conv 32->16 (3x3, reduction 32: int4 blocks apply)
    -> relu -> flatten -> MatMul 1024x64 -> relu -> MatMul 64x10."""
    g = Graph(11)
    h = g.op("Relu", g.op("Conv", "x", g.weight(32, 3, 3, 3), g.weight(32, scale=0.1), pads=[1, 1, 1, 1]))
    h = g.op("Relu", g.op("Conv", h, g.weight(16, 32, 3, 3, scale=0.1), strides=[2, 2], pads=[1, 1, 1, 1]))
    h = g.op("Flatten", h)
    h = g.op("Relu", g.op("MatMul", h, g.weight(1024, 64, scale=0.05)))
    g.op("Add", g.op("MatMul", h, g.weight(64, 10, scale=0.2)), g.weight(10), out="y")
    proto = g.model([("x", [2, 3, 16, 16], F)], [("y", [2, 10], F)], opset=17)
    proto.ir_version = min(proto.ir_version, 8)  # onnxruntime collects calibration statistics
    return proto


def ort_reference(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    proto = onnxforge.ir.to_proto(model)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def weights_bytes(pkg) -> int:
    with tarfile.open(pkg.path) as tar:
        return tar.getmember("weights.npz").size


@pytest.fixture(scope="module")
def fp32():
    return onnxforge.load(quant_net())


@pytest.fixture(scope="module")
def quantized(fp32):
    calib = [sample_inputs(fp32, seed=s) for s in range(4)]
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = onnxforge.optimize(fp32, PIPELINES[name], calibration=calib).model
        return cache[name]

    return get


@pytest.fixture(scope="module")
def compiled(quantized, fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant")
    cache = {}

    def get(name, target="x86"):
        if (name, target) not in cache:
            model = fp32 if name == "fp32" else quantized(name)
            cache[name, target] = onnxforge.compile(model, target=target, pipeline="-O2",
                                                    output=folder / f"{name}-{target}.ofpkg")
        return cache[name, target]

    return get


@pytest.mark.parametrize("name", list(PIPELINES))
def test_quantized_model_matches_onnxruntime(name, quantized, compiled):
    model = quantized(name)
    ops = {n.op_type for n in model.graph.nodes}
    expected = {"int8": "DequantizeLinear", "int4": "DequantizeLinear", "uint4": "DequantizeLinear",
                "int4-u8scales": "DequantizeLinear", "static": "QuantizeLinear", "dynamic": "MatMulInteger"}[name]
    assert expected in ops, ops
    pkg = compiled(name)
    feeds = sample_inputs(model, seed=3)
    ref = ort_reference(model, feeds)
    diff = compare_outputs(ref, pkg(feeds), 1e-4, 1e-4)
    assert diff.ok, diff


@pytest.mark.parametrize("name, ratio", [("int8", 0.30), ("int4", 0.20), ("uint4", 0.25), ("int4-u8scales", 0.17),
                                         ("static", 0.30)])
def test_package_weights_shrink(name, ratio, compiled):
    """weights.npz against the fp32 package's: int8 ~0.26x, int4 ~0.16x (packed
    nibbles plus one fp32 scale per 32 weights; small tensors stay fp32), ~0.14x
    with uint8 block scales."""
    small, full = weights_bytes(compiled(name)), weights_bytes(compiled("fp32"))
    assert small < ratio * full, (small, full, small / full)


def test_uint8_block_scales_stay_uint8_in_the_package(compiled):
    """A quarter of the scale bytes: the scales' DequantizeLinear runs in the module."""
    small, floats = weights_bytes(compiled("int4-u8scales")), weights_bytes(compiled("int4"))
    assert small < 0.9 * floats, (small, floats)
    assert any(p["dtype"] == "uint8" and "packed" not in p and p["name"].endswith("_scale_quantized")
               for p in compiled("int4-u8scales").manifest["params"])


def test_int4_weights_are_packed_in_the_package(compiled, quantized):
    pkg = compiled("int4")
    packed = [p for p in pkg.manifest["params"] if "packed" in p]
    assert packed, pkg.manifest["params"]
    model = quantized("int4")
    for spec in packed:
        assert spec["dtype"] == "uint8" and spec["packed"]["dtype"] == "int4"
        logical = spec["packed"]["shape"]
        assert spec["shape"] == [-(-int(np.prod(logical)) // 2)]
        with tarfile.open(pkg.path) as tar:
            npz = np.load(io.BytesIO(tar.extractfile("weights.npz").read()))
            stored = npz[spec["key"]]
        original = model.graph.initializers[spec["name"]].array
        np.testing.assert_array_equal(quant.unpack_int4_numpy(stored, logical, signed=True), original.astype(np.int8))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_pack_int4_round_trip(signed, n):
    import ml_dtypes

    rng = np.random.default_rng(n)
    lo, hi, dtype = (-8, 8, ml_dtypes.int4) if signed else (0, 16, ml_dtypes.uint4)
    values = rng.integers(lo, hi, size=(n, 3)).astype(dtype)
    packed = quant.pack_int4(values)
    assert packed.dtype == np.uint8 and packed.size == -(-values.size // 2)
    assert quant.pack_int4(np.array([1, -2], ml_dtypes.int4)).tolist() == [0xE1]  # low nibble first
    np.testing.assert_array_equal(quant.unpack_int4_numpy(packed, values.shape, signed), values.astype(np.int8))


def test_blocked_dequantize_with_zero_point_and_partial_block():
    """DequantizeLinear (opset 21) with block_size on axis 0, uint4 zero points and a
    last block shorter than block_size, feeding MatMul."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    k, n, block = 40, 24, 16
    nblocks = -(-k // block)
    q = rng.integers(0, 16, size=(k, n)).astype(ml_dtypes.uint4)
    zp = rng.integers(0, 16, size=(nblocks, n)).astype(ml_dtypes.uint4)
    scale = rng.uniform(0.01, 0.1, size=(nblocks, n)).astype(np.float32)
    inits = [helper.make_tensor("q", TensorProto.UINT4, q.shape, q.astype(np.uint8).reshape(-1).tolist()),
             helper.make_tensor("zp", TensorProto.UINT4, zp.shape, zp.astype(np.uint8).reshape(-1).tolist()),
             helper.make_tensor("s", TensorProto.FLOAT, scale.shape, scale.reshape(-1).tolist())]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["w"], axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [3, k])],
                              [helper.make_tensor_value_info("y", F, [3, n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    model = onnxforge.load(proto)
    x = rng.standard_normal((3, k)).astype(np.float32)
    w = (q.astype(np.float32) - np.repeat(zp.astype(np.float32), block, 0)[:k]) * np.repeat(scale, block, 0)[:k]
    pkg = onnxforge.compile(model, target="x86", pipeline="-O1")
    got = pkg(x=x)["y"]
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)
    assert [p["dtype"] for p in pkg.manifest["params"]] == ["uint8", "uint8", "float32"]


def test_dequantize_feeds_blas_through_a_parallel_vectorised_kernel(quantized, monkeypatch):
    """The CPU blas pipeline keeps matmul(x, dequantize(w)) on sgemm; dequantize (and
    int4 unpacking fused with it) is its own parallel, vectorised kernel (at this test
    model's size it would run serially: schedules.PARALLEL_MIN_ITERATIONS, lowered here)."""
    tvm = pytest.importorskip("tvm")
    from onnxforge.codegen.cpu import schedules
    from onnxforge.codegen.cpu.pipeline import front_passes
    from onnxforge.codegen.cpu.schedules import default_schedule_pass

    monkeypatch.setattr(schedules, "PARALLEL_MIN_ITERATIONS", 1)
    from onnxforge.codegen.lower import lower
    from onnxforge.codegen.targets import resolve_target

    target = tvm.target.Target(resolve_target("x86-avx2").tvm)
    for name, kernel in (("int8", ("dequantize",)), ("int4", ("unpack_int4", "dequantize_block"))):
        lowered = lower(onnxforge.optimize(quantized(name), "-O2").model)
        with target:
            mod = tvm.transform.Sequential(front_passes(target, "blas") + [default_schedule_pass()])(lowered.mod)
        main = mod["main"].script(show_meta=False)
        assert main.count("blas_matmul") >= 2, main
        dequant = [f.script() for gv, f in mod.functions_items()
                   if isinstance(f, tvm.tirx.PrimFunc) and all(k in gv.name_hint for k in kernel)]
        assert dequant, main
        assert any("T.parallel" in s and "T.vectorized" in s for s in dequant), dequant


def test_int4_package_runs_on_arm64(compiled, quantized):
    """The arm64 int4 package (packed weights unpacked on the device) under qemu."""
    from onnxforge.codegen import device

    if not device.compiler_for("aarch64") or device.emulator_for("aarch64") is None:
        pytest.skip("needs g++-aarch64-linux-gnu and qemu-user-static")
    pkg = compiled("int4", target="arm64")
    model = quantized("int4")
    feeds = sample_inputs(model, seed=0)
    run = device.run_native(pkg.path, feeds, threads=1, repeat=1, loader=device.build_loader("aarch64"))
    diff = compare_outputs(ort_reference(model, feeds), run.outputs, 1e-4, 1e-4)
    assert diff.ok, diff


def test_dequantize_at_load(quantized, compiled, tmp_path):
    """dequantize="load": the same package bytes of weights, dequantized once when
    loaded (main_transform_params), the same outputs."""
    model = quantized("int4")
    pkg = onnxforge.compile(model, target="x86", pipeline="-O2", output=tmp_path / "load.ofpkg", dequantize="load")
    assert pkg.manifest["dequantize"] == "load" and compiled("int4").manifest["dequantize"] == "run"
    assert weights_bytes(pkg) == weights_bytes(compiled("int4"))
    loaded = onnxforge.runtime.load(pkg.path)
    assert {str(p.dtype) for p in loaded._params} == {"float32"}  # the int4 weights, dequantized
    feeds = sample_inputs(model, seed=3)
    diff = compare_outputs(ort_reference(model, feeds), loaded(feeds), 1e-4, 1e-4)
    assert diff.ok, diff
