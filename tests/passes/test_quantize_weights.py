"""quantize-weights: int8 (per channel / per tensor) and int4 (blocked) weights
behind DequantizeLinear; outputs checked against the fp32 model in onnxruntime
(relative L2 error < 2% for int8, < 15% for int4 on random weights), weight bytes,
survival through -O2, idempotence, and bad input."""
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxforge
from onnxforge.ir import PassError, PassOptionError, to_proto
from onnxforge.ir.external_data import expected_nbytes
from onnxforge.passes.check import run_ort, sample_inputs
from onnxforge.passes.quantize import quantize_array
from tests.models.build import init, model, tensor

F = TensorProto.FLOAT


def ops(m):
    return Counter(n.op_type for n in m.graph.all_nodes())


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def weight_bytes(m):
    """Bytes of the initializers as saved (int4 packed two to a byte)."""
    return sum(expected_nbytes(t) for t in to_proto(m).graph.initializer)


def matmul_model(k=64, n=32, seed=0, opset=17, extra=(), extra_inits=()):
    rng = np.random.default_rng(seed)
    return model([helper.make_node("MatMul", ["x", "w"], ["y"]), *extra], [tensor("x", [4, k])], [tensor("y", [4, n])],
                 [init("w", rng.standard_normal((k, n)).astype(np.float32)), *extra_inits], opset=opset)


def gemm_model(trans_b, k=64, n=32, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)], [tensor("x", [4, k])],
                 [tensor("y", [4, n])], [init("w", w), init("b", rng.standard_normal(n).astype(np.float32))])


def conv_model(seed=2, constant_node=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    inits = [init("b", rng.standard_normal(32).astype(np.float32))]
    if constant_node:  # weights as Constant nodes, as in PP-OCR exports
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(w, "w")))
    else:
        inits.append(init("w", w))
    return model(nodes, [tensor("x", [1, 16, 8, 8])], [tensor("y", [1, 32, 8, 8])], inits)


def quantize(proto, pipeline):
    """Run with the numeric check instrument on, verify, and return (result, fp32 outputs, new outputs)."""
    m = onnxforge.load(proto)
    feeds = sample_inputs(m)
    result = onnxforge.optimize(m, pipeline, check=True, inputs=feeds)
    onnxforge.verify(result.model)
    onnx.checker.check_model(to_proto(result.model), full_check=True)
    return m, result, run_ort(m, feeds), run_ort(result.model, feeds)


MODELS = {
    "matmul": matmul_model,
    "gemm": lambda: gemm_model(0),
    "gemm-transB": lambda: gemm_model(1),
    "conv": conv_model,
    "conv-constant-node": lambda: conv_model(constant_node=True),
}


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("name", list(MODELS))
def test_int8_close_and_smaller(name, granularity):
    m, result, ref, got = quantize(MODELS[name](), f"quantize-weights{{bits=8 granularity={granularity}}}")
    record = result.records[0]
    assert record.changed and record.stats["quantized"] == 1
    assert ops(result.model)["DequantizeLinear"] == 1 and "Constant" not in ops(result.model)
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.inputs[0].array.dtype == np.int8
    assert ("axis" in dq.attributes) == (granularity == "channel")
    assert result.model.opset == 17  # int8 needs no opset change
    for k in ref:
        assert rel_err(ref[k], got[k]) < 0.02, (k, rel_err(ref[k], got[k]))
    assert weight_bytes(result.model) - (32 * 4 if "b" in result.model.graph.initializers else 0) \
        <= 0.27 * record.stats["bytes_before"]
    assert record.stats["ratio"] <= 0.27
    assert 0 < record.stats["max_rel_error"] < 0.01
    # a second run finds the weight already quantized and changes nothing
    again = onnxforge.optimize(result.model, "quantize-weights{bits=8}")
    assert not again.changed and again.records[0].stats["skipped"] == {"already quantized": 1}


def test_int8_survives_O2_and_saves():
    proto = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                  [tensor("x", [4, 64])], [tensor("y", [4, 32])],
                  [init("w", np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)),
                   init("b", np.ones(32, np.float32))])
    m, result, ref, got = quantize(proto, "quantize-weights{bits=8},-O2")
    assert ops(result.model) == Counter({"DequantizeLinear": 1, "Gemm": 1})  # fold-constants leaves it alone
    assert rel_err(ref["y"], got["y"]) < 0.02
    saved = to_proto(result.model)
    assert any(t.data_type == TensorProto.INT8 for t in saved.graph.initializer)


