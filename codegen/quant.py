"""Quantized weights in the compiled module: int4 packing and DequantizeLinear.

- int4 / uint4 weights are stored packed, two per byte (ONNX's order: element 2i
  in the low nibble, 2i+1 in the high one), as a flat uint8 parameter: weights.npz
  and the loaders see a plain uint8 array, and the module unpacks it itself
  (`unpack_int4`, an injective TIR kernel that fuses into its consumer, normally
  the dequantize below). int8 / uint8 weights stay as they are.
- DequantizeLinear with `block_size` (opset 21: int4 blocks along the reduction
  axis), which TVM's frontend refuses, becomes one elementwise TE kernel:
  (q - zero_point[block]) * scale[block]. Per-tensor and per-axis DequantizeLinear
  stay with the frontend (relax.op.dequantize), which the CPU pipeline legalizes to
  a parallel, vectorised kernel that feeds BLAS (codegen/cpu/blas.py).
"""
from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from .registry import register_lowering
from .cpu.relax_types import static_shape

INT4_DTYPES = ("int4", "uint4")


def pack_int4(array: np.ndarray) -> np.ndarray:
    """int4/uint4 numpy array (ml_dtypes, one value per byte) -> flat uint8 array of
    ceil(n/2) bytes, element 2i in the low nibble and 2i+1 in the high nibble."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4_numpy(packed: np.ndarray, shape, signed: bool) -> np.ndarray:
    """The inverse of pack_int4, as int8 (for tests and tools)."""
    lo, hi = packed & 0x0F, packed >> 4
    flat = np.stack([lo, hi], axis=-1).reshape(-1)[: int(np.prod(shape, dtype=np.int64))].astype(np.int8)
    if signed:
        flat = np.where(flat >= 8, flat - 16, flat).astype(np.int8)
    return flat.reshape(shape)


def _unpack_te(packed, shape, signed):
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * int(shape[i + 1])

    def fcompute(*idx):
        flat = 0
        for i, s in zip(idx, strides):
            flat = flat + i * s
        byte = packed[flat // 2]
        odd = tirx.Cast("uint8", flat % 2)
        if not signed:
            return tirx.bitwise_and(tirx.shift_right(byte, odd * tirx.const(4, "uint8")), tirx.const(15, "uint8"))
        # the wanted nibble into the high half, then an arithmetic shift right sign-extends it
        high = tirx.Cast("int8", tirx.shift_left(byte, (tirx.const(1, "uint8") - odd) * tirx.const(4, "uint8")))
        return tirx.shift_right(high, tirx.const(4, "int8"))

    return te.compute([int(d) for d in shape], fcompute, name="unpack_int4")


def unpack_int4(bb, packed, shape, signed: bool):
    """Relax: the flat uint8 `packed` parameter -> an int8 (uint8 when not `signed`)
    tensor of `shape`."""
    return bb.emit_te(_unpack_te, packed, list(shape), signed, primfunc_name_hint="unpack_int4")


def _dequant_block_te(x, scale, zp=None, *, axis, block, out_dtype):
    def fcompute(*idx):
        sidx = [i // block if k == axis else i for k, i in enumerate(idx)]
        v = x(*idx).astype(out_dtype)
        if zp is not None:
            v = v - zp(*sidx).astype(out_dtype)
        return v * scale(*sidx).astype(out_dtype)

    return te.compute(x.shape, fcompute, name="dequantize_block")


@register_lowering("DequantizeLinear")
def dequantize_linear(bb, node, inputs):
    """Blocked DequantizeLinear (block_size > 0) as one TE kernel; otherwise the
    frontend's form, relax.op.dequantize (per tensor or per axis)."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    axis = int(node.attributes.get("axis", 1))
    block = int(node.attributes.get("block_size", 0) or 0)
    ndim = x.ty.ndim
    out_dtype = str(scale.ty.dtype.dtype)
    if node.attributes.get("output_dtype"):
        from tvm.relax.frontend.onnx.onnx_frontend import get_type

        out_dtype = get_type(node.attributes["output_dtype"])
    if axis < 0:
        axis += ndim
    if block <= 0:
        if ndim <= 1 and axis == 1:
            axis = 0
        if zp is None:
            zp = relax.const(0, str(x.ty.dtype.dtype))
        return relax.op.dequantize(x, scale, zp, axis=axis, out_dtype=out_dtype)
    xs, ss = static_shape(x), static_shape(scale)
    if xs is None or ss is None or len(ss) != len(xs) or not 0 <= axis < ndim:
        raise ValueError(f"blocked DequantizeLinear needs static shapes with scale of the input's rank "
                         f"(input {xs}, scale {ss}, axis {axis})")
    if ss[axis] != -(-xs[axis] // block) or any(a != b for k, (a, b) in enumerate(zip(xs, ss)) if k != axis):
        raise ValueError(f"blocked DequantizeLinear: scale shape {ss} does not match input {xs} with "
                         f"block_size {block} on axis {axis}")
    extra = {} if zp is None else {"zp": zp}
    return bb.emit_te(_dequant_block_te, x, scale, axis=axis, block=block, out_dtype=out_dtype,
                      primfunc_name_hint="dequantize_block", **extra)

