"""Control flow: ONNX If, Loop and Scan lowered to Relax.

The nodes inside branches and bodies go through the importer one at a time, like
top-level nodes: our converter table first, then TVM's frontend (codegen.lower).

- If: a relax.If whose branches each call a private function holding the
  branch's nodes (nothing of a branch runs unless it is taken; the function
  boundary keeps TVM's memory planner from sharing storage across branches).
  A condition known when compiling (constants, static shapes, ranks) inlines the
  branch it picks. Outputs whose shapes differ between the branches get symbolic
  dims. Branches whose ranks differ each continue with their own copy of the
  rest of the graph (torch's squeeze(dim) of a run-time dim), or defer to the
  rank the model declares; a branch that cannot be compiled for these shapes
  raises its reason at run time, when taken (onnxruntime fails there too), and
  lower() warns about it. Different dtypes are a LoweringError.
- Loop and Scan: the body is one private Relax function, `step`, doing one
  iteration (when the loop has not finished; else it returns its state as it got
  it). The VM has no loop instruction, and each nested call costs C stack (a
  plain tail-recursive loop overflows an 8 MB stack after about 2,500
  iterations), so the driver is layered: `rep1` calls `step` UNROLL times, `rep2`
  calls `rep1` UNROLL times, and so on for LEVELS levels; the top function (`run`) calls
  the last level, then itself until the loop ends. That is UNROLL**LEVELS
  iterations per nested call of the top function (65,536 with 16 and 4), with no
  unrolled copies of the body. Trip counts and conditions are run-time values.
- Scan outputs (Loop's and Scan's) grow by one concat per iteration: quadratic in
  the number of iterations, fine for the short loops models hold.
- Loop-carried values whose shape changes across iterations get symbolic dims;
  a change of rank or dtype is a LoweringError.

Values of enclosing graphs read inside a body become parameters of its functions
(constants stay constants).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
import tvm
from tvm import relax, te, tirx

from ..ir import LoweringError, Node
from ..ir.graph import Graph, outer_reads

if TYPE_CHECKING:
    from .lower import _Importer

OPS = ("If", "Loop", "Scan")
UNROLL = 16  # calls per level of the loop driver
LEVELS = 4  # levels under the top function: UNROLL**LEVELS iterations per nested top call
INT64_MAX = np.iinfo(np.int64).max


def is_control_flow(node: Node) -> bool:
    return node.op_type in OPS and node.domain in ("", "ai.onnx")


def lower_node(imp: _Importer, node: Node, proto: onnx.NodeProto, rest: Callable[[], None] | None = None,
               graph_outputs: list | None = None) -> bool:
    """Lower one If/Loop/Scan node: binds its outputs in imp._nodes. `rest`
    converts the nodes after it in its graph, whose outputs are `graph_outputs`:
    an If whose branches differ in rank lowers them inside each branch (see
    _lower_if) and binds the graph's outputs. Returns whether it did."""
    if imp.bb.current_block_is_dataflow():
        raise LoweringError(f"internal: {node.op_type} node {_name(node)} inside a dataflow block")
    if node.op_type == "If":
        outputs, consumed = _lower_if(imp, node, proto, rest, graph_outputs)
        if consumed:
            return True
    else:
        outputs = {"Loop": _lower_loop, "Scan": _lower_scan}[node.op_type](imp, node, proto)
    _bind_outputs(imp, node, proto, outputs)
    return False


def _bind_outputs(imp: _Importer, node: Node, proto: onnx.NodeProto, outputs: list) -> None:
    if len(outputs) < len(proto.output):
        raise LoweringError(f"{node.op_type} node {_name(node)}: the subgraph gives {len(outputs)} outputs "
                            f"for the node's {len(proto.output)}")
    for name, expr in zip(proto.output, outputs):
        if name:
            imp._nodes[name] = expr


