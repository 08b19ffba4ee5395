"""quantize-dynamic packages compute their MatMulIntegers in integers on x86 targets
with VNNI (gemm_int8.c through blas.py's integer rewrite): uint8 and int8 weights,
per column and per tensor, a symbolic batch, and a reduction long enough that the
float32 product would not be exact (the lowering's int32 product, rewritten too).
The outputs equal onnxruntime's on the same quantized model bit for bit. Without
VNNI (x86-avx2) the float32 product stays, with the same outputs."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxforge
from tests.codegen.test_gemm_packed import _host_has
from tests.codegen.test_quant_codegen import ort_reference

F = TensorProto.FLOAT
needs_vnni = pytest.mark.skipif(not _host_has("avx512_vnni"),
                                reason="target x86 is this host: the integer path needs AVX-512 VNNI")


def _dense(batch_dims, k, n, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * 0.2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "dense",
        [helper.make_tensor_value_info("x", F, [*batch_dims, k])], [helper.make_tensor_value_info("z", F, None)],
        [numpy_helper.from_array(w, "w")])
    return onnxforge.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _kernel_names(pkg) -> bytes:
    with tarfile.open(pkg.path) as tar:
        return tar.extractfile("model.so").read()


@needs_vnni
@pytest.mark.parametrize("options", ["", "{weights=int8}", "{per_channel=false}", "{weights=int8 per_channel=false}"])
@pytest.mark.parametrize("batch_dims, k, n, feed", [(["batch", 10], 64, 96, (3, 10)), ([5], 2048, 40, (5,))])
def test_dynamic_matmuls_run_in_integers(tmp_path, options, batch_dims, k, n, feed):
    model = onnxforge.optimize(_dense(batch_dims, k, n, seed=k), "quantize-dynamic" + options).model
    assert "MatMulInteger" in {node.op_type for node in model.graph.nodes}
    pkg = onnxforge.compile(model, target="x86", pipeline="-O2", output=tmp_path / "int8.ofpkg")
    names = _kernel_names(pkg)
    assert b"\x00qmatmul" in names  # the integer kernel's TIR wrapper
    assert b"\x00extreme_rows" in names  # the dynamic quantization's range (kernels.c)
    x = np.random.default_rng(1).standard_normal((*feed, k)).astype(np.float32)
    x[..., 0] = 4.0  # a wide range: zero points away from the middle
    got = pkg({"x": x})["z"]
    want = ort_reference(model, {"x": x})["z"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op, axes", [("ReduceMax", None), ("ReduceMin", None), ("ReduceMax", [2, 3]),
                                      ("ReduceMin", [-1])])
def test_max_and_min_over_trailing_axes_run_in_kernels_c(tmp_path, op, axes):
    """Over all axes or trailing ones, symbolic dims too: kernels.c's row kernels, the
    values onnxruntime gives (row lengths off the 8-wide partial results)."""
    attrs = {"keepdims": 0}
    inputs = ["x"]
    inits = []
    if axes is not None:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        inputs.append("axes")
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], **attrs)], "reduce",
                              [helper.make_tensor_value_info("x", F, ["n", 3, 5, 7])],
                              [helper.make_tensor_value_info("y", F, None)], inits)
    model = onnxforge.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    pkg = onnxforge.compile(model, target="x86", pipeline="-O0", output=tmp_path / "reduce.ofpkg")
    assert b"\x00extreme_rows" in _kernel_names(pkg)
    for n in (1, 4):
        x = np.random.default_rng(n).standard_normal((n, 3, 5, 7)).astype(np.float32)
        np.testing.assert_array_equal(pkg({"x": x})["y"], ort_reference(model, {"x": x})["y"])


@needs_vnni
def test_dequantize_at_load_keeps_the_integer_product(tmp_path):
    """--dequantize load lifts what the weights alone compute; the MatMulInteger still
    runs in integers on its packed weight and gives the same outputs."""
    model = onnxforge.optimize(_dense(["batch", 10], 64, 96, seed=3), "quantize-dynamic").model
    pkg = onnxforge.compile(model, target="x86", pipeline="-O2", dequantize="load", output=tmp_path / "load.ofpkg")
    assert b"\x00qmatmul" in _kernel_names(pkg)
    x = np.random.default_rng(2).standard_normal((2, 10, 64)).astype(np.float32)
    np.testing.assert_array_equal(pkg({"x": x})["z"], ort_reference(model, {"x": x})["z"])


def test_without_vnni_the_float_product_stays(tmp_path):
    """x86-avx2: gemm_int8.c's AVX2 path is slower than the float32 product there, so
    the build keeps the latter (exact, the same outputs)."""
    model = onnxforge.optimize(_dense(["batch", 10], 64, 96, seed=4), "quantize-dynamic").model
    pkg = onnxforge.compile(model, target="x86-avx2", pipeline="-O2", output=tmp_path / "avx2.ofpkg")
    assert b"\x00qmatmul" not in _kernel_names(pkg)
    x = np.random.default_rng(3).standard_normal((2, 10, 64)).astype(np.float32)
    np.testing.assert_array_equal(pkg({"x": x})["z"], ort_reference(model, {"x": x})["z"])
