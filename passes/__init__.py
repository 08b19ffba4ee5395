"""Passes: base class, registry, pipeline text, pass manager, instruments,
analyses, and the built-in passes."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from ..ir import Model
from . import builtin  # noqa: F401  (registers the built-in passes)
from .base import Effect, Pass, PassResult
from .calibration import Calibration, collect, current_calibration
from .graphsurgeon import GraphSurgeonPass, from_graphsurgeon, graphsurgeon_pass, to_graphsurgeon
from .instruments import Instrument, NumericCheck, PrintAfterChange, Reproducer, VerifyAfterEachPass
from .manager import OptimizeResult, PassManager, PassRecord, run_pass
from .pipeline import PRESETS, Pipeline, load_pipeline_file, parse_pipeline
from .registry import get_pass, register_pass, registered_passes
from .rewrite import Builder, RewritePass, Rule, RuleSet, rewrite_pass, rule


def optimize(
    model: Model,
    pipeline: "str | Pipeline" = "-O1",
    *,
    check: bool = False,
    inputs: Mapping[str, np.ndarray] | None = None,
    instruments: Iterable[Instrument] = (),
    reproducer_dir: str | None = None,
    calibration: Any = None,
) -> OptimizeResult:
    """Run `pipeline` over a copy of `model`; the result holds the new model and,
    per pass, whether it changed anything, how long it took, and its statistics.
    check=True compares outputs in onnxruntime after every changing pass.
    calibration: sample inputs for passes that learn from data (quantize-static,
    quantize-weights{method=gptq}, ...): a Calibration, an iterable of input dicts,
    or a folder of .npz/.npy files (see onnxforge.passes.calibration)."""
    extra = list(instruments)
    if check:
        extra.append(NumericCheck(inputs))
    if reproducer_dir:
        extra.append(Reproducer(reproducer_dir))
    return PassManager(pipeline, extra, calibration=calibration).run(model)


__all__ = [
    "Pass", "PassResult", "Effect", "register_pass", "get_pass", "registered_passes", "Pipeline", "parse_pipeline",
    "load_pipeline_file", "PRESETS", "PassManager", "OptimizeResult", "PassRecord", "run_pass", "optimize",
    "Instrument", "NumericCheck", "PrintAfterChange", "Reproducer", "VerifyAfterEachPass",
    "Rule", "RuleSet", "rule", "RewritePass", "rewrite_pass", "Builder",
    "Calibration", "collect", "current_calibration",
    "GraphSurgeonPass", "graphsurgeon_pass", "to_graphsurgeon", "from_graphsurgeon",
]
