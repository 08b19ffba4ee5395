"""Analyses computed on demand and cached on the model until a pass that does not
preserve them changes it: shapes, FLOPs, parameter counts."""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np

from ..ir import Model
from ..ir.shapes import infer_all_shapes

_ANALYSES: dict[str, Callable[[Model], Any]] = {}


def analysis(name: str):
    def decorate(fn):
        _ANALYSES[name] = fn
        return fn

    return decorate


def get_analysis(model: Model, name: str) -> Any:
    if name not in model.analyses:
        model.analyses[name] = _ANALYSES[name](model)
    return model.analyses[name]


def invalidate(model: Model, keep: frozenset[str] = frozenset()) -> None:
    """Drop the analyses not in `keep`. "values" in keep: the pass left every value
    it did not remove meaning what it meant (same dtype and shape), so shape
    inference may redo only what changed."""
    for name in list(model.analyses):
        if name not in keep:
            del model.analyses[name]
    if "values" not in keep:
        model.shape_stamps = None


@analysis("shapes")
def _shapes(model: Model) -> int:
    """Runs onnx shape inference, then onnxruntime's symbolic inference where dims
    stay unknown and can matter to a rewrite, onto the values; the result is how
    many gained info."""
    return infer_all_shapes(model, symbolic="auto")


@analysis("all-shapes")
def _all_shapes(model: Model) -> int:
    """As "shapes", with the symbolic step wherever dims stay unknown: for passes
    that need every activation's dims (channel groups, FLOPs)."""
    model.analyses["shapes"] = gained = infer_all_shapes(model)
    return gained


@analysis("params")
def param_stats(model: Model) -> dict[str, int]:
    count = nbytes = 0
    for graph in model.graph.all_graphs():
        for value in graph.initializers.values():
            nbytes += value.nbytes
            count += int(np.prod(value.shape, dtype=np.int64)) if value.is_static_shape() else 0
        for node in graph.nodes:
            if node.op_type == "Constant" and node.outputs[0].const_value() is not None:
                array = node.outputs[0].const_value()
                count += array.size
                nbytes += array.nbytes
    return {"params": count, "bytes": nbytes}


def op_histogram(model: Model) -> Counter:
    return Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.all_nodes()
    )


def _numel(shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def node_flops(node) -> int | None:
    """Floating-point operations of one node (multiply-add = 2), None if shapes are unknown."""
    out = node.outputs[0] if node.outputs else None
    out_n = _numel(out.shape) if out is not None else None
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        w = node.input(1 if op != "QLinearConv" else 3)
        if w is None or w.shape is None or not all(isinstance(d, int) for d in w.shape):
            return None
        x = node.input(0)
        if op == "ConvTranspose":
            x_n = _numel(x.shape) if x is not None else None
            return None if x_n is None else 2 * x_n * int(np.prod(w.shape[1:]))
        if out_n is None:
            return None
        return 2 * out_n * int(np.prod(w.shape[1:]))
    if op in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
        a = node.input(0)
        if a is None or a.shape is None or out_n is None or not a.shape or not isinstance(a.shape[-1], int):
            return None
        k = a.shape[0] if op == "Gemm" and node.attr("transA", 0) else a.shape[-1]
        return 2 * out_n * int(k)
    if node.domain == "com.microsoft" and op in ("Attention", "MultiHeadAttention"):
        return _attention_flops(node)
    if out_n is None:
        return None
    return out_n  # elementwise, reductions, data movement: one op per output element


def _attention_flops(node) -> int | None:
    """Fused attention: the Q/K/V projection (Attention only), Q.K^T and P.V."""
    q, out = node.input(0), node.outputs[0]
    dims = [v.shape for v in (q, out)] + ([node.input(1).shape] if node.input(1) is not None else [])
    if any(d is None or not all(isinstance(x, int) for x in d) for d in dims):
        return None
    batch, seq, hidden = out.shape[0], out.shape[1], out.shape[-1]
    if node.op_type == "Attention":  # input [B, S, in], weights [in, 3 * hidden]
        w = node.input(1).shape
        return 2 * batch * seq * w[0] * w[1] + 4 * batch * seq * seq * hidden
    keys = node.input(1).shape  # MultiHeadAttention: key [B, L, hidden]
    return 4 * batch * seq * keys[1] * hidden if len(keys) == 3 else None


@analysis("flops")
def flops(model: Model) -> dict[str, Any]:
    get_analysis(model, "all-shapes")  # onnx's and onnxruntime's symbolic inference; unknown nodes are counted
    total = 0
    by_op: Counter = Counter()
    unknown = 0
    for node in model.graph.all_nodes():
        f = node_flops(node)
        if f is None:
            unknown += 1
            continue
        total += f
        by_op[node.op_type] += f
    return {"total": total, "by_op": dict(by_op.most_common()), "unknown_nodes": unknown}


@analysis("groups")
def channel_groups(model: Model):
    """Channel dependency groups (see passes.groups): which output channels of which
    layers must be pruned together, and which cannot be pruned and why."""
    from .groups import build_groups

    return build_groups(model)
