"""codegen/cpu/fastmath.py: GELU, Erf, Tanh, Sigmoid and Softmax compile to vectorizable
polynomials on CPU (with cpu_kernels="blas", Softmax is kernels.c's
onnxforge_softmax_rows, LayerNormalization over the last axis its
onnxforge_layer_norm_rows); outputs stay at float32 rounding level of onnxruntime's."""
import numpy as np
import pytest

import onnxforge
from onnxforge.ir import to_proto
from onnxforge.passes.check import run_ort
from tests.codegen import models

F = models.F


def _model(op: str, shape, **attrs):
    g = models.Graph(3)
    y = g.op(op, g.op("Mul", "x", g.const(np.float32(1.0))), **attrs)
    g.op("Identity", y, out="y")
    return g.model([("x", shape, F)], [("y", shape, F)], opset=20)


def _inputs(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 4
    flat = x.reshape(-1)
    flat[:10] = [0.0, -0.0, 30.0, -30.0, 1e-6, -1e-6, 9.5, -9.5, 100.0, -100.0]  # saturation and tiny inputs
    return {"x": x}


@pytest.mark.parametrize("op,attrs,kernels", [
    ("Gelu", {}, "schedule"), ("Erf", {}, "schedule"), ("Tanh", {}, "schedule"), ("Sigmoid", {}, "schedule"),
    ("Softmax", {"axis": -1}, "schedule"), ("Softmax", {"axis": 1}, "schedule"), ("Softmax", {"axis": 0}, "schedule"),
    ("Softmax", {"axis": -1}, "blas"), ("Softmax", {"axis": 1}, "blas"), ("Softmax", {"axis": 0}, "blas")])
def test_fast_math_matches_onnxruntime(op, attrs, kernels):
    shape = [2, 16, 40]
    model = onnxforge.load(_model(op, shape, **attrs))
    pkg = onnxforge.compile(model, "x86", "-O0", cpu_kernels=kernels)
    feeds = _inputs(shape)
    want = run_ort(model, feeds)["y"]
    got = pkg(feeds)["y"]
    # GELU of x << 0 is x * (0.5 + 0.5 erf(x)), a cancellation: absolute error ~5e-7 near 0
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("kernels", ["schedule", "blas"])
def test_softmax_of_a_masked_row_keeps_its_zeros_near_zero(kernels):
    shape = [1, 4, 16]
    model = onnxforge.load(_model("Softmax", shape, axis=-1))
    x = _inputs(shape)["x"]
    x[0, 1, :8] = -1e9  # attention masks add a large negative number
    got = onnxforge.compile(model, "x86", "-O0", cpu_kernels=kernels)({"x": x})["y"]
    assert np.all(got[0, 1, :8] < 1e-30) and abs(float(got[0, 1].sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_over_symbolic_dims_in_the_c_kernel(axis):
    """One package for every batch and length (rows and row length read at run time),
    over the last axis and over another one (moved last and back)."""
    g = models.Graph(3)
    g.op("Softmax", g.op("Mul", "x", g.const(np.float32(1.0))), axis=axis, out="y")
    model = onnxforge.load(g.model([("x", ["n", 12, "t"], F)], [("y", ["n", 12, "t"], F)], opset=20))
    pkg = onnxforge.compile(model, "x86", "-O0", cpu_kernels="blas")
    for shape in ([1, 12, 7], [3, 12, 130]):
        feeds = _inputs(shape, seed=shape[-1])
        np.testing.assert_allclose(pkg(feeds)["y"], run_ort(model, feeds)["y"], rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_in_the_c_kernel_over_symbolic_dims(axis):
    """LayerNormalization (over the last axis, or the last two) -> kernels.c, for any
    batch. Rows with a large mean: the variance is taken about the mean (TVM's own
    layer_norm, E[x^2] - mean^2, was 2e-4 off here)."""
    rng = np.random.default_rng(4)
    n = 40
    scale_shape = [n] if axis == -1 else [12, n]
    g = models.Graph(3)
    g.op("LayerNormalization", "x", g.const((rng.random(scale_shape) + 0.5).astype(np.float32)),
         g.const(rng.standard_normal(scale_shape).astype(np.float32)), axis=axis, epsilon=1e-5, out="y")
    model = onnxforge.load(g.model([("x", ["n", 12, n], F)], [("y", ["n", 12, n], F)], opset=17))
    text = models.blas_dispatched(to_proto(model))
    assert "layer_norm_rows" in text and "R.nn.layer_norm" not in text
    pkg = onnxforge.compile(model, "x86", "-O0", cpu_kernels="blas")
    for batch in (1, 3):
        x = rng.standard_normal((batch, 12, n)).astype(np.float32) + 300.0
        want = run_ort(model, {"x": x})["y"]
        np.testing.assert_allclose(pkg({"x": x})["y"], want, rtol=1e-4, atol=2e-4)


def test_the_kernels_are_polynomials_not_libm_calls():
    import tvm

    from onnxforge.codegen.cpu.fastmath import fast_math
    from onnxforge.codegen.lower import lower

    lowered = lower(onnxforge.load(_model("Gelu", [4, 32])))
    with tvm.target.Target("llvm"):
        mod = fast_math(lowered.mod)
    text = mod.script()
    assert "R.nn.gelu" not in text and "T.erf" not in text and "fast_erf" in text
