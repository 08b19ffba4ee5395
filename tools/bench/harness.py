"""One benchmark run: build every variant, check its outputs and task metric on the
data, time all of them round-robin against the same-run baseline, and write the
report (JSON, Markdown, PNG plots)."""
from __future__ import annotations

import datetime
import os
import platform
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from ... import ir
from ...ir import DataError
from ...passes.analysis import get_analysis, param_stats
from ...passes import optimize
from ...passes.check import sample_inputs
from . import plots, report as report_io
from .data import Dataset, as_dataset, check_inputs, feeds_of
from .metrics import MetricContext, evaluate, get_metric, lower_is_better
from .timing import LOADS, BackgroundLoad, measure, sgemm_peak
from .variants import COMPARATORS, DEFAULT_COMPARATORS, BuildContext, Skipped, Variant, baseline, parse_pipeline_arg, timed_build


def bench(model: str | Path, pipelines: Sequence[str | Variant] = (), *, data: Any = None,
          metric: str | Callable | None = None, out: str | Path = "bench-out", compare: Iterable[str] | None = None,
          threads: int | None = None, warmup: int = 3, min_runs: int = 20, max_seconds: float = 10.0,
          timing_feeds: Mapping[str, np.ndarray] | None = None, dims: Mapping[str, int] | None = None,
          shapes: Mapping[str, Sequence[int]] | None = None,
          calib_samples: int = 64, calibration: Any = None, eval_samples: int | None = None, peak: bool = True,
          under_load: str | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Benchmark `model` against onnxruntime: returns the report dict and writes
    report.json, report.md and PNG plots into `out`.

    pipelines: pipeline texts (`NAME=TEXT` to name one) or Variant objects.
    data: a folder of .npz samples, a Dataset, or an iterable of dicts (inputs + labels).
    timing_feeds / dims / shapes: what to time: given arrays; else the first data
      sample; else random inputs with these dim sizes or input shapes.
    metric: a built-in metric name, `module:function`, or a callable; default: the
      data folder's meta.json "metric", else none (output differences only).
    compare: comparator names (default: DEFAULT_COMPARATORS; static quantization needs data).
    calibration: calibration samples for onnxruntime's static quantizer and for
      pipelines whose passes learn from data (a folder of .npz/.npy, or an iterable
      of input dicts; see passes/calibration.py); default: the first `calib_samples`
      samples of `data` (then calibration and evaluation overlap).
    eval_samples: evaluate outputs and the metric on the first N samples only.
    under_load: "nice" or "plain": after the quiet timing, time every variant again
      with one CPU-bound process running (niced to 19, or not): row "latency_loaded",
      its ratio to onnxruntime under the same load, and "load_slowdown" (loaded /
      quiet median), so that who suffers more from a busy machine is in one table.
    """
    if under_load is not None and under_load not in LOADS:
        raise DataError(f"under_load must be one of {', '.join(LOADS)}, got {under_load!r}")
    original = Path(model)
    if not original.is_file():
        raise DataError(f"model {str(original)!r} does not exist")
    out_dir = Path(out)
    work_dir = out_dir / "variants"
    work_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or os.cpu_count() or 1
    proto = onnx.load(str(original), load_external_data=False)
    inputs = graph_inputs(proto)
    dataset = as_dataset(data)
    if dataset is not None:
        check_inputs(dataset, inputs)
    metric_fn = _resolve_metric(metric, dataset)
    feeds = _timing_feeds(original, inputs, dataset, timing_feeds, dims, shapes)

    variants = [baseline()] + [p if isinstance(p, Variant) else parse_pipeline_arg(p) for p in pipelines]
    names = [v.name for v in variants]
    for name in DEFAULT_COMPARATORS if compare is None else list(compare):
        if name not in COMPARATORS:
            raise DataError(f"unknown comparator {name!r}; known: {', '.join(COMPARATORS)}")
        variants.append(COMPARATORS[name]())
    if len(set(v.name for v in variants)) != len(variants):
        raise DataError(f"variant names must be unique, got {names}")

    if calibration is not None:
        from ...passes.calibration import Calibration

        calibration = list(Calibration.from_source(calibration, model=ir.load(original), limit=calib_samples))
    else:
        calibration = [feeds_of(s, list(inputs)) for s in dataset.samples[:calib_samples]] if dataset else None
    ctx = BuildContext(original, work_dir, threads, calibration, feeds)
    rows = [_build(v, ctx, log) for v in variants]

    evaluated = dataset.samples[:eval_samples] if dataset else None  # untuned compiled code can be slow
    eval_feeds = [feeds_of(s, list(inputs)) for s in evaluated] if dataset else [feeds]
    context = MetricContext(None, {p.key: p.value for p in proto.metadata_props}, dataset.meta if dataset else {})
    reference = None
    for i, row in enumerate(rows):
        if row["status"] == "ok":
            reference = _evaluate(row, eval_feeds, evaluated, metric_fn, context, reference, log)
        if i == 0:  # no reference, no report: stop before evaluating the others
            _require_baseline(row, original)

    # The peak is taken before and after timing, best of both: a busy neighbour
    # lowers a single reading, and the peak is a ceiling.
    peak_info = sgemm_peak(threads) if peak else None
    log(f"timing {sum(r['status'] == 'ok' for r in rows)} variants round-robin, {threads} threads")
    runners = {r["name"]: (lambda run=r.pop("_runner"): run(feeds)) for r in rows if r["status"] == "ok"}
    timings = measure(runners, warmup, min_runs, max_seconds, on_error=lambda n, e: _fail(_row(rows, n), e))
    _require_baseline(rows[0], original)
    loaded = {}
    if under_load:
        log(f"timing again with one CPU-bound process running ({under_load})")
        runners = {n: r for n, r in runners.items() if n in timings}
        with BackgroundLoad(under_load):
            loaded = measure(runners, warmup, min_runs, max_seconds, on_error=lambda n, e: log(f"{n} under load: {e}"))
    if peak:
        peak_info = max(peak_info, sgemm_peak(threads), key=lambda p: p["gflops"])

    for row in rows:
        row.pop("_runner", None)
        if row["name"] in timings and row["status"] == "ok":
            row["latency"] = timings[row["name"]].__dict__
            if row["name"] in loaded:
                row["latency_loaded"] = loaded[row["name"]].__dict__
    for row in rows[1:]:
        if row.get("latency") and row.get("flops") is None and rows[0].get("flops"):
            row["flops"], row["flops_of"] = rows[0]["flops"], "the original model (not an ONNX artifact)"
    _ratios(rows, peak_info, metric_fn)
    result = {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "model": {"path": str(original), "name": original.stem, "inputs": {k: list(map(str, v[1] or [])) for k, v in inputs.items()},
                  "size_bytes": _size(original), "weight_bytes": rows[0]["weight_bytes"]},
        "timing": {"threads": threads, "warmup": warmup, "min_runs": min_runs, "max_seconds": max_seconds,
                   "order": "round-robin", "feeds": {k: list(v.shape) for k, v in feeds.items()},
                   "ort_spinning": os.environ.get("ONNXFORGE_BENCH_SPIN", "0") != "0", "under_load": under_load},
        "peak": peak_info,
        "data": None if dataset is None else {"source": dataset.source, "samples": len(evaluated),
                                             "metric": _metric_name(metric, dataset, metric_fn)},
        "calibration": None if calibration is None else {"samples": len(calibration)},
        "variants": rows,
    }
    report_io.write(result, out_dir)
    plots.write_all(result, out_dir)
    return result


def graph_inputs(proto: onnx.ModelProto) -> dict[str, tuple[np.dtype, list | None]]:
    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] if t.HasField("shape") else None
        out[vi.name] = (onnx.helper.tensor_dtype_to_np_dtype(t.elem_type), shape)
    return out


def _resolve_metric(metric, dataset: Dataset | None):
    if metric is None and dataset is not None:
        metric = dataset.meta.get("metric")
    if metric is None:
        return None
    if dataset is None:
        raise DataError("a metric needs data: pass --data DIR (or data=...)")
    return get_metric(metric) if isinstance(metric, str) else metric


def _metric_name(metric, dataset, fn) -> str | None:
    if fn is None:
        return None
    spec = metric if metric is not None else dataset.meta.get("metric")
    return spec if isinstance(spec, str) else f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _timing_feeds(original, inputs, dataset, timing_feeds, dims, shapes) -> dict[str, np.ndarray]:
    if timing_feeds is not None:
        missing = set(inputs) - set(timing_feeds)
        if missing:
            raise DataError(f"timing inputs lack {sorted(missing)}")
        return {k: np.asarray(timing_feeds[k]) for k in inputs}
    if dataset is not None and not dims and not shapes:
        return feeds_of(dataset.samples[0], list(inputs))
    try:
        return sample_inputs(ir.load(original), dims=dims, shapes=shapes, strict=True)
    except ir.OnnxforgeError as exc:
        raise DataError(f"timing inputs: {exc}") from None


def _require_baseline(base: dict, original: Path) -> None:
    """Every ratio is against the baseline: without it there is no report."""
    if base["status"] != "ok":
        raise ir.OnnxforgeError(f"the baseline (onnxruntime on {original}) failed: {base['error']}")


def _row(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["name"] == name)


def _fail(row: dict, exc: BaseException) -> None:
    row["status"] = "failed"
    row["error"] = f"{type(exc).__name__}: {exc}".strip()
    row["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    row.pop("_runner", None)
    row.pop("latency", None)


def _build(variant: Variant, ctx: BuildContext, log) -> dict:
    row: dict[str, Any] = {"name": variant.name, "kind": variant.kind, "description": variant.description, "status": "ok"}
    log(f"building {variant.name}")
    try:
        built, seconds = timed_build(variant, ctx)
    except Skipped as why:
        row.update(status="skipped", error=str(why))
        return row
    except Exception as exc:  # noqa: BLE001 - report it, keep the other variants
        _fail(row, exc)
        log(f"  {variant.name} failed: {row['error']}")
        return row
    row.update(build_seconds=seconds, info=built.info, artifact=str(built.artifact), size_bytes=_size(built.artifact),
               _runner=built.runner)
    row["weight_bytes"], row["flops"] = _graph_stats(built.model or built.artifact, ctx.timing_feeds)
    return row


def _evaluate(row, eval_feeds, samples, metric_fn, context, reference, log):
    """Outputs on every sample, their difference from the baseline's, and the metric.
    Returns the baseline's outputs (the reference for every later variant)."""
    log(f"evaluating {row['name']} on {len(eval_feeds)} samples")
    try:
        outputs = [row["_runner"](f) for f in eval_feeds]
        if reference is not None:
            row["output_diff"] = _diff(reference, outputs)
        if metric_fn is not None:
            ctx = MetricContext(reference, context.model_metadata, context.meta)
            row["metrics"] = evaluate(metric_fn, outputs, samples, ctx)
    except DataError as exc:
        if reference is None:
            raise
        # The variant refuses some samples' shapes (a compiled module pinned to the
        # timed shape): it is still timed, with no metric.
        row["not_evaluated"] = str(exc)
        log(f"  {row['name']} not evaluated: {exc}")
    except Exception as exc:  # noqa: BLE001
        _fail(row, exc)
        log(f"  {row['name']} failed: {row['error']}")
        return reference
    return outputs if reference is None else reference


def _diff(reference: list[dict], outputs: list[dict]) -> dict[str, float]:
    max_abs, total, count = 0.0, 0.0, 0
    for ref, got in zip(reference, outputs):
        if len(ref) != len(got):
            raise ValueError(f"{len(got)} outputs, the original has {len(ref)}")
        for (name, a), b in zip(ref.items(), got.values()):
            if a.shape != b.shape:
                raise ValueError(f"output {name!r} has shape {list(b.shape)}, the original's is {list(a.shape)}")
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_abs = max(max_abs, float(d.max(initial=0.0)))
            total, count = total + float(d.sum()), count + d.size
    return {"max_abs": max_abs, "mean_abs": total / max(count, 1)}


def _graph_stats(artifact: "Path | ir.Model", feeds: Mapping[str, np.ndarray]) -> tuple[int | None, int | None]:
    """Weight bytes and FLOPs (inspect's analyses, at the timed input shapes) of the
    variant's own graph (an ONNX file, or the model a package was compiled from);
    (None, None) for an artifact that is neither."""
    if isinstance(artifact, ir.Model):
        model = artifact.clone()  # its input shapes are set below
    else:
        try:
            model = ir.load(artifact)
        except ir.OnnxforgeError:
            return None, None
    weight_bytes = param_stats(model)["bytes"]
    for value in model.graph.inputs:
        if value.name in feeds:
            value.shape = list(feeds[value.name].shape)
    # what was inferred for open dims goes: onnx's inference keeps a named dim over the
    # static one it now finds (an -O2 MiniLM counted 0.4 of its 2,900 MFLOP)
    for node in model.graph.all_nodes():
        for value in node.outputs:
            value.shape = None
    # Constant subgraphs (EfficientNet-Lite0's padding arithmetic, shapes computed from
    # weights) are not run-time arithmetic: onnxruntime and the compiler fold them, so
    # they are folded before counting.
    flops = get_analysis(optimize(model, "fold-constants").model, "flops")
    return weight_bytes, flops["total"] or None


def _ratios(rows: list[dict], peak: dict | None, metric_fn) -> None:
    base = rows[0]
    base_lat = base["latency"]["median"] if "latency" in base else None
    base_metrics = base.get("metrics", {})
    for row in rows:
        if row.get("size_bytes"):
            row["size_ratio"] = row["size_bytes"] / base["size_bytes"]
        if row.get("weight_bytes") and base.get("weight_bytes"):
            row["weight_ratio"] = row["weight_bytes"] / base["weight_bytes"]
        lat = row.get("latency")
        if lat and base_lat:
            row["latency_ratio"] = lat["median"] / base_lat
            row["speedup"] = base_lat / lat["median"]
        loaded, base_loaded = row.get("latency_loaded"), base.get("latency_loaded")
        if loaded and lat:
            row["load_slowdown"] = loaded["median"] / lat["median"]
            if base_loaded:
                row["latency_ratio_loaded"] = loaded["median"] / base_loaded["median"]
        if lat and row.get("flops"):
            row["gflops"] = row["flops"] / lat["median"] / 1e9
            if peak:
                row["peak_fraction"] = row["gflops"] / peak["gflops"]
        if row.get("metrics") and base_metrics:
            row["metric_delta"] = {k: v - base_metrics[k] for k, v in row["metrics"].items() if k in base_metrics}
            row["metric_lower_is_better"] = [k for k in row["metrics"] if lower_is_better(metric_fn, k)]


def _size(path: Path) -> int:
    """Bytes on disk, external-data files included."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    size = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file
        return size
    seen = set()
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                size += (path.parent / entry.value).stat().st_size
    return size


# the vector ISA flags that decide kernel speed (x86 /proc/cpuinfo "flags", arm64 "Features"):
# reports name them, so rows from different hosts are never read as comparable
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd",
             "asimddp", "sve", "bf16", "i8mm")


def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime

    from ... import __version__

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
        have = next((line.split(":", 1)[1].split() for line in info if line.startswith(("flags", "Features"))), [])
        flags = [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return {"cpu": cpu, "isa": flags, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "onnxforge": __version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__,
            "onnxsim": _version("onnxsim")}


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None

