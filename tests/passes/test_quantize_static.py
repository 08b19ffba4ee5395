"""quantize-static: QDQ pairs on activations (uint8 / int8), per-channel weights
(int8 symmetric by default, uint8 asymmetric), int32 Conv biases; outputs within 5%
relative L2 of fp32 in onnxruntime (with and without its graph optimizations, which
fuse QDQ into integer kernels); minmax / percentile / entropy / mse ranges; bias
correction; GPTQ weights; int32-safe scales for dead channels; sensitivity report,
max_loss exclusion, exclude=; idempotence; bad input."""
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
    r = onnxforge.optimize(m, f"quantize-static{{calibration={method} percentile=99.9 weights=uint8}}", calibration=cal)
    q = r.model
    onnxforge.verify(q)
    onnx.checker.check_model(to_proto(q), full_check=True)
    ops = Counter(n.op_type for n in q.graph.nodes)
    assert ops["QuantizeLinear"] == 3 and ops["DequantizeLinear"] == 3 + 3 + 2  # activations, weights, biases
    i = inits(q)
    assert i["w1_quantized"].dtype == np.uint8 and i["w1_scale"].shape == (8,)  # asymmetric per channel
    assert i["w1_zero_point"].dtype == np.uint8 and i["w1_zero_point"].shape == (8,)
    assert i["w3_quantized"].shape == (10, 512) and i["w3_scale"].shape == (10,)  # Gemm transB: axis 0
    assert i["b1_quantized"].dtype == np.int32 and "b1_zero_point" not in i  # int32 zero point defaults to 0
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
    r = onnxforge.optimize(m, "quantize-static{activations=int8 weights=int8 per_channel=false reduce_range=true "
                              "sensitivity=false}", calibration=cal)
    i = inits(r.model)
    assert i["x_zero_point"].dtype == np.int8 and i["w1_scale"].shape == ()
    assert i["w1_quantized"].dtype == np.int8 and not i["w1_zero_point"].any()  # symmetric
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
                        ("ops=Add", "supported ops are MatMul\\+Gemm\\+Conv"), ("max_loss=-1", "max_loss"),
                        ("weights=int4", "weights=int4: expected uint8 or int8"),
                        ("weights=uint8 reduce_range=true", "reduce_range=true: 7-bit weights are for weights=int8"),
                        ("method=awq", "method=awq: expected one of rtn, gptq"), ("damp=2", "damp=2")]:
        with pytest.raises(PassOptionError, match=match):
            onnxforge.optimize(cnn(), f"quantize-static{{{text}}}", calibration=data(2))
    with pytest.raises(onnxforge.ir.DataError, match="input 'x' has shape"):
        onnxforge.optimize(cnn(), "quantize-static", calibration=data(2, shape=(1, 4, 8, 9)))


