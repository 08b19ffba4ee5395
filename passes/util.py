"""Small helpers shared by passes."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Value

STANDARD_DOMAINS = ("", "ai.onnx")
NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})


def is_standard(node: Node) -> bool:
    return node.domain in STANDARD_DOMAINS


def const(value: Value | None) -> np.ndarray | None:
    return None if value is None else value.const_value()


def bypass(graph: Graph, node: Node, src: Value) -> bool:
    """Make readers of node's first output read `src` and drop the node. Declines
    (returns False) when that would rename a graph interface value."""
    out = node.outputs[0]
    if out.is_graph_output and (src.producer is None or src.graph is not graph or src.is_graph_output):
        return False
    if any(o.uses or o.is_graph_output for o in node.outputs[1:]):
        return False
    graph.replace_all_uses(out, src)
    graph.remove_node(node)
    return True


def remove_dead(graph: Graph) -> int:
    """Drop nodes whose outputs nobody reads (innermost first), then unused
    initializers. Graph inputs are the interface and stay."""
    removed = 0
    dead: set[int] = set()
    for node in reversed(graph.nodes):
        for sub in node.subgraphs():
            removed += remove_dead(sub)
        if all(not v.uses and not v.is_graph_output for v in node.outputs):
            graph.detach_node(node)
            dead.add(id(node))
    if dead:  # one pass over the list, not one search per removed node
        graph.nodes = [node for node in graph.nodes if id(node) not in dead]
        removed += len(dead)
    for value in list(graph.initializers.values()):
        if not value.uses and not value.is_graph_output and not value.is_graph_input:
            graph.remove_initializer(value)
            removed += 1
    return removed


def set_constant(graph: Graph, value: Value, array: np.ndarray) -> Value:
    """Replace a computed value by an initializer that takes over its name."""
    init = graph.add_initializer(np.asarray(array), name=value.name + "_folded")
    was_output = value.is_graph_output
    graph.replace_all_uses(value, init)  # a graph output hands its name over here
    if not was_output:
        name = value.name
        graph.rename(value, graph.fresh_name(name + "_replaced"))
        graph.rename(init, name)
    return init
