"""lowrank: exact on weights of low true rank (energy=1), factors only where FLOPs
drop, MatMul/Gemm/Conv 1x1/Tucker-2, method=data beats plain SVD on correlated
activations, rank options, idempotence, composition with pruning and quantization,
bad options."""
import numpy as np
import onnx
import pytest
from onnx import helper

import onnxforge
from onnxforge.ir import OnnxforgeError, PassOptionError, to_proto
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from tests.models import pruning as P
from tests.models.build import init, model, tensor


def low_rank(k, n, r, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, r)) @ rng.standard_normal((r, n)) / np.sqrt(k * r)).astype(np.float32)


def matmul_model(w, rows=4):
    k, n = w.shape
    return model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [rows, k])], [tensor("y", [rows, n])],
                 [init("w", w)])


def gemm_model(w, trans_b):
    k, n = w.shape
    b = w.T if trans_b else w
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b, alpha=0.5, beta=2.0)],
                 [tensor("x", [4, k])], [tensor("y", [4, n])], [init("w", b), init("b", np.ones(n, np.float32))])


def conv_model(w, bias=True):
    m, c = w.shape[:2]
    k = w.shape[2]
    inputs = ["x", "w"] + (["b"] if bias else [])
    inits = [init("w", w)] + ([init("b", np.arange(m, dtype=np.float32))] if bias else [])
    return model([helper.make_node("Conv", inputs, ["y"], pads=[k // 2] * 4, strides=[2, 2])],
                 [tensor("x", [1, c, 8, 8])], [tensor("y", [1, m, 4, 4])], inits)


def run(proto, pipeline, feeds=None, calibration=None):
    m = onnxforge.load(proto)
    feeds = feeds or sample_inputs(m)
    result = onnxforge.optimize(m, pipeline, calibration=calibration)
    onnxforge.verify(result.model)
    onnx.checker.check_model(to_proto(result.model), full_check=True)
    return result, run_ort(m, feeds), run_ort(result.model, feeds)


@pytest.mark.parametrize("build", [
    lambda: matmul_model(low_rank(128, 96, 8)),
    lambda: gemm_model(low_rank(128, 96, 8), 0),
    lambda: gemm_model(low_rank(128, 96, 8), 1),
    lambda: conv_model(low_rank(96, 128, 8).reshape(96, 128, 1, 1)),
], ids=["matmul", "gemm", "gemm-transB", "conv1x1"])
def test_full_energy_is_exact(build):
    result, ref, got = run(build(), "lowrank{energy=1.0}")
    stats = result.records[0].stats
    assert result.changed and stats["factored"] == 1 and list(stats["ranks"].values()) == [8]
    assert stats["flops_after"] < stats["flops_before"]
    assert compare_outputs(ref, got, 1e-4, 1e-4).ok
    again = onnxforge.optimize(result.model, "lowrank{energy=1.0}")
    assert not again.changed


def test_tucker_exact_on_low_multilinear_rank():
    rng = np.random.default_rng(1)
    core = rng.standard_normal((8, 8, 3, 3))
    w = np.einsum("oikl,mo,ci->mckl", core, rng.standard_normal((64, 8)), rng.standard_normal((48, 8))) / 50
    result, ref, got = run(conv_model(w.astype(np.float32)), "lowrank{energy=1.0}")
    assert [n.op_type for n in result.model.graph.nodes] == ["Conv", "Conv", "Conv"]
    assert compare_outputs(ref, got, 1e-4, 1e-4).ok


def test_no_factoring_without_flop_savings():
    rng = np.random.default_rng(0)
    result, ref, got = run(matmul_model(rng.standard_normal((128, 96)).astype(np.float32)), "lowrank{energy=1.0}")
    assert not result.changed and compare_outputs(ref, got, 0, 0).ok


def test_rank_options():
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    result, _, _ = run(matmul_model(w), "lowrank{rank_ratio=0.25 round_to=16}")
    assert list(result.records[0].stats["ranks"].values()) == [64]
    result, _, _ = run(matmul_model(w), "lowrank{flops_budget=0.5 round_to=1}")
    stats = result.records[0].stats
    assert stats["flops_after"] <= 0.5 * stats["flops_before"] + 1
    result, _, _ = run(matmul_model(w), "lowrank{rank_ratio=0.3 round_to=8}")
    assert list(result.records[0].stats["ranks"].values())[0] % 8 == 0


def test_data_method_beats_svd_on_correlated_inputs():
    rng = np.random.default_rng(0)
    k, n = 128, 128
    w = rng.standard_normal((k, n)).astype(np.float32)
    mix = rng.standard_normal((k, 16)) @ rng.standard_normal((16, k))  # activations live in 16 dims (+ noise)
    def sample(s):
        r = np.random.default_rng(s)
        return {"x": (r.standard_normal((32, k)) @ mix + 0.01 * r.standard_normal((32, k))).astype(np.float32)}
    cal = [sample(s) for s in range(8)]
    proto = matmul_model(w, rows=32)
    feeds = sample(100)
    _, ref, svd = run(proto, "lowrank{rank_ratio=0.25}", feeds, cal)
    result, _, data = run(proto, "lowrank{rank_ratio=0.25 method=data}", feeds, cal)
    err = lambda a: np.linalg.norm(ref["y"] - a["y"]) / np.linalg.norm(ref["y"])  # noqa: E731
    assert err(data) < 0.05 < err(svd)


def test_transformer_and_pipeline_composition():
    feeds = P.transformer_feeds(hidden=64)
    proto = P.transformer(hidden=64, ffn=256)
    result, ref, got = run(proto, "prune-channels{ratio=0.25},lowrank{rank_ratio=0.25 min_elements=0},"
                                  "quantize-weights{bits=8 min_elements=0}", feeds)
    assert [r.changed for r in result.records] == [True, True, True]
    assert all(ref[k].shape == got[k].shape and np.all(np.isfinite(got[k])) for k in ref)


def test_method_data_needs_calibration():
    with pytest.raises(OnnxforgeError, match="needs calibration data"):
        onnxforge.optimize(onnxforge.load(matmul_model(low_rank(64, 64, 4))), "lowrank{method=data}")


@pytest.mark.parametrize("text, option", [
    ("energy=1.5", "energy"), ("rank_ratio=0", "rank_ratio"), ("flops_budget=2", "flops_budget"),
    ("energy=0.9 rank_ratio=0.5", "energy, rank_ratio"), ("round_to=0", "round_to"), ("ops=Conv+Einsum", "ops"),
    ("method=svd2", "method"), ("rank=4", "rank"),
])
def test_bad_options(text, option):
    with pytest.raises(PassOptionError, match=option):
        onnxforge.optimize(onnxforge.load(matmul_model(low_rank(64, 64, 4))), f"lowrank{{{text}}}")


def test_data_method_with_fewer_rows_than_channels_generalises():
    """A classifier head sees one row per sample: with 8 rows for 256 channels the
    whitened fit must not overfit the calibration rows (it falls back towards SVD)."""
    rng = np.random.default_rng(0)
    k = n = 256
    w = (rng.standard_normal((k, 32)) @ rng.standard_normal((32, n)) / 32 + 0.02 * rng.standard_normal((k, n)))
    proto = matmul_model(w.astype(np.float32), rows=1)
    cal = [{"x": rng.standard_normal((1, k)).astype(np.float32)} for _ in range(8)]
    feeds = {"x": rng.standard_normal((1, k)).astype(np.float32)}
    _, ref, svd = run(proto, "lowrank{rank_ratio=0.125 round_to=1}", feeds, cal)
    _, _, data = run(proto, "lowrank{rank_ratio=0.125 round_to=1 method=data}", feeds, cal)
    err = lambda a: np.linalg.norm(ref["y"] - a["y"]) / np.linalg.norm(ref["y"])  # noqa: E731
    assert err(data) < 1.2 * err(svd) + 1e-3


def test_flops_budget_is_kept_when_a_layer_stays_dense():
    """A layer whose allotted rank saves nothing stays dense; its cost comes out of the
    budget, so the whole model still meets it (here: a full-rank square layer next to
    a low-rank one)."""
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((128, 128)).astype(np.float32)
    low = low_rank(128, 128, 8, seed=1)
    proto = model([helper.make_node("MatMul", ["x", "a"], ["h"], name="mm_a"),
                   helper.make_node("MatMul", ["h", "b"], ["y"], name="mm_b")],
                  [tensor("x", [4, 128])], [tensor("y", [4, 128])], [init("a", dense), init("b", low)])
    result, _, _ = run(proto, "lowrank{flops_budget=0.6 round_to=1}")
    stats = result.records[0].stats
    assert stats["flops_after"] <= 0.6 * stats["flops_before"] + 1
    # per-layer report counts both factors
    assert list(stats["ranks"]) == ["mm_b"]
    name = "mm_b"
    before, after = stats["layers"][name].split(",")[0].split()[1].split("->")
    assert int(after) == 2 * 4 * stats["ranks"][name] * 256


def test_tucker_gets_a_rank_per_mode():
    """Input channels of multilinear rank 8, output channels full rank 64: the output
    mode keeps all 64 (one rank from the shorter, input spectrum cut it to 8 and lost
    most of the weight)."""
    rng = np.random.default_rng(2)
    core = rng.standard_normal((64, 8, 3, 3))
    w = np.einsum("oikl,ci->ockl", core, rng.standard_normal((48, 8))) / 50
    result, ref, got = run(conv_model(w.astype(np.float32)), "lowrank{energy=0.9999}")
    stats = result.records[0].stats
    assert list(stats["ranks"].values()) == ["64x8"] and stats["max_rel_weight_error"] < 1e-4
    assert compare_outputs(ref, got, 1e-4, 1e-4).ok
