"""The benchmark suite: fetch the three BENCHMARKS.md models and build their
evaluation and calibration sets (cached outside the repo; a second run reuses
them), then run the harness on each and write one summary.

    python -m onnxforge.tools.benchmarks [--models ppocr,minilm] [-p -O1 -p NAME=PIPELINE] [--out DIR]
    onnxforge bench --suite ...                      (the same)
"""
from __future__ import annotations

import dataclasses
import os
import traceback
from pathlib import Path
from typing import Callable, Sequence

from ...passes import PRESETS
from .. import fetch_models
from ..bench.harness import bench
from ..bench.report import machine_line, markdown_body

DATA_ROOT = fetch_models.CACHE_ROOT / "data"


@dataclasses.dataclass
class Entry:
    fetch: Callable[[], Path]  # the model file, fetched or exported on first use
    data: Callable[[Path], Path]  # the evaluation folder, built on first use
    dims: dict[str, int] | None = None  # timing shape for symbolic dims (else the first sample)
    calib: Callable[[], Path] | None = None  # the calibration folder (else the first evaluation samples)


def _ppocr_data(model: Path) -> Path:
    from .data_ppocr import build_ppocr_data

    return build_ppocr_data(model, DATA_ROOT / "ppocrv4_rec")


def _minilm_data(model: Path) -> Path:
    from .data_minilm import build_minilm_data

    return build_minilm_data(fetch_models.MODELS_DIR / "minilm_l6_tokenizer", DATA_ROOT / "minilm_l6")


def _effnet_data(model: Path) -> Path:
    from .data_effnet import build_effnet_data

    return build_effnet_data(DATA_ROOT / "efficientnet_lite0")


def _calib(name: str) -> Callable[[], Path]:
    def build() -> Path:
        from .calib import build_calibration

        return build_calibration(name)

    return build


SUITE: dict[str, Entry] = {
    "ppocrv4_rec": Entry(fetch_models.fetch_ppocr_rec, _ppocr_data, calib=_calib("ppocrv4_rec")),
    # BENCHMARKS.md: MiniLM latency at batch 1, sequence 128 (the data are single texts of any length).
    "minilm_l6": Entry(fetch_models.export_minilm, _minilm_data, {"batch": 1, "sequence": 128}, _calib("minilm_l6")),
    "efficientnet_lite0": Entry(fetch_models.export_efficientnet_lite0, _effnet_data, calib=_calib("efficientnet_lite0")),
}
ALIASES = {"ppocr": "ppocrv4_rec", "minilm": "minilm_l6", "effnet": "efficientnet_lite0"}


def default_pipelines() -> list[str]:
    return [p for p in ("-O1", "-O2") if p in PRESETS]


def run_suite(models: Sequence[str] | None = None, pipelines: Sequence[str] | None = None,
              out: str | Path = "bench-results", log: Callable[[str], None] = print, **bench_kwargs) -> dict[str, dict]:
    """Benchmark each suite model; a model that fails to fetch or run is reported in
    summary.md and raised at the end, after the others ran."""
    names = [ALIASES.get(m, m) for m in (models or SUITE)]
    unknown = [m for m in names if m not in SUITE]
    if unknown:
        from ...ir import DataError

        raise DataError(f"unknown suite model(s) {unknown}; known: {', '.join(SUITE)} (or {', '.join(ALIASES)})")
    out = Path(out)
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for name in names:
        entry = SUITE[name]
        try:
            log(f"== {name}: fetching the model and its data (cached in {fetch_models.CACHE_ROOT})")
            model = entry.fetch()
            data = entry.data(model)
            kwargs = dict(bench_kwargs)
            if kwargs.get("calibration") is None and entry.calib:  # samples disjoint from the evaluated ones
                kwargs["calibration"] = entry.calib()
            results[name] = bench(model, list(pipelines or default_pipelines()), data=data, out=out / name,
                                  dims=entry.dims, log=log, **kwargs)
        except Exception as exc:  # noqa: BLE001 - finish the other models first
            failures[name] = f"{type(exc).__name__}: {exc}"
            log(traceback.format_exc())
    _write_summary(out, results, failures)
    if failures:
        from ...ir import OnnxforgeError

        raise OnnxforgeError(f"suite model(s) failed: {failures}")
    return results


def _write_summary(out: Path, results: dict[str, dict], failures: dict[str, str]) -> None:
    lines = ["# onnxforge benchmark suite", ""]
    if results:
        lines += [machine_line(next(iter(results.values()))) + ".", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", markdown_body(result)]
    for name, why in failures.items():
        lines += [f"## {name}", "", f"FAILED: {why}", ""]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".summary.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "summary.md")

