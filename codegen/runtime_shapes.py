"""Shape of a tensor whose dims Relax could not infer.

TVM's frontend returns `shape_of(x)` there, an opaque R.Shape(ndim=4), and the
converters after it (Gather, Slice on the shape) expect a tensor or a ShapeExpr
and fail: YOLOv8's 320n.onnx unpinned has Shape -> Gather after a Concat of an
upsampled and a strided branch, whose H and W Relax cannot prove equal. Here such
dims are bound to fresh shape vars (match_cast, checked when the model runs), and
Shape returns the ShapeExpr of those vars, as it does for inferred shapes.
"""
from __future__ import annotations

import tvm
from tvm import relax, tirx

from .registry import register_lowering

_count = [0]


def bind_dims(bb, x, prefix: str):
    """x with every dim a PrimExpr: as it is when Relax knows them, else match_cast
    to fresh int64 vars. None when even the rank is unknown."""
    ty = x.ty
    if not isinstance(ty, relax.TensorType) or ty.ndim < 0:
        return None
    if isinstance(ty.shape, relax.ShapeExpr):
        return x
    _count[0] += 1
    dims = [tirx.Var(f"{prefix}{_count[0]}_{i}", "int64") for i in range(ty.ndim)]
    return bb.match_cast(x, relax.TensorType(dims, ty.dtype.dtype))


@register_lowering("Shape")
def shape(bb, node, inputs):
    from tvm.relax.frontend.onnx.onnx_frontend import Shape

    x = inputs[0]
    bound = bind_dims(bb, x, "dim") if isinstance(getattr(x, "ty", None), relax.TensorType) else None
    if bound is None:  # a shape value, or an unknown rank: the frontend's converter
        attrs = dict(node.attributes)
        return Shape._impl_v15(bb, [x], attrs, {}) if attrs else Shape._impl_v13(bb, [x], attrs, {})
    dims = list(bound.ty.shape.values)
    rank = len(dims)
    start = int(node.attributes.get("start", 0))
    end = node.attributes.get("end")
    end = rank if end is None else int(end)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return relax.ShapeExpr(dims[start:end])


def _same(a, b) -> bool:
    import tvm_ffi

    if hasattr(a, "value") and hasattr(b, "value"):
        return int(a.value) == int(b.value)
    return a.same_as(b) or bool(tvm_ffi.structural_equal(a, b))


@register_lowering("Concat")
def concat(bb, node, inputs):
    """The frontend's Concat, after giving every input the first input's dims off
    the concat axis where Relax cannot prove them equal (an upsampled
    2 * ((h - 1) // 2 + 1) next to a strided h): ONNX requires them equal, so a
    reshape (a view) states it and the result keeps its shape instead of becoming
    R.Tensor(ndim=4) with unknown dims, which Reshape and others cannot take. Not
    a match_cast: TVM's CanonicalizeBindings (run by LiftTransformParams, so in
    every package with packed weights) reads a match_cast to dims already bound
    elsewhere as their definition and rewrites the types after it, which then
    disagree with the types their values give ("emit_te now only supports Tensor
    that has ShapeExpr shape" at the build)."""
    from tvm.relax.frontend.onnx.onnx_frontend import Concat

    attrs = dict(node.attributes)
    tensors = [t for t in inputs if t is not None]
    shape_like = [isinstance(getattr(t, "ty", None), relax.ShapeType)
                  or (isinstance(t, tvm.ir.GenericConst) and t.ty.ndim == 1 and str(t.ty.dtype.dtype) == "int64")
                  for t in tensors]
    if any(shape_like) and not all(shape_like):  # shape values next to tensors: all as int64 tensors
        tensors = [bb.normalize(relax.op.shape_to_tensor(t)) if isinstance(t.ty, relax.ShapeType) else t
                   for t in tensors]
    types = [getattr(t, "ty", None) for t in tensors]
    if len(tensors) > 1 and all(isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr)
                                for ty in types) and len({ty.ndim for ty in types}) == 1 and types[0].ndim > 0:
        rank = types[0].ndim
        axis = int(attrs.get("axis", 0))
        axis = axis + rank if axis < 0 else axis
        ref = list(types[0].shape.values)
        fixed = [tensors[0]]
        for t, ty in zip(tensors[1:], types[1:]):
            dims = list(ty.shape.values)
            differ = [k for k in range(rank) if k != axis and not _same(dims[k], ref[k])]
            if differ and not all(hasattr(dims[k], "value") and hasattr(ref[k], "value") for k in differ):
                target = [dims[k] if k == axis else ref[k] for k in range(rank)]
                t = bb.normalize(relax.op.reshape(t, target))
            fixed.append(t)
        tensors = fixed
    return Concat._impl_v13(bb, tensors, attrs, ({}, {}))


def _scalar(expr):
    """A Range operand as a Python number or an int64 PrimExpr (a shape value the
    frontend carries for Shape -> Gather -> Cast), else None."""
    if isinstance(expr, tvm.ir.GenericConst):
        value = expr.value.numpy()
        return value.reshape(()).item() if value.size == 1 else None
    v = None
    if isinstance(expr, relax.ShapeExpr) and len(expr.values) == 1:
        v = expr.values[0]
    elif tvm.ir.is_prim_expr(expr):
        v = expr
    if v is not None:
        # Cast(int64, Cast(float32, w)) of an int64 dim w is w (dims stay below 2**24)
        while isinstance(v, tirx.Cast) and str(v.value.ty) in ("int64", "int32", "float32", "float64"):
            v = v.value
        if hasattr(v, "value") and not isinstance(v, tirx.Var):
            return v.value
        if str(v.ty) == "int64":
            return v
        if str(v.ty) == "int32":
            return tirx.Cast("int64", v)
    return None


@register_lowering("Range")
def range_(bb, node, inputs):
    """Range whose limit is a dim of a tensor (Shape -> Gather [-> Cast]) with
    constant whole-number start and delta: the length is a PrimExpr of that dim, not
    a fresh var, so YOLO's anchor grids keep shapes Relax can match with the
    feature maps they are added to. Anything else: the frontend's Range."""
    from tvm.relax.frontend.onnx.onnx_frontend import Range

    start, limit, delta = (_scalar(i) for i in inputs[:3])
    dtype = None
    for i in inputs[:3]:
        ty = getattr(i, "ty", None)
        if isinstance(ty, relax.TensorType):
            dtype = str(ty.dtype.dtype)
            break
    out_dtype = node.outputs[0].np_dtype.name if node.outputs and node.outputs[0].np_dtype is not None else dtype
    if (limit is not None and not isinstance(limit, (int, float))
            and isinstance(start, (int, float)) and isinstance(delta, (int, float))
            and float(start).is_integer() and float(delta).is_integer() and delta > 0 and out_dtype):
        start, delta = int(start), int(delta)
        span = limit - tirx.const(start, "int64") if start else limit
        length = span if delta == 1 else tirx.floordiv(span + tirx.const(delta - 1, "int64"), tirx.const(delta, "int64"))
        length = tirx.max(length, tirx.const(0, "int64")) if start else length
        out = relax.op.arange(0, length, 1, dtype="int64")
        if delta != 1:
            out = relax.op.multiply(out, relax.const(delta, "int64"))
        if start:
            out = relax.op.add(out, relax.const(start, "int64"))
        return out if out_dtype == "int64" else relax.op.astype(out, out_dtype)
    return Range._impl_v12(bb, list(inputs), dict(node.attributes), ({}, {}))
