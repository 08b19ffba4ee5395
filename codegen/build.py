"""Build: a lowered Relax module -> a shared library for a named target.

GPU targets get TVM's target pipeline (dlight GPU schedules). CPU targets get
codegen/cpu's pipeline: OpenBLAS for dense matmul/conv and default schedules for
the rest (see resolve_cpu_kernels), or TVM's generic default pipeline on request.
"""
from __future__ import annotations

import contextlib
import os

import tvm
from tvm import relax

from ..ir.errors import BuildError
from . import tune_db
from .cpu import CPU_KERNELS
from .lower import Lowered
from .targets import ResolvedTarget


def _default_pipeline(tvm_target):
    """TVM's default Relax pipeline for the target's backend, with the dims that
    fusion may have reordered put back in order after it (shape_reads.py)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda

    from .reshape_views import with_reshape_views
    from .shape_reads import order_dim_reads

    backend = cuda if tvm_target.kind.name == "cuda" else cpu

    @tvm.transform.module_pass(opt_level=0, name="onnxforge.DefaultPipeline")
    def _pipeline(mod, _ctx):
        with tvm_target:
            passes = (backend.library_dispatch_passes(tvm_target) + with_reshape_views(backend.legalize_passes(tvm_target))
                      + [order_dim_reads] + backend.dataflow_lower_passes(tvm_target)
                      + backend.finalize_passes(tvm_target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build_library(lowered: Lowered, target: ResolvedTarget, path: str | os.PathLike,
                  cpu_kernels: str | None = None, db: str | os.PathLike | None = None,
                  dequantize: str = "run") -> dict:
    """Compile and link to `path` (a .so for target.arch). `db`: a tuning database
    folder (codegen.tune_db); only records tuned for this target are applied.
    `dequantize="load"`: what main computes from the weights alone (dequantizing
    them, reshapes) moves to a function "main_transform_params" that loaders run
    once (relax.transform.LiftTransformParams); main then takes its results.
    Returns {"cpu_kernels": the mode used (see resolve_cpu_kernels; "tvm" for GPU
    targets), "transform_params": whether loaders must run main_transform_params
    (dequantize="load", or CPU weights packed at load: codegen/cpu/pipeline.py)}
    plus, with `db`, "tuning": {"db", "target_key", "kernels", "kernels_tuned"}."""
    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise BuildError("tvm was imported runtime-only (TVM_USE_RUNTIME_LIB=1 or no libtvm_compiler): "
                         "compiling needs the full apache-tvm package; unset TVM_USE_RUNTIME_LIB")
    from .runtime import quiet_pool_workers

    quiet_pool_workers()  # before TVM's thread pool starts (compiling may start it): see runtime.py
    linker = target.check_linker()
    try:
        tvm_target = tvm.target.Target(target.tvm)
    except Exception as exc:
        raise BuildError(f"target {target.name}: TVM rejects the target {target.tvm}: {exc}") from exc
    pipeline = _default_pipeline(tvm_target)
    export_kwargs = {}
    info: dict = {"cpu_kernels": "tvm"}
    database, stats = None, {}
    if db is not None:
        if target.device != "cpu":
            raise BuildError(f"tuning databases apply to CPU targets only; {target.name} uses TVM's default GPU schedules")
        database = tune_db.load_for(db, target)
        info["tuning"] = {"db": os.fspath(db), "target_key": tune_db.target_key(target), "has_records": database is not None}
    if target.device == "cpu":
        mode, blas_dir = resolve_cpu_kernels(cpu_kernels, target)
        info["cpu_kernels"] = mode
        if mode == "tvm" and db is not None:
            raise BuildError("a tuning database needs cpu_kernels auto, blas or schedule (the kernels onnxforge tune tunes)")
        if mode != "tvm":
            from .cpu.pipeline import cpu_pipeline
            from .cpu.pipeline import export_kwargs as cpu_export_kwargs

            pipeline = cpu_pipeline(tvm_target, mode, database, stats, dequantize)
            export_kwargs = cpu_export_kwargs(mode, blas_dir, linker)
    mod = lowered.mod
    _check_extern_kernels(mod, target, info["cpu_kernels"])
    if info["cpu_kernels"] in ("blas", "schedule"):  # the CPU pipeline lifts weight work itself, after packing
        mod = with_num_input(mod, len(lowered.inputs))
    elif dequantize == "load":
        mod = _lift_params(mod, len(lowered.inputs))
    try:
        executable = tvm.compile(mod, tvm_target, relax_pipeline=pipeline)
    except Exception as exc:
        raise BuildError(f"TVM failed to compile the model for {target.name}: {_last_line(exc)}") from exc
    fcompile = tvm.support.cc.cross_compiler(linker) if linker else None
    # -s: no debug info or static symbol table in the package (TVM's LLVM codegen
    # emits DWARF: ~40% of a CPU library); the loader only needs dynamic symbols.
    export_kwargs["options"] = [*export_kwargs.get("options", []), "-s"]
    try:
        with _quiet_stderr():  # export prints a "Scope Saving" warning per embedded constant
            executable.export_library(os.fspath(path), fcompile=fcompile, **export_kwargs)
    except Exception as exc:
        raise BuildError(f"linking the library for {target.name} failed{f' (with {linker})' if linker else ''}: "
                         f"{_last_line(exc)}") from exc
    if db is not None:
        info["tuning"].update({k: v for k, v in stats.items() if k.startswith("kernels")} or {"kernels_tuned": 0})
    info["transform_params"] = bool(stats.get("transform_params")) or dequantize == "load"
    return info


def _check_extern_kernels(mod, target: ResolvedTarget, mode: str) -> None:
    """Recurrent layers call onnxforge's C kernels (codegen/cpu/recurrent.c), which
    only CPU builds with cpu_kernels="blas" link."""
    from .recurrent import extern_kernels

    names = extern_kernels(mod)
    if names and (target.device != "cpu" or mode != "blas"):
        where = f"target {target.name}" if target.device != "cpu" else f"cpu_kernels={mode!r}"
        raise BuildError(f"{len(names)} recurrent layer(s) (RNN/GRU/LSTM) run on onnxforge's C kernels, which {where} "
                         f"does not link; build for a CPU target with cpu_kernels='blas' (the default when OpenBLAS "
                         f"for the target is installed: pip install scipy-openblas32)")


def with_num_input(mod, num_inputs: int):
    """main's first `num_inputs` parameters are inputs, the rest weights (a copy of
    the module: the caller's is left as it is)."""
    main = mod.get_global_var("main")
    funcs = {gv: (f.with_attr("num_input", num_inputs) if gv.same_as(main) else f) for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _lift_params(mod, num_inputs: int):
    return relax.transform.LiftTransformParams()(with_num_input(mod, num_inputs))


def resolve_cpu_kernels(requested: str | None, target: ResolvedTarget) -> tuple[str, str | None]:
    """The CPU kernel mode and OpenBLAS folder for a build. `requested` (default
    $ONNXFORGE_CPU_KERNELS, else "auto"):
    - "blas": float32 matmul/conv call OpenBLAS sgemm, depthwise conv a C kernel,
      the rest gets default schedules (codegen/cpu); an error when no OpenBLAS
      for the target's architecture can be found or fetched;
    - "schedule": default schedules only, nothing extra linked;
    - "tvm": TVM's own default pipeline (10-100x slower than onnxruntime untuned);
    - "auto": "blas" when OpenBLAS for the target is at hand, else "schedule"."""
    requested = requested or os.environ.get("ONNXFORGE_CPU_KERNELS") or "auto"
    if requested not in CPU_KERNELS:
        raise BuildError(f"cpu_kernels must be one of {', '.join(CPU_KERNELS)}, got {requested!r}")
    if requested not in ("auto", "blas"):
        return requested, None
    from .device.libs import openblas_dir

    try:
        return "blas", str(openblas_dir(target.arch))
    except BuildError:
        if requested == "blas":
            raise
        return "schedule", None


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
