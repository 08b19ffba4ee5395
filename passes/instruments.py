"""Pass-manager instruments: hooks that run around every pass."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Mapping, TextIO

import numpy as np

from ..ir import Model, NumericMismatchError, format_model, save, verify
from .base import Effect, Pass, PassResult
from .check import compare_outputs, run_ort, sample_inputs

if TYPE_CHECKING:
    from .manager import PassRecord


class Instrument:
    def before_pipeline(self, model: Model) -> None: ...
    def before_pass(self, pass_: Pass, model: Model) -> None: ...
    def after_pass(self, pass_: Pass, model: Model, result: PassResult, record: "PassRecord") -> None: ...
    def on_failure(self, pass_: Pass, model_before: Model, error: Exception, spec_text: str, pipeline_text: str) -> None: ...


class VerifyAfterEachPass(Instrument):
    """Structural verify; a pass that breaks the IR fails right there."""

    def after_pass(self, pass_, model, result, record) -> None:
        if result.changed:
            verify(model)


class NumericCheck(Instrument):
    """Runs onnxruntime before the pipeline and after each changing pass on the same
    inputs. Exact/tolerance passes must stay within the pass's atol/rtol of the
    previous outputs, or the pipeline fails naming the pass; lossy passes only
    record their error."""

    def __init__(self, inputs: Mapping[str, np.ndarray] | None = None, seed: int = 0):
        self.inputs = dict(inputs) if inputs is not None else None
        self.seed = seed
        self.reference: dict[str, np.ndarray] | None = None

    def before_pipeline(self, model: Model) -> None:
        if self.inputs is None:
            self.inputs = sample_inputs(model, self.seed)
        self.reference = run_ort(model, self.inputs)

    def after_pass(self, pass_, model, result, record) -> None:
        if not result.changed:
            return
        outputs = run_ort(model, self.inputs)
        diff = compare_outputs(self.reference, outputs, pass_.atol, pass_.rtol)
        record.diff = diff
        if not diff.ok and pass_.effect is not Effect.LOSSY:
            raise NumericMismatchError(
                f"pass {pass_.name!r} ({pass_.effect.value}) changed the outputs beyond atol={pass_.atol} "
                f"rtol={pass_.rtol}: {diff}"
            )
        self.reference = outputs


class PrintAfterChange(Instrument):
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def after_pass(self, pass_, model, result, record) -> None:
        if result.changed:
            print(f"// ----- after {record.spec} -----", file=self.stream)
            print(format_model(model), file=self.stream)


class Reproducer(Instrument):
    """On failure, writes the model as it was before the failing pass and the
    pass text that failed on it, so `onnxforge optimize` can replay just that."""

    def __init__(self, directory: str):
        self.directory = directory
        self.written: list[str] = []

    def on_failure(self, pass_, model_before, error, spec_text, pipeline_text) -> None:
        os.makedirs(self.directory, exist_ok=True)
        model_path = os.path.join(self.directory, "input.onnx")
        text_path = os.path.join(self.directory, "pipeline.txt")
        save(model_before, model_path)
        with open(text_path, "w") as f:
            f.write(spec_text + "\n")
            f.write(f"# failed: {error}\n# whole pipeline: {pipeline_text}\n")
            f.write(f"# replay: onnxforge optimize {model_path} -o out.onnx --pipeline '{spec_text}'\n")
        self.written = [model_path, text_path]