# -- If ------------------------------------------------------------------------
def _lower_if(imp: _Importer, node: Node, proto: onnx.NodeProto, rest=None, graph_outputs=None):
    """(outputs, whether the rest of the graph was lowered too).

    A condition known when compiling lowers only its branch, inline. Otherwise a
    relax.If holds both branches, except that:
    - a branch that cannot be compiled (for these shapes: silero-vad's 8 kHz branch
      with a 16 kHz input length) becomes a run-time error with the reason, as
      onnxruntime fails only when it runs it; lower() warns about it;
    - branches whose outputs differ in rank (torch's squeeze(dim) of a run-time
      dim) each get their own copy of the rest of the graph, up to its outputs,
      so every value keeps a known rank."""
    bb = imp.bb
    cond = _input(imp, proto, 0)
    if cond is None:
        raise LoweringError(f"If node {_name(node)} has no condition input")
    branches = [(attr, node.attributes.get(attr), _graph_proto(proto, attr)) for attr in ("then_branch", "else_branch")]
    for attr, graph, graph_proto in branches:
        if not isinstance(graph, Graph) or graph_proto is None:
            raise LoweringError(f"If node {_name(node)} has no {attr} subgraph")
    static = _static_bool(bb, cond)
    if static is not None:  # known when compiling (constants, static shapes, ranks): only that branch, inline
        attr, graph, graph_proto = branches[0 if static else 1]
        return imp.convert_subgraph(graph, graph_proto, {}, _where(attr, node)), False
    cond = _scalar(bb, cond, "bool")

    def branch_only(attr, graph, graph_proto):
        return imp.convert_subgraph(graph, graph_proto, {}, _where(attr, node))

    arms = [_arm(imp, node, attr, lambda a=attr, g=graph, gp=graph_proto: branch_only(a, g, gp))
            for attr, graph, graph_proto in branches]
    mismatch = _mismatch(node, arms, node.outputs)
    if mismatch is None or not mismatch[1] or rest is None:
        if mismatch is not None:
            raise LoweringError(mismatch[0])
        return _emit_if(imp, node, cond, arms), False
    # ranks differ: each branch continues with its own copy of the rest of the graph
    imp.discarded_functions = True

    names = [v.name for v in graph_outputs]

    def with_rest(attr, graph, graph_proto):
        _bind_outputs(imp, node, proto, branch_only(attr, graph, graph_proto))
        rest()
        missing = [name for name in names if name not in imp._nodes]
        if missing:
            raise LoweringError(f"output {missing[0]!r} is not defined")
        return [imp._nodes[name] for name in names]

    arms = [_arm(imp, node, attr, lambda a=attr, g=graph, gp=graph_proto: with_rest(a, g, gp))
            for attr, graph, graph_proto in branches]
    mismatch = _mismatch(node, arms, graph_outputs, after=True)
    if mismatch is not None:
        raise LoweringError(mismatch[0])
    outs = _emit_if(imp, node, cond, arms)
    imp._nodes.update(zip(names, outs))
    return outs, True


@dataclasses.dataclass
class _Arm:
    attr: str
    seq: relax.SeqExpr | None = None
    types: list | None = None
    error: LoweringError | None = None


def _arm(imp: _Importer, node: Node, attr: str, build: Callable[[], list]) -> _Arm:
    """One branch of an If (or the LoweringError that stopped it), as a call of a
    private function of its own: TVM's memory planner reuses storage allocated in
    a branch after the If, also when the other branch ran (a null storage and a
    crash at run time; silero-vad unpinned). The branch is converted twice: once
    in place to learn which enclosing values it reads, then as the function, with
    those as its parameters. imp's names are as before afterwards."""
    bb = imp.bb
    saved_nodes, saved_unpacked = dict(imp._nodes), dict(imp._unpacked)
    arm = _Arm(attr)
    recorder = _Recorder(saved_nodes, imp._nodes if isinstance(imp._nodes, _Recorder) else None)
    outer, imp._nodes = imp._nodes, recorder
    try:
        _block(bb, lambda: _tensors(bb, node, attr, build()))
    except LoweringError as exc:
        arm.error = exc
    finally:
        imp._nodes = outer
        _restore(imp._nodes, saved_nodes)
        _restore(imp._unpacked, saved_unpacked)
    imp.discarded_functions = True  # the kernels of that first conversion
    if arm.error is not None:
        return arm
    params, args, bindings = _arm_params(imp, recorder.read)
    try:
        bb.begin_scope(params)
        try:
            bb._begin_binding_block()
            try:
                imp._nodes.update(bindings)
                result = _tensors(bb, node, attr, build())
            finally:
                block = bb._end_block()
            body = bb.normalize(relax.SeqExpr([block], result))
        finally:
            bb.end_scope()
    except LoweringError as exc:  # as the first time, in principle
        arm.error = exc
        return arm
    finally:
        _restore(imp._nodes, saved_nodes)
        _restore(imp._unpacked, saved_unpacked)
    gv = bb.add_func(relax.Function(params, body, is_pure=True), f"{_ident(node.name or 'if')}_{attr}")

    def call():
        out = bb.emit(relax.Call(gv, args))
        fields = [bb.emit(relax.TupleGetItem(out, k)) for k in range(len(body.ty.fields))]
        arm.types = [f.ty for f in fields]
        return fields[0] if len(fields) == 1 else relax.Tuple(fields)

    arm.seq = _block(bb, call)
    return arm


