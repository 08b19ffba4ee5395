"""prune-channels: structured pruning on the ONNX graph.

Removes whole output channels of Conv/Gemm/MatMul layers, FFN neurons and
attention heads, following the channel dependency groups (passes.groups): every
constant with a dimension in a pruned group is sliced (weights, biases,
BatchNorm parameters, per-channel Mul/Add constants, depthwise filters, the next
layer's input channels), Reshape shape constants and channel-count attributes
(Conv group of depthwise convs, Attention num_heads, Split sizes) follow. The
model gets physically smaller; nothing is masked.

Options:

- ratio: the fraction of each group's channels (heads) to remove, counted on the
  model as it was before the first prune-channels run (recorded in the model's
  metadata), so running the same pipeline again changes nothing;
- criterion: l1 / l2 weight norms of every layer in the group (each layer's norms
  normalised by their mean), or activation (needs calibration data): the RMS of
  the channel's activation where the next layer reads it, times that layer's
  weight norm;
- scope: layer (each group loses `ratio`) or global (the lowest-scoring channels
  across all groups, scores normalised per group, until `ratio` of all channels
  are gone; each group keeps at least `round_to`);
- round_to: kept channel counts are rounded up to a multiple (kernel friendly);
  heads are not rounded;
- exclude: node names (fnmatch patterns, '+'-separated) whose groups stay whole;
- reconstruct: auto (when calibration data was given) / on / off: the next
  layer's weights (MatMul, Gemm, 1x1 Conv) are re-fitted by least squares so that
  it computes, from the kept channels, what it computed from all of them on the
  calibration activations (its bias absorbs the mean of what was removed).
  sequential: after that, each re-fitted layer in graph order is fitted again on
  the inputs the pruned (and already re-fitted) model gives it, to the outputs of
  the original model: errors from upstream layers are compensated as well.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
from typing import Any

import numpy as np

from ..ir import Model, Node, PassOptionError, Value
from .base import Effect, Pass, PassResult
from .costs import cost_report, cost_stats
from .registry import register_pass
from .util import const

CRITERIA = ("l1", "l2", "activation")
SCOPES = ("layer", "global")
RECONSTRUCT = ("auto", "on", "off", "sequential")
META_KEY = "onnxforge.prune-channels.original"


@dataclasses.dataclass
class PruneChannelsOptions:
    # Fraction of each group's channels / heads to remove (of the unpruned model).
    ratio: float = 0.3
    # l1 | l2 (weight norms) | activation (calibration activations x weight norms).
    criterion: str = "l2"
    # layer: every group loses `ratio`; global: the lowest-scoring channels model-wide.
    scope: str = "layer"
    # Kept channel counts are rounded up to a multiple of this (1 = no rounding).
    round_to: int = 8
    # Node names (fnmatch patterns) whose channel groups are left whole.
    exclude: list[str] = dataclasses.field(default_factory=list)
    # Re-fit the next layer by least squares on calibration activations: auto | on | off |
    # sequential (then again, layer by layer in graph order, on the pruned model's own
    # activations, so that upstream errors are compensated too; one calibration pass per layer).
    reconstruct: str = "auto"
    # Calibration samples used (criterion=activation, reconstruction).
    samples: int = 64

    def __post_init__(self) -> None:
        where = "pass 'prune-channels' option"
        if not 0.0 <= self.ratio < 1.0:
            raise PassOptionError(f"{where} ratio={self.ratio}: must be in [0, 1) (the fraction of channels removed)")
        if self.criterion not in CRITERIA:
            raise PassOptionError(f"{where} criterion={self.criterion}: expected one of {', '.join(CRITERIA)}")
        if self.scope not in SCOPES:
            raise PassOptionError(f"{where} scope={self.scope}: expected one of {', '.join(SCOPES)}")
        if self.round_to < 1:
            raise PassOptionError(f"{where} round_to={self.round_to}: must be >= 1")
        if self.reconstruct not in RECONSTRUCT:
            raise PassOptionError(f"{where} reconstruct={self.reconstruct}: expected one of {', '.join(RECONSTRUCT)}")
        if self.samples < 1:
            raise PassOptionError(f"{where} samples={self.samples}: must be >= 1")


# ------------------------------------------------------------------ helpers
def set_constant(value: Value, array: np.ndarray) -> None:
    """Replace a constant's data (initializer or Constant node)."""
    array = np.ascontiguousarray(array)
    node = value.producer
    if node is not None and node.op_type == "Constant":
        for key in [k for k in node.attributes if k.startswith("value")]:
            del node.attributes[key]
        node._attr_protos.pop("value", None)
        node.attributes["value"] = array
        value.shape = tuple(array.shape)
    else:
        value.set_array(array)


