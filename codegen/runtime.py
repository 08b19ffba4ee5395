"""The runtime loader: run a package with numpy and TVM's runtime only.

    pkg = onnxforge.runtime.load("model.ofpkg")
    out = pkg(x=array)            # {output name: numpy array}

It verifies every checksum and the manifest, refuses a package built for another
architecture, CPU or device, and checks input names, dtypes and shapes before
calling the compiled code. It imports no compiler: `import tvm` loads TVM's
compiler library too unless TVM_USE_RUNTIME_LIB=1 is set (then only
libtvm_runtime: about half the time and a third of the memory), which is what
devices should set. Dependencies: standard library, numpy, tvm's runtime, and the
sibling modules manifest.py and host.py.
"""
from __future__ import annotations

import difflib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..ir.errors import DataError
from . import host
from . import manifest as fmt
from .elf_check import check_elf, probe_dlopen
from .manifest import PackageError, TargetMismatchError, TensorSpec


def load(path: str | os.PathLike, device_id: int = 0, threads: int | None = None,
         trusted_keys: Sequence[str | os.PathLike | bytes] | None = None) -> "CompiledModel":
    """Verify and load a package; raises PackageError (corrupt, tampered) or
    TargetMismatchError (built for another machine). `threads` sets the size of
    TVM's CPU thread pool, which is per process (default, on the first load of the
    process: TVM_NUM_THREADS if set, else one thread per core this process may use).
    `trusted_keys` (public key files from `onnxforge keygen`, or raw 32-byte keys):
    refuse the package unless one of them signed it (codegen.signing)."""
    trusted = None
    if trusted_keys is not None:
        from .signing import trusted_key_bytes

        trusted = trusted_key_bytes(trusted_keys)
    manifest, files = fmt.read_package(path, trusted)
    check_target(manifest.get("target") or {}, os.fspath(path))
    quiet_pool_workers()
    model = CompiledModel(Path(path), manifest, files, device_id)
    if threads is not None:
        set_threads(threads)
    elif not _threads_set and not os.environ.get("TVM_NUM_THREADS"):
        set_threads(host.cpu_count())
    return model


_threads_set = False
# TVM's pool workers spin this many sched_yield() calls for new work before they
# sleep (TVM's default: 300000). On a loaded machine every yield hands the core to
# another process and the caller waits at each kernel's barrier for them: silero-vad
# (16k_sequence, 8 frames) took 48-93 ms instead of 4 ms with four other busy
# processes on 2 cores. On a quiet machine sleeping costs a wake-up per parallel
# kernel: 0.79 vs 0.63 ms on the same model, 18.4 vs 17.4 ms on PP-OCRv4 rec.
POOL_SPIN_COUNT = "0"


def quiet_pool_workers() -> None:
    """Pool workers sleep as soon as they run out of work, unless the user set
    TVM_THREAD_POOL_SPIN_COUNT. TVM reads it once, when its pool's first worker
    starts: call this before the first parallel kernel of the process runs."""
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", POOL_SPIN_COUNT)


def set_threads(threads: int) -> None:
    """Resize TVM's CPU thread pool (process-wide), its threads free to run on every
    core this process may use.

    Not TVM's defaults: left alone, TVM sizes its pool to half the cores on x86
    (it assumes hyper-threading), one thread on a 2-core VM; and its
    config_threadpool(1, n) ("big cores") pins the calling thread to core 0, which
    measured here (EfficientNet-Lite0, 2 cores) left the second core idle: 21.8 ms
    at one core's worth of CPU time, against 14.5 ms with the threads unpinned."""
    global _threads_set
    import tvm.runtime  # noqa: F401  (loads libtvm_runtime, which registers the function)
    from tvm_ffi import get_global_func

    if threads < 1:
        raise DataError(f"threads must be at least 1, got {threads}")
    cores = [str(c) for c in sorted(host.allowed_cpus())]
    get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, int(threads), cores)
    _threads_set = True


# TVM's threading::ThreadGroup::AffinityMode kSpecifyThreadShareAllCore: every thread
# of the pool may run on every core of the list given
_SHARE_ALL_CORES = -3


