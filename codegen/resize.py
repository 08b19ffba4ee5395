"""Resize (opsets 10-19) and Upsample (7, 9) with run-time output sizes.

TVM 0.27's frontend converter needs constant sizes over static dims: unpinned
detection models (YOLOv8's 320n.onnx, PP-OCRv4 det: `images [batch,3,height,width]`
then Resize by scales [1,1,2,2]) stop in the importer. Here the output dims are
PrimExprs computed from the input's (symbolic) shape and constant scales, or come
from a run-time `sizes` / `scales` tensor turned into a shape value, and the
interpolation is one TE compute over any resized axes that follows onnxruntime's
arithmetic (float32; coordinate_transformation_mode, nearest_mode, cubic_coeff_a,
exclude_outside, extrapolation_value, roi, axes, keep_aspect_ratio_policy):

- the coordinate transform uses the given scale where `scales` is given and
  out/in where `sizes` is (TVM's resize2d always uses in/out, which differs from
  onnxruntime when in * scale is not a whole number);
- nearest indices and linear / cubic taps are clamped to the input (edge values);
  tf_crop_and_resize writes extrapolation_value outside the input;
- Resize-10 and Upsample round like onnxruntime's opset < 11 kernel: asymmetric
  coordinates, truncation when upsampling and ceil when downsampling.

Not supported (a LoweringError names the node): antialias=1 on a downsampling
linear / cubic resize.
"""
from __future__ import annotations

import itertools
import types

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx.onnx_frontend import _tensor_to_shape_expr

from ..ir import LoweringError
from . import runtime_shapes  # noqa: F401  (Shape of tensors whose dims Relax lost)
from .op_helpers import emit_opaque_when_symbolic
from .registry import register_lowering

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_half_pixel_for_nn", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _attr(node, name, default):
    value = node.attributes.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _const(expr):
    """numpy value of a relax constant, else None."""
    if isinstance(expr, tvm.ir.GenericConst):
        data = getattr(expr, "value", None)
        if data is None:
            data = getattr(expr, "data", None)
        return data.numpy()
    return None


def _static_len(expr) -> int | None:
    """Element count of a 1-D tensor or shape value, when known at compile time."""
    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.ShapeType):
        return None if ty.ndim < 0 else int(ty.ndim)
    if isinstance(ty, relax.TensorType) and ty.ndim == 1 and isinstance(ty.shape, relax.ShapeExpr):
        d = ty.shape.values[0]
        return int(d.value) if hasattr(d, "value") else None
    return None


def _shape_values(bb, expr, n: int, prefix: str) -> list:
    """The n int64 PrimExprs of a 1-D integer tensor or shape value, read at run time
    where they are not known at compile time (relax tensor_to_shape)."""
    if isinstance(expr, relax.ShapeExpr):
        return [tirx.Cast("int64", v) if _dt(v) != "int64" else v for v in expr.values]
    ty = expr.ty
    if isinstance(ty, relax.ShapeType):
        if ty.values is not None:
            return list(ty.values)
        expr = relax.op.shape_to_tensor(expr)
    if str(expr.ty.dtype.dtype) != "int64":
        expr = relax.op.astype(expr, "int64")
    return list(_tensor_to_shape_expr(bb, bb.normalize(expr), n, prefix).values)


def _is_empty(expr) -> bool:
    return expr is None or _static_len(expr) == 0


class _Axis:
    """One resized axis: input / output length and how to map coordinates."""

    def __init__(self, axis: int, in_len, out_len, scale, roi=None):
        self.axis = axis
        self.in_len = in_len  # int64 PrimExpr
        self.out_len = out_len  # int64 PrimExpr
        self.scale = scale  # python float, or a callable () -> float32 PrimExpr (read inside the compute)
        self.roi = roi  # (start, end): floats or float32 PrimExpr callables, or None


def _dt(e) -> str:
    """The dtype of a PrimExpr (TVM 0.27: `.ty`; `.dtype` only on buffer vars)."""
    return str(e.ty)


