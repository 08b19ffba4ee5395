"""One error hierarchy for everything a user can trigger.

Every message says what failed and where; the CLI maps each class to an exit code.
"""
from __future__ import annotations


class OnnxforgeError(Exception):
    """Base of every error onnxforge raises on purpose."""

    exit_code = 1

    def one_line(self) -> str:
        """The message on one line (what the CLI prints)."""
        return " ".join(part.strip() for part in str(self).splitlines() if part.strip())


class ModelLoadError(OnnxforgeError):
    """The file is not a model we can read: truncated, corrupt, or inconsistent."""

    exit_code = 3


class ExternalDataError(ModelLoadError):
    """An external-data reference is unsafe (outside the model folder) or inconsistent."""


class VerifierError(OnnxforgeError):
    """The IR breaks a structural invariant (SSA, use-def links, order, outputs)."""

    exit_code = 4


class PipelineError(OnnxforgeError):
    """A pipeline cannot be built: unknown pass, bad option, bad file."""

    exit_code = 2


class PipelineSyntaxError(PipelineError):
    """Pipeline text that does not parse; carries the 1-based column."""

    def __init__(self, message: str, text: str, column: int):
        self.text = text
        self.column = column
        self.message = message
        pointer = " " * (column - 1) + "^"
        super().__init__(f"{message} at column {column}\n  {text}\n  {pointer}")

    def one_line(self) -> str:
        start = max(0, self.column - 41)
        excerpt = self.text[start:self.column + 40]
        return (f"{self.message} at column {self.column}: {'...' if start else ''}{excerpt}"
                f"{'...' if self.column + 40 < len(self.text) else ''}")


class UnknownPassError(PipelineError):
    """A pass name that is not registered; the message lists close names."""


class PassOptionError(PipelineError):
    """An option a pass does not have, or a value of the wrong type."""


class PassError(OnnxforgeError):
    """A pass failed while running; names the pass (and the node when known)."""

    exit_code = 4

    def __init__(self, pass_name: str, message: str, node: str | None = None):
        self.pass_name = pass_name
        self.node = node
        where = f" at node {node!r}" if node else ""
        super().__init__(f"pass {pass_name!r} failed{where}: {message}")


class DataError(OnnxforgeError):
    """Sample, benchmark or calibration data that cannot be used: a missing folder,
    an unreadable .npz, an input the model does not have or a wrong shape/dtype."""

    exit_code = 2


class NumericMismatchError(OnnxforgeError):
    """Outputs differ beyond the tolerance a pass declared."""

    exit_code = 5


class LoweringError(OnnxforgeError):
    """Codegen could not lower a node (names the node and op)."""

    exit_code = 6


class BuildError(OnnxforgeError):
    """Tuning or building a compiled module failed."""

    exit_code = 6
