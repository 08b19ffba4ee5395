"""quantize-static: QuantizeLinear/DequantizeLinear pairs on the activations that
enter MatMul/Gemm/Conv, 8-bit per-channel weights, both from calibration data.

    x (fp32) -> QuantizeLinear(x, s, zp) -> DequantizeLinear -> Conv <- DequantizeLinear(W uint8, s_w, zp_w, axis 0)
                                                                   <- DequantizeLinear(b int32, s * s_w, axis 0)

The result is plain ONNX QDQ (opset >= 13 for per-channel DequantizeLinear; the
pass raises older models, see opset.py) that onnxruntime runs, fusing the pairs
into integer kernels (QLinearConv) where it has them.

Activations are uint8 (asymmetric, zero point from the range) by default: most
activations entering convolutions are non-negative (after ReLU/Clip), which an
asymmetric uint8 range covers with all 256 levels. `activations=int8` stores them
signed (still asymmetric), which some accelerators want.

Weights (`weights=`) are per output channel (`per_channel=false`: per tensor):
`int8` (the default) symmetric (zero point 0), or `uint8` asymmetric, with a zero
point per channel. On x86 onnxruntime multiplies uint8 activations by int8
weights with VPMADDUBSW, whose 16-bit pair sums can saturate on AVX2 CPUs without
VNNI (EfficientNet-Lite0's logits moved by 49% with int8 weights and no bias
correction, against 18% for the same QDQ graph computed in float); uint8 weights
take the u8 x u8 kernels, which do not saturate (fused = QDQ reference) but ran
8-12x slower than the fp32 model. With bias correction int8 measured better on
both models it was tried on (onnxforge bench, calibration sets of 64):
PP-OCRv4 exact match 0.9933 (= fp32) vs 0.87 for uint8, EfficientNet-Lite0 top-1
0.977 vs 0.972 (gptq, percentile, first two blocks float), at 1.16x fp32 latency.
`weights=int8 reduce_range=true` uses 7-bit weights ([-63, 63]) against the saturation.
Conv biases are stored as int32 with scale s_x * s_w (what QLinearConv wants; no
zero point, it defaults to 0). A channel whose weights are almost zero (a folded
BatchNorm with a tiny gamma: weights ~1e-9, the output is the bias) would get a
scale so small that its bias overflows int32 and the whole bias would stay float,
which onnxruntime cannot fuse and whose WeightBiasQuantization rewrite then
saturates; such channels get the smallest scale that keeps the bias in range
(their weights round to zero, far below the bias they carry).

Weight rounding (`method=`): `rtn` rounds to nearest; `gptq` runs GPTQ
(passes/quantize/gptq.py: column by column with the Hessian of the layer's
calibration inputs, im2col patches per group for Conv) on the same grid, so the
stored format is identical; `damp` as in quantize-weights. Stats: `gptq` (layers)
and `output_error_vs_rtn_mean` (calibration output error, GPTQ / rounding).

Bias correction (`bias_correction=true`, the default): rounding a layer's weights
by D shifts the mean of its output channels by D E[x], which for a depthwise conv
(9 or 25 weights per channel, after a folded BatchNorm often one large one) and
the non-negative inputs after ReLU6 does not average out: on EfficientNet-Lite0
this bias, not the rounding noise, is most of what int8 weights cost (logit error
0.15 -> 0.05, top-1 agreement 0.86 -> 0.96 for weights alone). The pass measures
E[x] (the mean im2col patch: im2col of the mean input) on the calibration data in
the same sweep as the ranges and subtracts D E[x] from the bias: Conv B and Gemm C
(added when missing, C / beta for Gemm), or the constant of an Add right after a
MatMul; other layers keep their bias (stats `bias_corrected` counts the layers).

Calibration (`calibration=`, over the samples of `optimize(..., calibration=...)`
/ `--calib DIR`): `minmax` (the observed range), `percentile` (the `percentile`
and 100 - `percentile` percentiles, from a histogram of `bins` bins),
`entropy` (the |x| threshold minimising the KL divergence between the histogram
and its 128-level quantized form, TensorRT style; the range is clipped to it;
it can clip hard: on EfficientNet-Lite0 it cuts ReLU6 outputs to [0, 0.75] and
no top-1 class survives), `mse` (per tensor, the range [f_lo * min, f_hi * max] with the
least expected squared error: clipping error outside, step^2 / 12 inside, exact
zeros excepted; at 8 bits it clips only long tails, e.g. Laplace at about 10x its
scale).
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
from .gptq import HessianAccumulator, HessianKey, gptq_ints, hessian_key, im2col, to_matrix
from .opset import raise_opset
from .ranges import RangeStats, act_params
from .weights import Grid, check_ops

METHODS = ("minmax", "percentile", "entropy", "mse")
STATIC_OPS = ("MatMul", "Gemm", "Conv")
ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("uint8", "int8")
WEIGHT_METHODS = ("rtn", "gptq")


@dataclasses.dataclass
class QuantizeStaticOptions:
    # How activation ranges come from the calibration data: minmax, percentile, entropy or mse.
    calibration: str = "minmax"
    # calibration=percentile: keep this percentile of each tail (99.99 = clip 0.01% each side).
    percentile: float = 99.99
    # Weights: one scale per output channel (true) or per tensor.
    per_channel: bool = True
    # Activation storage: uint8 or int8 (both asymmetric).
    activations: str = "uint8"
    # Weight storage: int8 (symmetric: onnxruntime's u8 x s8 kernels, fast; their pair sums
    # can saturate on AVX2 without VNNI) or uint8 (asymmetric, a zero point per channel:
    # its u8 x u8 kernels, which do not saturate but ran 8-12x slower than fp32 here).
    weights: str = "int8"
    # weights=int8: 7-bit weights (avoids u8s8 saturation on AVX2 CPUs without VNNI).
    reduce_range: bool = False
    # Weight rounding: rtn = round to nearest; gptq = error compensation from the
    # calibration inputs (passes/quantize/gptq.py), same stored format.
    method: str = "rtn"
    # gptq: Hessian dampening, as a fraction of its mean diagonal.
    damp: float = 0.01
    # Shift each output channel's bias by the mean output change that weight rounding
    # causes on the calibration inputs (adds a bias where a Conv/Gemm has none).
    bias_correction: bool = True
    # Ops whose inputs are quantized ('+'-separated).
    ops: list[str] = dataclasses.field(default_factory=lambda: list(STATIC_OPS))
    # Layers kept float: node names, output names or op types (fnmatch patterns).
    exclude: list[str] = dataclasses.field(default_factory=list)
    # > 0: exclude the most sensitive layers until the relative output error is <= max_loss.
    max_loss: float = 0.0
    # Per-layer sensitivity report in the stats (one onnxruntime session per layer).
    sensitivity: bool = True
    # Calibration samples for ranges, GPTQ and bias correction (0 = all) and for
    # sensitivity / max_loss (the first N).
    samples: int = 0
    eval_samples: int = 8
    # Histogram bins (percentile, entropy, mse).
    bins: int = 2048

    def __post_init__(self) -> None:
        where = "pass 'quantize-static' option"
        if self.calibration not in METHODS:
            raise PassOptionError(f"{where} calibration={self.calibration}: expected one of {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise PassOptionError(f"{where} percentile={self.percentile}: expected a percentile in (50, 100], e.g. 99.99")
        if self.activations not in ACTIVATION_TYPES:
            raise PassOptionError(f"{where} activations={self.activations}: expected uint8 or int8")
        if self.weights not in WEIGHT_TYPES:
            raise PassOptionError(f"{where} weights={self.weights}: expected uint8 or int8")
        if self.reduce_range and self.weights != "int8":
            raise PassOptionError(f"{where} reduce_range=true: 7-bit weights are for weights=int8 (uint8 weights "
                                  "use onnxruntime's u8 x u8 kernels, which do not saturate)")
        if self.method not in WEIGHT_METHODS:
            raise PassOptionError(f"{where} method={self.method}: expected one of {', '.join(WEIGHT_METHODS)}")
        if not 0 < self.damp < 1:
            raise PassOptionError(f"{where} damp={self.damp}: expected a fraction of the mean Hessian diagonal in "
                                  "(0, 1), e.g. 0.01")
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
    channel_axis: int     # of the weight (-1: per tensor only)
    bias: int | None      # Conv bias input index (a constant, stored as int32)
    # where a bias correction goes: "input" (Conv B / Gemm C, existing or added),
    # "add" (the constant of the Add after a MatMul), None (nowhere)
    bias_fix: str | None = None


@dataclasses.dataclass
class _WeightPlan:
    """One layer's quantized weight (computed once, applied to any clone)."""
    q: np.ndarray                 # int8 / uint8, the weight's shape
    scale: np.ndarray             # float32, () or (C,)
    zero_point: np.ndarray        # same dtype as q, same shape as scale
    axis: int | None              # DequantizeLinear axis (None: per tensor)
    bias: np.ndarray | None       # corrected float64 bias (C,), None: unchanged
    gptq_ratio: float | None = None  # calibration output error, GPTQ / round to nearest


