"""The fusion test models after -O2 (folded BatchNorm, LayerNormalization, GELU as
com.microsoft Gelu/FastGelu or opset-20 Gelu, com.microsoft Attention) compile for
x86 and match onnxruntime on the original model."""
import pytest

import onnxforge
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from tests.models import fusion

pytest.importorskip("tvm")

CASES = {
    "conv-bn": (lambda: fusion.conv_bn()[0], None, {"BatchNormalization": 0}),
    "layernorm": (lambda: fusion.layer_norm()[0], {"x": (2, 5, 8)}, {"LayerNormalization": 1}),
    "gelu-erf": (lambda: fusion.gelu("erf")[0], {"x": (3, 8)}, {"Gelu": 1}),
    "gelu-tanh": (lambda: fusion.gelu("tanh")[0], {"x": (3, 8)}, {"FastGelu": 1}),
    "gelu-opset20": (lambda: fusion.gelu("erf", opset=20)[0], {"x": (3, 8)}, {"Gelu": 1}),
    "attention": (lambda: fusion.attention(layers=2)[0], {"x": (2, 5, 16), "mask": (2, 5)}, {"Attention": 2}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_model_compiles_and_matches(name, tmp_path):
    build, shapes, fused = CASES[name]
    proto = build()
    model = onnxforge.load(proto)
    optimized = onnxforge.optimize(model, "-O2").model
    ops = [n.op_type for n in optimized.graph.nodes]
    for op, count in fused.items():
        assert ops.count(op) == count, f"{name}: -O2 gave {ops}"
    pkg = onnxforge.compile(optimized, "x86", "-O0", output=tmp_path / "m.ofpkg", input_shapes=shapes)
    if name == "attention":
        feeds = fusion.attention_feeds()
    else:
        dims = {"batch": shapes["x"][0]} if shapes else None
        feeds = sample_inputs(model, dims=dims)
    diff = compare_outputs(run_ort(model, feeds), pkg(**feeds), 1e-4, 1e-4)
    assert diff.ok, f"{name}: {diff}"


def test_fused_attention_compiles_with_symbolic_batch_and_sequence(tmp_path):
    """Attention lowered by onnxforge (the frontend's converter needs static dims):
    one package, unpinned, matches onnxruntime at several batch and sequence sizes,
    padded keys masked per batch."""
    model = onnxforge.load(fusion.attention(layers=2)[0])
    optimized = onnxforge.optimize(model, "-O2").model
    assert [n.op_type for n in optimized.graph.nodes].count("Attention") == 2
    pkg = onnxforge.compile(optimized, "x86", "-O0", output=tmp_path / "m.ofpkg")
    assert pkg.manifest["inputs"][0]["shape"][:2] == ["batch", "seq"]
    for batch, seq in ((2, 5), (3, 9), (1, 4)):
        feeds = fusion.attention_feeds(batch, seq, seed=batch)
        diff = compare_outputs(run_ort(model, feeds), pkg(**feeds), 1e-4, 1e-4)
        assert diff.ok, ((batch, seq), diff)


@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_with_a_raw_key_mask_and_scale_matches_onnxruntime(tmp_path, scale):
    """com.microsoft Attention as onnxruntime's transformer optimizer writes it: a
    2-D int32 mask_index (1 keeps a key), optionally a custom scale; symbolic dims."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    hidden, heads = 16, 4
    attrs = {"num_heads": heads} if scale is None else {"num_heads": heads, "scale": scale}
    node = helper.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node], "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden]),
         helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [onnx.numpy_helper.from_array(rng.standard_normal((hidden, 3 * hidden)).astype(np.float32) * 0.3, "w"),
         onnx.numpy_helper.from_array(rng.standard_normal(3 * hidden).astype(np.float32) * 0.1, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = onnxforge.load(proto)
    pkg = onnxforge.compile(model, "x86", "-O0", output=tmp_path / "m.ofpkg")
    for batch, seq in ((2, 6), (3, 3)):
        mask = np.ones((batch, seq), np.int32)
        mask[-1, -2:] = 0
        feeds = {"x": rng.standard_normal((batch, seq, hidden)).astype(np.float32), "mask": mask}
        diff = compare_outputs(run_ort(model, feeds), pkg(**feeds), 1e-4, 1e-4)
        assert diff.ok, ((batch, seq), diff)
