"""prune-channels: ratio=0 is exact, pruned models verify, pass onnx.checker and run
in onnxruntime with the expected shapes, dependent tensors shrink together (BN,
biases, depthwise, concat offsets, split sizes, head reshapes, fused Attention),
reconstruction from calibration data lowers the error, a second run changes
nothing, composition with quantization, bad options."""
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxforge
from onnxforge.ir import OnnxforgeError, PassOptionError, to_proto
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from tests.models import pruning as P
from tests.models.fusion import attention, attention_feeds

MODELS = {
    "convnet": (P.convnet, None),
    "mobile": (P.mobile_block, None),
    "split": (P.split_model, None),
    "transformer": (P.transformer, P.transformer_feeds),
    "transformer-dynamic": (lambda: P.transformer(dynamic_shape=True), P.transformer_feeds),
}


def prune(proto, pipeline, feeds=None, calibration=None):
    m = onnxforge.load(proto)
    feeds = feeds or sample_inputs(m)
    result = onnxforge.optimize(m, pipeline, calibration=calibration)
    onnxforge.verify(result.model)
    onnx.checker.check_model(to_proto(result.model), full_check=True)
    return m, result, run_ort(m, feeds), run_ort(result.model, feeds)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("name", list(MODELS))
def test_ratio_zero_is_exact(name):
    build, feeds = MODELS[name]
    m, result, ref, got = prune(build(), "prune-channels{ratio=0}", feeds() if feeds else None)
    assert not result.changed
    assert compare_outputs(ref, got, 1e-4, 1e-4).ok


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_shrinks_and_runs(name, scope):
    build, feeds = MODELS[name]
    m, result, ref, got = prune(build(), f"prune-channels{{ratio=0.5 scope={scope} round_to=1}}",
                                feeds() if feeds else None)
    stats = result.records[0].stats
    assert result.changed and stats["pruned_groups"] >= 1
    assert stats["flops_after"] < stats["flops_before"] and stats["params_after"] < stats["params_before"]
    assert stats["layers"]  # per-layer before/after
    for k in ref:
        assert ref[k].shape == got[k].shape and np.all(np.isfinite(got[k]))
    # the same pipeline again: the ratio is of the original model, already reached
    again = onnxforge.optimize(result.model, f"prune-channels{{ratio=0.5 scope={scope} round_to=1}}")
    assert not again.changed


def test_dependent_tensors_shrink_together():
    m, result, _, _ = prune(P.mobile_block(), "prune-channels{ratio=0.5 round_to=8}")
    convs = [n for n in result.model.graph.nodes if n.op_type == "Conv"]
    expand, dw, project = convs[1], convs[2], convs[3]
    assert expand.inputs[1].array.shape[0] == 32 and expand.inputs[2].array.shape == (32,)
    assert dw.inputs[1].array.shape == (32, 1, 3, 3) and dw.attributes["group"] == 32
    assert project.inputs[1].array.shape[1] == 32
    # the residual group (16 channels, stem + projection + the head conv's input) is pruned as one
    assert convs[0].inputs[1].array.shape[0] == project.inputs[1].array.shape[0] == convs[4].inputs[1].array.shape[1]


def test_batchnorm_and_concat_offsets():
    m, result, ref, got = prune(P.convnet(), "prune-channels{ratio=0.5 round_to=4}")
    bns = [n for n in result.model.graph.nodes if n.op_type == "BatchNormalization"]
    for bn in bns:
        sizes = {v.array.shape[0] for v in bn.inputs[1:]}
        assert len(sizes) == 1
    concat = next(n for n in result.model.graph.nodes if n.op_type == "Concat")
    dw = next(n for n in result.model.graph.nodes if n.op_type == "Conv" and n.attributes.get("group", 1) > 4)
    a, b = [v.producer.inputs[0].producer for v in concat.inputs]  # Relu / Clip -> Conv
    assert dw.attributes["group"] == a.inputs[1].array.shape[0] + b.inputs[1].array.shape[0] == 12


def test_heads_and_reshape_constants():
    feeds = P.transformer_feeds()
    m, result, ref, got = prune(P.transformer(heads=4), "prune-channels{ratio=0.5}", feeds)
    stats = result.records[0].stats
    assert stats["heads_removed"] == 2 and stats["channels_removed"] == 32
    reshapes = [n for n in result.model.graph.nodes if n.op_type == "Reshape"]
    split = [n.inputs[1].array.tolist() for n in reshapes if n.inputs[1].array.size == 4]
    assert split == [[0, 0, 2, 8]] * 3
    assert [n.inputs[1].array.tolist() for n in reshapes if n.inputs[1].array.size == 3] == [[0, 0, 16]]


def test_fused_attention_heads_pruned():
    proto, _ = attention(hidden=16, heads=4, layers=2, mask=False)
    feeds = {"x": attention_feeds(hidden=16)["x"]}
    m, result, ref, got = prune(proto, "-O2,prune-channels{ratio=0.5}", feeds)
    att = [n for n in result.model.graph.nodes if n.op_type == "Attention"]
    assert [n.attributes["num_heads"] for n in att] == [2, 2]
    # 2 of 4 heads of size 4 are left in Q, K and V; the hidden size between the
    # layers (no LayerNorm in this builder) is pruned too
    assert [n.inputs[1].array.shape for n in att] == [(16, 24), (8, 24)]


