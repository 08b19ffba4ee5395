"""`onnxforge profile MODEL`: where a compiled model's time goes, per kernel.

Each TIR kernel of the CPU build (x86 "blas" kernels, as `onnxforge compile` makes
them) is timed on its own with random inputs of its shapes: call count, MFLOP,
time per call and in total, share, GFLOP/s, and which code runs it (BLAS, one of
onnxforge's C kernels, onnxforge's default TVM schedule, or a tuned schedule from
--db). Symbolic input dims must be pinned (--shape): kernels are timed at static
shapes. The sum approximates one run without the VM's own overhead."""
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
    top: int = typer.Option(25, "--top", help="rows to print"),
    as_json: bool = typer.Option(False, "--json", help="print every row as JSON"),
):
    """Per-kernel time, share, GFLOP/s and code path (BLAS, C kernel, TVM schedule, tuned) of the x86 build."""
    from ..codegen.compiler import pin_input_shapes
    from ..codegen.cpu.profile import format_table, kernel_table
    from ..codegen.lower import lower
    from ..codegen.targets import resolve_target
    from ..ir import DataError, load
    from ..passes import optimize

    if top < 1:
        raise typer.BadParameter("--top must be at least 1")
    loaded = load(model)
    shapes = parse_input_shapes(shape_items)
    if shapes:
        loaded = pin_input_shapes(loaded, shapes)
    open_dims = [f"{v.name}{list(v.shape)}" for v in loaded.graph.inputs
                 if not v.is_initializer and v.shape is not None and any(not isinstance(d, int) for d in v.shape)]
    if open_dims:
        raise DataError(f"kernels are timed at static shapes: pin {', '.join(open_dims)} with --shape NAME=D0,D1,...")
    lowered = lower(optimize(loaded, pipeline).model)
    target = resolve_target("x86")
    database = None
    if db:
        from ..codegen.tune_db import load_for

        database = load_for(db, target)
        if database is None:
            raise DataError(f"{db} holds no tuning records for {target.name}")
    rows = kernel_table(lowered.mod, target.tvm, "blas", database=database)
    if as_json:
        print(json.dumps({"model": model, "target": target.name, "kernels": rows}, indent=1, default=str))
    else:
        print(format_table(rows, top))