def _weight_grid(w: np.ndarray, axis: int | None, o: QuantizeStaticOptions, min_scale=None) -> Grid:
    """The integer grid of one weight: per channel along `axis` (None: per tensor);
    uint8 asymmetric (zero point per channel) or int8 symmetric (zero point 0).
    Scales are at least `min_scale` (per channel or scalar)."""
    w64 = w.astype(np.float64)
    if axis is None:
        lo, hi = np.asarray(w64.min()), np.asarray(w64.max())
    else:
        others = tuple(a for a in range(w.ndim) if a != axis)
        lo, hi = w64.min(axis=others), w64.max(axis=others)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)  # zero stays exact
    if o.weights == "uint8":
        qmin, qmax, qdtype = 0, 255, np.dtype(np.uint8)
        scale = (hi - lo) / qmax
    else:
        qmax = 63 if o.reduce_range else 127
        qmin, qdtype = -qmax, np.dtype(np.int8)
        scale = np.maximum(-lo, hi) / qmax
    if min_scale is not None:
        scale = np.maximum(scale, np.max(min_scale) if axis is None else min_scale)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # stored; quantize with the stored value
    s64 = scale.astype(np.float64)
    zp = np.clip(np.rint(-lo / s64), qmin, qmax) if o.weights == "uint8" else np.zeros(scale.shape)
    shape = tuple(-1 if a == axis else 1 for a in range(w.ndim)) if axis is not None else ()
    return Grid(scale, zp, s64.reshape(shape), zp.reshape(shape), qmin, qmax, qdtype,
                {"axis": axis} if axis is not None else {})