def _f32(v):
    if isinstance(v, (int, float, np.floating, np.integer)):
        return tirx.const(float(np.float32(v)), "float32")
    if isinstance(v, types.FunctionType):  # a run-time read (PrimExprs define __call__ too)
        v = v()
    return v if _dt(v) == "float32" else tirx.Cast("float32", v)


def _coordinate(mode: str, x, ax: _Axis):
    """ONNX's x_original for output index x (int64) as float32."""
    xf = tirx.Cast("float32", x)
    in_f = tirx.Cast("float32", ax.in_len)
    out_f = tirx.Cast("float32", ax.out_len)
    half = tirx.const(0.5, "float32")
    one = tirx.const(1.0, "float32")
    zero = tirx.const(0.0, "float32")
    if mode == "align_corners":
        return tirx.Select(ax.out_len == 1, zero, xf * (in_f - one) / (out_f - one))
    if mode == "tf_crop_and_resize":
        start, end = (_f32(v) for v in ax.roi)
        return tirx.Select(ax.out_len > 1, start * (in_f - one) + xf * (end - start) * (in_f - one) / (out_f - one),
                           half * (start + end) * (in_f - one))
    scale = _f32(ax.scale)
    if mode == "asymmetric":
        return xf / scale
    if mode == "half_pixel":
        return (xf + half) / scale - half
    if mode == "pytorch_half_pixel":
        return tirx.Select(ax.out_len > 1, (xf + half) / scale - half, zero)
    if mode == "tf_half_pixel_for_nn":
        return (xf + half) / scale
    if mode == "half_pixel_symmetric":
        adjustment = out_f / (scale * in_f)
        offset = in_f / tirx.const(2.0, "float32") * (one - adjustment)
        return offset + (xf + half) / scale - half
    raise LoweringError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest_index(mode: str, xo, ax: _Axis):
    half = tirx.const(0.5, "float32")
    if mode == "round_prefer_floor":
        idx = tirx.ceil(xo - half)
    elif mode == "round_prefer_ceil":
        idx = tirx.floor(xo + half)
    elif mode == "floor":
        idx = tirx.floor(xo)
    elif mode == "ceil":
        idx = tirx.ceil(xo)
    elif mode == "simple":  # onnxruntime's opset < 11 rule: ceil when downsampling, else truncate
        down = _f32(ax.scale) < tirx.const(1.0, "float32")
        idx = tirx.Select(down, tirx.ceil(xo), tirx.floor(xo))
    else:
        raise LoweringError(f"unknown nearest_mode {mode!r}")
    return tirx.Cast("int64", idx)


def _clamp(i, n):
    return tirx.max(tirx.min(i, n - tirx.const(1, "int64")), tirx.const(0, "int64"))


def _cubic_weights(t, a: float):
    """Keys' cubic convolution weights for taps at -1, 0, 1, 2 (t in [0, 1))."""
    a = tirx.const(float(np.float32(a)), "float32")
    one = tirx.const(1.0, "float32")
    two = tirx.const(2.0, "float32")

    def near(s):  # |s| <= 1
        return ((a + two) * s - (a + tirx.const(3.0, "float32"))) * s * s + one

    def far(s):  # 1 < |s| < 2
        return ((a * s - tirx.const(5.0, "float32") * a) * s + tirx.const(8.0, "float32") * a) * s - \
            tirx.const(4.0, "float32") * a

    return [far(t + one), near(t), near(one - t), far(two - t)]


def _taps(method: str, xo, ax: _Axis, cubic_a: float, exclude_outside: bool, nearest_mode: str):
    """[(input index, weight or None)] for one axis."""
    if method == "nearest":
        return [(_clamp(_nearest_index(nearest_mode, xo, ax), ax.in_len), None)]
    x0f = tirx.floor(xo)
    x0 = tirx.Cast("int64", x0f)
    t = xo - x0f
    if method == "linear":
        return [(_clamp(x0, ax.in_len), tirx.const(1.0, "float32") - t),
                (_clamp(x0 + tirx.const(1, "int64"), ax.in_len), t)]
    weights = _cubic_weights(t, cubic_a)
    idx = [x0 + tirx.const(k, "int64") for k in (-1, 0, 1, 2)]
    if exclude_outside:
        zero = tirx.const(0.0, "float32")
        weights = [tirx.Select(tirx.Or(i < tirx.const(0, "int64"), i >= ax.in_len), zero, w)
                   for i, w in zip(idx, weights)]
        total = weights[0] + weights[1] + weights[2] + weights[3]
        weights = [w / total for w in weights]
    return [(_clamp(i, ax.in_len), w) for i, w in zip(idx, weights)]


