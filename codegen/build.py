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


def build_library(lowered: Lowered, target: ResolvedTarget, path: str | os.PathLike) -> None:
    """Compile and link to `path` (a .so for target.arch)."""
    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise BuildError("tvm was imported runtime-only (TVM_USE_RUNTIME_LIB=1 or no libtvm_compiler): "
                         "compiling needs the full apache-tvm package; unset TVM_USE_RUNTIME_LIB")
    linker = target.check_linker()
    try:
        tvm_target = tvm.target.Target(target.tvm)
    except Exception as exc:
        raise BuildError(f"target {target.name}: TVM rejects the target {target.tvm}: {exc}") from exc
    pipeline = relax.get_default_pipeline(tvm_target) if target.device == "cuda" else "default"
    try:
        executable = tvm.compile(lowered.mod, tvm_target, relax_pipeline=pipeline)
    except Exception as exc:
        raise BuildError(f"TVM failed to compile the model for {target.name}: {_last_line(exc)}") from exc
    fcompile = tvm.support.cc.cross_compiler(linker) if linker else None
    try:
        with _quiet_stderr():  # export prints a "Scope Saving" warning per embedded constant
            executable.export_library(os.fspath(path), fcompile=fcompile)
    except Exception as exc:
        raise BuildError(f"linking the library for {target.name} failed{f' (with {linker})' if linker else ''}: "
                         f"{_last_line(exc)}") from exc


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