def _norms(array: np.ndarray, axis: int, kind: str) -> np.ndarray:
    a = np.moveaxis(np.asarray(array, np.float64), axis, 0).reshape(array.shape[axis], -1)
    return np.abs(a).mean(axis=1) if kind == "l1" else np.sqrt((a * a).sum(axis=1))


def _sink_input(node: Node) -> tuple[Value, int] | None:
    """The activation a sink layer reads its pruned channels from, and its axis."""
    x = node.input(0)
    if x is None or x.shape is None:
        return None
    if node.op_type == "Conv":
        return x, 1
    if node.op_type == "Gemm":
        return x, 0 if node.attr("transA", 0) else 1
    return x, len(x.shape) - 1  # MatMul, Attention


def _rows(x: np.ndarray, axis: int, node: Node) -> np.ndarray:
    """Activation as [rows, channels] (Conv: every position is a row; strided 1x1
    convs read every s-th position)."""
    x = np.asarray(x, np.float64)
    if node.op_type == "Conv":
        strides = node.attr("strides") or [1] * (x.ndim - 2)
        x = x[(slice(None), slice(None)) + tuple(slice(None, None, int(s)) for s in strides)]
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def _sink_matrix(node: Node) -> np.ndarray | None:
    """The sink's weight as [K (channels read), N], for the layers we re-fit."""
    w = const(node.input(1))
    if w is None:
        return None
    if node.op_type == "MatMul" and w.ndim == 2:
        return w
    if node.op_type == "Gemm" and not node.attr("transA", 0):
        return w.T if node.attr("transB", 0) else w
    if node.op_type == "Conv" and w.ndim >= 3 and all(k == 1 for k in w.shape[2:]) and int(node.attr("group", 1)) == 1 \
            and not any(int(p) for p in (node.attr("pads") or [])) and node.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"):
        return w.reshape(w.shape[0], w.shape[1]).T
    return None


def _bias_slot(node: Node) -> tuple[Value, Node | None] | None:
    """The constant bias that follows a sink (its own input, or the Add after a
    MatMul when that is the only reader), for the intercept of the re-fit."""
    if node.op_type in ("Conv", "Gemm"):
        b = node.input(2)
        return (b, None) if b is not None and const(b) is not None and const(b).ndim == 1 else None
    out = node.outputs[0]
    users = out.users()
    if len(users) == 1 and users[0].op_type == "Add" and not out.is_graph_output:
        add = users[0]
        other = add.input(1) if add.input(0) is out else add.input(0)
        arr = const(other)
        if arr is not None and arr.ndim == 1 and len(other.uses) == 1:
            return other, add
    return None


def _put_weight(node: Node, matrix: np.ndarray, dtype) -> np.ndarray:
    """[K', N] matrix back into the sink's weight layout."""
    w = const(node.input(1))
    if node.op_type == "MatMul":
        return matrix.astype(dtype)
    if node.op_type == "Gemm":
        return (matrix.T if node.attr("transB", 0) else matrix).astype(dtype)
    return matrix.T.reshape((matrix.shape[1], matrix.shape[0]) + w.shape[2:]).astype(dtype)


