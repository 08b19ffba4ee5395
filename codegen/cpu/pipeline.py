"""The Relax pipeline for fast untuned CPU code (cpu_kernels="blas" or "schedule").

"blas": DispatchBLAS (matmul/conv -> OpenBLAS) + fusion + default schedules.
"schedule": fusion + default schedules only (no BLAS, nothing extra to link).
"""
from __future__ import annotations

import tvm

from .blas import KERNELS_C, RECURRENT_C, DispatchBLAS, blas_lib_dir, link_options
from .fastmath import fast_math
from ..shape_reads import order_dim_reads
from .schedules import default_schedule_pass


def front_passes(target: tvm.target.Target, mode: str) -> list:
    """Up to fused TIR kernels: what MetaSchedule extracts its tasks from."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return (([DispatchBLAS()] if mode == "blas" else []) + [fast_math] + cpu.library_dispatch_passes(target)
            + cpu.legalize_passes(target))


def cpu_pipeline(target: tvm.target.Target, mode: str, database=None, stats: dict | None = None):
    """The Relax pipeline; with a MetaSchedule `database`, kernels it holds records
    for take the tuned schedule and `stats` gets {"kernels", "kernels_tuned"}."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="onnxforge.CPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(front_passes(target, mode))(mod)
            if database is not None:
                before = _scheduled(mod)
                with database:
                    mod = tvm.relax.transform.MetaScheduleApplyDatabase()(mod)
                if stats is not None:
                    stats["kernels"] = sum(1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
                    stats["kernels_tuned"] = _scheduled(mod) - before
            # after fusion: dims bound mid-function are read after their match_cast again
            rest = [order_dim_reads, default_schedule_pass(), *cpu.dataflow_lower_passes(target),
                    *cpu.finalize_passes(target)]
            return tvm.transform.Sequential(rest)(mod)

    return _pipeline


def _scheduled(mod) -> int:
    return sum(1 for f in mod.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False))


def export_kwargs(mode: str, blas_dir: str | None = None) -> dict:
    """Extra export_library arguments: the kernels.c and recurrent.c addons and the BLAS link options
    (`blas_dir`: the OpenBLAS folder for the target; default this machine's)."""
    if mode != "blas":
        return {}
    return {"addons": [str(KERNELS_C), str(RECURRENT_C)], "options": ["-O2", "-fPIC", *link_options(blas_dir or blas_lib_dir())]}
