"""Per pass: a small graph, the structure after, the changed flag, outputs checked
against onnxruntime (atol=rtol=1e-5 unless stated), and a second run that changes
nothing (run_and_check)."""
from collections import Counter

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxforge
from tests.conftest import run_and_check
from tests.models import build

T, I = build.tensor, build.init


def ops(result):
    return Counter(n.op_type for n in result.model.graph.all_nodes())


def test_cleanup_removes_noops_and_dead_code():
    proto = build.model([
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"]),
        helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["c"], ["d"], perm=[0, 1]),
        helper.make_node("Reshape", ["d", "s1"], ["e"]),
        helper.make_node("Reshape", ["e", "s2"], ["f"]),  # chain -> one reshape
        helper.make_node("Transpose", ["f"], ["g"], perm=[1, 0]),
        helper.make_node("Transpose", ["g"], ["h"], perm=[1, 0]),  # cancels
        helper.make_node("Expand", ["h", "same"], ["i"]),
        helper.make_node("Relu", ["x"], ["dead"]),
        helper.make_node("Identity", ["i"], ["y"]),
    ], [T("x", [2, 6])], [T("y", [3, 4])],
        [I("s1", np.array([12], np.int64)), I("s2", np.array([3, 4], np.int64)), I("same", np.array([3, 4], np.int64)),
         I("unused", np.zeros(5, np.float32))])
    result = run_and_check(proto, "cleanup")
    assert ops(result) == Counter({"Reshape": 1})
    assert result.model.graph.outputs[0].name == "y"
    assert "unused" not in result.model.graph.initializers


def test_cleanup_near_misses_change_nothing():
    proto = build.model([
        helper.make_node("Dropout", ["x", "ratio", "train"], ["a"]),  # training_mode given: keep
        helper.make_node("Cast", ["a"], ["b"], to=TensorProto.DOUBLE),  # a real cast
        helper.make_node("Transpose", ["b"], ["c"], perm=[1, 0]),
        helper.make_node("Reshape", ["c", "zero_shape"], ["d"]),
        helper.make_node("Reshape", ["d", "s2"], ["y"]),  # a run-time target: cannot collapse
        helper.make_node("Identity", ["x"], ["z"]),  # graph input -> graph output: keep
    ], [T("x", [2, 6]), T("train", [], TensorProto.BOOL), T("s2", [3], TensorProto.INT64)],
        [T("y", [3, 2, 2], TensorProto.DOUBLE), T("z", [2, 6])],
        [I("ratio", np.array(0.5, np.float32)), I("zero_shape", np.array([3, 4], np.int64))])
    result = onnxforge.optimize(onnxforge.load(proto), "cleanup")
    assert not result.changed


@pytest.mark.parametrize("batch", [2, "n"])
def test_reshape_chain_whose_zeros_copy_moved_dims_collapses(batch):
    """[b,2,1,4] -> [b,1,2,4] -> [0,0,-1]: the second 0 copies a dim the first reshape
    moved; with the output shape known, one Reshape of x with its own target."""
    proto = build.model([
        helper.make_node("Reshape", ["x", "s1"], ["d"]),
        helper.make_node("Reshape", ["d", "s2"], ["y"]),
    ], [T("x", [batch, 2, 1, 4])], [T("y", [batch, 1, 8])],
        [I("s1", np.array([0, 1, 2, 4], np.int64)), I("s2", np.array([0, 0, -1], np.int64))])
    result = run_and_check(proto, "-O2")
    assert ops(result) == Counter({"Reshape": 1})
    assert result.model.graph.nodes[0].inputs[0].name == "x"


