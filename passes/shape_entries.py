"""Partial data propagation for shape arithmetic: the entries of a Shape that a
Gather or Slice picks out. Where the shape analysis knows them, a static entry
becomes a constant even when other dims are symbolic (`Shape(q)[-1]` of q
[batch, heads, seq, 32] is 32), and a named dim is read from the graph input that
carries that name (`Shape(scores)[0]` becomes `Shape(input_ids)[0]`). The second
keeps exporters' run-time reshape targets from holding on to intermediate values,
which would stop fusions (the Shape of an intermediate is an outside reader) and
hide that every layer computes the same target."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Model, Node
from ..ir.shapes import is_unknown_dim, known_shape
from .analysis import get_analysis
from .util import const, is_standard, set_constant


def _picked(user: Node, rank: int) -> tuple[list[int], bool] | None:
    """(indices into the shape vector, whether the result is a scalar) for a Gather
    or Slice with constant parameters reading a Shape of `rank` entries."""
    if not is_standard(user) or user.inputs[0] is None:
        return None
    if user.op_type == "Gather" and user.attr("axis", 0) == 0:
        idx = const(user.input(1))
        if idx is None or idx.ndim > 1 or not ((-rank <= idx) & (idx < rank)).all():
            return None
        return [int(i) % rank for i in np.atleast_1d(idx)], idx.ndim == 0
    if user.op_type == "Slice" and len(user.inputs) >= 3:
        if any(v is not None and const(v) is None for v in user.inputs[1:]):
            return None  # a computed parameter
        starts, ends, axes, steps = (const(user.input(i)) for i in range(1, 5))
        if axes is not None and (len(axes) != 1 or int(axes[0]) not in (0, -1)):
            return None
        if len(starts) != 1:
            return None
        step = int(steps[0]) if steps is not None else 1
        return list(range(rank))[slice(int(starts[0]), int(ends[0]), step)], False
    return None


def _dim_sources(graph: Graph) -> dict[str, tuple]:
    """Named dims of the graph inputs: name -> (input, axis)."""
    sources: dict[str, tuple] = {}
    for value in graph.inputs:
        if value.is_initializer or value.shape is None:
            continue
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, str) and not is_unknown_dim(dim):
                sources.setdefault(dim, (value, axis))
    return sources


def fold_shape_entries(model: Model, graph: Graph) -> tuple[int, int]:
    """Returns (entries made constant, entries now read from a graph input)."""
    if not any(node.op_type == "Shape" for node in graph.nodes):
        return 0, 0  # nothing to read entries from: no shape analysis
    get_analysis(model, "shapes")
    sources = _dim_sources(graph)
    shapes_of: dict[int, object] = {}  # one Shape per graph input, shared by all reads
    for node in graph.nodes:
        if node.op_type == "Shape" and is_standard(node) and not node.attributes and node.inputs[0].is_graph_input:
            shapes_of.setdefault(id(node.inputs[0]), node.outputs[0])
    constant = rerouted = 0
    for node in list(graph.nodes):
        if node.graph is not graph or not is_standard(node) or node.op_type != "Shape" or node.inputs[0].shape is None:
            continue
        x = node.inputs[0]
        rank = len(x.shape)
        start, end = node.attr("start", 0), node.attr("end", rank)
        dims = list(x.shape)[slice(start, end)]
        for user, _ in list(node.outputs[0].uses):
            picked = _picked(user, len(dims))
            if picked is None or not picked[0]:
                continue
            indices, scalar = picked
            entries = [dims[i] for i in indices]
            out = user.outputs[0]
            if all(isinstance(d, int) for d in entries):
                array = np.array(entries, np.int64)
                set_constant(graph, out, array.reshape(()) if scalar else array)
                constant += 1
            elif (len(entries) == 1 and entries[0] in sources and sources[entries[0]][0] is not x
                  and not out.is_graph_output):
                source, axis = sources[entries[0]]
                shape = shapes_of.get(id(source))
                if shape is None:  # the graph inputs come first: any position is after them
                    shape = shapes_of[id(source)] = graph.make_node("Shape", [source], before=graph.nodes[0]).outputs[0]
                index = graph.add_initializer(np.array(axis if scalar else [axis], np.int64), name="dim_index")
                gathered = graph.make_node("Gather", [shape, index], {"axis": 0}, before=user).outputs[0]
                gathered.dtype, gathered.shape = out.dtype, out.shape
                graph.replace_all_uses(out, gathered)
                graph.remove_node(user)
                rerouted += 1
    return constant, rerouted


def _shape_vector(value, depth: int = 0) -> list | None:
    """The entries of a 1-D (or scalar) int shape tensor as ints or named dims,
    when the graph spells them out: constants, Shape, and Gather / Slice /
    Unsqueeze / Squeeze / Concat / Cast of such."""
    array = const(value)
    if array is not None:
        return [int(v) for v in np.asarray(array).reshape(-1)] if array.dtype.kind in "iu" and array.ndim <= 1 else None
    node = value.producer
    if node is None or depth > 12 or not is_standard(node):
        return None
    op = node.op_type
    if op == "Shape":
        shape = node.inputs[0].shape
        if not known_shape(shape):
            return None
        return list(shape)[slice(node.attr("start", 0), node.attr("end", len(shape)))]
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
        return _shape_vector(node.inputs[0], depth + 1)
    if op == "Concat":
        parts = [_shape_vector(v, depth + 1) for v in node.inputs]
        return None if any(p is None for p in parts) else [d for p in parts for d in p]
    if op in ("Mul", "Add") and len(node.inputs) == 2:  # x * 1, x + 0, and ints
        a, b = (_shape_vector(v, depth + 1) for v in node.inputs)
        if a is None or b is None or len(a) != 1 or len(b) != 1:
            return None
        unit = 1 if op == "Mul" else 0
        if isinstance(a[0], int) and isinstance(b[0], int):
            return [a[0] * b[0] if op == "Mul" else a[0] + b[0]]
        return b if a[0] == unit else a if b[0] == unit else None
    if op in ("Gather", "Slice"):
        source = _shape_vector(node.inputs[0], depth + 1)
        picked = _picked(node, len(source)) if source is not None else None
        return None if picked is None else [source[i] for i in picked[0]]
    return None


def reshape_target(src_shape, dims) -> list[int] | None:
    """A constant Reshape target (allowzero=0) giving `dims` from an input of
    `src_shape`: static entries as they are, a named dim at the input's own
    position as 0 (copy it), one other entry as -1; None when that is not enough."""
    if src_shape is None or any(d == 0 for d in src_shape):
        return None  # an empty dim: a 0 entry would copy it, not mean 0
    target = [d if isinstance(d, int) else 0 if i < len(src_shape) and src_shape[i] == d
              and not is_unknown_dim(d) else None for i, d in enumerate(dims)]
    if target.count(None) > 1 or (None in target and -1 in target):
        return None
    return [-1 if d is None else d for d in target]


def constant_reshape_targets(graph: Graph) -> int:
    """A Reshape target computed at run time becomes a constant when each entry is
    static, or the input's own dim at that position (0: copy it), or the one entry
    left (-1). Exporters build `view(x.size(0), -1, 512)` this way."""
    done = 0
    for node in list(graph.nodes):
        if node.op_type != "Reshape" or not is_standard(node) or const(node.input(1)) is not None:
            continue
        x, entries = node.inputs[0], _shape_vector(node.inputs[1])
        target = None if entries is None or node.attr("allowzero", 0) else reshape_target(x.shape, entries)
        if target is None:
            continue
        node.set_input(1, graph.add_initializer(np.array(target, np.int64), name="reshape_target"))
        done += 1
    return done
