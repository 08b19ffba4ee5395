"""Lowerings for the integer ops of pre-quantized models: ConvInteger, MatMulInteger,
DynamicQuantizeLinear, QLinearConv, QLinearMatMul; the com.microsoft ops that
onnxruntime's quantizer and optimizer write (QLinearAdd / Mul / Sigmoid / LeakyRelu /
GlobalAveragePool / Concat, DynamicQuantizeMatMul, MatMulIntegerToFloat, QGemm);
and com.microsoft MatMulNBits (onnxruntime's blocked int2/4/8 weights).

Correct first: everything computes in float32, arranged to give onnxruntime's
results bit for bit where onnxruntime is exact (the integer-kernel work makes them
fast).

- Integer products. (x - x_zero_point) and (w - w_zero_point) are small integers,
  so a float32 matmul / conv of them is exact while every partial sum stays below
  2**24; the CPU build then sends it to BLAS sgemm like any float product. The bound
  is checked when the node is lowered: |x - zp| <= max over the zero point's values
  (255 when it is only known at run time) times the largest absolute row sum of the
  constant weight (or K * 255 * 255 when both operands are run-time values). Past
  2**24 the product is computed in int32 instead (exact, TVM's own slower kernel).
- Requantized outputs (QLinearConv / QLinearMatMul) follow onnxruntime's
  MlasRequantizeOutput: float32(int32 accumulator + int32 bias) times the
  multiplier x_scale * w_scale / y_scale computed in float32 in that order, rounded
  half to even, plus the output zero point, saturated.
- DynamicQuantizeLinear follows onnxruntime (and onnx's reference where they agree):
  range widened to include 0, scale (max - min) / 255, zero point
  round_half_even(clip(0 - min / scale, 0, 255)), y = saturate(round(x / scale) + zp);
  a constant input (max == min == 0) gets scale 1 as onnxruntime gives (onnx's
  reference divides by 0 there).
"""
from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from ..ir import LoweringError
from .cpu.relax_types import static_shape
from .registry import register_lowering

EXACT_FLOAT32 = 2**24  # integers up to this magnitude are exact in float32
_F32 = "float32"


# ---------------------------------------------------------------------------------------
# helpers


def _input(inputs, i):
    return inputs[i] if len(inputs) > i else None


def _const(node, i) -> np.ndarray | None:
    """The constant value of node input i (initializer or Constant node), else None."""
    if i >= len(node.inputs) or node.inputs[i] is None:
        return None
    return node.inputs[i].const_value()


def _dtype(expr) -> str:
    return str(expr.ty.dtype.dtype)


def _ndim(expr) -> int:
    return int(expr.ty.ndim)


def _f32(expr):
    return expr if _dtype(expr) == _F32 else relax.op.astype(expr, _F32)


def _is_single(expr) -> bool:
    shape = static_shape(expr)
    return shape is not None and int(np.prod(shape, dtype=np.int64)) == 1


def _scalar(bb, expr):
    """A one-element tensor as a 0-d one (so it broadcasts against anything)."""
    if expr is None:
        return None
    expr = bb.normalize(expr)
    if _ndim(expr) > 0 and _is_single(expr):
        return bb.normalize(relax.op.reshape(expr, ()))
    return expr


def _per_axis(bb, expr, axis: int, ndim: int):
    """A 0-d / one-element tensor stays a scalar; a 1-D one of length C becomes
    [1, .., C, .., 1] with C on `axis` of an `ndim`-D tensor; others stay as they are."""
    expr = _scalar(bb, expr)
    if expr is None or _ndim(expr) != 1:
        return expr
    shape = [1] * ndim
    shape[axis] = -1
    return bb.normalize(relax.op.reshape(expr, shape))


def _qrange(dtype: str) -> tuple[int, int]:
    try:
        info = np.iinfo(np.dtype(dtype))
    except TypeError as exc:
        raise LoweringError(f"expected an integer tensor, got {dtype}") from exc
    return int(info.min), int(info.max)


