"""codegen/onnx_ops.py: standard ONNX ops lowered by onnxforge, checked on a fixed
sample of onnx's own node test cases through the conformance tool's machinery
(compiled with -O0 for x86, outputs compared with the case's rtol/atol), and on
small models against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("tvm", reason="apache-tvm is not installed")

import onnxforge  # noqa: E402
from onnxforge.ir import LoweringError  # noqa: E402
from onnxforge.tools import conformance  # noqa: E402

CASES = [
    "test_attention_3d_gqa_with_past_and_present",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask",
    "test_attention_4d_causal_nonpad_batch_prefill",
    "test_attention_23_boolmask_fullymasked_row_nan_robustness",
    "test_attention_local_window_with_past",
    "test_attention_3d_diff_heads_sizes_softcap",
    "test_layer_normalization_4d_axis_negative_2",
    "test_rms_normalization_3d_axis1_epsilon",
    "test_sce_NCd1d2d3_sum_weight_high_ii_log_prob",
    "test_nllloss_NCd1d2_with_weight_reduction_mean",
    "test_celu",
    "test_l2normalization_axis_0",
    "test_cumprod_2d_axis_0",
    "test_reversesequence_batch",
    "test_reduce_l2_do_not_keepdims_example",
    "test_reduce_sum_square_keepdims_random_expanded",
    "test_attention_23_fullymasked_qk_matmul_output_mode3_zero_expanded",
    "test_bitshift_right_int32_negative_shift",
    "test_mod_float_edge_cases_fmod_0_float32",
    "test_isinf_negative",
    "test_split_variable_parts_2d_opset18",
    "test_top_k_smallest",
    "test_spacetodepth_crd_mode_example",
    "test_bitcast_float32_to_int32",
]


@pytest.fixture(scope="module")
def cases():
    return conformance.collect_cases()


@pytest.mark.parametrize("name", CASES)
def test_onnx_node_case_passes_compiled(cases, name):
    if name not in cases:
        pytest.skip(f"{name} is not among this onnx version's node tests")
    status, detail = conformance.run_compiled(cases[name])
    assert status == "pass", f"{name}: {status}: {detail}"


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_attention_gqa_causal_past_matches_onnxruntime(tmp_path):
    """3-D GQA attention (4 query heads, 2 KV heads) with a past cache and is_causal:
    Y and the present key/value against onnxruntime."""
    b, s, past, hq, hkv, d = 2, 3, 5, 4, 2, 8
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "present_k", "present_v"],
                            q_num_heads=hq, kv_num_heads=hkv, is_causal=1)
    f = TensorProto.FLOAT
    graph = helper.make_graph([node], "attn", [
        helper.make_tensor_value_info("q", f, [b, s, hq * d]),
        helper.make_tensor_value_info("k", f, [b, s, hkv * d]),
        helper.make_tensor_value_info("v", f, [b, s, hkv * d]),
        helper.make_tensor_value_info("pk", f, [b, hkv, past, d]),
        helper.make_tensor_value_info("pv", f, [b, hkv, past, d]),
    ], [helper.make_tensor_value_info("y", f, None), helper.make_tensor_value_info("present_k", f, None),
        helper.make_tensor_value_info("present_v", f, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in graph.input}
    expected = _ort(model, feeds)
    pkg = onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0", output=tmp_path / "a.ofpkg")
    got = pkg(feeds)
    for name, want in zip(["y", "present_k", "present_v"], expected):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


def test_layer_normalization_mean_and_inv_std_dev(tmp_path):
    """All three LayerNormalization outputs, axis 1 of a 3-D input, against onnxruntime."""
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=1, epsilon=1e-3)
    f = TensorProto.FLOAT
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", f, [2, 3, 4]),
                                             helper.make_tensor_value_info("s", f, [3, 4]),
                                             helper.make_tensor_value_info("b", f, [3, 4])],
                              [helper.make_tensor_value_info(n, f, None) for n in ("y", "mean", "inv")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 3, 4), np.float32), "s": rng.standard_normal((3, 4), np.float32),
             "b": rng.standard_normal((3, 4), np.float32)}
    expected = _ort(model, feeds)
    got = onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0", output=tmp_path / "l.ofpkg")(feeds)
    for name, want in zip(("y", "mean", "inv"), expected):
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


def test_reduce_axes_tensor_of_unknown_length_is_a_lowering_error(tmp_path):
    """Axes computed at run time with a symbolic length: the output rank is unknown."""
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("axes", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(LoweringError, match="static length"):
        onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0", output=tmp_path / "r.ofpkg")


def test_attention_3d_without_head_counts_is_a_lowering_error(tmp_path):
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"])
    f = TensorProto.FLOAT
    graph = helper.make_graph([node], "attn", [helper.make_tensor_value_info(n, f, [1, 2, 8]) for n in "qkv"],
                              [helper.make_tensor_value_info("y", f, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    with pytest.raises(LoweringError, match="q_num_heads"):
        onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0", output=tmp_path / "e.ofpkg")
