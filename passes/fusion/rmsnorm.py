"""rmsnorm: the root-mean-square norm (T5, LLaMA, Gemma) that exporters write as

    y = x / Sqrt(ReduceMean(x ** 2) + eps)   (or x * Reciprocal(Sqrt(..)), x * (.. + eps) ** -0.5)
    out = y * gamma                          (gamma optional)

becomes the standard RMSNormalization from opset 23 (TVM's frontend converts it).
Below opset 23 it stays: onnxruntime's own fused form, SimplifiedLayerNormalization,
lives in the default domain without being an ONNX op, so no other tool (nor the
onnx checker) takes it."""
from __future__ import annotations

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


def rules(standard_only: bool = False) -> RuleSet:  # noqa: ARG001 - only standard ops
    def fuse(m, b, gamma: str | None):
        if b.opset < 23:
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
        return b.op("RMSNormalization", x, scale, axis=-k, epsilon=float(m.const("eps").reshape(())))

    @rule(Op("Mul", _NORM, Const("gamma")), needs_shapes=True)
    def rmsnorm(m, b):
        return fuse(m, b, "gamma")

    @rule(_NORM, needs_shapes=True)
    def rmsnorm_no_scale(m, b):
        return fuse(m, b, None)

    return RuleSet(rmsnorm, rmsnorm_no_scale)
