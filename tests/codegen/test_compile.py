"""Compiled for x86, every test model matches onnxruntime (no graph optimizations:
the reference we trust) within atol 1e-4; the package holds what the manifest says."""
import hashlib
import io
import tarfile

import numpy as np
import pytest

import onnxforge
from onnxforge.codegen.manifest import LIBRARY, MANIFEST, WEIGHTS, read_package
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from tests.codegen import models

ATOL, RTOL = 1e-4, 1e-4


def check_against_ort(pkg, proto, dims=None, seed=0):
    model = onnxforge.load(proto)
    feeds = sample_inputs(model, seed=seed, dims=dims)
    ref = run_ort(model, feeds)
    got = pkg(**feeds)
    assert list(got) == list(ref)
    diff = compare_outputs(ref, got, ATOL, RTOL)
    assert diff.ok, diff
    return diff


@pytest.mark.parametrize("name", ["conv_net", "mlp", "transformer_block", "int8_weights"])
def test_x86_matches_onnxruntime(packages, name):
    check_against_ort(packages.get(name), getattr(models, name)())


def test_symbolic_batch_runs_at_several_sizes(packages):
    pkg = packages.get("symbolic_batch")
    assert pkg.inputs[0].shape == ("batch", 16)
    assert pkg.outputs[0].shape == ("batch", 1)
    for batch in (1, 5):
        check_against_ort(pkg, models.symbolic_batch(), dims={"batch": batch}, seed=batch)


@pytest.mark.parametrize("paddle", [False, True])
def test_reshape_targets_computed_at_run_time(paddle):
    """Reshape targets built from Shape with a symbolic batch, torch's way and
    paddle2onnx's (through Cast/Slice: a tensor, which we turn into a shape value,
    resolving 0 and -1), at two batch sizes."""
    proto = models.dynamic_reshape(paddle=paddle)
    pkg = onnxforge.compile(onnxforge.load(proto), pipeline="-O0")
    for batch in (1, 3):
        check_against_ort(pkg, proto, dims={"batch": batch}, seed=batch)


def test_pinned_input_shape(packages):
    pkg = packages.get("symbolic_batch", input_shapes={"x": (3, 16)})
    assert pkg.inputs[0].shape == (3, 16)
    assert pkg.manifest["input_shapes"] == {"x": [3, 16]}
    check_against_ort(pkg, models.symbolic_batch(), dims={"batch": 3})


def test_pinning_checks_names_and_dims():
    model = onnxforge.load(models.mlp())
    with pytest.raises(onnxforge.OnnxforgeError, match="inputs are: x"):
        onnxforge.compile(model, input_shapes={"input": (4, 32)})
    with pytest.raises(onnxforge.OnnxforgeError, match="dim 1 is 32 in the model, cannot pin it to 8"):
        onnxforge.compile(model, input_shapes={"x": (4, 8)})
    with pytest.raises(onnxforge.OnnxforgeError, match="rank 2"):
        onnxforge.compile(model, input_shapes={"x": (4, 32, 1)})


def test_int8_weights_stay_int8_in_the_package(packages):
    """-O0: the -O1 preset's fold-constants folds DequantizeLinear of a constant
    into fp32 weights (a passes issue, reported); lowering itself keeps int8."""
    pkg = packages.get("int8_weights", pipeline="-O0")
    check_against_ort(pkg, models.int8_weights())
    params = {p["name"]: p for p in pkg.manifest["params"]}
    assert params["w_int8"]["dtype"] == "int8" and params["w_int8"]["shape"] == [32, 16]
    _, files = read_package(pkg.path)
    with np.load(io.BytesIO(files[WEIGHTS])) as npz:
        stored = npz[params["w_int8"]["key"]]
    original = next(t for t in models.int8_weights().graph.initializer if t.name == "w_int8")
    assert stored.dtype == np.int8
    np.testing.assert_array_equal(stored, np.frombuffer(original.raw_data, np.int8).reshape(32, 16))


def test_manifest_describes_the_package(packages):
    pkg = packages.get("mlp")
    m = pkg.manifest
    assert m["format"] == "onnxforge-package"
    assert [(t["name"], t["dtype"], t["shape"]) for t in m["inputs"]] == [("x", "float32", [4, 32])]
    assert [t["name"] for t in m["outputs"]] == ["y", "t"]
    assert m["target"]["name"] == "x86" and m["target"]["tvm"]["kind"] == "llvm"
    assert m["pipeline"] == "-O1" and m["passes"].startswith("cleanup")
    assert m["versions"]["onnxforge"] == onnxforge.__version__ and m["versions"]["tvm"].startswith("0.27")
    with tarfile.open(pkg.path) as tar:
        data = {i.name: tar.extractfile(i).read() for i in tar.getmembers()}
    assert set(data) == {MANIFEST, "manifest.sha256", LIBRARY, WEIGHTS}
    for name in (LIBRARY, WEIGHTS):
        assert m["files"][name]["sha256"] == hashlib.sha256(data[name]).hexdigest()
    assert data["manifest.sha256"].decode().strip() == hashlib.sha256(data[MANIFEST]).hexdigest()
    assert data[LIBRARY][:4] == b"\x7fELF"
    assert b".debug_info" not in data[LIBRARY] and b".symtab" not in data[LIBRARY]  # linked with -s


def test_compile_from_path_and_unknown_preset(tmp_path):
    import onnx

    path = tmp_path / "mlp.onnx"
    onnx.save(models.mlp(), str(path))
    pkg = onnxforge.compile(str(path), pipeline="-O0", output=tmp_path / "mlp.ofpkg")
    assert pkg.manifest["model"]["source"] == "mlp.onnx"
    with pytest.raises(onnxforge.OnnxforgeError, match="unknown preset '-O9'"):
        onnxforge.compile(str(path), pipeline="-O9")
