"""Open dims in graph inputs: Paddle's -1, a 0, an empty or "?" dim_param, or no
field at all are symbolic dims with fresh names (unk__N, as onnxruntime names
them), never fixed sizes; scalar (0-d) inputs stay 0-d."""
import numpy as np
import onnx
from onnx import TensorProto, helper

import onnxforge
from onnxforge.ir import infer_shapes
from onnxforge.passes.check import run_ort

F = TensorProto.FLOAT


def _input(name, dims, dtype=F):
    """dims: int -> dim_value (even -1 / 0), str -> dim_param (even "" / "?"), None -> an empty dim."""
    vi = helper.make_tensor_value_info(name, dtype, [])
    shape = vi.type.tensor_type.shape
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d
    return vi


def _model(inputs, outputs, nodes):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _paddle_style():
    """x [-1,3,?,?] (PP-OCR's cls model), s [0,4], t [,""], r int64 scalar; output [-1,3,?,?]."""
    out = _input("y", [-1, 3, "?", "?"])
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Cast", ["r"], ["rf"], to=F),
             helper.make_node("Mul", ["s", "rf"], ["z"]), helper.make_node("Identity", ["t"], ["w"])]
    return _model([_input("x", [-1, 3, "?", "?"]), _input("s", [0, 4]), _input("t", [None, ""]),
                   _input("r", [], TensorProto.INT64)],
                  [out, helper.make_tensor_value_info("z", F, [0, 4]), helper.make_tensor_value_info("w", F, [None, None])],
                  nodes)


def test_open_input_dims_get_fresh_symbolic_names():
    model = onnxforge.load(_paddle_style())
    shapes = {v.name: v.shape for v in model.graph.inputs}
    assert shapes == {"x": ("x_dim0", 3, "x_dim2", "x_dim3"), "s": ("s_dim0", 4), "t": ("t_dim0", "t_dim1"), "r": ()}
    # outside the inputs, -1 and "?" are unknown (None), and a 0 is a real size
    y, z, _ = model.graph.outputs
    assert y.shape[0] is None and y.shape[2] is None and z.shape == (0, 4)


def test_fresh_names_do_not_collide_with_the_models_own():
    proto = _model([_input("a", ["a_dim1", -1]), _input("b.0", ["unk__1", "?"]), _input("2", [-1])],
                   [helper.make_tensor_value_info("c", F, None)],
                   [helper.make_node("Add", ["a", "b.0"], ["s"]), helper.make_node("Add", ["s", "2"], ["c"])])
    model = onnxforge.load(proto)
    a, b, two = model.graph.inputs
    # fresh names are identifiers (sympy parses them inside shape expressions)
    assert a.shape == ("a_dim1", "a_dim1_1") and b.shape == ("unk__1", "b_0_dim1") and two.shape == ("in_2_dim0",)


def test_saved_model_keeps_the_names_and_runs_at_any_size(tmp_path):
    model = onnxforge.load(_paddle_style())
    onnxforge.save(model, tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["x_dim0", 3, "x_dim2", "x_dim3"]
    assert [v.shape for v in onnxforge.load(proto).graph.inputs] == [v.shape for v in model.graph.inputs]
    feeds = {"x": np.ones((2, 3, 5, 7), np.float32), "s": np.ones((3, 4), np.float32),
             "t": np.ones((1, 2), np.float32), "r": np.array(16000)}
    out = run_ort(model, feeds)
    assert out["y"].shape == (2, 3, 5, 7) and out["z"].shape == (3, 4) and float(out["z"][0, 0]) == 16000.0


def test_scalar_input_stays_0d_through_shape_inference():
    model = onnxforge.load(_paddle_style())
    infer_shapes(model)
    r = next(v for v in model.graph.inputs if v.name == "r")
    assert r.shape == () and r.type_str() == "int64[]"
    assert r.uses[0][0].outputs[0].shape == ()


def test_symbolic_inference_through_ops_onnxruntime_has_no_rule_for():
    """ConvInteger and com.microsoft DynamicQuantizeLSTM on a symbolic width (ddddocr's
    pre-quantized CRNN): the width is carried as an expression through both, static
    dims stay static, and what follows the LSTM gets its shapes (the symbolic tool
    alone stops at the LSTM and knows nothing after it)."""
    from onnxforge.ir.shapes import infer_all_shapes

    rng = np.random.default_rng(0)
    u8 = lambda name, shape: helper.make_tensor(name, TensorProto.UINT8, shape, rng.integers(0, 255, shape).ravel().tolist())  # noqa: E731
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),  # [1, 4, 4, W']
        helper.make_node("Cast", ["c"], ["cf"], to=F),
        helper.make_node("Transpose", ["cf"], ["t"], perm=[3, 0, 1, 2]),
        helper.make_node("Reshape", ["t", "seq_shape"], ["s"]),  # [W', 1, 16]
        helper.make_node("DynamicQuantizeLinear", ["s"], ["q", "q_scale", "q_zp"]),
        helper.make_node("DynamicQuantizeLSTM", ["s", "lw", "lr", "", "", "", "", "", "lw_scale", "lw_zp", "lr_scale",
                                                "lr_zp"], ["h_all", "h_last"], domain="com.microsoft", hidden_size=8,
                         direction="bidirectional"),
        helper.make_node("Shape", ["h_all"], ["hs"]),
    ]
    inits = [u8("w", [4, 1, 3, 3]), helper.make_tensor("seq_shape", TensorProto.INT64, [3], [0, 0, -1]),
             u8("lw", [2, 16, 32]), u8("lr", [2, 8, 32]),
             helper.make_tensor("lw_scale", F, [2], [0.01, 0.01]), helper.make_tensor("lr_scale", F, [2], [0.01, 0.01]),
             helper.make_tensor("lw_zp", TensorProto.UINT8, [2], [0, 0]),
             helper.make_tensor("lr_zp", TensorProto.UINT8, [2], [0, 0])]
    graph = helper.make_graph(nodes, "g", [_input("x", [1, 1, 8, "width"], TensorProto.UINT8)],
                              [helper.make_tensor_value_info("h_all", F, None),
                               helper.make_tensor_value_info("hs", TensorProto.INT64, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = onnxforge.load(proto)
    infer_all_shapes(model)
    shapes = {v.name: v.shape for n in model.graph.nodes for v in n.outputs}
    width = shapes["c"][3]
    assert shapes["c"][:3] == (1, 4, 4) and isinstance(width, str) and "width" in width
    assert shapes["s"] == (width, 1, 16)
    assert shapes["h_all"] == (width, 2, 1, 8) and shapes["h_last"] == (2, 1, 8)
    assert shapes["hs"] == (4,)
