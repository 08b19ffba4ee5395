"""gelu: the erf form  x * 0.5 * (1 + erf(x / sqrt(2)))  and the tanh form
x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  (any association of the
products) become one op: standard Gelu from opset 20; below that onnxruntime's
com.microsoft Gelu / FastGelu, which TVM's ONNX frontend converts too (its
converter map is keyed by op type), unless standard_only asks for plain ONNX.
The sigmoid form x * sigmoid(1.702 x) (CLIP) becomes Swish(alpha=1.702) from
opset 24, below that com.microsoft QuickGelu (lowered in codegen/lowerings.py)."""
from __future__ import annotations

import math

from ...ir.pattern import Const, Op, Var
from ..rewrite import RuleSet, rule

_X = Var("x")
_HALF, _ONE = Const(value=0.5), Const(value=1.0)

_ERF = Op("Erf", Op("Div", _X, Const(value=math.sqrt(2.0))) | Op("Mul", _X, Const(value=1 / math.sqrt(2.0))))
_CUBE = Op("Pow", _X, Const(value=3.0)) | Op("Mul", _X, Op("Mul", _X, _X))
_INNER = Op("Add", _X, Op("Mul", _CUBE, Const(value=0.044715)))
_TANH = Op("Tanh", Op("Mul", _INNER, Const(value=math.sqrt(2.0 / math.pi))))


def _gelu(core: Op) -> Op:
    """x * 0.5 * (1 + core), in the three ways exporters group the product."""
    one_plus = Op("Add", core, _ONE)
    return (Op("Mul", _X, Op("Mul", one_plus, _HALF))
            | Op("Mul", Op("Mul", _X, _HALF), one_plus)
            | Op("Mul", Op("Mul", _X, one_plus), _HALF))


def _replace(b, x, approximate: str, standard_only: bool):
    if b.opset >= 20:
        return b.op("Gelu", x, approximate=approximate if approximate != "none" else None)
    if standard_only:
        return None
    if approximate == "tanh":
        return b.op("FastGelu", x, domain="com.microsoft")
    return b.op("Gelu", x, domain="com.microsoft")


def rules(standard_only: bool = False) -> RuleSet:
    @rule(_gelu(_ERF), name="gelu-erf")
    def gelu_erf(m, b):
        return _replace(b, m["x"], "none", standard_only)

    @rule(_gelu(_TANH), name="gelu-tanh")
    def gelu_tanh(m, b):
        return _replace(b, m["x"], "tanh", standard_only)

    @rule(Op("Mul", _X, Op("Sigmoid", Op("Mul", _X, Const("alpha", scalar=True)))), name="gelu-quick")
    def gelu_quick(m, b):
        """x * sigmoid(1.702 x), the sigmoid approximation of GELU (CLIP, some ViTs)."""
        alpha = float(m.const("alpha").reshape(()))
        if not math.isclose(alpha, 1.702, rel_tol=1e-3):
            return None
        if b.opset >= 24:
            return b.op("Swish", m["x"], alpha=alpha)
        return None if standard_only else b.op("QuickGelu", m["x"], domain="com.microsoft", alpha=alpha)

    return RuleSet(gelu_erf, gelu_tanh, gelu_quick)
