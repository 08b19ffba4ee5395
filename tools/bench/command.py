"""`onnxforge bench`: the benchmark harness from the command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ...ir import DataError
from ...passes.check import load_inputs
from .report import machine_line, notes_of, table

console = Console(width=max(Console().width, 150))  # the table is wide; don't fold it into 80 columns
err = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width


def parse_dims(text: str | None) -> dict[str, int] | None:
    """`batch=1,sequence=128` -> {"batch": 1, "sequence": 128}."""
    if not text:
        return None
    dims = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise DataError(f"--dims wants NAME=INT pairs separated by commas, got {item!r}")
        dims[name.strip()] = int(value)
    return dims


def parse_shapes(items: list[str]) -> dict[str, list[int]] | None:
    """`x=1,3,48,320` (or 1x3x48x320), repeatable -> {"x": [1, 3, 48, 320]}."""
    shapes = {}
    for item in items:
        name, _, dims = item.partition("=")
        parts = dims.replace("x", ",").split(",")
        if not name or not all(p.strip().isdigit() for p in parts):
            raise DataError(f"--shape wants NAME=D1,D2,... (e.g. x=1,3,48,320), got {item!r}")
        shapes[name] = [int(p) for p in parts]
    return shapes or None


def with_compiled(pipelines: list[str], targets: list[str], db: str | None = None, load: bool = False) -> list:
    """The pipelines (onnxruntime on their output), then each compiled for each target,
    untuned and, with a tuning database `db`, also with its records for that target;
    `load`: also built with dequantize="load" (weights dequantized once at load)."""
    if not targets:
        return list(pipelines)
    from .compiled import compiled_variant
    from .variants import split_pipeline_arg

    compiled = []
    for target in targets:
        for arg in pipelines or ["-O1"]:
            name, text = split_pipeline_arg(arg)  # NAME=PIPELINE names the compiled variant too
            compiled.append(compiled_variant(f"tvm-{target}:{name}", text, target))
            if db:
                compiled.append(compiled_variant(f"tvm-{target}-tuned:{name}", text, target, db=db))
            if load:
                compiled.append(compiled_variant(f"tvm-{target}-load:{name}", text, target, dequantize="load"))
    return list(pipelines) + compiled


def print_report(result: dict) -> None:
    rows = table(result)
    t = Table(title=escape(f"{result['model']['name']}: onnxforge bench"), caption=escape(machine_line(result)))
    for i, col in enumerate(rows[0]):
        t.add_column(col, justify="left" if i < 2 else "right")
    for row in rows[1:]:
        t.add_row(*(escape(str(cell)) for cell in row))
    console.print(t)
    for note in notes_of(result):
        console.print(escape(f"  {note}"), highlight=False)


def bench_cmd(
    model_path: Optional[str] = typer.Argument(None, metavar="MODEL", help="ONNX file (not needed with --suite)"),
    pipeline: List[str] = typer.Option([], "-p", "--pipeline", help="pipeline to compare; repeatable; NAME=TEXT names it"),
    data: Optional[str] = typer.Option(None, "--data", help="folder of .npz samples (model inputs + labels), optional meta.json"),
    metric: Optional[str] = typer.Option(None, "--metric", help="built-in metric or module:function (default: the data's meta.json)"),
    out: str = typer.Option("bench-out", "--out", help="folder for report.json, report.md, PNG plots and variant models"),
    compare: Optional[str] = typer.Option(None, "--compare", help="comparators, comma separated, or 'none' (default: all that apply)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads for every engine and the sgemm peak (default: all cores)"),
    runs: int = typer.Option(20, "--runs", help="timed runs per variant (fewer if --max-time is reached first)"),
    warmup: int = typer.Option(3, "--warmup", help="untimed runs per variant first"),
    max_time: float = typer.Option(10.0, "--max-time", help="seconds per variant after which timing stops (at least 3 runs)"),
    dims: Optional[str] = typer.Option(None, "--dims", help="symbolic dims for random timing inputs, e.g. batch=1,sequence=128"),
    shape: List[str] = typer.Option([], "--shape", help="shape of a random timing input, e.g. x=1,3,48,320; repeatable"),
    timing_input: Optional[str] = typer.Option(None, "--timing-input", help=".npz with the inputs to time (default: the first sample)"),
    calib: str = typer.Option("64", "--calib", help="calibration for static quantization and data-driven passes: a folder "
                              "of .npz/.npy samples, or a number N = the first N --data samples (with --suite: of each "
                              "model's calibration set, tools/benchmarks/calib.py)"),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="with --calib DIR: use its first N samples"),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="evaluate outputs and metric on the first N samples"),
    target: List[str] = typer.Option([], "--target", help="also compile each pipeline with TVM for this target (repeatable)"),
    db: Optional[str] = typer.Option(None, "--db", help="with --target: also time each package built with this tuning database"),
    dequantize_at_load: bool = typer.Option(False, "--dequantize-at-load",
                                            help="with --target: also time each package built to dequantize its weights "
                                                 "once at load (compile --dequantize load)"),
    suite: bool = typer.Option(False, "--suite", help="run the benchmark suite: the three BENCHMARKS.md models with their data"),
    models: Optional[str] = typer.Option(None, "--models", help="with --suite: which models, comma separated (default: all)"),
    under_load: Optional[str] = typer.Option(None, "--under-load", help="also time every variant with one CPU-bound "
                                             "process running: nice (niced to 19) or plain"),
    as_json: bool = typer.Option(False, "--json", help="print report.json instead of the table"),
):
    """Latency against onnxruntime in one run, size, GFLOP/s and metric of each pipeline and comparator."""
    calib_dir = None if calib.isdigit() else calib
    calib_n = int(calib) if calib_dir is None else (calib_samples or 10**9)
    compare_list = None if compare is None else [c for c in compare.split(",") if c and c != "none"]
    common = dict(compare=compare_list, threads=threads, min_runs=runs, warmup=warmup, max_seconds=max_time,
                  calib_samples=calib_n, calibration=calib_dir, eval_samples=eval_samples, under_load=under_load,
                  log=lambda s: err.print(f"[dim]{s}[/dim]", highlight=False))
    if suite:
        if model_path or data or metric or dims or shape or timing_input:
            raise typer.BadParameter("--suite picks models, data and metrics itself; give only --pipeline/--models/--out")
        from ..benchmarks.suite import default_pipelines, run_suite

        results = run_suite(models.split(",") if models else None, with_compiled(pipeline or default_pipelines(), target, db, dequantize_at_load),
                            out, **common)
    else:
        if not model_path:
            raise typer.BadParameter("give a MODEL, or --suite")
        from .harness import bench

        feeds = load_inputs(timing_input) if timing_input else None
        variants = with_compiled(pipeline, target, db, dequantize_at_load)
        results = {Path(model_path).stem: bench(model_path, variants, data=data, metric=metric, out=out,
                                                timing_feeds=feeds, dims=parse_dims(dims),
                                                shapes=parse_shapes(shape), **common)}
    for result in results.values():
        if as_json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print_report(result)
    if not as_json:
        console.print(f"reports in {out}")
