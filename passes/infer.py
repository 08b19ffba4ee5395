"""infer-shapes: record onnx shape inference results on the values."""
from __future__ import annotations

from ..ir.shapes import infer_all_shapes, unknown_shapes
from .base import Pass, PassResult
from .registry import register_pass


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Run onnx shape inference (with data propagation), then onnxruntime's symbolic
    inference where dims stay unknown, and keep the results."""

    preserves = frozenset({"shapes", "all-shapes", "flops", "params", "values"})

    def run(self, model) -> PassResult:
        gained = infer_all_shapes(model)
        model.analyses["shapes"] = model.analyses["all-shapes"] = gained
        return PassResult(gained > 0, {"values_typed": gained, "shapes_unknown": unknown_shapes(model)})
