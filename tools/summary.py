"""Model summaries for the CLI: op histograms, sizes, FLOPs, diffs between two models."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..ir import Model
from ..passes.analysis import get_analysis, op_histogram, param_stats


@dataclasses.dataclass
class Summary:
    ops: dict[str, int]
    nodes: int
    params: int
    param_bytes: int
    flops: int | None = None
    flops_unknown_nodes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(model: Model, flops: bool = False) -> Summary:
    ops = op_histogram(model)
    stats = param_stats(model)
    summary = Summary(dict(sorted(ops.items())), sum(ops.values()), stats["params"], stats["bytes"])
    if flops:
        info = get_analysis(model.clone(), "flops")  # shape inference must not touch the caller's model
        summary.flops, summary.flops_unknown_nodes = info["total"], info["unknown_nodes"]
    return summary


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"