def _bias_shift(delta: np.ndarray, layer: _Layer, mean: np.ndarray) -> np.ndarray:
    """The mean change of each output channel caused by the weight change `delta`,
    given the layer's mean input patch `mean` (groups, cols)."""
    dm = to_matrix(delta, layer.op, layer.channel_axis)
    groups = mean.shape[0]
    rows = dm.shape[0] // groups
    return np.einsum("gok,gk->go", dm.reshape(groups, rows, -1), mean).reshape(-1)


class _InputMeans:
    """Mean im2col patch (Conv) or mean input row (MatMul/Gemm) per HessianKey: the
    first moment that bias correction needs, accumulated one sample at a time."""

    def __init__(self, keys):
        self.keys = list(dict.fromkeys(keys))
        self.sums: dict[HessianKey, np.ndarray] = {}
        self.counts = {k: 0 for k in self.keys}

    def add(self, sample: dict[str, np.ndarray]) -> None:
        for key in self.keys:
            x = np.asarray(sample[key.value], dtype=np.float64)
            if key.kind == "conv":  # the mean image; patches of it are the mean patches (im2col is linear)
                s, n = x.sum(axis=0), x.shape[0]
            else:
                x2 = (x.T if key.kind == "linear-t" else x)
                x2 = x2.reshape(-1, x2.shape[-1])
                s, n = x2.sum(axis=0), x2.shape[0]
            self.sums[key] = self.sums[key] + s if key in self.sums else s
            self.counts[key] += n

    def mean(self, key: HessianKey) -> np.ndarray:
        """(groups, cols)."""
        m = self.sums[key] / max(self.counts[key], 1)
        if key.kind != "conv":
            return m[None]
        return im2col(m[None], *key.conv).mean(axis=0)