def test_asymmetric_uses_uint8_and_zero_points():
    m, result, ref, got = quantize(matmul_model(), "quantize-weights{bits=8 symmetric=false}")
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert len(dq.inputs) == 3 and dq.inputs[0].array.dtype == np.uint8 and dq.inputs[2].array.dtype == np.uint8
    assert rel_err(ref["y"], got["y"]) < 0.02


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_blocked_matmul(symmetric):
    proto = matmul_model(k=256, n=64)
    m, result, ref, got = quantize(proto, f"quantize-weights{{bits=4 granularity=block block=64 symmetric={str(symmetric).lower()}}}")
    stats = result.records[0].stats
    assert result.model.opset == 21 and result.model.ir_version >= 10 and stats["opset"] == "17->21"
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.attributes == {"axis": 0, "block_size": 64}
    assert dq.inputs[0].dtype == (TensorProto.INT4 if symmetric else TensorProto.UINT4)
    assert dq.inputs[1].shape == (4, 64)
    assert rel_err(ref["y"], got["y"]) < 0.15
    assert stats["ratio"] <= 0.15 if symmetric else stats["ratio"] <= 0.16
    assert weight_bytes(result.model) <= 0.15 * 256 * 64 * 4 + (0 if symmetric else 256)
    saved = to_proto(result.model)
    assert any(t.data_type in (TensorProto.INT4, TensorProto.UINT4) for t in saved.graph.initializer)
    assert not onnxforge.optimize(result.model, "quantize-weights{bits=4 granularity=block}").changed


def test_int4_block32_ratio_includes_fp32_scales():
    # 4 bits per weight plus one fp32 scale per 32 weights: 0.125 + 0.03125 of fp32
    *_, result, ref, got = quantize(matmul_model(k=128, n=64), "quantize-weights{bits=4 granularity=block block=32}")
    assert abs(result.records[0].stats["ratio"] - (0.125 + 1 / 32)) < 1e-3
    assert rel_err(ref["y"], got["y"]) < 0.15


@pytest.mark.parametrize("name, symmetric", [("matmul", True), ("matmul", False), ("conv", True), ("gemm-transB", True)])
def test_uint8_scales_shrink_int4_blocks(name, symmetric):
    proto = matmul_model(k=256, n=64) if name == "matmul" else MODELS[name]()
    block = 8 if name == "conv" else 32
    base = f"quantize-weights{{bits=4 granularity=block block={block} symmetric={str(symmetric).lower()}"
    _, floats, ref, got_float = quantize(proto, base + "}")
    _, result, _, got = quantize(proto, base + " scales=uint8}")
    dqs = [n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2
    scale_dq, weight_dq = dqs  # the scales' DequantizeLinear comes first and feeds the weight's
    assert weight_dq.inputs[1] is scale_dq.outputs[0]
    assert scale_dq.inputs[0].array.dtype == np.uint8 and scale_dq.inputs[1].array.dtype == np.float32
    channel_axis = 1 if name == "matmul" else 0
    assert scale_dq.attributes == {"axis": channel_axis}
    assert scale_dq.inputs[1].shape == (weight_dq.inputs[0].shape[channel_axis],)
    # every channel's largest block scale is stored as 255
    top = scale_dq.inputs[0].array.max(axis=tuple(a for a in range(scale_dq.inputs[0].array.ndim) if a != channel_axis))
    assert np.all(top == 255)
    # a quarter of the scale bytes, and accuracy close to float scales
    saved = result.records[0].stats["bytes_after"]
    assert saved < floats.records[0].stats["bytes_after"]
    n = weight_dq.inputs[0].shape
    k_blocks = weight_dq.inputs[1].shape
    expected = (int(np.prod(n)) + 1) // 2 + int(np.prod(k_blocks)) * (1 if symmetric else 2) + n[channel_axis] * 4
    assert saved == expected
    for k in ref:
        assert rel_err(ref[k], got[k]) < 1.1 * rel_err(ref[k], got_float[k]) + 0.01


def test_uint8_scales_with_gptq_and_a_zero_block():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((128, 16)).astype(np.float32)
    w[32:64, 3] = 0  # an all-zero block gets the smallest stored scale
    proto = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [4, 128])], [tensor("y", [4, 16])],
                  [init("w", w)], opset=17)
    m = onnxforge.load(proto)
    calib = [{"x": rng.standard_normal((4, 128)).astype(np.float32)} for _ in range(4)]
    feeds = {"x": calib[0]["x"]}
    errors = {}
    for method in ("rtn", "gptq"):
        result = onnxforge.optimize(m, f"quantize-weights{{bits=4 granularity=block block=32 scales=uint8 "
                                       f"method={method}}}", calibration=calib)
        dq = next(n for n in result.model.graph.nodes if "block_size" in n.attributes)
        assert dq.inputs[1].producer.inputs[0].array[1, 3] == 1  # block 1 of column 3
        if method == "rtn":  # (gptq moves rounding error into later columns, zeros included)
            assert np.all(dq.inputs[0].array[32:64, 3].astype(np.int8) == 0)
        errors[method] = rel_err(run_ort(m, feeds)["y"], run_ort(result.model, feeds)["y"])
    assert errors["gptq"] < errors["rtn"] < 0.15


