"""The Relax pipeline for fast untuned CPU code (cpu_kernels="blas" or "schedule").

"blas": DispatchBLAS (matmul/conv -> OpenBLAS) + fusion + default schedules.
"schedule": fusion + default schedules only (no BLAS, nothing extra to link).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..device.libs import cache_root
from .blas import C_HEADERS, C_SOURCES, DispatchBLAS, blas_lib_dir, link_options
from .extern_calls import PACK_KERNEL
from .fastmath import fast_math
from ..reshape_views import with_reshape_views
from ..shape_reads import order_dim_reads
from .schedules import default_schedule_pass


def front_passes(target: tvm.target.Target, mode: str) -> list:
    """Up to fused TIR kernels: what MetaSchedule extracts its tasks from."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return (([DispatchBLAS(int8=int8_dot_products(target))] if mode == "blas" else []) + [fast_math]
            + cpu.library_dispatch_passes(target) + with_reshape_views(cpu.legalize_passes(target)))


# x86 CPUs (LLVM -mcpu names) with AVX-512 VNNI or AVX-VNNI dot products
_VNNI_CPUS = frozenset({"cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "rocketlake",
                        "alderlake", "raptorlake", "meteorlake", "sapphirerapids", "emeraldrapids", "graniterapids",
                        "znver4", "znver5"})


def int8_dot_products(target: tvm.target.Target) -> bool:
    """Whether gemm_int8.c beats the float32 product on `target`: with VNNI dot
    products (x86 "x86" on such a host). Its AVX2 path (int16 pairs) ran MiniLM's
    quantize-dynamic package 12% slower than the float32 product with AVX2 kernels
    (29.7 against 26.4 ms), and arm64 has only its generic C path so far: those keep
    the float32 product."""
    return str(target.attrs.get("mcpu", "")) in _VNNI_CPUS


def cpu_pipeline(target: tvm.target.Target, mode: str, database=None, stats: dict | None = None,
                 dequantize: str = "run"):
    """The Relax pipeline; with a MetaSchedule `database`, kernels it holds records
    for take the tuned schedule and `stats` gets {"kernels", "kernels_tuned"}.
    Weight-only work moves to "main_transform_params" (run once by the loader;
    stats["transform_params"] = True then): all of it with dequantize="load", else
    only when there are weights to pack, and then only what float32 weights need
    (quantized weights stay quantized in memory and are dequantized in every run)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="onnxforge.CPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            passes = front_passes(target, mode)
            mod = tvm.transform.Sequential(passes[:1])(mod)  # DispatchBLAS (or fast_math)
            mod, lifted = lift_weight_transforms(mod, dequantize)
            if stats is not None and lifted:
                stats["transform_params"] = True
            mod = tvm.transform.Sequential(passes[1:])(mod)
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


def lift_weight_transforms(mod, dequantize: str):
    """(module, lifted): main's weight-only bindings moved to main_transform_params
    (main must carry "num_input"). dequantize="run": only when a weight is packed
    (extern_calls.PACK_KERNEL kernels), and not through non-float32 weights."""
    functions = {gv.name_hint: gv for gv in mod.get_global_vars()}
    main = functions.get("main")
    if main is None or not mod[main].attrs or "num_input" not in mod[main].attrs:
        return mod, False
    if dequantize != "load":
        if not any(name.startswith(PACK_KERNEL) for name in functions):
            return mod, False
        func = mod[main]
        quantized = {p for p in func.params[int(func.attrs["num_input"]):]
                     if not isinstance(p.ty, relax.TensorType) or str(p.ty.dtype.dtype) != "float32"}
        quantized -= _read_only_by_packing(mod, func, quantized)
        if quantized:
            mod = _keep_in_main(mod, main, quantized)
    return relax.transform.LiftTransformParams()(mod), True


def _read_only_by_packing(mod, func, params) -> set:
    """Those of `params` that only PACK_KERNEL kernels read (an integer weight that
    gemm_int8.c's kernels take packed): their packing moves to load time too, as the
    same bytes in another order."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    readers: dict = {p: set() for p in params}

    def note(expr, packing: bool) -> None:
        if isinstance(expr, relax.Tuple):
            for field in expr.fields:
                note(field, packing)
        elif expr in readers:
            readers[expr].add(packing)

    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                packing = value.args[0].name_hint.startswith(PACK_KERNEL)
                for arg in value.args[1:]:
                    note(arg, packing)
            elif isinstance(value, relax.Call):
                for arg in value.args:
                    note(arg, False)
            else:
                note(value, False)
    note(func.body.body, False)
    return {p for p, kinds in readers.items() if kinds == {True}}


@mutator
class _StopLifting(PyExprMutator):
    """Every read of the given parameters through builtin.stop_lift_params, so that
    what is computed from them stays in main."""

    def __init__(self, mod, params):
        super().__init__(mod)
        self._params = params

    def visit_var_(self, var):  # noqa: N802 (TVM's name)
        if var in self._params:
            return self.builder_.emit(relax.op.builtin.stop_lift_params(var))
        return var


def _keep_in_main(mod, main, params):
    mutator_ = _StopLifting(mod, params)
    mutator_.builder_.update_func(main, mutator_.visit_expr(mod[main]))
    return mutator_.builder_.get()


def _scheduled(mod) -> int:
    return sum(1 for f in mod.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False))


