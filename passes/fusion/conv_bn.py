"""conv-bn: an inference BatchNormalization after a Conv / ConvTranspose / Gemm /
MatMul with constant weights becomes part of that node's weights and bias
(a MatMul becomes a Gemm, which has a bias)."""
from __future__ import annotations

import numpy as np

from ...ir.pattern import Const, Op, Opt, Var
from ..rewrite import RuleSet, rule
from .channels import LINEAR_OPS, fold_bias, output_channels, scale_weight

_LINEAR = Op(LINEAR_OPS, Var("x"), Const("w"), Opt(Const("b")), name="linear")
_BN = Op("BatchNormalization", _LINEAR, Const("scale", rank=1), Const("shift", rank=1), Const("mean", rank=1),
         Const("var", rank=1), name="bn", attrs={"training_mode": lambda v: not v})


@rule(_BN, needs_shapes=True)
def conv_bn(m, b):
    node, weight = m.node("linear"), m.const("w")
    if weight.dtype.kind != "f":
        return None
    channels = output_channels(node, weight, m.opset_imports)
    params = [m.const(k).astype(np.float64) for k in ("scale", "shift", "mean", "var")]
    if channels is None or any(p.size != channels for p in params):
        return None
    if node.op_type == "MatMul":  # BN normalizes axis 1: the last one only for 2-D outputs
        x = m["x"]
        if x.shape is None or len(x.shape) != 2:
            return None
    scale, shift, mean, var = params
    f = scale / np.sqrt(var + float(m.attr("bn", "epsilon", 1e-5)))
    s = shift - mean * f
    w = b.const(scale_weight(node, weight, f, m.opset_imports), name=m["w"].name + "_bn")
    attrs = dict(node.attributes)
    if node.op_type in ("Conv", "ConvTranspose"):
        bias = m.const("b") if "b" in m else None
        return b.op(node.op_type, m["x"], w, b.const(fold_bias(bias, f, s, weight.dtype), name="bn_bias"), **attrs)
    if node.op_type == "Gemm":
        c = m.const("b") * float(m.attr("linear", "beta", 1.0)) if "b" in m else None
        attrs["beta"] = 1.0
        return b.op("Gemm", m["x"], w, b.const(fold_bias(c, f, s, weight.dtype), name="bn_bias"), **attrs)
    return b.op("Gemm", m["x"], w, b.const(s.astype(weight.dtype), name="bn_bias"))


RULES = RuleSet(conv_bn)
