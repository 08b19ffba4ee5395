"""`onnxforge compile | run | targets | compare` through main(argv): outputs and exit codes."""
import json

import numpy as np
import onnx
import pytest

from onnxforge.tools.cli import main
from onnxforge.tools.codegen_cmds import parse_input_shapes
from tests.codegen import models


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(models.mlp(), str(path))
    return path


def test_compile_run_compare(tmp_path, mlp_file, capsys):
    pkg = tmp_path / "out" / "mlp.ofpkg"
    pkg.parent.mkdir()
    assert main(["compile", str(mlp_file), "-O1", "--target", "x86", "-o", str(pkg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(pkg) and report["target"]["name"] == "x86" and report["pipeline"] == "-O1"
    assert report["bytes"]["package"] == pkg.stat().st_size

    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert main(["run", str(pkg), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["random_inputs"] is False and run["outputs"]["y"]["shape"] == [4, 16]
    with np.load(out) as saved:
        assert sorted(saved.files) == ["t", "y"]
        np.testing.assert_allclose(saved["t"], np.tanh(saved["y"]), atol=1e-6)

    np.savez(tmp_path / "in.npz", x=x)
    assert main(["compare", str(mlp_file), str(pkg), "--inputs", str(tmp_path / "in.npz"), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["ok"] and cmp["max_abs"] < 1e-4 and set(cmp["max_abs_by_output"]) == {"y", "t"}
    # a package of other weights, same inputs and outputs: beyond tolerance, exit 5
    other = tmp_path / "other.onnx"
    onnx.save(models.mlp(seed=3), str(other))
    assert main(["compile", str(other), "-O0", "-o", str(tmp_path / "other.ofpkg"), "--json"]) == 0
    capsys.readouterr()
    assert main(["compare", str(mlp_file), str(tmp_path / "other.ofpkg")]) == 5
    assert "MISMATCH" in capsys.readouterr().out


def test_compile_a_pipeline_that_starts_with_a_preset_and_needs_calibration(tmp_path, mlp_file, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        np.savez(calib / f"{i}.npz", x=np.random.default_rng(i).standard_normal((4, 32)).astype(np.float32))
    pkg = tmp_path / "q.ofpkg"
    pipeline = "-O2,quantize-weights{method=gptq min_elements=16}"
    assert main(["compile", str(mlp_file), "-p", pipeline, "-o", str(pkg), "--json"]) == 4  # gptq needs data
    assert "calibration" in capsys.readouterr().err
    assert main(["compile", str(mlp_file), "-p", pipeline, "--calib", str(calib), "--calib-samples", "2",
                 "-o", str(pkg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline"] == pipeline and "quantize-weights" in report["passes"]
    assert main(["compile", str(mlp_file), "--calib-samples", "2", "-o", str(pkg)]) == 2


def test_default_output_next_to_the_model(mlp_file):
    assert main(["compile", str(mlp_file), "-O0", "--json"]) == 0
    assert mlp_file.with_suffix(".ofpkg").is_file()


def test_exit_codes(tmp_path, mlp_file, capsys):
    assert main(["compile", str(mlp_file), "-O9"]) == 2  # unknown preset
    assert main(["compile", str(mlp_file), "--target", "x68"]) == 2  # unknown target
    assert main(["compile", str(mlp_file), "--dequantize", "later", "-o", str(tmp_path / "d.ofpkg")]) == 2
    assert "dequantize must be one of run, load" in capsys.readouterr().err.replace("\n", " ")
    custom = tmp_path / "custom.onnx"
    onnx.save(models.custom_op(), str(custom))
    assert main(["compile", str(custom), "-O0", "-o", str(tmp_path / "c.ofpkg")]) == 6  # no lowering
    assert "no lowering for op com.example.Square" in capsys.readouterr().err.replace("\n", " ")
    bad = tmp_path / "bad.ofpkg"
    bad.write_bytes(b"not a package")
    assert main(["run", str(bad)]) == 3
    assert main(["compile", str(mlp_file), "--input-shape", "x=4,8", "-o", str(tmp_path / "p.ofpkg")]) == 2


def test_run_wrong_input_is_exit_2(tmp_path, mlp_file):
    pkg = tmp_path / "mlp.ofpkg"
    assert main(["compile", str(mlp_file), "-O0", "-o", str(pkg), "--json"]) == 0
    np.save(tmp_path / "x.npy", np.zeros((4, 32)))  # float64
    assert main(["run", str(pkg), "--input", f"x={tmp_path / 'x.npy'}"]) == 2
    assert main(["run", str(pkg), "--repeat", "2", "--json"]) == 0  # random inputs


def test_targets_lists_all(capsys):
    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["targets"]
    assert [r["name"] for r in rows] == ["x86", "x86-avx2", "x86-avx512", "arm64", "cuda"]
    assert rows[4]["tvm"]["arch"] == "sm_80"


def test_parse_input_shapes():
    assert parse_input_shapes(["x=1,3,48,320", "ids=1x128"]) == {"x": (1, 3, 48, 320), "ids": (1, 128)}
    with pytest.raises(Exception, match="NAME=D0,D1"):
        parse_input_shapes(["x"])