class _Recorder(dict):
    """Names read from `outer` (the values bound before a branch) while it is
    converted; reads of nested branches count for the enclosing one (`parent`)."""

    def __init__(self, outer: dict, parent: _Recorder | None = None):
        super().__init__(outer)
        self.outer = outer
        self.parent = parent
        self.read: dict[str, relax.Expr] = {}

    def _note(self, name, value):
        if name in self.outer and self.outer[name] is value:
            self.read.setdefault(name, value)
            if self.parent is not None:
                self.parent._note(name, value)
        return value

    def __getitem__(self, name):
        return self._note(name, super().__getitem__(name))

    def get(self, name, default=None):
        return self._note(name, super().get(name, default)) if name in self else default


def _tensors(bb, node: Node, attr: str, outs: list) -> relax.Tuple:
    return relax.Tuple([_as_tensor(bb, o, node, f"{attr} output {i}") for i, o in enumerate(outs)])


def _arm_params(imp: _Importer, read: dict):
    """(params, caller arguments, name -> expression inside) for the enclosing
    values a branch reads: values known when compiling stay constants; symbolic
    dims map to the parameters' own."""
    bb = imp.bb
    params, args, bindings, varmap, prims = [], [], {}, {}, []
    for name, expr in read.items():
        if expr is None or _is_static(expr):
            continue
        if tvm.ir.is_prim_expr(expr):
            prims.append((name, expr))
            continue
        try:
            value = _evaluate(bb, expr, [0])
            if isinstance(value, np.ndarray) and value.size <= 64:  # shape arithmetic: stays foldable inside
                bindings[name] = relax.const(tvm.runtime.tensor(np.ascontiguousarray(value)))
                continue
        except _NotStatic:
            pass
        if imp._packed:
            expr = imp._unpack_inputs([expr])[0]
        if not isinstance(expr, relax.Var):
            expr = bb.emit(expr)
        var = relax.Var(_ident(name), _freshen(_shaped(expr.ty), varmap))
        params.append(var)
        args.append(expr)
        bindings[name] = _rebuild(var)
    for name, expr in prims:  # dims taken from shapes (Gather(Shape(x), k)): the parameters' own dims
        if isinstance(expr, tirx.Var) and expr in varmap:
            bindings[name] = varmap[expr]
        else:
            var = relax.Var(_ident(name), tvm.ir.PrimType(str(expr.ty.dtype)))
            params.append(var)
            args.append(expr)
            bindings[name] = var
    return params, args, bindings


