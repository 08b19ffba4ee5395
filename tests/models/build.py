"""Small real-shaped models built in code for the tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17, functions=(), extra_opsets=(), check=True, **graph_kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits), **graph_kw)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    m.ir_version = 8 if opset <= 17 else 10
    if check:
        onnx.checker.check_model(m)
    return m


def tensor(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def mlp(seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    return model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])],
        [tensor("x", [2, 8])], [tensor("y", [2, 4])],
        [init("w1", rng.standard_normal((8, 16)).astype(np.float32)), init("b1", rng.standard_normal(16).astype(np.float32)),
         init("w2", rng.standard_normal((16, 4)).astype(np.float32))],
    )


def with_if_and_loop() -> onnx.ModelProto:
    """An If whose branches read an outer value, and a Loop summing into a carry."""
    then_g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["t"])], "then", [], [tensor("t", [2])])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["e"])], "else", [], [tensor("e", [2])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["carry", "x"], ["carry_out"])],
        "body", [tensor("iter", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("carry", [2])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("carry_out", [2])],
    )
    return model(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Loop", ["trips", "", "y"], ["z"], body=body)],
        [tensor("x", [2])], [tensor("z", [2])],
        [init("zero", np.array(0.0, np.float32)), init("trips", np.array(3, np.int64))],
    )


def with_custom_op_and_function() -> onnx.ModelProto:
    """A model-local function (ai.custom.Square = x*x) and an unknown custom op."""
    fn = helper.make_function("ai.custom", "Square", ["a"], ["b"], [helper.make_node("Mul", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    return model(
        [helper.make_node("Square", ["x"], ["y"], domain="ai.custom"),
         helper.make_node("Mystery", ["y"], ["z"], domain="com.vendor", flavour="strange", weights=[1.5, 2.5])],
        [tensor("x", [3])], [tensor("z", [3])],
        functions=[fn], extra_opsets=[("ai.custom", 1), ("com.vendor", 1)], check=False,
    )


def with_metadata() -> onnx.ModelProto:
    m = mlp()
    m.doc_string = "an MLP"
    m.producer_name = "tests"
    m.producer_version = "1.2"
    m.graph.doc_string = "graph doc"
    m.graph.node[0].doc_string = "first matmul"
    helper.set_model_props(m, {"author": "onnxforge", "license": "MIT"})
    return m
