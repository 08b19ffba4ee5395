"""Resize / Upsample lowered with run-time output sizes (codegen/resize.py) and the
shape helpers detection models need unpinned (codegen/runtime_shapes.py):
compiled with symbolic input dims, compared with onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxforge

pytest.importorskip("tvm")


def _check(model, feeds_list, tmp_path, atol=1e-5):
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pkg = onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0",
                            output=tmp_path / "m.ofpkg")  # unpinned
    for feeds in feeds_list:
        want = sess.run(None, feeds)
        got = pkg(feeds)
        for out, ref in zip(model.graph.output, want):
            assert got[out.name].shape == ref.shape
            np.testing.assert_allclose(got[out.name], ref, atol=atol, rtol=1e-5)


def _x(*shape, seed=0):
    return np.random.RandomState(seed).rand(*shape).astype(np.float32)


def _io(out_rank=4):
    return ([h.make_tensor_value_info("x", T.FLOAT, ["n", 3, "h", "w"])],
            [h.make_tensor_value_info("y", T.FLOAT, [f"d{i}" for i in range(out_rank)])])


@pytest.mark.parametrize("mode,coord,nearest,scales", [
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2]),  # YOLO / DBNet upsampling
    ("nearest", "half_pixel", "round_prefer_ceil", [1, 1, 0.6, 1.5]),
    ("linear", "half_pixel", "round_prefer_floor", [1, 1, 0.6, 1.7]),  # in * scale not whole: onnx's scale, not out/in
    ("linear", "pytorch_half_pixel", "floor", [1, 1, 2, 0.5]),
    ("cubic", "align_corners", "round_prefer_floor", [1, 1, 1.5, 2]),
    ("cubic", "half_pixel", "round_prefer_floor", [1, 1, 0.75, 1.25]),
])
def test_resize_constant_scales_symbolic_dims(tmp_path, mode, coord, nearest, scales):
    inputs, outputs = _io()
    node = h.make_node("Resize", ["x", "", "s"], ["y"], mode=mode, coordinate_transformation_mode=coord,
                       nearest_mode=nearest)
    g = h.make_graph([node], "g", inputs, outputs, [nh.from_array(np.array(scales, np.float32), "s")])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    _check(model, [{"x": _x(1, 3, 5, 7)}, {"x": _x(2, 3, 8, 6, seed=1)}], tmp_path)


def test_resize_sizes_from_shape_of_symbolic_input(tmp_path):
    """sizes = Concat(Shape(x)[:2], Shape(x)[2:] * 2), computed when the model runs."""
    inputs, outputs = _io()
    nodes = [h.make_node("Shape", ["x"], ["sh"]),
             h.make_node("Slice", ["sh", "zero", "two"], ["nc"]),
             h.make_node("Slice", ["sh", "two", "four"], ["hw"]),
             h.make_node("Mul", ["hw", "two"], ["hw2"]),
             h.make_node("Concat", ["nc", "hw2"], ["sz"], axis=0),
             h.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="linear")]
    inits = [nh.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("two", 2), ("four", 4))]
    model = h.make_model(h.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[h.make_opsetid("", 13)])
    _check(model, [{"x": _x(1, 3, 5, 7)}, {"x": _x(2, 3, 4, 9, seed=1)}], tmp_path)


def test_upsample_and_resize10(tmp_path):
    inputs, outputs = _io()
    s = nh.from_array(np.array([1, 1, 2, 3], np.float32), "s")
    for op, opset in (("Upsample", 9), ("Resize", 10)):
        g = h.make_graph([h.make_node(op, ["x", "s"], ["y"], mode="nearest")], "g", inputs, outputs, [s])
        _check(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]), [{"x": _x(1, 3, 4, 5)}], tmp_path)


def test_fpn_upsample_add_and_concat_unpinned(tmp_path):
    """A detection neck: a stride-2 conv, upsampled x2, added to and concatenated with
    the stride-1 map. Relax cannot prove 2 * ((h - 1) // 2 + 1) == h, so the lowering
    states it (checked when the model runs); then Shape -> Gather -> Range (an
    anchor grid) over the result stays shaped."""
    rng = np.random.RandomState(0)
    w = nh.from_array(rng.randn(3, 3, 3, 3).astype(np.float32) * 0.2, "w")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("Resize", ["c", "", "s"], ["u"], mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor"),
             h.make_node("Add", ["u", "x"], ["a"]),
             h.make_node("Concat", ["a", "x"], ["cat"], axis=1),
             h.make_node("Shape", ["cat"], ["sh"]),
             h.make_node("Gather", ["sh", "three"], ["wd"]),
             h.make_node("Cast", ["wd"], ["wf"], to=T.FLOAT),
             h.make_node("Range", ["zero", "wf", "one"], ["grid"]),
             h.make_node("Add", ["cat", "grid"], ["y"])]
    inits = [w, nh.from_array(np.array([1, 1, 2, 2], np.float32), "s"), nh.from_array(np.array(3, np.int64), "three"),
             nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array(1, np.float32), "one")]
    g = h.make_graph(nodes, "neck", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 6, "h", "w"])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    _check(model, [{"x": _x(1, 3, 8, 8)}, {"x": _x(2, 3, 16, 32, seed=1)}], tmp_path, atol=1e-4)


def test_antialias_downsampling_is_a_clear_error(tmp_path):
    inputs, outputs = _io()
    node = h.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", antialias=1)
    g = h.make_graph([node], "g", inputs, outputs, [nh.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "s")])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    with pytest.raises(onnxforge.OnnxforgeError, match="antialias"):
        onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0", output=tmp_path / "m.ofpkg")


def test_fpn_sizes_that_break_the_stated_equality_fail_at_run_time(tmp_path):
    """h = 9: the upsampled map is 10 high, the lateral 9; onnxruntime refuses the
    Add, and so does the compiled model (never a result of the wrong size)."""
    rng = np.random.RandomState(0)
    w = nh.from_array(rng.randn(3, 3, 3, 3).astype(np.float32) * 0.2, "w")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("Resize", ["c", "", "s"], ["u"], mode="nearest"),
             h.make_node("Add", ["u", "x"], ["y"])]
    g = h.make_graph(nodes, "neck", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 3, "h", "w"])],
                     [w, nh.from_array(np.array([1, 1, 2, 2], np.float32), "s")])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    _check(model, [{"x": _x(1, 3, 8, 6)}], tmp_path, atol=1e-4)
    pkg = onnxforge.runtime.load(tmp_path / "m.ofpkg")
    try:
        pkg({"x": _x(1, 3, 9, 6)})
    except Exception as exc:  # noqa: BLE001  (TVM's error type for a failed shape check)
        assert "match_cast" in str(exc) or "shape" in str(exc).lower(), exc
    else:
        pytest.fail("a 9-high input ran, but its upsampled map (10) cannot be added to the 9-high lateral")
