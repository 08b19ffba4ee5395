"""cse: common subexpression elimination. Nodes with the same op, attributes and
inputs compute the same thing; identical constants hold the same data."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..ir import Graph
from .base import Pass, PassResult
from .registry import register_pass
from .util import NONDETERMINISTIC


def _attr_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        raw = np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value.tolist()).encode()
        return ("tensor", value.dtype.str, value.shape, hashlib.sha1(raw).hexdigest())
    if isinstance(value, list):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, float):
        return ("f", value)
    if isinstance(value, (int, str, bytes)):
        return value
    return ("id", id(value))  # protos and graphs: never equal to another node's


def _array_key(array: np.ndarray) -> tuple:
    data = repr(array.tolist()).encode() if array.dtype == object else np.ascontiguousarray(array).tobytes()
    return (array.dtype.str, array.shape, hashlib.sha1(data).hexdigest())


def _cse_graph(graph: Graph, stats: dict[str, int]) -> None:
    seen_consts: dict[tuple, Any] = {}
    for value in list(graph.initializers.values()):
        if value.is_graph_input or value.is_graph_output:
            continue
        key = _array_key(np.asarray(value.array))
        keep = seen_consts.setdefault(key, value)
        if keep is not value:
            graph.replace_all_uses(value, keep)
            graph.remove_initializer(value)
            stats["initializers"] = stats.get("initializers", 0) + 1
    seen: dict[tuple, Any] = {}
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            _cse_graph(sub, stats)
        if node.subgraphs() or node.op_type in NONDETERMINISTIC or not node.outputs:
            continue
        key = (
            node.domain, node.op_type, len(node.outputs),
            tuple(None if v is None else id(v) for v in node.inputs),
            tuple(sorted((k, _attr_key(v)) for k, v in node.attributes.items())),
        )
        keep = seen.setdefault(key, node)
        if keep is node:
            continue
        if any(v.is_graph_output for v in node.outputs) and any(v.is_graph_output for v in keep.outputs):
            continue  # two distinct graph outputs would need an Identity; no gain
        for old, new in zip(node.outputs, keep.outputs):
            graph.replace_all_uses(old, new)
        graph.remove_node(node)
        stats["nodes"] = stats.get("nodes", 0) + 1


@register_pass("cse")
class CommonSubexpressionElimination(Pass):
    """Merge nodes with identical op, attributes and inputs, and identical constants."""

    preserves = frozenset({"shapes", "all-shapes", "values"})

    def run(self, model) -> PassResult:
        stats: dict[str, int] = {}
        _cse_graph(model.graph, stats)
        return PassResult(bool(stats), stats)
