"""Every CLI failure: one unwrapped line on stderr and a documented exit code, a JSON
object with --json, no traceback unless --debug; bad files and options refused before
any work is done; only valid models written (issue: hardening)."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxforge
from onnxforge.ir import ModelLoadError, PipelineSyntaxError, VerifierError
from onnxforge.tools.cli import main
from onnxforge.tools.example import build_example


def _cli(*args):
    """The installed entry point in a subprocess, stderr a pipe (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "onnxforge.tools.cli", *args], capture_output=True, text=True,
                          timeout=300, env={"COLUMNS": "40", "PATH": "/usr/bin:/bin"})


def _add_model(w: TensorProto, x_shape=(2,), ir_version=None) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def test_errors_are_one_line_whatever_the_terminal_width(tmp_path):
    missing = tmp_path / ("a-rather-long-folder-name-" * 4) / "model.onnx"
    run = _cli("inspect", str(missing))
    assert run.returncode == 3
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], run.stderr


def test_json_errors_are_json(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.ofpkg"), "--json"]) == 3
    captured = capsys.readouterr()
    report = json.loads(captured.err)
    assert captured.out == "" and report["exit_code"] == 3 and report["type"] == "PackageError" and "no such file" in report["error"]


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import onnxforge.tools.cli as cli

    def boom(path):
        raise KeyError("something internal")
    monkeypatch.setattr(cli, "_load", boom)
    assert main(["inspect", "example"]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["inspect", "example", "--debug"])


def test_nested_pipelines_are_a_syntax_error_not_a_recursion_error(capsys):
    deep = "repeat{max=2}(" * 2000 + "cse" + ")" * 2000
    with pytest.raises(PipelineSyntaxError, match="nested more than 32 deep"):
        onnxforge.optimize(onnxforge.load(build_example()), deep)
    assert main(["optimize", "example", "-p", deep]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nested more than 32 deep at column" in err and len(err) < 300


def test_outputs_to_a_missing_folder_are_refused_before_any_work(tmp_path, capsys):
    for args in (["optimize", "example", "-O1", "-o"], ["compile", "example", "-o"]):
        assert main([*args, str(tmp_path / "no" / "dir" / "out")]) == 2
        assert "does not exist" in capsys.readouterr().err


def test_weights_whose_dims_overflow_int64_are_refused():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**32, 2**32], raw_data=b"")
    with pytest.raises(ModelLoadError, match="more than any file can hold"):
        onnxforge.load(_add_model(w))
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**31, 2**31, 4], raw_data=b"")  # wraps to 0 too
    with pytest.raises(ModelLoadError, match="carries 0 bytes|more than any file"):
        onnxforge.load(_add_model(w))


def test_ir_version_zero_is_refused_at_load():
    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    with pytest.raises(ModelLoadError, match="ir_version is 0"):
        onnxforge.load(_add_model(w, ir_version=0))


def test_only_valid_models_are_saved(tmp_path):
    """Add of [2] and [3]: onnx's strict shape inference refuses it, so save does, leaving no file."""
    model = onnxforge.load(_add_model(helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])))
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerifierError, match="not valid ONNX .*Incompatible dimensions"):
        onnxforge.save(model, out)
    assert not out.exists() and not list(tmp_path.iterdir())
    ok = onnxforge.load(_add_model(helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])))
    onnxforge.save(ok, out)  # an output of unknown shape, as exporters write them, is fine
    assert out.exists()


def test_ragged_inputs_to_a_package_are_a_data_error():
    from onnxforge.ir import DataError

    pytest.importorskip("tvm")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    pkg = onnxforge.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target="x86")
    with pytest.raises(DataError, match="input 'x' is not"):
        pkg(x=[[1.0, 2.0], [3.0]])
    assert pkg(x=np.ones((2, 2), np.float32))["y"].shape == (2, 2)