def _mismatch(node: Node, arms: list[_Arm], values: list, after: bool = False) -> tuple[str, bool] | None:
    """(message, whether only ranks differ) when the arms' outputs (`values`: the IR
    values they stand for) cannot join; a LoweringError when neither arm can be
    compiled. Where ranks differ and the model declares the value's rank, the arm
    that disagrees with it becomes a failed arm (onnxruntime would fail there too,
    or give what the model says it never gives)."""
    first, second = arms
    if first.error is not None and second.error is not None:
        raise LoweringError(f"If node {_name(node)}: neither branch can be compiled; then_branch: {first.error}; "
                            f"else_branch: {second.error}") from first.error
    if first.error is not None or second.error is not None:
        return None
    if len(first.types) != len(second.types):
        return f"If node {_name(node)}: then_branch has {len(first.types)} outputs, else_branch {len(second.types)}", False
    for i, (a, b) in enumerate(zip(first.types, second.types)):
        value = values[i] if i < len(values) else None
        label = repr(value.name) if value is not None else f"#{i}"
        what = f"If node {_name(node)}: " + (f"graph output {label} (after it)" if after else f"output {i} ({label})")
        if str(a.dtype.dtype) != str(b.dtype.dtype):
            return f"{what} is {a.dtype.dtype} in then_branch and {b.dtype.dtype} in else_branch", False
        if a.ndim < 0 or b.ndim < 0 or a.ndim != b.ndim:
            declared = len(value.shape) if value is not None and value.shape is not None else None
            if declared is not None and (a.ndim == declared) != (b.ndim == declared):
                wrong = second if a.ndim == declared else first
                got = b.ndim if a.ndim == declared else a.ndim
                wrong.error = LoweringError(f"{label} would have rank {got} where the model declares rank {declared}")
                return None
            rank = lambda t: "unknown" if t.ndim < 0 else str(t.ndim)  # noqa: E731
            return (f"{what} has rank {rank(a)} in then_branch and {rank(b)} in else_branch, and the condition is "
                    f"only known at run time; the compiled code needs each value's rank (when the condition depends "
                    f"only on input shapes, pinning them makes it known: --input-shape)"), True
    return None


def _emit_if(imp: _Importer, node: Node, cond: relax.Expr, arms: list[_Arm]) -> list[relax.Expr]:
    """The relax.If of two arms; an arm that failed becomes a run-time error."""
    bb = imp.bb
    good = next(arm for arm in arms if arm.error is None)
    seqs = []
    for arm in arms:
        if arm.error is None:
            seqs.append(arm.seq)
            continue
        reason = f"If node {_name(node)}: its {arm.attr} cannot be compiled ({arm.error})"
        imp.notes.append(f"{reason}; the compiled model raises an error if the condition selects it at run time")
        seqs.append(_block(bb, lambda: _trap(bb, cond, f"{reason}; the condition selected it", good.types)))
    types = good.types
    result = bb.emit(relax.If(cond, *seqs))
    outs = [result] if len(types) == 1 else [bb.emit(relax.TupleGetItem(result, i)) for i in range(len(types))]
    then_tys, else_tys = (arm.types if arm.error is None else types for arm in arms)
    # dims the branches disagree on (or TVM lost) become symbolic, so later converters see a shape
    return [_with_shape(bb, o, _joined_dims(a, b), str(a.dtype.dtype)) for o, a, b in zip(outs, then_tys, else_tys)]


def _trap(bb, cond: relax.Expr, message: str, types: list) -> relax.Expr:
    """Values of `types` that are never computed: a kernel that raises
    RuntimeError(message) runs first (and feeds them, so nothing removes it)."""
    def kernel(x):
        def body(ins, outs):
            false, kind, parts = tirx.const(False, "bool"), tvm.ir.StringImm("RuntimeError"), [tvm.ir.StringImm(message)]
            try:
                check = tirx.AssertStmt(false, kind, parts)  # the constructor's order (its Python signature differs)
            except TypeError:
                check = tirx.AssertStmt(kind, false, parts)
            return tirx.SeqStmt([check, tirx.Evaluate(0)])
        return te.extern([(1,)], [x], body, name="onnxforge_trap", dtype="int64")

    raised = bb.emit(relax.op.reshape(bb.emit_te(kernel, cond), []))
    outs = []
    for ty in types:
        dims = _dims(ty)
        shape = [int(d.value) if _is_int(d) else 0 for d in dims] if dims is not None else [0] * ty.ndim
        outs.append(bb.emit(relax.op.full(shape, relax.op.astype(raised, str(ty.dtype.dtype)), str(ty.dtype.dtype))))
    return outs[0] if len(outs) == 1 else relax.Tuple(outs)


def _joined_dims(a: relax.TensorType, b: relax.TensorType) -> list:
    """Static dims both branches agree on; None (symbolic) for the rest."""
    da, db = _dims(a), _dims(b)
    if da is None or db is None:
        return [None] * a.ndim
    return [x if _is_int(x) and _equal(x, y) else None for x, y in zip(da, db)]


# -- Loop and Scan -------------------------------------------------------------
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


# -- helpers -------------------------------------------------------------------
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