def check_target(target: Mapping[str, Any], where: str = "package") -> None:
    """Refuse code this machine cannot run: another architecture, missing CPU features."""
    name = target.get("name", "?")
    arch = target.get("arch")
    if arch != host.host_arch():
        raise TargetMismatchError(f"{where} was built for target {name} ({arch}); this machine is {host.host_arch()}: "
                                  f"compile the model for this machine (e.g. --target {_suggest()})")
    missing = [f for f in target.get("cpu_features") or () if f not in host.cpu_flags()]
    if missing and host.cpu_flags():
        raise TargetMismatchError(f"{where} was built for target {name}, which needs CPU features this CPU lacks: "
                                  f"{', '.join(missing)}; compile it with --target x86 on this machine (or x86-avx2)")


def _suggest() -> str:
    return {"x86_64": "x86", "aarch64": "arm64"}.get(host.host_arch(), "x86")


class CompiledModel:
    """A loaded package: call it with inputs by name, get outputs by name."""

    def __init__(self, path: Path, manifest: dict[str, Any], files: dict[str, bytes], device_id: int = 0):
        import tvm.runtime  # see the module docstring about TVM_USE_RUNTIME_LIB
        from tvm.runtime.vm import VirtualMachine

        self.path = path
        self.manifest = manifest
        self.inputs = [TensorSpec.from_json(t) for t in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in manifest["outputs"]]
        target = manifest["target"]
        self.target = target["name"]
        self.device = _device(tvm, target, str(path), device_id)
        damaged = lambda problem: PackageError(  # noqa: E731
            f"{path}: the compiled library {fmt.LIBRARY} is damaged ({problem}); rebuild the package with "
            "`onnxforge compile`")
        problem = check_elf(files[fmt.LIBRARY], host.host_arch())
        if problem is not None:  # dlopen of a damaged library can kill the process (SIGBUS), not raise
            raise damaged(problem)
        with tempfile.TemporaryDirectory(prefix="onnxforge-pkg-") as tmp:
            lib_path = os.path.join(tmp, fmt.LIBRARY)  # dlopen needs a file; it stays mapped after removal
            with open(lib_path, "wb") as f:
                f.write(files[fmt.LIBRARY])
            _preload_native_libraries(manifest, path)
            # the child also runs TVM's load, on the CPU only (CUDA does not survive a fork)
            on_cpu = self.device.dlpack_device_type() == 1
            problem = probe_dlopen(lib_path, load=(lambda p: VirtualMachine(tvm.runtime.load_module(p), self.device))
                                   if on_cpu else None)
            if problem is not None:
                raise damaged(problem)
            try:
                lib = tvm.runtime.load_module(lib_path)
                self._vm = VirtualMachine(lib, self.device)
            except Exception as exc:
                raise PackageError(f"{path}: TVM cannot load the compiled library: {_last_line(exc)}") from exc
        self._main = self._vm["main"]
        self._params = [tvm.runtime.tensor(a, self.device) for a in _read_weights(files[fmt.WEIGHTS], manifest, path)]
        if manifest.get("dequantize") == "load" or manifest.get("transform_params") is True:
            # weights -> what main takes (dequantized, packed), once (codegen.build)
            try:
                self._params = list(self._vm["main_transform_params"](self._params))
            except Exception as exc:
                raise PackageError(f"{path}: preparing the weights failed: {_last_line(exc)}") from exc
        self._tvm = tvm
        # On the CPU, arrays cross into and out of the module through DLPack, without a
        # copy (tvm.runtime.tensor + .numpy() cost ~200 us a call on a tiny model, 20x
        # the module itself); an output that is a weight comes back as a copy.
        self._zero_copy = self.device.dlpack_device_type() == 1  # kDLCPU
        self._param_ptrs = {t.data_ptr() for t in self._params} if self._zero_copy else set()
        self._dtypes = {t.name: np.dtype(t.dtype) for t in self.inputs if t.dtype is not None}

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}: {t.dtype}{t.shape_text()}" for t in self.inputs)
        return f"CompiledModel({self.path.name}, target {self.target}, inputs {ins})"

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, /, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run once: `pkg(x=a)` or `pkg({"input.1": a})`; returns {output name: array}."""
        given = dict(feeds or {})
        given.update(inputs)
        arrays = self.check_inputs(given)
        if self._zero_copy:
            arrays = [_aligned(a) for a in arrays]
            args = [self._tvm.runtime.from_dlpack(a) if a.size else self._tvm.runtime.tensor(a, self.device)
                    for a in arrays]  # an empty array's address is numpy's to choose
        else:
            args = [self._tvm.runtime.tensor(a, self.device) for a in arrays]
        try:
            result = self._main(*args, *self._params)
        except Exception as exc:
            raise DataError(f"{self.path.name}: the compiled model failed on these inputs: {_last_line(exc)}") from exc
        values = [result] if hasattr(result, "numpy") else list(result)
        if len(values) != len(self.outputs):
            raise PackageError(f"{self.path}: the library returned {len(values)} outputs, the manifest lists "
                               f"{len(self.outputs)}")
        given_ptrs = {a.ctypes.data for a in arrays} if self._zero_copy else set()
        return {spec.name: self._to_numpy(v, given_ptrs) for spec, v in zip(self.outputs, values)}

    def _to_numpy(self, value, given_ptrs: set) -> np.ndarray:
        """Zero-copy on the CPU, except for an output that is a weight or an input buffer."""
        if not self._zero_copy or value.data_ptr() in self._param_ptrs or value.data_ptr() in given_ptrs:
            return value.numpy()
        try:
            return np.from_dlpack(value)
        except (TypeError, ValueError, BufferError, RuntimeError):  # a dtype numpy's DLPack does not take
            return value.numpy()

    run = __call__

    def check_inputs(self, given: Mapping[str, Any]) -> list[np.ndarray]:
        """The inputs in call order, after checking names, dtypes and shapes."""
        names = [t.name for t in self.inputs]
        unknown = [k for k in given if k not in names]
        if unknown:
            close = [n for n in names if n.lower() == unknown[0].lower()] or difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"unknown input {unknown[0]!r}{hint}; the model's inputs are: "
                            + ", ".join(f"{t.name} {t.dtype}{t.shape_text()}" for t in self.inputs))
        missing = [t for t in self.inputs if t.name not in given]
        if missing:
            raise DataError("missing input " + ", ".join(f"{t.name!r} ({t.dtype}{t.shape_text()})" for t in missing))
        bound: dict[str, tuple[int, str]] = {}  # symbolic dim -> (value, where it was bound)
        arrays = []
        for spec in self.inputs:
            try:
                array = np.asarray(given[spec.name])
            except (ValueError, TypeError) as exc:  # a ragged nested list, an object numpy cannot hold
                raise DataError(f"input {spec.name!r} is not an array: {exc}; give a numpy array of shape "
                                f"{spec.shape_text()}") from None
            if array.dtype == object:
                raise DataError(f"input {spec.name!r} is not a numeric array (dtype object: ragged lists or mixed "
                                f"types?); give a numpy array of shape {spec.shape_text()}")
            if spec.dtype is not None and array.dtype != self._dtypes.get(spec.name, array.dtype):
                raise DataError(f"input {spec.name!r}: dtype {array.dtype.name}, expected {spec.dtype} "
                                f"(convert it with .astype(np.{spec.dtype}))")
            _check_shape(spec, array.shape, bound)
            arrays.append(np.require(array, requirements="C"))  # ascontiguousarray makes 0-d arrays 1-d
        return arrays


def _aligned(array: np.ndarray) -> np.ndarray:
    """`array` (C-contiguous) at a 64-byte aligned address, as TVM's kernels assume:
    itself when it already is (numpy's large buffers often are), else a copy."""
    if array.ctypes.data % 64 == 0 and array.flags.c_contiguous and array.flags.writeable:
        return array
    buf = np.empty(array.nbytes + 64, np.uint8)
    offset = -buf.ctypes.data % 64
    out = buf[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], bound: dict[str, tuple[int, str]]) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise DataError(f"input {spec.name!r}: shape {list(shape)} has rank {len(shape)}, expected rank "
                        f"{len(spec.shape)} {spec.shape_text()}")
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want != got:
            raise DataError(f"input {spec.name!r}: shape {list(shape)}, expected {spec.shape_text()} "
                            f"(dim {axis} must be {want})")
        if isinstance(want, str):
            if want in bound and bound[want][0] != got:
                value, where = bound[want]
                raise DataError(f"input {spec.name!r}: dim {axis} ({want}) is {got}, but {want} is {value} in {where}")
            bound.setdefault(want, (got, f"input {spec.name!r}"))


