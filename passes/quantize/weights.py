"""quantize-weights: round-to-nearest weight-only quantization.

Constant float weights of MatMul (input B), Gemm (input B, honouring transB) and
Conv (W) are stored as int8/uint8 or int4/uint4 plus float scales (and zero points
when symmetric=false), and feed the original op through a DequantizeLinear node:

    W (fp32)  ->  DequantizeLinear(W_q, scale[, zero_point]) -> MatMul/Gemm/Conv

With ops=...+Gather (opt-in) embedding tables read by Gather (axis 0) are
quantized too. int8 per channel / per tensor: the DequantizeLinear (one scale
per column) goes after the Gather, so only the gathered rows are dequantized:

    Gather(W_q, ids) -> DequantizeLinear(rows, scale, axis=-1) -> readers

bits=4 or granularity=block: Gather takes no int4 (nor blocked scales along its
rows), so the whole table is dequantized before the Gather, with one scale per
row (channel) or per block along the embedding dim (block). That is what makes
an int4 model small (MiniLM's table is half its weights) but it dequantizes the
whole table on every run (onnxruntime does not fold DequantizeLinear): about
12 M values for MiniLM-L6.

The result is standard ONNX that onnxruntime runs. Granularity:

- channel: one scale per output channel (DequantizeLinear axis = output channel;
  opset >= 13).
- tensor: one scale for the whole weight (opset >= 10).
- block: blocks of `block` elements along the reduction axis (MatMul/Gemm K,
  Conv input channels), opset-21 blocked DequantizeLinear (`block_size`). A
  reduction axis that `block` does not divide is *not* padded and *not* refused:
  its last block is shorter, which is what the ONNX spec defines (the scale has
  ceil(K / block) entries along the axis) and what onnxruntime runs; the stats
  count such weights as `partial_blocks`. A weight whose reduction axis is
  shorter than one block (depthwise convolutions: 1 input channel per group) is
  skipped: it would need about one scale per weight, and int4 per channel on 9
  weights per channel costs too much accuracy (measured on PP-OCRv4).

scales=uint8 (granularity=block; "double quantization", as in QLoRA): a float32
scale per block of 32-64 int4 weights is 0.5-1 bit per weight, so int4 files land
at ~0.16x fp32 instead of 0.125x. With scales=uint8 the block scales are stored
as uint8 times one float per output channel, rounded up (no block is clipped),
and a second DequantizeLinear makes them:

    DequantizeLinear(scales uint8, per-channel scale, axis=channel) -> DequantizeLinear(W_q, ., block_size) -> op

Rounding (and GPTQ) then runs on the scales that second DequantizeLinear makes.
The cost is speed in onnxruntime: it fuses DequantizeLinear + MatMul into its
int4 kernel (MatMulNBits) only for constant scales, so it dequantizes these
weights on every run. The compiled module does not care (codegen/quant.py).

bits=4 needs int4 tensors and therefore opset 21; bits=8 with granularity=block
is allowed too (opset 21 blocked int8). When a model imports an older default
opset the pass raises it to what the chosen format needs, adapting the ops whose
inputs moved (see passes/quantize/opset.py), and refuses, naming the ops, when an
op would change meaning.

Weights are skipped, with the reason counted in the stats, when they are not
constants (graph inputs, computed values, already dequantized weights: a second
run changes nothing), smaller than `min_elements`, not float32/float16, of a rank
the op does not take as a weight, or shared with ops that are not quantized the
same way.

method=gptq (see passes/quantize/gptq.py) uses calibration data (from
`onnxforge.optimize(..., calibration=...)` or `--calib DIR`; an error without
it): per weight, the Hessian of its layer's inputs (MatMul/Gemm/Attention: the
input rows; Conv: im2col patches, one Hessian per group) drives column-by-column
error compensation on the same grid as round to nearest, so the stored format
is identical; the stats give the layer output error relative to round to
nearest (`output_error_vs_rtn`, per weight, mean and max). Embedding tables
(Gather) stay round to nearest.

Fused com.microsoft Attention (after `fuse`) holds the packed QKV weights in
input 1: they are quantized like a MatMul B (K, 3N) and DequantizeLinear feeds
Attention input 1 directly; onnxruntime's CPU Attention takes a non-constant
weight input (it only pre-packs constant ones), which the tests check.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from ...ir import Model, Node, PassOptionError, Value
from ...ir.pattern import attribute
from ..base import Effect, Pass, PassResult
from ..registry import register_pass
from ..calibration import current_calibration, iter_activations
from ..util import is_standard
from .gptq import HessianAccumulator, HessianKey, gptq_ints, hessian_key
from .opset import raise_opset

SUPPORTED_OPS = ("MatMul", "Gemm", "Conv", "Attention", "Gather")
DEFAULT_OPS = ("MatMul", "Gemm", "Conv", "Attention")
GRANULARITIES = ("auto", "channel", "tensor", "block")
METHODS = ("rtn", "gptq")
SCALES = ("float", "uint8")


def check_ops(where: str, ops, supported) -> None:
    """PassOptionError unless `ops` is a non-empty subset of `supported`."""
    if not ops or any(op not in supported for op in ops):
        raise PassOptionError(f"{where} ops={'+'.join(ops)}: supported ops are {'+'.join(supported)}")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


@dataclasses.dataclass
class QuantizeWeightsOptions:
    # Bits per weight: 8 (int8/uint8) or 4 (int4/uint4, needs opset 21).
    bits: int = 8
    # One scale per output channel, per tensor, or per block along the reduction axis;
    # auto = block for bits=4 (per-channel int4 loses too much: PP-OCRv4 rec reads
    # 0.73 exact match per channel with GPTQ, 0.98 in blocks of 64), channel for bits=8.
    granularity: str = "auto"
    # Block length along the reduction axis (granularity=block).
    block: int = 32
    # Symmetric (signed, no zero point) or asymmetric (unsigned plus zero points).
    symmetric: bool = True
    # granularity=block: block scales stored as float, or as uint8 with one float
    # scale per output channel (a second DequantizeLinear makes the block scales).
    scales: str = "float"
    # rtn = round to nearest; gptq = error compensation from calibration data
    # (optimize(..., calibration=...) / --calib DIR).
    method: str = "rtn"
    # Ops whose weights are quantized ('+'-separated in pipeline text). Gather
    # (embedding tables, int8 only) is opt-in: ops=MatMul+Gemm+Conv+Gather.
    ops: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_OPS))
    # Weights with fewer elements stay float (too small to matter).
    min_elements: int = 64
    # gptq: Hessian dampening, as a fraction of its mean diagonal.
    damp: float = 0.01
    # gptq: quantize columns in order of decreasing Hessian diagonal (activation order).
    act_order: bool = False
    # gptq: calibration samples used for the Hessians (the first N; 0 = all).
    samples: int = 0

    def __post_init__(self) -> None:
        where = "pass 'quantize-weights' option"
        if self.bits not in (4, 8):
            raise PassOptionError(f"{where} bits={self.bits}: supported are bits=8 (int8) and bits=4 (int4)")
        if self.granularity not in GRANULARITIES:
            raise PassOptionError(f"{where} granularity={self.granularity}: expected one of {', '.join(GRANULARITIES)}")
        if self.granularity == "auto":
            self.granularity = "block" if self.bits == 4 else "channel"
        if self.granularity == "block" and self.block < 1:
            raise PassOptionError(f"{where} block={self.block}: the block length must be a positive number of elements")
        if self.scales not in SCALES:
            raise PassOptionError(f"{where} scales={self.scales}: expected one of {', '.join(SCALES)}")
        if self.scales == "uint8" and self.granularity != "block":
            raise PassOptionError(f"{where} scales=uint8 needs granularity=block (per-channel and per-tensor scales "
                                  f"are already a negligible share of the bytes)")
        if self.method not in METHODS:
            raise PassOptionError(f"{where} method={self.method}: expected one of {', '.join(METHODS)}")
        if not 0 < self.damp < 1:
            raise PassOptionError(f"{where} damp={self.damp}: expected a fraction of the mean Hessian diagonal in (0, 1), "
                                  "e.g. 0.01")
        if self.samples < 0:
            raise PassOptionError(f"{where} samples={self.samples}: must be >= 0 (0 = all calibration samples)")
        if not self.ops:
            raise PassOptionError(f"{where} ops: give at least one of {'+'.join(SUPPORTED_OPS)}")
        unknown = [op for op in self.ops if op not in SUPPORTED_OPS]
        if unknown:
            raise PassOptionError(f"{where} ops={'+'.join(self.ops)}: cannot quantize weights of {', '.join(unknown)}; "
                                  f"supported ops are {'+'.join(SUPPORTED_OPS)} (names are case-sensitive)")
        if self.min_elements < 0:
            raise PassOptionError(f"{where} min_elements={self.min_elements}: must be >= 0")


# ------------------------------------------------------------------ arithmetic
@dataclasses.dataclass
class Quantized:
    q: np.ndarray                 # int8 / uint8 / ml_dtypes int4 / uint4, same shape as the weight
    scale: np.ndarray             # weight dtype (uint8 with scale_scale); () / (C,) / blocked shape
    zero_point: np.ndarray | None  # same dtype as q, same shape as scale; None when symmetric
    attributes: dict              # DequantizeLinear attributes (axis, block_size)
    dequantized: np.ndarray | None  # float64, what DequantizeLinear computes
    scale_scale: np.ndarray | None = None  # scales=uint8: weight dtype, one per output channel
    scale_axis: int = 0                    # ... along this axis of `scale`

    @property
    def nbytes(self) -> int:
        q_bytes = (self.q.size + 1) // 2 if self.q.dtype.itemsize == 1 and self.q.dtype.name in ("int4", "uint4") \
            else self.q.nbytes
        extra = sum(a.nbytes for a in (self.zero_point, self.scale_scale) if a is not None)
        return int(q_bytes + self.scale.nbytes + extra)


def _int_dtype(bits: int, symmetric: bool):
    if bits == 8:
        return np.dtype(np.int8) if symmetric else np.dtype(np.uint8)
    import ml_dtypes

    return np.dtype(ml_dtypes.int4) if symmetric else np.dtype(ml_dtypes.uint4)


def _ranges(w: np.ndarray, granularity: str, ch: int, red: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per quantization group, in the shape of the scale."""
    if granularity == "tensor":
        return np.asarray(w.min()), np.asarray(w.max())
    if granularity == "channel":
        axes = tuple(a for a in range(w.ndim) if a != ch)
        return w.min(axis=axes), w.max(axis=axes)
    k = w.shape[red]
    blocks = -(-k // block)
    moved = np.moveaxis(w, red, 0)
    pad = blocks * block - k
    if pad:  # zeros never widen a range that already includes 0 (ranges do, below)
        moved = np.concatenate([moved, np.zeros((pad,) + moved.shape[1:], moved.dtype)], axis=0)
    grouped = moved.reshape((blocks, block) + moved.shape[1:])
    lo, hi = grouped.min(axis=1), grouped.max(axis=1)
    if pad:  # the padded zeros must not count in the last block's range
        tail = moved[(blocks - 1) * block:k]
        lo[-1], hi[-1] = tail.min(axis=0), tail.max(axis=0)
    return np.moveaxis(lo, 0, red), np.moveaxis(hi, 0, red)


def _expand(s: np.ndarray, shape: tuple[int, ...], granularity: str, ch: int, red: int, block: int) -> np.ndarray:
    """A per-group array broadcast (or repeated) to the weight's shape."""
    if granularity == "tensor":
        return s
    if granularity == "channel":
        return s.reshape(tuple(shape[ch] if a == ch else 1 for a in range(len(shape))))
    return np.take(np.repeat(s, block, axis=red), np.arange(shape[red]), axis=red)


@dataclasses.dataclass
class Grid:
    """The integer grid of one weight: stored scales (and zero points) per group and
    the same expanded to the weight's shape (float64), for rounding."""
    scale: np.ndarray              # stored dtype, per group (uint8 with scale_scale)
    zero_point: np.ndarray | None  # float64 per group; None when symmetric
    full_scale: np.ndarray         # float64, broadcastable to the weight
    full_zero: np.ndarray          # float64, broadcastable to the weight (0 when symmetric)
    qmin: int
    qmax: int
    qdtype: np.dtype
    attributes: dict
    scale_scale: np.ndarray | None = None  # scales=uint8: per output channel (weight dtype)
    scale_axis: int = 0


def _uint8_scales(scale: np.ndarray, channel_axis: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block scales (float64, 0 for an all-zero block) as uint8 times one float scale
    per output channel: (uint8 scales, channel scales in `dtype`, the scales they
    make, float64). Rounded up, so that no block's range is clipped."""
    axes = tuple(a for a in range(scale.ndim) if a != channel_axis)
    top = scale.max(axis=axes) / 255.0
    top = np.where(top > 0, top, 1.0).astype(dtype)  # an all-zero channel: any scale reproduces it
    shape = tuple(-1 if a == channel_axis else 1 for a in range(scale.ndim))
    top64 = top.astype(np.float64).reshape(shape)
    q = np.ceil(scale / top64 * (1 - 1e-9))  # the ratio of the largest block is 255 up to rounding
    q = np.clip(q, 1, 255).astype(np.uint8)
    made = (q.astype(dtype) * top.reshape(shape)).astype(np.float64)  # what DequantizeLinear computes
    return q, top, made


def quantize_grid(w: np.ndarray, bits: int = 8, granularity: str = "channel", *, channel_axis: int = 0,
                  reduce_axis: int = 1, block: int = 32, symmetric: bool = True, scales: str = "float") -> Grid:
    """Scales (and zero points) from the weight's ranges per group. scales=uint8
    (granularity=block): the scales are stored as uint8 times a float per channel."""
    w = np.asarray(w)
    w64 = w.astype(np.float64)
    lo, hi = _ranges(w64, granularity, channel_axis, reduce_axis, block)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)  # the range always holds 0 (exact zeros, padding)
    qdtype = _int_dtype(bits, symmetric)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1  # 127 / 7: symmetric range, -128 / -8 left unused
        qmin = -qmax
        scale = np.maximum(np.abs(lo), np.abs(hi)) / qmax
    else:
        qmin, qmax = 0, 2 ** bits - 1
        scale = (hi - lo) / qmax
    scale_scale = None
    if scales == "uint8":
        scale, scale_scale, scale64 = _uint8_scales(scale, channel_axis, w.dtype)
        if not np.all(np.isfinite(scale_scale)) or np.any(scale64 == 0):
            raise ValueError("the weight's range does not fit its float type's scales")
    else:
        scale = np.where(scale > 0, scale, 1.0)  # an all-zero group: any scale reproduces it
        scale = scale.astype(w.dtype)  # what is stored; quantize with the stored value
        if not np.all(np.isfinite(scale)) or np.any(scale == 0):  # float16 over/underflow
            raise ValueError("the weight's range does not fit its float type's scales")
        scale64 = scale.astype(np.float64)
    full_scale = _expand(scale64, w.shape, granularity, channel_axis, reduce_axis, block)
    zp64 = None
    full_zero = np.zeros(())
    if not symmetric:
        zp64 = np.clip(np.rint(-lo / scale64), qmin, qmax)
        full_zero = _expand(zp64, w.shape, granularity, channel_axis, reduce_axis, block)
    attrs: dict = {}
    if granularity == "channel":
        attrs["axis"] = channel_axis
    elif granularity == "block":
        attrs["axis"] = reduce_axis
        attrs["block_size"] = block
    return Grid(scale, zp64, full_scale, full_zero, qmin, qmax, qdtype, attrs, scale_scale, channel_axis)


def from_ints(ints: np.ndarray, grid: Grid) -> Quantized:
    """Integer values on `grid` (float64 or int) -> the stored form and what DequantizeLinear computes."""
    ints = np.asarray(ints, dtype=np.float64)
    deq = (ints - grid.full_zero) * grid.full_scale
    zp = None if grid.zero_point is None else grid.zero_point.astype(np.int64).astype(grid.qdtype)
    return Quantized(ints.astype(np.int64).astype(grid.qdtype), grid.scale, zp, dict(grid.attributes), deq,
                     grid.scale_scale, grid.scale_axis)


def quantize_array(w: np.ndarray, bits: int = 8, granularity: str = "channel", *, channel_axis: int = 0,
                   reduce_axis: int = 1, block: int = 32, symmetric: bool = True, scales: str = "float") -> Quantized:
    """Round-to-nearest quantization of one weight. `channel_axis` indexes output
    channels (granularity=channel), `reduce_axis` is the axis blocks run along
    (granularity=block). Scales keep the weight's float dtype."""
    grid = quantize_grid(w, bits, granularity, channel_axis=channel_axis, reduce_axis=reduce_axis, block=block,
                         symmetric=symmetric, scales=scales)
    w64 = np.asarray(w).astype(np.float64)
    ints = np.clip(np.rint(w64 / grid.full_scale) + grid.full_zero, grid.qmin, grid.qmax)
    return from_ints(ints, grid)


# ------------------------------------------------------------------ the pass
@dataclasses.dataclass
class _Slot:
    node: Node
    index: int
    channel_axis: int
    reduce_axis: int


def _slot(node: Node, opsets) -> _Slot | None:
    """Where the weight of a selected node sits and how it is laid out."""
    if node.op_type == "Gather" and node.inputs and node.inputs[0] is not None:
        # an embedding table (rows gathered along axis 0): scales per column, applied after the Gather
        return _Slot(node, 0, 1, 0) if attribute(node, "axis", opsets, 0) in (0, -2) else None
    if node.op_type == "Attention":  # com.microsoft: input 1 = packed QKV weights (hidden, 3 * hidden)
        return _Slot(node, 1, 1, 0) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.inputs) > 1 and node.inputs[1] is not None:
        if node.op_type == "Conv":
            return _Slot(node, 1, 0, 1)
        if node.op_type == "Gemm" and attribute(node, "transB", opsets, 0):
            return _Slot(node, 1, 0, 1)  # B is (N, K)
        return _Slot(node, 1, 1, 0)  # B is (K, N)
    return None


