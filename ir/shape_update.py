"""Incremental onnx shape inference: after passes that keep the meaning of every
value they leave (cleanup, folding, fusion: model.shape_stamps is then kept), only
the nodes whose outputs can change are inferred again, in a model of those nodes
alone, instead of exporting and inferring the whole graph after every pass.

A node is inferred again when one of its outputs is new or untyped, or when an
input changed (a new value, one whose shape was refined, integer data that became
constant) and its outputs are not all static (integer inputs count even then: they
are shape data). Integer inputs bring the nodes that compute them along (Shape ->
Gather -> Concat chains), so onnx's data propagation sees the values it would see in
the whole graph. A refined output sends its readers round again. What this does not
cover (changed graph inputs or weights, changed nodes with subgraphs or inside
them) falls back to the full run."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx.numpy_helper

from .model import Model
from .onnx_io import _export_node, _read_type, _tensor_proto, _value_info

_SMALL = 1024  # constants below this many bytes go in as initializers (data propagation reads them)
_INTS = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_FRESH = itertools.count()  # unknown dims named here: unk__u0, unk__u1, ... (never reused)
_MAX_ROUNDS = 16  # then a full run


def stamp(value) -> tuple:
    """What inference of a consumer reads from a value: its type, and for integer
    values whether they are constant and their data (onnx propagates shape data)."""
    data = None
    if value.dtype in _INTS:
        array = value.const_value()
        data = () if array is None else array.tobytes() if array.nbytes < _SMALL else b""
    return value.dtype, value.shape, value.type_proto is not None, data


def stamps(model: Model) -> dict[str, tuple]:
    found: dict[str, tuple] = {}
    for graph in model.graph.all_graphs():
        found.update((v.name, stamp(v)) for v in graph.inputs)
        found.update((v.name, stamp(v)) for v in graph.initializers.values())
        for node in graph.nodes:
            found.update((v.name, stamp(v)) for v in node.outputs if v.name)
    return found


def infer_changed(model: Model, known: dict[str, tuple]) -> int | None:
    """Infer what changed since `known` (stamps(), brought up to date here);
    returns how many values gained information, or None where only a full run
    will do."""
    graph = model.graph
    for value in graph.inputs:
        if known.get(value.name) != stamp(value):
            return None  # pinned inputs change values downstream
    for value in graph.initializers.values():
        before = known.get(value.name)
        if before is not None and before[:2] != (value.dtype, value.shape):
            return None  # a weight replaced in place (values folded into constants are fine)
    for sub in graph.all_graphs():
        if sub is not graph and any(v.name and (v.name not in known or v.shape is None)
                                    for node in sub.nodes for v in node.outputs if v.type_proto is None):
            return None  # a branch changed: onnx infers it with its outer scope
    now: dict[int, tuple] = {}  # this round's stamps, by id(value)

    def changed(value) -> bool:
        current = now.get(id(value))
        if current is None:
            current = now[id(value)] = stamp(value)
        return known.get(value.name) != current

    gained, done = 0, set()
    candidates = graph.nodes  # then only the readers of what the last round refined
    for _ in range(_MAX_ROUNDS):  # a refined output sends its readers round again
        now.clear()
        pending = []
        for node in candidates:
            outs = [v for v in node.outputs if v.name and v.type_proto is None]
            fresh = id(node) not in done and any(v.dtype is None or v.shape is None or v.name not in known for v in outs)
            # static outputs cannot get any better; shape data (integers) can still change them
            static = all(v.shape is not None and all(type(d) is int for d in v.shape) for v in outs)
            if fresh or any(changed(v) and (not static or v.dtype in _INTS) for v in node.inputs if v is not None):
                if node.subgraphs():
                    return None
                pending.append(node)
        if not pending:
            break
        done.update(id(n) for n in pending)
        before = {v.name: stamp(v) for n in pending for v in n.outputs if v.name}
        gained += _infer_nodes(model, _with_integer_sources(graph, pending))
        refined: set[int] = set()
        for node in pending:
            known.update((v.name, stamp(v)) for v in node.inputs if v is not None)
            for value in node.outputs:
                if value.name and (now_stamp := stamp(value)) == before[value.name]:
                    known[value.name] = now_stamp
                elif value.name:
                    refined.update(id(user) for user in value.users())
        candidates = [node for node in graph.nodes if id(node) in refined]
    else:
        return None  # still changing: let a full run settle it
    known.update((v.name, stamp(v)) for v in graph.initializers.values())
    return gained


def _with_integer_sources(graph, pending: list) -> list:
    """The pending nodes plus the producers of their integer inputs, transitively,
    in graph order."""
    chosen = {id(n) for n in pending}
    stack = list(pending)
    while stack:
        node = stack.pop()
        for value in node.inputs:
            producer = value.producer if value is not None else None
            if producer is not None and id(producer) not in chosen and value.dtype in _INTS and not producer.subgraphs():
                chosen.add(id(producer))
                stack.append(producer)
    return [n for n in graph.nodes if id(n) in chosen]


def nodes_model(model: Model, nodes: list, reads=lambda node: node.inputs) -> onnx.ModelProto:
    """A model of `nodes` alone, in their order: what they read (`reads`) from
    elsewhere enters as typed graph inputs, constants under _SMALL bytes as
    initializers (inference reads their data), and every output is a graph output."""
    made = {id(v) for n in nodes for v in n.outputs}
    graph = onnx.GraphProto(name="nodes")
    taken: set[str] = set()
    for node in nodes:
        for value in reads(node):
            if value is None or not value.name or id(value) in made or value.name in taken:
                continue
            taken.add(value.name)
            if value.is_initializer and not value.is_graph_input and value.nbytes < _SMALL:
                graph.initializer.append(_tensor_proto(value))
            elif value.producer is not None and (data := value.const_value()) is not None and data.nbytes < _SMALL:
                graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(data), value.name))
            else:
                graph.input.append(_value_info(value))
    graph.node.extend(_export_node(n) for n in nodes)
    graph.output.extend(onnx.ValueInfoProto(name=v.name) for n in nodes for v in n.outputs if v.name)
    proto = onnx.ModelProto(ir_version=max(model.ir_version, 4), graph=graph)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    proto.functions.extend(model.functions)
    return proto


def _infer_nodes(model: Model, nodes: list) -> int:
    proto = nodes_model(model, nodes)
    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    infos = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    rename = _fresh_unknowns(graph)

    def combine(old, new):
        return old if new is None else _refine(old, tuple(rename(d) for d in new))

    return sum(take_inferred(value, infos[value.name], combine)
               for node in nodes for value in node.outputs if value.name and value.name in infos)


def take_inferred(value, type_proto, combine) -> bool:
    """Copy an inferred type onto `value`, its shape combine(shape before, inferred
    shape or None); whether the value gained anything."""
    before = (value.dtype, value.shape, value.type_proto)
    _read_type(value, type_proto)
    value.shape = combine(before[1], value.shape)
    return (value.dtype, value.shape, value.type_proto) != before


def _refine(old, new):
    """onnx's dims where it knows them, else what was known before (the symbolic
    tool's expressions, or a fuller run's): this value means what it meant."""
    if old is None or len(old) != len(new):
        return new
    return tuple(o if n is None or (isinstance(n, str) and n.startswith("unk__")) else n for o, n in zip(old, new))


def _fresh_unknowns(inputs: onnx.GraphProto):
    """onnx names the unknown dims it invents unk__0, unk__1, ... in this small model,
    which may be names that other values of the whole model already carry: give
    them names no value has (dims read from the inputs keep theirs)."""
    kept = {d.dim_param for vi in inputs.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    mapping: dict[str, str] = {}

    def rename(dim):
        if not isinstance(dim, str) or dim in kept or not dim.startswith("unk__"):
            return dim
        if dim not in mapping:
            mapping[dim] = f"unk__u{next(_FRESH)}"
        return mapping[dim]

    return rename
