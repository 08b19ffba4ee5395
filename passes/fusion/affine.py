"""affine: multiplying, dividing, adding or subtracting a per-channel (or single)
constant right after a Conv / ConvTranspose / Gemm / MatMul with constant
weights folds into its weights and bias. A MatMul has no bias, so Add/Sub after
it is left to `gemm` (2-D) or stays (N-D: both runtimes fuse the add themselves)."""
from __future__ import annotations

import numpy as np

from ...ir.pattern import Const, Op, Opt, Var
from ..rewrite import RuleSet, rule
from .channels import LINEAR_OPS, channel_axis, fold_bias, output_channels, per_channel, scale_weight

_LINEAR = Op(LINEAR_OPS, Var("x"), Const("w"), Opt(Const("b")), name="linear")


def _output_rank(m) -> int | None:
    node, weight = m.node("linear"), m.const("w")
    if node.op_type in ("Conv", "ConvTranspose"):
        return weight.ndim
    if node.op_type == "Gemm":
        return 2
    shape = node.outputs[0].shape
    return None if shape is None else len(shape)


def _fold(m, b, f: np.ndarray | None, s: np.ndarray | None):
    """Replace linear -> affine by one linear node computing f * y + s."""
    node, weight = m.node("linear"), m.const("w")
    channels = output_channels(node, weight, m.opset_imports)
    if channels is None or weight.dtype.kind != "f":
        return None
    f = np.ones(channels) if f is None else f
    s = np.zeros(channels) if s is None else s
    attrs = dict(node.attributes)
    w = b.const(scale_weight(node, weight, f, m.opset_imports), name=m["w"].name + "_scaled")
    if node.op_type == "MatMul":
        return b.op("MatMul", m["x"], w) if not s.any() else None
    if node.op_type == "Gemm":
        c = m.const("b") * float(m.attr("linear", "beta", 1.0)) if "b" in m else None
        attrs["beta"] = 1.0
    else:
        c = m.const("b") if "b" in m else None
    return b.op(node.op_type, m["x"], w, b.const(fold_bias(c, f, s, weight.dtype), name="folded_bias"), **attrs)


def _vector(m):
    node = m.node("linear")
    channels = output_channels(node, m.const("w"), m.opset_imports)
    if channels is None:
        return None
    return per_channel(m.const("c"), channels, _output_rank(m), channel_axis(node))


@rule(Op("Mul", _LINEAR, Const("c")), needs_shapes=True)
def mul_into_weights(m, b):
    c = _vector(m)
    return None if c is None else _fold(m, b, c, c * 0)


@rule(Op("Div", _LINEAR, Const("c")), needs_shapes=True)
def div_into_weights(m, b):
    c = _vector(m)
    return None if c is None or not c.all() else _fold(m, b, 1.0 / c, c * 0)


@rule(Op("Add", _LINEAR, Const("c")), needs_shapes=True)
def add_into_bias(m, b):
    c = _vector(m)
    return None if c is None else _fold(m, b, None, c)


@rule(Op("Sub", _LINEAR, Const("c")), needs_shapes=True)
def sub_into_bias(m, b):
    c = _vector(m)
    return None if c is None else _fold(m, b, None, -c)


RULES = RuleSet(mul_into_weights, div_into_weights, add_into_bias, sub_into_bias)
