"""Graphs: ordered nodes, inputs, outputs and initializers, with the mutation
methods that keep use-def links consistent in both directions."""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import VerifierError
from .node import Node
from .value import Value


class Graph:
    def __init__(self, name: str = "graph"):
        self.name = name
        self.doc_string = ""
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.parent: Node | None = None  # the If/Loop/Scan node owning this subgraph
        self.value_info_order: list[str] = []  # names with imported value_info, for stable export
        self.sparse_initializers: list[Any] = []  # carried through as protos
        self.metadata_props: dict[str, str] = {}
        self._names: set[str] | None = None  # root graph only: every name in use
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

    # -- scope --------------------------------------------------------------
    @property
    def root(self) -> Graph:
        graph = self
        while graph.parent is not None and graph.parent.graph is not None:
            graph = graph.parent.graph
        return graph

    def all_graphs(self) -> Iterator[Graph]:
        """This graph, then every nested subgraph (depth first)."""
        yield self
        for node in self.nodes:
            for sub in node.subgraphs():
                yield from sub.all_graphs()

    def all_nodes(self) -> Iterator[Node]:
        for graph in self.all_graphs():
            yield from graph.nodes

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (not nested ones)."""
        yield from self.inputs
        for value in self.initializers.values():
            if not value.is_graph_input:
                yield value
        for node in self.nodes:
            yield from node.outputs

    def fresh_name(self, base: str) -> str:
        """A name unused anywhere in the model (root graph and all subgraphs)."""
        root = self.root
        if root._names is None:
            root._names = {v.name for g in root.all_graphs() for v in g.values()}
            root._names.update(n.name for n in root.all_nodes())
        base = base or "v"
        name = base
        while name in root._names:
            name = f"{base}_{next(root._counter)}"
        root._names.add(name)
        return name

    def rename(self, value: Value, name: str) -> None:
        """Give `value` a new name (freeing the old one for reuse)."""
        root = self.root
        if root._names is not None:
            root._names.discard(value.name)
            root._names.add(name)
        if value.is_initializer:
            del value.graph.initializers[value.name]
            value.graph.initializers[name] = value
        value.name = name

    def _claim(self, name: str) -> None:
        root = self.root
        if root._names is not None:
            root._names.add(name)

    # -- building -----------------------------------------------------------
    def add_input(self, name: str, dtype: int | None = None, shape=None) -> Value:
        value = Value(name, dtype, shape)
        value.graph = self
        self.inputs.append(value)
        self._claim(name)
        return value

    def add_initializer(self, array: np.ndarray, name: str = "const") -> Value:
        value = Value(self.fresh_name(name))
        value.set_array(np.asarray(array))
        value.graph = self
        self.initializers[value.name] = value
        return value

    def make_node(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        attributes: dict[str, Any] | None = None,
        *,
        num_outputs: int = 1,
        domain: str = "",
        name: str | None = None,
        output_names: Sequence[str] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node with fresh output values and insert it (at the end, or next
        to `before`/`after`). Returns the node; its outputs are `node.outputs`."""
        node_name = self.fresh_name(name or op_type)
        if output_names is None:
            output_names = [f"{node_name}_out{i}" if num_outputs > 1 else f"{node_name}_out" for i in range(num_outputs)]
        outputs = [Value(self.fresh_name(n)) for n in output_names]
        node = Node(op_type, inputs, outputs, attributes, domain=domain, name=node_name)
        self.insert_node(node, before=before, after=after)
        return node

    def insert_node(self, node: Node, *, before: Node | None = None, after: Node | None = None) -> None:
        if before is not None and after is not None:
            raise ValueError("give before or after, not both")
        node.graph = self
        for value in node.outputs:
            value.graph = self
            if value.name:
                self._claim(value.name)
        for sub in node.subgraphs():
            sub.parent = node
        if before is not None:
            self.nodes.insert(self._index(before), node)
        elif after is not None:
            self.nodes.insert(self._index(after) + 1, node)
        else:
            self.nodes.append(node)

    def _index(self, node: Node) -> int:
        try:
            return self.nodes.index(node)  # Node has no __eq__: compares by identity, in C
        except ValueError:
            pass
        raise VerifierError(f"node {node.name!r} ({node.op_type}) is not in graph {self.name!r}")

    # -- removing -----------------------------------------------------------
    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused; its inputs (and those of nodes in
        its subgraphs, which may read outer values) are detached."""
        index = self._index(node)
        self.detach_node(node)
        self.nodes.pop(index)

    def detach_node(self, node: Node) -> None:
        """remove_node without taking the node out of self.nodes: for callers that
        drop many nodes and then rebuild the list once."""
        for value in node.outputs:
            if value.uses:
                users = ", ".join(sorted({u.name for u, _ in value.uses}))
                raise VerifierError(
                    f"cannot remove node {node.name!r} ({node.op_type}): output {value.name!r} is still used by {users}"
                )
            if value.is_graph_output:
                raise VerifierError(
                    f"cannot remove node {node.name!r} ({node.op_type}): output {value.name!r} is a graph output"
                )
        _detach_deep(node)
        node.graph = None

    def remove_initializer(self, value: Value) -> None:
        if value.uses or value.is_graph_output:
            raise VerifierError(f"cannot remove initializer {value.name!r}: it is still used")
        del self.initializers[value.name]
        if value.is_graph_input:
            self.inputs = [v for v in self.inputs if v is not value]
        value.graph = None

    # -- rewiring -----------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every reader of `old` reads `new` instead, in this graph and nested ones.
        If `old` is a graph output, the output keeps its name: `new` takes it over when
        it can, else an Identity node carries it."""
        if old is new:
            return
        for node, index in list(old.uses):
            node.set_input(index, new)
        if old.graph is not None and old.is_graph_output:
            self._replace_output(old.graph, old, new)

    def _replace_output(self, graph: Graph, old: Value, new: Value) -> None:
        positions = [i for i, v in enumerate(graph.outputs) if v is old]
        # Renaming is safe: uses are by identity, names only matter at export.
        own = new.producer is not None or (new.is_initializer and not new.is_graph_input)
        if own and new.graph is graph and not new.is_graph_output:
            out_name = old.name
            graph.rename(old, graph.fresh_name(out_name + "_replaced"))
            graph.rename(new, out_name)
            new.dtype = new.dtype if new.dtype is not None else old.dtype
            new.shape = new.shape if new.shape is not None else old.shape
            carrier = new
        else:
            after = new.producer if new.producer is not None and new.graph is graph else None
            node = Node("Identity", [new], [Value(old.name, old.dtype, old.shape)], name=graph.fresh_name("Identity"))
            graph.rename(old, graph.fresh_name(old.name + "_replaced"))
            if after is not None:
                graph.insert_node(node, after=after)
            else:
                graph.insert_node(node, before=graph.nodes[0] if graph.nodes else None)
            carrier = node.outputs[0]
        for i in positions:
            graph.outputs[i] = carrier

    # -- order --------------------------------------------------------------
    def sort(self) -> None:
        """Stable topological sort (keeps the current order where it is valid).
        Raises VerifierError naming nodes on a cycle."""
        self.nodes = topological_order(self.nodes)
        for node in self.nodes:
            for sub in node.subgraphs():
                sub.sort()


