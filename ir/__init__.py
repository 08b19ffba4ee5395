"""The onnxforge IR: values, nodes, graphs, models; ONNX import/export; verifier;
printer; shape inference. Knows nothing of passes or TVM."""
from .errors import (
    BuildError, DataError, ExternalDataError, LoweringError, ModelLoadError, NumericMismatchError, OnnxforgeError,
    PassError, PassOptionError, PipelineError, PipelineSyntaxError, UnknownPassError, VerifierError,
)
from .graph import Graph
from .model import Model
from .node import Node
from .onnx_io import from_proto, load, save, to_proto
from .printer import format_graph, format_model
from .shapes import infer_shapes
from .value import Value
from .verifier import verify

__all__ = [
    "Value", "Node", "Graph", "Model", "load", "save", "from_proto", "to_proto", "verify", "infer_shapes",
    "format_graph", "format_model", "OnnxforgeError", "ModelLoadError", "ExternalDataError", "VerifierError",
    "PipelineError", "PipelineSyntaxError", "UnknownPassError", "PassOptionError", "PassError",
    "NumericMismatchError", "LoweringError", "BuildError", "DataError",
]
