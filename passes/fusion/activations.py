"""hardsigmoid, hardswish, silu: the elementwise forms exporters emit for these
activations become one op.

- hardsigmoid: Clip(x + 3, 0, 6) / 6 (or * 1/6), and Clip(a*x + b, 0, 1), become
  HardSigmoid.
- hardswish: x * Clip(x + 3, 0, 6) / 6 (any grouping) and x * HardSigmoid(x)
  with alpha=1/6, beta=1/2 become HardSwish (opset 14 and later); below opset 14
  the first form becomes x * HardSigmoid(x).
- silu: x * Sigmoid(a*x) becomes Swish, which only opset 24 and later define and
  which TVM's ONNX frontend does not convert: not in the default set."""
from __future__ import annotations

import math


from ...ir.pattern import Const, Op, Opt, Var
from ..rewrite import RuleSet, rule

_X = Var("x")
_BOUNDS = (Opt(Const("lo", scalar=True)), Opt(Const("hi", scalar=True)))
_RELU6 = Op("Clip", Op("Add", _X, Const(value=3.0)), *_BOUNDS, name="clip")
_SIXTH = 1.0 / 6.0


def _bounds(m) -> tuple[float, float]:
    """Clip's bounds, from inputs (opset 11+) or attributes (before)."""
    node = m.node("clip")
    lo = m.const("lo").item() if "lo" in m else node.attr("min", -math.inf)
    hi = m.const("hi").item() if "hi" in m else node.attr("max", math.inf)
    return float(lo), float(hi)


def _is_relu6(m) -> bool:
    return _bounds(m) == (0.0, 6.0)


def _hard_sigmoid(b, x, alpha: float = _SIXTH, beta: float = 0.5):
    return b.op("HardSigmoid", x, alpha=float(alpha), beta=float(beta))


@rule(Op("Div", _RELU6, Const(value=6.0)) | Op("Mul", _RELU6, Const(value=_SIXTH)))
def hardsigmoid_relu6(m, b):
    return _hard_sigmoid(b, m["x"]) if _is_relu6(m) else None


@rule(Op("Clip", Op("Add", Op("Mul", _X, Const("alpha", scalar=True)), Const("beta", scalar=True)), *_BOUNDS, name="clip"))
def hardsigmoid_affine(m, b):
    if _bounds(m) != (0.0, 1.0):
        return None
    return _hard_sigmoid(b, m["x"], m.const("alpha").item(), m.const("beta").item())


def _hard_swish(m, b):
    if b.opset >= 14:
        return b.op("HardSwish", m["x"])
    return b.op("Mul", m["x"], _hard_sigmoid(b, m["x"]))


@rule(Op("Div", Op("Mul", _X, _RELU6), Const(value=6.0))
      | Op("Mul", Op("Mul", _X, _RELU6), Const(value=_SIXTH))
      | Op("Mul", _X, Op("Div", _RELU6, Const(value=6.0))))
def hardswish_relu6(m, b):
    return _hard_swish(m, b) if _is_relu6(m) else None


@rule(Op("Mul", _X, Op("HardSigmoid", _X, attrs={"alpha": _SIXTH, "beta": 0.5})))
def hardswish(m, b):
    return b.op("HardSwish", m["x"]) if b.opset >= 14 else None


@rule(Op("Mul", _X, Op("Sigmoid", _X | Op("Mul", _X, Const("alpha", scalar=True)))))
def silu(m, b):
    if b.opset < 24:
        return None
    alpha = m.const("alpha").item() if "alpha" in m else 1.0
    return b.op("Swish", m["x"], alpha=float(alpha))


HARDSIGMOID = RuleSet(hardsigmoid_relu6, hardsigmoid_affine)
HARDSWISH = RuleSet(hardswish_relu6, hardswish)
SILU = RuleSet(silu)
