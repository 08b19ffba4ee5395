"""Control flow: ONNX If, Loop and Scan lowered to Relax (Loop and Scan in
codegen/loops.py, helpers shared by both in codegen/subgraph_helpers.py).

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
- Loop and Scan: codegen/loops.py.

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
from ..ir.graph import Graph

if TYPE_CHECKING:
    from .lower import _Importer

from .loops import _lower_loop, _lower_scan
from .subgraph_helpers import (
    _NotStatic, _as_tensor, _block, _dims, _equal, _evaluate, _freshen, _graph_proto, _ident, _input, _is_int,
    _is_static, _name, _rebuild, _restore, _scalar, _shaped, _static_bool, _where, _with_shape
)

OPS = ("If", "Loop", "Scan")


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
        seqs.append(_block(bb, lambda reason=reason: _trap(bb, cond, f"{reason}; the condition selected it", good.types)))
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
