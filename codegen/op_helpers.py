"""Small helpers the ONNX-op lowerings share (onnx_ops.py, reduce_ops.py,
shape_ops.py, nn_ops.py, ...): dtypes and dims of Relax expressions, constants,
optional inputs, and the shapes onnxforge's IR knows where Relax does not."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ir import LoweringError

op = relax.op


def _dtype(expr) -> str:
    return str(expr.ty.dtype.dtype)


def _dims(expr) -> list:
    """The dims of a tensor expression (ints where static, PrimExprs where not);
    a LoweringError for unknown rank or shape."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.ndim < 0 or not isinstance(ty.shape, relax.ShapeExpr):
        raise LoweringError("an input of unknown shape (rank and dims must be known here)")
    return [int(d.value) if isinstance(d, tvm.tirx.IntImm) else d for d in ty.shape.values]


def _static(dim, what: str) -> int:
    if not isinstance(dim, int):
        raise LoweringError(f"{what} must be static here, got the symbolic dim {dim}")
    return dim


def _const(value, dtype: str):
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def _constant_array(expr):
    """The numpy value of a Relax constant, else None."""
    data = getattr(expr, "value", None)
    if data is None:
        data = getattr(expr, "data", None)
    return data.numpy() if hasattr(data, "numpy") else None


def _input(inputs, i):
    return inputs[i] if len(inputs) > i else None


def _want(node, i: int) -> bool:
    """Whether output i of the node is used (present and named)."""
    return len(node.outputs) > i and node.outputs[i] is not None and bool(getattr(node.outputs[i], "name", ""))


def _onnx_dtype(code: int) -> str:
    import onnx.helper

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(code))).name


def _attr_str(node, name: str, default: str) -> str:
    value = node.attributes.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def with_ir_shape(bb, node, i: int, expr):
    """Input i of `node` with the static dims onnxforge's IR knows where Relax has
    symbolic ones (TVM's frontend reads a graph input's dim 0 as an open dim, so a
    pinned empty tensor (2, 0, 4) arrives as (2, n, 4)): a match_cast to the IR's
    shape, checked when the model runs. The expression unchanged otherwise."""
    value = node.inputs[i] if len(node.inputs) > i else None
    shape = getattr(value, "shape", None)
    ty = getattr(expr, "ty", None)
    if shape is None or not isinstance(ty, relax.TensorType) or ty.ndim != len(shape) \
            or not all(isinstance(d, int) for d in shape):
        return expr
    if isinstance(ty.shape, relax.ShapeExpr) and all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values):
        return expr
    return bb.match_cast(bb.normalize(expr), relax.TensorType([int(d) for d in shape], ty.dtype.dtype))


def kept_dims_shape(bb, full, drop, rank: int, kept: int, prefix: str):
    """The shape value of the dims of `full` ((rank,) int64 tensor) not flagged in
    `drop` ((rank,) bool tensor), in order: `kept` of them, read at run time."""
    from tvm.relax.frontend.onnx.onnx_frontend import _tensor_to_shape_expr

    keep = bb.normalize(op.astype(op.logical_not(drop), "int64"))
    pos = bb.normalize(op.subtract(op.cumsum(keep, axis=0), _const(1, "int64")))  # slot of each kept dim
    onehot = op.logical_and(op.equal(op.reshape(pos, (rank, 1)), _const(np.arange(kept).reshape(1, kept), "int64")),
                            op.reshape(op.astype(keep, "bool"), (rank, 1)))
    target = bb.normalize(op.sum(op.multiply(op.astype(onehot, "int64"), op.reshape(full, (rank, 1))), axis=[0]))
    return _tensor_to_shape_expr(bb, target, kept, prefix)


def shape_tensor(bb, x, dims=None):
    """x's shape as an int64 (rank,) tensor: a constant where static."""
    dims = _dims(x) if dims is None else dims
    if all(isinstance(d, int) for d in dims):
        return _const(np.array(dims, dtype=np.int64), "int64")
    return bb.normalize(op.shape_to_tensor(op.shape_of(x)))


def axis_flags(bb, axes, rank: int):
    """For a run-time (n,) int64 axes tensor: per axis i < rank, a bool scalar
    saying whether the axes name it (i or i - rank)."""
    flags = []
    for i in range(rank):
        hit = op.sum(op.astype(op.logical_or(op.equal(axes, _const(i, "int64")),
                                             op.equal(axes, _const(i - rank, "int64"))), "int64"))
        flags.append(bb.normalize(op.greater(hit, _const(0, "int64"))))
    return flags


def emit_opaque_when_symbolic(bb, compute, *args, name: str):
    """bb.emit_te(compute, *args); when the kernel takes symbolic dims as extra
    arguments, it is marked opaque (kOpaque): TVM's FuseTIR crashes fusing such a
    call with the elementwise op after it (an upsampled map added to a lateral one),
    so it stays a kernel of its own."""
    out = bb.emit_te(compute, *args, primfunc_name_hint=name)
    call = bb.lookup_binding(out)
    if isinstance(call, relax.Call) and len(call.args) > 2:
        gv = call.args[0]
        bb.update_func(gv, bb.get()[gv].with_attr("op_pattern", 8))
    return out


def frontend_attrs(node) -> dict:
    """The node's attributes the way TVM's frontend converters read them (strings
    as bytes, as onnx's protobuf gives them: they call .decode())."""
    return {k: v.encode() if isinstance(v, str) else v for k, v in node.attributes.items()}
