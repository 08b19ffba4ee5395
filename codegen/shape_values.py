"""The values of small integer tensors computed from shapes, as symbolic dims.

Exporters compute Reshape targets at run time from the input's own shape
(Paddle: Shape -> Cast int32 -> Slice -> Cast -> Concat with constants; torch:
Shape -> Gather -> Unsqueeze -> Concat). Reshaping to a tensor of unknown values
gives the output fresh symbolic dims: nothing downstream knows that the batch is
still the batch or that a head dim is 8, kernels get div/mod by run-time products
(one such reshape kept TVM's simplifier busy for over ten minutes), and every
broadcast against a fresh dim stays unresolved. Evaluating the little program
that builds the target over the input's symbolic dims gives the reshape its real
output shape instead: (batch, L, 3, 8, 15) rather than (d0, d1, d2, d3, d4).
"""
from __future__ import annotations

import contextlib

import numpy as np
import tvm
from tvm import relax

from ..ir import LoweringError

MAX_LENGTH = 16  # shape vectors only


def symbolic_values(bb: relax.BlockBuilder, expr, depth: int = 0) -> list | None:
    """The elements of the 0-d or 1-d integer tensor `expr` as int64 PrimExprs, or
    None where one is not a function of static sizes and symbolic dims."""
    if depth > 64:
        return None
    if isinstance(expr, relax.Var):
        value = None
        with contextlib.suppress(Exception):
            value = bb.lookup_binding(expr)
        return symbolic_values(bb, value, depth + 1) if value is not None else None
    if isinstance(expr, tvm.ir.GenericConst):
        data = expr.value.numpy()
        if data.dtype.kind not in "iu" or data.ndim > 1 or data.size > MAX_LENGTH:
            return None
        return [tvm.tirx.IntImm("int64", int(v)) for v in data.reshape(-1)]
    if isinstance(expr, relax.ShapeExpr):
        return [_i64(v) for v in expr.values]
    if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
        return None
    name, args, attrs = expr.op.name, expr.args, expr.attrs
    sub = lambda e: symbolic_values(bb, e, depth + 1)  # noqa: E731
    if name == "relax.shape_of":
        shape = getattr(args[0].ty, "shape", None)
        return [_i64(v) for v in shape.values] if isinstance(shape, relax.ShapeExpr) else None
    if name in ("relax.shape_to_tensor", "relax.astype", "relax.reshape", "relax.squeeze", "relax.expand_dims"):
        if name == "relax.astype" and str(attrs.dtype) not in ("int32", "int64"):
            return None
        return sub(args[0])
    if name == "relax.concat":
        if not isinstance(args[0], relax.Tuple):
            return None
        out = []
        for field in args[0].fields:
            values = sub(field)
            if values is None:
                return None
            out += values
        return out
    if name == "relax.strided_slice":
        values = sub(args[0])
        if values is None or len(args) < 4:
            return None
        begin, end = _static(args[2]), _static(args[3])
        strides = _static(args[4]) if len(args) > 4 and args[4] is not None else [1]
        if begin is None or end is None or strides is None or len(begin) != 1:
            return None
        return values[slice(begin[0], end[0], strides[0])] if strides[0] != 0 else None
    if name == "relax.take":
        values, index = sub(args[0]), _static(args[1]) if isinstance(args[1], (tvm.ir.GenericConst, relax.Var)) else None
        if index is None and isinstance(args[1], relax.Var):
            index = [int(v) for v in (sub(args[1]) or []) if isinstance(v, tvm.tirx.IntImm)] or None
        if values is None or index is None:
            return None
        return [values[i] for i in index] if all(-len(values) <= i < len(values) for i in index) else None
    binary = {"relax.add": lambda a, b: a + b, "relax.subtract": lambda a, b: a - b,
              "relax.multiply": lambda a, b: a * b, "relax.floor_divide": tvm.tirx.floordiv}
    if name in binary:
        a, b = sub(args[0]), sub(args[1])
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
            return None
        n = max(len(a), len(b))
        a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
        return [binary[name](x, y) for x, y in zip(a, b)]
    return None


