"""Shape and dtype inference: onnx's own shape inference first, then onnxruntime's
symbolic shape inference for what onnx leaves open (dims computed at run time:
Shape -> Gather/Slice -> Concat -> Reshape chains, Range, Where/Expand masks,
com.microsoft ops), carrying named dims through. We copy what they infer onto the
values and never guess what they cannot."""
from __future__ import annotations

import os
import tempfile

import onnx

from .model import Model
from .onnx_io import _read_type, save, to_proto_without_weights


def infer_shapes(model: Model) -> int:
    """Fill dtype/shape of values from onnx shape inference (with data propagation).
    Returns how many values gained information."""
    big = sum(v.nbytes for g in model.graph.all_graphs() for v in g.initializers.values()) > 2**31 - 2**24
    if not big:
        proto = to_proto_without_weights(model)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    else:  # over protobuf's 2 GiB limit: onnx infers through files
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "m.onnx")
            save(model, src, external_data=True)
            onnx.shape_inference.infer_shapes_path(src, src, data_prop=True)
            inferred = onnx.load_model(src, load_external_data=False)
    return _apply(model.graph, inferred.graph)


def infer_all_shapes(model: Model) -> int:
    """onnx shape inference, then symbolic inference where dims stay unknown.
    Returns how many values gained information. The symbolic step is best effort:
    where it fails (an op it does not know), onnx's result stands."""
    gained = infer_shapes(model)
    if unknown_shapes(model):
        try:
            gained += infer_shapes_symbolic(model)
        except Exception:  # noqa: BLE001 - onnxruntime's tool raises anything; unknowns are counted
            pass
    return gained


def infer_shapes_symbolic(model: Model) -> int:
    """onnxruntime's symbolic shape inference, for what onnx's cannot do: shapes
    computed at run time (Shape -> Gather -> ... -> Pad) and com.microsoft ops
    (fused Attention, Gelu, ...). Graph inputs need concrete or named dims. Only
    fills dims that onnx left open. Returns how many values gained information;
    raises whatever the tool raises."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = to_proto_without_weights(model)  # shape tensors (< 1 KiB) stay constants
    # Where it cannot infer everything, the tool saves its partial model to
    # ./sym_shape_infer_temp.onnx before raising: it runs in a scratch folder.
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
        finally:
            os.chdir(cwd)
    return _apply(model.graph, inferred.graph, only_better=True)


def is_unknown_dim(dim) -> bool:
    """A dim nobody can name: missing, or one of onnx's invented unk__N."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def known_shape(shape) -> bool:
    """A shape with every dim static or named."""
    return shape is not None and not any(is_unknown_dim(d) for d in shape)


def unknown_shapes(model: Model) -> int:
    """How many node outputs (tensors) have no shape or a dim nobody can name."""
    return sum(1 for g in model.graph.all_graphs() for n in g.nodes for v in n.outputs
               if v.name and v.type_proto is None and not known_shape(v.shape))


def evaluate_shape(shape, sizes: dict[str, int]) -> tuple[int, ...] | None:
    """A shape with the named dims given sizes; dims the symbolic inference wrote as
    expressions ("batch*sequence", "Min(64, sequence)") are evaluated. None when a
    dim stays unknown."""
    if shape is None:
        return None
    out = []
    for dim in shape:
        if isinstance(dim, int):
            out.append(dim)
        elif dim in sizes:
            out.append(int(sizes[dim]))
        elif is_unknown_dim(dim):
            return None
        else:
            try:
                import sympy

                value = sympy.sympify(dim).subs({sympy.Symbol(k): v for k, v in sizes.items()})
            except Exception:  # noqa: BLE001 - a name sympy cannot parse: unknown
                return None
            if not value.is_Integer:
                return None
            out.append(int(value))
    return tuple(out)


def _knows_more(old, new) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    if len(old) != len(new):
        return False
    return sum(not is_unknown_dim(d) for d in new) > sum(not is_unknown_dim(d) for d in old)


def _apply(graph, proto_graph, only_better: bool = False) -> int:
    infos = {vi.name: vi.type for vi in list(proto_graph.value_info) + list(proto_graph.output)}
    gained = 0
    for node in graph.nodes:
        if only_better and node.op_type in ("If", "Loop", "Scan"):
            continue  # where onnx could not merge the branches' shapes, the symbolic tool picks one
        for value in node.outputs:
            type_proto = infos.get(value.name)
            if type_proto is None or not value.name:
                continue
            before = (value.dtype, value.shape, value.type_proto)
            _read_type(value, type_proto)
            if value.shape is None and before[1] is not None:
                value.shape = before[1]
            if only_better and not _knows_more(before[1], value.shape):
                value.shape = before[1]
            gained += (value.dtype, value.shape, value.type_proto) != before
    for node, node_proto in zip(graph.nodes, proto_graph.node):  # export keeps node order
        for attr in node_proto.attribute:
            sub = node.attributes.get(attr.name)
            if attr.type == onnx.AttributeProto.GRAPH and hasattr(sub, "nodes"):
                gained += _apply(sub, attr.g, only_better)
    return gained
