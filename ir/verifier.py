"""Structural checks: SSA names, use-def links both ways, topological order,
outputs produced, constant dtypes consistent. Run after every pass in tests."""
from __future__ import annotations

from onnx import helper

from .errors import VerifierError
from .graph import Graph, outer_reads
from .model import Model


def verify(model: Model) -> None:
    """Raise VerifierError naming the first broken invariant."""
    names: dict[str, str] = {}
    _verify_graph(model.graph, set(), names)


def _verify_graph(graph: Graph, outer: set[int], names: dict[str, str]) -> None:
    where = f"graph {graph.name!r}"
    defined: set[int] = set(outer)

    def define(value, what: str) -> None:
        if value.graph is not graph:
            raise VerifierError(f"{where}: {what} {value.name!r} does not point back to its graph")
        if value.name:
            if value.name in names:
                raise VerifierError(f"{where}: name {value.name!r} defined twice ({names[value.name]} and {what}): not SSA")
            names[value.name] = what
        defined.add(id(value))

    for value in graph.inputs:
        define(value, "graph input")
    for name, value in graph.initializers.items():
        if value.name != name:
            raise VerifierError(f"{where}: initializer key {name!r} holds value named {value.name!r}")
        if not value.has_data():
            raise VerifierError(f"{where}: initializer {name!r} has no data")
        if value._array is not None and value.dtype is not None:
            if value._array.dtype.kind != "O" and helper.np_dtype_to_tensor_dtype(value._array.dtype) != value.dtype:
                raise VerifierError(f"{where}: initializer {name!r} dtype disagrees with its data")
        if id(value) not in defined:
            define(value, "initializer")

    for position, node in enumerate(graph.nodes):
        label = f"node {node.name!r} ({node.op_type}) at position {position}"
        if node.graph is not graph:
            raise VerifierError(f"{where}: {label} does not point back to its graph")
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if id(value) not in defined:
                raise VerifierError(f"{where}: {label} input {index} {value.name!r} is not defined before it")
            if sum(1 for u, i in value.uses if u is node and i == index) != 1:
                raise VerifierError(f"{where}: {label} input {index} {value.name!r} is missing from its use list")
        for value in outer_reads(node):
            if id(value) not in defined:
                raise VerifierError(f"{where}: subgraph of {label} reads {value.name!r} before it is defined")
        for sub in node.subgraphs():
            if sub.parent is not node:
                raise VerifierError(f"{where}: subgraph {sub.name!r} of {label} does not point back to its node")
            _verify_graph(sub, defined, names)
        for index, value in enumerate(node.outputs):
            if value.producer is not node or value.output_index != index:
                raise VerifierError(f"{where}: {label} output {value.name!r} does not point back to it")
            define(value, f"output of {label}")
            for user, i in value.uses:
                if user.graph is None or user.input(i) is not value:
                    raise VerifierError(f"{where}: {value.name!r} lists a stale use by {user.name!r} input {i}")

    for value in graph.outputs:
        if id(value) not in defined:
            raise VerifierError(f"{where}: graph output {value.name!r} is not produced")
