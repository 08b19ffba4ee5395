"""Shape and dtype inference: onnx's own shape inference first, then onnxruntime's
symbolic shape inference for what onnx leaves open (dims computed at run time:
Shape -> Gather/Slice -> Concat -> Reshape chains, Range, Where/Expand masks,
com.microsoft ops), carrying named dims through. We copy what they infer onto the
values and never guess what they cannot."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from .graph import outer_reads
from .model import Model
from .onnx_io import save, to_proto_without_weights
from .shape_update import infer_changed, nodes_model, stamps, take_inferred


def infer_shapes(model: Model) -> int:
    """Fill dtype/shape of values from onnx shape inference (with data propagation).
    Returns how many values gained information. Where model.shape_stamps says what
    the last run saw (kept by passes that preserve values), only what changed since
    is inferred again."""
    if model.shape_stamps is not None:
        gained = infer_changed(model, model.shape_stamps)
        if gained is not None:
            return gained
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
    gained = _apply(model.graph, inferred.graph)
    model.shape_stamps = stamps(model)
    return gained


def infer_all_shapes(model: Model, symbolic: str = "always") -> int:
    """onnx shape inference, then symbolic inference where dims stay unknown.
    Returns how many values gained information. The symbolic step is best effort:
    where it stops (an op it does not know), what it inferred up to there stands.
    symbolic="auto" runs it only for values whose unknown dims can matter to a
    rewrite (see _symbolic_targets): on conv nets with symbolic image sizes the
    whole-graph step is most of the time -O2 takes and changes nothing."""
    gained = infer_shapes(model)
    targets = _symbolic_targets(model, everywhere=symbolic != "auto")
    # The symbolic tool (the slow part) runs again only for values it has not been
    # asked about, or when the inputs' shapes changed: a pass that changed nothing
    # near them cannot help it.
    inputs = tuple((v.name, v.shape) for v in model.graph.inputs)
    seen_inputs, seen = model.symbolic_asked
    asked = frozenset(v.name for v in targets)
    if asked and (inputs != seen_inputs or not asked <= seen):
        try:
            gained += infer_shapes_symbolic(model, targets)
        except Exception:  # noqa: BLE001 - onnxruntime's tool raises anything; unknowns are counted
            pass
        if model.shape_stamps is not None:  # its dims changed values the stamps describe
            model.shape_stamps = stamps(model)
        model.symbolic_asked = (inputs, asked | (seen if inputs == seen_inputs else frozenset()))
    return gained


# Ops whose rewrites never read their inputs' dims: unknown (spatial) dims that only
# flow through these cannot change what the passes do. Shape readers, layout ops
# (Reshape, Transpose, Slice, Expand, ...), MatMul/Gemm, Softmax and the
# normalizations fusions match are not here.
_DIM_BLIND = frozenset({
    "Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "LRN",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Mish", "Clip", "Exp", "Log", "Sqrt", "Erf", "Abs", "Neg",
    "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos", "Identity", "Dropout",
    "Resize", "Upsample", "Concat", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean",
    "Cast", "DynamicQuantizeLinear", "ConvInteger",
})


def _symbolic_targets(model: Model, everywhere: bool) -> list:
    """Values with unknown dims for the symbolic step: all of them (everywhere), or
    those read by a node outside _DIM_BLIND."""
    found: dict[int, object] = {}
    for graph in model.graph.all_graphs():
        for node in graph.nodes:
            if everywhere:
                values = node.outputs
            elif node.op_type in _DIM_BLIND and node.domain in ("", "ai.onnx") and not node.subgraphs():
                continue
            else:
                values = node.inputs
            for value in values:
                if (value is not None and value.name and value.producer is not None
                        and value.type_proto is None and not known_shape(value.shape)):
                    found[id(value)] = value
    return list(found.values())


def infer_shapes_symbolic(model: Model, targets=None) -> int:
    """onnxruntime's symbolic shape inference, for what onnx's cannot do: shapes
    computed at run time (Shape -> Gather -> ... -> Pad) and com.microsoft ops
    (fused Attention, Gelu, ...), plus the rules in _EXTRA_RULES for ops it lacks.
    Graph inputs need concrete or named dims. Only fills dims that onnx left open.
    With `targets` (values), the tool sees only the nodes their dims depend on (see
    _nodes_for), else the whole graph. Where the tool stops at a node it cannot
    infer, the shapes it found before that node are kept (its own entry point
    discards them all). Returns how many values gained information; raises whatever
    the tool raises."""
    if targets is None:
        proto = to_proto_without_weights(model)  # shape tensors (< 1 KiB) stay constants
        return _apply(model.graph, _run_symbolic_tool(proto).graph, only_better=True)
    nodes = _nodes_for(targets)
    if not nodes:
        return 0
    inferred = _run_symbolic_tool(nodes_model(model, nodes, _reads)).graph
    infos = {vi.name: vi.type for vi in list(inferred.value_info) + list(inferred.output)}
    return sum(take_inferred(value, infos[value.name], _merge)
               for node in nodes if not node.subgraphs()  # as in _apply: the tool picks one branch's shape
               for value in node.outputs if value.name in infos)


_INTS = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _nodes_for(targets) -> list:
    """The nodes the targets' dims depend on, producers first: each target's
    producer, and back through the inputs whose dims are unknown or whose data the
    tool reads (_shape_data), stopping at values whose dims are all known (they
    enter as graph inputs). A node with subgraphs (If/Loop: the tool infers its
    outputs through its bodies) comes whole, with what its bodies read from outside
    as inputs; nodes inside it are not repeated."""
    order: list = []
    expanded: set[int] = set()
    stack = [(value.producer, False) for value in targets]
    while stack:
        node, finished = stack.pop()
        if finished:
            order.append(node)
            continue
        if id(node) in expanded:
            continue
        expanded.add(id(node))
        stack.append((node, True))
        for value in _reads(node):
            if value is None or value.producer is None or value.const_value() is not None:
                continue
            if _shape_data(value) or not known_shape(value.shape):
                stack.append((value.producer, False))
    inside = {id(inner) for node in order for sub in node.subgraphs() for inner in sub.all_nodes()}
    return [node for node in order if id(node) not in inside]


def _reads(node) -> list:
    return list(node.inputs) + outer_reads(node) if node.subgraphs() else list(node.inputs)


def _shape_data(value) -> bool:
    """A value the tool may read as data: shapes, pads, axes, masks of shape entries,
    scales (rank 0, a few elements, as in the [-1, 2] pads Reshape/Transpose of
    PyTorch's F.pad, or integers of rank 1)."""
    shape = value.shape
    if shape is None or len(shape) == 0 or (len(shape) == 1 and value.dtype in _INTS):
        return True
    return all(type(d) is int for d in shape) and int(np.prod(shape)) <= 64


def _run_symbolic_tool(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The tool's own loop (SymbolicShapeInference.infer_shapes) with our rules added
    and its partial result kept. Its internals have been stable across onnxruntime
    releases; if they change, its public entry point (all or nothing) is used."""
    from onnxruntime.tools import symbolic_shape_infer as ssi

    tool = ssi.SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_rank, verbose
    internals = ("dispatcher_", "_preprocess", "_infer_impl", "_update_output_from_vi", "run_",
                 "_update_computed_dims", "suggested_merge_", "symbolic_dims_")
    if not all(hasattr(tool, name) for name in internals):
        return _public_symbolic_tool(proto)
    rules = tool.dispatcher_
    for op, rule in _EXTRA_RULES.items():
        rules.setdefault(op, lambda node, rule=rule: rule(tool, node))
    for op, rule in _REPLACED_RULES.items():
        if op in rules:
            rules[op] = lambda node, rule=rule, own=rules[op]: rule(tool, node, own)
    for op, rule in rules.items():
        rules[op] = lambda node, rule=rule: _guarded(tool, node, rule)
    printer, ssi.get_shape_from_sympy_shape = ssi.get_shape_from_sympy_shape, _print_each_dim_once(tool, ssi)
    try:
        tool._preprocess(proto)
        while tool.run_:
            tool._infer_impl()
    except Exception:  # noqa: BLE001 - outside a rule (its merging asserts): what it inferred so far stands
        pass
    finally:
        ssi.get_shape_from_sympy_shape = printer
    tool._update_output_from_vi()
    return tool.out_mp_


def _print_each_dim_once(tool, ssi):
    """The tool prints every computed dim (a sympy expression) three times per node,
    and sympy's printer dominates its run time on deep conv nets (0.6 s of 0.8 on
    PP-OCRv4 det): the same two steps with each distinct expression printed once.
    Replaces the tool's _update_computed_dims; returns the stand-in for the module's
    get_shape_from_sympy_shape."""
    import functools

    text = functools.lru_cache(maxsize=None)(str)

    def update_computed_dims(shape):  # the tool's _update_computed_dims
        for i, dim in enumerate(shape):
            if ssi.is_literal(dim) or isinstance(dim, str):
                continue
            name = text(dim)
            if name not in tool.suggested_merge_:
                tool.symbolic_dims_.setdefault(name, dim)
            elif not ssi.is_literal(tool.suggested_merge_[name]):
                shape[i] = tool.symbolic_dims_[tool.suggested_merge_[name]]

    tool._update_computed_dims = update_computed_dims
    return lambda shape: [None if d is None else int(d) if ssi.is_literal(d) else text(d) for d in shape]


def _guarded(tool, node, rule) -> None:
    """One of the tool's rules; where it raises (its asserts meet forms it did not
    expect, e.g. a Concat of shape values along axis 1), the node's outputs get
    onnx's static dims and fresh names for the rest, and inference goes on past it
    instead of stopping there."""
    from onnxruntime.tools.symbolic_shape_infer import get_shape_from_sympy_shape

    try:
        rule(node)
    except Exception:  # noqa: BLE001 - any failure of the tool's rule: the node's dims become names
        for index, name in enumerate(node.output):
            info = tool.known_vi_.get(name)
            if not name or info is None or not info.type.tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else tool._new_symbolic_dim_from_output(node, index, axis)
                    for axis, d in enumerate(info.type.tensor_type.shape.dim)]
            info.CopyFrom(onnx.helper.make_tensor_value_info(name, info.type.tensor_type.elem_type,
                                                             get_shape_from_sympy_shape(dims)))


def _public_symbolic_tool(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # Where it cannot infer everything, the tool saves its partial model to
    # ./sym_shape_infer_temp.onnx before raising: it runs in a scratch folder.
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
        finally:
            os.chdir(cwd)


def _set_outputs(tool, node, dtype: int, shapes) -> None:
    for name, shape in zip(node.output, shapes):
        if name:
            tool.known_vi_[name].CopyFrom(onnx.helper.make_tensor_value_info(name, dtype, shape))


def _dynamic_quantize_lstm(tool, node) -> None:
    """com.microsoft DynamicQuantizeLSTM: an LSTM's outputs (layout 0: X is [seq, batch, in])."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    seq, batch = tool._get_shape(node, 0)[:2]
    dirs = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
    hidden = attrs["hidden_size"]
    _set_outputs(tool, node, onnx.TensorProto.FLOAT,
                 ([seq, dirs, batch, hidden], [dirs, batch, hidden], [dirs, batch, hidden]))


