"""Shapes and dtypes of Relax expressions, as the CPU rewrites read them."""
from __future__ import annotations

from tvm import relax, tirx


def dtype_of(expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype.dtype) if isinstance(ty, relax.TensorType) else None


def static_shape(expr) -> list[int] | None:
    ty = getattr(expr, "ty", None)  # TVM 0.27: struct info is `ty` (relax.TensorType)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d.value))
    return dims if len(dims) == ty.ndim else None


def shape_dims(expr) -> list | None:
    """The dims of a tensor whose shape is known: ints, or PrimExprs where symbolic."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return [int(d.value) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]


def same_dim(x, y) -> bool:
    """Two dims known equal: equal ints, or the same symbolic expression."""
    if isinstance(x, int) or isinstance(y, int):
        return x == y if isinstance(x, int) and isinstance(y, int) else False
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(x, y))
