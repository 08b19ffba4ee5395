"""Canonical forms for attention, so that one attention pattern covers what the
exporters write. Each rule is exact algebra (up to float rounding) and useful on
its own:

- a scalar Mul/Div on either input of an activation x activation MatMul moves to
  its output, both merged into one Mul (SDPA exports split 1/sqrt(d) as
  1/sqrt(sqrt(d)) on Q and on K^T);
- Reshape [a,b,c,d] -> [a*b,c,d], Transpose [0,2,1], Reshape -> [a,b,d,c] is a
  Transpose of the last two axes (the dynamo exporter's K^T);
- two Transposes in a row are one;
- Reshape to 2-D, Gemm with a constant weight, Reshape back (GPT-2's Conv1D,
  `addmm` of a flattened input) is a MatMul (+ Add) on the N-D input;
- a projection packed for Q, K and V (one MatMul + Add, then a Split of its
  last axis: GPT-2's c_attn) becomes one MatMul + Add per part, with the
  weight columns split at compile time."""
from __future__ import annotations

import numpy as np

from ...ir.pattern import Const, Op, Var
from ...ir.shapes import known_shape
from ..rewrite import RuleSet, rule
from ..util import const


def _factor(op_type: str, array: np.ndarray) -> float:
    s = float(np.asarray(array).reshape(()))
    return s if op_type == "Mul" else 1.0 / s


def _scaled(tag: str) -> Op:
    return Op(("Mul", "Div"), Var(tag), Const(tag + "_s", scalar=True), name=tag + "_scaled")


_A, _B = Var("a"), Var("b")


@rule(Op("MatMul", _scaled("a"), _scaled("b")) | Op("MatMul", _scaled("a"), _B) | Op("MatMul", _A, _scaled("b")))
def scale_after_matmul(m, b):
    if const(m["a"]) is not None or const(m["b"]) is not None:
        return None  # a weight: the affine fusion folds the scale into it instead
    factor = 1.0
    for tag in "ab":
        if tag + "_scaled" in m.nodes:
            factor *= _factor(m.node(tag + "_scaled").op_type, m.const(tag + "_s"))
    dtype = m.const("a_s" if "a_scaled" in m.nodes else "b_s").dtype
    return b.op("Mul", b.op("MatMul", m["a"], m["b"]), b.const(np.array(factor, dtype), name="scale"))


@rule(Op("Reshape", Op("Transpose", Op("Reshape", Var("x", rank=4), Var(), name="merge"), attrs={"perm": [0, 2, 1]}),
         Var(), name="split"), needs_shapes=True)
def swap_last_axes(m, b):
    x, merged, out = m["x"].shape, m["merge"].shape, m["split"].shape
    if not (known_shape(x) and known_shape(merged) and known_shape(out)) or len(merged) != 3:
        return None
    if tuple(merged[1:]) != tuple(x[2:]) or tuple(out) != (x[0], x[1], x[3], x[2]):
        return None
    return b.op("Transpose", m["x"], perm=[0, 1, 3, 2])


@rule(Op("Transpose", Op("Transpose", Var("x"), name="inner"), name="outer"))
def transpose_pair(m, b):
    first, second = m.attr("inner", "perm"), m.attr("outer", "perm")
    if first is None or second is None:
        return None
    composed = [first[p] for p in second]
    return m["x"] if composed == sorted(composed) else b.op("Transpose", m["x"], perm=composed)


def _column_ranges(split, width: int) -> list[tuple[int, int]] | None:
    """The column range of each output of a Split over the last axis."""
    if split.attr("axis", 0) not in (-1, 2):
        return None
    sizes = const(split.input(1)) if len(split.inputs) > 1 else split.attr("split")
    if sizes is None:
        parts = split.attr("num_outputs", len(split.outputs))
        if width % parts:
            return None
        sizes = [width // parts] * parts
    bounds = np.cumsum([0, *[int(s) for s in sizes]])
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))] if bounds[-1] == width else None


_PACKED_MM = Op("MatMul", Var("x", rank=3), Const("w", rank=2), name="mm")
_PACKED = Op("Add", _PACKED_MM, Const("bias", rank=1)) | _PACKED_MM


@rule(Op("Split", _PACKED, ..., name="split"))
def unpack_projection(m, b):
    split, w = m.node("split"), m.const("w")
    ranges = _column_ranges(split, w.shape[1])
    if ranges is None or len(ranges) != len(split.outputs) or len(ranges) < 2:
        return None
    bias = m.const("bias") if "bias" in m else None
    outs = []
    for begin, end in ranges:
        part = b.op("MatMul", m["x"], b.const(np.ascontiguousarray(w[:, begin:end]), name="w_part"))
        if bias is not None:
            part = b.op("Add", part, b.const(bias[begin:end], name="bias_part"))
        outs.append(part)
    return outs


_FLAT_GEMM = Op("Gemm", Op("Reshape", Var("x"), Var(), name="flatten"), Const("w", rank=2), ..., name="gemm")


@rule(Op("Reshape", _FLAT_GEMM, Var(), name="unflatten"), needs_shapes=True)
def matmul_of_flattened(m, b):
    """out [lead..., N] = Gemm(Reshape(x [lead..., rest...] -> [M, K])): the rest
    of x's dims (K in all) are the reduction; more than one is merged by a Reshape
    that copies the leading dims (0 entries), so they may stay symbolic."""
    gemm, x, out, flat = m.node("gemm"), m["x"].shape, m["unflatten"].shape, m["flatten"].shape
    if gemm.attr("transA", 0) or not (known_shape(x) and known_shape(out) and known_shape(flat)) or len(out) < 3 or len(flat) != 2:
        return None
    lead, rest = tuple(out[:-1]), tuple(x[len(out) - 1:])
    if tuple(x[:len(lead)]) != lead or not rest or not all(isinstance(d, int) for d in rest):
        return None
    if int(np.prod(rest)) != flat[1] or (0 in lead):
        return None
    alpha, beta = float(gemm.attr("alpha", 1.0)), float(gemm.attr("beta", 1.0))
    w = m.const("w").T if gemm.attr("transB", 0) else m.const("w")
    bias = const(gemm.input(2))
    if gemm.input(2) is not None and (bias is None or bias.ndim > 1):
        return None  # a computed or 2-D C: not a per-column bias
    src = m["x"]
    if len(rest) > 1:
        src = b.op("Reshape", src, b.const(np.array([0] * len(lead) + [flat[1]], np.int64), name="merge_shape"))
    y = b.op("MatMul", src, b.const(np.ascontiguousarray(w * np.asarray(alpha, w.dtype)), name="weight"))
    return y if bias is None else b.op("Add", y, b.const(bias * np.asarray(beta, bias.dtype), name="bias"))


def rules() -> RuleSet:
    return RuleSet(scale_after_matmul, swap_last_axes, transpose_pair, matmul_of_flattened, unpack_projection)