def _emit(bb, x, plan, *, method: str, coord_mode: str, nearest_mode: str,
          cubic_a: float, exclude_outside: bool, extrapolation: float, extra: list):
    """The resize as one TE compute. `plan(dims)` gives the resized axes and the
    output shape from the input dims; `extra`: run-time tensors the axes' scale /
    roi callables read (passed to the compute as inputs, in this order)."""
    dtype = str(x.ty.dtype.dtype)

    def compute(data, *tensors):
        for slot, tensor in zip(extra, tensors):
            slot["tensor"] = tensor
        axes, out_shape = plan(list(data.shape))  # the compute's own shape vars

        def body(*index):
            per_axis, outside = [], []
            for ax in axes:
                xo = _coordinate(coord_mode, index[ax.axis], ax)
                if coord_mode == "tf_crop_and_resize":
                    outside.append(tirx.Or(xo < tirx.const(0.0, "float32"),
                                           xo > tirx.Cast("float32", ax.in_len) - tirx.const(1.0, "float32")))
                per_axis.append(_taps(method, xo, ax, cubic_a, exclude_outside, nearest_mode))
            value = None
            for combo in itertools.product(*per_axis):
                src = list(index)
                weight = None
                for ax, (i, w) in zip(axes, combo):
                    src[ax.axis] = i
                    if w is not None:
                        weight = w if weight is None else weight * w
                term = data(*src)
                if weight is not None:
                    term = tirx.Cast("float32", term) * weight if dtype != "float32" else term * weight
                value = term if value is None else value + term
            if method != "nearest" and dtype != "float32":
                value = _to_dtype(value, dtype)
            if outside:
                flag = outside[0]
                for o in outside[1:]:
                    flag = tirx.Or(flag, o)
                value = tirx.Select(flag, tirx.const(extrapolation, "float32").astype(dtype)
                                    if dtype != "float32" else tirx.const(extrapolation, "float32"), value)
            return value

        return te.compute(out_shape, body, name="resize")

    return emit_opaque_when_symbolic(bb, compute, x, *[slot["expr"] for slot in extra], name="onnx_resize")


def _to_dtype(value, dtype: str):
    if dtype.startswith(("int", "uint")):  # onnxruntime rounds integer results to nearest
        info = np.iinfo(dtype)
        value = tirx.round(value)
        value = tirx.max(tirx.min(value, tirx.const(float(info.max), "float32")), tirx.const(float(info.min), "float32"))
    return tirx.Cast(dtype, value)


def _read(slot: dict, i: int):
    """A callable reading element i of a run-time tensor inside the compute, as float32."""
    return lambda: _f32(slot["tensor"](tirx.const(i, "int64")))


def _out_len_from_scale(in_len, s: float):
    """floor(in * s) as onnxruntime computes it (float32 product), kept in integer
    arithmetic where that is exact, so that later ops can still prove dims equal."""
    s32 = np.float32(s)
    if isinstance(in_len, tirx.IntImm) or hasattr(in_len, "value"):
        return tirx.const(int(np.floor(np.float32(int(in_len.value)) * s32)), "int64")
    if float(s32).is_integer():
        return in_len * tirx.const(int(s32), "int64")
    inv = 1.0 / float(s32)
    if inv.is_integer() and float(np.float32(1.0 / inv)) == float(s32) and (int(inv) & (int(inv) - 1)) == 0:
        return tirx.floordiv(in_len, tirx.const(int(inv), "int64"))  # a power of two: the float product is exact
    return tirx.Cast("int64", tirx.floor(tirx.Cast("float32", in_len) * tirx.const(float(s32), "float32")))


