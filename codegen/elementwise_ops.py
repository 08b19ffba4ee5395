"""Elementwise ONNX ops lowered by onnxforge: Pow (mixed and integer dtypes, small
integer exponents as products). See registry.py for the lowering signature."""
from __future__ import annotations

import numpy as np
from tvm import relax

from .op_helpers import _constant_array, _dtype
from .registry import register_lowering

op = relax.op


@register_lowering("Pow")
def pow_(bb, node, inputs):
    """x ** y in x's dtype (ONNX: the result takes the base's type).

    A constant integer exponent in 1..4 is multiplications: TVM's CUDA modules are
    compiled with --use_fast_math, where powf(x, 2.0f) is exp2f(2 * log2f(x)), NaN
    for every negative x (a decomposed LayerNorm's (x - mean) ** 2 made PP-OCRv4's
    outputs all NaN on an H100). Integer bases (TVM's power takes floats only) go
    through float64 and back (rounded for integer exponents, truncated as C's cast
    for float ones); an exponent of another dtype is cast to the base's."""
    x, y = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    k = _constant_array(y)
    if k is not None and k.size == 1 and isinstance(x.ty, relax.TensorType) and x.ty.ndim >= k.ndim \
            and float(k.reshape(())) in (1.0, 2.0, 3.0, 4.0):
        out = x
        for _ in range(int(k.reshape(())) - 1):
            out = op.multiply(out, x)
        return out
    dx, dy = _dtype(x), _dtype(y)
    if np.dtype(dx).kind == "f":
        return op.power(x, y if dy == dx else op.astype(y, dx))
    wide = op.power(op.astype(x, "float64"), op.astype(y, "float64"))
    if np.dtype(dy).kind != "f":
        wide = op.round(wide)
    return op.astype(wide, dx)
