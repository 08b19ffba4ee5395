"""quantize-dynamic: integer MatMul with activations quantized at run time, as
onnxruntime's quantize_dynamic does, for MatMul-heavy models (transformers):

    x -> DynamicQuantizeLinear -> (x_q uint8, s_x, zp_x)
    MatMulInteger(x_q, W_q, zp_x[, zp_w]) -> Cast(float) -> Mul(., Mul(s_x, s_w)) [-> Add(bias) for Gemm]

Standard ONNX ops only (opset >= 11; older models are raised, see opset.py);
onnxruntime fuses the chain into its DynamicQuantizeMatMul kernel. No calibration
data: the activation range is each input's own min/max, computed per run.

Weights (constant 2-D float32 B of MatMul, or of Gemm with alpha = beta = 1 and
transA = 0; transB is folded into the stored weight) are stored per output
column (`per_channel=true`, the scale is a vector multiplied after the integer
product) or per tensor, as `weights=uint8` (the default: asymmetric with a zero
point per column, onnxruntime's u8 x u8 kernels) or `weights=int8` (symmetric,
zero point 0, the u8 x s8 kernels). On AVX2 CPUs without VNNI onnxruntime's u8 x s8
kernels multiply with VPMADDUBSW, whose 16-bit pair sums saturate: measured here
(2-core EPYC, AVX2, onnxruntime 1.31) a 16x8 MatMul of normal inputs is off by
47% with int8 weights, 1.1% with `weights=int8 reduce_range=true` (7-bit weights
in [-63, 63], no saturation) and 0.7% with uint8 weights. A DynamicQuantizeLinear is
shared by every MatMul reading the same input (Q, K and V projections).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from ...ir import Model, Node, PassOptionError, Value
from ...ir.pattern import attribute
from ..base import Effect, Pass, PassResult
from ..registry import register_pass
from ..util import is_standard
from .opset import raise_opset
from .weights import check_ops

DYNAMIC_OPS = ("MatMul", "Gemm")


@dataclasses.dataclass
class QuantizeDynamicOptions:
    # Weight storage: uint8 (asymmetric, zero point per column) or int8 (symmetric).
    weights: str = "uint8"
    # One scale per output column (true) or per tensor.
    per_channel: bool = True
    # 7-bit int8 weights ([-63, 63]).
    reduce_range: bool = False
    # Ops whose weights are quantized ('+'-separated).
    ops: list[str] = dataclasses.field(default_factory=lambda: list(DYNAMIC_OPS))
    # Weights with fewer elements stay float.
    min_elements: int = 64

    def __post_init__(self) -> None:
        where = "pass 'quantize-dynamic' option"
        if self.weights not in ("int8", "uint8"):
            raise PassOptionError(f"{where} weights={self.weights}: expected int8 or uint8")
        check_ops(where, self.ops, DYNAMIC_OPS)
        if self.min_elements < 0:
            raise PassOptionError(f"{where} min_elements={self.min_elements}: must be >= 0")


def _quantize_weight(w: np.ndarray, o: QuantizeDynamicOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(K, N) float -> (ints, scale (N,) or (), zero point or None)."""
    w64 = w.astype(np.float64)
    axis = 0 if o.per_channel else None
    lo = np.minimum(w64.min(axis=axis), 0.0)
    hi = np.maximum(w64.max(axis=axis), 0.0)
    if o.weights == "int8":
        qmax = 63 if o.reduce_range else 127
        scale = np.maximum(-lo, hi) / qmax
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(w64 / scale.astype(np.float64)), -qmax, qmax).astype(np.int8)
        return q, scale, None
    scale = (hi - lo) / 255.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    s64 = scale.astype(np.float64)
    zp = np.clip(np.rint(-lo / s64), 0, 255)
    q = np.clip(np.rint(w64 / s64) + zp, 0, 255).astype(np.uint8)
    return q, scale, zp.astype(np.uint8)