def test_cse_merges_duplicates():
    proto = build.model([
        helper.make_node("Mul", ["x", "k"], ["a"]), helper.make_node("Mul", ["x", "k"], ["b"]),
        helper.make_node("Mul", ["x", "k2"], ["c"]),  # identical constant under another name
        helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["s", "c"], ["y"]),
        helper.make_node("Mul", ["x", "k"], ["z"], name="kept_as_output"),
    ], [T("x", [4])], [T("y", [4]), T("z", [4])],
        [I("k", np.array([1, 2, 3, 4], np.float32)), I("k2", np.array([1, 2, 3, 4], np.float32))])
    result = run_and_check(proto, "cse")
    assert ops(result) == Counter({"Mul": 1, "Add": 2})
    assert [v.name for v in result.model.graph.outputs] == ["y", "z"]


def test_cse_keeps_random_ops_and_different_attributes():
    proto = build.model([
        helper.make_node("RandomUniformLike", ["x"], ["r1"], seed=1.0), helper.make_node("RandomUniformLike", ["x"], ["r2"], seed=1.0),
        helper.make_node("Softmax", ["x"], ["s1"], axis=0), helper.make_node("Softmax", ["x"], ["s2"], axis=1),
        helper.make_node("Sum", ["r1", "r2", "s1", "s2"], ["y"]),
    ], [T("x", [2, 2])], [T("y", [2, 2])])
    assert not onnxforge.optimize(onnxforge.load(proto), "cse").changed


def test_fold_constants_shape_chain_and_constant_nodes():
    from onnxforge.tools.example import build_example

    result = run_and_check(build_example(), "fold-constants,cleanup")
    counts = ops(result)
    assert counts["Constant"] == 0 and counts["Shape"] == 0 and counts["Concat"] == 0


def test_fold_constants_evaluates_constant_subgraphs():
    proto = build.model([
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("Mul", ["wt", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["y"]),
    ], [T("x", [2, 3])], [T("y", [2, 4])],
        [I("w", np.arange(12, dtype=np.float32).reshape(4, 3)), I("two", np.array(2.0, np.float32))])
    result = run_and_check(proto, "fold-constants")
    assert ops(result) == Counter({"MatMul": 1})
    w = result.model.graph.nodes[0].inputs[1].array
    np.testing.assert_array_equal(w, (np.arange(12, dtype=np.float32).reshape(4, 3).T * 2))


def test_fold_constants_size_cap_refuses_blowups():
    proto = build.model([
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ], [T("x", [1024, 1024])], [T("y", [1024, 1024])], [I("shape", np.array([1024, 1024], np.int64))])
    assert not onnxforge.optimize(onnxforge.load(proto), "fold-constants").changed  # 4 MiB > 1 MiB cap
    result = onnxforge.optimize(onnxforge.load(proto), "fold-constants{max_bytes=8388608}")
    assert ops(result) == Counter({"Add": 1})


def test_quantized_weights_stay_quantized_through_o2():
    """DequantizeLinear of an int8 constant is a quantized weight, not a constant
    to fold: folding would store it as fp32 again."""
    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    proto = build.model([
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ], [T("x", [2, 4])], [T("y", [2, 4])],
        [I("w_q", w), I("w_scale", np.array(0.5, np.float32)), I("w_zero", np.array(0, np.int8))])
    result = run_and_check(proto, "-O2")
    assert ops(result)["DequantizeLinear"] == 1
    assert result.model.graph.initializers["w_q"].array.dtype == np.int8


def test_fold_constants_near_misses():
    """Not folded: a graph input with a default (it can be fed), random ops, a
    dynamic shape, a custom-domain op."""
    proto = build.model([
        helper.make_node("Mul", ["feedable", "two"], ["a"]),
        helper.make_node("RandomNormal", [], ["r"], shape=[2]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Cast", ["xs"], ["xsf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "r"], ["ar"]),
        helper.make_node("Sum", ["ar", "xsf"], ["y"]),
    ], [T("x", ["n", 2]), T("feedable", [2])], [T("y", [2])],
        [I("two", np.array(2.0, np.float32)), I("feedable", np.array([1.0, 2.0], np.float32))])
    assert not onnxforge.optimize(onnxforge.load(proto), "fold-constants").changed


