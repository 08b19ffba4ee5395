"""onnxforge: load an ONNX model, run pass pipelines over it, save or compile it.

    import onnxforge
    m = onnxforge.load("model.onnx")
    result = onnxforge.optimize(m, "cleanup,fold-constants")
    print(result)                      # per pass: changed?, time, statistics
    onnxforge.save(result.model, "out.onnx")
"""
from __future__ import annotations

from .ir import Graph, Model, Node, OnnxforgeError, Value, load, save, verify
from .passes import Pass, PassManager, PassResult, Pipeline, optimize, register_pass

__version__ = "0.1.0"

__all__ = [
    "load", "save", "optimize", "verify", "Pipeline", "PassManager", "Pass", "PassResult", "register_pass",
    "Model", "Graph", "Node", "Value", "OnnxforgeError", "__version__",
]
