"""Which ops after a conv/matmul DispatchBLAS folds into its C call (the epilogue):

    core -> [add bias] -> [activation]

with the bias one value per output channel and the activation one of activation.h's:
a clamp (Relu, Clip / ReLU6), or a gate `v * f(v)` where f is a sigmoid or a clamp of
an affine function of v, as exporters write SiLU / Swish (`v * Sigmoid(v)`) and
HardSwish (`HardSwish`, lowered to `v * clip(v + 3, 0, 6) / 6`, or `v *
HardSigmoid(v)`). Left to TVM, such a gate is one more pass over the output, and
worse, TVM fused it into the next conv's im2col kernel, where it was computed kh * kw times
(YOLOv8n: a third of the run time).

Only values nothing else reads are folded: the intermediate results disappear."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tvm
from tvm import relax

from .extern_calls import ACT_CLAMP, ACT_HARD_GATE, ACT_NONE, ACT_SIGMOID_GATE
from ..op_helpers import _constant_array
from .relax_types import dtype_of, shape_dims, static_shape


@dataclasses.dataclass
class Epilogue:
    """A bias (one value per output channel: rows of a conv's GEMM, columns of a
    matmul's) and an activation (activation.h: kind, lo, hi, alpha, beta)."""
    bias: relax.Expr | None = None
    act: int = ACT_NONE
    lo: float = -math.inf
    hi: float = math.inf
    alpha: float = 1.0
    beta: float = 0.0

    def te_args(self) -> tuple[list, dict]:
        """Extra call_te arguments: the bias tensor (if any) and the activation keywords."""
        return ([self.bias] if self.bias is not None else []), {
            "act": self.act, "lo": self.lo, "hi": self.hi, "alpha": self.alpha, "beta": self.beta}


NO_EPILOGUE = Epilogue()

_OPS = {name: tvm.ir.Op.get(f"relax.{name}") for name in (
    "add", "subtract", "multiply", "divide", "clip", "sigmoid", "nn.relu", "matmul", "nn.conv2d",
    "nn.conv2d_transpose")}


def _is(call, name: str) -> bool:
    return isinstance(call, relax.Call) and call.op.same_as(_OPS[name])


def _scalar(expr) -> float | None:
    """The value of a one-element float32 constant, else None."""
    data = _constant_array(expr) if dtype_of(expr) == "float32" else None
    return float(data.reshape(-1)[0]) if data is not None and data.size == 1 else None


def _clip_bounds(call) -> tuple[float, float] | None:
    if _is(call, "nn.relu"):
        return 0.0, math.inf
    lo, hi = float(call.args[1].value), float(call.args[2].value)
    return (lo, hi) if lo <= hi else None  # ONNX gives max then; leave it to TVM


class EpilogueMatcher:
    """Bindings and use counts of one function, and the epilogues found in it."""

    def __init__(self):
        self.analyze(None)

    def analyze(self, func) -> None:
        self._uses: dict = {}    # var -> number of uses
        self._value: dict = {}   # var -> the expression bound to it
        self._var: dict = {}     # bound expression -> its var
        self._clamped: set = set()  # vars read by a clip / relu
        self._gates: dict = {}   # multiply call -> (gated var, Epilogue with the gate's activation)
        self._gated: set = set()  # vars a gate multiplies
        if func is None:
            return

        def count(e):
            if isinstance(e, relax.Var):
                self._uses[e] = self._uses.get(e, 0) + 1

        relax.analysis.post_order_visit(func.body, count)
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self._value[binding.var] = binding.value
                    self._var[binding.value] = binding.var
        for value in self._value.values():
            if _is(value, "clip") or _is(value, "nn.relu"):
                self._clamped.add(value.args[0])
            elif _is(value, "multiply") and dtype_of(value) == "float32":
                for v, g in (value.args, value.args[::-1]):
                    try:  # anything unexpected: no gate (the ops stay TVM's), as in DispatchBLAS
                        act = self._gate(g, v) if self._uses.get(v, 0) == 2 else None
                    except Exception:
                        act = None
                    if act is not None:
                        self._gates[value] = (v, act)
                        self._gated.add(v)
                        break

    def _gate(self, g, v) -> Epilogue | None:
        """The activation of `v * g` when `g` is sigmoid(alpha v + beta) or a clamp of
        an affine function of v (through values read once), else None."""
        chain = []  # ops from g down to v, outermost first
        e = g
        while not e.same_as(v):
            call = self._value.get(e) if isinstance(e, relax.Var) and self._uses.get(e, 0) == 1 else None
            if not isinstance(call, relax.Call) or len(chain) > 8:
                return None
            chain.append(call)
            operands = [a for a in call.args if isinstance(a, relax.Var)]  # the rest: constants, clip's bounds
            if len(operands) != 1:
                return None
            e = operands[0]
        scale, shift, nonlinear = [1.0, 1.0], [0.0, 0.0], None  # affine maps before/after the nonlinearity
        for call in reversed(chain):
            side = 0 if nonlinear is None else 1
            if _is(call, "sigmoid") or _is(call, "clip") or _is(call, "nn.relu"):
                if nonlinear is not None:
                    return None
                bounds = None if _is(call, "sigmoid") else _clip_bounds(call)
                if bounds is None and not _is(call, "sigmoid"):
                    return None  # a Clip with max < min: TVM's
                nonlinear = ("clip", bounds) if bounds else ("sigmoid", None)
                continue
            if len(call.args) != 2:  # another unary op (tanh, exp: Mish, ...): not a gate form here
                return None
            x_first = isinstance(call.args[0], relax.Var)
            c = _scalar(call.args[1] if x_first else call.args[0])
            if c is None:
                return None
            s, b = scale[side], shift[side]
            if _is(call, "add"):
                b += c
            elif _is(call, "subtract"):
                s, b = (s, b - c) if x_first else (-s, c - b)
            elif _is(call, "multiply"):
                s, b = s * c, b * c
            elif _is(call, "divide") and x_first and c != 0.0:
                s, b = s / c, b / c
            else:
                return None
            scale[side], shift[side] = s, b
        if nonlinear is None:
            return None
        if nonlinear[0] == "sigmoid":
            if (scale[1], shift[1]) != (1.0, 0.0):
                return None
            return Epilogue(act=ACT_SIGMOID_GATE, alpha=scale[0], beta=shift[0])
        # s2 * clamp(s1 v + b1, lo, hi) + b2 == clamp(s2 s1 v + s2 b1 + b2, bounds mapped likewise)
        (s1, s2), (b1, b2) = scale, shift
        if s2 == 0.0:
            return None
        with np.errstate(invalid="ignore"):
            lo, hi = sorted(s2 * bound + b2 for bound in nonlinear[1])
        if math.isnan(lo) or math.isnan(hi):
            return None
        return Epilogue(act=ACT_HARD_GATE, lo=lo, hi=hi, alpha=s2 * s1, beta=s2 * b1 + b2)

    # ---- matching
    def _single_use(self, expr):
        """The call bound to `expr` (a var of the original function) if nothing else reads it."""
        if not isinstance(expr, relax.Var) or self._uses.get(expr, 0) != 1:
            return None
        value = self._value.get(expr)
        return value if isinstance(value, relax.Call) else None

    @staticmethod
    def is_core(call) -> bool:
        return _is(call, "nn.conv2d") or _is(call, "nn.conv2d_transpose") or _is(call, "matmul")

    @staticmethod
    def triggers(call) -> bool:
        """Ops whose rewrite may fold an epilogue (the last op of one)."""
        return any(_is(call, name) for name in ("add", "clip", "nn.relu", "multiply"))

    def _bias_fits(self, core, bias) -> bool:
        """A constant-shaped float32 bias that adds one value per output channel: (1, C, 1, 1)
        or (C, 1, 1) after a conv, (..., 1, N) or (N,) after a matmul, no broadcast growth.
        The core's other dims may be symbolic (a package for any batch or image size:
        left unfolded there, every SiLU of YOLOv8n ran as a TVM kernel of its own)."""
        so, sb = shape_dims(core), static_shape(bias)
        if so is None or sb is None or dtype_of(bias) != "float32" or len(sb) > len(so):
            return False
        sb = [1] * (len(so) - len(sb)) + sb
        axis = len(so) - 1 if _is(core, "matmul") else 1
        if not isinstance(so[axis], int):
            return False
        return all(d == (so[axis] if i == axis else 1) for i, d in enumerate(sb))

    def _activation_follows(self, call) -> bool:
        """Whether the value of `call` goes on into a clamp or a gate (which takes the epilogue)."""
        var = self._var.get(call)
        return var is not None and ((self._uses.get(var, 0) == 1 and var in self._clamped) or var in self._gated)

    def match(self, call) -> tuple[Epilogue, relax.Call] | None:
        """(Epilogue, core conv/matmul call) for an add/clip/relu/gate multiply of the
        original function, or None."""
        epilogue, x = NO_EPILOGUE, call
        if _is(call, "clip") or _is(call, "nn.relu"):
            bounds = _clip_bounds(call)
            if dtype_of(call) != "float32" or bounds is None:
                return None
            epilogue = Epilogue(act=ACT_CLAMP, lo=bounds[0], hi=bounds[1])
            x = self._single_use(call.args[0])
        elif _is(call, "multiply"):
            gate = self._gates.get(call)
            if gate is None:
                return None
            var, epilogue = gate
            x = self._value.get(var)
        if not isinstance(x, relax.Call):
            return None
        if _is(x, "add"):
            if epilogue.act == ACT_NONE and self._activation_follows(call):
                return None
            for core, b in ((x.args[0], x.args[1]), (x.args[1], x.args[0])):
                core = self._single_use(core)
                if core is not None and self.is_core(core) and self._bias_fits(core, b):
                    x, epilogue = core, dataclasses.replace(epilogue, bias=b)
                    break
            else:
                return None
        if not self.is_core(x) or epilogue == NO_EPILOGUE:
            return None
        return epilogue, x