def test_fold_inside_subgraphs():
    then_g = helper.make_graph([helper.make_node("Add", ["one", "one"], ["two"]), helper.make_node("Mul", ["x", "two"], ["t"])],
                               "then", [], [T("t", [2])], [I("one", np.array(1.0, np.float32))])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [T("e", [2])])
    proto = build.model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                        [T("x", [2]), T("c", [], TensorProto.BOOL)], [T("y", [2])])
    feeds = {"x": np.array([1.0, -2.0], np.float32), "c": np.array(True)}
    result = run_and_check(proto, "fold-constants", feeds=feeds)
    then_ops = [n.op_type for n in result.model.graph.nodes[0].attributes["then_branch"].nodes]
    assert then_ops == ["Mul"]


def test_infer_shapes_and_constants_to_initializers():
    from onnxforge.tools.example import build_example

    result = run_and_check(build_example(), "constants-to-initializers,infer-shapes")
    values = {v.name: v for n in result.model.graph.nodes for v in n.outputs}
    assert values["c1"].shape == (1, 16, 32, 32)
    assert ops(result)["Constant"] == 0


def _pad_conv(pads, mode="constant", fill=0.0, extra_user=False):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Pad", ["x", "pads", "fill"], ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 0, 1, 0])]
    outputs = [T("y", None)]
    if extra_user:
        nodes.append(helper.make_node("Relu", ["p"], ["z"]))
        outputs.append(T("z", None))
    return build.model(nodes, [T("x", [1, 2, 5, 5])], outputs,
                       [I("pads", np.array(pads, np.int64)), I("fill", np.array(fill, np.float32)),
                        I("w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32))], check=False)


def test_cleanup_moves_zero_padding_into_conv():
    result = run_and_check(_pad_conv([0, 0, 1, 2, 0, 0, 1, 2]), "cleanup")
    assert ops(result) == Counter({"Conv": 1})
    assert result.model.graph.nodes[0].attributes["pads"] == [2, 2, 2, 2]


@pytest.mark.parametrize("kwargs", [
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"},
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "fill": 1.0},
    {"pads": [0, 1, 1, 1, 0, 0, 1, 1]},  # pads a channel
    {"pads": [0, 0, -1, 1, 0, 0, 1, 1]},  # crops
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "extra_user": True},
])
def test_pad_into_conv_near_misses(kwargs):
    assert not onnxforge.optimize(onnxforge.load(_pad_conv(**kwargs)), "cleanup").changed


def _slices(outer_axes, inner_axes, shape=(2, 3, 8, 9)):
    """y = Slice(Slice(x, along inner_axes), along outer_axes); starts 1, steps 2."""
    params = lambda tag, axes: [  # noqa: E731
        I(f"{tag}_starts", np.ones(len(axes), np.int64)), I(f"{tag}_ends", np.full(len(axes), 2**62, np.int64)),
        I(f"{tag}_axes", np.array(axes, np.int64)), I(f"{tag}_steps", np.full(len(axes), 2, np.int64))]
    names = lambda tag: [f"{tag}_starts", f"{tag}_ends", f"{tag}_axes", f"{tag}_steps"]  # noqa: E731
    return build.model([helper.make_node("Slice", ["x", *names("in")], ["a"]),
                        helper.make_node("Slice", ["a", *names("out")], ["y"])],
                       [T("x", list(shape))], [T("y", None)], params("in", inner_axes) + params("out", outer_axes),
                       check=False)


def test_cleanup_merges_slices_along_other_axes():
    result = run_and_check(_slices([3], [-2]), "cleanup")  # negative axes count from the end
    assert ops(result) == Counter({"Slice": 1})
    axes = result.model.graph.nodes[0].inputs[3].array
    assert sorted(axes.tolist()) == [2, 3]


def test_cleanup_keeps_slices_along_the_same_axis():
    assert not onnxforge.optimize(onnxforge.load(_slices([2], [-2])), "cleanup").changed
