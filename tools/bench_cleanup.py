"""Benchmark: `cleanup,fold-constants` against onnxsim on the same files, in the
same run: node counts after, time (median of --repeat runs), output difference.

    python -m onnxforge.tools.bench_cleanup [MODEL.onnx ...]

Defaults to the onnx backend light ResNet-50 and the BENCHMARKS.md models found
in the cache (python tools/fetch_models.py all)."""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

import onnx

from ..ir import load
from ..passes import optimize
from ..passes.check import compare_outputs, run_ort, sample_inputs


def _default_models() -> list[str]:
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")
    cache = os.path.join(os.environ.get("ONNXFORGE_CACHE", os.path.expanduser("~/.cache/onnxforge")), "models")
    return [light] + sorted(glob.glob(os.path.join(cache, "*.onnx")))


def _median_time(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(path: str, pipeline: str, repeat: int) -> dict:
    import onnxsim

    row: dict = {"model": os.path.basename(path)}
    proto = onnx.load(path)
    row["nodes_before"] = len(proto.graph.node)
    t_ours, result = _median_time(lambda: optimize(load(path), pipeline), repeat)
    row["onnxforge_s"], row["onnxforge_nodes"] = t_ours, len(result.model.graph.nodes)
    model = load(path)
    # symbolic dims: batch 1, others 48 (PP-OCR height: its "?" dim, which the loader names unk__0) / 320 / 128
    # as the BENCHMARKS inputs use
    feeds = sample_inputs(model, dims={"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 320, "unk__0": 48,
                                       "batch": 1, "sequence": 128})
    try:
        ref = run_ort(model, feeds)
        row["onnxforge_diff"] = compare_outputs(ref, run_ort(result.model, feeds), 1e-5, 1e-4).max_abs
    except Exception as exc:  # e.g. light models whose generated weights overflow
        ref, row["onnxforge_diff"] = None, f"n/a ({str(exc)[:40]})"
    try:
        t_sim, (simplified, ok) = _median_time(lambda: onnxsim.simplify(onnx.load(path)), repeat)
        row["onnxsim_s"], row["onnxsim_nodes"] = t_sim, len(simplified.graph.node)
        if ref is not None:
            row["onnxsim_diff"] = compare_outputs(ref, run_ort(simplified, feeds), 1e-5, 1e-4).max_abs
    except Exception as exc:
        row["onnxsim_s"], row["onnxsim_nodes"] = float("nan"), f"failed: {str(exc)[:60]}"
    row["time_ratio"] = row["onnxforge_s"] / row["onnxsim_s"] if isinstance(row["onnxsim_nodes"], int) else float("nan")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*")
    parser.add_argument("--pipeline", default="cleanup,fold-constants")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [bench(p, args.pipeline, args.repeat) for p in (args.models or _default_models())]
    cols = ["model", "nodes_before", "onnxforge_nodes", "onnxsim_nodes", "onnxforge_s", "onnxsim_s", "time_ratio",
            "onnxforge_diff", "onnxsim_diff"]
    print(f"pipeline: {args.pipeline}; times are medians of {args.repeat} runs")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
