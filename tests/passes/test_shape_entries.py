"""Partial data propagation: static entries of partly symbolic shapes fold, named
dims are read from the graph input, run-time Reshape targets become constants,
and a Transpose that moves only size-1 axes becomes a Reshape."""
import numpy as np
from onnx import TensorProto, helper

from tests.conftest import run_and_check
from tests.models.build import init, model, tensor


def _ops(result):
    return [n.op_type for n in result.model.graph.nodes]


def test_runtime_reshape_target_becomes_a_constant():
    # y = x.view(x.size(0), -1) then * 2, with x [n, 4, 8] and n symbolic
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["y"])]
    proto = model(nodes, [tensor("x", ["n", 4, 8])], [tensor("y", ["n", 32])],
                  [init("zero", np.array(0, np.int64)), init("axes", np.array([0], np.int64)),
                   init("minus_one", np.array([-1], np.int64))])
    result = run_and_check(proto, "-O2", feeds={"x": np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32)})
    assert _ops(result) == ["Relu", "Reshape"]
    reshape = result.model.graph.nodes[1]
    assert reshape.inputs[1].const_value().tolist() == [0, -1]
    assert result.records[1].stats["reshape_targets"] == 1


def test_static_entry_of_a_symbolic_shape_folds():
    # y = x / x.size(-1): the last dim is 8 even though the batch is symbolic
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "last"], ["d"], axis=0),
             helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["x", "df"], ["y"])]
    proto = model(nodes, [tensor("x", ["n", 8])], [tensor("y", ["n", 8])], [init("last", np.array(-1, np.int64))])
    result = run_and_check(proto, "-O2", feeds={"x": np.ones((2, 8), np.float32)})
    assert _ops(result) == ["Div"] and float(result.model.graph.nodes[0].inputs[1].const_value()) == 8.0


def test_transpose_of_unit_axes_is_a_reshape_and_merges():
    # [n, 2, 1, 16] -> [n, 1, 2, 16] -> [n, 32]: one Reshape
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    proto = model(nodes, [tensor("x", ["n", 2, 1, 16])], [tensor("y", ["n", 32])],
                  [init("shape", np.array([0, 32], np.int64))])
    result = run_and_check(proto, "-O2", feeds={"x": np.random.default_rng(1).standard_normal((3, 2, 1, 16)).astype(np.float32)})
    assert _ops(result) == ["Reshape"]
