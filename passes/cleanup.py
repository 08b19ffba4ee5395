"""cleanup: remove what does nothing. Dead nodes, unused initializers, Identity,
inference-mode Dropout, no-op Reshape/Transpose/Cast/Expand/Pad/Concat, chains of
Reshapes or Transposes collapsed into one, a Slice of a Slice along other axes
merged into one, and zero padding moved into the Conv that follows it."""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ir.shapes import is_unknown_dim, known_shape
from .analysis import get_analysis
from .base import Pass, PassResult
from .registry import register_pass
from .shape_entries import reshape_target
from .util import bypass, const, is_standard, remove_dead


def _same_shape(a, b) -> bool:
    """Equal shapes, known in every dim: static, or the same named dims (the shape
    analysis names a dim after where it comes from, so equal names are equal sizes)."""
    return known_shape(a.shape) and b.shape is not None and tuple(a.shape) == tuple(b.shape)


class _Cleaner:
    def __init__(self, model):
        self.model = model
        self.stats: dict[str, int] = {}

    def count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def shapes(self) -> None:
        get_analysis(self.model, "shapes")

    def graph(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.graph is not graph:  # removed earlier in this sweep
                continue
            for sub in node.subgraphs():
                changed |= self.graph(sub)
            if is_standard(node):
                rule = getattr(self, "rule_" + node.op_type, None)
                if rule is not None and rule(graph, node):
                    self.count(node.op_type.lower())
                    changed = True
        dead = remove_dead(graph)
        if dead:
            self.stats["dead"] = self.stats.get("dead", 0) + dead
        return changed or dead > 0

    # -- rules: return True when the node was removed or rewired -------------
    def rule_Identity(self, graph, node) -> bool:
        return bypass(graph, node, node.inputs[0])

    def rule_Dropout(self, graph, node) -> bool:
        training = node.input(2)
        if training is not None:
            flag = const(training)
            if flag is None or bool(np.asarray(flag).item()):
                return False
        if node.attr("is_test", 1) == 0 and self.model.opset < 7:
            return False
        return bypass(graph, node, node.inputs[0])

    def rule_Cast(self, graph, node) -> bool:
        src = node.inputs[0]
        return src.dtype is not None and src.dtype == node.attr("to") and bypass(graph, node, src)

    def rule_Transpose(self, graph, node) -> bool:
        perm = node.attr("perm")
        src = node.inputs[0]
        if perm is not None and list(perm) == sorted(perm):
            return bypass(graph, node, src)
        if perm is not None and self._moves_only_unit_axes(node, perm):
            return True
        inner = src.producer
        if perm is not None and inner is not None and inner.op_type == "Transpose" and is_standard(inner) and inner.attr("perm") is not None:
            first = inner.attr("perm")
            composed = [first[p] for p in perm]
            node.set_input(0, inner.inputs[0])
            node.attributes["perm"] = composed
            if composed == sorted(composed):
                bypass(graph, node, inner.inputs[0])
            return True
        return False

    def _moves_only_unit_axes(self, node, perm) -> bool:
        """A Transpose that moves only size-1 axes keeps the data order: it becomes a
        Reshape (which then merges with its Reshape neighbours)."""
        src, out = node.inputs[0], node.outputs[0]
        if src.shape is None or out.shape is None:
            self.shapes()
        if not known_shape(src.shape) or out.shape is None:
            return False
        moved = [p for p in perm if src.shape[p] != 1]
        target = reshape_target(src.shape, out.shape) if moved == sorted(moved) else None
        if target is None:
            return False
        shape = node.graph.add_initializer(np.array(target, np.int64), name="transpose_as_reshape")
        reshape = node.graph.make_node("Reshape", [src, shape], before=node).outputs[0]
        reshape.dtype, reshape.shape = out.dtype, out.shape
        if not bypass(node.graph, node, reshape):
            node.graph.remove_node(reshape.producer)
            return False
        return True

    def _zeros_copy_the_same(self, first, middle, target) -> bool:
        """Target entries 0 (copy the dim) read the same size from `first` as from `middle`."""
        zeros = [i for i, t in enumerate(np.asarray(target).tolist()) if t == 0]
        if not zeros:
            return True
        self.shapes()
        a, b = first.shape, middle.shape
        return (a is not None and b is not None and all(
            i < len(a) and i < len(b) and a[i] == b[i] and not is_unknown_dim(a[i]) for i in zeros))

    def rule_Reshape(self, graph, node) -> bool:
        src, shape = node.inputs[0], node.input(1)
        inner = src.producer
        target = const(shape)
        if (inner is not None and inner.op_type == "Reshape" and is_standard(inner) and target is not None
                and (node.attr("allowzero", 0) == 1 or self._zeros_copy_the_same(inner.inputs[0], src, target))):
            node.set_input(0, inner.inputs[0])  # the second reshape fixes every dim itself
            return True
        self.shapes()
        out = node.outputs[0]
        if (inner is not None and inner.op_type == "Reshape" and is_standard(inner) and target is not None
                and not node.attr("allowzero", 0)):
            # its 0 entries copy dims the first reshape moved: a target for the first's input
            direct = reshape_target(inner.inputs[0].shape, out.shape) if out.shape is not None else None
            if direct is not None:
                node.set_inputs([inner.inputs[0], graph.add_initializer(np.array(direct, np.int64), name="reshape_target")])
                return True
        return _same_shape(src, out) and bypass(graph, node, src)

    def rule_Expand(self, graph, node) -> bool:
        self.shapes()
        return _same_shape(node.inputs[0], node.outputs[0]) and bypass(graph, node, node.inputs[0])

    def rule_Pad(self, graph, node) -> bool:
        pads = const(node.input(1)) if self.model.opset >= 11 else node.attr("pads")
        if pads is None:
            return False
        if not np.asarray(pads).any():
            return bypass(graph, node, node.inputs[0])
        return self._pad_into_conv(graph, node, np.asarray(pads, dtype=np.int64))

    def _pad_into_conv(self, graph, node, pads) -> bool:
        """Zero constant padding of the spatial dims before a Conv becomes the Conv's
        own pads (what onnxsim/onnxoptimizer do too)."""
        out = node.outputs[0]
        if out.is_graph_output or len(out.uses) != 1:
            return False
        conv, index = out.uses[0]
        if conv.op_type != "Conv" or not is_standard(conv) or index != 0 or conv.attr("auto_pad", "NOTSET") != "NOTSET":
            return False
        if node.attr("mode", "constant") != "constant" or node.input(3) is not None:
            return False
        fill = const(node.input(2)) if node.input(2) is not None else node.attr("value", 0.0)
        if fill is None or np.asarray(fill).any():
            return False
        rank = len(pads) // 2
        begin, end = pads[:rank], pads[rank:]
        if (pads < 0).any() or begin[:2].any() or end[:2].any():
            return False  # negative (cropping) or padding batch/channels: not expressible
        spatial = rank - 2
        current = conv.attr("pads", [0] * (2 * spatial))
        conv.attributes["pads"] = [int(c + p) for c, p in zip(current, list(begin[2:]) + list(end[2:]))]
        conv.set_input(0, node.inputs[0])
        return True

    def _slice_params(self, node):
        """(starts, ends, axes >= 0, steps) of a Slice whose parameters are constants, else None."""
        if self.model.opset < 10 or node.input(1) is None or node.input(2) is None:
            return None
        starts, ends = const(node.input(1)), const(node.input(2))
        axes = const(node.input(3)) if node.input(3) is not None else np.arange(np.size(starts))
        steps = const(node.input(4)) if node.input(4) is not None else np.ones(np.size(starts), np.int64)
        if any(p is None for p in (starts, ends, axes, steps)):
            return None
        params = [np.asarray(p, np.int64).reshape(-1) for p in (starts, ends, axes, steps)]
        if (params[2] < 0).any():
            self.shapes()
            shape = node.inputs[0].shape
            if shape is None:
                return None
            params[2] = np.where(params[2] < 0, params[2] + len(shape), params[2])
        return params

    def rule_Slice(self, graph, node) -> bool:
        """A Slice of a Slice along other axes: one Slice with both sets of parameters."""
        inner = node.inputs[0].producer
        if inner is None or inner.op_type != "Slice" or not is_standard(inner):
            return False
        outer_params, inner_params = self._slice_params(node), self._slice_params(inner)
        if outer_params is None or inner_params is None or set(outer_params[2]) & set(inner_params[2]):
            return False
        merged = [np.concatenate([a, b]) for a, b in zip(inner_params, outer_params)]
        names = ("slice_starts", "slice_ends", "slice_axes", "slice_steps")
        node.set_inputs([inner.inputs[0], *(graph.add_initializer(p, name=n) for p, n in zip(merged, names))])
        return True

    def rule_Concat(self, graph, node) -> bool:
        real = [v for v in node.inputs if v is not None]
        return len(real) == 1 and len(node.inputs) == 1 and bypass(graph, node, real[0])


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove dead nodes, unused initializers, Identity, inference Dropout, no-op
    Reshape/Transpose/Cast/Expand/Pad/Concat; collapse Reshape and Transpose chains
    and Slices of Slices; fold zero Pad into the following Conv."""

    preserves = frozenset({"values"})  # removes or bypasses nodes; what stays means the same

    def run(self, model) -> PassResult:
        cleaner = _Cleaner(model)
        changed = False
        for _ in range(8):  # rules can expose more work; a few sweeps reach the fixed point
            if not cleaner.graph(model.graph):
                break
            changed = True
        return PassResult(changed, cleaner.stats)
