"""quantize-static: QDQ pairs on activations (uint8 / int8), int8 per-channel weights,
int32 Conv biases; outputs within 5% relative L2 of fp32 in onnxruntime (with and
without its graph optimizations, which fuse QDQ into integer kernels); minmax /
percentile / entropy ranges; sensitivity report, max_loss exclusion, exclude=;
idempotence; bad input."""
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxforge
from onnxforge.ir import PassError, PassOptionError, to_proto
from onnxforge.passes.check import ort_session, run_ort
from tests.models.build import init, model, tensor


def cnn(opset=17):
    rng = np.random.default_rng(0)
    return onnxforge.load(model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("Flatten", ["c2"], ["f"]),
         helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc")],
        [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 10])],
        [init("w1", (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)),
         init("b1", rng.standard_normal(8).astype(np.float32)),
         init("w2", (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)),
         init("b2", rng.standard_normal(8).astype(np.float32)),
         init("w3", (rng.standard_normal((10, 512)) * 0.05).astype(np.float32)),
         init("b3", rng.standard_normal(10).astype(np.float32))], opset=opset))


def data(n, seed=0, shape=(1, 4, 8, 8)):
    return [{"x": np.random.default_rng(seed + i).standard_normal(shape).astype(np.float32)} for i in range(n)]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def inits(m):
    return {k: v.const_value() for k, v in m.graph.initializers.items()}


# relative L2 output error allowed: clipping ranges (percentile, entropy) cost more on
# this tiny model's Gaussian inputs than on real activations
TOLERANCE = {"minmax": 0.08, "percentile": 0.1, "entropy": 0.2}


@pytest.mark.parametrize("method", list(TOLERANCE))
def test_qdq_structure_and_accuracy(method):
    m, cal, held = cnn(), data(32), data(4, seed=100)
    r = onnxforge.optimize(m, f"quantize-static{{calibration={method} percentile=99.9}}", calibration=cal)
    q = r.model
    onnxforge.verify(q)
    onnx.checker.check_model(to_proto(q), full_check=True)
    ops = Counter(n.op_type for n in q.graph.nodes)
    assert ops["QuantizeLinear"] == 3 and ops["DequantizeLinear"] == 3 + 3 + 2  # activations, weights, biases
    i = inits(q)
    assert i["w1_quantized"].dtype == np.int8 and i["w1_scale"].shape == (8,)
    assert i["w3_quantized"].shape == (10, 512) and i["w3_scale"].shape == (10,)  # Gemm transB: axis 0
    assert i["b1_quantized"].dtype == np.int32
    assert i["x_zero_point"].dtype == np.uint8 and i["r1_zero_point"] == 0  # post-ReLU: zero at the bottom
    assert "w1" not in i and "b1" not in i  # float copies dropped
    fc_dq = next(n for n in q.graph.nodes if n.op_type == "DequantizeLinear" and n.outputs[0].name == "w3_dequantized")
    assert fc_dq.attributes["axis"] == 0
    for f in held:
        ref = run_ort(m, f)["y"]
        assert rel(ref, run_ort(q, f)["y"]) < TOLERANCE[method]
        assert rel(ref, ort_session(q, optimize=True).run(None, f)[0]) < TOLERANCE[method]  # fused kernels
    stats = r.records[0].stats
    assert stats["quantized"] == 3 and stats["activations"] == 3 and stats["int32_biases"] == 2
    assert set(stats["sensitivity"]) == {"conv1", "conv2", "fc"}
    assert 0 < stats["output_error"] < TOLERANCE[method]
    assert not onnxforge.optimize(q, "quantize-static", calibration=cal).changed


def test_percentile_and_entropy_ranges_are_within_minmax():
    m, cal = cnn(), data(32)
    scales = {meth: inits(onnxforge.optimize(m, f"quantize-static{{calibration={meth} percentile=99.9 sensitivity=false}}",
                                             calibration=cal).model)["x_scale"]
              for meth in ("minmax", "percentile", "entropy")}
    assert scales["percentile"] < scales["minmax"] and scales["entropy"] <= scales["minmax"]


