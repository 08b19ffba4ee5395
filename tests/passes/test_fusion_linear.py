"""gemm and transpose-gemm fusions: 2-D MatMul + Add -> Gemm, Transpose into
Gemm's transA/transB (and a 2-D MatMul with a transposed operand -> Gemm)."""
from collections import Counter

import numpy as np
import pytest
from onnx import TensorProto

import onnxforge
from tests.conftest import run_and_check
from tests.models import fusion as fm

F = TensorProto.FLOAT


def ops(model):
    return Counter(n.op_type for n in model.graph.all_nodes())


def unchanged(proto, pipeline):
    return not onnxforge.optimize(onnxforge.load(proto), pipeline).changed


@pytest.mark.parametrize("bias_shape", [(6,), (1, 6), (3, 6), (3, 1), ()])
def test_matmul_add_becomes_gemm(bias_shape):
    net = fm.Net()
    y = net.op("Add", net.op("MatMul", "x", net.weight(4, 6)), net.const(np.ones(bias_shape, np.float32) * 0.5))
    result = run_and_check(net.model([("x", [3, 4], F)], [y]), "fuse{patterns=gemm}")
    assert ops(result.model) == Counter({"Gemm": 1})


def test_matmul_add_near_misses():
    """Not fused: N-D MatMul (Gemm is 2-D), a bias that would add a dimension, a
    MatMul output that something else reads, a bias of another dtype."""
    net = fm.Net()
    a = net.op("Add", net.op("MatMul", "x3", net.weight(4, 6)), net.const(np.ones(6, np.float32)))
    b = net.op("Add", net.op("MatMul", "x", net.weight(4, 6)), net.const(np.ones((2, 3, 6), np.float32)))
    mm = net.op("MatMul", "x", net.weight(4, 6))
    c, r = net.op("Add", mm, net.const(np.ones(6, np.float32))), net.op("Relu", mm)
    d = net.op("Add", net.op("MatMul", "x", net.weight(4, 6)), "runtime_bias")  # fine: any C works ...
    proto = net.model([("x", [3, 4], F), ("x3", [2, 3, 4], F), ("runtime_bias", [5, 3, 6], F)], [a, b, c, r, d])
    assert unchanged(proto, "fuse{patterns=gemm}")  # ... but [5, 3, 6] is not a Gemm bias either


def test_transposes_fold_into_gemm_flags():
    net = fm.Net()
    g = net.op("Gemm", net.op("Transpose", "xt", perm=[1, 0]), net.weight(4, 6), alpha=2.0)
    h = net.op("Gemm", "x", net.op("Transpose", "w2"), transB=1)  # default perm: reverse
    i = net.op("MatMul", net.op("Transpose", "xt", perm=[1, 0]), net.weight(4, 6))
    j = net.op("MatMul", "x", net.op("Transpose", "w_runtime", perm=[1, 0]))
    proto = net.model([("xt", [4, 3], F), ("x", [3, 4], F), ("w_runtime", [6, 4], F), ("w2", [4, 6], F)], [g, h, i, j])
    result = run_and_check(proto, "fuse{patterns=transpose-gemm}")
    assert ops(result.model) == Counter({"Gemm": 4})
    flags = sorted((n.attr("transA", 0), n.attr("transB", 0)) for n in result.model.graph.nodes)
    assert flags == [(0, 0), (0, 1), (1, 0), (1, 0)]


def test_transpose_near_misses():
    """Not folded: a 3-D transpose before MatMul (no Gemm form), a transpose that
    something else also reads."""
    net = fm.Net()
    a = net.op("MatMul", net.op("Transpose", "x3", perm=[0, 2, 1]), net.weight(3, 5))
    t = net.op("Transpose", "xt", perm=[1, 0])
    b, c = net.op("MatMul", t, net.weight(4, 6)), net.op("Relu", t)
    proto = net.model([("x3", [2, 3, 4], F), ("xt", [4, 3], F)], [a, b, c])
    assert unchanged(proto, "fuse{patterns=transpose-gemm}")