def _i64(v):
    return tvm.tirx.IntImm("int64", int(v)) if isinstance(v, (int, np.integer, tvm.tirx.IntImm)) else v


def _static(expr) -> list[int] | None:
    if isinstance(expr, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in expr.values):
        return [int(v) for v in expr.values]
    if isinstance(expr, tvm.ir.GenericConst):
        return [int(v) for v in expr.value.numpy().reshape(-1)]
    if isinstance(expr, relax.Tuple) and all(isinstance(f, tvm.tirx.IntImm) for f in expr.fields):
        return [int(f) for f in expr.fields]
    return None


def reshape_target(bb: relax.BlockBuilder, data, target, allowzero: bool) -> relax.ShapeExpr | None:
    """ONNX Reshape's output shape from a target computed at run time, as symbolic
    dims of the input (0 copies the input dim unless allowzero, -1 takes the rest),
    or None where the target's values are not known that way."""
    values = symbolic_values(bb, target)
    shape = getattr(data.ty, "shape", None)
    if values is None or not isinstance(shape, relax.ShapeExpr):
        return None
    dims = [_i64(v) for v in shape.values]
    analyzer = tvm.sym.Analyzer()
    out, infer = [], None
    for k, v in enumerate(values):
        v = analyzer.simplify(v)
        if isinstance(v, tvm.tirx.IntImm) and int(v) == 0 and not allowzero:
            if k >= len(dims):
                return None
            v = dims[k]
        elif isinstance(v, tvm.tirx.IntImm) and int(v) == -1:
            if infer is not None:
                return None
            infer = k
        out.append(v)
    if infer is not None:
        total, rest = 1, 1
        for d in dims:
            total = total * d
        for k, v in enumerate(out):
            if k != infer:
                rest = rest * v
        out[infer] = tvm.tirx.floordiv(total, rest)
    return relax.ShapeExpr([analyzer.simplify(v) for v in out])



def expand_target(bb: relax.BlockBuilder, data, target) -> list | None:
    """ONNX Expand's output dims (two-way broadcast of the input's dims and the
    target's) where the target's values are known as symbolic dims and every pair
    resolves without run-time values: a static dim on either side, or dims provably
    equal. None otherwise (a symbolic dim against a symbolic target that may be 1
    is decided when the model runs); an error for static dims that do not
    broadcast. Known dims
    keep the anchor grids of detection heads shaped like the feature maps they
    are added to (fresh run-time dims per Expand made TVM lose their shapes)."""
    values = symbolic_values(bb, target)
    shape = getattr(data.ty, "shape", None)
    if values is None or not isinstance(shape, relax.ShapeExpr):
        return None
    dims = [_i64(v) for v in shape.values]
    rank = max(len(dims), len(values))
    one = tvm.tirx.IntImm("int64", 1)
    dims = [one] * (rank - len(dims)) + dims
    values = [one] * (rank - len(values)) + list(values)
    analyzer = tvm.sym.Analyzer()
    out = []
    for d, t in zip(dims, values):
        d, t = analyzer.simplify(d), analyzer.simplify(t)
        d_static, t_static = isinstance(d, tvm.tirx.IntImm), isinstance(t, tvm.tirx.IntImm)
        if d_static and t_static and 1 not in (int(d), int(t)) and int(d) != int(t):
            raise LoweringError(f"Expand of dims {[_show(v) for v in shape.values]} to {[_show(v) for v in values]}: "
                                f"{int(d)} does not broadcast to {int(t)}")
        if (t_static and int(t) == 1) or (d_static and int(d) != 1) or analyzer.can_prove_equal(d, t):
            out.append(d)  # a static d other than 1: t is 1 or d
        elif t_static or (d_static and int(d) == 1):
            out.append(t)  # a static t other than 1: d is 1 or t
        else:
            return None
    return out


def _show(v):
    return int(v) if isinstance(v, tvm.tirx.IntImm) else v