def _device(tvm, target: Mapping[str, Any], where: str, device_id: int):
    if target.get("device") != "cuda":
        return tvm.cpu(0)
    problem = _prepare_cuda_runtime(tvm, device_id)
    dev = tvm.cuda(device_id)
    if not dev.exist:
        raise TargetMismatchError(f"{where} was built for target {target.get('name')} (an NVIDIA GPU); "
                                  f"this machine has no CUDA GPU {device_id} visible to TVM"
                                  + (f" (its CUDA runtime does not load: {problem})" if problem else ""))
    arch = (target.get("tvm") or {}).get("arch", "")
    have = "sm_" + dev.compute_version.replace(".", "")
    if arch and _sm(arch) > _sm(have):
        raise TargetMismatchError(f"{where} was built for {arch}; this GPU is {have}: compile it for cuda-{have.replace('_', '')}")
    return dev


def _prepare_cuda_runtime(tvm, device_id: int) -> str | None:
    """Runtime-only TVM (TVM_USE_RUNTIME_LIB=1, or no libtvm_compiler: what a device
    has) loads no device backend, and TVM's load-time CUDA compile hook asks
    Target.current(), a compiler-library function. Load TVM's CUDA runtime and
    register a hook that names the GPU's arch itself (NVRTC; needs cuda-bindings).
    Found on an H100: without this the loader saw no GPU. Returns why TVM's CUDA
    runtime does not load (no driver here), or None."""
    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" not in _LOADED_LIBS and "tvm_runtime" in _LOADED_LIBS:
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                               extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as exc:
            return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        import tvm_ffi
        from tvm.support import nvcc

        dev = tvm.cuda(device_id)
        if dev.exist:
            arch = "sm_" + dev.compute_version.replace(".", "")
            tvm_ffi.register_global_func(
                "tvm_callback_cuda_compile",
                lambda code: nvcc.compile_cuda(code, target_format="cubin", arch=arch, compiler="nvrtc"), override=True)
    return None