def test_block_that_does_not_divide_the_axis_gets_a_short_last_block():
    proto = matmul_model(k=80, n=16)  # 80 = 2 * 32 + 16
    m, result, ref, got = quantize(proto, "quantize-weights{bits=4 granularity=block block=32}")
    stats = result.records[0].stats
    assert stats["partial_blocks"] == 1
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.inputs[1].shape == (3, 16)  # ceil(80 / 32) blocks, no padding stored
    assert rel_err(ref["y"], got["y"]) < 0.15


def test_int8_blocks_and_int4_per_channel_are_allowed():
    for pipeline in ("quantize-weights{bits=8 granularity=block block=16}", "quantize-weights{bits=4 granularity=channel}"):
        m, result, ref, got = quantize(gemm_model(1), pipeline)
        assert result.model.opset == 21 and rel_err(ref["y"], got["y"]) < 0.15


def test_int4_defaults_to_blocks_and_int8_to_channels():
    for bits, attributes in ((4, {"axis": 0, "block_size": 32}), (8, {"axis": 1})):
        *_, result, ref, got = quantize(matmul_model(k=128, n=64), f"quantize-weights{{bits={bits}}}")
        dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
        assert dq.attributes == attributes, bits


def test_conv_blocks_run_along_input_channels():
    m, result, ref, got = quantize(conv_model(), "quantize-weights{bits=8 granularity=block block=8}")
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.attributes == {"axis": 1, "block_size": 8} and dq.inputs[1].shape == (32, 2, 3, 3)
    assert rel_err(ref["y"], got["y"]) < 0.02


def test_skips_small_non_constant_and_shared_weights():
    rng = np.random.default_rng(4)
    proto = model(
        [helper.make_node("MatMul", ["x", "small"], ["a"]),        # 8x4: too small
         helper.make_node("MatMul", ["a", "fed"], ["b"]),          # a graph input
         helper.make_node("MatMul", ["b", "shared"], ["c"]),       # also read by an Add
         helper.make_node("Add", ["shared", "shared"], ["d"])],
        [tensor("x", [2, 8]), tensor("fed", [4, 16])], [tensor("c", [2, 16]), tensor("d", [16, 16])],
        [init("small", rng.standard_normal((8, 4)).astype(np.float32)),
         init("shared", rng.standard_normal((16, 16)).astype(np.float32))])
    result = onnxforge.optimize(onnxforge.load(proto), "quantize-weights{bits=8}")
    assert not result.changed
    assert result.records[0].stats == {"quantized": 0, "skipped": {
        "not constant": 1, "shared with other ops or layouts": 1, "small (< 64 elements)": 1}}
    lowered = onnxforge.optimize(onnxforge.load(proto), "quantize-weights{bits=8 min_elements=0 ops=MatMul}")
    assert lowered.records[0].stats["quantized"] == 1


def test_ops_option_selects_ops():
    proto = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gemm", ["h", "v"], ["y"])],
                  [tensor("x", [2, 64])], [tensor("y", [2, 32])],
                  [init("w", np.ones((64, 64), np.float32)), init("v", np.ones((64, 32), np.float32))])
    result = onnxforge.optimize(onnxforge.load(proto), "quantize-weights{ops=Gemm}")
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.outputs[0].uses[0][0].op_type == "Gemm" and result.records[0].stats["quantized"] == 1
    assert str(onnxforge.passes.parse_pipeline("quantize-weights{ops=MatMul+Gemm}")) == "quantize-weights{ops=MatMul+Gemm}"


