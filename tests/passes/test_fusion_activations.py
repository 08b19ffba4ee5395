"""hardsigmoid, hardswish and (opt-in) silu fusions."""
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


def relu6_of_x_plus_3(net, x="x", lo=0.0, hi=6.0, shift=3.0, opset=17):
    shifted = net.op("Add", x, net.const(np.float32(shift)))
    if opset < 11:
        return net.op("Clip", shifted, min=lo, max=hi)
    return net.op("Clip", shifted, net.const(np.float32(lo)), net.const(np.float32(hi)))


@pytest.mark.parametrize("opset,expected", [(12, Counter({"Mul": 1, "HardSigmoid": 1})), (14, Counter({"HardSwish": 1})),
                                            (10, Counter({"Mul": 1, "HardSigmoid": 1}))])
def test_hardswish_from_relu6_form(opset, expected):
    """x * Clip(x + 3, 0, 6) / 6, PaddleOCR's export; below opset 14 it becomes
    x * HardSigmoid(x), as HardSwish does not exist yet."""
    net = fm.Net()
    y = net.op("Div", net.op("Mul", "x", relu6_of_x_plus_3(net, opset=opset)), net.const(np.float32(6.0)))
    result = run_and_check(net.model([("x", [2, 3, 4], F)], [y], opset=opset), "fuse{patterns=hardswish}")
    assert ops(result.model) == expected


def test_hardswish_from_hardsigmoid_and_hardsigmoid_forms():
    net = fm.Net()
    a = net.op("Mul", "x", net.op("HardSigmoid", "x", alpha=1 / 6, beta=0.5))
    b = net.op("Mul", relu6_of_x_plus_3(net), net.const(np.float32(1 / 6)))
    c = net.op("Clip", net.op("Add", net.op("Mul", "x", net.const(np.float32(0.2))), net.const(np.float32(0.5))),
               net.const(np.float32(0.0)), net.const(np.float32(1.0)))
    result = run_and_check(net.model([("x", [2, 8], F)], [a, b, c]), "fuse{patterns=hardswish+hardsigmoid}")
    assert ops(result.model) == Counter({"HardSwish": 1, "HardSigmoid": 2})
    alphas = sorted(round(n.attr("alpha"), 4) for n in result.model.graph.nodes if n.op_type == "HardSigmoid")
    assert alphas == [0.1667, 0.2]


def test_activation_near_misses():
    """Not fused: Clip(x + 3, 0, 5), x + 2, a different x outside the Clip, a
    HardSigmoid with other parameters."""
    net = fm.Net()
    outs = [net.op("Div", relu6_of_x_plus_3(net, hi=5.0), net.const(np.float32(6.0))),
            net.op("Div", relu6_of_x_plus_3(net, shift=2.0), net.const(np.float32(6.0))),
            net.op("Div", net.op("Mul", "other", relu6_of_x_plus_3(net)), net.const(np.float32(6.0))),
            net.op("Mul", "x", net.op("HardSigmoid", "x", alpha=0.2, beta=0.5))]
    proto = net.model([("x", [2, 8], F), ("other", [2, 8], F)], outs)
    assert unchanged(proto, "fuse{patterns=hardswish+hardsigmoid}")


def test_silu_is_opt_in_and_needs_opset_24():
    def swish(opset):
        net = fm.Net()
        y = net.op("Mul", "x", net.op("Sigmoid", net.op("Mul", "x", net.const(np.float32(1.5)))))
        return net.model([("x", [2, 8], F)], [y], opset=opset)

    assert unchanged(swish(24), "fuse")  # not in the default set: TVM 0.27 cannot read Swish
    assert unchanged(swish(17), "fuse{patterns=silu}")
    result = run_and_check(swish(24), "fuse{patterns=silu}")
    assert ops(result.model) == Counter({"Swish": 1}) and result.model.graph.nodes[0].attr("alpha") == 1.5