@register_pass("quantize-dynamic")
class QuantizeDynamic(Pass):
    """Integer MatMul with run-time activation quantization (DynamicQuantizeLinear +
    MatMulInteger + scale), int8/uint8 weights per column; like onnxruntime's quantize_dynamic."""

    Options = QuantizeDynamicOptions
    effect = Effect.LOSSY

    def run(self, model: Model) -> PassResult:
        o = self.options
        skipped: dict[str, int] = {}

        def skip(why):
            skipped[why] = skipped.get(why, 0) + 1

        plan: list[tuple[Node, np.ndarray, Value | None]] = []
        for node in model.graph.nodes:
            if not is_standard(node) or node.op_type not in o.ops or len(node.inputs) < 2:
                continue
            x, b = node.inputs[0], node.inputs[1]
            if x is None or b is None:
                continue
            w = b.const_value()
            if w is None:
                skip("already quantized" if b.producer is not None and b.producer.op_type == "DequantizeLinear"
                     else "weight not constant")
                continue
            w = np.asarray(w)
            if w.dtype != np.float32 or w.ndim != 2 or w.size < o.min_elements or not np.all(np.isfinite(w)):
                skip("weight not a finite 2-D float32 constant (or small)")
                continue
            if x.dtype not in (None, onnx.TensorProto.FLOAT):
                skip("input not float32")
                continue
            bias = None
            if node.op_type == "Gemm":
                op = model.opset_imports
                if attribute(node, "transA", op, 0) or attribute(node, "alpha", op, 1.0) != 1.0 or \
                        attribute(node, "beta", op, 1.0) != 1.0:
                    skip("Gemm with transA, alpha or beta")
                    continue
                if attribute(node, "transB", op, 0):
                    w = w.T
                bias = node.inputs[2] if len(node.inputs) > 2 else None
                if x.shape is not None and len(x.shape) != 2:
                    skip("Gemm input not 2-D")
                    continue
            plan.append((node, w, bias))
        stats: dict = {"quantized": len(plan)}
        if skipped:
            stats["skipped"] = dict(sorted(skipped.items()))
        if not plan:
            return PassResult(False, stats)
        bumped = raise_opset(model, 11, "DynamicQuantizeLinear", self.name)
        if bumped:
            stats["opset"] = bumped

        graph = model.graph
        shared: dict[int, Node] = {}
        before = after = 0
        for node, w, bias in plan:
            x = node.inputs[0]
            dql = shared.get(id(x))
            if dql is None:
                dql = graph.make_node("DynamicQuantizeLinear", [x], num_outputs=3, name=f"{x.name}_dynamic_quantize",
                                      output_names=[f"{x.name}_quantized", f"{x.name}_scale", f"{x.name}_zero_point"],
                                      before=node)
                dql.outputs[0].dtype, dql.outputs[0].shape = onnx.TensorProto.UINT8, x.shape
                dql.outputs[1].dtype, dql.outputs[1].shape = onnx.TensorProto.FLOAT, ()
                dql.outputs[2].dtype, dql.outputs[2].shape = onnx.TensorProto.UINT8, ()
                shared[id(x)] = dql
            wv = node.inputs[1]
            q, scale, zp = _quantize_weight(w, o)
            base = wv.name
            inputs = [dql.outputs[0], graph.add_initializer(q, name=f"{base}_quantized"), dql.outputs[2]]
            if zp is not None:
                inputs.append(graph.add_initializer(zp, name=f"{base}_zero_point"))
            s = graph.add_initializer(scale, name=f"{base}_scale")
            y = node.outputs[0]
            mmi = graph.make_node("MatMulInteger", inputs, name=f"{node.name or y.name}_integer", before=node)
            mmi.outputs[0].dtype = onnx.TensorProto.INT32
            cast = graph.make_node("Cast", [mmi.outputs[0]], {"to": onnx.TensorProto.FLOAT}, before=node)
            cast.outputs[0].dtype = onnx.TensorProto.FLOAT
            both = graph.make_node("Mul", [dql.outputs[1], s], before=node)
            both.outputs[0].dtype = onnx.TensorProto.FLOAT
            last = graph.make_node("Mul", [cast.outputs[0], both.outputs[0]], before=node)
            last.outputs[0].dtype = onnx.TensorProto.FLOAT
            if bias is not None:
                last = graph.make_node("Add", [last.outputs[0], bias], before=node)
                last.outputs[0].dtype = onnx.TensorProto.FLOAT
            last.outputs[0].shape = y.shape
            graph.replace_all_uses(y, last.outputs[0])
            graph.remove_node(node)
            before += w.nbytes
            after += q.nbytes + scale.nbytes + (0 if zp is None else zp.nbytes)
            for v in (wv, bias):
                if v is not None and not v.uses and not v.is_graph_output:
                    if v.producer is not None and v.producer.op_type == "Constant":
                        graph.remove_node(v.producer)
                    elif v.is_initializer:
                        graph.remove_initializer(v)
        stats.update(bytes_before=int(before), bytes_after=int(after), ratio=round(after / before, 4),
                     dynamic_quantize_nodes=len(shared))
        model.analyses.clear()
        return PassResult(True, stats)
