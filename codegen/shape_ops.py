"""Lowerings for ONNX ops whose output shape can depend on values computed at run
time: ConstantOfShape, Expand, Squeeze, Pad (constant / edge / reflect / wrap,
pads given at run time, negative pads crop) and CenterCropPad. Where the
frontend's converter handles the constant form well it still does. See
registry.py for the lowering signature."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx.onnx_frontend import _tensor_to_shape_expr

from ..ir import LoweringError
from .op_helpers import _attr_str, _const, _constant_array, _dims, _dtype, _input, axis_flags, \
    emit_opaque_when_symbolic, frontend_attrs, kept_dims_shape, shape_tensor, with_ir_shape
from .registry import register_lowering
from .shape_values import expand_target

op = relax.op


def _as_int64(bb, expr):
    """An integer tensor or shape value as an int64 tensor."""
    if isinstance(expr.ty, relax.ShapeType):
        return bb.normalize(op.shape_to_tensor(expr))
    return bb.normalize(expr if _dtype(expr) == "int64" else op.astype(expr, "int64"))


def _vector_length(bb, node, i, expr) -> int:
    if isinstance(expr, relax.ShapeExpr):
        return len(expr.values)
    if isinstance(expr.ty, relax.ShapeType) and expr.ty.ndim >= 0:
        return int(expr.ty.ndim)
    dims = _dims(with_ir_shape(bb, node, i, expr))
    if len(dims) != 1 or not isinstance(dims[0], int):
        raise LoweringError(f"{node.op_type}: input {i} must be a 1-D tensor of static length (it gives the rank)")
    return dims[0]


def _shape_of_values(bb, node, i, expr, prefix: str):
    """A 1-D integer tensor (or shape value) as a ShapeExpr: constants as ints, run-time
    values bound to shape vars when the model runs."""
    if isinstance(expr, relax.ShapeExpr):
        return expr
    value = _constant_array(expr)
    if value is not None:
        return relax.ShapeExpr([int(v) for v in value.reshape(-1)])
    n = _vector_length(bb, node, i, expr)
    return _tensor_to_shape_expr(bb, _as_int64(bb, expr), n, prefix)


@register_lowering("ConstantOfShape")
def constant_of_shape(bb, node, inputs):
    """A tensor of the given shape filled with `value` (float32 0 by default); a
    shape computed at run time becomes shape vars (the frontend broadcast to an
    unbound shape value, which TVM could not legalize)."""
    value = node.attributes.get("value")
    array = np.zeros((1,), np.float32) if value is None else np.asarray(value)
    dtype = array.dtype.name
    try:
        shape = _shape_of_values(bb, node, 0, inputs[0], "constant_of_shape_dim")
    except LoweringError:  # a shape tensor of unknown length: the frontend's converter
        from tvm.relax.frontend.onnx.onnx_frontend import ConstantOfShape

        return ConstantOfShape._impl_v9(bb, list(inputs), frontend_attrs(node), ({}, {}))
    if all(isinstance(d, tirx.IntImm) for d in shape.values):
        return relax.const(np.full([int(d) for d in shape.values], array.reshape(-1)[0], dtype), dtype)
    return op.broadcast_to(relax.const(array.reshape(()), dtype), shape)


@register_lowering("Expand")
def expand(bb, node, inputs):
    """Broadcast both ways (a target dim of 1 keeps the input's: (3, 1) to (2, 1, 6)
    is (2, 3, 6)), at compile time where the target's values are constants or
    symbolic dims that decide it (shape_values.expand_target); otherwise the target
    is resolved the same way when the model runs."""
    x = bb.normalize(inputs[0])
    dims = _dims(x)
    known = expand_target(bb, x, inputs[1])
    if known is not None:
        return op.broadcast_to(x, known)
    n = _vector_length(bb, node, 1, inputs[1])
    target = _as_int64(bb, inputs[1])
    rank = max(len(dims), n)
    full = shape_tensor(bb, x, dims)
    if rank > len(dims):
        full = bb.normalize(op.concat([_const(np.ones(rank - len(dims)), "int64"), full], axis=0))
    if rank > n:
        target = bb.normalize(op.concat([_const(np.ones(rank - n), "int64"), target], axis=0))
    out = bb.normalize(op.where(op.equal(target, _const(1, "int64")), full, target))
    return op.broadcast_to(x, _tensor_to_shape_expr(bb, out, rank, "expand_dim"))


@register_lowering("Squeeze")
def squeeze(bb, node, inputs):
    """Squeeze. An axis whose extent is symbolic (a run-time length the model
    guarantees is 1, e.g. silero-vad's encoder output under its If) is dropped by
    a reshape: ONNX makes squeezing any other extent an error, so the shape
    without it is exact. Axes computed at run time (a tensor of static length, so
    the rank is known): when exactly that many dims have extent 1 they are the
    ones; otherwise the kept dims are chosen when the model runs."""
    from tvm.relax.frontend.onnx.onnx_frontend import Squeeze

    data = bb.normalize(inputs[0])
    axes = node.attributes.get("axes")
    axes_input = _input(inputs, 1)
    if axes is None and axes_input is not None:
        array = _constant_array(axes_input)
        axes = None if array is None else [int(a) for a in array.reshape(-1)]
    ty = data.ty
    if axes and isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
        dims = list(ty.shape.values)
        drop = {a + len(dims) if a < 0 else a for a in axes}
        if all(0 <= a < len(dims) for a in drop) and any(not isinstance(dims[a], tvm.tirx.IntImm) for a in drop):
            if any(isinstance(dims[a], tvm.tirx.IntImm) and int(dims[a].value) != 1 for a in drop):
                raise LoweringError(f"Squeeze of axes {sorted(drop)}: an axis of size other than 1")
            return op.reshape(data, [d for i, d in enumerate(dims) if i not in drop])
    if axes is None and axes_input is not None:  # axes computed at run time
        count = _vector_length(bb, node, 1, axes_input)
        dims = _dims(data)
        rank = len(dims)
        ones = [i for i, d in enumerate(dims) if d == 1]
        if count > len(ones) and all(isinstance(d, int) for d in dims):
            raise LoweringError(f"Squeeze of {count} axes, but only {len(ones)} dims of {dims} have extent 1")
        if count == len(ones) and all(isinstance(d, int) for d in dims):  # the one choice ONNX allows
            return op.reshape(data, [d for i, d in enumerate(dims) if i not in ones])
        flags = axis_flags(bb, _as_int64(bb, axes_input), rank)
        sel = bb.normalize(op.concat([op.reshape(f, (1,)) for f in flags], axis=0))
        shape = kept_dims_shape(bb, shape_tensor(bb, data, dims), sel, rank, rank - count, "squeeze_dim")
        return op.reshape(data, shape)
    return Squeeze._squeeze(bb, data, None if axes is None else tuple(axes))


# --------------------------------------------------------------------------- Pad


def _pad_source(mode: str, i, before, length):
    """(source index, inside flag or None) along one axis for output index i."""
    src = i - before
    if mode == "constant":
        return src, tirx.And(src >= 0, src < length)
    if mode == "edge":
        return tirx.max(tirx.min(src, length - 1), tirx.const(0, "int64")), None
    if mode == "wrap":
        return tirx.floormod(src, length), None
    # reflect: a triangle wave of period 2 (n - 1); n == 1 repeats the one value
    period = tirx.max(2 * (length - 1), tirx.const(1, "int64"))
    m = tirx.floormod(src, period)
    return tirx.Select(length == 1, tirx.const(0, "int64"), tirx.Select(m < length, m, period - m)), None


def _emit_window(bb, x, out_shape, starts, mode: str, fill, extra=(), name="pad"):
    """out[i] = x[i - starts[a](...)] per axis (mode decides what lies outside x).
    `starts[a]`: an int64 PrimExpr or a callable of the extra TE tensors."""

    def compute(data, *tensors):
        def body(*index):
            src, inside = [], []
            for a, i in enumerate(index):
                start = starts[a](*tensors) if callable(starts[a]) else starts[a]
                s, ok = _pad_source(mode, i, start, data.shape[a])
                src.append(s)
                if ok is not None:
                    inside.append(ok)
            value = data(*src)
            if inside:
                flag = inside[0]
                for o in inside[1:]:
                    flag = tirx.And(flag, o)
                value = tirx.if_then_else(flag, value, fill(*tensors))
            return value

        return te.compute(out_shape, body, name=name)

    return emit_opaque_when_symbolic(bb, compute, x, *extra, name=f"onnx_{name}")


@register_lowering("Pad")
def pad(bb, node, inputs):
    """Pad in all four modes, pads (and axes) constant or computed at run time,
    negative pads cropping. Constant pads in constant / edge / reflect mode: the
    frontend's converter (topi's pads, which fuse)."""
    from tvm.relax.frontend.onnx.onnx_frontend import Pad

    x = bb.normalize(with_ir_shape(bb, node, 0, inputs[0]))
    dims = _dims(x)
    rank = len(dims)
    mode = _attr_str(node, "mode", "constant")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise LoweringError(f"Pad mode {mode!r} is not constant, edge, reflect or wrap")
    dtype = _dtype(x)
    legacy = "pads" in node.attributes  # opset < 11
    if legacy:
        pads_expr = _const(np.asarray(node.attributes["pads"], np.int64), "int64")
        value_expr = _const(float(node.attributes.get("value", 0.0)), dtype)
        axes_expr = None
    else:
        pads_expr, value_expr, axes_expr = inputs[1], _input(inputs, 2), _input(inputs, 3)
    pads_const = _constant_array(pads_expr)
    axes_const = None if axes_expr is None else _constant_array(axes_expr)
    value_const = None if value_expr is None else _constant_array(value_expr)
    if (pads_const is not None and (axes_expr is None or axes_const is not None) and mode != "wrap"
            and (value_expr is None or value_const is not None) and (pads_const >= 0).all() and not legacy):
        return Pad._impl_v18(bb, list(inputs) + [None] * (4 - len(inputs)), frontend_attrs(node), ({}, {}))
    if axes_expr is None:
        axes = list(range(rank))
    elif axes_const is not None:
        axes = [int(a) + rank if int(a) < 0 else int(a) for a in axes_const.reshape(-1)]
    else:
        raise LoweringError("Pad with axes computed at run time is not supported (they pick which dims change)")
    n = len(axes)
    pads64 = _as_int64(bb, pads_expr)
    if _vector_length(bb, node, 1, pads64) != 2 * n:
        raise LoweringError(f"Pad: {2 * n} pads expected for {n} axes")
    # the output dims (run-time values where the pads are), as a shape value
    full = shape_tensor(bb, x, dims)
    scatter = np.zeros((rank, 2 * n), np.int64)
    for k, a in enumerate(axes):
        scatter[a, k] = scatter[a, n + k] = 1
    grow = bb.normalize(op.sum(op.multiply(_const(scatter, "int64"), op.reshape(pads64, (1, 2 * n))), axis=[1]))
    out_shape = list(_tensor_to_shape_expr(bb, bb.normalize(op.add(full, grow)), rank, "pad_dim").values) \
        if pads_const is None else [d + int(sum(pads_const[k] + pads_const[n + k] for k, a in enumerate(axes)
                                                    if a == i)) for i, d in enumerate(dims)]
    slot = {a: k for k, a in enumerate(axes)}
    if pads_const is not None:
        starts = [int(pads_const[slot[a]]) if a in slot else 0 for a in range(rank)]
        starts = [tirx.const(s, "int64") for s in starts]
    else:
        starts = [(lambda p, *rest, k=slot[a]: p(tirx.const(k, "int64"))) if a in slot else tirx.const(0, "int64")
                  for a in range(rank)]
    extra = [] if pads_const is not None else [pads64]
    if value_expr is not None and mode == "constant" and value_const is None:
        extra.append(bb.normalize(op.reshape(op.astype(value_expr, dtype), (1,))))
        fill_index = len(extra) - 1
        fill = lambda *tensors: tensors[fill_index](tirx.const(0, "int64"))  # noqa: E731
    else:
        v = 0.0 if value_const is None else value_const.reshape(-1)[0]
        fill = lambda *tensors: tirx.const(v, dtype)  # noqa: E731
    if pads_const is not None:
        out_shape = [int(d) if isinstance(d, (int, np.integer)) else d for d in out_shape]
    return _emit_window(bb, x, out_shape, starts, mode, fill, extra)


@register_lowering("CenterCropPad")
def center_crop_pad(bb, node, inputs):
    """Crop or zero-pad each listed axis to the given extent around its centre
    (crop offset floor((d - t) / 2), pad offset floor((t - d) / 2)); the extents
    may be computed at run time."""
    x = bb.normalize(with_ir_shape(bb, node, 0, inputs[0]))
    dims = _dims(x)
    rank = len(dims)
    axes = node.attributes.get("axes")
    axes = list(range(rank)) if axes is None else [int(a) + rank if int(a) < 0 else int(a) for a in axes]
    shape = _shape_of_values(bb, node, 1, inputs[1], "center_crop_pad_dim")
    if len(shape.values) != len(axes):
        raise LoweringError(f"CenterCropPad: {len(shape.values)} extents for {len(axes)} axes")
    target = dict(zip(axes, shape.values))
    out_shape, starts = [], []
    for a, d in enumerate(dims):
        if a not in target:
            out_shape.append(d)
            starts.append(tirx.const(0, "int64"))
            continue
        t = target[a]
        t = tirx.Cast("int64", t) if str(t.ty) != "int64" else t
        d = tirx.const(d, "int64") if isinstance(d, int) else d
        out_shape.append(t)
        # out[i] = x[i - start]: start = pad offset when growing, -crop offset when shrinking
        starts.append(tirx.Select(t >= d, tirx.floordiv(t - d, 2), -tirx.floordiv(d - t, 2)))
    return _emit_window(bb, x, out_shape, starts, "constant", lambda *t: tirx.const(0, _dtype(x)).astype(_dtype(x)),
                        name="center_crop_pad")
