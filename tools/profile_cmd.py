"""`onnxforge profile MODEL`: where a compiled model's time goes, per kernel.

Each TIR kernel of the CPU build (x86 "blas" kernels, as `onnxforge compile` makes
them) is timed on its own with random inputs of its shapes: call count, MFLOP,
time per call and in total, share, GFLOP/s, and which code runs it (BLAS, one of
onnxforge's C kernels, onnxforge's default TVM schedule, or a tuned schedule from
--db). Symbolic input dims must be pinned (--shape): kernels are timed at static
shapes, on as many pool threads as a loaded package uses (--threads to change). The
sum approximates one run without the VM's own overhead."""
from __future__ import annotations

import json
from typing import List, Optional

import typer

from .codegen_cmds import parse_input_shapes


def profile_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="the ONNX model"),
    pipeline: str = typer.Option("-O2", "-p", "--pipeline", help="pipeline before lowering (as for compile)"),
    shape_items: List[str] = typer.Option([], "--shape", help="pin an input: NAME=D0,D1,... (repeatable)"),
    db: Optional[str] = typer.Option(None, "--db", help="apply this tuning database (onnxforge tune) first"),
    threads: Optional[int] = typer.Option(None, "--threads", help="pool threads (default: the cores this process may use)"),
    top: int = typer.Option(25, "--top", help="rows to print"),
    as_json: bool = typer.Option(False, "--json", help="print every row as JSON"),
):
    """Per-kernel time, share, GFLOP/s and code path (BLAS, packed GEMM, C kernel, TVM schedule, tuned) of the x86 build."""
    from ..codegen.cpu.profile import format_table, profile_model
    from ..ir import load

    if top < 1:
        raise typer.BadParameter("--top must be at least 1")
    if threads is not None and threads < 1:
        raise typer.BadParameter("--threads must be at least 1")
    from ..codegen.host import cpu_count

    threads = threads or cpu_count()
    rows = profile_model(load(model), pipeline, parse_input_shapes(shape_items), db, threads=threads)
    if as_json:
        print(json.dumps({"model": model, "target": "x86", "threads": threads, "kernels": rows}, indent=1, default=str))
    else:
        print(format_table(rows, top))