def _rank_ok(op: str, ndim: int) -> bool:
    return ndim >= 3 if op == "Conv" else ndim == 2  # MatMul, Gemm, Attention, Gather


@register_pass("quantize-weights")
class QuantizeWeights(Pass):
    """Store constant MatMul/Gemm/Conv weights as int8 or int4 (per channel, per
    tensor or per block) plus scales, dequantized by DequantizeLinear before the op."""

    Options = QuantizeWeightsOptions
    effect = Effect.LOSSY

    def run(self, model: Model) -> PassResult:
        o = self.options
        skipped: dict[str, int] = {}

        def skip(reason: str) -> None:
            skipped[reason] = skipped.get(reason, 0) + 1

        # 1. every weight slot of a selected op, grouped by the weight value
        slots: dict[int, tuple[Value, list[_Slot]]] = {}
        for node in model.graph.all_nodes():
            if node.op_type not in o.ops or not (is_standard(node) if node.op_type != "Attention"
                                                  else node.domain == "com.microsoft"):
                continue
            slot = _slot(node, model.opset_imports)
            if slot is not None:
                value = node.inputs[slot.index]
                slots.setdefault(id(value), (value, []))[1].append(slot)

        # 2. decide and quantize (nothing in the model changes yet)
        candidates: list[tuple[Value, list[_Slot], np.ndarray]] = []
        for value, uses in slots.values():
            array = value.const_value()
            if array is None:
                producer = value.producer
                skip("already quantized" if producer is not None and producer.op_type == "DequantizeLinear"
                     else "not constant")
                continue
            array = np.asarray(array)
            if array.dtype not in _FLOATS:
                skip(f"dtype {array.dtype}")
                continue
            if array.size < o.min_elements:
                skip(f"small (< {o.min_elements} elements)")
                continue
            first = uses[0]
            if not _rank_ok(first.node.op_type, array.ndim):
                skip(f"{first.node.op_type} weight of rank {array.ndim}")
                continue
            layouts = {(s.node.op_type == "Gather", s.channel_axis, s.reduce_axis) for s in uses}
            if len(layouts) > 1 or len(value.uses) != len(uses) or value.is_graph_output:
                skip("shared with other ops or layouts")
                continue
            if not np.all(np.isfinite(array)):
                skip("not finite")
                continue
            gather = first.node.op_type == "Gather"
            if gather and (o.bits != 8 or o.granularity == "block"):
                # Gather takes no int4: the whole table is dequantized before it, per row
                # (channel) or in blocks along the embedding dim
                uses = [dataclasses.replace(s, channel_axis=0, reduce_axis=1) for s in uses]
                first = uses[0]
            elif gather and any(s.node.outputs[0].is_graph_output for s in uses):
                skip("Gather output is a graph output")
                continue
            if o.granularity == "block" and array.shape[first.reduce_axis] < o.block:
                # depthwise convolutions (one input channel per group): a block per
                # row would store about as many scales as weights
                skip("reduction axis shorter than one block")
                continue
            candidates.append((value, uses, array))

        hessians = self._hessians(model, candidates, skip) if o.method == "gptq" else {}
        plan: list[tuple[Value, list[_Slot], Quantized, float]] = []
        gptq_errors: dict[str, float] = {}
        for value, uses, array in candidates:
            first = uses[0]
            try:
                if id(value) in hessians:
                    grid = quantize_grid(array, o.bits, o.granularity, channel_axis=first.channel_axis,
                                         reduce_axis=first.reduce_axis, block=o.block, symmetric=o.symmetric,
                                         scales=o.scales)
                    ints, err_gptq, err_rtn = gptq_ints(array, first.node.op_type, first.channel_axis, grid,
                                                        hessians[id(value)], o.damp, o.act_order)
                    qz = from_ints(ints, grid)
                    gptq_errors[value.name] = err_gptq / err_rtn if err_rtn > 0 else 1.0
                else:
                    qz = quantize_array(array, o.bits, o.granularity, channel_axis=first.channel_axis,
                                        reduce_axis=first.reduce_axis, block=o.block, symmetric=o.symmetric,
                                        scales=o.scales)
            except ValueError as exc:
                skip(str(exc))
                continue
            norm = float(np.linalg.norm(array.astype(np.float64)))
            err = float(np.linalg.norm(qz.dequantized - array.astype(np.float64)))
            qz.dequantized = None  # only needed for the error; do not hold a float64 copy of every weight
            plan.append((value, uses, qz, err / norm if norm > 0 else 0.0))

        stats: dict = {"quantized": len(plan)}
        if skipped:
            stats["skipped"] = dict(sorted(skipped.items()))
        if not plan:
            return PassResult(False, stats)

        # 3. the opset the stored format needs
        need, why = 13 if o.granularity == "channel" else 10, "per-channel DequantizeLinear"
        if any(qz.scale.dtype == np.float16 for _, _, qz, _ in plan):
            need, why = max(need, 19), "float16 scales in DequantizeLinear"
        if o.bits == 4 or o.granularity == "block":
            need, why = 21, ("int4 weights" if o.bits == 4 else "blocked DequantizeLinear (block_size)")
        hint = ", or use granularity=tensor (opset 10)" if need == 13 else \
            ("" if need == 19 else ", or use bits=8 granularity=channel (opset 13)")
        bumped = raise_opset(model, need, why, self.name, hint)
        if bumped:
            stats["opset"] = bumped

        # 4. rewrite
        before = after = partial = 0
        for value, uses, qz, _ in plan:
            graph = value.graph
            inits = [graph.add_initializer(qz.q, name=f"{value.name}_quantized"), _scale_input(value, uses, qz)]
            if qz.zero_point is not None:
                inits.append(graph.add_initializer(qz.zero_point, name=f"{value.name}_zero_point"))
            if uses[0].node.op_type == "Gather" and uses[0].channel_axis == 1:
                _dequantize_after_gathers(value, uses, inits, qz)
            else:
                _dequantize_before(value, uses, inits, qz)
            before += int(np.asarray(value.const_value()).nbytes)
            after += qz.nbytes
            if "block_size" in qz.attributes and qz.q.shape[uses[0].reduce_axis] % o.block:
                partial += 1
            if not value.uses and not value.is_graph_output:
                if value.producer is not None:  # a Constant node
                    graph.remove_node(value.producer)
                elif value.is_initializer:
                    graph.remove_initializer(value)
        errors = [e for _, _, _, e in plan]
        stats.update({
            "bytes_before": before, "bytes_after": after, "ratio": round(after / before, 4),
            "max_rel_error": float(f"{max(errors):.4g}"), "mean_rel_error": float(f"{np.mean(errors):.4g}"),
        })
        if partial:
            stats["partial_blocks"] = partial
        if o.method == "gptq":
            ratios = list(gptq_errors.values())
            stats["gptq"] = len(ratios)
            if ratios:
                # output error ||X (W - W_q)||^2 on the calibration inputs, GPTQ / round-to-nearest
                stats["output_error_vs_rtn_mean"] = float(f"{np.mean(ratios):.4g}")
                stats["output_error_vs_rtn_max"] = float(f"{max(ratios):.4g}")
                stats["output_error_vs_rtn"] = {k: float(f"{v:.3g}") for k, v in gptq_errors.items()}

        model.analyses.clear()
        return PassResult(True, stats)

    def _hessians(self, model: Model, candidates, skip) -> dict[int, np.ndarray]:
        """GPTQ Hessians (groups, cols, cols) per weight value id, from one sweep over
        the calibration samples. Weights GPTQ cannot take stay round-to-nearest."""
        o = self.options
        cal = current_calibration(self.name)
        if o.samples:
            cal = cal.head(o.samples)
        keys: dict[int, list[HessianKey]] = {}
        for value, uses, array in candidates:
            if uses[0].node.op_type == "Gather":
                continue  # an embedding has no Hessian: round to nearest
            ks = [hessian_key(s.node, model.opset_imports, array.shape) for s in uses]
            if any(k is None for k in ks) or any(s.node.graph is not model.graph for s in uses):
                skip("gptq: input not supported (SAME padding, non-2-D Conv, subgraph): round to nearest")
                continue
            if len({k.conv for k in ks}) > 1:
                skip("gptq: shared by differently configured convolutions: round to nearest")
                continue
            keys[id(value)] = ks
        if not keys:
            return {}
        acc = HessianAccumulator(k for ks in keys.values() for k in ks)
        for sample in iter_activations(model, cal, sorted({k.value for k in acc.keys}), description=self.name):
            acc.add(sample)
        out = {}
        for vid, ks in keys.items():
            h = sum(acc.hessian(k) for k in ks)
            if not np.all(np.isfinite(h)):
                skip("gptq: non-finite calibration activations: round to nearest")
                continue
            out[vid] = h
        return out


