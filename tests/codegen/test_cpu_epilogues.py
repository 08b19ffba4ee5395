"""Activations folded into the conv/matmul C calls (codegen/cpu/epilogues.py,
activation.h): every form exporters write for SiLU and HardSwish, after a conv, a
depthwise conv, a 1x1 conv and a matmul, is taken by the C call (no sigmoid or clip
left for TVM) and the package matches onnxruntime, tails included."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")
pytest.importorskip("scipy_openblas32")
ort = pytest.importorskip("onnxruntime")

from tests.codegen import models  # noqa: E402

_ACTIVATIONS = {  # name -> nodes from "c" to "y"
    "silu": [("Sigmoid", ["c"], ["s"], {}), ("Mul", ["c", "s"], ["y"], {})],
    "silu_scaled": [("Mul", ["c", "k"], ["ck"], {}), ("Sigmoid", ["ck"], ["s"], {}), ("Mul", ["s", "c"], ["y"], {})],
    "hardswish": [("HardSwish", ["c"], ["y"], {})],
    "x_hardsigmoid": [("HardSigmoid", ["c"], ["s"], {"alpha": 0.2, "beta": 0.5}), ("Mul", ["s", "c"], ["y"], {})],
    "relu6_form": [("Add", ["c", "three"], ["a"], {}), ("Clip", ["a", "zero", "six"], ["r"], {}),
                   ("Div", ["r", "six"], ["d"], {}), ("Mul", ["c", "d"], ["y"], {})],
}
_CORES = {  # name -> (input shape, weight shape, node attributes); "gemm" is a MatMul + bias
    "conv3x3": ((1, 4, 9, 11), (8, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    "conv1x1": ((1, 6, 5, 7), (8, 6, 1, 1), {}),
    "depthwise": ((1, 8, 9, 11), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8, "strides": [2, 2]}),
    "gemm": ((3, 12), (12, 8), {}),
}


def _model(core: str, act: str, extra_reader: bool = False):
    rng = np.random.default_rng(0)
    xshape, wshape, attrs = _CORES[core]
    inits = {"W": rng.standard_normal(wshape) * 0.8, "B": rng.standard_normal(8),
             "k": np.array(1.702), "three": np.array(3.0), "zero": np.array(0.0), "six": np.array(6.0)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    if core == "gemm":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["c"])]
    else:
        nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], **attrs)]
    nodes += [helper.make_node(op, i, o, **a) for op, i, o, a in _ACTIVATIONS[act]]
    outputs = ["y", "c"] if extra_reader else ["y"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _check(tmp_path, model, scale=4.0):
    import onnx

    import onnxforge

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * scale
    if scale > 1:
        x.reshape(-1)[:4] = [60.0, -60.0, 200.0, -200.0]  # far into the sigmoid's and the clamp's tails
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    pkg = onnxforge.compile(path, target="x86", pipeline="cleanup", output=tmp_path / "m.ofpkg", cpu_kernels="blas")
    for r, o in zip(ref, pkg(x=x).values()):
        np.testing.assert_allclose(o, r, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(r).max())))


@pytest.mark.parametrize("core", list(_CORES))
@pytest.mark.parametrize("act", list(_ACTIVATIONS))
def test_activation_folds_into_the_c_call(tmp_path, core, act):
    text = models.blas_dispatched(_model(core, act))
    assert "R.sigmoid" not in text and "R.clip" not in text, text
    _check(tmp_path, _model(core, act))


def test_other_gates_stay_with_tvm(tmp_path):
    """x * tanh(softplus(x)) (Mish) and x * exp(x) are not gate forms the C kernels
    take: they stay TVM kernels, and the package is still right."""
    for extra in ([("Softplus", ["c"], ["sp"], {}), ("Tanh", ["sp"], ["t"], {}), ("Mul", ["c", "t"], ["y"], {})],
                  [("Exp", ["c"], ["e"], {}), ("Mul", ["e", "c"], ["y"], {})]):
        _ACTIVATIONS["other"] = extra
        try:
            model = _model("conv3x3", "other")
            assert "R.multiply" in models.blas_dispatched(model)
            _check(tmp_path, model, scale=1.0)
        finally:
            del _ACTIVATIONS["other"]


@pytest.mark.parametrize("act", ["silu", "hardswish"])
def test_value_read_elsewhere_is_not_folded(tmp_path, act):
    """The conv's output is also a graph output: the activation stays a TVM kernel
    and both outputs are right."""
    model = _model("conv3x3", act, extra_reader=True)
    text = models.blas_dispatched(model)
    assert "R.sigmoid" in text or "R.clip" in text
    _check(tmp_path, model)


@pytest.mark.parametrize("core", ["conv3x3", "conv1x1", "gemm"])
def test_activation_folds_with_symbolic_dims(tmp_path, core):
    """One package for any batch and image size (or row count): the bias and the SiLU
    still fold into the C call when only the output-channel dim is static, and the
    package is right at two sizes."""
    import onnx

    import onnxforge

    model = _model(core, "silu")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    names = ["rows", None] if core == "gemm" else ["batch", None, "height", "width"]
    for dim, name in zip(dims, names):
        if name:
            dim.dim_param = name
    text = models.blas_dispatched(model)
    assert "R.sigmoid" not in text and "R.add" not in text, text
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    pkg = onnxforge.compile(path, target="x86", pipeline="cleanup", output=tmp_path / "m.ofpkg", cpu_kernels="blas")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed = _CORES[core][0]
    for grow in (1, 2):
        shape = [fixed[0] * grow, fixed[1]] if core == "gemm" else [grow, fixed[1], fixed[2] + grow, fixed[3] - grow]
        x = np.random.default_rng(grow).standard_normal(shape).astype(np.float32) * 4
        (ref,) = session.run(None, {"x": x})
        np.testing.assert_allclose(pkg(x=x)["y"], ref, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(ref).max())))
