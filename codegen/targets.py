"""Named targets: `x86` (this machine's features), `x86-avx2`, `x86-avx512`, `arm64`
(aarch64 Linux, linked with Debian's cross g++), `cuda-sm80` / `cuda{arch=sm_90}`.

A name resolves to a TVM target dict (TVM 0.27 takes dicts only), the machine the
code runs on, the CPU features it needs there, and the linker for the library.
Options go in braces, as in pipeline text: `x86{num-cores=8}`,
`arm64{mcpu=cortex-a55}`, `cuda{arch=sm_87 host=arm64}`. Does not import tvm.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
from typing import Any, Callable

from ..ir.errors import BuildError, OnnxforgeError
from . import host


class TargetError(OnnxforgeError):
    """An unknown target name, a bad target option, or a target this machine cannot detect."""

    exit_code = 2


# /proc/cpuinfo names of what LLVM may use for each x86 level.
AVX2_FEATURES = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "popcnt")
AVX512_FEATURES = AVX2_FEATURES + ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
AARCH64_CROSS = "aarch64-linux-gnu-g++"
AARCH64_CROSS_DEBIAN = "g++-aarch64-linux-gnu"
_TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


@dataclasses.dataclass(frozen=True)
class ResolvedTarget:
    name: str  # canonical: "x86", "x86-avx2", "arm64", "cuda-sm90", ...
    spec: str  # what the user wrote
    tvm: dict[str, Any]  # the TVM target dict
    arch: str  # machine the code runs on: "x86_64" | "aarch64"
    device: str  # "cpu" | "cuda"
    cpu_features: tuple[str, ...] = ()  # /proc/cpuinfo flags the code needs
    linker: str | None = None  # cross linker for export_library; None: the host's default

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "tvm": self.tvm, "arch": self.arch, "device": self.device,
                "cpu_features": list(self.cpu_features), "linker": self.linker}

    def cuda_arch(self) -> str | None:
        return self.tvm.get("arch") if self.device == "cuda" else None

    def check_linker(self) -> str | None:
        """The cross linker's path; a BuildError naming the Debian package if it is missing."""
        if self.linker is None:
            return None
        found = shutil.which(self.linker)
        if not found:
            raise BuildError(f"target {self.name}: the cross compiler {self.linker} is not installed; on Debian/Ubuntu: "
                             f"apt-get install {AARCH64_CROSS_DEBIAN}")
        return found


@dataclasses.dataclass(frozen=True)
class NamedTarget:
    name: str
    description: str
    options: dict[str, str]  # option -> what it means (default)
    resolve: Callable[[str, dict[str, str]], ResolvedTarget]


def _int_option(target: str, opts: dict[str, str], key: str) -> int | None:
    if key not in opts:
        return None
    try:
        value = int(opts[key])
    except ValueError:
        raise TargetError(f"target {target}: option {key} must be an integer, got {opts[key]!r}") from None
    if value < 1:
        raise TargetError(f"target {target}: option {key} must be at least 1, got {value}")
    return value


def _x86_dict(mcpu: str, num_cores: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "llvm", "mtriple": _TRIPLES["x86_64"], "mcpu": mcpu}
    if num_cores:
        out["num-cores"] = num_cores
    return out


def _x86_avx2(spec: str, opts: dict[str, str]) -> ResolvedTarget:
    return ResolvedTarget("x86-avx2", spec, _x86_dict("core-avx2", _int_option(spec, opts, "num-cores")), "x86_64",
                          "cpu", AVX2_FEATURES)


def _x86_avx512(spec: str, opts: dict[str, str]) -> ResolvedTarget:
    return ResolvedTarget("x86-avx512", spec, _x86_dict("skylake-avx512", _int_option(spec, opts, "num-cores")),
                          "x86_64", "cpu", AVX512_FEATURES)


def _x86_host(spec: str, opts: dict[str, str]) -> ResolvedTarget:
    if host.host_arch() != "x86_64":
        raise TargetError(f"target x86 detects this machine's features, but this machine is {host.host_arch()}; "
                          "name the level instead: x86-avx2 or x86-avx512")
    flags = host.cpu_flags()
    cores = _int_option(spec, opts, "num-cores") or host.cpu_count()
    if all(f in flags for f in AVX512_FEATURES):
        if "avx512_vnni" in flags:
            return ResolvedTarget("x86", spec, _x86_dict("cascadelake", cores), "x86_64", "cpu",
                                  AVX512_FEATURES + ("avx512_vnni",))
        return ResolvedTarget("x86", spec, _x86_dict("skylake-avx512", cores), "x86_64", "cpu", AVX512_FEATURES)
    if all(f in flags for f in AVX2_FEATURES):
        return ResolvedTarget("x86", spec, _x86_dict("core-avx2", cores), "x86_64", "cpu", AVX2_FEATURES)
    return ResolvedTarget("x86", spec, _x86_dict("x86-64", cores), "x86_64", "cpu", ())