# ------------------------------------------------------------------ the pass
@register_pass("prune-channels")
class PruneChannels(Pass):
    """Structured pruning: removes whole channels, FFN neurons and attention heads
    (with every dependent tensor), by weight norm or activation, optionally
    re-fitting the next layer on calibration data."""

    Options = PruneChannelsOptions
    effect = Effect.LOSSY

    def run(self, model: Model) -> PassResult:
        from .analysis import get_analysis
        from .calibration import current_calibration, has_calibration

        o: PruneChannelsOptions = self.options
        need_data = o.criterion == "activation" or o.reconstruct in ("on", "sequential")
        cal = current_calibration(self.name) if need_data or (o.reconstruct == "auto" and has_calibration()) else None
        if cal is not None:
            cal = cal.head(o.samples)
        reconstruct = cal is not None and o.reconstruct != "off"
        if o.reconstruct == "sequential" and cal is None:
            raise PassOptionError("pass 'prune-channels' option reconstruct=sequential needs calibration data "
                                  "(optimize(..., calibration=...), --calib)")

        groups = get_analysis(model, "groups")
        original = json.loads(model.metadata_props.get(META_KEY, "{}"))
        candidates = []
        for g in groups.prunable:
            if o.exclude and any(fnmatch.fnmatchcase(n, pat) for pat in o.exclude for n in g.sources + g.sinks + g.params):
                continue
            key = f"{g.kind}:{'+'.join(g.sources)}|{'+'.join(g.sinks)}"
            candidates.append((g, key, int(original.get(key, g.size))))
        stats: dict[str, Any] = {"groups": len(groups.groups), "prunable": len(groups.prunable)}
        if o.ratio == 0 or not candidates:
            return PassResult(False, {**stats, "pruned_groups": 0})

        members = groups.members
        acts: dict[str, Any] = {}
        sinks = {}
        if cal is not None:
            for g, _, _ in candidates:
                for m in members[g.id]:
                    if m.role == "sink" and m.node is not None and _sink_input(m.node) is not None:
                        sinks[id(m.node)] = m.node
            acts = self._statistics(model, cal, list(sinks.values()), reconstruct)

        scores = {g.id: self._scores(g, members[g.id], groups, acts) for g, _, _ in candidates}
        targets = self._targets(candidates, scores)
        keep: dict[int, np.ndarray] = {}
        removed = {"channels": 0, "heads": 0}
        for g, key, orig in candidates:
            kept = targets[g.id]
            if kept >= g.size:
                continue
            order = np.argsort(-scores[g.id], kind="stable")
            mask = np.zeros(g.size, bool)
            mask[np.sort(order[:kept])] = True
            keep[g.id] = mask
            removed[g.kind] += g.size - kept
            original.setdefault(key, orig)
        if not keep:
            return PassResult(False, {**stats, "pruned_groups": 0})

        before = cost_report(model, cal)
        reference = model.clone() if o.reconstruct == "sequential" else None
        refit = self._apply(model, groups, keep, acts if reconstruct else {}, sinks)
        if reference is not None:
            self._sequential(model, reference, cal, refit)
            refit = [n.name or n.outputs[0].name for n in refit]
        model.metadata_props[META_KEY] = json.dumps(original, sort_keys=True)
        model.analyses.clear()
        after = cost_report(model, cal)
        stats.update({"pruned_groups": len(keep), "channels_removed": removed["channels"],
                      "heads_removed": removed["heads"], "reconstructed_layers": len(refit),
                      "criterion": o.criterion, **cost_stats(before, after)})
        return PassResult(True, stats)

    # -- data ---------------------------------------------------------------------
    def _statistics(self, model: Model, cal, sinks: list[Node], gram: bool) -> dict[str, Any]:
        """Per sink input: per-channel mean square (criterion) and, for re-fitted
        sinks, the Gram matrix of [x, 1] over all rows."""
        from .calibration import iter_activations

        names = list(dict.fromkeys(_sink_input(n)[0].name for n in sinks))
        by_name: dict[str, list[Node]] = {}
        for n in sinks:
            by_name.setdefault(_sink_input(n)[0].name, []).append(n)
        sq: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        grams: dict[int, np.ndarray] = {}
        for sample in iter_activations(model, cal, names, progress=True, description="prune-channels: activations"):
            for name, x in sample.items():
                for i, node in enumerate(by_name[name]):
                    _, axis = _sink_input(node)
                    r = _rows(x, axis % x.ndim, node)
                    if i == 0:
                        sq[name] = sq.get(name, 0) + (r * r).sum(axis=0)
                        rows[name] = rows.get(name, 0) + r.shape[0]
                    if gram and _sink_matrix(node) is not None:
                        aug = np.concatenate([r, np.ones((r.shape[0], 1))], axis=1)
                        grams[id(node)] = grams.get(id(node), 0) + aug.T @ aug
        return {"rms": {k: np.sqrt(v / max(rows[k], 1)) for k, v in sq.items()}, "gram": grams}

    def _scores(self, g, members, groups, acts) -> np.ndarray:
        o: PruneChannelsOptions = self.options
        score = np.zeros(g.size)
        kind = "l2" if o.criterion == "activation" else o.criterion
        used = False
        for m in members:
            if m.role not in ("source", "sink"):
                continue
            if o.criterion == "activation" and m.role != "sink":
                continue
            leaves, index = groups.space_leaves[(id(m.value), m.axis)]
            norms = _norms(const(m.value), m.axis, kind)
            if o.criterion == "activation":
                slot = _sink_input(m.node) if m.node is not None else None
                rms = acts.get("rms", {}).get(slot[0].name) if slot else None
                if rms is None or len(rms) != len(norms):
                    continue
                norms = norms * rms
            norms = norms / (norms.mean() + 1e-12)
            sel = leaves == g.id
            np.add.at(score, index[sel], norms[sel])
            used = True
        if not used and o.criterion == "activation":  # no sink with data: fall back to weight norms
            for m in members:
                if m.role in ("source", "sink"):
                    leaves, index = groups.space_leaves[(id(m.value), m.axis)]
                    norms = _norms(const(m.value), m.axis, "l2")
                    sel = leaves == g.id
                    np.add.at(score, index[sel], (norms / (norms.mean() + 1e-12))[sel])
        return score

    def _round(self, g, kept: int) -> int:
        kept = max(1, min(g.size, kept))
        r = self.options.round_to
        if g.kind == "channels" and r > 1 and g.size > r:
            kept = min(g.size, -(-kept // r) * r)
        return kept

    def _targets(self, candidates, scores) -> dict[int, int]:
        o: PruneChannelsOptions = self.options
        if o.scope == "layer":
            return {g.id: self._round(g, orig - int(np.floor(o.ratio * orig + 1e-9))) for g, _, orig in candidates}
        width = {g.id: (g.head_size or 1) for g, _, _ in candidates}
        total = sum(orig * width[g.id] for g, _, orig in candidates)
        already = sum((orig - g.size) * width[g.id] for g, _, orig in candidates)
        budget = o.ratio * total - already
        items = []
        for g, _, _ in candidates:
            s = scores[g.id] / (scores[g.id].mean() + 1e-12)
            items.extend((float(v), g.id, i) for i, v in enumerate(s))
        items.sort()
        floor = {g.id: self._round(g, 1) for g, _, _ in candidates}
        kept = {g.id: g.size for g, _, _ in candidates}
        for _, gid, _ in items:
            if budget <= 0:
                break
            if kept[gid] - 1 < floor[gid]:
                continue
            kept[gid] -= 1
            budget -= width[gid]
        by_id = {g.id: g for g, _, _ in candidates}
        return {gid: self._round(by_id[gid], k) for gid, k in kept.items()}

    # -- rewriting ----------------------------------------------------------------
    def _apply(self, model: Model, groups, keep: dict[int, np.ndarray], acts, sinks) -> list[Node]:
        def mask_of(exp) -> np.ndarray:
            leaves, index = exp
            mask = np.ones(len(leaves), bool)
            for leaf, kmask in keep.items():
                sel = leaves == leaf
                if sel.any():
                    mask[sel] = kmask[index[sel]]
            return mask

        masks: dict[tuple[int, int], np.ndarray] = {}
        values: dict[int, Value] = {}
        for d in groups.dims:
            m = mask_of((d.leaves, d.index))
            if not m.all():
                masks[(id(d.value), d.axis)] = m
                values[id(d.value)] = d.value
        self._masks = masks

        done: set[tuple[int, int]] = set()
        refit: list[Node] = []
        for gid, node in ((k, n) for k, n in sinks.items()):
            gram = acts.get("gram", {}).get(gid)
            if gram is None:
                continue
            w = node.input(1)
            key = (id(w), _sink_axis(node))
            kmask = masks.get(key)
            if kmask is None or key in done or len(w.uses) != 1:
                continue
            if self._refit(node, kmask, gram, masks, values, done):
                refit.append(node)

        graph = model.graph
        for vid, value in values.items():
            array = const(value)
            axes = {axis: m for (v, axis), m in masks.items() if v == vid and (v, axis) not in done}
            if not axes:
                continue
            for axis, m in axes.items():
                array = np.compress(m, array, axis=axis)
            set_constant(value, array)

        for node, axis, yid in groups.reshapes:
            exp = groups.space_leaves.get((yid, axis))
            shape = node.input(1)
            arr = const(shape)
            if exp is None or arr is None:
                continue
            new = int(mask_of(exp).sum())
            if int(arr[axis]) == new:
                continue
            arr = np.array(arr, copy=True)
            arr[axis] = new
            old = shape
            node.set_input(1, graph.add_initializer(arr, name=(node.name or "reshape") + "_shape"))
            if not old.uses and old.is_initializer and not old.is_graph_input:
                graph.remove_initializer(old)

        for node, attr, spec in groups.attrs:
            if attr in ("group", "num_heads") and spec is not None:
                node.attributes[attr] = int(mask_of(spec).sum())
                node._attr_protos.pop(attr, None)
            elif attr == "qkv_hidden_sizes" and all(s is not None for s in spec):
                node.attributes[attr] = [int(mask_of(s).sum()) for s in spec]
                node._attr_protos.pop(attr, None)
            elif attr == "split" and all(s is not None for s in spec):
                sizes = [int(mask_of(s).sum()) for s in spec]
                self._set_split(model, node, sizes)

        for node in graph.nodes:
            for v in node.outputs:
                if not v.is_graph_output and node.op_type != "Constant":
                    v.shape = None
        return refit

    def _sequential(self, model: Model, reference: Model, cal, refit: list[Node]) -> None:
        """Each re-fitted layer, in graph order, once more: least squares from the
        inputs the pruned model now gives it to the outputs of the original model
        (bias included; restricted to the output channels the layer keeps)."""
        from .calibration import _session_with_outputs, iter_activations

        order = {id(n): i for i, n in enumerate(model.graph.nodes)}
        nodes = sorted(refit, key=lambda n: order[id(n)])
        plans = []
        for node in nodes:
            slot = _bias_slot(node)
            # the value that carries the layer's output with its bias
            out = node.outputs[0] if slot is None or slot[1] is None else slot[1].outputs[0]
            plans.append((node, slot, out.name))
        if not plans:
            return
        ref = _session_with_outputs(reference, [name for _, _, name in plans])
        samples = list(cal)
        masks = self._masks
        for node, slot, target in plans:
            w = node.input(1)
            wm = np.asarray(_sink_matrix(node), np.float64)  # [K', N']
            k, n_out = wm.shape
            out_mask = masks.get((id(w), _out_axis(node)))
            a = np.zeros((k + 1, k + 1))
            c = np.zeros((k + 1, n_out))
            x_name = node.input(0).name
            ok = True
            for feed, xs in zip(samples, iter_activations(model, samples, [x_name], progress=False)):
                y = np.asarray(ref.run([target], feed)[0], np.float64)
                x = xs[x_name]
                axis = 1 if node.op_type == "Conv" else x.ndim - 1  # shapes were reset by the rewrite
                r = _rows(x, axis, node)
                yaxis = 1 if node.op_type == "Conv" else y.ndim - 1
                t = np.moveaxis(y, yaxis, -1).reshape(-1, y.shape[yaxis])
                if out_mask is not None and t.shape[1] == len(out_mask):
                    t = t[:, out_mask]
                if r.shape[0] != t.shape[0] or r.shape[1] != k or t.shape[1] != n_out:
                    ok = False
                    break
                aug = np.concatenate([r, np.ones((r.shape[0], 1))], axis=1)
                a += aug.T @ aug
                c += aug.T @ t
            if not ok:
                continue
            rows = np.arange(k + 1) if slot is not None else np.arange(k)
            aa = a[np.ix_(rows, rows)]
            frac = max(1e-5, 1.0 - float(a[k, k]) / len(rows))
            lam = frac * float(np.mean(np.diag(aa))) + 1e-12
            prior = np.zeros((len(rows), n_out))  # ridge towards the current (one-shot) fit
            prior[:k] = wm
            if slot is not None:
                prior[k] = np.asarray(const(slot[0]), np.float64)
            try:
                sol = np.linalg.solve(aa + lam * np.eye(len(rows)), c[rows] + lam * prior)
            except np.linalg.LinAlgError:
                continue
            set_constant(w, _put_weight(node, sol[:k], const(w).dtype))
            if slot is not None:
                set_constant(slot[0], sol[k].astype(const(slot[0]).dtype))

    def _refit(self, node: Node, kmask: np.ndarray, gram: np.ndarray, masks, values, done) -> int:
        """Least squares: the kept input channels (plus an intercept into the bias)
        reproduce what all channels produced on the calibration activations."""
        w = node.input(1)
        wm = np.asarray(_sink_matrix(node), np.float64)  # [K, N]
        k = wm.shape[0]
        if gram.shape[0] != k + 1:
            return 0
        slot = _bias_slot(node)
        keep_idx = np.flatnonzero(kmask)
        rows = np.concatenate([keep_idx, [k]]) if slot is not None else keep_idx
        a = gram[np.ix_(rows, rows)]
        rhs = gram[rows][:, :k] @ wm
        # Ridge towards the plainly pruned weights (intercept towards 0): negligible with
        # many rows, strong with fewer rows than channels (a classifier head sees one
        # pooled row per sample), where the fit would only memorise the calibration set.
        n_rows = float(gram[k, k])
        frac = max(1e-5, 1.0 - n_rows / len(rows))
        lam = frac * float(np.mean(np.diag(a))) + 1e-12
        prior = np.zeros((len(rows), wm.shape[1]))
        prior[:len(keep_idx)] = wm[keep_idx]
        try:
            sol = np.linalg.solve(a + lam * np.eye(len(rows)), rhs + lam * prior)
        except np.linalg.LinAlgError:
            return 0
        dtype = const(w).dtype
        new_w = _put_weight(node, sol[:len(keep_idx)], dtype)
        sink_axis = _sink_axis(node)
        # the other axes of this weight may be pruned too (its own output channels)
        for (vid, axis), m in masks.items():
            if vid == id(w) and axis != sink_axis:
                new_w = np.compress(m, new_w, axis=axis)
        set_constant(w, new_w)
        done.update({(id(w), a) for a in range(new_w.ndim)})
        if slot is not None:
            bias, _ = slot
            b = np.asarray(const(bias), np.float64) + sol[-1]
            bkey = (id(bias), 0)
            if bkey in masks and bkey not in done:
                b = np.compress(masks[bkey], b)
            set_constant(bias, b.astype(const(bias).dtype))
            done.add(bkey)
        return 1

    def _set_split(self, model: Model, node: Node, sizes: list[int]) -> None:
        graph = model.graph
        if "split" in node.attributes or model.opset < 13:
            node.attributes["split"] = sizes
            node._attr_protos.pop("split", None)
            return
        new = graph.add_initializer(np.array(sizes, np.int64), name=(node.name or "split") + "_sizes")
        old = node.input(1)
        if old is None:
            while len(node.inputs) < 1:
                node.append_input(None)
            if len(node.inputs) == 1:
                node.append_input(new)
            else:
                node.set_input(1, new)
            node.attributes.pop("num_outputs", None)
        else:
            node.set_input(1, new)
            if not old.uses and old.is_initializer and not old.is_graph_input:
                graph.remove_initializer(old)


def _out_axis(node: Node) -> int:
    """The output-channel axis of a sink's weight."""
    if node.op_type == "Gemm":
        return 0 if node.attr("transB", 0) else 1
    if node.op_type == "Conv":
        return 0
    return 1


def _sink_axis(node: Node) -> int:
    """The input-channel axis of a sink's weight: the other one of the two."""
    return 1 - _out_axis(node)