def test_quantize_array_exact_levels():
    w = np.array([[-1.0, 0.5], [0.25, 1.0]], np.float32)
    qz = quantize_array(w, 8, "tensor")
    assert qz.scale == np.float32(1 / 127) and qz.q.tolist() == [[-127, 64], [32, 127]]
    zeros = quantize_array(np.zeros((4, 4), np.float32), 4, "channel", channel_axis=1)
    assert np.all(zeros.dequantized == 0) and np.all(zeros.scale == 1)


@pytest.mark.parametrize("text, match", [
    ("quantize-weights{bits=3}", "bits=3: supported are bits=8"),
    ("quantize-weights{bits=16}", "bits=16"),
    ("quantize-weights{granularity=row}", "granularity=row: expected one of auto, channel, tensor, block"),
    ("quantize-weights{granularity=block block=0}", "block=0"),
    ("quantize-weights{method=gptq damp=0}", "damp=0"),
    ("quantize-weights{method=awq}", "method=awq: expected one of rtn, gptq"),
    ("quantize-weights{granularity=block scales=int4}", "scales=int4: expected one of float, uint8"),
    ("quantize-weights{bits=4 granularity=channel scales=uint8}", "scales=uint8 needs granularity=block"),
    ("quantize-weights{ops=MatMul+Softmax}", "cannot quantize weights of Softmax; supported ops are MatMul\\+Gemm\\+Conv\\+Attention\\+Gather"),
    ("quantize-weights{ops=matmul}", "cannot quantize weights of matmul"),
    ("quantize-weights{bit=4}", "no option 'bit'.*bits"),
])
def test_bad_options(text, match):
    with pytest.raises(PassOptionError, match=match):
        onnxforge.optimize(onnxforge.load(matmul_model()), text)


def test_refuses_to_raise_an_opset_that_would_change_other_ops():
    proto = matmul_model(extra=[helper.make_node("RoiAlign", ["y", "rois", "idx"], ["r"])], opset=15,
                         extra_inits=[init("rois", np.zeros((1, 4), np.float32)), init("idx", np.zeros(1, np.int64))])
    proto.graph.output.append(tensor("r", None))
    m = onnxforge.load(proto)
    with pytest.raises(PassError, match="int4 weights needs opset 21.*imports opset 15.*RoiAlign .*default changed"):
        onnxforge.optimize(m, "quantize-weights{bits=4 granularity=block}")
    assert m.opset == 15 and ops(m) == Counter({"MatMul": 1, "RoiAlign": 1})  # untouched
    # int8 per channel needs only opset 13: fine
    assert onnxforge.optimize(m, "quantize-weights{bits=8}").changed


def test_refuses_to_raise_from_before_opset_11():
    proto = matmul_model(extra=[helper.make_node("Clip", ["y"], ["c"], min=-1.0, max=1.0)], opset=10)
    proto.graph.output.append(tensor("c", [4, 32]))
    m = onnxforge.load(proto)
    with pytest.raises(PassError, match="per-channel DequantizeLinear needs opset 13.*opset 10.*Clip.*granularity=tensor"):
        onnxforge.optimize(m, "quantize-weights{bits=8}")
    result = onnxforge.optimize(m, "quantize-weights{bits=8 granularity=tensor}")
    assert result.changed and result.model.opset == 10


def _opset12_model(softmax_axis):
    rng = np.random.default_rng(6)
    return model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                  helper.make_node("Unsqueeze", ["h"], ["u"], axes=[0]),
                  helper.make_node("Softmax", ["u"], ["s"], axis=softmax_axis),
                  helper.make_node("ReduceMean", ["s"], ["r"], axes=[2], keepdims=1),
                  helper.make_node("ReduceSum", ["s"], ["q"], axes=[2], keepdims=1),
                  helper.make_node("Split", ["u"], ["p1", "p2"], axis=2, split=[16, 16]),
                  helper.make_node("Squeeze", ["r"], ["y"], axes=[0])],
                 [tensor("x", [4, 64])], [tensor("y", [4, 1]), tensor("q", [1, 4, 1]), tensor("p2", [1, 4, 16])],
                 [init("w", rng.standard_normal((64, 32)).astype(np.float32))], opset=12)