def _scale_input(value: Value, uses: list[_Slot], qz: Quantized) -> Value:
    """The scale initializer, or with uint8 scales DequantizeLinear(uint8 scales,
    channel scales) placed before the weight's readers (_dequantize_before puts
    the weight's DequantizeLinear after it)."""
    graph = value.graph
    if qz.scale_scale is None:
        return graph.add_initializer(qz.scale, name=f"{value.name}_scale")
    inits = [graph.add_initializer(qz.scale, name=f"{value.name}_scale_quantized"),
             graph.add_initializer(qz.scale_scale, name=f"{value.name}_scale_scale")]
    dq = graph.make_node("DequantizeLinear", inits, {"axis": qz.scale_axis}, name=f"{value.name}_scale_dequantize",
                         output_names=[f"{value.name}_scale"], before=_first_reader(graph, uses))
    out = dq.outputs[0]
    out.dtype, out.shape = onnx.helper.np_dtype_to_tensor_dtype(qz.scale_scale.dtype), tuple(qz.scale.shape)
    return out


def _first_reader(graph, uses: list[_Slot]) -> Node | None:
    readers = {id(s.node) for s in uses}
    if all(s.node.graph is graph for s in uses):
        return next(n for n in graph.nodes if id(n) in readers)
    return graph.nodes[0] if graph.nodes else None  # read inside a subgraph: at the top of the graph that defines it