def _lower(bb, node, x, roi, scales, sizes, *, opset10: bool):
    op_name = node.op_type
    if not isinstance(x.ty, relax.TensorType) or x.ty.ndim < 1:
        raise LoweringError(f"{op_name}: the input's rank must be known")
    if not isinstance(x.ty.shape, relax.ShapeExpr):
        # dims Relax could not infer (a Concat of h // 32 * 2 and h // 16 that it cannot
        # prove equal): bind them to fresh shape vars, read when the model runs
        dims = [tirx.Var(f"resize_in_{i}", "int64") for i in range(x.ty.ndim)]
        x = bb.match_cast(x, relax.TensorType(dims, x.ty.dtype.dtype))
    rank = x.ty.ndim
    in_shape = [tirx.Cast("int64", d) if _dt(d) != "int64" else d for d in x.ty.shape.values]
    mode = _attr(node, "mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode == "bicubic":
        mode = "cubic"
    if mode not in ("nearest", "linear", "cubic"):
        raise LoweringError(f"{op_name}: mode {mode!r} is not one of nearest, linear, cubic")
    if opset10:
        coord_mode, nearest_mode = "asymmetric", "simple"
    else:
        coord_mode = _attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest_mode = _attr(node, "nearest_mode", "round_prefer_floor")
    if coord_mode not in COORDINATE_MODES:
        raise LoweringError(f"{op_name}: coordinate_transformation_mode {coord_mode!r} is not supported")
    if nearest_mode not in NEAREST_MODES:
        raise LoweringError(f"{op_name}: nearest_mode {nearest_mode!r} is not supported")
    cubic_a = float(_attr(node, "cubic_coeff_a", -0.75))
    exclude_outside = bool(_attr(node, "exclude_outside", 0))
    extrapolation = float(_attr(node, "extrapolation_value", 0.0))
    antialias = bool(_attr(node, "antialias", 0))
    policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
    axes = _attr(node, "axes", None)
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if sorted(set(axes)) != sorted(axes) or any(not 0 <= a < rank for a in axes):
        raise LoweringError(f"{op_name}: axes {list(axes)} are not distinct axes of a rank-{rank} input")

    if _is_empty(scales):
        scales = None
    if _is_empty(sizes):
        sizes = None
    if (scales is None) == (sizes is None):
        raise LoweringError(f"{op_name}: exactly one of scales and sizes must be given")
    extra: list[dict] = []

    def runtime(expr):
        slot = {"expr": expr if str(expr.ty.dtype.dtype) == "float32" else relax.op.astype(expr, "float32"),
                "tensor": None}
        extra.append(slot)
        return slot

    # Per axis: out_len(dims) and scale(dims), functions of the input dims, so that
    # the TE compute can build them from its own shape vars (and main from Relax's).
    n = len(axes)
    scale_of: dict[int, object] = {}
    out_of: dict[int, object] = {}
    if scales is not None:
        if _static_len(scales) not in (None, n):
            raise LoweringError(f"{op_name}: {_static_len(scales)} scales for {n} axes")
        values = _const(scales)
        if values is not None:
            for a, s in zip(axes, values.astype(np.float32).reshape(-1).tolist()):
                if not s > 0:
                    raise LoweringError(f"{op_name}: scale {s} for axis {a} must be positive")
                scale_of[a] = lambda dims, s=s: s
                out_of[a] = lambda dims, a=a, s=s: _out_len_from_scale(dims[a], s)
        else:  # run-time scales: sizes = floor(in * scales) in float32, read back as a shape
            if _static_len(scales) is None:
                raise LoweringError(f"{op_name}: the scales tensor's length must be known")
            sc = relax.op.astype(scales, "float32") if str(scales.ty.dtype.dtype) != "float32" else scales
            dims_t = relax.op.astype(relax.op.shape_to_tensor(relax.op.shape_of(x)), "float32")
            if axes != list(range(rank)):
                dims_t = relax.op.take(dims_t, relax.const(np.array(axes, np.int64)), axis=0)
            out_t = relax.op.astype(relax.op.floor(relax.op.multiply(dims_t, sc)), "int64")
            outs = _shape_values(bb, bb.normalize(out_t), n, "resize_out")
            slot = runtime(bb.normalize(sc))
            for k, a in enumerate(axes):
                scale_of[a] = lambda dims, k=k: _read(slot, k)
                out_of[a] = lambda dims, o=outs[k]: o
    else:
        if _static_len(sizes) not in (None, n):
            raise LoweringError(f"{op_name}: {_static_len(sizes)} sizes for {n} axes")
        if _static_len(sizes) is None:
            raise LoweringError(f"{op_name}: the sizes tensor's length must be known")
        values = _const(sizes)
        outs = ([tirx.const(int(v), "int64") for v in values.reshape(-1)] if values is not None
                else _shape_values(bb, sizes, n, "resize_size"))
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise LoweringError(f"{op_name}: keep_aspect_ratio_policy {policy!r} is not supported")

            def common(dims):
                ratios = [tirx.Cast("float32", o) / tirx.Cast("float32", dims[a]) for a, o in zip(axes, outs)]
                c = ratios[0]
                for r in ratios[1:]:
                    c = tirx.min(c, r) if policy == "not_larger" else tirx.max(c, r)
                return c

            for a in axes:
                scale_of[a] = common
                out_of[a] = lambda dims, a=a: tirx.Cast(
                    "int64", tirx.round(common(dims) * tirx.Cast("float32", dims[a])))
        else:
            for a, o in zip(axes, outs):
                out_of[a] = lambda dims, o=o: o
                scale_of[a] = lambda dims, a=a, o=o: tirx.Cast("float32", o) / tirx.Cast("float32", dims[a])

    # region of interest (tf_crop_and_resize only): starts then ends, per listed axis
    roi_of: dict[int, tuple] = {}
    if coord_mode == "tf_crop_and_resize":
        if _is_empty(roi):
            roi_of = {a: (0.0, 1.0) for a in axes}
        else:
            values = _const(roi)
            if values is not None:
                values = values.astype(np.float32).reshape(-1).tolist()
                if len(values) != 2 * n:
                    raise LoweringError(f"{op_name}: roi has {len(values)} values, expected {2 * n}")
                roi_of = {a: (values[k], values[n + k]) for k, a in enumerate(axes)}
            else:
                slot = runtime(bb.normalize(roi))
                roi_of = {a: (_read(slot, k), _read(slot, n + k)) for k, a in enumerate(axes)}

    resized = []  # the axes that change: scale 1 maps x to x in every mode but tf_crop_and_resize
    for a in axes:
        s = scale_of[a](in_shape)
        if coord_mode != "tf_crop_and_resize" and (
                (isinstance(s, float) and s == 1.0) or (sizes is not None and policy == "stretch"
                                                        and _same(out_of[a](in_shape), in_shape[a]))):
            continue
        resized.append(a)
    if antialias and mode != "nearest" and any(not (isinstance(scale_of[a](in_shape), float)
                                                    and scale_of[a](in_shape) >= 1.0) for a in resized):
        raise LoweringError(f"{op_name} with antialias=1 on a downsampling {mode} resize is not supported "
                            f"(onnxforge has no antialiasing filter; export without antialias)")
    if not resized:
        return x

    # the dims of the tensors the output is added to / concatenated with, where Relax
    # cannot prove them equal to ours (stated equal, checked when the model runs)
    ours = [out_of[a](in_shape) if a in resized else in_shape[a] for a in range(rank)]
    fixed = _consumer_dims(node, ours)
    if fixed:
        # the check, as the run-time difference of the two read back as a shape that must
        # be all zeros (a match_cast between the two shape values crashes TVM's FuseTIR)
        ks = sorted(fixed)
        diff = relax.op.subtract(relax.op.shape_to_tensor(relax.ShapeExpr([ours[k] for k in ks])),
                                 relax.op.shape_to_tensor(relax.ShapeExpr([fixed[k] for k in ks])))
        shape = bb.emit(relax.op.tensor_to_shape(bb.normalize(diff)))
        bb.match_cast(shape, relax.ShapeType([0] * len(ks)))

    def plan(dims):
        dims = [d if _dt(d) == "int64" else tirx.Cast("int64", d) for d in dims]
        outs = {a: fixed.get(a, out_of[a](dims)) for a in resized}
        ax = [_Axis(a, dims[a], outs[a], scale_of[a](dims), roi_of.get(a)) for a in resized]
        return ax, [outs[a] if a in resized else dims[a] for a in range(rank)]

    return _emit(bb, x, plan, method=mode, coord_mode=coord_mode, nearest_mode=nearest_mode,
                 cubic_a=cubic_a, exclude_outside=exclude_outside, extrapolation=extrapolation, extra=extra)


# ops whose inputs ONNX requires to have equal dims (off the concat axis) when neither is 1
_SAME_DIMS_OPS = {"Add", "Sub", "Mul", "Div", "Concat", "Sum", "Max", "Min", "Mean"}


def _importer_nodes():
    """The importer's name -> expression map (the lowering calling us runs inside it)."""
    import inspect

    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ONNXGraphImporter):
            return owner._nodes
        frame = frame.f_back
    return None


