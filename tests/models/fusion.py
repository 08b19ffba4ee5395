"""Small models in the shapes exporters give the fusion patterns: conv+bn
stacks, BERT-style attention, decomposed LayerNorm and GELU."""
from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import build

F = TensorProto.FLOAT


class Net:
    """A tiny graph builder: `net.op("Add", a, b, axis=1)` returns the output name."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.counter = itertools.count()

    def name(self, base: str) -> str:
        return f"{base}_{next(self.counter)}"

    def const(self, array, name: str | None = None) -> str:
        name = name or self.name("c")
        self.inits.append(build.init(name, np.asarray(array)))
        return name

    def weight(self, *shape, scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), self.name("w"))

    def op(self, op_type: str, *inputs: str, domain: str = "", outputs: int = 1, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def model(self, inputs, outputs, opset: int = 17, check: bool = True, extra_opsets=()):
        """inputs: [(name, shape, dtype)], outputs: names (types from shape inference)."""
        proto = build.model(self.nodes, [build.tensor(n, s, d) for n, s, d in inputs],
                            [helper.make_value_info(o, onnx.TypeProto()) for o in outputs], self.inits, opset=opset,
                            check=False, extra_opsets=extra_opsets)
        graph = onnx.shape_inference.infer_shapes(proto).graph
        inferred = {v.name: v.type for v in list(graph.value_info) + list(graph.output) if v.type.HasField("tensor_type")}
        for out in proto.graph.output:
            out.type.CopyFrom(inferred.get(out.name, build.tensor(out.name, None).type))
        if check:
            onnx.checker.check_model(proto)
        return proto


def conv_bn(op: str = "Conv", group: int = 1, bias: bool = True, opset: int = 17, eps: float = 1e-3):
    """x -> conv -> BatchNormalization -> y, with non-trivial BN statistics."""
    net = Net()
    c_in, c_out = 4, 6
    if op == "Conv":
        w = net.weight(c_out, c_in // group, 3, 3)
    else:
        w = net.weight(c_in, c_out // group, 3, 3)
    inputs = ["x", w] + ([net.const(net.rng.standard_normal(c_out).astype(np.float32))] if bias else [])
    y = net.op(op, *inputs, pads=[1, 1, 1, 1], group=group)
    bn = [net.const(v.astype(np.float32)) for v in (
        net.rng.uniform(0.5, 2, c_out), net.rng.standard_normal(c_out), net.rng.standard_normal(c_out),
        net.rng.uniform(0.1, 3, c_out))]
    out = net.op("BatchNormalization", y, *bn, epsilon=eps)
    return net.model([("x", [1, c_in, 5, 5], F)], [out], opset=opset), net


def layer_norm(variant: str = "pow-div", gamma: bool = True, beta: bool = True, opset: int = 17,
               eps_inside: bool = True, axes=(-1,), batch="batch"):
    """The decomposed LayerNorm exporters emit, in several variants."""
    net = Net()
    hidden = 8
    def mean(v):
        if opset >= 18:
            return net.op("ReduceMean", v, net.const(np.array(axes, np.int64)))
        return net.op("ReduceMean", v, axes=list(axes))
    m = mean("x")
    d = net.op("Sub", "x", m)
    sq = net.op("Pow", d, net.const(np.float32(2.0))) if "pow" in variant else net.op("Mul", d, d)
    var = mean(sq)
    eps = net.const(np.float32(1e-5))
    if eps_inside:
        std = net.op("Sqrt", net.op("Add", var, eps))
    else:  # epsilon after the square root: not LayerNormalization
        std = net.op("Add", net.op("Sqrt", var), eps)
    if "reciprocal" in variant:
        y = net.op("Mul", d, net.op("Reciprocal", std))
    else:
        y = net.op("Div", d, std)
    if gamma:
        y = net.op("Mul", y, net.const(net.rng.uniform(0.5, 1.5, hidden).astype(np.float32)))
    if beta:
        y = net.op("Add", y, net.const(net.rng.standard_normal(hidden).astype(np.float32)))
    return net.model([("x", [batch, 5, hidden], F)], [y], opset=opset), net


def rms_norm(opset: int = 17, gamma: bool = True, form: str = "reciprocal"):
    """The RMS norm T5 / LLaMA exports write: x * 1/Sqrt(ReduceMean(x ** 2) + eps) * gamma."""
    net = Net()
    hidden = 8
    sq = net.op("Pow", "x", net.const(np.float32(2.0)))
    if opset >= 18:
        mean = net.op("ReduceMean", sq, net.const(np.array([-1], np.int64)))
    else:
        mean = net.op("ReduceMean", sq, axes=[-1])
    std = net.op("Sqrt", net.op("Add", mean, net.const(np.float32(1e-6))))
    y = net.op("Mul", "x", net.op("Reciprocal", std)) if form == "reciprocal" else net.op("Div", "x", std)
    if gamma:
        y = net.op("Mul", y, net.const(net.rng.uniform(0.5, 1.5, hidden).astype(np.float32)))
    return net.model([("x", ["batch", 5, hidden], F)], [y], opset=opset)


def gelu(form: str = "erf", grouping: int = 0, opset: int = 17, sqrt2=math.sqrt(2.0)):
    """x * 0.5 * (1 + erf(x / sqrt2)) (or the tanh form), grouped three ways."""
    net = Net()
    x = net.op("MatMul", "x", net.weight(8, 16))  # a producer, as in a real FFN
    if form == "erf":
        core = net.op("Erf", net.op("Div", x, net.const(np.float32(sqrt2))))
    else:
        cube = net.op("Pow", x, net.const(np.float32(3.0)))
        inner = net.op("Add", x, net.op("Mul", cube, net.const(np.float32(0.044715))))
        core = net.op("Tanh", net.op("Mul", inner, net.const(np.float32(math.sqrt(2 / math.pi)))))
    one_plus = net.op("Add", core, net.const(np.float32(1.0)))
    half = net.const(np.float32(0.5))
    if grouping == 0:
        y = net.op("Mul", x, net.op("Mul", half, one_plus))
    elif grouping == 1:
        y = net.op("Mul", net.op("Mul", x, half), one_plus)
    else:
        y = net.op("Mul", net.op("Mul", x, one_plus), half)
    return net.model([("x", ["batch", 8], F)], [y], opset=opset), net


def attention(hidden: int = 16, heads: int = 4, mask: bool = True, scale_form: str = "mul", scale=None,
              mask_axes=(1, 2), softmax_axis: int = -1, extra_user: bool = False, layers: int = 1, opset: int = 17):
    """BERT self-attention blocks as the torch exporter writes them (MiniLM's form):
    Q/K/V MatMul+Add, Reshape [0,0,n,d], Transpose, QK^T * 1/sqrt(d) + (1-mask)*min,
    Softmax, @V, Transpose, Reshape [0,0,H], then the output projection. All
    layers share one additive mask, computed once."""
    net = Net()
    size = hidden // heads
    split = net.const(np.array([0, 0, heads, size], np.int64))
    inputs = [("x", ["batch", "seq", hidden], F)]
    bias = None
    if mask:
        inputs.append(("mask", ["batch", "seq"], TensorProto.INT64))
        m = net.op("Cast", "mask", to=F)
        m = net.op("Unsqueeze", m, net.const(np.array(mask_axes, np.int64)))  # (1, 3) masks queries: a near miss
        bias = net.op("Mul", net.op("Sub", net.const(np.float32(1.0)), m), net.const(np.float32(np.finfo(np.float32).min)))
    x, extra = "x", []
    for _ in range(layers):
        def project(perm, x=x):
            p = net.op("Add", net.op("MatMul", x, net.weight(hidden, hidden)),
                       net.const(net.rng.standard_normal(hidden).astype(np.float32) * 0.1))
            return p, net.op("Transpose", net.op("Reshape", p, split), perm=perm)

        q_proj, q = project([0, 2, 1, 3])
        _, k = project([0, 2, 3, 1])
        _, v = project([0, 2, 1, 3])
        scores = net.op("MatMul", q, k)
        s = (1.0 / math.sqrt(size)) if scale is None else scale
        if scale_form == "mul":
            scaled = net.op("Mul", scores, net.const(np.float32(s)))
        else:
            scaled = net.op("Div", scores, net.const(np.float32(1.0 / s)))
        if bias is not None:
            scaled = net.op("Add", scaled, bias)
        probs = net.op("Softmax", scaled, axis=softmax_axis)
        ctx = net.op("Transpose", net.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        merged = net.op("Reshape", ctx, net.const(np.array([0, 0, hidden], np.int64)))
        x = net.op("Add", net.op("MatMul", merged, net.weight(hidden, hidden)), net.const(np.zeros(hidden, np.float32)))
        extra += [net.op("Relu", q_proj)] if extra_user else []
    return net.model(inputs, [x] + extra, opset=opset), net


def attention_feeds(batch: int = 2, seq: int = 5, hidden: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq - 2:] = 0  # padding at the end of the last sequence
    return {"x": rng.standard_normal((batch, seq, hidden)).astype(np.float32), "mask": mask}
