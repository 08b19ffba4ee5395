"""Latency measurement and the machine's fp32 peak.

Variants are timed round-robin (one call of each per round) rather than one after
the other, so slow drifts of a shared machine (frequency, a neighbour's load) hit
every variant alike and the ratios against the baseline stay honest."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Callable, Mapping

import numpy as np


@dataclasses.dataclass
class Timing:
    median: float  # seconds
    p25: float
    p75: float
    min: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> "Timing":
        a = np.asarray(samples)
        return cls(float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75)), float(a.min()), len(a))


def measure(runners: Mapping[str, Callable[[], object]], warmup: int = 3, min_runs: int = 20,
            max_seconds: float = 10.0, on_error: Callable[[str, BaseException], None] | None = None,
            ) -> dict[str, Timing]:
    """Median latency of each runner. A runner leaves the rotation once it has
    `min_runs` runs, or has spent `max_seconds` with at least 3 runs (the BENCHMARKS.md
    rule: at least 20 runs or 10 s). A runner that raises is reported to `on_error`
    and dropped; the others go on."""
    active = dict(runners)
    for name, run in list(active.items()):
        try:
            for _ in range(warmup):
                run()
        except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the others
            del active[name]
            if on_error:
                on_error(name, exc)
    times: dict[str, list[float]] = {name: [] for name in active}
    while active:
        for name, run in list(active.items()):
            t0 = time.perf_counter()
            try:
                run()
            except Exception as exc:  # noqa: BLE001
                del active[name], times[name]
                if on_error:
                    on_error(name, exc)
                continue
            times[name].append(time.perf_counter() - t0)
            n = len(times[name])
            if n >= min_runs or (n >= 3 and sum(times[name]) >= max_seconds):
                del active[name]
    return {name: Timing.of(t) for name, t in times.items()}


def sgemm_peak(threads: int, n: int = 2048, repeat: int = 10) -> dict[str, float]:
    """fp32 GFLOP/s of an n x n x n matrix multiply through numpy's BLAS, limited to
    `threads` threads: the practical ceiling for every engine on this machine."""
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b  # warm-up: thread pool start, page faults
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    best = min(times)
    blas = next((f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info() if i.get("user_api") == "blas"), "?")
    return {"gflops": 2 * n**3 / best / 1e9, "median_gflops": 2 * n**3 / float(np.median(times)) / 1e9,
            "n": n, "threads": threads, "blas": blas}


LOADS = ("nice", "plain")


class BackgroundLoad:
    """One CPU-bound process (a Python busy loop) running while the block runs: the
    "one other busy process on the machine" condition; `nice` at priority 19, as a
    background job would be. Stopped (killed and reaped) on exit, also on errors."""

    def __init__(self, kind: str):
        if kind not in LOADS:
            raise ValueError(f"background load must be one of {', '.join(LOADS)}, got {kind!r}")
        self.kind = kind
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "BackgroundLoad":
        renice = (lambda: os.nice(19)) if self.kind == "nice" else None
        self._proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=renice,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # scheduled and spinning before the first timed run
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