def _arm64(spec: str, opts: dict[str, str]) -> ResolvedTarget:
    mattr = [a for a in opts.get("mattr", "+neon").split(",") if a]
    tvm: dict[str, Any] = {"kind": "llvm", "mtriple": _TRIPLES["aarch64"], "mcpu": opts.get("mcpu", "cortex-a72"),
                           "mattr": mattr}
    cores = _int_option(spec, opts, "num-cores")
    if cores:
        tvm["num-cores"] = cores
    linker = None if host.host_arch() == "aarch64" else AARCH64_CROSS
    return ResolvedTarget("arm64", spec, tvm, "aarch64", "cpu", (), linker)


def _cuda(spec: str, opts: dict[str, str]) -> ResolvedTarget:
    arch = opts.get("arch")
    if arch is None:
        arch = host.cuda_arch()
        if arch is None:
            raise TargetError("target cuda needs an sm arch and no NVIDIA GPU was found here to detect it: "
                              "use cuda-sm80, cuda-sm90 or cuda{arch=sm_90}")
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise TargetError(f"target cuda: arch must look like sm_80 or sm_90a, got {arch!r}")
    host_name = opts.get("host", "x86")
    if host_name not in ("x86", "arm64"):
        raise TargetError(f"target cuda: host must be x86 or arm64, got {host_name!r}")
    host_arch = "x86_64" if host_name == "x86" else "aarch64"
    tvm = {"kind": "cuda", "arch": arch, "host": {"kind": "llvm", "mtriple": _TRIPLES[host_arch]}}
    linker = AARCH64_CROSS if host_arch == "aarch64" and host.host_arch() != "aarch64" else None
    return ResolvedTarget(f"cuda-{arch.replace('_', '')}", spec, tvm, host_arch, "cuda", (), linker)


TARGETS: dict[str, NamedTarget] = {t.name: t for t in (
    NamedTarget("x86", "this machine's x86-64 CPU: AVX-512 (with VNNI), AVX2 or baseline, as detected; all its cores",
                {"num-cores": "threads TVM plans for (this machine's)"}, _x86_host),
    NamedTarget("x86-avx2", "any x86-64 CPU with AVX2 and FMA (Haswell, Zen and later)",
                {"num-cores": "threads TVM plans for (unset)"}, _x86_avx2),
    NamedTarget("x86-avx512", "x86-64 CPUs with AVX-512 F/CD/BW/DQ/VL (Skylake-SP, Ice Lake, Zen 4 and later)",
                {"num-cores": "threads TVM plans for (unset)"}, _x86_avx512),
    NamedTarget("arm64", f"aarch64 Linux (NEON), linked with {AARCH64_CROSS} ({AARCH64_CROSS_DEBIAN})",
                {"mcpu": "LLVM CPU name (cortex-a72)", "mattr": "comma-separated LLVM features (+neon)",
                 "num-cores": "threads TVM plans for (unset)"}, _arm64),
    NamedTarget("cuda", "NVIDIA GPU, CUDA code for one sm arch, dlight GPU schedules; `cuda-sm80` = cuda{arch=sm_80}",
                {"arch": "sm_80, sm_90, ... (this machine's GPU)", "host": "CPU side: x86 or arm64 (x86)"}, _cuda),
)}

_SPEC = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*(?:\{(.*)\})?\s*$", re.S)
_CUDA_ALIAS = re.compile(r"^cuda-(sm_?\d{2,3}[a-z]?)$")


def parse_target(spec: str) -> tuple[str, dict[str, str]]:
    """'cuda{arch=sm_90 host=x86}' -> ('cuda', {'arch': 'sm_90', 'host': 'x86'}); 'cuda-sm80' too."""
    m = _SPEC.match(spec or "")
    if not m:
        raise TargetError(f"cannot parse target {spec!r}: expected NAME or NAME{{key=value ...}}")
    name, body = m.group(1), m.group(2)
    opts: dict[str, str] = {}
    for item in (body or "").split():  # space-separated, as in pipeline text; values may hold commas
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise TargetError(f"target {spec!r}: option {item!r} is not key=value")
        opts[key] = value
    alias = _CUDA_ALIAS.match(name)
    if alias:
        arch = alias.group(1)
        opts.setdefault("arch", arch if "_" in arch else "sm_" + arch[2:])
        name = "cuda"
    return name, opts


def resolve_target(spec: str) -> ResolvedTarget:
    name, opts = parse_target(spec)
    target = TARGETS.get(name)
    if target is None:
        close = difflib.get_close_matches(name, list(TARGETS), n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TargetError(f"unknown target {name!r}; {hint}known: {', '.join(TARGETS)} (cuda-sm80 = cuda{{arch=sm_80}}); "
                          "`onnxforge targets` lists them")
    unknown = [k for k in opts if k not in target.options]
    if unknown:
        raise TargetError(f"target {name}: unknown option {', '.join(unknown)}; it takes "
                          f"{', '.join(target.options) or 'no options'}")
    return target.resolve(spec.strip(), opts)
