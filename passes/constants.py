"""constants-to-initializers: Constant nodes become initializers of their graph."""
from __future__ import annotations

from .base import Pass, PassResult
from .registry import register_pass
from .util import is_standard, set_constant


def constants_to_initializers(graph) -> int:
    moved = 0
    for g in list(graph.all_graphs()):
        for node in list(g.nodes):
            if node.op_type != "Constant" or not is_standard(node):
                continue
            array = node.outputs[0].const_value()
            if array is None:  # sparse_value: left as is
                continue
            set_constant(g, node.outputs[0], array)
            if not node.outputs[0].uses and not node.outputs[0].is_graph_output:
                g.remove_node(node)
                moved += 1
    return moved


@register_pass("constants-to-initializers")
class ConstantsToInitializers(Pass):
    """Move Constant nodes' values into initializers (same names)."""

    preserves = frozenset({"shapes", "all-shapes", "flops", "params", "values"})

    def run(self, model) -> PassResult:
        moved = constants_to_initializers(model.graph)
        return PassResult(moved > 0, {"constants_moved": moved})