def _max_centered(dtype: str, zp_value: np.ndarray | None, zp_given: bool) -> int:
    """The largest |x - zero_point| for x of `dtype`."""
    lo, hi = _qrange(dtype)
    if zp_value is None:
        return hi - lo if zp_given else max(-lo, hi)
    zp = zp_value.astype(np.int64)
    return int(max(np.max(zp - lo), np.max(hi - zp)))


def _centered(bb, x, zp, zp_axis: int | None):
    """float32(x) - float32(zero_point) (exact): `zp_axis` places a 1-D zero point on
    that axis of x (ONNX's per-row / per-column / per-channel forms)."""
    xf = _f32(x)
    if zp is None:
        return xf
    zp = _scalar(bb, zp)
    if _ndim(zp) == 1 and zp_axis is not None:
        zp = _per_axis(bb, zp, zp_axis % _ndim(x), _ndim(x))
    return relax.op.subtract(xf, _f32(zp))


def _centered_int(bb, x, zp, zp_axis: int | None):
    """As _centered, in int32."""
    xi = relax.op.astype(x, "int32")
    if zp is None:
        return xi
    zp = _scalar(bb, zp)
    if _ndim(zp) == 1 and zp_axis is not None:
        zp = _per_axis(bb, zp, zp_axis % _ndim(x), _ndim(x))
    return relax.op.subtract(xi, relax.op.astype(zp, "int32"))


def _weight_abs_sum(node, w_index: int, zp_index: int, reduce_axes, zp_axis: int) -> int | None:
    """max over outputs of sum |w - w_zero_point| along the reduction axes, when the
    weight (and its zero point, if any) are constants; else None."""
    w = _const(node, w_index)
    if w is None:
        return None
    zp_given = zp_index < len(node.inputs) and node.inputs[zp_index] is not None
    zp = _const(node, zp_index) if zp_given else np.zeros((), np.int64)
    if zp is None:
        return None
    w = w.astype(np.int64)
    zp = zp.astype(np.int64)
    if zp.size == 1:
        zp = zp.reshape(())
    elif zp.ndim == 1:
        shape = [1] * w.ndim
        shape[zp_axis % w.ndim] = -1
        zp = zp.reshape(shape)
    axes = tuple(a % w.ndim for a in reduce_axes)
    return int(np.max(np.sum(np.abs(w - zp), axis=axes), initial=0))


def _product_is_exact_in_float(node, x_zp_index, w_index, w_zp_index, reduce_axes, w_zp_axis, x_dtype, w_dtype,
                               depth, bias_index=None) -> bool:
    """Whether every partial sum of the integer product is below 2**24 (see the
    module docstring): then float32 computes it exactly. `depth` is the reduction
    length (None when unknown); x_zp_index None: a zero point known only at run
    time. With `bias_index`, the constant int32 bias added to the sums must fit too,
    so that float(acc) + float(bias) is float(acc + bias) as onnxruntime computes it."""
    if x_zp_index is None:
        x_max = _max_centered(x_dtype, None, True)
    else:
        x_zp_given = x_zp_index < len(node.inputs) and node.inputs[x_zp_index] is not None
        x_max = _max_centered(x_dtype, _const(node, x_zp_index) if x_zp_given else None, x_zp_given)
    w_sum = _weight_abs_sum(node, w_index, w_zp_index, reduce_axes, w_zp_axis)
    if w_sum is None:
        if depth is None:
            return False
        w_zp_given = w_zp_index < len(node.inputs) and node.inputs[w_zp_index] is not None
        w_sum = depth * _max_centered(w_dtype, _const(node, w_zp_index) if w_zp_given else None, w_zp_given)
    bound = x_max * w_sum
    if bias_index is not None and bias_index < len(node.inputs) and node.inputs[bias_index] is not None:
        bias = _const(node, bias_index)
        if bias is None:
            return False
        bound += int(np.max(np.abs(bias.astype(np.int64)), initial=0))
    return bound < EXACT_FLOAT32


def _static_dim(expr, axis: int) -> int | None:
    shape = static_shape(expr)
    return None if shape is None else shape[axis]