def _resize_by_scales(tool, node, own=None) -> None:
    """Resize/Upsample with constant scales: floor(dim * scale) per axis. The tool's
    own rule runs sympy.simplify on every dim, which takes seconds per node once a
    feature pyramid has nested floor expressions (16 s on PP-OCRv4 det); with the
    scales as exact rationals, floor of an integer multiple simplifies by itself.
    Other forms (sizes, tf_crop_and_resize) go to the tool's rule; Upsample, which
    the tool lacks, gets fresh dim names where its scales are not constant."""
    import sympy
    from onnxruntime.tools.symbolic_shape_infer import get_opset, get_shape_from_sympy_shape

    old = get_opset(tool.out_mp_) <= 10 or node.op_type == "Upsample"
    scales = tool._try_get_value(node, 1 if old else 2)
    sizes = None if old or len(node.input) < 4 else tool._try_get_value(node, 3)
    mode = next((a.s for a in node.attribute if a.name == "coordinate_transformation_mode"), b"")
    if scales is not None and sizes is None and mode != b"tf_crop_and_resize":
        shape = [sympy.floor(d * sympy.Rational(repr(float(s))))
                 for d, s in zip(tool._get_sympy_shape(node, 0), scales)]
        tool._update_computed_dims(shape)
    elif own is not None:
        return own(node)
    else:
        shape = tool._new_symbolic_shape(tool._get_shape_rank(node, 0), node)
    _set_outputs(tool, node, tool.known_vi_[node.input[0]].type.tensor_type.elem_type,
                 [get_shape_from_sympy_shape(shape)])