# ------------------------------------------------------------------ the pass
@register_pass("quantize-static")
class QuantizeStatic(Pass):
    """QuantizeLinear/DequantizeLinear on the activations entering MatMul/Gemm/Conv
    and 8-bit per-channel weights (rounded or GPTQ, bias-corrected), from calibration
    statistics (min-max, percentile, entropy, mse), with a per-layer sensitivity
    report and max_loss auto-exclusion."""

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
        keys = self._keys(model, chosen)
        ranges, hessians, means = self._statistics(model, cal_ranges, acts, keys)
        stats["calibration"] = f"{o.calibration} on {len(cal_ranges)} samples"
        plans = self._plans(model, chosen, ranges, keys, hessians, means, stats)
        del hessians

        if o.sensitivity or o.max_loss > 0:
            evaluator = _Evaluator(model, cal.head(o.eval_samples), ranges, plans, o)
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
        counts = _apply(model, chosen, ranges, plans, o)
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
            fix = _bias_slot(node, model.opset_imports, w) if weight is not None and axis >= 0 else None
            layers.append(_Layer(index, name, node.op_type, acts, weight, axis, bias, fix))
        return layers, skipped

    def _excluded(self, model: Model, layer: _Layer) -> bool:
        node = model.graph.nodes[layer.index]
        keys = [layer.name, node.op_type, node.outputs[0].name]
        return any(fnmatch.fnmatchcase(k, pat) for pat in self.options.exclude for k in keys)

    def _keys(self, model: Model, layers: list[_Layer]) -> dict[str, HessianKey]:
        """How each layer reads its input, for GPTQ Hessians and bias-correction means
        (layers without one keep round to nearest and their bias)."""
        o = self.options
        if o.method != "gptq" and not o.bias_correction:
            return {}
        keys = {}
        for ly in layers:
            if ly.weight is None or ly.channel_axis < 0:
                continue
            node = model.graph.nodes[ly.index]
            key = hessian_key(node, model.opset_imports, np.shape(node.inputs[ly.weight].const_value()))
            if key is not None:
                keys[ly.name] = key
        return keys

    def _statistics(self, model: Model, cal: Calibration, acts: list[str], keys: dict[str, HessianKey]):
        """Activation ranges (QuantizeLinear scale and zero point per value) and, from
        the same sweep, GPTQ Hessians and mean inputs per key."""
        o = self.options
        st = RangeStats(acts, o.calibration, o.bins)
        hess = HessianAccumulator(keys.values()) if o.method == "gptq" else None
        means = _InputMeans(keys.values()) if o.bias_correction else None
        for sample in iter_activations(model, cal, acts, description=f"{self.name}: ranges"):
            st.add_minmax(sample)
            if hess is not None:
                hess.add(sample)
            if means is not None:
                means.add(sample)
        if o.calibration != "minmax":
            for sample in iter_activations(model, cal, acts, description=f"{self.name}: histograms"):
                st.add_hist(sample)
        out = {}
        for n in acts:
            lo, hi = st.range(n, o.percentile)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                lo, hi = 0.0, 1.0  # never seen (empty tensors)
            out[n] = act_params(lo, hi, o.activations)
        return out, hess, means

    def _plans(self, model: Model, layers: list[_Layer], ranges, keys, hessians, means,
               stats: dict) -> dict[str, _WeightPlan]:
        """Quantize every layer's weight (round to nearest or GPTQ) and correct its bias."""
        o = self.options
        plans: dict[str, _WeightPlan] = {}
        ratios: dict[str, float] = {}
        corrected = 0
        for ly in layers:
            if ly.weight is None:
                continue
            node = model.graph.nodes[ly.index]
            w = np.asarray(node.inputs[ly.weight].const_value())
            axis = ly.channel_axis if (o.per_channel and ly.channel_axis >= 0) else None
            grid = _weight_grid(w, axis, o, _bias_scale_floor(node, ly, ranges, model.opset_imports))
            key = keys.get(ly.name)
            ratio = None
            ints = None
            if hessians is not None and key is not None:
                h = hessians.hessian(key)
                if np.all(np.isfinite(h)):
                    try:
                        ints, err_q, err_r = gptq_ints(w, ly.op, ly.channel_axis, grid, h, o.damp, False)
                        ratio = err_q / err_r if err_r > 0 else 1.0
                        ratios[ly.name] = ratio
                    except ValueError:
                        ints = None
            if ints is None:
                ints = np.clip(np.rint(w.astype(np.float64) / grid.full_scale) + grid.full_zero, grid.qmin, grid.qmax)
            bias = None
            if means is not None and key is not None and ly.bias_fix is not None:
                delta = (ints - grid.full_zero) * grid.full_scale - w.astype(np.float64)
                shift = _bias_shift(delta, ly, means.mean(key))
                if np.all(np.isfinite(shift)):
                    bias = _current_bias(node, ly, model.opset_imports) - shift
                    corrected += 1
            zp = grid.zero_point.astype(np.int64).astype(grid.qdtype)
            plans[ly.name] = _WeightPlan(ints.astype(np.int64).astype(grid.qdtype), grid.scale, zp, axis, bias, ratio)
        stats["weight_format"] = f"{o.weights} {o.method}"
        if o.method == "gptq":
            stats["gptq"] = len(ratios)
            if ratios:
                # calibration output error ||X (W - W_q)||^2, GPTQ / round to nearest
                stats["output_error_vs_rtn_mean"] = float(f"{np.mean(list(ratios.values())):.4g}")
        if o.bias_correction:
            stats["bias_corrected"] = corrected
        return plans