def _sm(arch: str) -> int:
    digits = "".join(c for c in arch if c.isdigit())
    return int(digits) if digits else 0


def _read_weights(data: bytes, manifest: Mapping[str, Any], path) -> list[np.ndarray]:
    params = manifest.get("params") or []
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = []
            for p in params:
                array = npz[p["key"]]
                if p.get("raw"):  # bfloat16/int4/float8 stored as bytes: view them back
                    import ml_dtypes

                    array = array.view(np.dtype(getattr(ml_dtypes, p["dtype"]))).reshape(p["shape"])
                if array.dtype.name != p["dtype"] or list(array.shape) != list(p["shape"]):
                    raise PackageError(f"{path}: weight {p['name']!r} is {array.dtype.name}{list(array.shape)}, "
                                       f"the manifest says {p['dtype']}{p['shape']}")
                arrays.append(array)
            return arrays
    except PackageError:
        raise
    except Exception as exc:
        raise PackageError(f"{path}: cannot read the weights: {exc}") from None


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _preload_native_libraries(manifest: dict, path) -> None:
    """Libraries the compiled code links (OpenBLAS for cpu_kernels=blas), loaded
    globally first from their Python package, so the library's own dependency
    resolves on any machine that has the package, not only where it was built."""
    import ctypes
    import importlib

    for entry in manifest.get("native_libraries", []):
        package = entry["python_package"]
        if package not in fmt.NATIVE_LIBRARY_PACKAGES:  # never import whatever a manifest names
            raise PackageError(f"{path}: the package asks for native libraries from {package!r}, which onnxforge "
                               f"does not use ({', '.join(sorted(fmt.NATIVE_LIBRARY_PACKAGES))}); rebuild it with "
                               "`onnxforge compile`")
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise PackageError(f"{path} was built with cpu_kernels=blas and needs {entry['soname']}: "
                               f"pip install {package}") from None
        lib = os.path.join(module.get_lib_dir(), entry["soname"])
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise PackageError(f"{path}: cannot load {lib}, which the compiled code needs: {exc}") from None
