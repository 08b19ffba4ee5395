"""Canonical forms for attention, so that one attention pattern covers what the
exporters write. Each rule is exact algebra (up to float rounding) and useful on
its own:

- a scalar Mul/Div on either input of an activation x activation MatMul moves to
  its output, both merged into one Mul (SDPA exports split 1/sqrt(d) as
  1/sqrt(sqrt(d)) on Q and on K^T);
- Reshape [a,b,c,d] -> [a*b,c,d], Transpose [0,2,1], Reshape -> [a,b,d,c] is a
  Transpose of the last two axes (the dynamo exporter's K^T);
- two Transposes in a row are one;
- a projection packed for Q, K and V (one MatMul + Add, then a Split of its
  last axis: GPT-2's c_attn) becomes one MatMul + Add per part, with the
  weight columns split at compile time."""
from __future__ import annotations

import numpy as np

from ...ir.pattern import Const, Op, Var
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


def _known(dims) -> bool:
    return dims is not None and all(d is not None and not (isinstance(d, str) and d.startswith("unk__")) for d in dims)


@rule(Op("Reshape", Op("Transpose", Op("Reshape", Var("x", rank=4), Var(), name="merge"), attrs={"perm": [0, 2, 1]}),
         Var(), name="split"), needs_shapes=True)
def swap_last_axes(m, b):
    x, merged, out = m["x"].shape, m["merge"].shape, m["split"].shape
    if not (_known(x) and _known(merged) and _known(out)) or len(merged) != 3:
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


def rules() -> RuleSet:
    return RuleSet(scale_after_matmul, swap_last_axes, transpose_pair, unpack_projection)
