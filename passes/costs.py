"""What compression costs and saves: FLOPs (at fixed input shapes) and
parameters per weighted layer, for the stats of prune-channels and lowrank."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Model
from ..ir.shapes import evaluate_shape, infer_all_shapes
from .analysis import get_analysis, node_flops, param_stats
from .util import const

WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention")


def static_clone(model: Model, calibration=None) -> Model:
    """A copy whose symbolic input dims are fixed (from the first calibration
    sample, else 1 for the first axis and 128 for the others), shapes re-inferred."""
    work = model.clone()
    sample = None
    if calibration is not None:
        try:
            sample = calibration[0]
        except Exception:  # noqa: BLE001
            sample = None
    for value in work.graph.inputs:
        if value.shape is None or value.is_initializer:
            continue
        if sample is not None and value.name in sample:
            value.shape = tuple(int(d) for d in np.shape(sample[value.name]))
        else:
            value.shape = tuple(d if isinstance(d, int) else (1 if i == 0 else 128) for i, d in enumerate(value.shape))
    for node in work.graph.nodes:
        for v in node.outputs:
            if not v.is_graph_output:
                v.shape = None
    try:
        infer_all_shapes(work)
    except Exception:  # noqa: BLE001 - costs are best effort
        pass
    # What pinned inference still leaves open (a pin the model cannot take, e.g. 128
    # tokens for 64 positions): the model's own symbolic shapes at the pinned sizes.
    sizes = {d: p for v, c in zip(model.graph.inputs, work.graph.inputs) if v.shape is not None and c.shape is not None
             for d, p in zip(v.shape, c.shape) if isinstance(d, str) and isinstance(p, int)}
    get_analysis(model, "all-shapes")
    for node, copy in zip(model.graph.nodes, work.graph.nodes):
        for v, c in zip(node.outputs, copy.outputs):
            if c.shape is None or not all(isinstance(d, int) for d in c.shape):
                c.shape = evaluate_shape(v.shape, sizes) or c.shape
    return work


def cost_report(model: Model, calibration=None) -> dict[str, Any]:
    """FLOPs (at fixed input shapes) and parameters, in total and per weighted layer."""
    work = static_clone(model, calibration)
    layers: dict[str, dict[str, int]] = {}
    total = 0
    for node in work.graph.nodes:
        f = node_flops(node) or 0
        total += f
        if node.op_type in WEIGHT_OPS:
            params = sum(int(const(v).size) for v in node.inputs[1:3] if v is not None and const(v) is not None)
            layers[node.name or node.op_type] = {"flops": f, "params": params}
    return {"flops": total, "params": param_stats(model)["params"], "layers": layers}


def cost_stats(before: dict[str, Any], after: dict[str, Any], changed_only: bool = True) -> dict[str, Any]:
    layers = {}
    for name, b in before["layers"].items():
        a = after["layers"].get(name)
        # factored (low-rank): the layer plus the factors named after it
        parts = [v for k, v in after["layers"].items() if k.startswith(name + "_lr")]
        if parts:
            parts += [a] if a is not None else []
            a = {"flops": sum(p["flops"] for p in parts), "params": sum(p["params"] for p in parts)}
        if a is None or (changed_only and a == b):
            continue
        layers[name] = f"flops {b['flops']}->{a['flops']}, params {b['params']}->{a['params']}"
    fb, fa = before["flops"], after["flops"]
    return {"flops_before": fb, "flops_after": fa, "flops_ratio": round(fa / fb, 4) if fb else None,
            "params_before": before["params"], "params_after": after["params"],
            "params_ratio": round(after["params"] / before["params"], 4) if before["params"] else None,
            "layers": layers}
