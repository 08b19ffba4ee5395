"""conv-bn and affine fusions: BatchNorm and constant Mul/Div/Add/Sub folded into
Conv / ConvTranspose / Gemm / MatMul weights and bias. Outputs checked against
onnxruntime (atol=rtol=1e-4: folded weights round differently), a second run
changes nothing, and near misses change nothing."""
from collections import Counter

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxforge
from tests.conftest import run_and_check
from tests.models import fusion as fm

F = TensorProto.FLOAT
TOL = dict(atol=1e-4, rtol=1e-4)


def ops(model):
    return Counter(n.op_type for n in model.graph.all_nodes())


def unchanged(proto, pipeline="fuse"):
    return not onnxforge.optimize(onnxforge.load(proto), pipeline).changed


@pytest.mark.parametrize("op,group,bias", [("Conv", 1, True), ("Conv", 2, False), ("ConvTranspose", 1, True),
                                           ("ConvTranspose", 2, False)])
def test_bn_folds_into_convolutions(op, group, bias):
    proto, _ = fm.conv_bn(op, group=group, bias=bias)
    result = run_and_check(proto, "fuse{patterns=conv-bn}", **TOL)
    assert ops(result.model) == Counter({op: 1})
    assert result.records[0].stats["conv-bn"] == 1
    assert len(result.model.graph.nodes[0].inputs) == 3  # the BN shift became the bias


@pytest.mark.parametrize("trans_b", [0, 1])
def test_bn_folds_into_gemm_and_matmul(trans_b):
    net = fm.Net()
    w = net.weight(*((6, 4) if trans_b else (4, 6)))
    g = net.op("Gemm", "x", w, net.const(np.arange(6, dtype=np.float32)), transB=trans_b, alpha=0.5, beta=2.0)
    m = net.op("MatMul", "x", net.weight(4, 6))
    outs = []
    for y in (g, m):
        params = [net.const(a.astype(np.float32)) for a in (net.rng.uniform(0.5, 2, 6), net.rng.standard_normal(6),
                                                             net.rng.standard_normal(6), net.rng.uniform(0.1, 2, 6))]
        outs.append(net.op("BatchNormalization", y, *params))
    result = run_and_check(net.model([("x", [3, 4], F)], outs), "fuse{patterns=conv-bn}", **TOL)
    assert ops(result.model) == Counter({"Gemm": 2})


def test_bn_near_misses():
    """Not folded: a non-constant scale, an extra reader of the conv output, a
    MatMul whose BN axis 1 is not its last axis, training mode."""
    net = fm.Net()
    c = net.op("Conv", "x", net.weight(3, 2, 1, 1))
    stats = [net.const(a.astype(np.float32)) for a in (np.zeros(3), np.zeros(3), np.ones(3))]
    a = net.op("BatchNormalization", c, "scale", *stats)  # scale is fed at run time
    c2 = net.op("Conv", "x", net.weight(3, 2, 1, 1))
    b = net.op("BatchNormalization", c2, net.const(np.ones(3, np.float32)), *stats)
    r = net.op("Relu", c2)  # c2 has another reader
    mm = net.op("MatMul", "x3", net.weight(4, 3))  # [1, 3, 3]: BN normalizes axis 1, not the MatMul's columns
    d = net.op("BatchNormalization", mm, net.const(np.ones(3, np.float32)), *stats)
    proto = net.model([("x", [1, 2, 4, 4], F), ("scale", [3], F), ("x3", [1, 3, 4], F)], [a, b, r, d])
    assert unchanged(proto, "fuse{patterns=conv-bn}")

    training, _ = fm.conv_bn()
    bn = training.graph.node[-1]
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    assert unchanged(training, "fuse{patterns=conv-bn}")


@pytest.mark.parametrize("op,const_shape", [("Mul", (1, 6, 1, 1)), ("Div", (6, 1, 1)), ("Add", (1, 6, 1, 1)),
                                            ("Sub", ()), ("Mul", ())])
def test_constant_affine_folds_into_conv(op, const_shape):
    net = fm.Net()
    conv = net.op("Conv", "x", net.weight(6, 4, 3, 3), net.const(np.arange(6, dtype=np.float32)))
    c = net.const(net.rng.uniform(0.5, 2, const_shape).astype(np.float32))
    y = net.op(op, c, conv) if op in ("Mul", "Add") else net.op(op, conv, c)  # constant first: still found
    result = run_and_check(net.model([("x", [1, 4, 5, 5], F)], [y]), "fuse{patterns=affine}", **TOL)
    assert ops(result.model) == Counter({"Conv": 1})


def test_constant_affine_folds_into_gemm_and_matmul():
    net = fm.Net()
    g = net.op("Gemm", "x", net.weight(6, 4), net.const(np.ones(6, np.float32)), transB=1, beta=0.5)
    g = net.op("Add", net.op("Mul", g, net.const(net.rng.uniform(1, 2, 6).astype(np.float32))),
               net.const(np.arange(6, dtype=np.float32)))
    m = net.op("Div", net.op("MatMul", "x3", net.weight(4, 6)), net.const(np.float32(3.0)))  # N-D MatMul: scale only
    result = run_and_check(net.model([("x", [3, 4], F), ("x3", [2, 3, 4], F)], [g, m]), "fuse{patterns=affine}", **TOL)
    assert ops(result.model) == Counter({"Gemm": 1, "MatMul": 1})


def test_affine_near_misses():
    """Not folded: a constant that varies over spatial positions (wrong axis), a
    (C,) vector that broadcasts over the last (width) axis of a conv output,
    a run-time scale, an extra reader of the conv output, Add after an N-D MatMul."""
    net = fm.Net()
    outs = []
    for const in (np.ones((1, 1, 5, 6)), np.ones(6)):
        conv = net.op("Conv", "x", net.weight(6, 4, 1, 1))
        outs.append(net.op("Mul", conv, net.const(const.astype(np.float32))))
    conv = net.op("Conv", "x", net.weight(6, 4, 1, 1))
    outs.append(net.op("Mul", conv, "s"))
    conv = net.op("Conv", "x", net.weight(6, 4, 1, 1))
    outs += [net.op("Add", conv, net.const(np.ones((1, 6, 1, 1), np.float32))), net.op("Relu", conv)]
    outs.append(net.op("Add", net.op("MatMul", "x3", net.weight(4, 6)), net.const(np.ones(6, np.float32))))
    proto = net.model([("x", [1, 4, 5, 6], F), ("s", [1, 6, 1, 1], F), ("x3", [2, 3, 4], F)], outs)
    assert unchanged(proto, "fuse{patterns=affine}")
