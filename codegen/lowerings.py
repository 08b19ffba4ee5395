"""Built-in lowerings for ops tvm.relax.frontend.onnx lacks (see registry.py for
the signature). Each is small and written against Relax ops only."""
from __future__ import annotations

from tvm import relax

from .registry import register_lowering


@register_lowering("Swish")
def swish(bb, node, inputs):
    """x * sigmoid(alpha * x): ONNX opset 24, and what the `fuse{patterns=silu}` pass emits."""
    x = inputs[0]
    alpha = float(node.attributes.get("alpha", 1.0))
    dtype = x.ty.dtype.dtype
    gate = x if alpha == 1.0 else relax.op.multiply(x, relax.const(alpha, dtype))
    return relax.op.multiply(x, relax.op.sigmoid(gate))
