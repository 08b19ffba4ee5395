"""quantize-static: QuantizeLinear/DequantizeLinear pairs on the activations that
enter MatMul/Gemm/Conv, int8 per-channel weights, both from calibration data.

    x (fp32) -> QuantizeLinear(x, s, zp) -> DequantizeLinear -> Conv <- DequantizeLinear(W int8, s_w, axis 0)
                                                                   <- DequantizeLinear(b int32, s * s_w, axis 0)

The result is plain ONNX QDQ (opset >= 13 for per-channel DequantizeLinear; the
pass raises older models, see opset.py) that onnxruntime runs, fusing the pairs
into integer kernels where it has them.

Activations are uint8 (asymmetric, zero point from the range) by default: on x86
onnxruntime's integer kernels are u8 x s8 (activations unsigned, weights signed,
the form VPMADDUBSW multiplies), and most activations entering convolutions are
non-negative (after ReLU/Clip), which an asymmetric uint8 range covers with all
256 levels. `activations=int8` stores them signed (still asymmetric), which some
accelerators want. Weights are int8, symmetric (zero point 0), per output channel
(`per_channel=false`: per tensor); `reduce_range=true` uses 7-bit weights
([-63, 63]) against the u8 x s8 saturation of AVX2 CPUs without VNNI. Conv biases
are stored as int32 with scale s_x * s_w (what onnxruntime's QLinearConv wants),
kept float when that would overflow.

Calibration (`calibration=`, over the samples of `optimize(..., calibration=...)`
/ `--calib DIR`): `minmax` (the observed range), `percentile` (the `percentile`
and 100 - `percentile` percentiles, from a histogram of `bins` bins),
`entropy` (the |x| threshold minimising the KL divergence between the histogram
and its 128-level quantized form, TensorRT style; the range is clipped to it).
onnxruntime.quantization's calibrators are not used: they write an augmented
model to disk and keep every activation of every sample, while these stream one
sample at a time and share the collection path with GPTQ (passes/calibration.py).

Sensitivity (stats `sensitivity`): for each layer, the relative L2 output error
of the model with only that layer quantized, on the first `eval_samples`
calibration samples. `output_error` is the same measure with every chosen layer
quantized. With `max_loss=E` (> 0) the most sensitive layers are excluded one at
a time until output_error <= E (stats `auto_excluded`). `exclude=` names layers
to keep float up front: node names, output names or op types, fnmatch patterns
allowed ('+'-separated).

Skipped: layers whose activation input is already dequantized (a second run
changes nothing), not float32, or inside subgraphs; weights that are not
constant float (then the layer's activations are still quantized, and a MatMul
of two activations gets both quantized).
"""
from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np
import onnx

from ...ir import Model, Node, PassOptionError, Value
from ...ir.pattern import attribute
from ..base import Effect, Pass, PassResult
from ..calibration import Calibration, current_calibration, iter_activations
from ..registry import register_pass
from ..util import is_standard
from .opset import raise_opset
from .weights import check_ops

METHODS = ("minmax", "percentile", "entropy")
STATIC_OPS = ("MatMul", "Gemm", "Conv")
ACTIVATION_TYPES = ("uint8", "int8")


