"""What this machine is: architecture, x86 CPU feature flags, cores, NVIDIA GPU.
Standard library only: named targets use it to detect the host, the runtime
loader to refuse packages built for something else."""
from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess

_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    """'x86_64', 'aarch64', or the raw machine name for anything else."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (/proc/cpuinfo 'flags'); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def allowed_cpus() -> set[int]:
    """The cores this process may run on: its main thread's affinity mask (a thread
    that a thread pool pinned to one core would report only that core)."""
    try:
        return os.sched_getaffinity(os.getpid())
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    return len(allowed_cpus())


@functools.lru_cache(maxsize=1)
def cuda_arch() -> str | None:
    """'sm_90' for the first NVIDIA GPU (via nvidia-smi), None without one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0].strip() if out.strip() else ""
    major, _, minor = first.partition(".")
    return f"sm_{major}{minor}" if major.isdigit() and minor.isdigit() else None
