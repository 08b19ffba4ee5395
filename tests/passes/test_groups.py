"""Channel dependency groups on hand-built graphs: conv/BN/activation chains,
residual adds, concat/split, depthwise and grouped convs, SE blocks, decomposed and
fused attention, FFNs; what blocks a group; `inspect --groups`."""
import json

import onnxforge
from onnxforge.passes.analysis import get_analysis
from tests.models import pruning as P
from tests.models.fusion import attention


def groups_of(proto):
    return get_analysis(onnxforge.load(proto), "groups")


def by_source(result):
    return {tuple(g.sources): g for g in result.groups}


def test_convnet_groups():
    g = groups_of(P.convnet())
    # stem and the residual branch's last conv write into the same residual add
    stem = next(x for x in g.groups if len(x.sources) == 2 and x.size == 16)
    assert stem.prunable and len(stem.sinks) == 3  # residual branch conv, both concat branches
    assert any(n.startswith("batchnormalization") for n in stem.params)
    # the concat inputs are separate groups, each shrinking the depthwise conv and the
    # conv after it at its own offset
    a, b = [x for x in g.groups if len(x.sources) == 1 and x.size in (8, 16) and x.params and
            any(p.startswith("conv") for p in x.params)]
    assert a.prunable and b.prunable and a.sinks == b.sinks
    # grouped conv blocks its input and output channels, and the SE block tied to its output
    blocked = [x for x in g.groups if any("grouped convolution" in r for r in x.reasons)]
    assert len(blocked) == 2
    # graph input and output
    assert any("graph input" in r for x in g.groups for r in x.reasons)
    assert any("graph output" in r for x in g.groups for r in x.reasons)
    # the SE squeeze (8 channels) and the head conv (40) are prunable
    assert sorted(x.size for x in g.groups if x.prunable) == [8, 8, 16, 16, 24, 40]


def test_depthwise_block_groups():
    g = groups_of(P.mobile_block())
    expand = next(x for x in g.groups if x.size == 64)
    assert expand.prunable and len(expand.params) == 1  # the depthwise conv follows the expansion
    residual = next(x for x in g.groups if x.size == 16)
    assert residual.prunable and len(residual.sources) == 2  # stem + projection, tied by the add


def test_split_groups():
    g = groups_of(P.split_model())
    parts = [x for x in g.groups if x.prunable]
    assert sorted(x.size for x in parts) == [8, 16]
    assert all(x.sources == parts[0].sources for x in parts)  # one conv produces both parts


def test_attention_heads_and_ffn():
    for dynamic in (False, True):
        g = groups_of(P.transformer(dynamic_shape=dynamic))
        heads = [x for x in g.groups if x.kind == "heads"]
        assert len(heads) == 1 and heads[0].prunable and heads[0].size == 4 and heads[0].head_size == 8
        assert len(heads[0].sources) == 3 and len(heads[0].sinks) == 1  # Q, K, V -> output projection
        ffn = next(x for x in g.groups if x.size == 64)
        assert ffn.prunable and ffn.kind == "channels"
        hidden = next(x for x in g.groups if x.size == 32 and x.kind == "channels")
        assert not hidden.prunable and any("LayerNormalization" in r or "graph" in r for r in hidden.reasons)


def test_fused_attention_heads():
    proto, _ = attention(hidden=16, heads=4, layers=2, mask=False)
    m = onnxforge.optimize(onnxforge.load(proto), "-O2").model
    assert sum(n.op_type == "Attention" for n in m.graph.nodes) == 2
    g = get_analysis(m, "groups")
    heads = [x for x in g.groups if x.kind == "heads"]
    assert len(heads) == 2 and all(h.prunable and h.size == 4 and h.head_size == 4 for h in heads)
    # with a mask, the fused form's attention bias is expanded per head at run time: not pruned, and said why
    proto, _ = attention(hidden=16, heads=4, layers=1, mask=True)
    g = get_analysis(onnxforge.optimize(onnxforge.load(proto), "-O2").model, "groups")
    heads = [x for x in g.groups if x.kind == "heads"]
    assert len(heads) == 1 and not heads[0].prunable and "per-head attention bias" in heads[0].reasons[0]


def test_unknown_op_blocks():
    proto = P.mobile_block()
    for node in proto.graph.node:
        if node.op_type == "Clip":
            node.op_type, node.domain = "Mystery", "com.vendor"
            del node.input[1:]
            break
    proto.opset_import.add(domain="com.vendor", version=1)
    g = groups_of(proto)
    expand = next(x for x in g.groups if x.size == 64)
    assert not expand.prunable and any("unknown op com.vendor.Mystery" in r for r in expand.reasons)


def test_inspect_groups_cli(tmp_path, capsys):
    import onnx

    from onnxforge.tools.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(P.convnet(), path)
    assert main(["inspect", "--groups", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prunable"] == 6 and data["total"] == len(data["groups"])
    assert main(["inspect", "--groups", str(path)]) == 0
    assert "channel dependency groups" in " ".join(capsys.readouterr().out.split())