def test_reconstruction_lowers_error():
    proto = P.transformer(hidden=32, ffn=128)
    feeds = P.transformer_feeds(batch=4, seq=8)
    cal = [P.transformer_feeds(batch=4, seq=8, seed=s) for s in range(8)]
    _, plain, ref, got_plain = prune(proto, "prune-channels{ratio=0.5 reconstruct=off}", feeds, cal)
    _, recon, _, got_recon = prune(proto, "prune-channels{ratio=0.5}", feeds, cal)
    assert recon.records[0].stats["reconstructed_layers"] == 2
    assert plain.records[0].stats["reconstructed_layers"] == 0
    k = next(iter(ref))
    assert rel(ref[k], got_recon[k]) < rel(ref[k], got_plain[k])
    _, act, _, got_act = prune(proto, "prune-channels{ratio=0.5 criterion=activation}", feeds, cal)
    assert act.changed and np.all(np.isfinite(got_act[k]))


def test_conv_reconstruction():
    proto = P.mobile_block()
    m = onnxforge.load(proto)
    cal = [sample_inputs(m, seed=s) for s in range(4)]
    feeds = sample_inputs(m, seed=9)
    _, plain, ref, a = prune(proto, "prune-channels{ratio=0.5 reconstruct=off}", feeds, cal)
    _, recon, _, b = prune(proto, "prune-channels{ratio=0.5 reconstruct=on}", feeds, cal)
    assert recon.records[0].stats["reconstructed_layers"] >= 1
    k = next(iter(ref))
    assert rel(ref[k], b[k]) < rel(ref[k], a[k])


def test_needs_calibration_for_activation():
    with pytest.raises(OnnxforgeError, match="needs calibration data"):
        onnxforge.optimize(onnxforge.load(P.mobile_block()), "prune-channels{criterion=activation}")


def test_exclude_keeps_groups():
    m, result, _, _ = prune(P.mobile_block(), "prune-channels{ratio=0.5 exclude=conv_7}")
    convs = [n for n in result.model.graph.nodes if n.op_type == "Conv"]
    assert convs[1].inputs[1].array.shape[0] == 64  # the expansion conv_7 stays whole


def test_composes_with_quantization():
    m, result, ref, got = prune(P.convnet(), "prune-channels{ratio=0.3},quantize-weights{bits=8 min_elements=0}")
    assert [r.changed for r in result.records] == [True, True]
    assert any(n.op_type == "DequantizeLinear" for n in result.model.graph.nodes)


@pytest.mark.parametrize("text, option", [
    ("ratio=1.0", "ratio"), ("ratio=-0.1", "ratio"), ("criterion=l3", "criterion"), ("scope=model", "scope"),
    ("round_to=0", "round_to"), ("reconstruct=maybe", "reconstruct"), ("colour=red", "colour"),
])
def test_bad_options(text, option):
    with pytest.raises(PassOptionError, match=option):
        onnxforge.optimize(onnxforge.load(P.mobile_block()), f"prune-channels{{{text}}}")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(MODELS)), ratio=st.floats(0.0, 0.95), round_to=st.sampled_from([1, 2, 4, 8]),
       scope=st.sampled_from(["layer", "global"]))
def test_random_ratios_never_break_shapes(name, ratio, round_to, scope):
    build, feeds = MODELS[name]
    m, result, ref, got = prune(build(), f"prune-channels{{ratio={ratio:.3f} round_to={round_to} scope={scope}}}",
                                feeds() if feeds else None)
    for k in ref:
        assert ref[k].shape == got[k].shape



def test_sequential_reconstruction_compensates_upstream_error():
    """reconstruct=sequential re-fits each layer on the pruned model's own inputs
    (after the layers above were pruned): on a convnet pruned at two depths it is at
    least as close to the original as the one-shot fit, and shapes stay valid."""
    proto = P.mobile_block()
    m = onnxforge.load(proto)
    cal = [sample_inputs(m, seed=s) for s in range(6)]
    feeds = sample_inputs(m, seed=11)
    _, once, ref, a = prune(proto, "prune-channels{ratio=0.5 round_to=1 reconstruct=on}", feeds, cal)
    _, seq, _, b = prune(proto, "prune-channels{ratio=0.5 round_to=1 reconstruct=sequential}", feeds, cal)
    assert seq.records[0].stats["reconstructed_layers"] == once.records[0].stats["reconstructed_layers"] >= 1
    k = next(iter(ref))
    assert ref[k].shape == b[k].shape
    assert rel(ref[k], b[k]) <= rel(ref[k], a[k]) + 1e-6
    with pytest.raises(OnnxforgeError, match="needs calibration"):
        onnxforge.optimize(m, "prune-channels{reconstruct=sequential}")
