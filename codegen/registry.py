"""The table of our own lowerings: ONNX ops that tvm.relax.frontend.onnx lacks or
lowers badly, and users' custom ops. Registered the way passes are, by decorator
or through the `onnxforge.lowerings` entry-point group.

A lowering is `fn(bb, node, inputs) -> relax expression (or a sequence of them,
one per node output)`: `bb` is the relax.BlockBuilder, `node` the onnxforge IR
node (attributes as plain Python values), `inputs` the relax expressions of the
node's inputs (None for an omitted optional input). This module does not import
tvm: only the lowering functions themselves use it."""
from __future__ import annotations

from typing import Any, Callable

from ..ir import LoweringError
from ..passes.registry import load_entry_points

ENTRY_POINT_GROUP = "onnxforge.lowerings"
Lowering = Callable[[Any, Any, list], Any]
_TABLE: dict[tuple[str, str], Lowering] = {}


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register_lowering(op_type: str, domain: str = "", *, replace: bool = False):
    """Decorator: `@register_lowering("MyOp", domain="com.example")`. Ours win over
    the TVM frontend's converter for the same op; registering an op twice is an
    error unless replace=True."""

    def decorate(fn: Lowering) -> Lowering:
        key = (_domain(domain), op_type)
        if key in _TABLE and _TABLE[key] is not fn and not replace:
            raise LoweringError(f"a lowering for {_op_name(*key)} is already registered by "
                                f"{_TABLE[key].__module__}.{_TABLE[key].__qualname__}; pass replace=True to override it")
        _TABLE[key] = fn
        return fn

    return decorate


def unregister_lowering(op_type: str, domain: str = "") -> None:
    _TABLE.pop((_domain(domain), op_type), None)


def _load_entry_points() -> None:
    load_entry_points(ENTRY_POINT_GROUP, LoweringError)


def get_lowering(op_type: str, domain: str = "") -> Lowering | None:
    _load_entry_points()
    return _TABLE.get((_domain(domain), op_type))


def registered_lowerings() -> dict[str, Lowering]:
    """'domain.Op' (or 'Op' for the default domain) -> lowering function."""
    _load_entry_points()
    return {_op_name(d, op): fn for (d, op), fn in sorted(_TABLE.items())}


def _op_name(domain: str, op_type: str) -> str:
    return f"{domain}.{op_type}" if domain else op_type