def _consumer_dims(node, dims: list) -> dict:
    """axis -> the dim of a tensor this output is added to / concatenated with, where
    both are symbolic and Relax cannot prove them equal: an FPN adds the upsampled
    2 * ((h - 1) // 32 + 1) to a lateral (h - 1) // 16 + 1, which ONNX requires
    equal. Relax gives such an Add an unknown shape, which it cannot legalize; so the
    resize writes the lateral's dims, after a match_cast of the two shape values
    (checked when the model runs: sizes that break it fail there, as they do in
    onnxruntime). A match_cast of the tensor itself crashes TVM's FuseTIR."""
    value = node.outputs[0] if node.outputs else None
    nodes = _importer_nodes() if value is not None else None
    if nodes is None:
        return {}
    rank, fixed = len(dims), {}
    for consumer, index in value.uses:
        if consumer.op_type not in _SAME_DIMS_OPS or consumer.domain not in ("", "ai.onnx"):
            continue
        axis = None
        if consumer.op_type == "Concat":
            axis = int(consumer.attributes.get("axis", 0))
            axis = axis + rank if axis < 0 else axis
        for j, other_value in enumerate(consumer.inputs):
            other = nodes.get(other_value.name) if other_value is not None and j != index else None
            oty = getattr(other, "ty", None)
            if not isinstance(oty, relax.TensorType) or not isinstance(oty.shape, relax.ShapeExpr) or oty.ndim != rank:
                continue
            for k, (d, o) in enumerate(zip(dims, oty.shape.values)):
                if k == axis or k in fixed or hasattr(d, "value") or hasattr(o, "value") or _same(d, o):
                    continue
                fixed[k] = o
            break
    return fixed


