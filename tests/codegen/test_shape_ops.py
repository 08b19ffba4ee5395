"""codegen/shape_ops.py, reduce_ops.py and elementwise_ops.py: ops whose shapes
or axes come from values computed at run time, empty tensors, mixed-dtype Pow;
small models against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("tvm", reason="apache-tvm is not installed")
pytest.importorskip("onnxruntime")

from tests.codegen.onnx_check import check_against_onnxruntime  # noqa: E402

rng = np.random.default_rng(0)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
def test_pad_with_pads_given_at_run_time(tmp_path, mode):
    x = rng.standard_normal((2, 3, 4), np.float32)
    pads = np.array([0, 2, 1, 1, 1, 0], np.int64)  # reflect needs pads < extent
    inputs = ["x", "pads", "v"] if mode == "constant" else ["x", "pads"]
    feeds = {"x": x, "pads": pads, **({"v": np.array(1.5, np.float32)} if mode == "constant" else {})}
    check_against_onnxruntime(tmp_path, [helper.make_node("Pad", inputs, ["y"], mode=mode)], feeds, ["y"], opset=19)


def test_pad_negative_pads_crop(tmp_path):
    x = rng.standard_normal((4, 5), np.float32)
    check_against_onnxruntime(tmp_path, [helper.make_node("Pad", ["x", "pads"], ["y"])],
                              {"x": x, "pads": np.array([-1, 2, 1, -2], np.int64)}, ["y"], opset=18)


def test_center_crop_pad_crops_one_axis_and_pads_another(tmp_path):
    x = rng.standard_normal((5, 3, 2), np.float32)
    check_against_onnxruntime(tmp_path, [helper.make_node("CenterCropPad", ["x", "s"], ["y"], axes=[0, 1])],
                              {"x": x, "s": np.array([2, 6], np.int64)}, ["y"], opset=18)


def test_constant_of_shape_and_expand_with_run_time_shapes(tmp_path):
    value = helper.make_tensor("value", 6, [1], [7])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
             helper.make_node("Expand", ["x", "target"], ["e"])]
    feeds = {"shape": np.array([2, 3], np.int64), "x": rng.standard_normal((3, 1), np.float32),
             "target": np.array([2, 1, 6], np.int64)}
    check_against_onnxruntime(tmp_path, nodes, feeds, ["c", "e"], opset=13)


def test_squeeze_with_axes_given_at_run_time(tmp_path):
    x = rng.standard_normal((1, 3, 1, 5), np.float32)
    check_against_onnxruntime(tmp_path, [helper.make_node("Squeeze", ["x", "axes"], ["y"])],
                              {"x": x, "axes": np.array([-2], np.int64)}, ["y"], opset=13)


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMax", "ReduceProd", "ReduceLogSumExp"])
def test_reduce_over_an_empty_axis_gives_the_identity(tmp_path, op_type):
    """(2, 0, 4) reduced over axis 1 (a run-time axes input): numpy's identities."""
    x = np.zeros((2, 0, 4), np.float32)
    check_against_onnxruntime(tmp_path, [helper.make_node(op_type, ["x", "axes"], ["y"], keepdims=1)],
                              {"x": x, "axes": np.array([1], np.int64)}, ["y"], opset=18)


def test_reduce_with_empty_run_time_axes_reduces_everything(tmp_path):
    x = rng.standard_normal((3, 2, 2), np.float32)
    check_against_onnxruntime(tmp_path, [helper.make_node("ReduceL2", ["x", "axes"], ["y"], keepdims=1)],
                              {"x": x, "axes": np.zeros((0,), np.int64)}, ["y"], opset=18, rtol=1e-5)


@pytest.mark.parametrize("base, exponent", [(np.int32, np.int32), (np.float32, np.int64), (np.int64, np.float32)])
def test_pow_with_mixed_and_integer_dtypes(tmp_path, base, exponent):
    x = np.array([1, 2, 3, -2], base)
    y = np.array([3, 2, 1, 3], exponent)
    check_against_onnxruntime(tmp_path, [helper.make_node("Pow", ["x", "y"], ["z"])], {"x": x, "y": y}, ["z"], opset=15)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_with_constant_pads_goes_through_the_frontend(tmp_path, mode):
    from onnx import numpy_helper

    x = rng.standard_normal((2, 3, 4), np.float32)
    pads = numpy_helper.from_array(np.array([0, 1, 2, 0, 1, 1], np.int64), "pads")
    check_against_onnxruntime(tmp_path, [helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)], {"x": x}, ["y"],
                              opset=18, initializers=[pads])
