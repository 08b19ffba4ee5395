"""PNG plots of a report: latency ratio per variant, metric change vs speed-up, size."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def write_all(result: dict, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    written = [latency(result, out_dir / "latency_ratio.png", plt), size(result, out_dir / "size.png", plt)]
    if any(v.get("metrics") for v in result["variants"]):
        written.append(metric_vs_speedup(result, out_dir / "metric_vs_speedup.png", plt))
    return written


def _title(result: dict, what: str) -> str:
    return f"{result['model']['name']}: {what} ({result['timing']['threads']} threads, {result['date'][:10]})"


def latency(result: dict, path: Path, plt) -> Path:
    rows = [v for v in result["variants"] if "latency_ratio" in v]
    base = result["variants"][0]["latency"]["median"]
    ratios = [v["latency_ratio"] for v in rows]
    # Error bars: the interquartile range of each variant, relative to the baseline median.
    lo = [r - v["latency"]["p25"] / base for r, v in zip(ratios, rows)]
    hi = [v["latency"]["p75"] / base - r for r, v in zip(ratios, rows)]
    colors = {"baseline": "#888", "comparator": "#47a"}  # ours green
    return _ratio_bars(result, path, plt, rows, ratios, "latency",
                       "median latency / onnxruntime on the original (lower is faster)",
                       xerr=[lo, hi], color=[colors.get(v["kind"], "#3a7") for v in rows])


def size(result: dict, path: Path, plt) -> Path:
    rows = [v for v in result["variants"] if "size_ratio" in v]
    return _ratio_bars(result, path, plt, rows, [v["size_ratio"] for v in rows], "size", "bytes on disk / original",
                       color="#47a")


def _ratio_bars(result, path, plt, rows, values, what: str, xlabel: str, **bar_kw) -> Path:
    """One horizontal bar per variant, with the original at 1.0."""
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh([v["name"] for v in rows], values, **bar_kw)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(_title(result, what), fontsize=9)
    return _save(fig, path, plt)


def metric_vs_speedup(result: dict, path: Path, plt) -> Path:
    """Headline metric (the metric's first key) change against speed-up."""
    base = result["variants"][0]
    key = next(iter(base.get("metrics") or {}), None) or next(
        iter(next(v for v in result["variants"] if v.get("metrics"))["metrics"]))
    fig, ax = plt.subplots(figsize=(7, 5))
    for v in result["variants"]:
        if "speedup" in v and key in v.get("metric_delta", {}):
            ax.scatter(v["speedup"], v["metric_delta"][key], s=40)
            ax.annotate(v["name"], (v["speedup"], v["metric_delta"][key]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axvline(1.0, color="k", lw=0.8)
    lower = key in base.get("metric_lower_is_better", [])
    ax.set_xlabel("speed-up over onnxruntime on the original")
    ax.set_ylabel(f"change in {key} ({'lower' if lower else 'higher'} is better)")
    ax.set_title(_title(result, f"{key} vs speed"), fontsize=9)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
