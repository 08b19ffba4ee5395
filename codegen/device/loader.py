"""Build ofrun (the native loader) for a machine, and run packages with it: on
this machine directly, or under qemu-user when the package is for another
architecture (aarch64 here: CI runs arm64 packages this way).

    folder = build_loader("aarch64")  # ofrun + libtvm_runtime.so + libtvm_ffi.so: copy it to the device
    run = run_native("model.ofpkg", {"x": x}, repeat=10)  # run.outputs {name: array}, run.latency_ms

Builds are cached in $ONNXFORGE_CACHE/<arch>/ofrun-<hash> (the hash covers the
sources, the compiler and the TVM versions). Does not import tvm.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ...ir.errors import BuildError, DataError, OnnxforgeError
from .. import host
from .. import manifest as fmt
from .libs import OPENBLAS, cache_root, openblas_dir, runtime_for

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("ofrun.cc", "checks.h", "npy.h", "package.h", "inflate.h", "signature.h")
CROSS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
         "x86_64": ("x86_64-linux-gnu-g++", "g++-x86-64-linux-gnu")}
QEMU = {"aarch64": ("qemu-aarch64-static", "qemu-aarch64"), "x86_64": ("qemu-x86_64-static", "qemu-x86_64")}
SYSROOTS = {"aarch64": "/usr/aarch64-linux-gnu", "x86_64": "/usr/x86_64-linux-gnu"}  # Debian's cross libc
QEMU_APT = "qemu-user-static"


class DeviceError(OnnxforgeError):
    """A package cannot be run natively here (no emulator), or ofrun failed while running it."""


@dataclass
class NativeRun:
    outputs: dict[str, np.ndarray]  # by output name, in the manifest's order
    latency_ms: float | None  # median of `repeat` runs, measured inside ofrun (None when repeat == 1)
    seconds: float  # wall time of the whole ofrun process (emulator start, loading, runs)
    command: list[str]


def compiler_for(arch: str) -> str | None:
    """The C++ compiler that builds for `arch` here; None when it is not installed."""
    if arch == host.host_arch():
        return shutil.which(os.environ.get("CXX", "g++"))
    return shutil.which(CROSS[arch][0]) if arch in CROSS else None


def emulator_for(arch: str) -> list[str] | None:
    """The command prefix that runs an `arch` program here: [] natively, qemu-user
    (called directly: no binfmt_misc needed) otherwise; None when qemu is missing."""
    if arch == host.host_arch():
        return []
    qemu = next((found for name in QEMU.get(arch, ()) if (found := shutil.which(name))), None)
    if qemu is None:
        return None
    sysroot = SYSROOTS.get(arch)
    return [qemu, "-L", sysroot] if sysroot and os.path.isdir(sysroot) else [qemu]


def build_loader(arch: str | None = None, dest: str | os.PathLike | None = None) -> Path:
    """Build ofrun for `arch` (default: this machine) and return its folder: ofrun
    next to libtvm_runtime.so and libtvm_ffi.so (it finds them through its rpath,
    $ORIGIN) and OpenBLAS (preloaded for packages that need it), and src/ to
    rebuild it there; ready to copy to a device. With `dest`,
    the folder is copied there."""
    arch = arch or host.host_arch()
    cxx = compiler_for(arch)
    if cxx is None:
        hint = (f"apt-get install {CROSS[arch][1]}" if arch in CROSS and arch != host.host_arch()
                else "install g++ (or set CXX)")
        raise BuildError(f"no C++ compiler for {arch} to build ofrun: {hint}")
    runtime = runtime_for(arch)
    key = hashlib.sha256()
    for name in SOURCES:
        key.update((SOURCE_DIR / name).read_bytes())
    key.update(f"{arch} {os.path.basename(cxx)} {sorted(runtime.versions.items())} {BUILD_ARGS}".encode())
    folder = cache_root() / arch / f"ofrun-{key.hexdigest()[:12]}"
    if not (folder / "ofrun").is_file():
        _compile(cxx, runtime, folder)
    if dest is None:
        return folder
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, dest, dirs_exist_ok=True)
    return dest


# Run in the bundle's folder. --no-as-needed: nothing calls libtvm_runtime directly, but
# loading it registers the Relax VM. The rpath is $ORIGIN (old-style, so that it also
# serves libtvm_runtime's own lookups): the folder works wherever it is copied.
BUILD_ARGS = ("-std=c++17", "-O2", "-o", "ofrun", "src/ofrun.cc", "-I", "src/include", "-L", ".", "-Wl,--no-as-needed",
              "-ltvm_runtime", "-ltvm_ffi", "-ldl", "-Wl,--disable-new-dtags,-rpath,$ORIGIN")
BUILD_SH = f"""#!/bin/sh
# Rebuild ofrun on the device itself (a C++17 g++), e.g. where its glibc is older than the
# build machine's: ./src/build.sh   (or CXX=aarch64-linux-gnu-g++ ./src/build.sh to cross-build)
set -e
cd "$(dirname "$0")/.."
exec "${{CXX:-g++}}" {" ".join(a if "$" not in a else f"'{a}'" for a in BUILD_ARGS)}
"""


def _compile(cxx: str, runtime, folder: Path) -> None:
    """The bundle: ofrun, the two libraries, and src/ (sources, tvm_ffi headers,
    build.sh) to rebuild it on the device."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ofrun-", dir=folder.parent) as tmp:
        staging = Path(tmp) / "ofrun"
        (staging / "src").mkdir(parents=True)
        for lib in runtime.libs:
            shutil.copy2(lib, staging / lib.name)
        try:  # OpenBLAS, for packages built with cpu_kernels=blas (ofrun preloads it from its folder)
            shutil.copy2(openblas_dir(runtime.arch) / OPENBLAS, staging / OPENBLAS)
        except BuildError:
            pass  # such packages then need it on the device's library path; ofrun says so
        for name in SOURCES:
            shutil.copy2(SOURCE_DIR / name, staging / "src" / name)
        shutil.copytree(runtime.include, staging / "src" / "include")
        (staging / "src" / "build.sh").write_text(BUILD_SH)
        (staging / "src" / "build.sh").chmod(0o755)
        done = subprocess.run([cxx, *BUILD_ARGS], cwd=staging, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            raise BuildError(f"building ofrun for {runtime.arch} failed ({cxx}):\n  " + "\n  ".join(errors[:5]))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)  # complete or absent


