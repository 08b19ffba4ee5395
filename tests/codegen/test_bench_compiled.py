"""tools/bench/compiled.py: a compiled package as a benchmark variant."""
import numpy as np
import onnx
import pytest

from onnxforge.tools.bench.compiled import compiled_variant
from onnxforge.tools.bench.variants import BuildContext, Skipped, ort_runner
from tests.codegen import models


def test_compiled_variant_runs_like_onnxruntime(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(models.symbolic_batch(), str(path))
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    ctx = BuildContext(path, tmp_path, threads=1, calibration=[feeds])
    variant = compiled_variant("tvm-x86", "-O1", "x86")
    assert variant.kind == "compiled"
    built = variant.build(ctx)
    assert built.artifact.suffix == ".ofpkg" and built.info["target"] == "x86"
    np.testing.assert_allclose(built.runner(feeds)["y"], ort_runner(path, 1)(feeds)["y"], atol=1e-5)


def test_symbolic_dims_are_pinned_from_calibration_when_lowering_needs_it(tmp_path, monkeypatch):
    from onnxforge.codegen import compiler
    from onnxforge.ir import LoweringError

    real = compiler.compile
    calls = []

    def picky(model, target, pipeline, **kw):  # fails unless shapes are pinned, as PP-OCRv4 does
        calls.append(kw.get("input_shapes"))
        if not kw.get("input_shapes"):
            raise LoweringError("symbolic dims")
        return real(model, target, pipeline, **kw)

    monkeypatch.setattr(compiler, "compile", picky)
    path = tmp_path / "model.onnx"
    onnx.save(models.symbolic_batch(), str(path))
    feeds = {"x": np.ones((2, 16), np.float32)}
    ctx = BuildContext(path, tmp_path, 1, [feeds])
    built = compiled_variant("tvm", "-O0", "x86").build(ctx)
    assert calls == [None, {"x": (2, 16)}] and built.info["pinned_input_shapes"] == {"x": [2, 16]}
    # a later compiled variant of the same run is pinned alike (its latency compares with the first's),
    # and exposes the model it was compiled from, for the report's FLOPs
    later = compiled_variant("tvm-2", "-O1", "x86").build(ctx)
    assert calls[2:] == [{"x": (2, 16)}] and later.info["pinned_input_shapes"] == {"x": [2, 16]}
    assert [list(v.shape) for v in later.model.graph.inputs] == [[2, 16]]


def test_cuda_variant_without_gpu_is_skipped(tmp_path):
    from onnxforge.codegen import host

    if host.cuda_arch() is not None:
        pytest.skip("a GPU is present")
    path = tmp_path / "model.onnx"
    onnx.save(models.mlp(), str(path))
    with pytest.raises(Skipped, match="cannot run here"):
        compiled_variant("tvm-cuda", "-O0", "cuda-sm80").build(BuildContext(path, tmp_path, 1, None))


def test_tuning_database_adds_tuned_variants():
    from onnxforge.tools.bench.command import with_compiled

    variants = with_compiled(["fast=-O2"], ["x86"], db="tuned/")
    assert variants[0] == "fast=-O2" and [v.name for v in variants[1:]] == ["tvm-x86:fast", "tvm-x86-tuned:fast"]
    assert "tuned with tuned/" in variants[2].description and "untuned" in variants[1].description
