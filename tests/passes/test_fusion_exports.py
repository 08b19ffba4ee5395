"""The same networks exported two ways (torch's TorchScript exporter at opset 17
and its dynamo exporter at opset 18), small random-weight transformers of nine
architectures (tools/transformers_zoo.py): -O2 fuses attention in every
layer of both, with the same LayerNorm and GELU counts, keeps outputs within
1e-4, and a second -O2 changes nothing; the compression passes find the same
candidates on both exports (lowrank, prune-channels, quantize-weights, quantize-static).

The exports run once per builder version, in the torch export interpreter of
tools/fetch_models.py (a cached venv with the pinned torch/transformers, created
on first use), and are cached under $ONNXFORGE_CACHE/zoo."""
from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxforge
from onnxforge.ir.onnx_io import to_proto
from onnxforge.tools.zoo_check import sample_feeds
from tests.models import transformers_zoo as zoo

LAYERS = zoo.SMALL["layers"]
FUSED = ("Attention", "LayerNormalization", "RMSNormalization", "Gelu", "FastGelu", "QuickGelu")


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from onnxforge.tools import fetch_models

    builder = Path(zoo.BUILDER)
    key = hashlib.sha256(builder.read_bytes() + " ".join(fetch_models.EXPORT_REQUIREMENTS).encode()).hexdigest()[:12]
    out = fetch_models.CACHE_ROOT / "zoo" / key
    if not all((out / f"{a}-{e}.onnx").exists() for a in zoo.ARCHS for e in zoo.EXPORTERS):
        done = subprocess.run([fetch_models._export_python(), str(builder), "--all", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            pytest.fail(f"exporting the zoo failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return out


def _feeds(path: Path) -> dict[str, np.ndarray]:
    return sample_feeds(path, batch=2, seq=16, padded=5)  # padding in the second item


def _run(model_or_path, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    data = str(model_or_path) if isinstance(model_or_path, Path) else to_proto(model_or_path).SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_both_exports_fuse_the_same(zoo_dir, arch):
    counts = {}
    for exporter in zoo.EXPORTERS:
        path = zoo_dir / f"{arch}-{exporter}.onnx"
        result = onnxforge.optimize(onnxforge.load(str(path)), "-O2")
        ops = Counter(n.op_type for n in result.model.graph.all_nodes())
        assert ops["Attention"] == LAYERS and ops["Softmax"] == 0, (exporter, ops)
        counts[exporter] = {op: ops[op] for op in FUSED}
        feeds = _feeds(path)
        np.testing.assert_allclose(_run(result.model, feeds), _run(path, feeds), atol=1e-4, rtol=1e-4)
        assert not onnxforge.optimize(result.model, "-O2").changed, exporter
    assert counts["torchscript"] == counts["dynamo"]
    norm = "RMSNormalization" if arch == "t5-encoder" else "LayerNormalization"  # T5: onnxforge's function
    assert counts["dynamo"][norm] == 2 * LAYERS + 1
    if arch != "t5-encoder":  # ReLU
        assert sum(counts["dynamo"][op] for op in ("Gelu", "FastGelu", "QuickGelu")) >= LAYERS


def _candidates(result) -> dict:
    stats = {}
    for record in result.records:
        s = record.stats
        stats[record.name.split("{")[0]] = {k: s[k] for k in ("candidates", "skipped", "prunable", "groups", "quantized")
                                            if k in s}
    return stats


@pytest.mark.parametrize("arch", ["bert", "vit", "gpt2"])
def test_compression_finds_the_same_candidates_on_both_exports(zoo_dir, arch):
    found = {}
    for exporter in zoo.EXPORTERS:
        model = onnxforge.load(str(zoo_dir / f"{arch}-{exporter}.onnx"))
        result = onnxforge.optimize(model, "-O2,lowrank{rank_ratio=0.5},prune-channels{ratio=0.25},quantize-weights")
        found[exporter] = _candidates(result)
        path = zoo_dir / f"{arch}-{exporter}.onnx"
        static = onnxforge.optimize(onnxforge.load(str(path)), "-O2,quantize-static{sensitivity=false}",
                                    calibration=[_feeds(path)])
        found[exporter]["quantize-static"] = {k: static.records[-1].stats[k] for k in ("quantized", "activations")}
    assert found["torchscript"] == found["dynamo"]
    # per layer: the output projection and the two FFN MatMuls (Q/K/V live in the fused
    # Attention); ViT adds its patch-embedding Conv
    expected = 3 * LAYERS + (arch == "vit")
    assert found["dynamo"]["lowrank"]["candidates"] == expected and not found["dynamo"]["lowrank"]["skipped"]
    assert found["dynamo"]["quantize-weights"]["quantized"] >= 4 * LAYERS