def export_kwargs(mode: str, blas_dir: str | None = None, cxx: str | None = None) -> dict:
    """Extra export_library arguments: the C kernels (blas.C_SOURCES) and the BLAS link options
    (`blas_dir`: the OpenBLAS folder for the target; default this machine's; `cxx`: the
    compiler that links the package, default TVM's: $CXX, else g++)."""
    if mode != "blas":
        return {}
    compiler = cxx or tvm.support.cc.get_cc() or "g++"
    return {"addons": [kernel_object(src, compiler) for src in C_SOURCES],
            "options": [*KERNEL_FLAGS, *link_options(blas_dir or blas_lib_dir())]}


# -fno-trapping-math: the activations' selects (activation.h) are if-converted and
# vectorize (with trapping math gcc keeps them as branches below AVX-512); the kernels
# never read floating-point exception flags.
KERNEL_FLAGS = ("-O2", "-fPIC", "-fno-trapping-math")


@functools.lru_cache(maxsize=None)
def _compiler_id(path: str) -> bytes:
    """The compiler's real path, version and target: asked once per process, not per file."""
    version = subprocess.run([path, "-dumpfullversion", "-dumpmachine"], capture_output=True, text=True,
                             timeout=30).stdout
    return f"{os.path.realpath(path)}\0{version}".encode()


def kernel_object(source, compiler: str) -> str:
    """The C kernel `source` compiled by `compiler` (KERNEL_FLAGS), cached under
    $ONNXFORGE_CACHE/kernels keyed by the source, the headers it includes
    (C_HEADERS), the compiler and its version: the files take ~5 s to compile, once per
    machine instead of once per package. The source itself (compiled in the link, as
    before) if anything goes wrong."""
    try:
        path = shutil.which(compiler)
        if path is None:
            return str(source)
        text = b"".join(Path(p).read_bytes() for p in (source, *C_HEADERS))
        key = hashlib.sha256(b"\0".join([text, _compiler_id(path),
                                          " ".join(KERNEL_FLAGS).encode()])).hexdigest()[:16]
        folder = cache_root() / "kernels"
        obj = folder / f"{os.path.basename(source)}-{key}.o"
        if not obj.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".o", dir=folder)
            os.close(fd)
            try:
                subprocess.run([path, *KERNEL_FLAGS, "-c", str(source), "-o", tmp], check=True, capture_output=True,
                               timeout=600)
                os.replace(tmp, obj)  # atomic: concurrent builds see a whole object or none
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return str(obj)
    except (OSError, subprocess.SubprocessError):
        return str(source)