def test_int8_activations_and_per_tensor_weights():
    m, cal = cnn(), data(8)
    r = onnxforge.optimize(m, "quantize-static{activations=int8 per_channel=false reduce_range=true sensitivity=false}",
                           calibration=cal)
    i = inits(r.model)
    assert i["x_zero_point"].dtype == np.int8 and i["w1_scale"].shape == ()
    assert np.abs(i["w1_quantized"]).max() <= 63
    assert rel(run_ort(m, cal[0])["y"], run_ort(r.model, cal[0])["y"]) < 0.1


def test_exclude_and_max_loss():
    m, cal = cnn(), data(16)
    r = onnxforge.optimize(m, "quantize-static{exclude=fc+conv1 sensitivity=false}", calibration=cal)
    assert r.records[0].stats["excluded"] == ["conv1", "fc"] and r.records[0].stats["quantized"] == 1
    assert Counter(n.op_type for n in r.model.graph.nodes)["QuantizeLinear"] == 1
    r = onnxforge.optimize(m, "quantize-static{exclude=Gemm}", calibration=cal)
    assert r.records[0].stats["excluded"] == ["fc"]

    full = onnxforge.optimize(m, "quantize-static", calibration=cal).records[0].stats
    loose = onnxforge.optimize(m, f"quantize-static{{max_loss={full['output_error'] * 2}}}", calibration=cal)
    assert loose.records[0].stats["auto_excluded"] == [] and loose.records[0].stats["quantized"] == 3
    tight_limit = min(full["sensitivity"].values()) * 1.5
    tight = onnxforge.optimize(m, f"quantize-static{{max_loss={tight_limit}}}", calibration=cal).records[0].stats
    worst = max(full["sensitivity"], key=full["sensitivity"].get)
    assert tight["auto_excluded"][0] == worst  # most sensitive first
    assert tight["output_error"] <= tight_limit and tight["quantized"] == 3 - len(tight["auto_excluded"])


def test_matmul_of_two_activations_quantizes_both():
    proto = model([helper.make_node("MatMul", ["a", "b"], ["y"])], [tensor("a", [2, 4, 8]), tensor("b", [2, 8, 4])],
                  [tensor("y", [2, 4, 4])])
    m = onnxforge.load(proto)
    rng = np.random.default_rng(1)
    cal = [{"a": rng.standard_normal((2, 4, 8)).astype(np.float32),
            "b": rng.standard_normal((2, 8, 4)).astype(np.float32)} for _ in range(8)]
    r = onnxforge.optimize(m, "quantize-static", calibration=cal)
    assert Counter(n.op_type for n in r.model.graph.nodes)["QuantizeLinear"] == 2
    assert rel(run_ort(m, cal[0])["y"], run_ort(r.model, cal[0])["y"]) < 0.05


def test_old_opset_is_raised_for_per_channel():
    m, cal = cnn(opset=12), data(4)
    r = onnxforge.optimize(m, "quantize-static{sensitivity=false}", calibration=cal)
    assert r.records[0].stats["opset"] == "12->13" and r.model.opset_imports[""] == 13
    assert rel(run_ort(m, cal[0])["y"], run_ort(r.model, cal[0])["y"]) < 0.05


def test_without_calibration_and_bad_options():
    with pytest.raises(PassError, match="quantize-static needs calibration data"):
        onnxforge.optimize(cnn(), "quantize-static")
    for text, match in [("calibration=kl", "calibration=kl: expected one of minmax, percentile, entropy"),
                        ("percentile=30", "percentile=30"), ("activations=int16", "activations=int16"),
                        ("ops=Add", "supported ops are MatMul\\+Gemm\\+Conv"), ("max_loss=-1", "max_loss")]:
        with pytest.raises(PassOptionError, match=match):
            onnxforge.optimize(cnn(), f"quantize-static{{{text}}}", calibration=data(2))
    with pytest.raises(onnxforge.ir.DataError, match="input 'x' has shape"):
        onnxforge.optimize(cnn(), "quantize-static", calibration=data(2, shape=(1, 4, 8, 9)))
