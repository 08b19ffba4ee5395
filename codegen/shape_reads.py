"""Keep every use of a symbolic dim after the match_cast that binds it.

Dims bound mid-function (the output of a Reshape whose target is computed at run
time, a broadcast whose size Relax could not resolve) are defined by a match_cast
binding. After LegalizeOps, the kernels that read them (the Reshape itself, a
`shape_to_tensor` of the new shape) take the dims as plain integer arguments:
nothing in the dataflow graph ties them to the match_cast any more. FuseOps orders
each dataflow block by data dependencies alone, and may move such a kernel above
the match_cast; the build then stops in VMShapeLower with "PrimExpr d has not
been computed". This pass, run after fusion, restores the order: a stable
topological sort of each block over both kinds of dependency (Relax variables
read, symbolic dims read), touching only blocks that need it.
"""
from __future__ import annotations

import heapq

import tvm
from tvm import relax


def _dims_read(binding) -> set:
    value = binding.value
    dims = set(relax.analysis.free_symbolic_vars(value)) if isinstance(value, relax.Expr) else set()
    if not isinstance(binding, relax.MatchCast):  # a match_cast's own type defines its dims
        dims |= set(relax.analysis.tir_vars_in_type(binding.var.ty))
    return dims


def _dims_defined(binding, known: set) -> set:
    if not isinstance(binding, relax.MatchCast):
        return set()
    return {v for v in relax.analysis.definable_tir_vars_in_type(binding.ty) if v not in known}


def _reorder(bindings: list, known: set):
    """The bindings in an order where each comes after what it reads; None if the
    given order already is one (or no order is: left to the build to report)."""
    producer, defined = {}, {}
    for i, b in enumerate(bindings):
        producer[b.var] = i
        for dim in _dims_defined(b, known | set(defined)):
            defined[dim] = i
    if not defined:
        return None
    deps = []
    for i, b in enumerate(bindings):
        d = {producer[v] for v in relax.analysis.free_vars(b.value) if v in producer}
        d |= {defined[dim] for dim in _dims_read(b) if dim in defined}
        d.discard(i)
        deps.append(d)
    if all(j < i for i, d in enumerate(deps) for j in d):
        return None
    users = [[] for _ in bindings]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # smallest index first: the original order wherever it is valid
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(bindings):
        return None  # a cycle (one fused kernel both feeds and reads the dims)
    return [bindings[i] for i in order]


def _function(func: relax.Function):
    known = set()
    for p in func.params:
        known |= set(relax.analysis.definable_tir_vars_in_type(p.ty))
    blocks, changed = [], False
    for block in func.body.blocks:
        bindings = list(block.bindings)
        reordered = _reorder(bindings, known)
        for b in bindings:
            known |= _dims_defined(b, known)
        if reordered is None:
            blocks.append(block)
            continue
        changed = True
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(reordered))
    if not changed:
        return None
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)


@tvm.transform.module_pass(opt_level=0, name="onnxforge.OrderDimReads")
def order_dim_reads(mod, _ctx):
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            new = _function(func)
            if new is not None:
                updates[gv] = new
    if not updates:
        return mod
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in updates.items():
        mod[gv] = func
    return mod