def _requantize(bb, acc, multiplier, zp, out_dtype: str):
    """onnxruntime's requantization: saturate(round_half_even(acc * multiplier) + zp)."""
    lo, hi = _qrange(out_dtype)
    v = relax.op.round(relax.op.multiply(acc, multiplier))
    if zp is not None:
        v = relax.op.add(v, _f32(_scalar(bb, zp)))
    return relax.op.astype(relax.op.clip(v, lo, hi), out_dtype)


def _quantize(bb, x, scale, zp, out_dtype: str):
    """QuantizeLinear as onnxruntime's MlasQuantizeLinear: saturate(round(x / scale) + zp)."""
    lo, hi = _qrange(out_dtype)
    v = relax.op.round(relax.op.divide(x, _scalar(bb, scale)))
    if zp is not None:
        v = relax.op.add(v, _f32(_scalar(bb, zp)))
    return relax.op.astype(relax.op.clip(v, lo, hi), out_dtype)


def _dequantize(bb, x, scale, zp):
    """(x - zp) * scale in float32 (per tensor)."""
    return relax.op.multiply(_centered(bb, x, zp, None), _scalar(bb, scale))


def _out_dtype(node, zp, default: str) -> str:
    if zp is not None:
        return _dtype(zp)
    np_dtype = node.outputs[0].np_dtype if node.outputs else None
    return np_dtype.name if np_dtype is not None else default


# ---------------------------------------------------------------------------------------
# integer products


def _integer_matmul(bb, node, a, b, azp, bzp, ids, bias_index=None):
    """(A - a_zp) @ (B - b_zp): (expr, is_float). `ids` are the node's input indices of
    (a_zp, B, b_zp); see _product_is_exact_in_float for `bias_index`. Zero points:
    scalar, per row of A ([M] -> [M, 1]) or per column of B ([N]), or N-D forms
    that broadcast as they are."""
    a, b = bb.normalize(a), bb.normalize(b)
    depth = _static_dim(a, -1)
    exact = _product_is_exact_in_float(node, *ids, (-2,), -1, _dtype(a), _dtype(b), depth, bias_index)
    if exact:
        prod = relax.op.matmul(_centered(bb, a, azp, -2), _centered(bb, b, bzp, -1), out_dtype=_F32)
        return prod, True
    prod = relax.op.matmul(_centered_int(bb, a, azp, -2), _centered_int(bb, b, bzp, -1), out_dtype="int32")
    return prod, False


