"""`onnxforge tune`: MetaSchedule tuning into a persistent database (codegen.tune)."""
from __future__ import annotations

import json
import re
from typing import List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from ..codegen import resolve_target
from ..ir.errors import PassOptionError
from .codegen_cmds import _load_model, _pipeline_spec, console, err, parse_input_shapes


def parse_duration(text: str) -> float:
    """'90', '90s', '20m', '1h30m' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not text or not parts or not any(parts.groups()):
        raise PassOptionError(f"--time wants a duration like 90s, 20m or 1h30m, got {text!r}")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


def tune_cmd(
    model_path: str = typer.Argument(..., metavar="MODEL", help="ONNX file, or 'example'"),
    db: str = typer.Option(..., "--db", help="database folder (created; shared by tuners; keyed by target)"),
    target: str = typer.Option("x86", "-t", "--target", help="named target; `onnxforge targets` lists them"),
    trials: Optional[int] = typer.Option(None, "--trials", help="measurements in total (default 64 per kernel)"),
    time_budget: Optional[str] = typer.Option(None, "--time", help="stop after this long, e.g. 20m (checked per batch)"),
    pipeline: Optional[str] = typer.Option(None, "-p", "--pipeline", help="pipeline run before lowering (default -O2)"),
    level: Optional[int] = typer.Option(None, "-O", help="pipeline preset: -O0, -O1, -O2"),
    input_shape: List[str] = typer.Option([], "--input-shape", help="pin an input's shape: NAME=D0,D1,... (repeatable)"),
    cpu_kernels: Optional[str] = typer.Option(None, "--cpu-kernels", help="auto (default), blas or schedule: the build to tune"),
    rpc_tracker: Optional[str] = typer.Option(None, "--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: measure on its devices"),
    rpc_key: Optional[str] = typer.Option(None, "--rpc-key", help="device key registered with the tracker"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
):
    """Tune the model's CPU kernels with MetaSchedule; `compile --db DIR` then applies the records."""
    from ..codegen.tune import MARGIN, tune

    seconds = parse_duration(time_budget) if time_budget is not None else None
    spec = _pipeline_spec(pipeline, level) if (pipeline or level is not None) else "-O2"
    shapes = parse_input_shapes(input_shape)
    resolve_target(target)
    model = _load_model(model_path)
    with Progress(TextColumn("tuning"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
                  TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=err, disable=as_json) as bar:
        job = bar.add_task("tune", total=trials or None, best="")

        def on_progress(p):
            best = f"kernels {p.kernels_ms:.3f} ms ({p.tasks_measured}/{p.tasks} measured)" if p.kernels_ms else ""
            bar.update(job, completed=p.trials, total=p.max_trials, best=best)

        result = tune(model, target, db=db, trials=trials, time_budget=seconds, pipeline=spec, input_shapes=shapes or None,
                      cpu_kernels=cpu_kernels, rpc_tracker=rpc_tracker, rpc_key=rpc_key, on_progress=on_progress)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=escape(model_path) + f": {result.trials} trials in {result.seconds:.0f} s (stopped: {result.stopped}), "
                        f"{result.records_added} records -> {result.db}/{result.target_key}")
    for col in ("kernel", "calls", "MFLOP", "default ms", "tuned ms", "used", "GFLOP/s", "trials"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for k in sorted(result.kernels, key=lambda k: -(k.build_ms or 0) * k.calls):
        table.add_row(escape(k.name), str(k.calls), f"{k.flops / 1e6:.2f}", _ms(k.default_ms), _ms(k.best_ms),
                      "tuned" if k.kept else "default", f"{k.gflops:.1f}" if k.gflops else "-", str(k.trials))
    console.print(table)
    kept = sum(k.kept for k in result.kernels)
    console.print(f"{kept} of {len(result.kernels)} kernels beat onnxforge's default schedule (by >= "
                  f"{(1 - MARGIN) * 100:.0f}%) and are kept in the database; the others build with the default")
    if result.untuned_kernels:
        console.print(f"{result.untuned_kernels} kernels call OpenBLAS or onnxforge's C kernels ({result.cpu_kernels} build) "
                      "and are not tuned")


def _ms(value: float | None) -> str:
    return f"{value:.4f}" if value else "-"
