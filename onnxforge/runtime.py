"""Run compiled packages: `onnxforge.runtime.load("model.ofpkg")(x=array)`.
Needs numpy and TVM's runtime only (see codegen/runtime.py)."""
from __future__ import annotations

from .codegen.runtime import CompiledModel, check_target, load  # noqa: F401

__all__ = ["load", "CompiledModel", "check_target"]
