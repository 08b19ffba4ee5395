"""Vectorizable erf, tanh, sigmoid, GELU and softmax for the CPU kernels (a Relax pass before legalization).

Relax legalizes erf, exp, tanh and sigmoid to TIR intrinsics that LLVM turns into scalar
libm calls, one element at a time: measured here, a [1, 128, 1536] bias + GELU
took 3.9 ms (MiniLM's FFN: 37% of the model) and a softmax over the same size
1.6 ms. TOPI's fast_erf / fast_exp / fast_tanh are polynomials in plain
arithmetic, which the default schedules vectorize; their error is at the level of
float32 rounding (max |error| ~1e-7 for erf and tanh, ~1e-7 relative for exp in
the normal range; tests/codegen/test_fastmath.py checks against onnxruntime).

TVM's own relax.transform.FastMathTransform does the same for exp/erf/tanh/softmax
but not for GELU (the ONNX frontend lowers it to relax.nn.gelu) or sigmoid, and
it also rewrites a plain exp, whose overflow it would change (see _UNARY).
"""
from __future__ import annotations

import tvm
from tvm import relax, tirx, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


def _gelu(x):
    half = tirx.const(0.5, x.dtype)
    return x * (half + topi.fast_erf(x * tirx.const(0.5**0.5, x.dtype)) * half)


def _sigmoid(x):
    one = tirx.const(1.0, x.dtype)
    return one / (one + topi.fast_exp(-x))


# Not relax.exp: fast_exp clamps its input to +-88.4, so a plain Exp that overflows to
# inf would give 2.4e38 instead. Inside softmax the input is <= 0, and in sigmoid the
# clamp changes 1 / (1 + e^-x) by less than 1e-38: neither can tell.
_UNARY = {"relax.erf": topi.fast_erf, "relax.tanh": topi.fast_tanh, "relax.nn.gelu": _gelu, "relax.sigmoid": _sigmoid}


@mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        op = getattr(call.op, "name", None)
        if op not in _UNARY and op != "relax.nn.softmax":
            return call
        if getattr(call.args[0].ty, "dtype", None) != "float32":  # fast_* are float32 polynomials
            return call
        if op == "relax.nn.softmax":
            return self._softmax(call.args[0], int(call.attrs.axis))
        return self.builder_.call_te(_UNARY[op], call.args[0], primfunc_name_hint=op.rsplit(".", 1)[-1])


    def _softmax(self, x, axis: int):
        """fast_softmax over the last axis. Over another one (YOLOv8's box decoder: 16
        values 8,400 floats apart), the default schedule recomputed the max and the sum
        for every output element (2.8 ms for 134k values, 0.4 ms over the last axis):
        the axis is moved last and back, two cheap transposes."""
        rank = x.ty.ndim  # -1: unknown
        if rank <= 1 or axis % rank == rank - 1:
            return self.builder_.call_te(topi.nn.fast_softmax, x, axis, primfunc_name_hint="softmax")
        axis %= rank
        perm = [d for d in range(rank) if d != axis] + [axis]
        inverse = [perm.index(d) for d in range(rank)]
        moved = self.builder_.emit(relax.op.permute_dims(x, perm))
        y = self.builder_.emit(self.builder_.call_te(topi.nn.fast_softmax, moved, -1, primfunc_name_hint="softmax"))
        return relax.op.permute_dims(y, inverse)

@tvm.transform.module_pass(opt_level=0, name="onnxforge.FastMath")
def fast_math(mod, _ctx):
    rewriter = _FastMath(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
