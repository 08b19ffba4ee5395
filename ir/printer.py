"""Readable text form of a graph, one node per line (for print-after-change and
debugging)."""
from __future__ import annotations

import numpy as np

from .graph import Graph
from .model import Model


def _attr(value) -> str:
    if isinstance(value, Graph):
        return f"<graph {value.name} ({len(value.nodes)} nodes)>"
    if isinstance(value, np.ndarray):
        return f"<tensor {value.dtype}{list(value.shape)}>" if value.size > 8 else repr(value.tolist())
    return repr(value)


def format_graph(graph: Graph, indent: str = "") -> str:
    lines = [f"{indent}graph {graph.name}(" + ", ".join(f"%{v.name}: {v.type_str()}" for v in graph.inputs) + ") {"]
    for value in graph.initializers.values():
        lines.append(f"{indent}  %{value.name}: {value.type_str()} = initializer")
    for node in graph.nodes:
        outs = ", ".join(f"%{v.name}: {v.type_str()}" for v in node.outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
        op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        attrs = " {" + ", ".join(f"{k}={_attr(v)}" for k, v in node.attributes.items()) + "}" if node.attributes else ""
        lines.append(f"{indent}  {outs} = {op}({ins}){attrs}")
        for sub in node.subgraphs():
            lines.append(format_graph(sub, indent + "    "))
    lines.append(f"{indent}  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def format_model(model: Model) -> str:
    opsets = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in model.opset_imports.items())
    return f"model (opsets {opsets})\n" + format_graph(model.graph)
