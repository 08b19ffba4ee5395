"""Quantization passes. Their output is standard ONNX (DequantizeLinear feeding the
original ops, QuantizeLinear/DequantizeLinear pairs, or DynamicQuantizeLinear +
MatMulInteger) that onnxruntime runs as is."""
from . import dynamic, static, weights  # noqa: F401  (registers the passes)
from .dynamic import QuantizeDynamic, QuantizeDynamicOptions
from .static import QuantizeStatic, QuantizeStaticOptions
from .weights import QuantizeWeights, QuantizeWeightsOptions, quantize_array

__all__ = ["QuantizeWeights", "QuantizeWeightsOptions", "quantize_array", "QuantizeStatic", "QuantizeStaticOptions",
           "QuantizeDynamic", "QuantizeDynamicOptions"]
