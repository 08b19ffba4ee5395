"""Small models for the pruning and low-rank tests: conv stacks with BatchNorm,
residual adds, concats, depthwise and grouped convs, a classifier head; a
transformer block with decomposed multi-head attention and a GELU FFN."""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from .fusion import Net

F = TensorProto.FLOAT


def _bn(net: Net, x: str, c: int) -> str:
    return net.op("BatchNormalization", x, net.const(net.rng.uniform(0.5, 1.5, c).astype(np.float32)),
                  net.const(net.rng.standard_normal(c).astype(np.float32) * 0.1),
                  net.const(net.rng.standard_normal(c).astype(np.float32) * 0.1),
                  net.const(net.rng.uniform(0.5, 1.5, c).astype(np.float32)), epsilon=1e-5)


def _conv(net: Net, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, stride: int = 1):
    w = net.weight(cout, cin // group, k, k, scale=1.0 / math.sqrt(cin // group * k * k))
    inputs = [x, w] + ([net.const(net.rng.standard_normal(cout).astype(np.float32) * 0.1)] if bias else [])
    return net.op("Conv", *inputs, pads=[k // 2] * 4, group=group, strides=[stride, stride], name=net.name("conv"))


def convnet(seed: int = 0, size: int = 8):
    """stem Conv-BN-Relu (16) -> [Conv-BN-Relu-Conv-BN] + residual -> Relu
    -> concat(branch a: 1x1 conv 8, branch b: 1x1 conv 16) -> depthwise 3x3 (24)
    -> HardSwish -> 1x1 conv 32 -> grouped conv (group 4) -> Relu -> SE-style
    (GlobalAveragePool, 1x1 conv, Sigmoid, Mul) -> GlobalAveragePool -> Flatten -> Gemm 10."""
    net = Net(seed)
    x = net.op("Relu", _bn(net, _conv(net, "x", 3, 16, bias=False), 16))
    r = _bn(net, _conv(net, net.op("Relu", _bn(net, _conv(net, x, 16, 24), 24)), 24, 16), 16)
    x = net.op("Relu", net.op("Add", x, r))
    a = net.op("Relu", _conv(net, x, 16, 8, k=1))
    b = net.op("Clip", _conv(net, x, 16, 16, k=1), net.const(np.float32(0)), net.const(np.float32(6)))
    cat = net.op("Concat", a, b, axis=1)
    dw = net.op("HardSwish", _bn(net, _conv(net, cat, 24, 24, group=24), 24))
    p = _conv(net, dw, 24, 32, k=1)
    g = net.op("Relu", _conv(net, p, 32, 32, group=4))
    se = net.op("GlobalAveragePool", g)
    se = net.op("Sigmoid", _conv(net, net.op("Relu", _conv(net, se, 32, 8, k=1)), 8, 32, k=1))
    g = net.op("Mul", g, se)
    h = _conv(net, g, 32, 40, k=1)
    pooled = net.op("Flatten", net.op("GlobalAveragePool", net.op("Relu", h)), axis=1)
    y = net.op("Gemm", pooled, net.weight(10, 40), net.const(np.zeros(10, np.float32)), transB=1)
    return net.model([("x", [1, 3, size, size], F)], [y])


def mobile_block(seed: int = 0, size: int = 8):
    """EfficientNet-style inverted residual: 1x1 expand (16->64) ReLU6, depthwise 3x3,
    ReLU6, 1x1 project (64->16), residual add; then a 1x1 head conv and Gemm."""
    net = Net(seed)
    x = net.op("Relu", _conv(net, "x", 3, 16))
    e = net.op("Clip", _conv(net, x, 16, 64, k=1), net.const(np.float32(0)), net.const(np.float32(6)))
    d = net.op("Clip", _conv(net, e, 64, 64, group=64), net.const(np.float32(0)), net.const(np.float32(6)))
    x = net.op("Add", x, _conv(net, d, 64, 16, k=1))
    h = net.op("Relu", _conv(net, x, 16, 48, k=1))
    pooled = net.op("Flatten", net.op("GlobalAveragePool", h), axis=1)
    y = net.op("Gemm", pooled, net.weight(10, 48), net.const(np.zeros(10, np.float32)), transB=1)
    return net.model([("x", [2, 3, size, size], F)], [y])


def transformer(hidden: int = 32, heads: int = 4, ffn: int = 64, layers: int = 1, seed: int = 0,
                dynamic_shape: bool = False):
    """BERT encoder layers as the torch exporter writes them: Q/K/V MatMul+Add,
    Reshape to heads (a constant [0,0,heads,d], or with dynamic_shape a Concat of
    Shape-gathered dims with -1, as in MiniLM's export), Transpose, QK^T scaled,
    additive mask, Softmax, @V, merge, output projection, residual, LayerNorm, GELU
    FFN, residual, LayerNorm."""
    net = Net(seed)
    d = hidden // heads
    m = net.op("Cast", "mask", to=F)
    m = net.op("Unsqueeze", m, net.const(np.array([1, 2], np.int64)))
    bias = net.op("Mul", net.op("Sub", net.const(np.float32(1.0)), m), net.const(np.float32(-10000.0)))
    if dynamic_shape:
        shape = net.op("Shape", "x")
        bs = net.op("Slice", shape, net.const(np.array([0], np.int64)), net.const(np.array([2], np.int64)))
        split = net.op("Concat", bs, net.const(np.array([-1, d], np.int64)), axis=0)
        merge = net.op("Concat", bs, net.const(np.array([-1], np.int64)), axis=0)
    else:
        split = net.const(np.array([0, 0, heads, d], np.int64))
        merge = net.const(np.array([0, 0, hidden], np.int64))
    x = "x"
    s = 1.0 / math.sqrt(hidden)
    for _ in range(layers):
        def project(perm, x=x):
            p = net.op("Add", net.op("MatMul", x, net.weight(hidden, hidden, scale=s)),
                       net.const(net.rng.standard_normal(hidden).astype(np.float32) * 0.1))
            return net.op("Transpose", net.op("Reshape", p, split), perm=perm)

        q, k, v = project([0, 2, 1, 3]), project([0, 2, 3, 1]), project([0, 2, 1, 3])
        scores = net.op("Add", net.op("Mul", net.op("MatMul", q, k), net.const(np.float32(1 / math.sqrt(d)))), bias)
        ctx = net.op("Transpose", net.op("MatMul", net.op("Softmax", scores, axis=-1), v), perm=[0, 2, 1, 3])
        att = net.op("Add", net.op("MatMul", net.op("Reshape", ctx, merge), net.weight(hidden, hidden, scale=s)),
                     net.const(np.zeros(hidden, np.float32)))
        x = net.op("LayerNormalization", net.op("Add", att, x), net.const(np.ones(hidden, np.float32)),
                   net.const(np.zeros(hidden, np.float32)), axis=-1, epsilon=1e-5)
        h = net.op("Add", net.op("MatMul", x, net.weight(hidden, ffn, scale=s)),
                   net.const(net.rng.standard_normal(ffn).astype(np.float32) * 0.1))
        g = net.op("Mul", net.op("Mul", h, net.const(np.float32(0.5))),
                   net.op("Add", net.op("Erf", net.op("Div", h, net.const(np.float32(math.sqrt(2))))),
                          net.const(np.float32(1.0))))
        f = net.op("Add", net.op("MatMul", g, net.weight(ffn, hidden, scale=1 / math.sqrt(ffn))),
                   net.const(np.zeros(hidden, np.float32)))
        x = net.op("LayerNormalization", net.op("Add", f, x), net.const(np.ones(hidden, np.float32)),
                   net.const(np.zeros(hidden, np.float32)), axis=-1, epsilon=1e-5)
    return net.model([("x", ["batch", "seq", hidden], F), ("mask", ["batch", "seq"], TensorProto.INT64)], [x])


def transformer_feeds(batch: int = 2, seq: int = 6, hidden: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq - 2:] = 0
    return {"x": rng.standard_normal((batch, seq, hidden)).astype(np.float32), "mask": mask}


def split_model(seed: int = 0):
    """A 1x1 conv (24) split into 8 + 16 channels, each branch through its own conv,
    concatenated back; a Split the pruner must rewrite."""
    net = Net(seed)
    x = _conv(net, "x", 4, 24, k=1)
    a, b = net.op("Split", net.op("Relu", x), net.const(np.array([8, 16], np.int64)), axis=1, outputs=2)
    y = net.op("Concat", _conv(net, a, 8, 8, k=1), _conv(net, b, 16, 8, k=1), axis=1)
    return net.model([("x", [1, 4, 6, 6], F)], [y])
