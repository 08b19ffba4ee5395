"""Codegen: lowering to TVM Relax (with our own converter table), named targets,
building, packaging for devices, and the runtime loader.

Importing this package does not import tvm: `compile` imports it when called,
and the runtime loader (codegen.runtime) imports only what running needs.
"""
from __future__ import annotations

from .manifest import PackageError, TargetMismatchError, TensorSpec
from .registry import get_lowering, register_lowering, registered_lowerings, unregister_lowering
from .targets import TARGETS, ResolvedTarget, TargetError, resolve_target


def compile(model, target: str = "x86", pipeline="-O1", *, output=None, input_shapes=None):
    """Optimize `model` (a Model or an ONNX path) with `pipeline`, lower it to TVM
    Relax, build it for the named `target` (`onnxforge targets` lists them) and
    write one package file to `output` (a temporary folder when None). Returns a
    Package: call it like a function, or ship `package.path`. `input_shapes` pins
    symbolic input dims, e.g. {"x": (1, 3, 48, 320)}."""
    from .compiler import compile as _compile

    return _compile(model, target, pipeline, output=output, input_shapes=input_shapes)


__all__ = [
    "compile", "register_lowering", "unregister_lowering", "get_lowering", "registered_lowerings", "TARGETS",
    "resolve_target", "ResolvedTarget", "TargetError", "PackageError", "TargetMismatchError", "TensorSpec",
]