# ------------------------------------------------------------------ weights, bias correction, ranges
def depthwise_net(bias=True):
    """depthwise 3x3 conv (one large weight per channel: a coarse grid, as after a
    folded BatchNorm) -> Relu -> 1x1 conv; post-ReLU (positive-mean) inputs."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    w1[:, 0, 1, 1] = rng.uniform(8, 20, 16) * rng.choice([-1, 1], 16)
    nodes = [helper.make_node("Conv", ["x", "w1"] + (["b1"] if bias else []), ["c1"], pads=[1, 1, 1, 1], group=16,
                              name="dw"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"] + (["b2"] if bias else []), ["y"], name="pw")]
    inits_ = [init("w1", w1), init("w2", (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32))]
    if bias:
        inits_ += [init("b1", rng.standard_normal(16).astype(np.float32)),
                   init("b2", rng.standard_normal(8).astype(np.float32))]
    return onnxforge.load(model(nodes, [tensor("x", [1, 16, 12, 12])], [tensor("y", [1, 8, 12, 12])], inits_))


def relu_data(n, seed=0, shape=(1, 16, 12, 12)):
    rng = np.random.default_rng(seed)
    return [{"x": np.clip(rng.normal(2.0, 2.0, shape), 0, 6).astype(np.float32)} for _ in range(n)]


def errors(m, q, feeds, name="y"):
    """(relative L2 error, mean |per-channel mean error| / output std) of q against m."""
    ref = np.concatenate([run_ort(m, f)[name] for f in feeds])
    got = np.concatenate([run_ort(q, f)[name] for f in feeds])
    axes = tuple(a for a in range(ref.ndim) if a != 1)
    return rel(ref, got), float(np.abs((got - ref).mean(axis=axes)).mean() / ref.std())


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_removes_the_mean_shift_of_weight_rounding(bias):
    m, cal, held = depthwise_net(bias), relu_data(16), relu_data(8, seed=50)
    runs = {bc: onnxforge.optimize(m, f"quantize-static{{bias_correction={bc} sensitivity=false}}", calibration=cal)
            for bc in ("false", "true")}
    off, on = errors(m, runs["false"].model, held), errors(m, runs["true"].model, held)
    assert on[1] < 0.3 * off[1] and on[0] < off[0], (on, off)  # the mean shift, and the error with it
    assert runs["true"].records[0].stats["bias_corrected"] == 2
    assert runs["true"].records[0].stats["int32_biases"] == 2  # added biases are int32 too
    dw = next(n for n in runs["true"].model.graph.nodes if n.name == "dw")
    assert len(dw.inputs) == 3 and dw.inputs[2].producer.op_type == "DequantizeLinear"
    assert "bias_corrected" not in runs["false"].records[0].stats and len(
        next(n for n in runs["false"].model.graph.nodes if n.name == "dw").inputs) == (3 if bias else 2)


def test_bias_correction_of_gemm_and_matmul_add():
    rng = np.random.default_rng(4)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w1[0] = 25.0  # a coarse grid for every column
    w2 = rng.standard_normal((8, 32)).astype(np.float32)
    w2[:, 0] = -30.0
    m = onnxforge.load(model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"), helper.make_node("Add", ["h", "b1"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1, name="fc")],
        [tensor("x", [4, 16])], [tensor("y", [4, 8])],
        [init("w1", w1), init("b1", rng.standard_normal(32).astype(np.float32)), init("w2", w2)]))
    cal = [{"x": rng.uniform(0, 2, (4, 16)).astype(np.float32)} for _ in range(32)]
    held = [{"x": rng.uniform(0, 2, (4, 16)).astype(np.float32)} for _ in range(8)]
    off = onnxforge.optimize(m, "quantize-static{bias_correction=false sensitivity=false}", calibration=cal).model
    r = onnxforge.optimize(m, "quantize-static{sensitivity=false}", calibration=cal)
    assert r.records[0].stats["bias_corrected"] == 2
    fc = next(n for n in r.model.graph.nodes if n.name == "fc")
    assert len(fc.inputs) == 3 and fc.inputs[2].const_value().shape == (8,)  # Gemm C added
    assert not np.array_equal(inits(r.model)["b1"], inits(m)["b1"])  # the Add's constant, same name
    e_on, e_off = errors(m, r.model, held), errors(m, off, held)
    assert e_on[1] < 0.5 * e_off[1] and e_on[0] < e_off[0], (e_on, e_off)


def low_rank_mlp():
    """MatMul whose inputs span 16 of 64 dims; inputs 0-7 are always zero and their
    weights (+-10) only widen every column's grid: rounding errors that GPTQ can push
    where the inputs never are."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((64, 32)) * 0.2).astype(np.float32)
    w[:8] = rng.choice([-10.0, 10.0], (8, 32))
    m = onnxforge.load(model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                             [tensor("x", [8, 64])], [tensor("y", [8, 32])], [init("w", w)]))
    mix = rng.standard_normal((16, 64))
    mix[:, :8] = 0

    def feeds(n, seed):
        r = np.random.default_rng(seed)
        return [{"x": (r.standard_normal((8, 16)) @ mix).astype(np.float32)} for _ in range(n)]
    return m, feeds(64, 1), feeds(8, 2)


def test_gptq_weights_lower_the_output_error_in_the_same_format():
    m, cal, held = low_rank_mlp()
    runs = {meth: onnxforge.optimize(m, f"quantize-static{{method={meth} weights=uint8 bias_correction=false sensitivity=false}}",
                                     calibration=cal) for meth in ("rtn", "gptq")}
    rtn, gptq = (inits(runs[k].model) for k in ("rtn", "gptq"))
    assert np.array_equal(rtn["w_scale"], gptq["w_scale"]) and np.array_equal(rtn["w_zero_point"], gptq["w_zero_point"])
    assert gptq["w_quantized"].dtype == np.uint8 and not np.array_equal(rtn["w_quantized"], gptq["w_quantized"])
    e_rtn, e_gptq = errors(m, runs["rtn"].model, held)[0], errors(m, runs["gptq"].model, held)[0]
    assert e_gptq < 0.6 * e_rtn, (e_gptq, e_rtn)  # measured 0.042 vs 0.11
    stats = runs["gptq"].records[0].stats
    assert stats["gptq"] == 1 and stats["output_error_vs_rtn_mean"] < 1 and stats["weight_format"] == "uint8 gptq"
    # int8 symmetric weights take GPTQ too
    r = onnxforge.optimize(m, "quantize-static{method=gptq weights=int8 sensitivity=false}", calibration=cal)
    assert inits(r.model)["w_quantized"].dtype == np.int8 and r.records[0].stats["gptq"] == 1


