"""codegen/llm_ops.py, nn_ops.py and ml_ops.py: RotaryEmbedding, TensorScatter,
CausalConvWithState, LinearAttention, BatchNormalization (training), Elu,
AffineGrid, TfIdfVectorizer, Binarizer, ArrayFeatureExtractor; small models
against onnxruntime (onnx's own node cases where onnxruntime's opset needs them)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

pytest.importorskip("tvm", reason="apache-tvm is not installed")
pytest.importorskip("onnxruntime")

from tests.codegen.onnx_check import check_against_onnxruntime  # noqa: E402
from onnxforge.tools import conformance  # noqa: E402

rng = np.random.default_rng(0)


@pytest.mark.parametrize("interleaved, rotary_dim", [(0, 0), (1, 4)])
def test_rotary_embedding_with_position_ids(tmp_path, interleaved, rotary_dim):
    x = rng.standard_normal((2, 4, 3, 8), np.float32)
    half = (rotary_dim or 8) // 2
    feeds = {"x": x, "cos": rng.standard_normal((10, half), np.float32),
             "sin": rng.standard_normal((10, half), np.float32), "pos": np.array([[0, 1, 2], [5, 6, 7]], np.int64)}
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], interleaved=interleaved,
                            rotary_embedding_dim=rotary_dim)
    check_against_onnxruntime(tmp_path, [node], feeds, ["y"], opset=23, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter_writes_the_update_per_batch_entry(tmp_path, mode):
    feeds = {"past": rng.standard_normal((2, 3, 4, 5), np.float32), "new": rng.standard_normal((2, 3, 2, 5), np.float32),
             "at": np.array([1, 3], np.int64) if mode == "circular" else np.array([0, 2], np.int64)}
    node = helper.make_node("TensorScatter", ["past", "new", "at"], ["y"], mode=mode)
    check_against_onnxruntime(tmp_path, [node], feeds, ["y"], opset=24)


@pytest.fixture(scope="module")
def cases():
    return conformance.collect_cases()


# onnxruntime 1.32 runs these opset-27 ops; onnx's cases carry their expected outputs
@pytest.mark.parametrize("name", ["test_causal_conv_with_state_with_bias_and_past_state",
                                  "test_causal_conv_with_state_silu_fp16", "test_causal_conv_with_state_kernel_size_one",
                                  "test_linear_attention_gated_delta_gqa", "test_linear_attention_decode_step",
                                  "test_linear_attention_fp16"])
def test_onnx_node_case_passes_compiled(cases, name):
    if name not in cases:
        pytest.skip(f"{name} is not among this onnx version's node tests")
    assert conformance.run_ort(cases[name])[0] == "pass"
    status, detail = conformance.run_compiled(cases[name])
    assert status == "pass", f"{name}: {status}: {detail}"


def test_batch_normalization_training_mode_outputs_running_statistics(tmp_path):
    c = 3
    feeds = {"x": rng.standard_normal((2, c, 4, 5), np.float32), "s": rng.standard_normal(c).astype(np.float32),
             "b": rng.standard_normal(c).astype(np.float32), "m": rng.standard_normal(c).astype(np.float32),
             "v": rng.random(c).astype(np.float32) + 0.5}
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1,
                            momentum=0.8, epsilon=1e-3)
    check_against_onnxruntime(tmp_path, [node], feeds, ["y", "rm", "rv"], opset=15, rtol=1e-4, atol=1e-5)


def test_elu_in_half_precision(tmp_path):
    x = rng.standard_normal((3, 4)).astype(np.float16)
    check_against_onnxruntime(tmp_path, [helper.make_node("Elu", ["x"], ["y"], alpha=0.5)], {"x": x}, ["y"], opset=13,
                              rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_with_size_given_at_run_time(tmp_path, align):
    feeds = {"theta": rng.standard_normal((2, 2, 3), np.float32), "size": np.array([2, 3, 5, 6], np.int64)}
    node = helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=align)
    check_against_onnxruntime(tmp_path, [node], feeds, ["grid"], opset=20, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_vectorizer_unigrams_and_skip_bigrams(tmp_path, mode):
    x = np.array([[1, 1, 3, 3, 3, 7], [8, 6, 7, 5, 6, 8]], np.int32)
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], mode=mode, min_gram_length=1, max_gram_length=2,
                            max_skip_count=2, ngram_counts=[0, 4], ngram_indexes=[0, 1, 2, 3, 4, 5, 6],
                            pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7], weights=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    check_against_onnxruntime(tmp_path, [node], {"x": x}, ["y"], opset=9)


def test_binarizer_and_array_feature_extractor(tmp_path):
    feeds = {"x": rng.standard_normal((3, 4), np.float32), "i": np.array([3, 0], np.int64)}
    nodes = [helper.make_node("Binarizer", ["x"], ["b"], domain="ai.onnx.ml", threshold=0.2),
             helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["f"], domain="ai.onnx.ml")]
    check_against_onnxruntime(tmp_path, nodes, feeds, ["b", "f"], opset=13, domains={"ai.onnx.ml": 1})


@pytest.mark.parametrize("center", [0, 1])
def test_non_max_suppression_random_boxes(tmp_path, center):
    """Two batches, two classes, 12 boxes with score and IoU thresholds and a cap
    of 4 per class: the selected (batch, class, box) rows against onnxruntime."""
    r = np.random.default_rng(3)
    if center:
        boxes = np.concatenate([r.random((2, 12, 2)) * 4, r.random((2, 12, 2)) * 2 + 0.5], axis=2).astype(np.float32)
    else:
        corner = r.random((2, 12, 2)) * 4
        boxes = np.concatenate([corner, corner + r.random((2, 12, 2)) * 2 + 0.5], axis=2).astype(np.float32)
    feeds = {"boxes": boxes, "scores": r.random((2, 2, 12)).astype(np.float32), "max": np.array([4], np.int64),
             "iou": np.array([0.3], np.float32), "score": np.array([0.2], np.float32)}
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "score"], ["sel"],
                            center_point_box=center)
    check_against_onnxruntime(tmp_path, [node], feeds, ["sel"], opset=11)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(tmp_path, storage_order):
    x = rng.standard_normal((2, 3, 5, 6), np.float32)
    x[0, 0, 0, :2] = 9.0  # a tie inside one window: the first in scan order wins
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 0, 1],
                            storage_order=storage_order)
    check_against_onnxruntime(tmp_path, [node], {"x": x}, ["y", "i"], opset=12)


def test_det_of_a_batch_of_matrices(tmp_path):
    x = rng.standard_normal((2, 3, 4, 4), np.float32)
    x[1, 2] = 0.0  # singular
    check_against_onnxruntime(tmp_path, [helper.make_node("Det", ["x"], ["d"])], {"x": x}, ["d"], opset=11,
                              rtol=1e-4, atol=1e-5)


def test_conv_transpose_with_output_shape(tmp_path):
    feeds = {"x": rng.standard_normal((1, 1, 3, 3), np.float32), "w": rng.standard_normal((1, 2, 3, 3), np.float32),
             "b": rng.standard_normal(2).astype(np.float32)}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[3, 2], output_shape=[10, 8])
    check_against_onnxruntime(tmp_path, [node], feeds, ["y"], opset=11, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_max_pool_same_padding_for_any_batch(tmp_path, auto_pad):
    """auto_pad SAME_* with the batch left open (MTCNN's O-Net as exported): the pads
    come from the static spatial dims (TVM's converter wanted every dim an int, and
    gave SAME_LOWER a floored output); odd sizes put the odd pad at the end or the start."""
    import onnxruntime as ort
    from onnx import TensorProto

    import onnxforge

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad=auto_pad)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 11, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    package = onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O2", output=tmp_path / "m.ofpkg")
    for batch in (1, 3):
        x = rng.standard_normal((batch, 4, 11, 10), np.float32)
        np.testing.assert_array_equal(package(x=x)["y"], session.run(None, {"x": x})[0])


def test_max_pool_same_padding_for_any_image_size(tmp_path):
    """2x2 stride-2 SAME_UPPER pooling over sizes known only at run time (MTCNN's
    P-Net, fully convolutional): the odd pad falls at the end for odd sizes only,
    which ceil_mode gives; even and odd sizes match onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto

    import onnxforge

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    package = onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O2", output=tmp_path / "m.ofpkg")
    for shape in ((1, 3, 12, 10), (2, 3, 13, 9), (1, 3, 2, 1)):
        x = rng.standard_normal(shape, np.float32)
        np.testing.assert_array_equal(package(x=x)["y"], session.run(None, {"x": x})[0])
