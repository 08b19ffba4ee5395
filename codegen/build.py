"""Build: a lowered Relax module -> a shared library for a named target.

GPU targets get TVM's target pipeline (dlight GPU schedules); CPU targets TVM's
generic default pipeline (what tvm.compile picks itself: its CPU pipeline can drop
side-effecting calls). Speed on CPU needs tuning: that is the next step, not this one.
"""
from __future__ import annotations

import contextlib
import os

import tvm
from tvm import relax

from ..ir.errors import BuildError
from .lower import Lowered
from .targets import ResolvedTarget


def build_library(lowered: Lowered, target: ResolvedTarget, path: str | os.PathLike,
                  cpu_kernels: str | None = None) -> str:
    """Compile and link to `path` (a .so for target.arch). `cpu_kernels` (CPU
    targets; default: $ONNXFORGE_CPU_KERNELS, else "tvm"): "tvm" is TVM's default
    pipeline, "schedule" adds fusion and default CPU schedules, "blas" also sends
    matmul/conv to OpenBLAS (codegen/cpu). Returns the mode used (cross builds
    fall back from "blas" to "schedule")."""
    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise BuildError("tvm was imported runtime-only (TVM_USE_RUNTIME_LIB=1 or no libtvm_compiler): "
                         "compiling needs the full apache-tvm package; unset TVM_USE_RUNTIME_LIB")
    linker = target.check_linker()
    try:
        tvm_target = tvm.target.Target(target.tvm)
    except Exception as exc:
        raise BuildError(f"target {target.name}: TVM rejects the target {target.tvm}: {exc}") from exc
    pipeline = relax.get_default_pipeline(tvm_target) if target.device == "cuda" else "default"
    # --- issue 7 hook: fast untuned CPU code (codegen/cpu), off by default until measured ---
    cpu_kernels = cpu_kernels or os.environ.get("ONNXFORGE_CPU_KERNELS", "tvm")
    export_kwargs = {}
    if target.device == "cpu" and cpu_kernels != "tvm":
        from .cpu.pipeline import MODES, cpu_pipeline
        from .cpu.pipeline import export_kwargs as cpu_export_kwargs

        if cpu_kernels not in MODES:
            raise BuildError(f"cpu_kernels must be one of {', '.join(MODES)}, got {cpu_kernels!r}")
        if cpu_kernels == "blas" and target.linker and not os.environ.get("ONNXFORGE_OPENBLAS_DIR"):
            cpu_kernels = "schedule"  # cross builds need the target's OpenBLAS: ONNXFORGE_OPENBLAS_DIR
        pipeline = cpu_pipeline(tvm_target, cpu_kernels)
        export_kwargs = cpu_export_kwargs(cpu_kernels)
    # --- end of hook ---
    try:
        executable = tvm.compile(lowered.mod, tvm_target, relax_pipeline=pipeline)
    except Exception as exc:
        raise BuildError(f"TVM failed to compile the model for {target.name}: {_last_line(exc)}") from exc
    fcompile = tvm.support.cc.cross_compiler(linker) if linker else None
    try:
        with _quiet_stderr():  # export prints a "Scope Saving" warning per embedded constant
            executable.export_library(os.fspath(path), fcompile=fcompile, **export_kwargs)
    except Exception as exc:
        raise BuildError(f"linking the library for {target.name} failed{f' (with {linker})' if linker else ''}: "
                         f"{_last_line(exc)}") from exc
    return cpu_kernels if target.device == "cpu" else "tvm"


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++ warnings written straight to file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
