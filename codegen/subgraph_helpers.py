"""Helpers shared by the If (codegen/control_flow.py) and Loop/Scan (codegen/loops.py)
lowerings: blocks and scopes, fresh symbolic dims, static evaluation of conditions,
names for messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
import tvm
from tvm import relax, tirx

from ..ir import LoweringError, Node

if TYPE_CHECKING:
    from .lower import _Importer


def _block(bb, build: Callable[[], relax.Expr]) -> relax.SeqExpr:
    """A branch: what `build` emits, in its own block and scope."""
    bb.begin_scope(None)
    try:
        bb._begin_binding_block()
        try:
            body = build()
        finally:
            block = bb._end_block()
    finally:
        bb.end_scope()
    return relax.SeqExpr([block], body)


def _go(bb, i, limit, cond) -> relax.Expr:
    go = bb.emit(relax.op.less(i, limit))
    return go if cond is None else bb.emit(relax.op.logical_and(go, cond))


def _fresh(name: str = "d") -> tirx.Var:
    return tirx.Var(name, "int64")


def _freshen(ty, varmap: dict, define: bool = True):
    """`ty` with its symbolic dims replaced by fresh variables (the same variable
    for the same one, through varmap). define=False: for return types, whose dims
    must come from the parameters: a dim not in varmap erases the shape."""
    def dim(d):
        if _is_int(d):
            return d
        if isinstance(d, tirx.Var) and d in varmap:
            return varmap[d]
        if not define:
            return None
        fresh = _fresh(d.name if isinstance(d, tirx.Var) else "d")
        if isinstance(d, tirx.Var):
            varmap[d] = fresh
        return fresh

    if isinstance(ty, relax.TensorType):
        dims = _dims(ty)
        dtype = str(ty.dtype.dtype)
        if dims is None:
            if define and ty.ndim >= 0:
                return relax.TensorType([_fresh() for _ in range(ty.ndim)], dtype)
            return relax.TensorType(ndim=ty.ndim, dtype=dtype)
        new = [dim(d) for d in dims]
        return relax.TensorType(ndim=ty.ndim, dtype=dtype) if any(d is None for d in new) else relax.TensorType(new, dtype)
    if isinstance(ty, relax.ShapeType):
        if ty.values is None:
            return ty
        new = [dim(d) for d in ty.values]
        return relax.ShapeType(ndim=ty.ndim) if any(d is None for d in new) else relax.ShapeType(new)
    if isinstance(ty, relax.TupleType):
        return relax.TupleType([_freshen(f, varmap, define) for f in ty.fields])
    return ty


def _shaped(ty):
    """A tensor type of known rank but unknown shape gets symbolic dims."""
    if isinstance(ty, relax.TensorType) and _dims(ty) is None and ty.ndim >= 0:
        return relax.TensorType([_fresh() for _ in range(ty.ndim)], str(ty.dtype.dtype))
    return ty


def _rebuild(var: relax.Var) -> relax.Expr:
    """A shape parameter is bound as a ShapeExpr, as converters expect one."""
    if isinstance(var.ty, relax.ShapeType) and var.ty.values is not None:
        return relax.ShapeExpr(list(var.ty.values))
    return var


def _with_shape(bb, expr: relax.Expr, dims: list, dtype: str) -> relax.Expr:
    """`expr` as a tensor with a shape (unknown dims symbolic), so that later
    converters can read one."""
    ty = expr.ty
    if isinstance(ty, relax.TensorType) and _dims(ty) is not None:
        return expr
    return bb.match_cast(expr, relax.TensorType([d if d is not None else _fresh() for d in dims], dtype))


def _dims(ty) -> list | None:
    if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
        return list(ty.shape.values)
    return None


def _is_int(d) -> bool:
    return isinstance(d, tirx.IntImm)


def _equal(a, b) -> bool:
    if _is_int(a) and _is_int(b):
        return int(a.value) == int(b.value)
    return a.same_as(b)


def _same_dim(a, b) -> bool:
    if _equal(a, b):
        return True
    if _is_int(a) and _is_int(b):
        return False
    try:
        return bool(tvm.sym.Analyzer().can_prove_equal(a, b))
    except Exception:  # mixed dtypes and the like: not provably equal
        return False


def _is_static(expr) -> bool:
    if isinstance(expr, tvm.ir.Constant):
        return True
    if isinstance(expr, relax.ShapeExpr):
        return all(map(_is_int, expr.values))
    return False


def _static_bool(bb, expr) -> bool | None:
    """A one-element condition whose value is known when compiling: constants and
    arithmetic on static shapes (torch exports test ranks and dims with If)."""
    try:
        array = _evaluate(bb, expr, [0])
    except _NotStatic:
        return None
    return bool(array.reshape(())) if array.size == 1 else None


class _NotStatic(Exception):
    pass


_COMPARE = {"relax.equal": np.equal, "relax.not_equal": np.not_equal, "relax.less": np.less,
            "relax.less_equal": np.less_equal, "relax.greater": np.greater, "relax.greater_equal": np.greater_equal,
            "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or, "relax.add": np.add,
            "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.floor_divide": np.floor_divide,
            "relax.maximum": np.maximum, "relax.minimum": np.minimum}


def _evaluate(bb, expr, budget: list[int]):
    """The value of a small expression on constants and static shapes (numpy);
    _NotStatic where anything is unknown."""
    budget[0] += 1
    if budget[0] > 200:
        raise _NotStatic
    if isinstance(expr, tvm.ir.Constant):
        return expr.value.numpy()
    if isinstance(expr, relax.ShapeExpr):
        if not all(map(_is_int, expr.values)):
            raise _NotStatic
        return np.array([int(d.value) for d in expr.values], np.int64)
    if _is_int(expr):  # a prim value
        return np.array(int(expr.value), np.int64)
    if isinstance(expr, relax.Tuple):
        return [_evaluate(bb, f, budget) for f in expr.fields]
    if isinstance(expr, relax.Var):
        bound = bb.lookup_binding(expr)
        if bound is None:
            raise _NotStatic
        return _evaluate(bb, bound, budget)
    if not isinstance(expr, relax.Call) or not hasattr(expr.op, "name"):
        raise _NotStatic
    op, args, attrs = expr.op.name, expr.args, expr.attrs
    if op in ("relax.shape_of", "relax.size"):  # from the type: the values need not be known
        dims = _dims(args[0].ty)
        if dims is None or not all(map(_is_int, dims)):
            raise _NotStatic
        shape = np.array([int(d.value) for d in dims], np.int64)
        return shape if op == "relax.shape_of" else np.array(int(np.prod(shape)), np.int64)
    values = [_evaluate(bb, a, budget) for a in args]
    if op in _COMPARE:
        return _COMPARE[op](*values)
    if op == "relax.shape_to_tensor":
        return values[0]
    if op == "relax.logical_not":
        return np.logical_not(values[0])
    if op == "relax.astype":
        return values[0].astype(str(attrs.dtype))
    if op == "relax.take":
        mode = {"wrap": "wrap", "clip": "clip"}.get(str(attrs.mode), "raise")
        return np.take(values[0], values[1].astype(np.int64), axis=None if attrs.axis is None else int(attrs.axis),
                       mode=mode)
    if op == "relax.where":
        return np.where(*values)
    if op == "relax.reshape":
        return values[0].reshape(values[1])
    if op == "relax.squeeze":
        axis = None if attrs.axis is None else tuple(int(a) for a in attrs.axis)
        return np.squeeze(values[0], axis=axis)
    if op == "relax.expand_dims":
        return np.expand_dims(values[0], tuple(int(a) for a in attrs.axis))
    if op == "relax.concat":
        return np.concatenate(values[0], axis=int(attrs.axis) if attrs.axis is not None else 0)
    raise _NotStatic


def _scalar(bb, expr: relax.Expr, dtype: str) -> relax.Expr:
    """A one-element tensor as a 0-d tensor of `dtype` (conditions, trip counts)."""
    if isinstance(expr.ty, relax.ShapeType):
        expr = bb.emit(relax.op.shape_to_tensor(expr))
    if isinstance(expr.ty, relax.TensorType) and expr.ty.ndim != 0:
        expr = bb.emit(relax.op.reshape(expr, []))
    if str(expr.ty.dtype.dtype) != dtype:
        expr = bb.emit(relax.op.astype(expr, dtype))
    return expr if isinstance(expr, relax.Var) else bb.emit(expr)


def _as_tensor(bb, expr: relax.Expr, node: Node, what: str) -> relax.Expr:
    """A subgraph's output as a bound tensor: converters return unbound calls, which
    would be computed again at every use."""
    ty = getattr(expr, "ty", None)
    if ty is None:  # the frontend's empty optional and the like
        raise LoweringError(f"{node.op_type} node {_name(node)}: {what} is an empty optional ({type(expr).__name__}); "
                            f"control flow over sequences and optionals is not supported")
    if isinstance(ty, relax.TensorType):
        return expr if isinstance(expr, (relax.Var, tvm.ir.Constant)) else bb.emit(expr)
    if isinstance(ty, relax.ShapeType):
        return bb.emit(relax.op.shape_to_tensor(expr))
    raise LoweringError(f"{node.op_type} node {_name(node)}: {what} is a {ty}, not a tensor; control flow over "
                        f"sequences and optionals is not supported")


def _dim(bb, x: relax.Expr, axis: int) -> relax.Expr:
    """x.shape[axis] as a 0-d int64 tensor."""
    dims = _dims(x.ty)
    if dims is not None and _is_int(dims[axis]):
        return relax.const(tvm.runtime.tensor(np.array(int(dims[axis].value), np.int64)))
    shape = bb.emit(relax.op.shape_to_tensor(relax.op.shape_of(x)))
    return bb.emit(relax.op.take(shape, relax.const(tvm.runtime.tensor(np.array(axis, np.int64))), axis=0))


def _input(imp: _Importer, proto: onnx.NodeProto, index: int) -> relax.Expr | None:
    name = proto.input[index] if index < len(proto.input) else ""
    if not name:
        return None
    if name not in imp._nodes:
        raise LoweringError(f"{proto.op_type} node {proto.name!r}: input {name!r} is not defined")
    return imp._nodes[name]


def _graph_proto(proto: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    for attr in proto.attribute:
        if attr.name == name and attr.HasField("g"):
            return attr.g
    return None


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "v"


def _ty_str(ty) -> str:
    dims = _dims(ty)
    shape = "[" + ", ".join(str(d) for d in dims) + "]" if dims is not None else f"rank {ty.ndim}"
    return f"{ty.dtype.dtype} {shape}"


def _name(node: Node) -> str:
    if node.name:
        return repr(node.name)
    return f"<unnamed, output {node.outputs[0].name!r}>" if node.outputs else "<unnamed>"


def _out_name(node: Node, index: int) -> str:
    return repr(node.outputs[index].name) if index < len(node.outputs) else f"#{index}"


def _restore(mapping: dict, saved: dict) -> None:
    mapping.clear()
    mapping.update(saved)


def _where(attr: str, node: Node) -> str:
    return f" in the {attr} of {node.op_type} node {_name(node)}"