@dataclasses.dataclass
class QuantizeStaticOptions:
    # How activation ranges come from the calibration data: minmax, percentile or entropy.
    calibration: str = "minmax"
    # calibration=percentile: keep this percentile of each tail (99.99 = clip 0.01% each side).
    percentile: float = 99.99
    # Weights: one scale per output channel (true) or per tensor.
    per_channel: bool = True
    # Activation storage: uint8 (onnxruntime's x86 u8s8 kernels) or int8.
    activations: str = "uint8"
    # 7-bit weights (avoids u8s8 saturation on AVX2 CPUs without VNNI).
    reduce_range: bool = False
    # Ops whose inputs are quantized ('+'-separated).
    ops: list[str] = dataclasses.field(default_factory=lambda: list(STATIC_OPS))
    # Layers kept float: node names, output names or op types (fnmatch patterns).
    exclude: list[str] = dataclasses.field(default_factory=list)
    # > 0: exclude the most sensitive layers until the relative output error is <= max_loss.
    max_loss: float = 0.0
    # Per-layer sensitivity report in the stats (one onnxruntime session per layer).
    sensitivity: bool = True
    # Calibration samples for ranges (0 = all) and for sensitivity / max_loss (the first N).
    samples: int = 0
    eval_samples: int = 8
    # Histogram bins (percentile, entropy).
    bins: int = 2048

    def __post_init__(self) -> None:
        where = "pass 'quantize-static' option"
        if self.calibration not in METHODS:
            raise PassOptionError(f"{where} calibration={self.calibration}: expected one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise PassOptionError(f"{where} percentile={self.percentile}: expected a percentile in (50, 100], e.g. 99.99")
        if self.activations not in ACTIVATION_TYPES:
            raise PassOptionError(f"{where} activations={self.activations}: expected uint8 or int8")
        check_ops(where, self.ops, STATIC_OPS)
        if self.max_loss < 0:
            raise PassOptionError(f"{where} max_loss={self.max_loss}: must be >= 0 (0 = off)")
        if self.samples < 0 or self.eval_samples < 1:
            raise PassOptionError(f"{where} samples={self.samples} eval_samples={self.eval_samples}: "
                                  "samples >= 0, eval_samples >= 1")
        if self.bins < 128:
            raise PassOptionError(f"{where} bins={self.bins}: at least 128")


@dataclasses.dataclass
class _Layer:
    index: int            # position in graph.nodes (stable across clones)
    name: str
    op: str
    acts: list[int]       # input indices that are activations
    weight: int | None    # input index of the constant weight
    channel_axis: int     # of the weight
    bias: int | None      # Conv bias input index


# ------------------------------------------------------------------ ranges
class _RangeStats:
    def __init__(self, names, method: str, bins: int):
        self.names, self.method, self.bins = list(names), method, bins
        self.lo = {n: np.inf for n in self.names}
        self.hi = {n: -np.inf for n in self.names}
        self.hist: dict[str, np.ndarray] = {}

    def add_minmax(self, sample):
        for n in self.names:
            a = sample[n]
            if a.size:
                self.lo[n] = min(self.lo[n], float(a.min()))
                self.hi[n] = max(self.hi[n], float(a.max()))

    def edges(self, n):
        if self.method == "entropy":
            return 0.0, max(abs(self.lo[n]), abs(self.hi[n]), 1e-12)
        return self.lo[n], max(self.hi[n], self.lo[n] + 1e-12)

    def add_hist(self, sample):
        for n in self.names:
            a = sample[n].astype(np.float64, copy=False).ravel()
            lo, hi = self.edges(n)
            h, _ = np.histogram(np.abs(a) if self.method == "entropy" else a, bins=self.bins, range=(lo, hi))
            self.hist[n] = self.hist[n] + h if n in self.hist else h

    def range(self, n, percentile: float) -> tuple[float, float]:
        lo, hi = self.lo[n], self.hi[n]
        if self.method == "minmax" or n not in self.hist:
            return lo, hi
        a, b = self.edges(n)
        hist = self.hist[n].astype(np.float64)
        width = (b - a) / self.bins
        if self.method == "percentile":
            cdf = np.cumsum(hist) / max(hist.sum(), 1)
            tail = 1 - percentile / 100
            i_lo = int(np.searchsorted(cdf, tail, side="left"))
            i_hi = int(np.searchsorted(cdf, 1 - tail, side="left"))
            return max(lo, a + i_lo * width), min(hi, a + (i_hi + 1) * width)
        # |x| gets all 256 levels when the tensor is non-negative, 128 when both signs share them
        t = _kl_threshold(hist, 256 if lo >= 0 else 128) * width
        return max(lo, -t), min(hi, t)


def _kl_threshold(hist: np.ndarray, levels: int = 128) -> int:
    """TensorRT's entropy calibration: the bin count i (threshold) whose clipped and
    `levels`-level quantized distribution is closest (KL) to the original."""
    bins = hist.size
    if hist.sum() == 0:
        return bins
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # the reference: outliers clipped into the last bin
        sliced = hist[:i]  # the candidate: the unclipped slice, merged into `levels` levels
        nonzero = sliced != 0
        q = np.zeros(i)
        for c in np.array_split(np.arange(i), levels):
            nz = nonzero[c]
            if nz.any():
                q[c[nz]] = sliced[c].sum() / nz.sum()
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        m = ps > 0
        kl = float(np.sum(ps[m] * np.log(ps[m] / np.maximum(qs[m], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i


def _act_params(lo: float, hi: float, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exact (padding, ReLU)
    scale = (hi - lo) / 255.0
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    qmin = 0 if dtype == "uint8" else -128
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmin + 255))
    return np.array(scale, np.float32), np.array(zp, np.uint8 if dtype == "uint8" else np.int8)


def _weight_q(w: np.ndarray, axis: int | None, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    w64 = w.astype(np.float64)
    if axis is None:
        amax = np.asarray(np.abs(w64).max())
        full = amax
    else:
        amax = np.abs(w64).max(axis=tuple(a for a in range(w.ndim) if a != axis))
        full = amax.reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    full_s = np.where(full > 0, full / qmax, 1.0).astype(np.float32).astype(np.float64)
    q = np.clip(np.rint(w64 / full_s), -qmax, qmax).astype(np.int8)
    return q, scale


# ------------------------------------------------------------------ the pass
@register_pass("quantize-static")
class QuantizeStatic(Pass):
    """QuantizeLinear/DequantizeLinear on the activations entering MatMul/Gemm/Conv
    and int8 per-channel weights, from calibration statistics (min-max, percentile,
    entropy), with a per-layer sensitivity report and max_loss auto-exclusion."""

    Options = QuantizeStaticOptions
    effect = Effect.LOSSY

    def run(self, model: Model) -> PassResult:
        o = self.options
        layers, skipped = self._layers(model)
        stats: dict = {}
        if skipped:
            stats["skipped"] = dict(sorted(skipped.items()))
        excluded = [ly.name for ly in layers if self._excluded(model, ly)]
        chosen = [ly for ly in layers if ly.name not in excluded]
        if not chosen:
            stats["quantized"] = 0
            return PassResult(False, stats)
        cal = current_calibration(self.name)
        cal_ranges = cal.head(o.samples) if o.samples else cal
        need = 13 if o.per_channel else 10
        bumped = raise_opset(model, need, "per-channel DequantizeLinear", self.name, ", or use per_channel=false")
        if bumped:
            stats["opset"] = bumped
            layers, _ = self._layers(model)  # adapting ops may have moved nodes
            chosen = [ly for ly in layers if ly.name not in excluded]

        acts = sorted({model.graph.nodes[ly.index].inputs[i].name for ly in layers for i in ly.acts})
        ranges = self._ranges(model, cal_ranges, acts)
        stats["calibration"] = f"{o.calibration} on {len(cal_ranges)} samples"

        if o.sensitivity or o.max_loss > 0:
            evaluator = _Evaluator(model, cal.head(o.eval_samples), ranges, o)
            sens = {ly.name: evaluator.error([ly]) for ly in chosen}
            stats["sensitivity"] = {k: float(f"{v:.4g}") for k, v in sorted(sens.items(), key=lambda kv: -kv[1])}
            error = evaluator.error(chosen)
            auto: list[str] = []
            if o.max_loss > 0:
                order = sorted(chosen, key=lambda ly: -sens[ly.name])
                while error > o.max_loss and order:
                    worst = order.pop(0)
                    auto.append(worst.name)
                    chosen = [ly for ly in chosen if ly is not worst]
                    error = evaluator.error(chosen) if chosen else 0.0
                stats["auto_excluded"] = auto
            stats["output_error"] = float(f"{error:.4g}")
        if excluded:
            stats["excluded"] = excluded
        if not chosen:
            stats["quantized"] = 0
            return PassResult(bool(bumped), stats)
        counts = _apply(model, chosen, ranges, o)
        stats.update(quantized=len(chosen), **counts)
        model.analyses.clear()
        return PassResult(True, stats)

    # -- which layers
    def _layers(self, model: Model) -> tuple[list[_Layer], dict[str, int]]:
        o = self.options
        skipped: dict[str, int] = {}

        def skip(why):
            skipped[why] = skipped.get(why, 0) + 1

        layers = []
        names = set()
        for index, node in enumerate(model.graph.nodes):
            if not is_standard(node) or node.op_type not in o.ops or len(node.inputs) < 2:
                continue
            a, b = node.inputs[0], node.inputs[1]
            if a is None or b is None:
                continue
            if not _is_float_activation(a):
                skip("input already quantized or not a float activation")
                continue
            weight, axis = None, 0
            w = b.const_value()
            if w is not None:
                w = np.asarray(w)
                if w.dtype != np.float32 or not np.all(np.isfinite(w)) or \
                        any(u is not node for u, _ in b.uses) or b.is_graph_output:
                    skip("weight not an own finite float32 constant")
                    continue
                if node.op_type == "Conv":
                    weight, axis = 1, 0
                elif node.op_type == "Gemm":
                    weight, axis = 1, 0 if attribute(node, "transB", model.opset_imports, 0) else 1
                elif w.ndim == 2:
                    weight, axis = 1, 1
                else:
                    weight, axis = 1, -1  # per tensor
            elif b.producer is not None and b.producer.op_type == "DequantizeLinear":
                skip("weight already quantized")
                continue
            acts = [0] if weight is not None else ([0, 1] if node.op_type == "MatMul" and _is_float_activation(b)
                                                   else [0])
            bias = 2 if (node.op_type == "Conv" and weight is not None and len(node.inputs) > 2
                         and node.inputs[2] is not None and node.inputs[2].const_value() is not None
                         and len(node.inputs[2].uses) == 1) else None
            name = node.name or node.outputs[0].name
            if name in names:
                name = f"{name}#{index}"
            names.add(name)
            layers.append(_Layer(index, name, node.op_type, acts, weight, axis, bias))
        return layers, skipped

    def _excluded(self, model: Model, layer: _Layer) -> bool:
        node = model.graph.nodes[layer.index]
        keys = [layer.name, node.op_type, node.outputs[0].name]
        return any(fnmatch.fnmatchcase(k, pat) for pat in self.options.exclude for k in keys)

    def _ranges(self, model: Model, cal: Calibration, acts: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        o = self.options
        st = _RangeStats(acts, o.calibration, o.bins)
        for sample in iter_activations(model, cal, acts, description=f"{self.name}: ranges"):
            st.add_minmax(sample)
        if o.calibration != "minmax":
            for sample in iter_activations(model, cal, acts, description=f"{self.name}: histograms"):
                st.add_hist(sample)
        out = {}
        for n in acts:
            lo, hi = st.range(n, o.percentile)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                lo, hi = 0.0, 1.0  # never seen (empty tensors)
            out[n] = _act_params(lo, hi, o.activations)
        return out


def _is_float_activation(v: Value) -> bool:
    if v.const_value() is not None:
        return False
    if v.producer is not None and v.producer.op_type == "DequantizeLinear":
        return False
    return v.dtype in (None, onnx.TensorProto.FLOAT)


def _apply(model: Model, layers: list[_Layer], ranges, o: QuantizeStaticOptions) -> dict:
    """Insert the QDQ pairs and quantized weights of `layers` into `model` (in place)."""
    graph = model.graph
    nodes = {ly.index: graph.nodes[ly.index] for ly in layers}
    qtype = onnx.TensorProto.UINT8 if o.activations == "uint8" else onnx.TensorProto.INT8
    consumers: dict[int, tuple[Value, list[tuple[Node, int]]]] = {}
    for ly in layers:
        node = nodes[ly.index]
        for i in ly.acts:
            v = node.inputs[i]
            consumers.setdefault(id(v), (v, []))[1].append((node, i))
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    dq_out: dict[str, Value] = {}
    for v, uses in consumers.values():
        first = min((n for n, _ in uses), key=lambda n: order[id(n)])
        scale, zp = ranges[v.name]
        s = graph.add_initializer(scale, name=f"{v.name}_scale")
        z = graph.add_initializer(zp, name=f"{v.name}_zero_point")
        q = graph.make_node("QuantizeLinear", [v, s, z], name=f"{v.name}_quantize", output_names=[f"{v.name}_quantized"],
                            before=first)
        q.outputs[0].dtype, q.outputs[0].shape = qtype, v.shape
        dq = graph.make_node("DequantizeLinear", [q.outputs[0], s, z], name=f"{v.name}_dequantize",
                             output_names=[f"{v.name}_dequantized"], before=first)
        dq.outputs[0].dtype, dq.outputs[0].shape = onnx.TensorProto.FLOAT, v.shape
        for n, i in uses:
            n.set_input(i, dq.outputs[0])
        dq_out[v.name] = dq.outputs[0]
    qmax = 63 if o.reduce_range else 127
    weights = biases = 0
    for ly in layers:
        if ly.weight is None:
            continue
        node = nodes[ly.index]
        wv = node.inputs[ly.weight]
        w = np.asarray(wv.const_value())
        axis = ly.channel_axis if (o.per_channel and ly.channel_axis >= 0) else None
        q, scale = _weight_q(w, axis, qmax)
        qi = graph.add_initializer(q, name=f"{wv.name}_quantized")
        si = graph.add_initializer(scale, name=f"{wv.name}_scale")
        zi = graph.add_initializer(np.zeros(scale.shape, np.int8), name=f"{wv.name}_zero_point")
        attrs = {"axis": axis} if axis is not None else {}
        dq = graph.make_node("DequantizeLinear", [qi, si, zi], attrs, name=f"{wv.name}_dequantize",
                             output_names=[f"{wv.name}_dequantized"], before=node)
        dq.outputs[0].dtype, dq.outputs[0].shape = onnx.TensorProto.FLOAT, tuple(w.shape)
        node.set_input(ly.weight, dq.outputs[0])
        _drop_if_unused(wv)
        weights += 1
        if ly.bias is not None:
            bv = node.inputs[ly.bias]
            b = np.asarray(bv.const_value()).astype(np.float64)
            x_scale = _act_scale(node)
            bscale = (x_scale * scale.astype(np.float64)) * np.ones(b.shape)
            bq = np.rint(b / bscale)
            if b.ndim == 1 and np.all(np.abs(bq) < 2**31 - 1) and np.all(bscale.astype(np.float32) > 0):
                bqi = graph.add_initializer(bq.astype(np.int32), name=f"{bv.name}_quantized")
                bsi = graph.add_initializer(bscale.astype(np.float32), name=f"{bv.name}_scale")
                bzi = graph.add_initializer(np.zeros(b.shape, np.int32), name=f"{bv.name}_zero_point")
                bdq = graph.make_node("DequantizeLinear", [bqi, bsi, bzi], {"axis": 0}, name=f"{bv.name}_dequantize",
                                      output_names=[f"{bv.name}_dequantized"], before=node)
                bdq.outputs[0].dtype, bdq.outputs[0].shape = onnx.TensorProto.FLOAT, tuple(b.shape)
                node.set_input(ly.bias, bdq.outputs[0])
                _drop_if_unused(bv)
                biases += 1
    return {"activations": len(consumers), "weights": weights, "int32_biases": biases}


def _act_scale(node: Node) -> float:
    """The activation scale of a node's input 0 (read from its DequantizeLinear)."""
    dq = node.inputs[0].producer
    return float(np.asarray(dq.inputs[1].const_value()))


def _drop_if_unused(v: Value) -> None:
    if v.uses or v.is_graph_output:
        return
    if v.producer is not None and v.producer.op_type == "Constant":
        v.graph.remove_node(v.producer)
    elif v.is_initializer:
        v.graph.remove_initializer(v)


class _Evaluator:
    """Relative L2 output error of the model with a subset of layers quantized, on a
    few calibration samples, against the float model."""

    def __init__(self, model: Model, cal: Calibration, ranges, options: QuantizeStaticOptions):
        from ..check import ort_session

        self.model, self.ranges, self.options = model, ranges, options
        self.feeds = list(cal)
        session = ort_session(model, optimize=True)
        names = [out.name for out in session.get_outputs()]
        self.reference = [session.run(names, f) for f in self.feeds]

    def error(self, layers: list[_Layer]) -> float:
        from ..check import ort_session

        work = self.model.clone()
        _apply(work, layers, self.ranges, self.options)
        session = ort_session(work, optimize=True)
        names = [out.name for out in session.get_outputs()]
        num = den = 0.0
        for f, ref in zip(self.feeds, self.reference):
            for a, b in zip(ref, session.run(names, f)):
                if np.asarray(a).dtype.kind != "f":
                    continue
                a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
                num += float(np.sum((a64 - b64) ** 2))
                den += float(np.sum(a64 ** 2))
        return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))