def _is_float_activation(v: Value) -> bool:
    if v.const_value() is not None:
        return False
    if v.producer is not None and v.producer.op_type == "DequantizeLinear":
        return False
    return v.dtype in (None, onnx.TensorProto.FLOAT)


def _bias_scale_floor(node: Node, layer: _Layer, ranges, opsets) -> np.ndarray | None:
    """The smallest weight scales (per output channel) that keep a Conv's int32 bias
    (scale s_x * s_w) in range with a 2x margin. Channels a folded BatchNorm left
    nearly dead (weights ~1e-8, output = bias) otherwise get scales so small that the
    bias overflows int32: it would stay float, onnxruntime could not fuse the layer,
    and its WeightBiasQuantization rewrite saturates such a bias. Their tiny weights
    round to zero instead, an error far below the bias they carry."""
    if node.op_type != "Conv" or node.inputs[0].name not in ranges:
        return None
    value, _ = _bias_value(node, layer, opsets)
    if value is None or value.const_value() is None:
        return None
    x_scale = float(ranges[node.inputs[0].name][0])
    return np.abs(_current_bias(node, layer, opsets)) / (x_scale * 2.0 ** 30)


def _bias_slot(node: Node, opsets, w: np.ndarray) -> str | None:
    """Where a bias correction of this layer can go (see _Layer.bias_fix)."""
    def own_const(v: Value | None, size: int) -> bool:
        c = None if v is None else v.const_value()
        return (c is not None and np.asarray(c).dtype == np.float32 and np.asarray(c).size in (1, size)
                and np.asarray(c).ndim <= 2 and (np.asarray(c).ndim < 2 or np.asarray(c).shape[0] == 1)
                and len(v.uses) == 1 and not v.is_graph_output)

    if node.op_type == "Conv":
        b = node.inputs[2] if len(node.inputs) > 2 else None
        return "input" if b is None or (own_const(b, w.shape[0]) and np.asarray(b.const_value()).ndim == 1) else None
    if node.op_type == "Gemm":
        if float(attribute(node, "beta", opsets, 1.0)) == 0.0:
            return None
        c = node.inputs[2] if len(node.inputs) > 2 else None
        n = w.shape[0] if attribute(node, "transB", opsets, 0) else w.shape[1]
        return "input" if c is None or own_const(c, n) else None
    out = node.outputs[0]  # MatMul: a following Add of a constant bias
    if w.ndim != 2 or out.is_graph_output or len(out.uses) != 1:
        return None
    add, index = out.uses[0]
    if add.op_type != "Add" or not is_standard(add) or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - index]
    return "add" if own_const(other, w.shape[1]) and np.asarray(other.const_value()).size == w.shape[1] else None


def _bias_value(node: Node, layer: _Layer, opsets) -> tuple[Value | None, float]:
    """The value holding the layer's bias (None: none yet) and its multiplier (Gemm beta)."""
    if layer.bias_fix == "add":
        add, index = node.outputs[0].uses[0]
        return add.inputs[1 - index], 1.0
    beta = float(attribute(node, "beta", opsets, 1.0)) if node.op_type == "Gemm" else 1.0
    return (node.inputs[2] if len(node.inputs) > 2 else None), beta


