"""ONNX Loop and Scan lowered to Relax (codegen/control_flow.py dispatches here).

The body is one private Relax function, `step`, doing one iteration (when the loop
has not finished; else it returns its state as it got it). The VM has no loop
instruction, and each nested call costs C stack (a plain tail-recursive loop
overflows an 8 MB stack after about 2,500 iterations), so the driver is layered:
`rep1` calls `step` UNROLL times, `rep2` calls `rep1` UNROLL times, and so on for
LEVELS levels; the top function (`run`) calls the last level, then itself until
the loop ends. That is UNROLL**LEVELS iterations per nested call of the top
function (65,536 with 16 and 4), with no unrolled copies of the body. Trip counts
and conditions are run-time values. Scan outputs grow by one concat per
iteration: quadratic in the number of iterations, fine for the short loops models
hold. Loop-carried values whose shape changes across iterations get symbolic
dims; a change of rank or dtype is a LoweringError.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
import tvm
from tvm import relax

from ..ir import LoweringError, Node
from ..ir.graph import Graph, outer_reads

if TYPE_CHECKING:
    from .lower import _Importer

from .subgraph_helpers import (
    _as_tensor, _block, _dim, _dims, _equal, _fresh, _freshen, _go, _graph_proto, _ident, _input, _is_int,
    _is_static, _name, _out_name, _rebuild, _restore, _same_dim, _scalar, _shaped, _ty_str, _where,
    _with_shape
)

UNROLL = 16  # calls per level of the loop driver
LEVELS = 4  # levels under the top function: UNROLL**LEVELS iterations per nested top call
INT64_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass
class _Recurrence:
    """What the loop driver needs from a Loop or a Scan (expressions of the caller)."""

    node: Node
    limit: relax.Expr  # int64 (): trip count or sequence length
    cond: relax.Expr | None  # bool (): Loop's condition input, or None (not tracked)
    carried: list[relax.Expr]  # initial values
    fixed: list[relax.Expr]  # passed unchanged to every iteration (Scan's inputs)
    scan_reverse: list[bool]  # per scan output: prepend instead of append
    # (imp, i, limit, cond, carried, fixed) -> (cond_out or None, carried_out, scan elements), in step's scope
    body: Callable
    declared: list = dataclasses.field(default_factory=list)  # per carried output: its shape in the body graph


def _lower_loop(imp: _Importer, node: Node, proto: onnx.NodeProto) -> list[relax.Expr]:
    bb = imp.bb
    body, body_proto = node.attributes.get("body"), _graph_proto(proto, "body")
    if not isinstance(body, Graph) or body_proto is None:
        raise LoweringError(f"Loop node {_name(node)} has no body subgraph")
    carried = [_input(imp, proto, i) for i in range(2, len(proto.input))]
    n_carried = len(carried)
    if len(body.inputs) != 2 + n_carried or len(body.outputs) < 1 + n_carried:
        raise LoweringError(f"Loop node {_name(node)}: the body has {len(body.inputs)} inputs and "
                            f"{len(body.outputs)} outputs for {n_carried} loop-carried values (expected "
                            f"{2 + n_carried} inputs and at least {1 + n_carried} outputs)")
    m, cond = _input(imp, proto, 0), _input(imp, proto, 1)
    limit = _scalar(bb, m, "int64") if m is not None else relax.const(tvm.runtime.tensor(np.array(INT64_MAX)))
    cond = _scalar(bb, cond, "bool") if cond is not None else None
    names = [v.name for v in body.inputs]
    n_scans = len(body.outputs) - 1 - n_carried
    where = _where("body", node)

    def run_body(imp, i, limit_, cond_, values, fixed):
        bindings = {names[0]: i, names[1]: cond_ if cond_ is not None else relax.const(True)}
        bindings.update(zip(names[2:], values))
        outs = imp.convert_subgraph(body, body_proto, bindings, where)
        cond_out = _scalar(imp.bb, outs[0], "bool") if cond is not None else None
        return cond_out, outs[1:1 + n_carried], outs[1 + n_carried:]

    rec = _Recurrence(node, limit, cond, [_as_tensor(bb, c, node, f"loop-carried value {i}") for i, c in enumerate(carried)],
                      [], [False] * n_scans, run_body, [v.shape for v in body.outputs[1:1 + n_carried]])
    finals, scans = _lower_recurrence(imp, rec)
    return finals + scans


def _lower_scan(imp: _Importer, node: Node, proto: onnx.NodeProto) -> list[relax.Expr]:
    bb = imp.bb
    if imp.opset < 9:
        raise LoweringError(f"Scan node {_name(node)}: Scan-8 (batched, with sequence_lens) is not supported; "
                            f"convert the model to opset 9 or later")
    body, body_proto = node.attributes.get("body"), _graph_proto(proto, "body")
    if not isinstance(body, Graph) or body_proto is None:
        raise LoweringError(f"Scan node {_name(node)} has no body subgraph")
    n_in = int(node.attributes.get("num_scan_inputs", 0))
    inputs = [_input(imp, proto, i) for i in range(len(proto.input))]
    n_state = len(inputs) - n_in
    if n_in < 1 or n_state < 0 or len(body.inputs) != len(inputs) or len(body.outputs) < n_state:
        raise LoweringError(f"Scan node {_name(node)}: {len(inputs)} inputs with num_scan_inputs={n_in} do not "
                            f"fit a body with {len(body.inputs)} inputs and {len(body.outputs)} outputs")
    n_out = len(body.outputs) - n_state
    in_axes = list(node.attributes.get("scan_input_axes") or [0] * n_in)
    in_dirs = list(node.attributes.get("scan_input_directions") or [0] * n_in)
    out_axes = list(node.attributes.get("scan_output_axes") or [0] * n_out)
    out_dirs = list(node.attributes.get("scan_output_directions") or [0] * n_out)
    if len(in_axes) != n_in or len(in_dirs) != n_in or len(out_axes) != n_out or len(out_dirs) != n_out:
        raise LoweringError(f"Scan node {_name(node)}: scan_input_axes/directions need {n_in} entries and "
                            f"scan_output_axes/directions {n_out}")
    xs = [_as_tensor(bb, x, node, f"scan input {j}") for j, x in enumerate(inputs[n_state:])]
    for j, x in enumerate(xs):
        if x.ty.ndim < 1:
            raise LoweringError(f"Scan node {_name(node)}: scan input {j} needs a known rank of at least 1")
        in_axes[j] = in_axes[j] + x.ty.ndim if in_axes[j] < 0 else in_axes[j]
    limit = _dim(bb, xs[0], in_axes[0])
    names = [v.name for v in body.inputs]
    where = _where("body", node)

    def run_body(imp, i, limit_, cond_, values, fixed):
        bb = imp.bb
        bindings = dict(zip(names[:n_state], values))
        for j, x in enumerate(fixed):
            index = i if not in_dirs[j] else bb.emit(relax.op.subtract(relax.op.subtract(limit_, i), relax.const(1, "int64")))
            bindings[names[n_state + j]] = bb.emit(relax.op.take(x, index, axis=in_axes[j]))
        outs = imp.convert_subgraph(body, body_proto, bindings, where)
        return None, outs[:n_state], outs[n_state:]

    states = [_as_tensor(bb, s, node, f"state {i}") for i, s in enumerate(inputs[:n_state])]
    rec = _Recurrence(node, limit, None, states, xs, [bool(d) for d in out_dirs], run_body,
                      [v.shape for v in body.outputs[:n_state]])
    finals, scans = _lower_recurrence(imp, rec)
    moved = []
    for k, (y, axis) in enumerate(zip(scans, out_axes)):
        rank = y.ty.ndim
        axis = axis + rank if axis < 0 else axis
        if axis != 0:
            if not 0 <= axis < rank:
                raise LoweringError(f"Scan node {_name(node)}: scan_output_axes[{k}]={out_axes[k]} is out of range")
            order = list(range(1, rank))
            order.insert(axis, 0)
            y = bb.emit(relax.op.permute_dims(y, order))
        moved.append(y)
    return finals + moved


def _lower_recurrence(imp: _Importer, rec: _Recurrence) -> tuple[list[relax.Expr], list[relax.Expr]]:
    """Build step and the driver functions, call the top one from the current
    scope. Returns (final loop-carried values, scan outputs)."""
    bb = imp.bb
    node = rec.node
    base = bb.get_unique_name(node.op_type.lower())  # loop, loop1, ... per module
    captures = _captures(imp, node)
    fixed_exprs = [rec.limit, *rec.fixed, *[expr for _, expr, is_param in captures if is_param]]
    has_cond = rec.cond is not None
    n_carried = len(rec.carried)
    for k, v in enumerate(rec.carried):
        if v.ty.ndim < 0:
            raise LoweringError(f"{node.op_type} node {_name(node)}: loop-carried value {k} "
                                f"({_out_name(node, k)}) has an unknown rank")
    # Carried values enter the body typed as their initial values; dims the body
    # changes become symbolic and the body is converted again (a new change can
    # show up only in a dim that was static, so this ends).
    carried_tys = [_shaped(v.ty) for v in rec.carried]
    generalized: dict[int, set[int]] = {}
    while True:
        step, info = _build_step(imp, rec, carried_tys, captures)
        new = {k: pos - generalized.get(k, set()) for k, pos in info["unstable"].items()}
        new = {k: pos for k, pos in new.items() if pos}
        if not new:
            break
        for k, positions in new.items():
            generalized.setdefault(k, set()).update(positions)
            dims = _dims(carried_tys[k])
            carried_tys[k] = relax.TensorType([_fresh() if p in positions else d for p, d in enumerate(dims)],
                                              str(carried_tys[k].dtype.dtype))
        imp.discarded_functions = True  # the attempt's kernels stay in the module until dead code elimination
    n_state = 1 + has_cond + n_carried + len(info["elems"])
    callee, callee_fn = bb.add_func(step, f"{base}_step"), step
    for level in range(1, LEVELS + 1):
        callee, callee_fn = _driver(imp, f"{base}_rep{level}", callee, callee_fn, has_cond, n_state, recursive=False)
    top, top_fn = _driver(imp, f"{base}_run", callee, callee_fn, has_cond, n_state, recursive=True)
    # Scan accumulators start empty (static element shape) or as a placeholder that
    # the first iteration replaces (see _append).
    accs = []
    for ty in info["elems"]:
        dims = _dims(ty)
        shape = [0, *[int(d) for d in dims]] if dims is not None and all(map(_is_int, dims)) else [0] * (ty.ndim + 1)
        accs.append(relax.const(tvm.runtime.tensor(np.zeros(shape, dtype=str(ty.dtype.dtype)))))
    i0 = relax.const(tvm.runtime.tensor(np.array(0, np.int64)))
    state = [i0, *([rec.cond] if has_cond else []), *rec.carried, *accs]
    out = bb.emit(relax.Call(top, state + fixed_exprs))
    fields = [bb.emit(relax.TupleGetItem(out, k)) for k in range(n_state)]
    first = 1 + has_cond
    finals = [_with_shape(bb, f, [None] * v.ty.ndim, str(v.ty.dtype.dtype))
              for f, v in zip(fields[first:first + n_carried], rec.carried)]
    scans = []
    for f, ty in zip(fields[first + n_carried:], info["elems"]):
        dims = _dims(ty)
        elem = [d if _is_int(d) else None for d in dims] if dims is not None else [None] * ty.ndim
        scans.append(_with_shape(bb, f, [None, *elem], str(ty.dtype.dtype)))
    return finals, scans


def _build_step(imp: _Importer, rec: _Recurrence, carried_tys: list, captures: list):
    """The step function (not yet in the module): params (i, [cond], carried...,
    scans..., limit, fixed..., captures...), one iteration when i < limit (and
    cond), returning the new state; else the state unchanged. Also returns
    {"elems": scan element types, "unstable": {carried index: dim positions the
    body changes}}."""
    bb = imp.bb
    node = rec.node
    has_cond = rec.cond is not None
    i64, bool_ = relax.TensorType((), "int64"), relax.TensorType((), "bool")
    varmap: dict = {}
    i = relax.Var("i", i64)
    cond = relax.Var("cond", bool_) if has_cond else None
    carried = [relax.Var(f"v{k}", _freshen(t, varmap)) for k, t in enumerate(carried_tys)]
    # scan accumulators are opaque objects between iterations (their rank is known
    # only after the body is converted); _append casts them where they grow
    accs = [relax.Var(f"scan{k}", relax.ObjectType()) for k in range(len(rec.scan_reverse))]
    limit = relax.Var("limit", i64)
    fixed = [relax.Var(f"x{k}", _freshen(_shaped(e.ty), varmap)) for k, e in enumerate(rec.fixed)]
    cap_params, cap_bindings = [], {}
    for name, expr, is_param in captures:
        if is_param:
            var = relax.Var(_ident(name), _freshen(_shaped(expr.ty), varmap))
            cap_params.append(var)
            cap_bindings[name] = _rebuild(var)
        else:
            cap_bindings[name] = expr
    info: dict = {"unstable": {}, "elems": []}
    state_params = [i, *([cond] if has_cond else []), *carried, *accs]

    def iterate():
        saved = dict(imp._nodes)
        imp._nodes.update(cap_bindings)
        try:
            cond_out, outs, elems = rec.body(imp, i, limit, cond, carried, fixed)
        finally:
            _restore(imp._nodes, saved)
        if len(outs) != len(carried) or len(elems) != len(accs):
            raise LoweringError(f"{node.op_type} node {_name(node)}: the body gives {len(outs)} loop-carried values "
                                f"and {len(elems)} scan outputs, expected {len(carried)} and {len(accs)}")
        new_carried = []
        for k, (var, out) in enumerate(zip(carried, outs)):
            out = _as_tensor(bb, out, node, f"loop-carried output {k}")
            want, got = var.ty, out.ty
            if str(got.dtype.dtype) != str(want.dtype.dtype) or got.ndim != want.ndim:
                raise LoweringError(f"{node.op_type} node {_name(node)}: loop-carried value {k} "
                                    f"({_out_name(node, k)}) enters the body as {_ty_str(want)} and leaves it as "
                                    f"{_ty_str(got)}; its dtype and rank must stay the same")
            wd, gd = _dims(want), _dims(got)
            changed = {p for p in range(want.ndim) if gd is None or not _same_dim(wd[p], gd[p])}
            declared = rec.declared[k] if k < len(rec.declared) else None
            if changed and declared is not None and all(isinstance(d, int) for d in declared) and \
                    all(_is_int(d) for d in wd) and [int(d.value) for d in wd] == list(declared):
                # the body says this output keeps the static shape it entered with (TVM lost it, e.g. after a
                # Slice with run-time bounds): hold it to that, checked at run time
                out, changed = bb.match_cast(out, want), set()
            if changed:
                info["unstable"][k] = changed
            elif not all(_equal(a, b) for a, b in zip(wd, gd)):
                out = bb.match_cast(out, want)  # provably the same shape: tell the type system
            new_carried.append(out)
        new_accs = []
        for k, (acc, elem) in enumerate(zip(accs, elems)):
            elem = _as_tensor(bb, elem, node, f"scan output {k}")
            if elem.ty.ndim < 0:
                raise LoweringError(f"{node.op_type} node {_name(node)}: scan output {k} has an unknown rank")
            info["elems"].append(elem.ty)
            new_accs.append(_append(bb, acc, elem, i, rec.scan_reverse[k]))
        i_next = bb.emit(relax.op.add(i, relax.const(1, "int64")))
        return relax.Tuple([i_next, *([cond_out] if has_cond else []), *new_carried, *new_accs])

    params = state_params + [limit, *fixed, *cap_params]
    body = _function_body(bb, params, lambda: _go(bb, i, limit, cond), iterate, lambda: relax.Tuple(state_params))
    ret = relax.TupleType([i64, *([bool_] if has_cond else []),
                           *[relax.TensorType(ndim=v.ty.ndim, dtype=str(v.ty.dtype.dtype)) if k in info["unstable"]
                             else v.ty for k, v in enumerate(carried)],
                           *[relax.ObjectType() for _ in accs]])
    return relax.Function(params, body, ret, is_pure=True), info


def _driver(imp: _Importer, name: str, callee: relax.GlobalVar, callee_fn: relax.Function, has_cond: bool,
            n_state: int, recursive: bool):
    """A driver level: calls `callee` UNROLL times (or, `recursive`, once and then
    itself) while the loop has not finished. Same signature as step."""
    bb = imp.bb
    varmap: dict = {}
    params = [relax.Var(p.name, _freshen(p.ty, varmap)) for p in callee_fn.params]
    ret = _freshen(callee_fn.ret_ty, varmap, define=False)
    state, fixed = params[:n_state], params[n_state:]
    i, cond, limit = state[0], (state[1] if has_cond else None), fixed[0]
    gv = bb.add_func(relax.Function.create_empty(params, ret, is_pure=True), name) if recursive else None

    def then():
        s = _call(bb, callee, callee_fn, state, fixed)
        if recursive:
            return bb.emit(relax.Call(gv, [*s, *fixed]))
        for _ in range(UNROLL - 1):
            s = _call(bb, callee, callee_fn, s, fixed)
        return relax.Tuple(s)

    body = _function_body(bb, params, lambda: _go(bb, i, limit, cond), then, lambda: relax.Tuple(state))
    fn = relax.Function(params, body, ret, is_pure=True)
    if recursive:
        bb.update_func(gv, fn)
    else:
        gv = bb.add_func(fn, name)
    return gv, fn


def _function_body(bb, params, go, then, otherwise) -> relax.SeqExpr:
    """A function body `if go(): then() else: otherwise()`, built in its own scope."""
    bb.begin_scope(params)
    try:
        bb._begin_binding_block()
        try:
            cond = go()
            result = bb.emit(relax.If(cond, _block(bb, then), _block(bb, otherwise)))
        finally:
            block = bb._end_block()
        return bb.normalize(relax.SeqExpr([block], result))
    finally:
        bb.end_scope()


def _call(bb, gv, fn: relax.Function, state: list, fixed: list) -> list:
    """Call a driver function; its state fields as a list. Fields typed by rank
    only are cast to shapes with fresh symbolic dims where the next call expects a
    shape."""
    out = bb.emit(relax.Call(gv, [*state, *fixed]))
    fields = []
    for k in range(len(state)):
        field = bb.emit(relax.TupleGetItem(out, k))
        want = fn.params[k].ty
        if isinstance(want, relax.TensorType) and _dims(want) is not None and _dims(field.ty) is None:
            field = bb.match_cast(field, relax.TensorType([d if _is_int(d) else _fresh() for d in _dims(want)],
                                                          str(want.dtype.dtype)))
        fields.append(field)
    return fields


def _append(bb, acc: relax.Var, elem: relax.Expr, i: relax.Var, reverse: bool) -> relax.Expr:
    """The scan accumulator with `elem` added as a new leading row (at the end, or
    at the front when `reverse`). One concat per iteration: quadratic in the
    iteration count."""
    dtype = str(elem.ty.dtype.dtype)
    dims = _dims(elem.ty)
    if dims is None:
        dims = [_fresh() for _ in range(elem.ty.ndim)]
        elem = bb.match_cast(elem, relax.TensorType(dims, dtype))
    row = bb.emit(relax.op.expand_dims(elem, 0))

    def grow():
        stacked = bb.match_cast(acc, relax.TensorType([_fresh(), *dims], dtype))  # every row has the same shape
        return bb.emit(relax.op.concat([row, stacked] if reverse else [stacked, row], axis=0))

    if all(map(_is_int, dims)):  # the caller starts the accumulator as an empty (0, *dims) tensor
        return grow()
    # otherwise it starts as a placeholder of the right rank: the first row replaces it
    first = bb.emit(relax.op.equal(i, relax.const(0, "int64")))
    return bb.emit(relax.If(first, _block(bb, lambda: row), _block(bb, grow)))


def _captures(imp: _Importer, node: Node) -> list[tuple[str, relax.Expr, bool]]:
    """Values of enclosing graphs that the node's subgraphs read: (name, caller
    expression, whether it becomes a parameter; constants do not)."""
    found = []
    for value in outer_reads(node):
        expr = imp._nodes.get(value.name)
        if expr is None:
            raise LoweringError(f"{node.op_type} node {_name(node)}: its body reads {value.name!r}, which is not "
                                f"defined in an enclosing graph")
        if imp._packed:
            expr = imp._unpack_inputs([expr])[0]
        if _is_static(expr):
            found.append((value.name, expr, False))
            continue
        if not isinstance(expr, relax.Var):
            expr = imp.bb.emit(expr)
        if not isinstance(expr.ty, (relax.TensorType, relax.ShapeType, relax.TupleType, tvm.ir.PrimType)):
            raise LoweringError(f"{node.op_type} node {_name(node)}: its body reads {value.name!r}, a "
                                f"{expr.ty} that cannot be passed into a loop body")
        found.append((value.name, expr, True))
    return found


