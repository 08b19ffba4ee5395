"""The built-in example model: a small CNN classifier exported the way real
exporters write them, with what cleanup and folding exist for (Constant-node
weights, a Shape->Gather->Concat->Reshape chain, Identity, Dropout, a repeated
subexpression, a no-op Transpose)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_example(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = []

    def const(name: str, array: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array.astype(array.dtype), name)))
        return name

    w1 = const("conv1.weight", rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2)
    b1 = const("conv1.bias", rng.standard_normal(16).astype(np.float32) * 0.1)
    w2 = const("conv2.weight", rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1)
    b2 = const("conv2.bias", rng.standard_normal(32).astype(np.float32) * 0.1)
    fc_w = const("fc.weight", rng.standard_normal((32, 10)).astype(np.float32) * 0.2)
    fc_b = const("fc.bias", rng.standard_normal(10).astype(np.float32) * 0.1)
    scale = const("scale", np.array(2.0, dtype=np.float32))
    nodes += [
        helper.make_node("Identity", ["input"], ["x"]),
        helper.make_node("Conv", ["x", w1, b1], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", w2, b2], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["r2t"], perm=[0, 1, 2, 3]),
        helper.make_node("GlobalAveragePool", ["r2t"], ["pooled"]),
        # flatten through the shape of the tensor, as torch exports view(x.size(0), -1)
        helper.make_node("Shape", ["pooled"], ["pshape"]),
        helper.make_node("Gather", ["pshape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("Dropout", ["flat"], ["dropped"]),
        helper.make_node("MatMul", ["dropped", fc_w], ["mm"]),
        helper.make_node("Add", ["mm", fc_b], ["logits_a"]),
        helper.make_node("Mul", ["logits_a", scale], ["scaled_a"]),
        helper.make_node("Mul", ["logits_a", scale], ["scaled_b"]),  # same as scaled_a
        helper.make_node("Add", ["scaled_a", "scaled_b"], ["summed"]),
        helper.make_node("Softmax", ["summed"], ["probs"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.zeros((7, 7), dtype=np.float32), "unused_table"),
    ]
    graph = helper.make_graph(
        nodes, "example_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxforge-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