def _dequantize_before(value: Value, uses: list[_Slot], inits: list[Value], qz: Quantized) -> None:
    """W -> DequantizeLinear(W_q, scale[, zero_point]) -> the op, placed before its first reader."""
    graph = value.graph
    dq = graph.make_node("DequantizeLinear", inits, dict(qz.attributes), name=f"{value.name}_dequantize",
                         output_names=[f"{value.name}_dequantized"], before=_first_reader(graph, uses))
    out = dq.outputs[0]
    out.dtype, out.shape = value.dtype, tuple(int(d) for d in qz.q.shape)
    for s in uses:
        s.node.set_input(s.index, out)


def _dequantize_after_gathers(value: Value, uses: list[_Slot], inits: list[Value], qz: Quantized) -> None:
    """Embedding: Gather(W_q, ids) -> DequantizeLinear(rows, scale per column) -> readers,
    so only the gathered rows are dequantized."""
    attrs = {"axis": -1} if "axis" in qz.attributes else {}
    for s in uses:
        node = s.node
        graph = node.graph
        rows = node.outputs[0]
        dq = graph.make_node("DequantizeLinear", [rows, *inits[1:]], attrs, name=f"{node.name or 'gather'}_dequantize",
                             output_names=[f"{rows.name}_dequantized"], after=node)
        out = dq.outputs[0]
        out.dtype, out.shape = rows.dtype, rows.shape
        for reader, index in list(rows.uses):
            if reader is not dq:
                reader.set_input(index, out)
        node.set_input(s.index, inits[0])
        rows.dtype = onnx.helper.np_dtype_to_tensor_dtype(qz.q.dtype)
