"""TVM's C++ runtime for a machine: libtvm_runtime.so, libtvm_ffi.so and the
tvm_ffi headers that ofrun is built against.

For this machine's own architecture they come from the installed apache-tvm and
apache-tvm-ffi packages. For another one (aarch64 on an x86 build machine) they
come from the manylinux wheels that both projects publish on PyPI, fetched once
with `pip download` and unpacked into $ONNXFORGE_CACHE/<arch>/ (default
~/.cache/onnxforge): about 97 MB to download, 6 MB kept. The versions are the
installed ones, so the runtime matches the compiler that built the package.
Does not import tvm.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...ir.errors import BuildError
from .. import host

LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
# Used only when the packages' metadata cannot be read (both pinned in pyproject.toml).
DEFAULT_VERSIONS = {"apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post1"}
_WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
_ELF_MACHINES = {"aarch64": 183, "x86_64": 62}


@dataclass(frozen=True)
class Runtime:
    arch: str
    include: Path  # holds tvm/ffi/*.h and dlpack/dlpack.h
    libs: tuple[Path, ...]  # libtvm_runtime.so, libtvm_ffi.so
    versions: dict[str, str]


def cache_root() -> Path:
    return Path(os.environ.get("ONNXFORGE_CACHE", "~/.cache/onnxforge")).expanduser()


def versions() -> dict[str, str]:
    out = {}
    for name, default in DEFAULT_VERSIONS.items():
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = default
    return out


def runtime_for(arch: str) -> Runtime:
    """The runtime for `arch` ('aarch64' or 'x86_64'): installed, or fetched from PyPI."""
    if arch not in _WHEEL_PLATFORMS:
        raise BuildError(f"no TVM runtime wheels for {arch!r}; ofrun is built for: {', '.join(_WHEEL_PLATFORMS)}")
    return _installed(arch) if arch == host.host_arch() else _fetched(arch)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # its folder, without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the {module} package is not installed: pip install apache-tvm apache-tvm-ffi")
    return Path(list(spec.submodule_search_locations)[0])


def _installed(arch: str) -> Runtime:
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
    libs = (tvm_dir / "lib" / LIBS[0], ffi_dir / "lib" / LIBS[1])
    for lib in libs:
        if not lib.is_file():
            raise BuildError(f"{lib} is missing: reinstall apache-tvm and apache-tvm-ffi")
    return Runtime(arch, ffi_dir / "include", libs, versions())


def _fetched(arch: str) -> Runtime:
    vers = versions()
    folder = cache_root() / arch / f"tvm-{vers['apache-tvm']}-ffi-{vers['apache-tvm-ffi']}"
    if not (folder / "include" / "tvm" / "ffi" / "tvm_ffi.h").is_file() or not all((folder / "lib" / n).is_file() for n in LIBS):
        # The tvm wheel is py3-none; the ffi wheel is per Python version, but we use only its
        # C++ library and headers, which are the same in every one of them.
        _download_and_unpack(arch, [f"apache-tvm=={vers['apache-tvm']}", f"apache-tvm-ffi=={vers['apache-tvm-ffi']}"],
                             _runtime_destination, folder, [f"lib/{n}" for n in LIBS])
    return Runtime(arch, folder / "include", tuple(folder / "lib" / n for n in LIBS), vers)


OPENBLAS = "libscipy_openblas.so"
OPENBLAS_PACKAGE = "scipy-openblas32"


def openblas_dir(arch: str) -> Path:
    """The folder holding OpenBLAS (libscipy_openblas.so from the scipy-openblas32
    wheel) for `arch`: $ONNXFORGE_OPENBLAS_DIR, else the installed package for this
    machine, else the manylinux wheel for `arch` fetched once from PyPI (about 9 MB)
    into $ONNXFORGE_CACHE/<arch>/openblas-<version>. BuildError when unavailable."""
    override = os.environ.get("ONNXFORGE_OPENBLAS_DIR")
    if override:
        if not (Path(override) / OPENBLAS).is_file():
            raise BuildError(f"ONNXFORGE_OPENBLAS_DIR={override} holds no {OPENBLAS}")
        return Path(override)
    if arch not in _WHEEL_PLATFORMS:
        raise BuildError(f"no OpenBLAS wheel for {arch!r}; OpenBLAS is fetched for: {', '.join(_WHEEL_PLATFORMS)}")
    if arch == host.host_arch():
        spec = importlib.util.find_spec("scipy_openblas32")
        if spec is None or not spec.submodule_search_locations:
            raise BuildError(f"cpu_kernels='blas' needs OpenBLAS: pip install {OPENBLAS_PACKAGE} "
                             f"(or set ONNXFORGE_OPENBLAS_DIR to a folder holding {OPENBLAS})")
        return Path(list(spec.submodule_search_locations)[0]) / "lib"
    try:
        version = importlib.metadata.version(OPENBLAS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    folder = cache_root() / arch / f"openblas-{version or 'latest'}"
    if not (folder / "lib" / OPENBLAS).is_file():
        requirement = f"{OPENBLAS_PACKAGE}=={version}" if version else OPENBLAS_PACKAGE
        _download_and_unpack(arch, [requirement], _openblas_destination, folder, [f"lib/{OPENBLAS}"])
    return folder / "lib"


def _download_and_unpack(arch: str, requirements: list[str], destination, folder: Path, libs: list[str]) -> None:
    """pip-download `requirements` for `arch`, keep the wheel members `destination`
    maps to a path, check that `libs` are `arch` ELF files, and move the result to
    `folder` (complete or absent: never half unpacked)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=folder.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
               _WHEEL_PLATFORMS[arch], "--python-version", f"{sys.version_info[0]}{sys.version_info[1]}", "-d", tmp,
               *requirements]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n  ".join(done.stderr.strip().splitlines()[-3:])
            raise BuildError(f"could not download {' and '.join(requirements)} for {arch} from PyPI "
                             f"(`{' '.join(cmd[2:])}`):\n  {tail}")
        staging = Path(tmp) / "unpacked"
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    dest = destination(name)
                    if dest:
                        (staging / dest).parent.mkdir(parents=True, exist_ok=True)
                        (staging / dest).write_bytes(zf.read(name))
        for lib in libs:
            _check_elf(staging / lib, arch)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)


def _runtime_destination(member: str) -> str | None:
    """Where a TVM wheel member goes in the runtime folder; None: not needed."""
    if member in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
        return "lib/" + member.rsplit("/", 1)[1]
    if member.startswith("tvm_ffi/include/") and not member.endswith("/") and ".." not in member.split("/"):
        return "include/" + member[len("tvm_ffi/include/"):]
    return None


def _openblas_destination(member: str) -> str | None:
    return f"lib/{OPENBLAS}" if member == f"scipy_openblas32/lib/{OPENBLAS}" else None


def _check_elf(path: Path, arch: str) -> None:
    if not path.is_file():
        raise BuildError(f"the downloaded wheels have no {path.name}")
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != _ELF_MACHINES[arch]:
        raise BuildError(f"{path.name} from the downloaded wheels is not an {arch} library")
