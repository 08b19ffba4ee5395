"""Nodes: one operator application. Input edits go through methods that keep the
use lists of the values in step."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .value import Value

if TYPE_CHECKING:
    from .graph import Graph


class Node:
    __slots__ = (
        "op_type", "domain", "name", "_inputs", "outputs", "attributes", "graph",
        "doc_string", "metadata_props", "overload", "_attr_protos",
    )

    def __init__(
        self,
        op_type: str,
        inputs: Iterable[Value | None] = (),
        outputs: Iterable[Value] = (),
        attributes: dict[str, Any] | None = None,
        domain: str = "",
        name: str = "",
    ):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attributes: dict[str, Any] = dict(attributes or {})
        self.graph: Graph | None = None
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.overload = ""
        # name -> (decoded value, AttributeProto) as imported; the proto is re-emitted
        # while the attribute still holds that very object (lossless round trip).
        self._attr_protos: dict[str, tuple[Any, Any]] = {}
        for value in inputs:
            self._append_input(value)
        for value in outputs:
            self._attach_output(value)

    def __repr__(self) -> str:
        return f"Node({self.op_type}, name={self.name!r})"

    # -- inputs -------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Read-only view; use set_input / append_input / remove_inputs to edit."""
        return tuple(self._inputs)

    def _append_input(self, value: Value | None) -> None:
        index = len(self._inputs)
        self._inputs.append(value)
        if value is not None:
            value.uses.append((self, index))

    def append_input(self, value: Value | None) -> None:
        self._append_input(value)

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            _drop_use(old, self, index)
        self._inputs[index] = value
        if value is not None:
            value.uses.append((self, index))

    def set_inputs(self, values: Iterable[Value | None]) -> None:
        self.detach_inputs()
        for value in values:
            self._append_input(value)

    def detach_inputs(self) -> None:
        """Drop every input (and this node's entries in their use lists)."""
        for index, value in enumerate(self._inputs):
            if value is not None:
                _drop_use(value, self, index)
        self._inputs = []

    def input(self, index: int) -> Value | None:
        """Input `index`, or None when omitted or past the end (optional inputs)."""
        return self._inputs[index] if index < len(self._inputs) else None

    # -- outputs ------------------------------------------------------------
    def _attach_output(self, value: Value) -> None:
        if value.producer is not None:
            raise ValueError(f"value {value.name!r} already has a producer {value.producer!r}")
        value.producer = self
        value.output_index = len(self.outputs)
        self.outputs.append(value)

    def add_output(self, value: Value) -> None:
        self._attach_output(value)
        if self.graph is not None:
            value.graph = self.graph

    # -- subgraphs ----------------------------------------------------------
    def subgraphs(self) -> list[Graph]:
        if self.op_type not in _GRAPH_OPS and self.domain in ("", "ai.onnx"):
            return []  # the standard ops with graph attributes are _GRAPH_OPS (this runs per node per sweep)
        found: list[Graph] = []
        for attr in self.attributes.values():
            kind = type(attr)
            if kind in _SCALARS:  # most attributes: nothing to look at (this runs per node per sweep)
                continue
            if kind is _graph_class():
                found.append(attr)
            elif kind is list and attr and type(attr[0]) is _graph_class():  # lists hold one type
                found.extend(attr)
        return found

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attributes.get(name, default)


_SCALARS = frozenset({int, float, str, bytes})
_GRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


_GRAPH_CLASS: list = []


def _graph_class():
    if not _GRAPH_CLASS:
        from .graph import Graph  # graph.py imports this module: import on first use

        _GRAPH_CLASS.append(Graph)
    return _GRAPH_CLASS[0]


def _drop_use(value: Value, node: Node, index: int) -> None:
    for i, (user, idx) in enumerate(value.uses):
        if user is node and idx == index:
            del value.uses[i]
            return
    raise RuntimeError(f"use-def links broken: {value.name!r} does not list {node!r} input {index}")
