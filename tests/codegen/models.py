"""Small real-shaped models for the codegen tests: a conv net, an MLP with Gemm and
MatMul, a transformer block (LayerNormalization, Softmax, Erf), a symbolic batch
dim, int8 weights through DequantizeLinear, and a custom-domain op."""
from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.models import build

F = TensorProto.FLOAT


class Graph:
    """`g.op("Add", a, b)` returns the output name; `g.weight(4, 8)` an initializer."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self._ids = itertools.count()

    def const(self, array, name: str | None = None) -> str:
        name = name or f"c{next(self._ids)}"
        self.inits.append(build.init(name, np.asarray(array)))
        return name

    def weight(self, *shape, scale: float = 0.3) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), f"w{next(self._ids)}")

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs) -> str:
        out = out or f"{op_type.lower()}{next(self._ids)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n_{out}", domain=domain, **attrs))
        return out

    def model(self, inputs, outputs, opset: int = 17, extra_opsets=()) -> onnx.ModelProto:
        """inputs: [(name, shape, dtype)]; outputs: [(name, shape, dtype)]."""
        return build.model(self.nodes, [build.tensor(n, s, d) for n, s, d in inputs],
                           [build.tensor(n, s, d) for n, s, d in outputs], self.inits, opset=opset,
                           extra_opsets=extra_opsets)


def conv_net() -> onnx.ModelProto:
    g = Graph(1)
    y = g.op("Conv", "x", g.weight(8, 3, 3, 3), g.const(g.rng.standard_normal(8).astype(np.float32)), pads=[1, 1, 1, 1])
    bn = [g.const(v.astype(np.float32)) for v in (g.rng.uniform(0.5, 2, 8), g.rng.standard_normal(8),
                                                   g.rng.standard_normal(8), g.rng.uniform(0.5, 2, 8))]
    y = g.op("Relu", g.op("BatchNormalization", y, *bn))
    y = g.op("MaxPool", y, kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Conv", y, g.weight(8, 1, 3, 3), pads=[1, 1, 1, 1], group=8)  # depthwise
    y = g.op("Clip", y, g.const(np.float32(0.0)), g.const(np.float32(6.0)))
    y = g.op("Flatten", g.op("GlobalAveragePool", y))
    y = g.op("Gemm", y, g.weight(10, 8), g.const(np.zeros(10, np.float32)), transB=1)
    g.op("Softmax", y, axis=1, out="probs")
    return g.model([("x", [1, 3, 16, 16], F)], [("probs", [1, 10], F)])


def mlp(seed: int = 2) -> onnx.ModelProto:
    """Gemm (transB, alpha/beta), MatMul + Add, two outputs."""
    g = Graph(seed)
    h = g.op("Relu", g.op("Gemm", "x", g.weight(64, 32), g.const(g.rng.standard_normal(64).astype(np.float32)),
                          transB=1, alpha=0.5, beta=2.0))
    y = g.op("Add", g.op("MatMul", h, g.weight(64, 16)), g.const(g.rng.standard_normal(16).astype(np.float32)), out="y")
    g.op("Tanh", y, out="t")
    return g.model([("x", [4, 32], F)], [("y", [4, 16], F), ("t", [4, 16], F)])


def transformer_block(seq: int = 8, hidden: int = 32, heads: int = 4) -> onnx.ModelProto:
    """Pre-LN self-attention and an Erf-GELU FFN, as exporters write them."""
    g = Graph(3)
    size = hidden // heads

    def linear(x, n_in, n_out):
        return g.op("Add", g.op("MatMul", x, g.weight(n_in, n_out)), g.const(g.rng.standard_normal(n_out).astype(np.float32) * 0.1))

    def layer_norm(x):
        return g.op("LayerNormalization", x, g.const(g.rng.uniform(0.5, 1.5, hidden).astype(np.float32)),
                    g.const(g.rng.standard_normal(hidden).astype(np.float32) * 0.1), axis=-1, epsilon=1e-5)

    split = g.const(np.array([1, seq, heads, size], np.int64))
    h = layer_norm("x")
    q = g.op("Transpose", g.op("Reshape", linear(h, hidden, hidden), split), perm=[0, 2, 1, 3])
    k = g.op("Transpose", g.op("Reshape", linear(h, hidden, hidden), split), perm=[0, 2, 3, 1])
    v = g.op("Transpose", g.op("Reshape", linear(h, hidden, hidden), split), perm=[0, 2, 1, 3])
    scores = g.op("Mul", g.op("MatMul", q, k), g.const(np.float32(1 / math.sqrt(size))))
    ctx = g.op("Transpose", g.op("MatMul", g.op("Softmax", scores, axis=-1), v), perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", ctx, g.const(np.array([1, seq, hidden], np.int64)))
    x = g.op("Add", "x", linear(ctx, hidden, hidden))
    f = linear(layer_norm(x), hidden, 4 * hidden)
    gelu = g.op("Mul", g.op("Mul", f, g.const(np.float32(0.5))),
                g.op("Add", g.op("Erf", g.op("Div", f, g.const(np.float32(math.sqrt(2))))), g.const(np.float32(1.0))))
    g.op("Add", x, linear(gelu, 4 * hidden, hidden), out="out")
    return g.model([("x", [1, seq, hidden], F)], [("out", [1, seq, hidden], F)])


def symbolic_batch() -> onnx.ModelProto:
    g = Graph(4)
    h = g.op("Relu", g.op("Add", g.op("MatMul", "x", g.weight(16, 24)), g.const(np.ones(24, np.float32))))
    g.op("ReduceMean", h, axes=[1], keepdims=1, out="y")
    return g.model([("x", ["batch", 16], F)], [("y", ["batch", 1], F)])


def dynamic_int8() -> onnx.ModelProto:
    """mlp after quantize-dynamic: DynamicQuantizeLinear -> MatMulInteger (uint8
    weights, zero points per column) -> Cast -> Mul (arm64 keeps the float32 product
    until gemm_int8.c has dot-product kernels there)."""
    import onnxforge

    return onnxforge.ir.to_proto(onnxforge.optimize(onnxforge.load(mlp()), "quantize-dynamic").model)


def int8_weights() -> onnx.ModelProto:
    """int8 weights, per-output-channel scales, DequantizeLinear -> MatMul (what
    quantize-weights writes)."""
    g = Graph(5)
    w = g.rng.standard_normal((32, 16)).astype(np.float32)
    scale = np.abs(w).max(axis=0) / 127
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    wq = g.const(q, "w_int8")
    deq = g.op("DequantizeLinear", wq, g.const(scale.astype(np.float32), "w_scale"),
               g.const(np.zeros(16, np.int8), "w_zero_point"), axis=1)
    g.op("Add", g.op("MatMul", "x", deq), g.const(g.rng.standard_normal(16).astype(np.float32)), out="y")
    return g.model([("x", [4, 32], F)], [("y", [4, 16], F)], opset=13)


def custom_op(op_type: str = "Square", domain: str = "com.example") -> onnx.ModelProto:
    """x -> Relu -> com.example.Square -> y (onnxruntime cannot run it; we can, once lowered)."""
    g = Graph(6)
    g.op(op_type, g.op("Relu", "x"), domain=domain, out="y")
    return g.model([("x", [2, 3], F)], [("y", [2, 3], F)], extra_opsets=[(domain, 1)])


def dynamic_reshape(paddle: bool = False) -> onnx.ModelProto:
    """Reshape targets computed from Shape at run time, as torch exports them
    (Shape -> Gather -> Unsqueeze) or paddle2onnx does (Shape -> Cast int32 ->
    Slice -> Cast int64): [batch, 4, 6], then [batch, 0, 2, 3] (0 copies a dim),
    then [batch, -1]."""
    g = Graph(7)
    h = g.op("MatMul", "x", g.weight(16, 24))
    if paddle:
        shape = g.op("Cast", g.op("Shape", "x"), to=TensorProto.INT32)
        batch = g.op("Cast", g.op("Slice", shape, g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))),
                     to=TensorProto.INT64)
    else:
        batch = g.op("Unsqueeze", g.op("Gather", g.op("Shape", "x"), g.const(np.array(0, np.int64)), axis=0),
                     g.const(np.array([0], np.int64)))
    h = g.op("Reshape", h, g.op("Concat", batch, g.const(np.array([4, 6], np.int64)), axis=0))
    h = g.op("Softmax", h, axis=-1)
    h = g.op("Reshape", h, g.op("Concat", batch, g.const(np.array([0, 2, 3], np.int64)), axis=0))
    g.op("Reshape", g.op("Relu", h), g.op("Concat", batch, g.const(np.array([-1], np.int64)), axis=0), out="y")
    return g.model([("x", ["batch", 16], F)], [("y", ["batch", 24], F)])


def blas_dispatched(model) -> str:
    """The lowered module after the CPU build's DispatchBLAS pass, as text: which ops went
    to the C kernels and which stayed Relax."""
    from onnxforge.codegen.cpu.blas import DispatchBLAS
    from onnxforge.codegen.lower import lower
    from onnxforge.ir.onnx_io import load

    return DispatchBLAS()(lower(load(model)).mod).script(show_meta=False)
