"""report.json (every figure) and report.md (the table people read)."""
from __future__ import annotations

import json
import os
from pathlib import Path

_MB = 1e6
_SPIN_OFF = "off (else an idle pool spins on the cores the next variant needs)"


def write(result: dict, out_dir: Path) -> None:
    _atomic(out_dir / "report.json", json.dumps(result, indent=2, default=_jsonable) + "\n")
    _atomic(out_dir / "report.md", markdown(result))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def machine_line(result: dict) -> str:
    m, t, peak = result["machine"], result["timing"], result.get("peak")
    isa = f" ({' '.join(m['isa']) or 'no AVX2/AVX-512/NEON flags'})" if "isa" in m else ""
    line = (f"{result['date'][:10]}, {m['cpu']}{isa}, {m['cores']} cores, {t['threads']} threads for every engine, "
            f"onnxruntime {m['onnxruntime']}")
    if peak:
        line += f", fp32 sgemm peak {peak['gflops']:.1f} GFLOP/s ({peak['blas']}, n={peak['n']})"
    return line


def table(result: dict) -> list[list[str]]:
    """Header row, then one row per variant; shared by report.md and the CLI."""
    metric_keys = _metric_keys(result)
    loaded = any("latency_loaded" in v for v in result["variants"])
    header = ["variant", "status", "latency ms (p25-p75)", "vs onnxruntime",
              *(["under load ms", "vs onnxruntime under load", "slowdown under load"] if loaded else []),
              "GFLOP/s (% peak)", "size MB (ratio)", "max abs diff", *metric_keys]
    rows = [header]
    for v in result["variants"]:
        lat, busy = v.get("latency"), v.get("latency_loaded")
        row = [v["name"], v["status"],
               f"{lat['median'] * 1e3:.2f} ({lat['p25'] * 1e3:.2f}-{lat['p75'] * 1e3:.2f})" if lat else "-",
               f"{v['latency_ratio']:.2f}x" if "latency_ratio" in v else "-"]
        if loaded:
            row += [f"{busy['median'] * 1e3:.2f}" if busy else "-",
                    f"{v['latency_ratio_loaded']:.2f}x" if "latency_ratio_loaded" in v else "-",
                    f"{v['load_slowdown']:.2f}x" if "load_slowdown" in v else "-"]
        row += [(f"{v['gflops']:.1f} ({v['peak_fraction'] * 100:.0f}%)" if "peak_fraction" in v
                 else f"{v['gflops']:.1f}" if "gflops" in v else "-"),
                f"{v['size_bytes'] / _MB:.2f} ({v['size_ratio']:.2f})" if "size_ratio" in v else "-",
                f"{v['output_diff']['max_abs']:.2g}" if "output_diff" in v else ("reference" if v["kind"] == "baseline" else "-")]
        for key in metric_keys:
            value = v.get("metrics", {}).get(key)
            delta = v.get("metric_delta", {}).get(key)
            shown = delta is not None and round(delta, 4) != 0 and v["kind"] != "baseline"
            row.append("-" if value is None else f"{value:.4f}" + (f" ({delta:+.4f})" if shown else ""))
        rows.append(row)
    return rows


def _metric_keys(result: dict) -> list[str]:
    keys: list[str] = []
    for v in result["variants"]:
        keys += [k for k in v.get("metrics", {}) if k not in keys]
    return keys


def notes_of(result: dict) -> list[str]:
    """Why each failed or skipped variant has no figures."""
    notes = [f"{v['name']} {v['status']}: {v.get('error', '')}" for v in result["variants"] if v["status"] != "ok"]
    return notes + [f"{v['name']} timed but not evaluated: {v['not_evaluated']}" for v in result["variants"]
                    if v.get("not_evaluated")]


def markdown(result: dict) -> str:
    return "\n".join([f"# Benchmark: {result['model']['name']}", "", machine_line(result) + ".", "", markdown_body(result)])


def markdown_body(result: dict) -> str:
    """The timing conditions, the table and the notes: what the suite summary repeats per model."""
    rows = table(result)
    lines = []
    feeds = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in result["timing"]["feeds"].items())
    t = result["timing"]
    lines.append(f"Latency: median over at least {t['min_runs']} runs (or {t['max_seconds']:g} s) after "
                 f"{t['warmup']} warm-up runs, variants timed round-robin in one process; input {feeds}; "
                 f"onnxruntime's intra-op spinning {'on' if t.get('ort_spinning') else _SPIN_OFF}.")
    if t.get("under_load"):
        lines.append(f"Under load: the same timing again while one CPU-bound process runs "
                     f"({'niced to 19' if t['under_load'] == 'nice' else 'at normal priority'}); "
                     "slowdown = loaded / quiet median of the same variant.")
    if result.get("data"):
        d = result["data"]
        lines.append(f"Data: {d['samples']} samples from {d['source']}; metric: {d['metric'] or 'none'} "
                     "(differences in parentheses are against the baseline).")
    lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    notes = notes_of(result)
    if notes:
        lines += ["", "Not measured:"] + [f"- {n}" for n in notes]
    lines += ["", "GFLOP/s: the variant's FLOPs (onnxforge inspect's count at the timed input shape) / median latency."]
    return "\n".join(lines) + "\n"
