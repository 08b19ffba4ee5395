"""Without --inputs, `optimize --verify` (and `compare`) invent inputs at sizes
the model can run, say which, and when onnxruntime cannot run them, say that they
were invented and how to give real ones."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxforge
from onnxforge.ir import DataError
from onnxforge.passes.invent import invent_inputs, symbolic_dims
from onnxforge.tools.cli import main

F = TensorProto.FLOAT


def _model(x_shape, nodes, inits=(), extra_inputs=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape), *extra_inputs],
                              [helper.make_tensor_value_info("y", F, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _audio():
    """[1, n] through a reflect pad of 20: onnxruntime needs n > 20 (16 fails, 128 runs)."""
    pads = numpy_helper.from_array(np.array([0, 20, 0, 20], np.int64), "pads")
    return _model([1, "n"], [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], [pads])


def _image():
    """[N,3,H,W] through a 100x100 average pool: 64x64 fails, 224x224 runs."""
    return _model(["N", 3, "H", "W"], [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[100, 100])])


def _reshaped():
    """[n, 4] reshaped to [2, 6, 4]: the model itself says n = 12."""
    target = numpy_helper.from_array(np.array([2, 6, 4], np.int64), "shape")
    return _model(["n", 4], [helper.make_node("Reshape", ["x", "shape"], ["y"])], [target])


def _impossible():
    """[1, n] through a reflect pad of 600: no size tried (16, 128, 512, 1) runs."""
    pads = numpy_helper.from_array(np.array([0, 600, 0, 600], np.int64), "pads")
    return _model([1, "n"], [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], [pads])


def test_roles_of_symbolic_dims():
    state = helper.make_tensor_value_info("state", F, [2, "b", 128])
    tokens = helper.make_tensor_value_info("tokens", F, ["batch", "seq", "hidden"])
    model = onnxforge.load(_model(["N", 3, "H", "W"], [helper.make_node("Identity", ["x"], ["y"])],
                                  extra_inputs=[state, tokens]))
    assert symbolic_dims(model) == {"N": "batch", "H": "spatial", "W": "spatial", "b": "batch",
                                    "batch": "batch", "seq": "sequence", "hidden": "spatial"}
    assert symbolic_dims(model, shapes={"x": (1, 3, 8, 8)}) == {"b": "batch", "batch": "batch", "seq": "sequence",
                                                                "hidden": "spatial"}


@pytest.mark.parametrize("build, dims", [(_audio, {"n": 128}), (_image, {"N": 1, "H": 224, "W": 224}),
                                         (_reshaped, {"n": 12})])
def test_sizes_the_model_runs_at(build, dims):
    invented = invent_inputs(onnxforge.load(build()))
    assert invented.dims == dims and invented.outputs is not None and invented.error is None
    assert "--inputs file.npz" in invented.note() and "invented" in invented.note()


def test_static_model_is_invented_once_without_symbolic_dims():
    invented = invent_inputs(onnxforge.load(_model([2, 3], [helper.make_node("Relu", ["x"], ["y"])])))
    assert invented.dims == {} and invented.shapes == {"x": (2, 3)} and len(invented.tried) == 1
    assert "x: float32[2,3]" in invented.note()


def test_inputs_onnxruntime_cannot_run_say_they_were_invented():
    invented = invent_inputs(onnxforge.load(_impossible()))
    assert invented.outputs is None and len(invented.tried) > 1
    with pytest.raises(DataError) as info:
        invented.reference()
    message = str(info.value)
    assert "invented inputs x: float32[1,16]" in message and "--inputs file.npz" in message
    assert "n=128; n=512; n=1" in message  # the other sizes tried are listed


def test_optimize_verify_says_which_inputs_it_invented(tmp_path, capsys):
    onnx.save(_audio(), tmp_path / "a.onnx")
    assert main(["optimize", str(tmp_path / "a.onnx"), "-O1", "--verify"]) == 0
    captured = capsys.readouterr()
    assert "invented random inputs x: float32[1,128]" in " ".join(captured.err.split())
    assert "OK" in captured.out
    assert main(["optimize", str(tmp_path / "a.onnx"), "-O1", "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["invented_inputs"] == {"shapes": {"x": [1, 128]}, "dims": {"n": 128}} and report["verify"]["ok"]


def test_optimize_verify_paddle_style_model_runs(tmp_path, capsys):
    """A [-1,3,-1,-1] input used to end in "negative dimensions are not allowed"."""
    proto = _model([-1, 3, -1, -1], [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3])])
    onnx.save(proto, tmp_path / "p.onnx")
    assert main(["optimize", str(tmp_path / "p.onnx"), "-O1", "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["invented_inputs"]["shapes"] == {"x": [1, 3, 64, 64]} and report["verify"]["ok"]


def test_optimize_verify_fails_naming_the_invented_inputs(tmp_path, capsys):
    onnx.save(_impossible(), tmp_path / "bad.onnx")
    assert main(["optimize", str(tmp_path / "bad.onnx"), "-O1", "--verify"]) == DataError.exit_code
    message = " ".join(capsys.readouterr().err.split())
    assert "onnxruntime failed to run the model on invented inputs x: float32[1,16]" in message
    assert "give real inputs with --inputs file.npz" in message


def test_given_inputs_are_not_invented(tmp_path, capsys):
    onnx.save(_audio(), tmp_path / "a.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((1, 300), np.float32))
    assert main(["optimize", str(tmp_path / "a.onnx"), "--verify", "--inputs", str(tmp_path / "in.npz"), "--json"]) == 0
    assert "invented_inputs" not in json.loads(capsys.readouterr().out)