def _conv(bb, node, x, w):
    """Conv of x and w (already centered) with the node's Conv attributes (the frontend's
    Conv converter: conv1d/2d/3d, groups, strides, pads, dilations, auto_pad)."""
    from tvm.relax.frontend.onnx.onnx_frontend import Conv

    attrs = {k: v for k, v in node.attributes.items()
             if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
    if isinstance(attrs.get("auto_pad"), str):
        attrs["auto_pad"] = attrs["auto_pad"].encode()
    x, w = bb.normalize(x), bb.normalize(w)
    if _ndim(x) not in (3, 4, 5):
        raise LoweringError(f"{node.op_type} needs a 3-D to 5-D input, got rank {_ndim(x)}")
    pads = _same_pads(attrs, static_shape(x), static_shape(w))
    if pads is not None:  # explicit pads: no separate pad kernel (which broke CUDA's grouped-conv schedule)
        attrs.pop("auto_pad")
        attrs["pads"] = pads
    return Conv._impl_v11(bb, [x, w, None], attrs, {})


def _same_pads(attrs, xshape, wshape) -> list[int] | None:
    """ONNX's SAME_UPPER / SAME_LOWER padding as explicit pads when the spatial dims
    are static (output = ceil(input / stride)); None otherwise."""
    mode = attrs.get("auto_pad", b"NOTSET")
    if mode not in (b"SAME_UPPER", b"SAME_LOWER") or xshape is None:
        return None
    spatial = xshape[2:]
    kernel = list(attrs.get("kernel_shape") or (wshape[2:] if wshape is not None else []))
    if len(kernel) != len(spatial):
        return None
    strides = list(attrs.get("strides") or [1] * len(spatial))
    dilations = list(attrs.get("dilations") or [1] * len(spatial))
    begins, ends = [], []
    for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size)
        small = total // 2
        begins.append(small if mode == b"SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _integer_conv(bb, node, x, w, xzp, wzp, ids, bias_index=None):
    """conv(x - x_zp, w - w_zp) (zero padding of the centered input = padding x with its
    zero point, as onnxruntime does): (expr, is_float). w_zp: scalar or per output channel."""
    x, w = bb.normalize(x), bb.normalize(w)
    wshape = static_shape(w)
    depth = None if wshape is None else int(np.prod(wshape[1:], dtype=np.int64))
    exact = _product_is_exact_in_float(node, *ids, tuple(range(1, _ndim(w))), 0, _dtype(x), _dtype(w), depth,
                                       bias_index)
    if exact:
        return _conv(bb, node, _centered(bb, x, xzp, None), _centered(bb, w, wzp, 0)), True
    return _conv(bb, node, _centered_int(bb, x, xzp, None), _centered_int(bb, w, wzp, 0)), False


@register_lowering("MatMulInteger")
def matmul_integer(bb, node, inputs):
    """int32 (A - a_zero_point) @ (B - b_zero_point), uint8/int8 on either side. The
    float32 product (BLAS sgemm on CPU) when it is exact, else an int32 matmul. (TVM's
    own converter is right in every zero-point form but always takes the slow int32 path.)"""
    a, b = inputs[0], inputs[1]
    prod, is_float = _integer_matmul(bb, node, a, b, _input(inputs, 2), _input(inputs, 3), (2, 1, 3))
    return relax.op.astype(prod, "int32") if is_float else prod


@register_lowering("ConvInteger")
def conv_integer(bb, node, inputs):
    """int32 conv(x - x_zero_point, w - w_zero_point); w_zero_point per tensor or per
    output channel; every Conv attribute form (see _conv)."""
    x, w = inputs[0], inputs[1]
    acc, is_float = _integer_conv(bb, node, x, w, _input(inputs, 2), _input(inputs, 3), (2, 1, 3))
    return relax.op.astype(acc, "int32") if is_float else acc


def _dynamic_quantize(bb, x):
    """uint8 y, float32 scale, float32 and uint8 zero point of x, as onnxruntime's
    DynamicQuantizeLinear and DynamicQuantizeMatMul compute them (module docstring)."""
    x = bb.normalize(_f32(x))
    op = relax.op
    zero = relax.const(0.0, _F32)
    lo = bb.normalize(op.minimum(op.min(x), zero))
    hi = bb.normalize(op.maximum(op.max(x), zero))
    scale = op.divide(op.subtract(hi, lo), relax.const(255.0, _F32))
    scale = bb.normalize(op.where(op.equal(hi, lo), relax.const(1.0, _F32), scale))
    zp_float = bb.normalize(op.round(op.clip(op.subtract(zero, op.divide(lo, scale)), 0, 255)))
    y = bb.normalize(op.astype(op.clip(op.add(op.round(op.divide(x, scale)), zp_float), 0, 255), "uint8"))
    return y, scale, zp_float, bb.normalize(op.astype(zp_float, "uint8"))


@register_lowering("DynamicQuantizeLinear")
def dynamic_quantize_linear(bb, node, inputs):
    """uint8 y, float scale, uint8 zero point, computed as onnxruntime does. (TVM's
    converter gives scale 0, zero point 255 and y = 255 for an all-zero input.)"""
    y, scale, _, zp = _dynamic_quantize(bb, inputs[0])
    return [y, scale, zp]


@register_lowering("QLinearMatMul")
def qlinear_matmul(bb, node, inputs):
    """saturate(round((A - a_zp) @ (B - b_zp) * (a_scale * b_scale / y_scale)) + y_zp);
    a_scale/a_zp per tensor or per row, b_scale/b_zp per tensor or per column."""
    a, sa, azp, b, sb, bzp, sy, yzp = (list(inputs) + [None] * 8)[:8]
    prod, is_float = _integer_matmul(bb, node, a, b, azp, bzp, (2, 3, 5))
    prod = bb.normalize(prod if is_float else relax.op.astype(prod, _F32))
    sa = _scalar(bb, sa)
    if _ndim(sa) == 1:
        sa = bb.normalize(relax.op.expand_dims(sa, -1))
    multiplier = relax.op.divide(relax.op.multiply(_f32(sa), _f32(_scalar(bb, sb))), _f32(_scalar(bb, sy)))
    return _requantize(bb, prod, multiplier, yzp, _out_dtype(node, yzp, _dtype(a)))


@register_lowering("QLinearConv")
def qlinear_conv(bb, node, inputs):
    """saturate(round((conv(x - x_zp, w - w_zp) + B) * (x_scale * w_scale / y_scale)) + y_zp);
    w_scale / w_zp per tensor or per output channel; B int32 (optional)."""
    x, sx, xzp, w, sw, wzp, sy, yzp, bias = (list(inputs) + [None] * 9)[:9]
    acc, is_float = _integer_conv(bb, node, x, w, xzp, wzp, (2, 3, 5), bias_index=8)
    ndim = _ndim(bb.normalize(x))
    if bias is not None:
        shape = [1, -1] + [1] * (ndim - 2)
        if is_float:  # both exact in float32: one rounding of the exact sum, as float(int32 sum)
            acc = relax.op.add(acc, relax.op.reshape(bb.normalize(_f32(bias)), shape))
        else:
            acc = relax.op.add(acc, relax.op.reshape(bb.normalize(relax.op.astype(bias, "int32")), shape))
    acc = bb.normalize(acc if is_float else relax.op.astype(acc, _F32))
    multiplier = relax.op.divide(relax.op.multiply(_f32(_scalar(bb, sx)), _f32(_per_axis(bb, sw, 1, ndim))),
                                 _f32(_scalar(bb, sy)))
    return _requantize(bb, acc, multiplier, yzp, _out_dtype(node, yzp, _dtype(x)))


# ---------------------------------------------------------------------------------------
# com.microsoft integer products with float outputs (what onnxruntime's optimizer fuses to)


def _scale_columns(bb, prod, multiplier, bias):
    """float32 product * multiplier (scalar or per column) + bias (per column)."""
    y = relax.op.multiply(prod, _f32(_scalar(bb, multiplier)))
    return y if bias is None else relax.op.add(y, _f32(bias))


def _float_product(bb, prod, is_float):
    return bb.normalize(prod if is_float else relax.op.astype(prod, _F32))


@register_lowering("MatMulIntegerToFloat", domain="com.microsoft")
def matmul_integer_to_float(bb, node, inputs):
    """(A - a_zp) @ (B - b_zp) * (a_scale * b_scale) + bias, in float32."""
    a, b, sa, sb, azp, bzp, bias = (list(inputs) + [None] * 7)[:7]
    prod, is_float = _integer_matmul(bb, node, a, b, azp, bzp, (4, 1, 5))
    multiplier = relax.op.multiply(_f32(_scalar(bb, sa)), _f32(_scalar(bb, sb)))
    return _scale_columns(bb, _float_product(bb, prod, is_float), bb.normalize(multiplier), bias)


@register_lowering("DynamicQuantizeMatMul", domain="com.microsoft")
def dynamic_quantize_matmul(bb, node, inputs):
    """A quantized to uint8 as DynamicQuantizeLinear does, then
    (A_q - a_zp) @ (B - b_zp) * (a_scale * b_scale) + bias, in float32."""
    a, b, sb, bzp, bias = (list(inputs) + [None] * 5)[:5]
    a_q, sa, _, azp = _dynamic_quantize(bb, a)
    b = bb.normalize(b)
    exact = _product_is_exact_in_float(node, None, 1, 3, (-2,), -1, "uint8", _dtype(b), _static_dim(b, -2))
    if exact:
        prod = _float_product(bb, relax.op.matmul(_centered(bb, a_q, azp, None), _centered(bb, b, bzp, -1),
                                                  out_dtype=_F32), True)
    else:
        prod = _float_product(bb, relax.op.matmul(_centered_int(bb, a_q, azp, None), _centered_int(bb, b, bzp, -1),
                                                  out_dtype="int32"), False)
    multiplier = relax.op.multiply(sa, _f32(_scalar(bb, sb)))
    return _scale_columns(bb, prod, bb.normalize(multiplier), bias)


@register_lowering("QGemm", domain="com.microsoft")
def qgemm(bb, node, inputs):
    """acc = (A - a_zp) @ (B - b_zp) (transA / transB) + C (int32); times
    alpha * a_scale * b_scale (per tensor or per column), divided by y_scale and
    requantized when y_scale is given, else the float32 result."""
    a, sa, azp, b, sb, bzp, c, sy, yzp = (list(inputs) + [None] * 9)[:9]
    attrs = node.attributes
    a, b = bb.normalize(a), bb.normalize(b)
    if attrs.get("transA", 0):
        a = bb.normalize(relax.op.permute_dims(a, [1, 0]))
    if attrs.get("transB", 0):
        b = bb.normalize(relax.op.permute_dims(b, [1, 0]))
    transposed = bool(attrs.get("transB", 0))
    reduce_axis = -1 if transposed else -2
    zp_axis = -2 if transposed else -1
    exact = _product_is_exact_in_float(node, 2, 3, 5, (reduce_axis,), zp_axis, _dtype(a), _dtype(b),
                                       _static_dim(a, -1), bias_index=6)
    if exact:
        acc = relax.op.matmul(_centered(bb, a, azp, None), _centered(bb, b, bzp, -1), out_dtype=_F32)
        if c is not None:
            acc = relax.op.add(acc, _f32(c))
    else:
        acc = relax.op.matmul(_centered_int(bb, a, azp, None), _centered_int(bb, b, bzp, -1), out_dtype="int32")
        if c is not None:
            acc = relax.op.add(acc, relax.op.astype(c, "int32"))
    acc = _float_product(bb, acc, exact)
    alpha = relax.const(float(attrs.get("alpha", 1.0)), _F32)
    scale = relax.op.multiply(relax.op.multiply(alpha, _f32(_scalar(bb, sa))), _f32(_scalar(bb, sb)))
    if sy is None:
        return relax.op.multiply(acc, scale)
    multiplier = relax.op.divide(scale, _f32(_scalar(bb, sy)))
    return _requantize(bb, acc, multiplier, yzp, _out_dtype(node, yzp, _dtype(a)))


# ---------------------------------------------------------------------------------------
# com.microsoft element-wise QLinear ops (per-tensor scales and zero points)


def _qparams(inputs, start):
    return _input(inputs, start), _input(inputs, start + 1)


@register_lowering("QLinearAdd", domain="com.microsoft")
def qlinear_add(bb, node, inputs):
    """As onnxruntime's x86 kernel: ratios a_scale / c_scale and b_scale / c_scale, a
    fixed part c_zp - (ratio_a * a_zp + ratio_b * b_zp), then
    round(a * ratio_a + b * ratio_b + fixed), saturated."""
    a, (sa, azp), b, (sb, bzp), (sc, czp) = inputs[0], _qparams(inputs, 1), inputs[3], _qparams(inputs, 4), \
        _qparams(inputs, 6)
    op = relax.op
    ra = bb.normalize(op.divide(_f32(_scalar(bb, sa)), _f32(_scalar(bb, sc))))
    rb = bb.normalize(op.divide(_f32(_scalar(bb, sb)), _f32(_scalar(bb, sc))))

    def zp_f(zp):
        return relax.const(0.0, _F32) if zp is None else _f32(_scalar(bb, zp))

    fixed = op.subtract(zp_f(czp), op.add(op.multiply(ra, zp_f(azp)), op.multiply(rb, zp_f(bzp))))
    v = op.add(op.add(op.multiply(_f32(a), ra), op.multiply(_f32(b), rb)), fixed)
    out_dtype = _out_dtype(node, czp, _dtype(a))
    lo, hi = _qrange(out_dtype)
    return op.astype(op.clip(op.round(v), lo, hi), out_dtype)


@register_lowering("QLinearMul", domain="com.microsoft")
def qlinear_mul(bb, node, inputs):
    """saturate(round((a - a_zp) * (b - b_zp) * (a_scale * b_scale / c_scale)) + c_zp)."""
    a, (sa, azp), b, (sb, bzp), (sc, czp) = inputs[0], _qparams(inputs, 1), inputs[3], _qparams(inputs, 4), \
        _qparams(inputs, 6)
    prod = relax.op.multiply(_centered(bb, a, azp, None), _centered(bb, b, bzp, None))
    multiplier = relax.op.divide(relax.op.multiply(_f32(_scalar(bb, sa)), _f32(_scalar(bb, sb))),
                                 _f32(_scalar(bb, sc)))
    return _requantize(bb, prod, multiplier, czp, _out_dtype(node, czp, _dtype(a)))


@register_lowering("QLinearSigmoid", domain="com.microsoft")
def qlinear_sigmoid(bb, node, inputs):
    """quantize(sigmoid(dequantize(x)))."""
    x, (sx, xzp), (sy, yzp) = inputs[0], _qparams(inputs, 1), _qparams(inputs, 3)
    y = relax.op.sigmoid(_dequantize(bb, x, sx, xzp))
    return _quantize(bb, y, sy, yzp, _out_dtype(node, yzp, _dtype(x)))


@register_lowering("QLinearLeakyRelu", domain="com.microsoft")
def qlinear_leaky_relu(bb, node, inputs):
    """quantize(leaky_relu(dequantize(x), alpha))."""
    x, (sx, xzp), (sy, yzp) = inputs[0], _qparams(inputs, 1), _qparams(inputs, 3)
    alpha = float(node.attributes.get("alpha", 0.01))
    v = bb.normalize(_dequantize(bb, x, sx, xzp))
    y = relax.op.where(relax.op.less(v, relax.const(0.0, _F32)), relax.op.multiply(v, relax.const(alpha, _F32)), v)
    return _quantize(bb, y, sy, yzp, _out_dtype(node, yzp, _dtype(x)))


@register_lowering("QLinearGlobalAveragePool", domain="com.microsoft")
def qlinear_global_average_pool(bb, node, inputs):
    """As onnxruntime: the int32 sum over the spatial axes minus x_zp * size, times
    x_scale / (y_scale * size), rounded half to even, plus y_zp, saturated.
    channels_last=1 reads (N, spatial..., C)."""
    x, sx, xzp, sy, yzp = (list(inputs) + [None] * 5)[:5]
    x = bb.normalize(x)
    ndim = _ndim(x)
    shape = static_shape(x)
    if shape is None or ndim < 3:
        raise LoweringError("QLinearGlobalAveragePool needs a static input shape of rank >= 3")
    channels_last = bool(node.attributes.get("channels_last", 0))
    axes = list(range(1, ndim - 1)) if channels_last else list(range(2, ndim))
    size = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    if size * 255 >= EXACT_FLOAT32:
        raise LoweringError(f"QLinearGlobalAveragePool over {size} elements is not supported (float32 sum inexact)")
    acc = relax.op.sum(_centered(bb, x, xzp, None), axis=axes, keepdims=True)
    multiplier = relax.op.divide(_f32(_scalar(bb, sx)),
                                 relax.op.multiply(_f32(_scalar(bb, sy)), relax.const(float(size), _F32)))
    return _requantize(bb, acc, multiplier, yzp, _out_dtype(node, yzp, _dtype(x)))


@register_lowering("QLinearConcat", domain="com.microsoft")
def qlinear_concat(bb, node, inputs):
    """Inputs: Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per tensor; each
    requantized to Y's parameters (quantize(dequantize(x))) and concatenated on `axis`."""
    sy, yzp = inputs[0], inputs[1]
    if (len(inputs) - 2) % 3 or len(inputs) < 5:
        raise LoweringError(f"QLinearConcat takes Y_scale, Y_zero_point and triples, got {len(inputs)} inputs")
    out_dtype = _out_dtype(node, yzp, "uint8")
    parts = []
    for i in range(2, len(inputs), 3):
        x, sx, xzp = inputs[i:i + 3]
        parts.append(bb.normalize(_quantize(bb, _dequantize(bb, x, sx, xzp), sy, yzp, out_dtype)))
    return relax.op.concat(parts, axis=int(node.attributes.get("axis", 0)))


# ---------------------------------------------------------------------------------------
# com.microsoft MatMulNBits


def _nbits_weight_te(packed, scales, zp=None, g_idx=None, *, k_total, block, bits, zp_packed):
    """W[k, n] (float32) = (q[n, k] - zp[n, block(k)]) * scale[n, block(k)]; q unpacked
    low bits first from packed[n, k // block, ...]; block(k) = k // block or g_idx[k]."""
    mask = (1 << bits) - 1
    n_total = packed.shape[0]
    default_zp = float(1 << (bits - 1))

    def field(tensor, n, index):
        """The index-th `bits`-wide field of row n of a 2-D packed uint8 tensor."""
        bit = index * bits
        shift = tirx.Cast("uint8", bit % 8)
        return tirx.bitwise_and(tirx.shift_right(tensor(n, bit // 8), shift), tirx.const(mask, "uint8"))

    def fcompute(k, n):
        blk = k // block
        bit = (k % block) * bits
        q = tirx.bitwise_and(tirx.shift_right(packed(n, blk, bit // 8), tirx.Cast("uint8", bit % 8)),
                             tirx.const(mask, "uint8"))
        group = blk if g_idx is None else g_idx(k)
        if zp is None:
            z = tirx.const(default_zp, _F32)
        elif zp_packed:
            z = field(zp, n, group).astype(_F32)
        else:
            z = zp(n, group).astype(_F32)
        return (q.astype(_F32) - z) * scales(n, group).astype(_F32)

    return te.compute([k_total, n_total], fcompute, name="dequantize_nbits")


@register_lowering("MatMulNBits", domain="com.microsoft")
def matmul_nbits(bb, node, inputs):
    """Y = A @ dequantize(B)^T (+ bias), B's blocks dequantized to float32 in the module
    (one elementwise kernel) and multiplied in float32 (BLAS on CPU), whatever
    accuracy_level asks (it only allows onnxruntime to compute less exactly)."""
    attrs = node.attributes
    k_total, n_total = int(attrs["K"]), int(attrs["N"])
    bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
    if bits not in (2, 4, 8):
        raise LoweringError(f"MatMulNBits with bits={bits} is not supported (2, 4 and 8 are)")
    if int(attrs.get("weight_prepacked", 0) or 0):
        raise LoweringError("MatMulNBits with weight_prepacked (a CUDA layout) is not supported")
    a, packed, scales = inputs[0], bb.normalize(inputs[1]), bb.normalize(inputs[2])
    zp, g_idx, bias = _input(inputs, 3), _input(inputs, 4), _input(inputs, 5)
    a = bb.normalize(a)
    n_blocks = -(-k_total // block)
    blob = block * bits // 8
    pshape = static_shape(packed)
    out_dtype = _dtype(a)
    if pshape is not None and 0 in pshape:
        raise LoweringError("MatMulNBits with an empty B (an omitted projection) is not supported")
    if pshape != [n_total, n_blocks, blob]:
        raise LoweringError(f"MatMulNBits: B has shape {pshape}, expected {[n_total, n_blocks, blob]} "
                            f"for K={k_total}, N={n_total}, bits={bits}, block_size={block}")
    scales = bb.normalize(relax.op.reshape(scales, (n_total, n_blocks)))
    extra = {}
    zp_packed = False
    if zp is not None:
        zp = bb.normalize(zp)
        zp_packed = _dtype(zp) == "uint8"
        width = -(-n_blocks * bits // 8) if zp_packed else n_blocks
        extra["zp"] = bb.normalize(relax.op.reshape(zp, (n_total, width)))
    if g_idx is not None:
        extra["g_idx"] = bb.normalize(g_idx)
    weight = bb.emit_te(_nbits_weight_te, packed, scales, k_total=k_total, block=block, bits=bits,
                        zp_packed=zp_packed, primfunc_name_hint="dequantize_nbits", **extra)
    y = relax.op.matmul(_f32(a), weight, out_dtype=_F32)
    if bias is not None:
        y = relax.op.add(y, _f32(bias))
    return y if out_dtype == _F32 else relax.op.astype(y, out_dtype)