def _same(a, b) -> bool:
    if hasattr(a, "value") and hasattr(b, "value"):
        return int(a.value) == int(b.value)
    import tvm_ffi

    return a.same_as(b) or bool(tvm_ffi.structural_equal(a, b))


def _simplify(expr):
    return expr  # TVM simplifies shape expressions when it binds them


@register_lowering("Resize")
def resize(bb, node, inputs):
    """ONNX Resize, any opset from 10: see the module docstring."""
    # Resize-10 has two inputs (X, scales); from 11 on, scales or sizes come third or fourth
    opset10 = len(node.inputs) == 2
    inputs = list(inputs) + [None] * (4 - len(inputs))
    x = inputs[0]
    if opset10:
        return _lower(bb, node, x, None, inputs[1], None, opset10=True)
    return _lower(bb, node, x, inputs[1], inputs[2], inputs[3], opset10=False)


@register_lowering("Upsample")
def upsample(bb, node, inputs):
    """ONNX Upsample (opset 7: scales attribute; 9: scales input), as Resize-10."""
    scales = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    if scales is None:
        values = node.attributes.get("scales")
        if values is None:
            raise LoweringError("Upsample needs scales (an attribute before opset 9, an input from 9)")
        scales = relax.const(np.asarray(values, np.float32))
    return _lower(bb, node, inputs[0], None, scales, None, opset10=True)
