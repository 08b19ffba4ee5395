"""Reshapes stay views when their dims are symbolic expressions.

TVM legalizes every relax.reshape into a TIR copy kernel and later turns the ones
it can prove to be plain reshapes back into views (RewriteDataflowReshape). Its proof
fails when a dim is an expression rather than a variable, such as a feature map's
height (height - 1) // 8 + 1 in a package built for any image size: the reshape then
runs as a copy with a division and a modulo per element. YOLOv8n unpinned spent
1.4 ms of ~20 in three such copies of its detection head ([b, 82, h, w] -> [b, 82, h
w]), where the pinned build has none. A reshape never moves data (Relax tensors are
contiguous), so those are kept as relax.reshape, which the VM runs as a view of
the same memory (vm.builtin.reshape, as for the ones TVM proves); the others are
legalized as before (pinned builds are unchanged)."""
from __future__ import annotations

import tvm
from tvm import relax, tirx

from .cpu.relax_types import shape_dims


def _legalize_reshape(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    dims = (shape_dims(call.args[0]) or []) + (shape_dims(call) or [])
    if any(not isinstance(d, int | tirx.Var) for d in dims):
        return call  # stays relax.reshape: a view
    return tvm.ir.Op.get("relax.reshape").get_attr("FLegalize")(bb, call)


def with_reshape_views(passes: list) -> list:
    """A backend's legalize passes with LegalizeOps keeping such reshapes as views."""
    return [relax.transform.LegalizeOps({"relax.reshape": _legalize_reshape})
            if isinstance(p, tvm.transform.Pass) and p.info.name == "LegalizeOps" else p for p in passes]
