"""rmsnorm: the root-mean-square norm (T5, LLaMA, Gemma) that exporters write as

    y = x / Sqrt(ReduceMean(x ** 2) + eps)   (or x * Reciprocal(Sqrt(..)), x * (.. + eps) ** -0.5)
    out = y * gamma                          (gamma optional)

becomes the standard RMSNormalization from opset 23 (TVM's frontend converts it).
Below opset 23 there is no standard op (onnxruntime's SimplifiedLayerNormalization
sits in the default domain without being an ONNX op, so neither the onnx checker
nor other tools take it): the norm becomes one call of a model-local function,
onnxforge.RMSNormalization, whose body is the same standard ops. onnxruntime and
onnx's checker read model-local functions; codegen inlines them before TVM.
`standard_only=true` leaves the norm decomposed."""
from __future__ import annotations

import onnx
from onnx import helper

from ...ir.pattern import Const, Op, Opt, Var
from ..rewrite import RuleSet, rule
from .layernorm import _axes, _param, _trailing, normalized_shape

_X = Var("x", dtype=("float16", "float32", "float64"))
_MEAN_SQ = Op("ReduceMean", Op("Pow", _X, Const(value=2.0)) | Op("Mul", _X, _X), Opt(Const("axes")), name="mean_sq")
_VAR_EPS = Op("Add", _MEAN_SQ, Const("eps", scalar=True))
_STD = Op("Sqrt", _VAR_EPS)
_NORM = (Op("Div", _X, _STD)
         | Op("Mul", _X, Op("Reciprocal", _STD))
         | Op("Mul", _X, Op("Div", Const(value=1.0), _STD))
         | Op("Mul", _X, Op("Pow", _VAR_EPS, Const(value=-0.5))))


FUNCTION_DOMAIN = "onnxforge"


def rms_function(opset: int) -> onnx.FunctionProto:
    """onnxforge.RMSNormalization(X, Scale) with attributes axes (the normalized
    trailing axes), epsilon and dtype (X's element type), in standard ops of
    `opset`: X / Sqrt(ReduceMean(X * X, axes) + epsilon) * Scale."""
    ref = helper.make_attribute_ref
    nodes, mean = [], helper.make_node("ReduceMean", ["XX"], ["MS"], keepdims=1)
    if opset >= 18:  # ReduceMean takes axes as an input
        axes = helper.make_node("Constant", [], ["axes"])
        axes.attribute.append(ref("value_ints", onnx.AttributeProto.INTS, ref_attr_name="axes"))
        nodes.append(axes)
        mean.input.append("axes")
    else:
        mean.attribute.append(ref("axes", onnx.AttributeProto.INTS))
    eps = helper.make_node("Constant", [], ["E"])
    eps.attribute.append(ref("value_float", onnx.AttributeProto.FLOAT, ref_attr_name="epsilon"))
    cast = helper.make_node("Cast", ["E"], ["Et"])
    cast.attribute.append(ref("to", onnx.AttributeProto.INT, ref_attr_name="dtype"))
    nodes += [helper.make_node("Mul", ["X", "X"], ["XX"]), mean, eps, cast,
              helper.make_node("Add", ["MS", "Et"], ["V"]), helper.make_node("Sqrt", ["V"], ["S"]),
              helper.make_node("Div", ["X", "S"], ["N"]), helper.make_node("Mul", ["N", "Scale"], ["Y"])]
    return helper.make_function(FUNCTION_DOMAIN, "RMSNormalization", ["X", "Scale"], ["Y"], nodes,
                                [helper.make_opsetid("", opset)], attributes=["axes", "epsilon", "dtype"],
                                doc_string="RMS norm over `axes` (onnxforge fuse rmsnorm, below opset 23)")


def rules(standard_only: bool = False) -> RuleSet:
    def fuse(m, b, gamma: str | None):
        if b.opset < 23 and standard_only:
            return None
        x = m["x"]
        rank = None if x.shape is None else len(x.shape)
        k = _trailing(_axes(m, "mean_sq", "axes"), rank)
        if k is None:
            return None
        shape = normalized_shape(x, k, [m.const(gamma)] if gamma else [])
        scale = _param(m.const(gamma) if gamma else None, k, shape, 1.0)
        if scale is None:
            return None
        scale = b.const(scale.astype(x.np_dtype), name="rms_scale")
        epsilon = float(m.const("eps").reshape(()))
        if b.opset >= 23:
            return b.op("RMSNormalization", x, scale, axis=-k, epsilon=epsilon)
        b.use_function(rms_function(b.opset))
        return b.op("RMSNormalization", x, scale, domain=FUNCTION_DOMAIN, axes=list(range(-k, 0)),
                    epsilon=epsilon, dtype=x.dtype)

    @rule(Op("Mul", _NORM, Const("gamma")), needs_shapes=True)
    def rmsnorm(m, b):
        return fuse(m, b, "gamma")

    @rule(_NORM, needs_shapes=True)
    def rmsnorm_no_scale(m, b):
        return fuse(m, b, None)

    return RuleSet(rmsnorm, rmsnorm_no_scale)
