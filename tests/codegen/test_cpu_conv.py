"""Convolutions through the C kernels: gemm_packed.c's onnxforge_conv2d_packed (direct,
over the weight packed once; groups 1) and conv.c's onnxforge_conv2d (blocked im2col +
OpenBLAS, the epilogue on each block: grouped convolutions, and weights known only at
run time) with every window, stride, dilation, padding and group count, batch > 1,
blocks that split output rows, and symbolic spatial dims (one package run at several
sizes); onnxforge_conv2d_transpose (OpenBLAS + col2im) with overlapping
windows, padding, output padding, dilation and groups. Against onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")
pytest.importorskip("scipy_openblas32")
ort = pytest.importorskip("onnxruntime")

from tests.codegen import models  # noqa: E402

# (input shape, weight shape, Conv attributes)
_CASES = {
    "3x3": ((1, 8, 13, 17), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    "stride2_batch2": ((2, 3, 33, 40), (16, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "dilated_asymmetric": ((1, 6, 20, 23), (16, 6, 3, 3), {"pads": [2, 0, 1, 3], "dilations": [2, 2]}),
    "window5x3_stride3x1": ((1, 4, 21, 19), (7, 4, 5, 3), {"pads": [0, 1, 2, 1], "strides": [3, 1]}),
    "grouped": ((1, 12, 11, 15), (24, 3, 3, 3), {"pads": [1, 1, 1, 1], "group": 4}),
    "1x1_strided": ((1, 16, 14, 14), (32, 16, 1, 1), {"strides": [2, 2]}),
    "1x1": ((2, 40, 9, 30), (48, 40, 1, 1), {}),
    "1x1_few_inputs": ((1, 32, 14, 14), (48, 32, 1, 1), {}),  # <= 32 input channels: OpenBLAS over x as it is
    "1x1_channels_unfilled": ((1, 40, 14, 14), (8, 40, 1, 1), {}),  # OpenBLAS over x as it is
    "no_padding_wide": ((1, 2, 5, 300), (4, 2, 3, 3), {}),  # many blocks, each a slice of the rows
    "deep": ((1, 256, 6, 6), (96, 256, 3, 3), {"pads": [1, 1, 1, 1]}),  # few pixels: stripes of channels
}


def _model(xshape, wshape, attrs, dims=None, op="Conv", co=None, weight_input=False):
    """x -> op(x, W, B) -> Relu; W an initializer, or (weight_input) a second graph
    input fed at run time."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal(wshape) * 0.3).astype(np.float32), "W")
    inits = [numpy_helper.from_array(rng.standard_normal(co or wshape[0]).astype(np.float32), "B")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or xshape)]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(wshape)))
    else:
        inits.append(w)
    nodes = [helper.make_node(op, ["x", "W", "B"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _compare(tmp_path, model, shapes, kernel='"onnxforge_conv2d_packed"', feeds=None):
    import onnx

    import onnxforge

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pkg = onnxforge.compile(path, target="x86", pipeline="cleanup", output=tmp_path / "m.ofpkg", cpu_kernels="blas")
    if kernel:
        assert kernel in models.blas_dispatched(model)
    rng = np.random.default_rng(1)
    for shape in shapes:
        feed = {"x": rng.standard_normal(shape).astype(np.float32), **(feeds or {})}
        ref = sess.run(None, feed)[0]
        got = pkg(**feed)["y"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("case", list(_CASES))
def test_conv_matches_onnxruntime(tmp_path, case):
    xshape, wshape, attrs = _CASES[case]
    # direct where the 16-channel tiles fill (blas.py); grouped and 7 or 4 output channels: im2col
    direct = attrs.get("group", 1) == 1 and wshape[0] % 16 == 0
    plain_1x1 = wshape[2:] == (1, 1) and attrs.get("strides", [1, 1]) == [1, 1]
    direct = direct and not (plain_1x1 and wshape[1] <= 32)
    kernel = '"onnxforge_conv2d_packed"' if direct else '"onnxforge_sgemm' if plain_1x1 else '"onnxforge_conv2d"'
    _compare(tmp_path, _model(xshape, wshape, attrs), [xshape], kernel=kernel)


@pytest.mark.parametrize("case", ["stride2_batch2", "dilated_asymmetric", "window5x3_stride3x1", "no_padding_wide"])
def test_conv_with_a_run_time_weight_takes_im2col(tmp_path, case):
    """A weight fed at run time cannot be packed at load: conv.c's im2col path."""
    xshape, wshape, attrs = _CASES[case]
    w = (np.random.default_rng(2).standard_normal(wshape) * 0.3).astype(np.float32)
    _compare(tmp_path, _model(xshape, wshape, attrs, weight_input=True), [xshape], kernel='"onnxforge_conv2d"',
             feeds={"W": w})


def test_symbolic_spatial_dims_one_package(tmp_path):
    """Height and width left symbolic: the kernel reads them at run time."""
    model = _model(None, (16, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, dims=[1, 3, "h", "w"])
    _compare(tmp_path, model, [(1, 3, 32, 48), (1, 3, 17, 5), (1, 3, 1, 1)])


# ConvTranspose: (input shape, weight shape (ci, co / group, kh, kw), attributes)
_TRANSPOSED = {
    "upsample2x2": ((1, 8, 10, 12), (8, 4, 2, 2), {"strides": [2, 2]}),  # PP-OCR det's
    "overlapping3x3_pads": ((2, 6, 7, 9), (6, 5, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 2]}),
    "output_padding_dilation": ((1, 4, 6, 5), (4, 3, 3, 2), {"strides": [3, 2], "output_padding": [1, 1],
                                                             "dilations": [1, 2]}),
    "grouped": ((1, 6, 5, 5), (6, 2, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": 3}),
}


@pytest.mark.parametrize("case", list(_TRANSPOSED))
def test_conv_transpose_matches_onnxruntime(tmp_path, case):
    xshape, wshape, attrs = _TRANSPOSED[case]
    model = _model(xshape, wshape, attrs, op="ConvTranspose", co=wshape[1] * attrs.get("group", 1))
    assert "onnxforge_conv2d_transpose" in models.blas_dispatched(model)
    _compare(tmp_path, model, [xshape], kernel=None)

