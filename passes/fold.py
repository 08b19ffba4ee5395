"""fold-constants: evaluate every node whose inputs are all constant, with
onnxruntime (one session for the whole constant subgraph) and onnx's reference
evaluator as the fallback; no hand-written op semantics. Shape/Size of values with
static shapes, and the static entries of other shapes (passes/shape_entries.py),
become constants first, so Shape->Gather->Concat->Reshape chains fold. A size cap
keeps folding from blowing the model up (Expand, Tile, ...), except for weights
that a model computes from constants."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx
from onnx import helper

from ..ir import Graph, Model, Node, Value
from .analysis import get_analysis
from .base import Pass, PassResult
from .check import ort_session
from .constants import constants_to_initializers
from .registry import register_pass
from .shape_entries import constant_reshape_targets, fold_shape_entries
from .util import NONDETERMINISTIC, is_standard, remove_dead, set_constant

# Ops whose output is not a function of constant input data alone, or that we
# never want to materialise. DequantizeLinear of a constant is a quantized weight:
# folding it would store the weight as fp32 again and undo the quantization.
_NEVER = NONDETERMINISTIC | {"Constant", "If", "Loop", "Scan", "SequenceConstruct", "Optional", "DequantizeLinear"}


@dataclasses.dataclass
class FoldOptions:
    # A folded tensor may be at most this many bytes, or as big as its inputs.
    max_bytes: int = 1 << 20
    # Fold Shape/Size of values whose shape is known statically.
    shapes: bool = True
    # Upper bound on fold / shape-inference rounds.
    max_rounds: int = 32


def _shape_constants(model: Model, graph: Graph) -> int:
    """Shape(x) / Size(x) of a statically shaped x -> constant."""
    readers = [node for node in graph.nodes if node.op_type in ("Shape", "Size") and is_standard(node)]
    if not readers:
        return 0  # no shape analysis for nothing (the first one infers the whole graph)
    get_analysis(model, "shapes")
    folded = 0
    for node in readers:
        src = node.inputs[0]
        if not src.is_static_shape() or src.type_proto is not None:
            continue
        if node.op_type == "Size":
            array = np.array(int(np.prod(src.shape, dtype=np.int64)), dtype=np.int64)
        else:
            dims = list(src.shape)
            start, end = node.attr("start", 0), node.attr("end", len(dims))
            array = np.array(dims[slice(start, end)], dtype=np.int64)
        set_constant(graph, node.outputs[0], array)
        folded += 1
    return folded


def _foldable(graph: Graph) -> list[Node]:
    """Nodes whose inputs are constants or outputs of other foldable nodes."""
    constant: set[int] = {id(v) for v in graph.initializers.values() if not v.is_graph_input}
    chosen: list[Node] = []
    for node in graph.nodes:
        if not is_standard(node) or node.op_type in _NEVER or node.subgraphs():
            continue
        if any(v.type_proto is not None for v in node.outputs):
            continue  # sequences / optionals: keep
        reads = [v for v in node.inputs if v is not None]
        if not reads and node.op_type not in ("ConstantOfShape", "Range", "EyeLike"):
            continue
        if all(id(v) in constant for v in reads):
            chosen.append(node)
            constant.update(id(v) for v in node.outputs if v.name)
    return chosen


def _mini_model(model: Model, nodes: list[Node], known: dict[int, np.ndarray]) -> tuple[onnx.ModelProto, list[Value]]:
    """A model holding just `nodes`, their constant inputs (from the graph or from
    `known` results), and all their outputs."""
    from ..ir.onnx_io import _export_node

    inner = {id(v) for n in nodes for v in n.outputs}
    outputs = [v for n in nodes for v in n.outputs if v.name]
    proto = onnx.ModelProto(ir_version=model.ir_version)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    proto.graph.name = "fold"
    seen: set[int] = set()
    for n in nodes:
        for v in n.inputs:
            if v is not None and id(v) not in inner and id(v) not in seen:
                seen.add(id(v))
                array = known[id(v)] if id(v) in known else v.const_value()
                proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), v.name))
    proto.graph.node.extend(_export_node(n) for n in nodes)
    proto.graph.output.extend(onnx.ValueInfoProto(name=v.name) for v in outputs)
    return proto, outputs


def _typed_outputs(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime needs output types; take them from onnx shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        return None
    types = {vi.name: vi.type for vi in inferred.graph.value_info}
    for out in proto.graph.output:
        if out.name not in types or not types[out.name].tensor_type.elem_type:
            return None
        out.type.CopyFrom(types[out.name])
    return proto


def _run_ort(proto: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray] | None:
    typed = _typed_outputs(proto)
    if typed is None:
        return None
    try:
        return dict(zip(names, ort_session(typed).run(names, {})))
    except Exception:
        return None


def _run_reference(proto: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = ReferenceEvaluator(proto).run(names, {})
        return {n: np.asarray(r) for n, r in zip(names, results)}
    except Exception:
        return None


def _evaluate(model: Model, nodes: list[Node]) -> dict[int, np.ndarray]:
    """id(value) -> array for every output we could compute."""
    if not nodes:
        return {}
    proto, outputs = _mini_model(model, nodes, {})
    names = [v.name for v in outputs]
    result = _run_ort(proto, names)
    if result is not None:
        return {id(v): result[v.name] for v in outputs}
    # Batch failed (an op onnxruntime lacks, a type it cannot take): node by node.
    values: dict[int, np.ndarray] = {}
    for node in nodes:
        if not all(v is None or id(v) in values or v.const_value() is not None for v in node.inputs):
            continue  # an upstream node could not be evaluated
        single, outs = _mini_model(model, [node], values)
        names = [v.name for v in outs]
        res = _run_ort(single, names) or _run_reference(single, names)
        if res is not None:
            values.update({id(v): res[v.name] for v in outs})
    return values


def _nbytes(value: Value, values: dict[int, np.ndarray]) -> int:
    return int(values[id(value)].nbytes) if id(value) in values else value.nbytes


# Input slots that hold a layer's parameters: a constant computed there (weights a
# model builds with ConstantOfShape, as onnx's light zoo models do) is a weight,
# whatever its size, and folding it lets the layer fusions see it.
_WEIGHT_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                 "BatchNormalization": (1, 2, 3, 4), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2)}


def _only_weights(value: Value, folded: set[int]) -> bool:
    """Every reader that stays reads `value` as a parameter."""
    return not value.is_graph_output and all(
        id(user) in folded or (is_standard(user) and index in _WEIGHT_SLOTS.get(user.op_type, ()))
        for user, index in value.uses)


def _fold_graph(model: Model, graph: Graph, options: FoldOptions, stats: dict[str, int]) -> None:
    for node in graph.nodes:
        for sub in node.subgraphs():
            _fold_graph(model, sub, options, stats)
    if options.shapes and graph is model.graph:
        n = _shape_constants(model, graph)
        if n:
            stats["shapes"] = stats.get("shapes", 0) + n
        entries, rerouted = fold_shape_entries(model, graph)
        if entries:
            stats["shape_entries"] = stats.get("shape_entries", 0) + entries
        if rerouted:
            stats["dims_from_inputs"] = stats.get("dims_from_inputs", 0) + rerouted
        targets = constant_reshape_targets(graph)
        if targets:
            stats["reshape_targets"] = stats.get("reshape_targets", 0) + targets
    nodes = _foldable(graph)
    values = _evaluate(model, nodes)
    folded = {id(n) for n in nodes if all(id(v) in values for v in n.outputs if v.name)}
    # Frontier: folded values read by nodes that stay, or graph outputs. Apply the cap
    # there, un-folding producers whose result would be too big (their inputs become
    # the frontier instead).
    while True:
        too_big = []
        for n in nodes:
            if id(n) not in folded:
                continue
            limit = max(options.max_bytes, sum(_nbytes(v, values) for v in n.inputs if v is not None))
            for v in n.outputs:
                needed = v.is_graph_output or any(id(u) not in folded for u, _ in v.uses)
                if needed and v.name and values[id(v)].nbytes > limit and not _only_weights(v, folded):
                    too_big.append(n)
                    break
        if not too_big:
            break
        for n in too_big:
            folded.discard(id(n))
    count = 0
    for n in nodes:
        if id(n) not in folded:
            continue
        for v in n.outputs:
            if v.name and (v.is_graph_output or any(id(u) not in folded for u, _ in v.uses)):
                array = values[id(v)]
                if v.dtype is not None and v.dtype != helper.np_dtype_to_tensor_dtype(array.dtype):
                    array = array.astype(helper.tensor_dtype_to_np_dtype(v.dtype))
                set_constant(graph, v, array)
        count += 1
    if count:
        stats["nodes"] = stats.get("nodes", 0) + count
    remove_dead(graph)


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate constant subgraphs (onnxruntime, reference evaluator fallback), fold
    Shape/Size of static shapes, turn Constant nodes into initializers."""

    Options = FoldOptions
    preserves = frozenset({"values"})

    def run(self, model) -> PassResult:
        stats: dict[str, int] = {}
        moved = constants_to_initializers(model.graph)
        if moved:
            stats["constants_moved"] = moved
        # Folding a shape computation can make the next layer's shapes static, which
        # lets its own Shape nodes fold: iterate to the fixed point.
        for rounds in range(1, self.options.max_rounds + 1):  # noqa: B007 - read after the loop
            before = dict(stats)
            _fold_graph(model, model.graph, self.options, stats)
            if stats == before:
                break
            model.analyses.pop("shapes", None)  # shapes changed: infer again
        stats["rounds"] = rounds
        return PassResult(len(stats) > 1, stats)