def test_mse_ranges_clip_heavy_tails():
    """Laplace activations: at 8 bits the squared error is smallest clipping at about
    10x the scale parameter (Banner et al., ACIQ), below the extremes of 256k values."""
    rng = np.random.default_rng(6)
    m = onnxforge.load(model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [tensor("x", [64, 256])],
                             [tensor("y", [64, 8])], [init("w", rng.standard_normal((256, 8)).astype(np.float32))]))
    cal = [{"x": rng.laplace(0, 1, (64, 256)).astype(np.float32)} for _ in range(16)]
    runs = {c: onnxforge.optimize(m, f"quantize-static{{calibration={c} sensitivity=false}}", calibration=cal).model
            for c in ("minmax", "mse")}
    scale = {c: float(inits(q)["x_scale"]) for c, q in runs.items()}
    assert 0.6 * scale["minmax"] < scale["mse"] < 0.9 * scale["minmax"], scale
    assert 17 / 255 < scale["mse"] < 23 / 255  # a range of about +-10
    assert errors(m, runs["mse"], cal[:4])[0] < errors(m, runs["minmax"], cal[:4])[0]
    # post-ReLU values: zero stays exactly representable (zero point 0 at the bottom)
    relu = onnxforge.optimize(depthwise_net(), "quantize-static{calibration=mse sensitivity=false}",
                              calibration=relu_data(4)).model
    assert inits(relu)["r1_zero_point"] == 0


@pytest.mark.parametrize("weights", ["uint8", "int8"])
def test_dead_channels_keep_an_int32_bias(weights):
    """A channel whose weights a folded BatchNorm left at ~1e-9 (its output is its
    bias): the weight scale is raised so that the bias fits int32 with scale s_x * s_w,
    and onnxruntime's fused kernels reproduce the channel."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32)
    w[0] = rng.standard_normal((8, 3, 3)) * 1e-9
    b = np.array([2.5, 0.1, -0.3, 0.2], np.float32)
    m = onnxforge.load(model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                              helper.make_node("Relu", ["c"], ["y"])],
                             [tensor("x", [1, 8, 6, 6])], [tensor("y", [1, 4, 6, 6])], [init("w", w), init("b", b)]))
    cal = relu_data(8, shape=(1, 8, 6, 6))
    r = onnxforge.optimize(m, f"quantize-static{{weights={weights} sensitivity=false}}", calibration=cal)
    assert r.records[0].stats["int32_biases"] == 1
    out = ort_session(r.model, optimize=True).run(None, cal[0])[0]
    assert np.allclose(out[0, 0], 2.5, atol=0.02)
    assert rel(run_ort(m, cal[0])["y"], out) < 0.03


def test_uint8_weights_match_the_qdq_reference_in_fused_kernels():
    """onnxruntime's x86 u8 x s8 kernels saturate 16-bit pair sums on AVX2 CPUs without
    VNNI; uint8 weights take its u8 x u8 kernels: the fused model computes what the QDQ
    graph says on any CPU."""
    rng = np.random.default_rng(8)
    w = rng.uniform(0.5, 1.0, (16, 64, 1, 1)).astype(np.float32)  # same sign: pair sums at the top of the range
    m = onnxforge.load(model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                              helper.make_node("Relu", ["c"], ["r"]),
                              helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")],
                             [tensor("x", [1, 64, 4, 4])], [tensor("y", [1, 16, 4, 4])],
                             [init("w", w), init("w2", rng.standard_normal((16, 16, 1, 1)).astype(np.float32))]))
    cal = [{"x": rng.uniform(0, 6, (1, 64, 4, 4)).astype(np.float32)} for _ in range(8)]
    q = onnxforge.optimize(m, "quantize-static{weights=uint8 sensitivity=false}", calibration=cal).model
    assert inits(q)["w_quantized"].dtype == np.uint8
    for f in cal[:2]:
        assert rel(run_ort(q, f)["y"], ort_session(q, optimize=True).run(None, f)[0]) < 0.01
