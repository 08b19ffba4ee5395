"""Quantization passes. Their output is standard ONNX (DequantizeLinear feeding the
original ops) that onnxruntime runs as is."""
from . import weights  # noqa: F401  (registers quantize-weights)
from .weights import QuantizeWeights, QuantizeWeightsOptions, quantize_array

__all__ = ["QuantizeWeights", "QuantizeWeightsOptions", "quantize_array"]