def _slice_unsimplified(tool, node, own) -> None:
    """The tool's Slice rule without its sympy.simplify of each sliced dim: on a dim
    that is already a floor expression (an STFT's frame count) one call takes
    10-110 ms and returns it unchanged; sympy keeps the rule's sums canonical
    itself. A dim left in another form can only hide that two dims are equal."""
    import sympy

    simplify, sympy.simplify = sympy.simplify, lambda expr, *args, **kwargs: expr
    try:
        own(node)
    finally:
        sympy.simplify = simplify


# Rules of the tool replaced by our own (op type: rule(tool, node, its own rule)).
_REPLACED_RULES = {"Resize": _resize_by_scales, "Slice": _slice_unsimplified}

# Ops onnxforge reads that onnxruntime's symbolic tool has no rule for (op type: rule(tool, node)).
_EXTRA_RULES = {
    "DynamicQuantizeLSTM": _dynamic_quantize_lstm,
    "ConvInteger": lambda tool, node: tool._infer_Conv(node),  # Conv's shape rule, int32 out
    "Upsample": _resize_by_scales,
    # the standard op (opset 23) and onnxforge's model-local function below that: X's shape
    "RMSNormalization": lambda tool, node: tool._pass_on_shape_and_type(node),
}


def is_unknown_dim(dim) -> bool:
    """A dim nobody can name: missing, or one of onnx's invented unk__N."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def known_shape(shape) -> bool:
    """A shape with every dim static or named."""
    return shape is not None and not any(is_unknown_dim(d) for d in shape)


def unknown_shapes(model: Model) -> int:
    """How many node outputs (tensors) have no shape or a dim nobody can name."""
    return len(_unknown_names(model))


def _unknown_names(model: Model) -> frozenset[str]:
    return frozenset(v.name for g in model.graph.all_graphs() for n in g.nodes for v in n.outputs
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


def _merge(old, new):
    """The symbolic tool's shape where it knows more, dim by dim; a static dim from
    onnx stays (for an op it has no rule for, the tool names every dim anew, and a
    batch of 1 would become a name)."""
    if new is None or old is None:
        return old if new is None else new
    if len(old) != len(new):
        return old
    return tuple(o if isinstance(o, int) or is_unknown_dim(n) else n for o, n in zip(old, new))


def _apply(graph, proto_graph, only_better: bool = False) -> int:
    infos = {vi.name: vi.type for vi in list(proto_graph.value_info) + list(proto_graph.output)}
    combine = _merge if only_better else (lambda old, new: old if new is None else new)
    gained = 0
    for node in graph.nodes:
        if only_better and node.op_type in ("If", "Loop", "Scan"):
            continue  # where onnx could not merge the branches' shapes, the symbolic tool picks one
        gained += sum(take_inferred(value, infos[value.name], combine)
                      for value in node.outputs if value.name and value.name in infos)
    for node, node_proto in zip(graph.nodes, proto_graph.node):  # export keeps node order
        for attr in node_proto.attribute:
            sub = node.attributes.get(attr.name)
            if attr.type == onnx.AttributeProto.GRAPH and hasattr(sub, "nodes"):
                gained += _apply(sub, attr.g, only_better)
    return gained