def _detach_deep(node: Node) -> None:
    node.detach_inputs()
    for sub in node.subgraphs():
        for inner in sub.all_nodes():
            inner.detach_inputs()


def outer_reads(node: Node) -> list[Value]:
    """Values from outside a node's subgraphs that nodes inside them read."""
    found: list[Value] = []
    for sub in node.subgraphs():
        inner = {id(v) for g in sub.all_graphs() for v in g.values()}
        for inner_node in sub.all_nodes():
            for value in inner_node.inputs:
                if value is not None and id(value) not in inner and not any(value is f for f in found):
                    found.append(value)
        for value in sub.outputs:
            if id(value) not in inner and not any(value is f for f in found):
                found.append(value)
    return found


def topological_order(nodes: list[Node]) -> list[Node]:
    """Kahn's algorithm, taking ready nodes in their current order (the list itself
    where that order is valid already, as it mostly is)."""
    index = {id(n): i for i, n in enumerate(nodes)}
    producer: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for value in node.outputs:
            producer[id(value)] = i
    reads_of = [[v for v in node.inputs if v is not None] + (outer_reads(node) if node.subgraphs() else [])
                for node in nodes]
    if all(producer.get(id(v), -1) < i for i, reads in enumerate(reads_of) for v in reads):
        return list(nodes)
    deps: list[set[int]] = []
    for node, reads in zip(nodes, reads_of):
        deps.append({producer[id(v)] for v in reads if id(v) in producer} - {index[id(node)]})
        if any(producer.get(id(v)) == index[id(node)] for v in reads):
            raise VerifierError(f"node {node.name!r} ({node.op_type}) reads its own output: cycle")
    users: list[list[int]] = [[] for _ in nodes]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    remaining = [len(ds) for ds in deps]
    import heapq

    ready = [i for i, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i] for i, r in enumerate(remaining) if r > 0][:5]
        names = ", ".join(f"{n.name or '<unnamed>'} ({n.op_type})" for n in stuck)
        raise VerifierError(f"graph has a cycle through nodes: {names}")
    return [nodes[i] for i in order]