def command_for(package: str | os.PathLike, args: Sequence[str] = (), loader: str | os.PathLike | None = None) -> list[str]:
    """The command that runs ofrun on `package` here (verifies the package first)."""
    manifest, _ = fmt.read_package(package)
    arch = (manifest.get("target") or {}).get("arch") or "?"
    prefix = emulator_for(arch)
    if prefix is None:
        names = " or ".join(QEMU.get(arch, (f"qemu-{arch}",)))
        raise DeviceError(f"{package} is an {arch} package and this machine is {host.host_arch()}: running it here "
                          f"needs qemu-user ({names}; Debian: apt-get install {QEMU_APT}), or copy it to an {arch} device")
    folder = Path(loader) if loader else build_loader(arch)
    return [*prefix, str(folder / "ofrun"), os.fspath(package), *args]


def native_env(cmd: Sequence[str]) -> dict[str, str]:
    """The environment for running `cmd` (from command_for)."""
    env = dict(os.environ)
    if "qemu" in Path(cmd[0]).name:
        # Under qemu-user OpenBLAS detects qemu's "max" CPU and picks kernels that compute wrong
        # sgemm results there (measured: off by 3.5 on a 4x32 Gemm); its NEON kernels are right.
        env.setdefault("OPENBLAS_CORETYPE", "NEOVERSEN1")
    return env


def run_native(package: str | os.PathLike, inputs: Mapping[str, np.ndarray], *, threads: int | None = None,
               repeat: int = 1, loader: str | os.PathLike | None = None, timeout: float = 600,
               extra_args: Sequence[str] = ()) -> NativeRun:
    """Run `package` once (or `repeat` times) with ofrun, under qemu-user when it was
    built for another architecture (`extra_args`: more ofrun options, e.g. --trust
    KEY.pub). Input and output errors raise what onnxforge.runtime raises (DataError,
    PackageError); other failures DeviceError."""
    with tempfile.TemporaryDirectory(prefix="ofrun-io-") as tmp:
        feeds, outs = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
        write_npz(feeds, inputs)
        args = ["--inputs", feeds, "-o", outs, "--repeat", str(repeat)] + (["--threads", str(threads)] if threads else [])
        args += list(extra_args)
        cmd = command_for(package, args, loader)
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=native_env(cmd))
        except subprocess.TimeoutExpired:
            raise DeviceError(f"ofrun did not finish {package} within {timeout:.0f} s") from None
        seconds = time.perf_counter() - t0
        message = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit code {done.returncode}"
        message = message.removeprefix("ofrun: error: ")
        if done.returncode == 2:
            raise DataError(message)
        if done.returncode == 3:
            raise fmt.PackageError(message)
        if done.returncode != 0:
            raise DeviceError(f"ofrun failed on {package}: {message}")
        with np.load(outs, allow_pickle=False) as npz:
            outputs = {name: npz[name] for name in npz.files}
    match = re.search(r"latency: median ([0-9.]+) ms", done.stdout)
    return NativeRun(outputs, float(match.group(1)) if match and repeat > 1 else None, seconds, cmd)


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz ofrun reads (stored, like numpy.savez), for any input name: numpy.savez
    would take an input called `file` or `allow_pickle` as its own argument."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.require(array, requirements="C"), allow_pickle=False)  # 0-d stays 0-d
