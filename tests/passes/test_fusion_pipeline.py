"""The `fuse` pass as a whole and the -O2 preset: pattern subsets, option errors,
statistics, a mixed CNN + transformer model through -O2, and a second -O2 run
that changes nothing."""
from collections import Counter

import numpy as np
import pytest
from onnx import TensorProto

import onnxforge
from onnxforge.ir import PassOptionError
from onnxforge.passes import PRESETS, parse_pipeline
from onnxforge.passes.fusion import DEFAULT_PATTERNS, FAMILIES
from tests.conftest import run_and_check
from tests.models import fusion as fm

F = TensorProto.FLOAT


def ops(model):
    return Counter((f"{n.domain}." if n.domain else "") + n.op_type for n in model.graph.all_nodes())


def test_o2_preset_text():
    assert PRESETS["-O2"] == "cleanup,fold-constants,fuse,fold-constants,cse,cleanup"
    text = "fuse{patterns=conv-bn+gemm+layernorm standard_only=true}"
    assert str(parse_pipeline(text)) == text
    assert "silu" in FAMILIES and "silu" not in DEFAULT_PATTERNS


def test_unknown_family_is_an_option_error_listing_the_known_ones():
    with pytest.raises(PassOptionError, match="unknown pattern family 'conv-relu'.*known: attention"):
        onnxforge.optimize(onnxforge.load(fm.conv_bn()[0]), "fuse{patterns=conv-relu}")


def test_patterns_select_families():
    proto, _ = fm.conv_bn()
    assert not onnxforge.optimize(onnxforge.load(proto), "fuse{patterns=gemm+layernorm}").changed
    assert onnxforge.optimize(onnxforge.load(proto), "fuse{patterns=conv-bn}").changed


def _mixed_model():
    """A small CNN stem (pad, conv, BN, PaddleOCR's scaled hardswish) feeding a
    transformer block (attention, LayerNorm as decomposed ops, GELU FFN)."""
    net = fm.Net()
    pad = net.op("Pad", "image", net.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)))
    conv = net.op("Conv", pad, net.weight(16, 3, 3, 3))
    params = [net.const(a.astype(np.float32)) for a in (net.rng.uniform(0.5, 2, 16), net.rng.standard_normal(16),
                                                         net.rng.standard_normal(16) * 0.1, net.rng.uniform(0.5, 2, 16))]
    bn = net.op("BatchNormalization", conv, *params)
    scaled = net.op("Add", net.op("Mul", net.const(net.rng.uniform(0.5, 1, (1, 16, 1, 1)).astype(np.float32)), bn),
                    net.const(np.full((1, 16, 1, 1), 0.1, np.float32)))
    clip = net.op("Clip", net.op("Add", scaled, net.const(np.float32(3))), net.const(np.float32(0)), net.const(np.float32(6)))
    hswish = net.op("Div", net.op("Mul", scaled, clip), net.const(np.float32(6)))
    tokens = net.op("Transpose", net.op("Reshape", hswish, net.const(np.array([0, 16, -1], np.int64))), perm=[0, 2, 1])
    # attention block on the tokens [1, 16, 16]
    heads, size = 4, 4
    split = net.const(np.array([0, 0, heads, size], np.int64))

    def project(perm):
        p = net.op("Add", net.op("MatMul", tokens, net.weight(16, 16, scale=0.2)), net.const(np.zeros(16, np.float32)))
        return net.op("Transpose", net.op("Reshape", p, split), perm=perm)

    q, k, v = project([0, 2, 1, 3]), project([0, 2, 3, 1]), project([0, 2, 1, 3])
    probs = net.op("Softmax", net.op("Div", net.op("MatMul", q, k), net.const(np.float32(2.0))), axis=-1)
    ctx = net.op("Reshape", net.op("Transpose", net.op("MatMul", probs, v), perm=[0, 2, 1, 3]),
                 net.const(np.array([0, 0, 16], np.int64)))
    res = net.op("Add", ctx, tokens)
    mean = net.op("ReduceMean", res, axes=[-1])
    d = net.op("Sub", res, mean)
    var = net.op("ReduceMean", net.op("Mul", d, d), axes=[-1])
    norm = net.op("Div", d, net.op("Sqrt", net.op("Add", var, net.const(np.float32(1e-6)))))
    ln = net.op("Add", net.op("Mul", norm, net.const(np.ones(16, np.float32))), net.const(np.zeros(16, np.float32)))
    h = net.op("Add", net.op("MatMul", ln, net.weight(16, 32, scale=0.2)), net.const(np.zeros(32, np.float32)))
    erf = net.op("Erf", net.op("Mul", h, net.const(np.float32(1 / np.sqrt(2)))))
    gelu = net.op("Mul", net.op("Mul", h, net.const(np.float32(0.5))), net.op("Add", erf, net.const(np.float32(1))))
    pooled = net.op("ReduceMean", gelu, axes=[1], keepdims=0)
    logits = net.op("Add", net.op("MatMul", pooled, net.weight(32, 10)), net.const(np.full(10, 0.1, np.float32)))
    return net.model([("image", [1, 3, 4, 4], F)], [logits])


def test_o2_fuses_a_mixed_model_and_reaches_a_fixed_point():
    result = run_and_check(_mixed_model(), "-O2", atol=1e-4, rtol=1e-3)
    counts = ops(result.model)
    assert counts["BatchNormalization"] == 0 and counts["Pad"] == 0 and counts["Conv"] == 1
    assert counts["HardSwish"] == 1 and counts["LayerNormalization"] == 1
    assert counts["com.microsoft.Attention"] == 1 and counts["com.microsoft.Gelu"] == 1
    assert counts["Gemm"] == 1  # the 2-D classifier head
    fuse = next(r for r in result.records if r.name == "fuse")
    assert fuse.stats["conv-bn"] == 1 and fuse.stats["Attention_in_model"] == 1
    assert fuse.diff is not None and fuse.diff.ok  # the numeric check ran after fuse


def test_o2_standard_only_leaves_no_custom_domain_ops():
    result = onnxforge.optimize(onnxforge.load(_mixed_model()), "cleanup,fold-constants,fuse{standard_only=true},cleanup")
    assert all(n.domain in ("", "ai.onnx") for n in result.model.graph.all_nodes())
    assert "com.microsoft" not in result.model.opset_imports


def test_what_stays_unfused_on_purpose():
    """Conv + Relu/Clip (no standard fused op; both runtimes fuse epilogues
    themselves), N-D MatMul + Add (Gemm is 2-D only), SiLU below opset 24."""
    net = fm.Net()
    conv = net.op("Conv", "image", net.weight(4, 3, 1, 1), net.const(np.ones(4, np.float32)))
    relu6 = net.op("Clip", net.op("Relu", conv), net.const(np.float32(0)), net.const(np.float32(6)))
    seq = net.op("Add", net.op("MatMul", "tokens", net.weight(8, 8)), net.const(np.full(8, 0.5, np.float32)))
    silu = net.op("Mul", seq, net.op("Sigmoid", seq))
    proto = net.model([("image", [1, 3, 4, 4], F), ("tokens", [2, 5, 8], F)], [relu6, silu])
    result = run_and_check(proto, "-O2")
    assert not result.changed
    assert ops(result.model) == Counter({"Conv": 1, "Relu": 1, "Clip": 1, "MatMul": 1, "Add": 1, "Sigmoid": 1, "Mul": 1})
