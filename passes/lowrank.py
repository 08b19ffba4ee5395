"""lowrank: low-rank factorization of constant weights.

- MatMul x @ W (W: [K, N]) becomes (x @ U) @ V with U: [K, r], V: [r, N];
- Gemm (transA=0) becomes MatMul(x, U) then Gemm(h, V, C) with the original
  alpha/beta/bias;
- Conv with a 1x1 kernel (group 1) becomes two 1x1 convs (C -> r -> M);
  Conv with a k x k kernel becomes a Tucker-2 triple: 1x1 (C -> r_in), the k x k
  core (r_in -> r_out, the original strides/pads/dilations), 1x1 (r_out -> M),
  with both ranks chosen the same way.

The rank per weight comes from one of: `energy` (the smallest r keeping that
fraction of the squared singular values), `rank_ratio` (r = ratio x min(K, N)),
or `flops_budget` (ranks chosen model-wide, largest normalised singular value
per FLOP first, until the factored layers cost at most that fraction of what they
cost dense). A Tucker-2 conv gets a rank per mode (output and input channels), each from its own
unfolding's spectrum (with `flops_budget`, one rank for both, from the shorter).
Ranks are rounded up to `round_to`; a layer is factored only where
that lowers its FLOPs. `method=data` whitens with calibration activations: with
X the layer's inputs and L the Cholesky factor of X^T X, the SVD of L^T W gives
factors that minimise ||X W - X U V|| rather than ||W - U V||.
A second run leaves the factors alone (they are listed in the model metadata).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import numpy as np

from ..ir import Model, Node, PassOptionError
from .base import Effect, Pass, PassResult
from .costs import cost_report, cost_stats, static_clone
from .prune import _rows
from .registry import register_pass
from .util import const

OPS = ("MatMul", "Gemm", "Conv")
METHODS = ("svd", "data")
META_KEY = "onnxforge.lowrank.factors"


@dataclasses.dataclass
class LowRankOptions:
    # Keep this fraction of the squared singular values (0 < energy <= 1).
    energy: Optional[float] = None
    # Or: rank = rank_ratio x min(K, N).
    rank_ratio: Optional[float] = None
    # Or: the factored layers cost at most this fraction of their dense FLOPs (model-wide).
    flops_budget: Optional[float] = None
    # Ranks are rounded up to a multiple of this.
    round_to: int = 8
    # Which ops ('+'-separated): MatMul, Gemm, Conv.
    ops: list[str] = dataclasses.field(default_factory=lambda: list(OPS))
    # svd (weights only) or data (whitened by calibration activations).
    method: str = "svd"
    # Weights with fewer elements stay dense.
    min_elements: int = 4096
    # Calibration samples used by method=data.
    samples: int = 32
    # method=data: X^T X is shrunk towards its mean diagonal by this fraction (more
    # with fewer rows than channels, so few samples fall back towards plain SVD).
    damp: float = 0.01

    def __post_init__(self) -> None:
        where = "pass 'lowrank' option"
        given = [n for n in ("energy", "rank_ratio", "flops_budget") if getattr(self, n) is not None]
        if len(given) > 1:
            raise PassOptionError(f"{where}s {', '.join(given)}: give only one of energy, rank_ratio, flops_budget")
        if not given:
            self.energy = 0.95
        if self.energy is not None and not 0 < self.energy <= 1:
            raise PassOptionError(f"{where} energy={self.energy}: must be in (0, 1]")
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise PassOptionError(f"{where} rank_ratio={self.rank_ratio}: must be in (0, 1]")
        if self.flops_budget is not None and not 0 < self.flops_budget <= 1:
            raise PassOptionError(f"{where} flops_budget={self.flops_budget}: must be in (0, 1]")
        if self.round_to < 1:
            raise PassOptionError(f"{where} round_to={self.round_to}: must be >= 1")
        if not self.ops or any(op not in OPS for op in self.ops):
            raise PassOptionError(f"{where} ops={'+'.join(self.ops)}: supported ops are {'+'.join(OPS)}")
        if self.method not in METHODS:
            raise PassOptionError(f"{where} method={self.method}: expected one of {', '.join(METHODS)}")
        if self.min_elements < 0:
            raise PassOptionError(f"{where} min_elements={self.min_elements}: must be >= 0")
        if self.samples < 1:
            raise PassOptionError(f"{where} samples={self.samples}: must be >= 1")
        if not 0 <= self.damp <= 1:
            raise PassOptionError(f"{where} damp={self.damp}: must be in [0, 1]")


@dataclasses.dataclass
class _Layer:
    node: Node
    matrix: np.ndarray  # [K, N] (Conv 1x1: [C, M]); Tucker: unused
    kind: str  # "matrix" | "tucker"
    rows: int  # output positions per inference (FLOPs = 2 * rows * K * N)
    s: np.ndarray | None = None  # singular values (of the whitened matrix with method=data)
    u: np.ndarray | None = None
    vt: np.ndarray | None = None
    whiten: np.ndarray | None = None  # L^T (K x K) for method=data
    rank: int = 0  # Tucker: the output-mode rank
    s_in: np.ndarray | None = None  # Tucker: singular values of the input-mode unfolding
    rank_in: int = 0  # Tucker: the input-mode rank (0: same as `rank`)

    def tucker_ranks(self) -> tuple[int, int]:
        m_, c_ = self.matrix.shape[:2]
        return min(self.rank, m_), min(self.rank_in or self.rank, c_)


def _matrix(node: Node) -> np.ndarray | None:
    w = const(node.input(1))
    if w is None or w.dtype not in (np.float32, np.float64, np.float16):
        return None
    if node.op_type == "MatMul" and w.ndim == 2:
        return w
    if node.op_type == "Gemm" and w.ndim == 2 and not node.attr("transA", 0):
        return w.T if node.attr("transB", 0) else w
    if node.op_type == "Conv" and w.ndim == 4 and int(node.attr("group", 1)) == 1:
        if w.shape[2:] == (1, 1):
            return w.reshape(w.shape[0], w.shape[1]).T
        return w
    return None


@register_pass("lowrank")
class LowRank(Pass):
    """Low-rank factorization of MatMul/Gemm weights (two factors) and Conv weights
    (1x1: two 1x1 convs; k x k: Tucker-2), only where FLOPs drop; method=data
    whitens with calibration activations."""

    Options = LowRankOptions
    effect = Effect.LOSSY

    def run(self, model: Model) -> PassResult:
        from .calibration import current_calibration, has_calibration

        o: LowRankOptions = self.options
        cal = current_calibration(self.name).head(o.samples) if o.method == "data" else None
        stats_cal = cal
        if stats_cal is None and has_calibration():
            stats_cal = current_calibration(self.name)
        factors = set(json.loads(model.metadata_props.get(META_KEY, "[]")))
        costs = _static_rows(model, stats_cal)
        layers: list[_Layer] = []
        skipped: dict[str, int] = {}
        for node in model.graph.nodes:
            if node.op_type not in o.ops or node.domain not in ("", "ai.onnx"):
                continue
            w = node.input(1)
            m = _matrix(node)
            reason = None
            if m is None:
                reason = "weight not a constant 2-D/4-D float (or grouped conv, transA)"
            elif w.name in factors:
                reason = "already decided (factored or kept) by an earlier lowrank run"
            elif m.size < o.min_elements:
                reason = "smaller than min_elements"
            elif len(w.uses) != 1:
                reason = "weight shared"
            elif id(node) not in costs:
                reason = "shapes unknown"
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            kind = "tucker" if m.ndim == 4 else "matrix"
            layers.append(_Layer(node, m, kind, costs[id(node)]))
        stats: dict[str, Any] = {"candidates": len(layers), "skipped": skipped}
        if not layers:
            return PassResult(False, {**stats, "factored": 0})

        if cal is not None:
            self._whiten(model, cal, [layer for layer in layers if layer.kind == "matrix"])
        for layer in layers:
            self._decompose(layer)
        self._choose_ranks(layers)
        chosen = [layer for layer in layers if 0 < layer.rank and _factored_cost(layer) < _dense_cost(layer)]
        if not chosen:
            return PassResult(False, {**stats, "factored": 0})
        before = cost_report(model, stats_cal)
        err = []
        for layer in chosen:
            names, rel = self._rewrite(model, layer)
            factors.update(names)
            err.append(rel)
        # every weight this run decided about (factored or kept dense) is left alone next time
        factors.update(layer.node.input(1).name for layer in layers if all(layer is not c for c in chosen))
        model.metadata_props[META_KEY] = json.dumps(sorted(factors))
        for node in model.graph.nodes:
            for v in node.outputs:
                if not v.is_graph_output and node.op_type != "Constant":
                    v.shape = None
        model.analyses.clear()
        after = cost_report(model, stats_cal)
        stats.update({"factored": len(chosen), "ranks": {(c.node.name or c.node.outputs[0].name): _rank_text(c) for c in chosen},
                      "max_rel_weight_error": round(float(max(err)), 4), "method": o.method, **cost_stats(before, after)})
        return PassResult(True, stats)

    # -- data -------------------------------------------------------------------
    def _whiten(self, model: Model, cal, layers: list[_Layer]) -> None:
        from .calibration import iter_activations

        names = list(dict.fromkeys(layer.node.input(0).name for layer in layers))
        grams: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for sample in iter_activations(model, cal, names, progress=True, description="lowrank: activations"):
            for layer in layers:
                x = sample[layer.node.input(0).name]
                axis = 1 if layer.node.op_type == "Conv" else x.ndim - 1
                r = _rows(x, axis, layer.node)
                grams[id(layer.node)] = grams.get(id(layer.node), 0) + r.T @ r
                counts[id(layer.node)] = counts.get(id(layer.node), 0) + len(r)
        for layer in layers:
            g = grams.get(id(layer.node))
            if g is None or g.shape[0] != layer.matrix.shape[0]:
                continue
            # Shrink towards the identity (plain SVD) by `damp`, and further when there
            # are fewer rows than channels: X^T X is then singular and the whitened
            # factors would fit the calibration set only (a classifier head fed one
            # pooled row per image): the unseen directions keep the weight-space error.
            k = len(g)
            shrink = max(self.options.damp, 1.0 - counts[id(layer.node)] / k)
            g = (1 - shrink) * g + (shrink * float(np.trace(g)) / k + 1e-12) * np.eye(k)
            try:
                layer.whiten = np.linalg.cholesky(g).T  # L^T: ||X (W - W')|| = ||L^T (W - W')||
            except np.linalg.LinAlgError:
                layer.whiten = None

    def _decompose(self, layer: _Layer) -> None:
        if layer.kind == "tucker":
            w = np.asarray(layer.matrix, np.float64)  # [M, C, kh, kw]
            m_, c_ = w.shape[:2]
            layer.s = np.linalg.svd(w.reshape(m_, -1), compute_uv=False)
            layer.s_in = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(c_, -1), compute_uv=False)
            return
        w = np.asarray(layer.matrix, np.float64)
        target = layer.whiten @ w if layer.whiten is not None else w
        layer.u, layer.s, layer.vt = np.linalg.svd(target, full_matrices=False)

    def _round(self, r: int, full: int) -> int:
        q = self.options.round_to
        return int(min(full, max(q, -(-r // q) * q)) if full > q else min(full, max(1, r)))

    def _mode_rank(self, s: np.ndarray) -> int:
        o: LowRankOptions = self.options
        if o.rank_ratio is not None:
            r = int(np.ceil(o.rank_ratio * len(s)))
        else:
            e = np.cumsum(s ** 2) / max(float((s ** 2).sum()), 1e-30)
            r = int(np.searchsorted(e, o.energy - 1e-12) + 1)
        return self._round(r, len(s))

    def _choose_ranks(self, layers: list[_Layer]) -> None:
        o: LowRankOptions = self.options
        if o.flops_budget is None:
            for layer in layers:
                # Tucker: each mode keeps `energy` of its own unfolding (the mode with more
                # singular values needs a higher rank for the same error)
                layer.rank = self._mode_rank(layer.s)
                if layer.kind == "tucker":
                    layer.rank_in = self._mode_rank(layer.s_in)
            return
        # model-wide: singular values by normalised energy per FLOP, until the budget.
        # A layer whose rank ends where factoring no longer saves FLOPs stays dense; its
        # dense cost then comes out of the budget and the others are re-allocated.
        total = sum(_dense_cost(layer) for layer in layers)
        dense: set[int] = set()
        while True:
            budget = o.flops_budget * total - sum(_dense_cost(layers[i]) for i in dense)
            items = []
            for i, layer in enumerate(layers):
                if i in dense:
                    continue
                spectrum = _budget_spectrum(layer)
                e = spectrum ** 2 / max(float((spectrum ** 2).sum()), 1e-30)
                per = _rank_cost(layer)
                items.extend((-(float(v) / per), i) for v in e)
            items.sort()
            ranks = [0] * len(layers)
            spent = 0.0
            for _, i in items:
                cost = _rank_cost(layers[i])
                if spent + cost > budget:
                    continue
                ranks[i] += 1
                spent += cost
            for i, (layer, r) in enumerate(zip(layers, ranks)):
                layer.rank = 0 if i in dense else (self._round(r, len(_budget_spectrum(layer))) if r else 0)
            grown = {i for i, layer in enumerate(layers)
                     if i not in dense and layer.rank and _factored_cost(layer) >= _dense_cost(layer)}
            if not grown:
                return
            dense |= grown

    # -- rewriting ----------------------------------------------------------------
    def _rewrite(self, model: Model, layer: _Layer) -> tuple[list[str], float]:
        graph = model.graph
        node = layer.node
        name = node.name or node.outputs[0].name
        w_value = node.input(1)
        dtype = const(w_value).dtype
        r = layer.rank
        if layer.kind == "tucker":
            return self._tucker(model, layer, name, dtype)
        w = np.asarray(layer.matrix, np.float64)
        u, s, vt = layer.u[:, :r], layer.s[:r], layer.vt[:r]
        if layer.whiten is not None:
            a = np.linalg.solve(layer.whiten, u * s)  # L^-T U S
        else:
            a = u * s
        b = vt
        rel = float(np.linalg.norm(w - a @ b) / max(np.linalg.norm(w), 1e-30))
        a_val = graph.add_initializer(a.astype(dtype), name=f"{name}_lr_u")
        if node.op_type == "MatMul":
            first = graph.make_node("MatMul", [node.input(0), a_val], name=f"{name}_lr", before=node)
            b_val = graph.add_initializer(b.astype(dtype), name=f"{name}_lr_v")
            node.set_input(0, first.outputs[0])
            node.set_input(1, b_val)
        elif node.op_type == "Gemm":
            first = graph.make_node("MatMul", [node.input(0), a_val], name=f"{name}_lr", before=node)
            b_arr = b.T if node.attr("transB", 0) else b
            b_val = graph.add_initializer(b_arr.astype(dtype), name=f"{name}_lr_v")
            node.set_input(0, first.outputs[0])
            node.set_input(1, b_val)
        else:  # 1x1 Conv: x -> conv(C -> r) -> conv(r -> M, bias)
            a_val.set_array(a.T.reshape(r, a.shape[0], 1, 1).astype(dtype))
            attrs = {k: v for k, v in node.attributes.items() if k in ("strides", "pads", "auto_pad", "dilations")}
            first = graph.make_node("Conv", [node.input(0), a_val], attrs, name=f"{name}_lr", before=node)
            b_val = graph.add_initializer(b.T.reshape(b.shape[1], r, 1, 1).astype(dtype), name=f"{name}_lr_v")
            node.set_input(0, first.outputs[0])
            node.set_input(1, b_val)
            for key in ("strides", "pads", "auto_pad", "dilations"):
                node.attributes.pop(key, None)
                node._attr_protos.pop(key, None)
        _drop(graph, w_value)
        return [a_val.name, b_val.name], rel

    def _tucker(self, model: Model, layer: _Layer, name: str, dtype) -> tuple[list[str], float]:
        """Tucker-2 by HOSVD: W ~ core x_0 U_out x_1 U_in."""
        graph = model.graph
        node = layer.node
        w = np.asarray(layer.matrix, np.float64)
        m_, c_ = w.shape[:2]
        r_out, r_in = layer.tucker_ranks()
        u_out = np.linalg.svd(w.reshape(m_, -1), full_matrices=False)[0][:, :r_out]  # [M, r_out]
        u_in = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(c_, -1), full_matrices=False)[0][:, :r_in]  # [C, r_in]
        core = np.einsum("mckl,mo,ci->oikl", w, u_out, u_in)  # [r_out, r_in, kh, kw]
        approx = np.einsum("oikl,mo,ci->mckl", core, u_out, u_in)
        rel = float(np.linalg.norm(w - approx) / max(np.linalg.norm(w), 1e-30))
        first_w = graph.add_initializer(u_in.T.reshape(r_in, c_, 1, 1).astype(dtype), name=f"{name}_lr_u")
        first = graph.make_node("Conv", [node.input(0), first_w], name=f"{name}_lr", before=node)
        core_w = graph.add_initializer(core.astype(dtype), name=f"{name}_lr_core")
        attrs = {k: v for k, v in node.attributes.items() if k in ("strides", "pads", "auto_pad", "dilations")}
        second = graph.make_node("Conv", [first.outputs[0], core_w], attrs, name=f"{name}_lr_c", before=node)
        last_w = graph.add_initializer(u_out.reshape(m_, r_out, 1, 1).astype(dtype), name=f"{name}_lr_v")
        w_value = node.input(1)
        node.set_input(0, second.outputs[0])
        node.set_input(1, last_w)
        for key in ("strides", "pads", "auto_pad", "dilations", "kernel_shape"):
            node.attributes.pop(key, None)
            node._attr_protos.pop(key, None)
        _drop(graph, w_value)
        return [first_w.name, core_w.name, last_w.name], rel


def _drop(graph, value) -> None:
    if not value.uses and not value.is_graph_output:
        if value.is_initializer and not value.is_graph_input:
            graph.remove_initializer(value)
        elif value.producer is not None and value.producer.op_type == "Constant":
            graph.remove_node(value.producer)


def _static_rows(model: Model, calibration) -> dict[int, int]:
    """Output positions per inference for each MatMul/Gemm/Conv (at fixed input shapes)."""
    work = static_clone(model, calibration)
    out: dict[int, int] = {}
    for node, copy in zip(model.graph.nodes, work.graph.nodes):
        if copy.op_type not in OPS:
            continue
        shape = copy.outputs[0].shape
        if shape is None or not all(isinstance(d, int) for d in shape) or not shape:
            continue
        if copy.op_type == "Conv":
            out[id(node)] = int(np.prod(shape, dtype=np.int64)) // int(shape[1])
        else:
            out[id(node)] = int(np.prod(shape[:-1], dtype=np.int64))
    return out


def _budget_spectrum(layer: _Layer) -> np.ndarray:
    """flops_budget gives a Tucker conv one rank for both modes, from the shorter spectrum."""
    if layer.kind == "tucker" and len(layer.s_in) < len(layer.s):
        return layer.s_in
    return layer.s


def _rank_text(layer: _Layer) -> int | str:
    """The rank in the stats: r, or "r_out x r_in" for a Tucker-2 conv with two ranks."""
    if layer.kind != "tucker":
        return layer.rank
    r_out, r_in = layer.tucker_ranks()
    return r_out if r_out == r_in else f"{r_out}x{r_in}"


def _dense_cost(layer: _Layer) -> float:
    w = layer.matrix
    if layer.kind == "tucker":
        return float(layer.rows * w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3])
    return float(layer.rows * w.shape[0] * w.shape[1])


def _rank_cost(layer: _Layer) -> float:
    """FLOPs (multiply-adds per output row) one unit of rank costs."""
    w = layer.matrix
    if layer.kind == "tucker":  # flops_budget: r_in = r_out = r: C r + r r k k + r M -> marginal cost at full rank
        return float(layer.rows * (w.shape[0] + w.shape[1] + 2 * len(_budget_spectrum(layer)) * w.shape[2] * w.shape[3]))
    return float(layer.rows * (w.shape[0] + w.shape[1]))


def _factored_cost(layer: _Layer) -> float:
    w = layer.matrix
    r = layer.rank
    if layer.kind == "tucker":
        r_out, r_in = layer.tucker_ranks()
        return float(layer.rows * (w.shape[1] * r_in + r_in * r_out * w.shape[2] * w.shape[3] + r_out * w.shape[0]))
    return float(layer.rows * r * (w.shape[0] + w.shape[1]))
