"""The pass manager: runs a pipeline over a copy of the model, pass by pass, with
instruments; the caller's model is never modified."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable

from ..ir import Model, OnnxforgeError, PassError, verify
from ..ir.gc_pause import gc_paused
from .analysis import invalidate
from .base import Effect, Pass, PassResult
from .calibration import Calibration, use_calibration
from .check import Diff
from .instruments import Instrument, VerifyAfterEachPass
from .pipeline import PRESETS, PassSpec, Pipeline, Preset, Repeat, parse_pipeline, resolve_pipeline
from .registry import get_pass, make_options


@dataclasses.dataclass
class PassRecord:
    name: str
    spec: str
    changed: bool
    seconds: float
    stats: dict[str, Any]
    diff: Diff | None = None


@dataclasses.dataclass
class OptimizeResult:
    model: Model
    pipeline: Pipeline
    records: list[PassRecord]
    seconds: float

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def warnings(self) -> list[str]:
        """What a user should know: a lossy pass that changed nothing, and nodes a
        pass skipped because their shapes are unknown."""
        out = []
        for r in self.records:
            skipped = r.stats.get("skipped")
            unknown = sum(n for why, n in skipped.items() if "shape" in why) if isinstance(skipped, dict) else 0
            if unknown:
                out.append(f"{r.spec}: skipped {unknown} node(s) whose shapes are unknown; pin the input shapes "
                           "(--input-shape) or give calibration data (--calib)")
            if not r.changed and get_pass(r.name).effect is Effect.LOSSY:
                stats = ", ".join(f"{k}={v}" for k, v in r.stats.items()) or "no statistics"
                out.append(f"{r.spec}: a lossy pass that changed nothing ({stats})")
        return out

    def __str__(self) -> str:
        lines = [f"pipeline {self.pipeline}: {self.seconds * 1000:.1f} ms"]
        for r in self.records:
            stats = ", ".join(f"{k}={v}" for k, v in r.stats.items())
            lines.append(f"  {r.spec:<40} {'changed' if r.changed else 'no change':<10} {r.seconds * 1000:8.1f} ms  {stats}")
        return "\n".join(lines)


class PassManager:
    def __init__(self, pipeline: "str | Pipeline", instruments: Iterable[Instrument] = (), verify_each: bool = True,
                 calibration: Any = None):
        """calibration: what passes that learn from data read through
        passes.calibration.current_calibration() (a Calibration, an iterable of
        input dicts, or a folder; see passes/calibration.py)."""
        self.calibration = calibration
        self.pipeline = resolve_pipeline(pipeline)
        self.pipeline.validate()
        self.instruments = list(instruments)
        if verify_each and not any(isinstance(i, VerifyAfterEachPass) for i in self.instruments):
            self.instruments.insert(0, VerifyAfterEachPass())

    def run(self, model: Model) -> OptimizeResult:
        start = time.perf_counter()
        with gc_paused():  # see ir/gc_pause.py
            return self._run(model, start)

    def _run(self, model: Model, start: float) -> OptimizeResult:
        work = model.clone()
        for inst in self.instruments:
            inst.before_pipeline(work)
        records: list[PassRecord] = []
        calibration = None if self.calibration is None else Calibration.from_source(self.calibration, model=work)
        with use_calibration(calibration):
            self._run_items(self.pipeline.items, work, records)
        return OptimizeResult(work, self.pipeline, records, time.perf_counter() - start)

    def _run_items(self, items, model: Model, records: list[PassRecord]) -> bool:
        changed = False
        for item in items:
            if isinstance(item, PassSpec):
                changed |= self._run_pass(item, model, records)
            elif isinstance(item, Preset):
                changed |= self._run_items(parse_pipeline(PRESETS[item.name]).items, model, records)
            elif isinstance(item, Repeat):
                for _ in range(item.max):
                    if not self._run_items(item.body, model, records):
                        break
                    changed = True
        return changed

    def _run_pass(self, spec: PassSpec, model: Model, records: list[PassRecord]) -> bool:
        cls = get_pass(spec.name)
        pass_ = cls(make_options(cls, dict(spec.options)))
        snapshot = model.clone() if self._wants_snapshot() else None
        for inst in self.instruments:
            inst.before_pass(pass_, model)
        start = time.perf_counter()
        try:
            result = pass_.run(model)
            if not isinstance(result, PassResult):
                raise PassError(spec.name, f"run() returned {type(result).__name__}, not PassResult")
            seconds = time.perf_counter() - start
            record = PassRecord(spec.name, str(spec), result.changed, seconds, dict(result.stats))
            if result.changed:
                invalidate(model, cls.preserves)
            for inst in self.instruments:
                inst.after_pass(pass_, model, result, record)
        except Exception as exc:
            error = exc if isinstance(exc, OnnxforgeError) else PassError(spec.name, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, OnnxforgeError) and not isinstance(exc, PassError):
                error = PassError(spec.name, str(exc))
            for inst in self.instruments:
                inst.on_failure(pass_, snapshot if snapshot is not None else model, error, str(spec), str(self.pipeline))
            raise error from exc
        records.append(record)
        return result.changed

    def _wants_snapshot(self) -> bool:
        return any(type(i).on_failure is not Instrument.on_failure for i in self.instruments)


def run_pass(model: Model, pass_: Pass) -> PassResult:
    """Run one pass instance in place (no copy) and verify; for tests and scripts."""
    result = pass_.run(model)
    if result.changed:
        invalidate(model, type(pass_).preserves)
        verify(model)
    return result
