"""Models: a graph plus opset imports, functions and metadata."""
from __future__ import annotations

from typing import Any

from .graph import Graph
from .node import Node
from .value import Value


class Model:
    def __init__(self, graph: Graph, opset_imports: dict[str, int] | None = None):
        self.graph = graph
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 21})
        self.ir_version = 10
        self.producer_name = "onnxforge"
        self.producer_version = ""
        self.domain = ""
        self.model_version = 0
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.functions: list[Any] = []  # FunctionProto, carried through untouched
        self.training_info: list[Any] = []  # TrainingInfoProto, carried through
        self.base_dir: str | None = None  # folder external data was read from
        self.analyses: dict[str, Any] = {}  # cache, see passes.analysis
        # (graph input shapes, values the symbolic shape tool was asked about) at its last run (ir.shapes)
        self.symbolic_asked: tuple[tuple, frozenset[str]] = ((), frozenset())
        # What onnx shape inference last saw, per value name (ir.shape_update); None
        # after a change that may alter values in place (the next run is a full one).
        self.shape_stamps: dict[str, tuple] | None = None

    def __repr__(self) -> str:
        return f"Model({self.graph.name!r}, {len(self.graph.nodes)} nodes, opset {self.opset})"

    @property
    def opset(self) -> int:
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 1))

    def clone(self) -> Model:
        """A structural deep copy; constant arrays and protos are shared (passes must
        replace data with Value.set_array, never edit arrays in place)."""
        copy = Model(_clone_graph(self.graph, {}), self.opset_imports)
        for attr in ("ir_version", "producer_name", "producer_version", "domain", "model_version",
                     "doc_string", "base_dir"):
            setattr(copy, attr, getattr(self, attr))
        copy.metadata_props = dict(self.metadata_props)
        copy.functions = list(self.functions)
        copy.training_info = list(self.training_info)
        return copy


def _clone_value(value: Value, graph: Graph) -> Value:
    new = Value(value.name, value.dtype, value.shape)
    new.type_proto = value.type_proto
    new.doc_string = value.doc_string
    new._array, new._tensor, new._loader = value._array, value._tensor, value._loader
    new.graph = graph
    return new


def _clone_graph(graph: Graph, vmap: dict[int, Value]) -> Graph:
    """vmap maps id(old value) -> new value and is shared with enclosing scopes."""
    new = Graph(graph.name)
    new.doc_string = graph.doc_string
    new.value_info_order = list(graph.value_info_order)
    new.sparse_initializers = list(graph.sparse_initializers)
    new.metadata_props = dict(graph.metadata_props)
    for value in graph.inputs:
        vmap[id(value)] = copy = _clone_value(value, new)
        new.inputs.append(copy)
    for name, value in graph.initializers.items():
        if id(value) not in vmap:
            vmap[id(value)] = _clone_value(value, new)
        new.initializers[name] = vmap[id(value)]
    for node in graph.nodes:
        outputs = []
        for value in node.outputs:
            vmap[id(value)] = copy = _clone_value(value, new)
            outputs.append(copy)
        attributes = {}
        for key, attr in node.attributes.items():
            if isinstance(attr, Graph):
                attr = _clone_graph(attr, vmap)
            elif isinstance(attr, list) and attr and isinstance(attr[0], Graph):
                attr = [_clone_graph(g, vmap) for g in attr]
            attributes[key] = attr
        inputs = [None if v is None else vmap[id(v)] for v in node.inputs]
        clone = Node(node.op_type, inputs, outputs, attributes, domain=node.domain, name=node.name)
        clone.doc_string = node.doc_string
        clone.metadata_props = dict(node.metadata_props)
        clone.overload = node.overload
        clone._attr_protos = dict(node._attr_protos)  # graph attributes are always re-exported
        new.insert_node(clone)
    new.outputs = [vmap[id(v)] for v in graph.outputs]
    return new