def test_raising_the_opset_adapts_ops_whose_attributes_became_inputs():
    m, result, ref, got = quantize(_opset12_model(2), "quantize-weights{bits=4 granularity=block}")
    assert result.model.opset == 21 and result.records[0].stats["opset"] == "12->21"
    by_op = {n.op_type: n for n in result.model.graph.nodes}
    for op in ("Unsqueeze", "ReduceMean", "ReduceSum", "Squeeze", "Split"):
        assert len(by_op[op].inputs) == 2 and "axes" not in by_op[op].attributes and "split" not in by_op[op].attributes
    assert by_op["Softmax"].attributes["axis"] == -1
    for k in ref:
        assert rel_err(ref[k], got[k]) < 0.15, k


def test_refuses_softmax_whose_meaning_changes_at_13():
    with pytest.raises(PassError, match="Softmax.*axis=1 on a rank-3 input flattens"):
        onnxforge.optimize(onnxforge.load(_opset12_model(1)), "quantize-weights{bits=8}")


def test_softmax_rank_that_shape_inference_misses_is_observed():
    """A Reshape whose target goes through float arithmetic (as PP-OCRv4's do): neither
    shape inference knows the Softmax input's rank; one onnxruntime run does."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Shape", ["c"], ["s0"]),
             helper.make_node("Cast", ["s0"], ["s1"], to=TensorProto.FLOAT), helper.make_node("Mul", ["s1", "one"], ["s2"]),
             helper.make_node("Cast", ["s2"], ["s3"], to=TensorProto.INT64), helper.make_node("Reshape", ["h", "s3"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=3)]
    proto = model(nodes, [tensor("x", [4, 64])], [tensor("y", [1, 4, 4, 8])],
                  [init("w", rng.standard_normal((64, 32)).astype(np.float32)), init("c", np.zeros((1, 4, 4, 8), np.float32)),
                   init("one", np.ones(4, np.float32))], opset=12)
    m, result, ref, got = quantize(proto, "quantize-weights{bits=8 granularity=block}")  # blocked: opset 21
    assert result.model.opset == 21 and rel_err(ref["y"], got["y"]) < 0.05


def test_float16_weights_keep_float16_scales():
    rng = np.random.default_rng(5)
    proto = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [4, 64], TensorProto.FLOAT16)],
                  [tensor("y", [4, 32], TensorProto.FLOAT16)],
                  [init("w", rng.standard_normal((64, 32)).astype(np.float16))], opset=19)
    m, result, ref, got = quantize(proto, "quantize-weights{bits=8}")
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.inputs[1].array.dtype == np.float16
    assert rel_err(ref["y"], got["y"]) < 0.02


def test_depthwise_conv_is_skipped_by_blocks_but_not_per_channel():
    rng = np.random.default_rng(7)
    proto = model([helper.make_node("Conv", ["x", "w"], ["y"], group=16, pads=[1, 1, 1, 1])],
                  [tensor("x", [1, 16, 8, 8])], [tensor("y", [1, 16, 8, 8])],
                  [init("w", rng.standard_normal((16, 1, 3, 3)).astype(np.float32))])
    result = onnxforge.optimize(onnxforge.load(proto), "quantize-weights{bits=4 granularity=block}")
    assert not result.changed and result.records[0].stats["skipped"] == {"reduction axis shorter than one block": 1}
    m, result, ref, got = quantize(proto, "quantize-weights{bits=8}")
    dq = next(n for n in result.model.graph.nodes if n.op_type == "DequantizeLinear")
    assert dq.attributes == {"axis": 0} and dq.inputs[1].shape == (16,)
    assert rel_err(ref["y"], got["y"]) < 0.02


def test_weight_read_inside_a_subgraph():
    rng = np.random.default_rng(8)
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [], [tensor("t", [4, 32])])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["e"]), helper.make_node("Neg", ["e"], ["n"])],
                               "else", [], [tensor("n", [4, 32])])
    proto = model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                  [tensor("x", [4, 64]), tensor("c", [], TensorProto.BOOL)], [tensor("y", [4, 32])],
                  [init("w", rng.standard_normal((64, 32)).astype(np.float32))])
    m = onnxforge.load(proto)
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32), "c": np.array(False)}
    result = onnxforge.optimize(m, "quantize-weights{bits=8}", check=True, inputs=feeds)
    onnxforge.verify(result.model)
    assert result.records[0].stats["quantized"] == 1 and result.model.graph.nodes[0].op_type == "DequantizeLinear"
    assert rel_err(run_ort(m, feeds)["y"], run_ort(result.model, feeds)["y"]) < 0.02


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_gather_embedding_is_opt_in_and_dequantizes_rows_only(granularity):
    rng = np.random.default_rng(9)
    proto = model([helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])],
                  [tensor("ids", [2, 5], TensorProto.INT64)], [tensor("y", [2, 5, 16])],
                  [init("table", rng.standard_normal((100, 32)).astype(np.float32)),
                   init("w", rng.standard_normal((32, 16)).astype(np.float32))])
    default = onnxforge.optimize(onnxforge.load(proto), "quantize-weights")
    assert default.records[0].stats["quantized"] == 1  # only the MatMul weight
    m = onnxforge.load(proto)
    feeds = {"ids": rng.integers(0, 100, (2, 5)).astype(np.int64)}
    pipeline = f"quantize-weights{{ops=MatMul+Gather granularity={granularity}}}"
    result = onnxforge.optimize(m, pipeline, check=True, inputs=feeds)
    onnxforge.verify(result.model)
    onnx.checker.check_model(to_proto(result.model), full_check=True)
    assert result.records[0].stats["quantized"] == 2
    gather = next(n for n in result.model.graph.nodes if n.op_type == "Gather")
    assert gather.inputs[0].array.dtype == np.int8 and gather.outputs[0].dtype == TensorProto.INT8
    dq = gather.outputs[0].uses[0][0]
    assert dq.op_type == "DequantizeLinear" and dq.attributes == ({"axis": -1} if granularity == "channel" else {})
    assert rel_err(run_ort(m, feeds)["y"], run_ort(result.model, feeds)["y"]) < 0.02
    assert not onnxforge.optimize(result.model, pipeline).changed
    # int4 / blocks: Gather takes no int4, so the table is dequantized before it
    for spec, attributes in (("bits=4", {"axis": 1, "block_size": 32}),  # int4 defaults to blocks
                             ("bits=4 granularity=channel", {"axis": 0}),
                             ("bits=4 granularity=block block=16", {"axis": 1, "block_size": 16}),
                             ("granularity=block block=16", {"axis": 1, "block_size": 16})):
        four = onnxforge.optimize(onnxforge.load(proto), f"quantize-weights{{ops=Gather {spec}}}", check=True,
                                  inputs=feeds)
        assert four.records[0].stats["quantized"] == 1
        gather = next(n for n in four.model.graph.nodes if n.op_type == "Gather")
        dq = gather.inputs[0].producer
        assert dq.op_type == "DequantizeLinear" and gather.outputs[0].dtype != TensorProto.INT8
        assert dq.attributes == attributes, spec
        assert rel_err(run_ort(m, feeds)["y"], run_ort(four.model, feeds)["y"]) < (0.2 if "bits=4" in spec else 0.02)



def test_raising_the_opset_moves_model_local_functions_along():
    """PP-OCRv4 rec at opset 12: -O2 fuses its RMS norms into the model-local function
    onnxforge.RMSNormalization (opset 12), then quantize-weights raises the model to
    13 for per-channel DequantizeLinear; the function must import 13 too, or the saved
    model fails onnx's checker and the compiler cannot inline it."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Mul", ["x", "x"], ["xx"]), helper.make_node("ReduceMean", ["xx"], ["ms"], axes=[-1]),
             helper.make_node("Add", ["ms", "eps"], ["v"]), helper.make_node("Sqrt", ["v"], ["s"]),
             helper.make_node("Div", ["x", "s"], ["n"]), helper.make_node("Mul", ["n", "g"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    m = onnxforge.load(model(nodes, [tensor("x", [4, 64])], [tensor("y", [4, 32])],
                             [init("eps", np.array(1e-6, np.float32)), init("g", rng.random(64).astype(np.float32) + 0.5),
                              init("w", rng.standard_normal((64, 32)).astype(np.float32))], opset=12))
    fused = onnxforge.optimize(m.clone(), "-O2").model
    out = onnxforge.optimize(fused.clone(), "quantize-weights").model
    assert [f.name for f in out.functions] == ["RMSNormalization"] and out.opset == 13
    assert [o.version for o in fused.functions[0].opset_import] == [12]  # the clone's source keeps its function
    proto = to_proto(out)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.functions[0].opset_import] == [("", 13)]
    feeds = sample_inputs(m, seed=1)
    assert rel_err(run_ort(m, feeds)["y"], run_ort(out, feeds)["y"]) < 0.02
