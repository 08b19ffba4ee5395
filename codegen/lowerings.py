"""Built-in lowerings for ops tvm.relax.frontend.onnx lacks (see registry.py for
the signature). Each is small and written against Relax ops only."""
from __future__ import annotations

from tvm import relax

from . import quant  # noqa: F401  (DequantizeLinear with block_size; int4 unpacking)
from .registry import register_lowering


@register_lowering("Swish")
def swish(bb, node, inputs):
    """x * sigmoid(alpha * x): ONNX opset 24, and what the `fuse{patterns=silu}` pass emits."""
    x = inputs[0]
    alpha = float(node.attributes.get("alpha", 1.0))
    dtype = x.ty.dtype.dtype
    gate = x if alpha == 1.0 else relax.op.multiply(x, relax.const(alpha, dtype))
    return relax.op.multiply(x, relax.op.sigmoid(gate))


def _constant_array(expr):
    """The numpy value of a Relax constant (TVM 0.27: `.value`; older: `.data`), else None."""
    data = getattr(expr, "value", None)
    if data is None:
        data = getattr(expr, "data", None)
    return data.numpy() if hasattr(data, "numpy") else None


@register_lowering("Pow")
def pow_(bb, node, inputs):
    """x ** k for a constant integer k in 1..4 as multiplications: TVM's CUDA modules
    are compiled with --use_fast_math, where powf(x, 2.0f) is exp2f(2 * log2f(x)),
    NaN for every negative x (a decomposed LayerNorm's (x - mean) ** 2 made
    PP-OCRv4's outputs all NaN on an H100). Other exponents: the frontend's Pow."""
    from tvm.relax.frontend.onnx.onnx_frontend import Pow

    x, y = inputs
    k = _constant_array(y)
    if k is not None and k.size == 1 and isinstance(x.ty, relax.TensorType) and x.ty.ndim >= k.ndim \
            and float(k.reshape(())) in (1.0, 2.0, 3.0, 4.0):
        out = x
        for _ in range(int(k.reshape(())) - 1):
            out = relax.op.multiply(out, x)
        return out
    return Pow.base_impl(bb, inputs, {}, {})


@register_lowering("Clip")
def clip(bb, node, inputs):
    """Clip with constant bounds as one relax clip (which DispatchBLAS folds into the
    epilogue of the conv/matmul before it, e.g. ReLU6); the frontend's maximum /
    minimum pair otherwise (bounds computed at run time, NaN or crossed bounds, integers)."""
    import math

    from tvm.relax.frontend.onnx.onnx_frontend import Clip

    x = inputs[0]
    legacy = "min" in node.attributes or "max" in node.attributes  # opset < 11: bounds are attributes
    if legacy:
        bounds = [float(node.attributes.get("min", -math.inf)), float(node.attributes.get("max", math.inf))]
    else:
        bounds = []
        for i in (1, 2):
            bound = inputs[i] if len(inputs) > i else None
            value = None if bound is None else _constant_array(bound)
            if bound is not None and (value is None or value.size != 1):
                bounds = None
                break
            bounds.append((-math.inf if i == 1 else math.inf) if bound is None else float(value.reshape(())))
    # min > max: ONNX gives max everywhere, relax's clip min
    if bounds is not None and bounds[0] <= bounds[1] and isinstance(x.ty, relax.TensorType) \
            and str(x.ty.dtype.dtype) == "float32":
        return relax.op.clip(x, bounds[0], bounds[1])
    if legacy:
        return Clip._impl_v1(bb, inputs, dict(node.attributes), {})
    return Clip._impl_v13(bb, list(inputs) + [None] * (3 - len(inputs)), {}, {})