def _current_bias(node: Node, layer: _Layer, opsets) -> np.ndarray:
    """What the layer adds to each output channel now, float64 (channels,)."""
    w = np.asarray(node.inputs[layer.weight].const_value())
    channels = w.shape[0] if layer.op == "Conv" else to_matrix(w, layer.op, layer.channel_axis).shape[0]
    value, beta = _bias_value(node, layer, opsets)
    if value is None:
        return np.zeros(channels)
    return np.broadcast_to(np.asarray(value.const_value(), np.float64).reshape(-1) * beta, (channels,)).copy()


def _set_bias(model: Model, node: Node, layer: _Layer, bias: np.ndarray) -> None:
    """Install a corrected bias (float32) where layer.bias_fix says."""
    graph = model.graph
    old, beta = _bias_value(node, layer, model.opset_imports)
    array = (bias / beta).astype(np.float32)
    if old is not None and old.is_initializer:  # its own (single use): keep the name
        old.set_array(array)
        return
    new = graph.add_initializer(array, name=old.name if old is not None else f"{node.name or node.outputs[0].name}_bias")
    if layer.bias_fix == "add":
        add, index = node.outputs[0].uses[0]
        add.set_input(1 - index, new)
    elif len(node.inputs) > 2:
        node.set_input(2, new)
    else:
        node.append_input(new)
    if old is not None:
        _drop_if_unused(old)


def _apply(model: Model, layers: list[_Layer], ranges, plans: dict[str, _WeightPlan],
           o: QuantizeStaticOptions) -> dict:
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
    weights = biases = 0
    for ly in layers:
        if ly.weight is None:
            continue
        node = nodes[ly.index]
        plan = plans[ly.name]
        if plan.bias is not None:
            _set_bias(model, node, ly, plan.bias)
        wv = node.inputs[ly.weight]
        qi = graph.add_initializer(plan.q, name=f"{wv.name}_quantized")
        si = graph.add_initializer(plan.scale, name=f"{wv.name}_scale")
        zi = graph.add_initializer(plan.zero_point, name=f"{wv.name}_zero_point")
        attrs = {"axis": plan.axis} if plan.axis is not None else {}
        dq = graph.make_node("DequantizeLinear", [qi, si, zi], attrs, name=f"{wv.name}_dequantize",
                             output_names=[f"{wv.name}_dequantized"], before=node)
        dq.outputs[0].dtype, dq.outputs[0].shape = onnx.TensorProto.FLOAT, tuple(plan.q.shape)
        node.set_input(ly.weight, dq.outputs[0])
        _drop_if_unused(wv)
        weights += 1
        bv = node.inputs[2] if node.op_type == "Conv" and len(node.inputs) > 2 else None
        if bv is not None and bv.const_value() is not None and len(bv.uses) == 1 and not bv.is_graph_output:
            # int32 with scale s_x * s_w (what onnxruntime's QLinearConv wants), float when that overflows
            b = np.asarray(bv.const_value()).astype(np.float64)
            x_scale = _act_scale(node)
            bscale = (x_scale * plan.scale.astype(np.float64)) * np.ones(b.shape)
            bq = np.rint(b / bscale)
            if b.ndim == 1 and np.all(np.abs(bq) < 2**31 - 1) and np.all(bscale.astype(np.float32) > 0):
                bqi = graph.add_initializer(bq.astype(np.int32), name=f"{bv.name}_quantized")
                bsi = graph.add_initializer(bscale.astype(np.float32), name=f"{bv.name}_scale")
                # no zero point: it defaults to 0, the only one an int32 bias has
                bdq = graph.make_node("DequantizeLinear", [bqi, bsi], {"axis": 0}, name=f"{bv.name}_dequantize",
                                      output_names=[f"{bv.name}_dequantized"], before=node)
                bdq.outputs[0].dtype, bdq.outputs[0].shape = onnx.TensorProto.FLOAT, tuple(b.shape)
                node.set_input(2, bdq.outputs[0])
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

    def __init__(self, model: Model, cal: Calibration, ranges, plans, options: QuantizeStaticOptions):
        from ..check import ort_session

        self.model, self.ranges, self.plans, self.options = model, ranges, plans, options
        self.feeds = list(cal)
        session = ort_session(model, optimize=True)
        names = [out.name for out in session.get_outputs()]
        self.reference = [session.run(names, f) for f in self.feeds]

    def error(self, layers: list[_Layer]) -> float:
        from ..check import ort_session

        work = self.model.clone()
        _apply(work, layers, self.ranges, self.plans, self.options)
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
