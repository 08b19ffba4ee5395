"""Check -O2 on transformers exported two ways, against onnxsim, onnxslim and
onnxruntime's transformers optimizer.

    python -m onnxforge.tools.zoo_check [--full] [--arch bert ...] [--runs 30] [--json OUT]

Exports each architecture of tools/transformers_zoo.py with torch's TorchScript
and dynamo exporters (random weights, in the torch export venv of
tools/fetch_models.py; cached), then per file: fused Attention / LayerNorm /
GELU counts and node counts of our -O2 and of onnxruntime's optimizer
(`--model_type` per architecture), node counts and seconds of onnxsim and
onnxslim, the values whose shapes stay unknown after -O2, and onnxruntime's
latency on our output over its on its optimizer's output (medians of
interleaved runs, 2 threads, batch 1, sequence 128; 32 for the small ones).
Prints a Markdown table."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from . import fetch_models
from .transformers_zoo import ARCHS, EXPORTERS

ORT_MODEL_TYPE = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "albert": "bert", "vit": "vit",
                  "gpt2": "gpt2", "whisper-encoder": "bert", "clip-text": "clip", "t5-encoder": "t5"}
FUSED = {"Attention": ("Attention", "MultiHeadAttention"),
         "LayerNorm": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                       "SkipSimplifiedLayerNormalization", "RMSNormalization"),
         "GELU": ("Gelu", "FastGelu", "BiasGelu", "QuickGelu")}


def _fused(model: onnx.ModelProto) -> dict[str, int]:
    ops = Counter(n.op_type for n in model.graph.node)
    return {k: sum(ops[o] for o in names) for k, names in FUSED.items()}


def sample_feeds(path: Path, batch: int, seq: int, padded: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a zoo model: symbolic dims as batch (first) and seq (others); token
    ids, an attention mask (the last item's last `padded` positions masked), zero
    token types, normal floats."""
    import onnxruntime as ort

    feeds = {}
    rng = np.random.default_rng(0)
    for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs():
        shape = [d if isinstance(d, int) else batch if n == 0 else seq for n, d in enumerate(i.shape)]
        if "int64" not in i.type:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif "mask" in i.name:
            feeds[i.name] = np.ones(shape, np.int64)
            if padded:
                feeds[i.name][-1, -padded:] = 0
        elif "token_type" in i.name:
            feeds[i.name] = np.zeros(shape, np.int64)
        else:
            feeds[i.name] = rng.integers(3, 100, shape)
    return feeds


def _latency_ratio(ours: Path, theirs: Path, feeds, runs: int) -> float:
    """Median latency of `ours` over that of `theirs`, interleaved, in onnxruntime."""
    import onnxruntime as ort

    def session(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    a, b = session(ours), session(theirs)
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(3):
        a.run(None, feeds), b.run(None, feeds)
    for _ in range(runs):
        for k, s in ((0, a), (1, b)):
            t = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t)
    return statistics.median(times[0]) / statistics.median(times[1])


def check(path: Path, arch: str, work: Path, runs: int, seq: int) -> dict:
    import onnxsim
    import onnxslim

    import onnxforge
    from onnxforge.ir.onnx_io import to_proto
    from onnxforge.ir.shapes import infer_all_shapes, unknown_shapes

    original = onnx.load(str(path))
    row: dict = {"nodes": len(original.graph.node)}
    t = time.perf_counter()
    result = onnxforge.optimize(onnxforge.load(str(path)), "-O2")
    row["ours_s"] = time.perf_counter() - t
    infer_all_shapes(result.model)
    row["shapes_unknown"] = unknown_shapes(result.model)
    ours = to_proto(result.model)
    row["ours_nodes"], row["ours_fused"] = len(ours.graph.node), _fused(ours)
    ours_path = work / (path.stem + ".O2.onnx")
    onnx.save(ours, str(ours_path))
    for name, simplify in (("onnxsim", lambda m: onnxsim.simplify(m)[0]), ("onnxslim", onnxslim.slim)):
        t = time.perf_counter()
        try:
            row[f"{name}_nodes"] = len(simplify(onnx.load(str(path))).graph.node)
        except Exception as exc:  # noqa: BLE001 - a comparator that fails is reported, not fatal
            row[f"{name}_nodes"] = f"failed: {type(exc).__name__}"
        row[f"{name}_s"] = time.perf_counter() - t
    ort_path = work / (path.stem + ".ort.onnx")
    # Its command line, as users run it, with its defaults; in the export venv, since
    # its default opt_level runs an onnxruntime session that imports torch.
    subprocess.run([fetch_models._export_python(), "-m", "onnxruntime.transformers.optimizer", "--input", str(path),
                    "--output", str(ort_path), "--model_type", ORT_MODEL_TYPE[arch]], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opt = onnx.load(str(ort_path))
    row["ort_nodes"], row["ort_fused"] = len(opt.graph.node), _fused(opt)
    feeds = sample_feeds(path, 1, seq)
    row["ort_latency_ratio"] = _latency_ratio(ours_path, ort_path, feeds, runs)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="default-size configs (else 2 layers, hidden 64)")
    ap.add_argument("--arch", action="append", choices=ARCHS, help="only these (repeatable)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args(argv)
    out = fetch_models.CACHE_ROOT / ("zoo-full" if a.full else "zoo-small")
    builder = Path(__file__).with_name("transformers_zoo.py")
    only = [f"--only={arch}" for arch in a.arch or ()]
    subprocess.run([fetch_models._export_python(), str(builder), "--all", str(out), *only,
                    *(["--full"] if a.full else [])], check=True)
    rows = []
    print("| architecture | exporter | Attention / LN / GELU: ours | onnxruntime optimizer | nodes: before | ours | "
          "onnxsim | onnxslim | ours s / onnxsim s | shapes unknown | ort latency ours / its optimizer's |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arch in a.arch or ARCHS:
        for exporter in EXPORTERS:
            row = check(out / f"{arch}-{exporter}.onnx", arch, out, a.runs, 128 if a.full else 32)
            rows.append({"arch": arch, "exporter": exporter, **row})
            f, o = row["ours_fused"], row["ort_fused"]
            print(f"| {arch} | {exporter} | {f['Attention']} / {f['LayerNorm']} / {f['GELU']} | "
                  f"{o['Attention']} / {o['LayerNorm']} / {o['GELU']} | {row['nodes']} | {row['ours_nodes']} | "
                  f"{row['onnxsim_nodes']} | {row['onnxslim_nodes']} | {row['ours_s']:.2f} / {row['onnxsim_s']:.2f} | "
                  f"{row['shapes_unknown']} | {row['ort_latency_ratio']:.2f} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
