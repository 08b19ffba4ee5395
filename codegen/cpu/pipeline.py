"""The Relax pipeline for fast untuned CPU code (cpu_kernels="blas" or "schedule").

"blas": DispatchBLAS (matmul/conv -> OpenBLAS) + fusion + default schedules.
"schedule": fusion + default schedules only (no BLAS, nothing extra to link).
"""
from __future__ import annotations

from pathlib import Path

import tvm

from .blas import KERNELS_C, DispatchBLAS, link_options
from .schedules import default_schedule_pass

MODES = ("tvm", "schedule", "blas")


def cpu_pipeline(target: tvm.target.Target, mode: str):
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="onnxforge.CPUPipeline")
    def _pipeline(mod, _ctx):
        passes = []
        if mode == "blas":
            passes.append(DispatchBLAS())
        passes += cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
        passes.append(default_schedule_pass())
        passes += cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def export_kwargs(mode: str) -> dict:
    """Extra export_library arguments: the kernels.c addon and the BLAS link options."""
    if mode != "blas":
        return {}
    return {"addons": [str(KERNELS_C)], "options": ["-O2", "-fPIC", *link_options()]}


def blas_runtime_files(mode: str) -> list[Path]:
    """Native libraries a package built with `mode` needs at run time."""
    if mode != "blas":
        return []
    from .blas import BLAS_SONAME, blas_lib_dir

    return [Path(blas_lib_dir()) / BLAS_SONAME]
