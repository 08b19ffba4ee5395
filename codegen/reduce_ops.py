"""The ten ONNX reductions (ReduceSum ... ReduceLogSumExp), axes as an attribute
(older opsets), a constant input, or an input computed at run time (the
frontend's converters take constant axes only). See registry.py for the
lowering signature."""
from __future__ import annotations

import numpy as np
from tvm import relax

from ..ir import LoweringError
from .op_helpers import _const, _constant_array, _dims, _dtype, _input, axis_flags, kept_dims_shape, shape_tensor, \
    with_ir_shape
from .registry import register_lowering

op = relax.op


def _extreme(reduce, inf: float):
    """relax max / min, with numpy's answers where TVM's differ: TVM starts max
    from the lowest finite value (so a max over only -inf gave -3.4e38: a fully
    masked attention row became a uniform one, not zeros) and may drop NaNs."""

    def fn(y, axes, keepdims):
        out = reduce(y, axes, keepdims)
        dtype = str(y.ty.dtype.dtype)
        if np.dtype(dtype).kind != "f":
            return out
        bound = _const(inf, dtype)
        beyond = op.max(op.astype(op.not_equal(y, bound), "int8"), axes, keepdims)  # any value not at the bound
        out = op.where(op.equal(beyond, _const(0, "int8")), bound, out)
        has_nan = op.max(op.astype(op.isnan(y), "int8"), axes, keepdims)
        return op.where(op.equal(has_nan, _const(1, "int8")), _const(np.nan, dtype), out)

    return fn


# op -> (applied before, relax reduction per axis, applied after)
_REDUCE = {
    "ReduceSum": (None, op.sum, None),
    "ReduceMean": (None, op.mean, None),
    "ReduceMax": (None, _extreme(op.max, -np.inf), None),
    "ReduceMin": (None, _extreme(op.min, np.inf), None),
    "ReduceProd": (None, op.prod, None),
    "ReduceL1": (op.abs, op.sum, None),
    "ReduceL2": (lambda x: op.multiply(x, x), op.sum, op.sqrt),
    "ReduceSumSquare": (lambda x: op.multiply(x, x), op.sum, None),
    "ReduceLogSum": (None, op.sum, op.log),
    "ReduceLogSumExp": (op.exp, op.sum, op.log),
}

# the value of a reduction over nothing (onnx's reference: numpy's identities)
_EMPTY = {"ReduceSum": 0.0, "ReduceMean": np.nan, "ReduceMax": -np.inf, "ReduceMin": np.inf, "ReduceProd": 1.0,
          "ReduceL1": 0.0, "ReduceL2": 0.0, "ReduceSumSquare": 0.0, "ReduceLogSum": -np.inf,
          "ReduceLogSumExp": -np.inf}


def _empty_value(name: str, dtype: str):
    value = _EMPTY[name]
    if np.dtype(dtype).kind in "iub" and not np.isfinite(value):
        info = np.iinfo(np.int8 if dtype == "bool" else dtype)
        value = info.min if value < 0 else info.max
    return value


def _reduce_static(bb, node, x, axes, keepdims, pre, reduce_fn, post):
    """Reduce x over constant axes; an empty input gives the reduction of nothing."""
    dims = _dims(x) if isinstance(x.ty.shape, relax.ShapeExpr) else None
    if dims is not None and any(d == 0 for d in dims if isinstance(d, int)):
        out = [1 if i in axes else d for i, d in enumerate(dims)] if keepdims else \
            [d for i, d in enumerate(dims) if i not in axes]
        if all(isinstance(d, int) for d in out):  # the shape is all we need: every entry reduces nothing
            return op.broadcast_to(_const(_empty_value(node.op_type, _dtype(x)), _dtype(x)), out)
    y = bb.normalize(pre(x)) if pre else x
    out = bb.normalize(reduce_fn(y, axes, keepdims))
    return post(out) if post else out


def _reduce(bb, node, inputs):
    """The ONNX reductions. Run-time axes need an axes tensor of static length, so
    that the output rank is known: each axis is reduced or not by a where on
    whether the axes name it (the shape kept), then a dynamic slice keeps one
    entry of each reduced axis, and without keepdims a reshape to the shape
    computed at run time drops them. Empty inputs give the reduction of nothing
    (0 for sums, 1 for products, -inf for max and log-sums, NaN for means)."""
    pre, reduce_fn, post = _REDUCE[node.op_type]
    x = bb.normalize(with_ir_shape(bb, node, 0, inputs[0]))
    rank = x.ty.ndim
    if rank < 0:
        raise LoweringError(f"{node.op_type} needs an input of known rank")
    keepdims = bool(node.attributes.get("keepdims", 1))
    noop = bool(node.attributes.get("noop_with_empty_axes", 0))
    dtype = _dtype(x)
    as_int8 = dtype == "bool"
    if as_int8:  # max / min of booleans
        x = bb.normalize(op.astype(x, "int8"))
    axes_input = _input(inputs, 1)
    axes = node.attributes.get("axes")
    dynamic = None
    if axes is None and axes_input is not None:
        value = _constant_array(axes_input)
        if value is not None:
            axes = [int(a) for a in value.reshape(-1)]
        else:
            axes_input = with_ir_shape(bb, node, 1, axes_input)
            length = _dims(axes_input)
            if len(length) != 1 or not isinstance(length[0], int):
                raise LoweringError(f"{node.op_type} with axes computed at run time needs an axes tensor of static "
                                    "length (the output rank depends on it)")
            axes = [] if length[0] == 0 else None
            dynamic = bb.normalize(op.astype(axes_input, "int64")) if length[0] else None
            count = length[0]
    if dynamic is None:
        axes = list(axes or [])
        if not axes and noop:
            out = x
        else:
            axes = sorted({a + rank if a < 0 else a for a in axes}) or list(range(rank))
            out = _reduce_static(bb, node, x, axes, keepdims, pre, reduce_fn, post)
        return op.astype(out, "bool") if as_int8 else out

    dims = _dims(x)
    y = bb.normalize(pre(x)) if pre else x
    chosen = axis_flags(bb, dynamic, rank)
    if any(d == 0 for d in dims):
        # an empty input: every entry of the output is the reduction of nothing; the
        # slice below cuts that to extent 1 on reduced axes, 0 on kept empty ones
        nothing = _const(_empty_value(node.op_type, _dtype(x)), _dtype(x))
        y = bb.normalize(op.broadcast_to(nothing, [1 if d == 0 else d for d in dims]))
        post_fn = None
    else:
        for i, sel in enumerate(chosen):
            reduced = bb.normalize(reduce_fn(y, [i], True))
            y = bb.normalize(op.where(sel, bb.normalize(op.broadcast_to(reduced, dims)), y))
        post_fn = post
    if post_fn:
        y = bb.normalize(post_fn(y))
    sel = bb.normalize(op.concat([op.reshape(c, (1,)) for c in chosen], axis=0))  # (rank,) bool
    full = shape_tensor(bb, x, dims)
    ends = bb.normalize(op.where(sel, _const(np.ones(rank), "int64"), full))
    out = bb.normalize(op.dynamic_strided_slice(y, _const(np.zeros(rank), "int64"), ends,
                                                _const(np.ones(rank), "int64")))
    if not keepdims:
        shape = kept_dims_shape(bb, full, sel, rank, rank - count, f"{node.op_type.lower()}_dim")
        out = bb.normalize(op.reshape(out, shape))
    return op.astype(out, "bool") if as_int8 else out


for _name in _REDUCE:
    register_lowering(_name)(_reduce)
