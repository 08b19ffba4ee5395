"""Det: the determinant of each trailing n x n matrix, by Gaussian elimination
with partial pivoting in float64 (one serial TIR kernel, te.extern + IRBuilder).
See registry.py for the lowering signature."""
from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..ir import LoweringError
from .op_helpers import _dims, _dtype
from .registry import register_lowering

op = relax.op


def _det_kernel(x, n: int):
    count = int(x.shape[0])

    def gen(x_ptr, out_ptr):
        with IRBuilder() as ib:
            with T.seq_scope():
                a, out = T.buffer_proxy(x_ptr), T.buffer_proxy(out_ptr)
                m = T.buffer_proxy(T.alloc_buffer((n * n,), "float64", scope="local"))
                det = T.buffer_proxy(T.alloc_buffer((1,), "float64", scope="local"))
                piv = T.buffer_proxy(T.alloc_buffer((1,), "int64", scope="local"))
                tmp = T.buffer_proxy(T.alloc_buffer((1,), "float64", scope="local"))
                with T.serial(0, count) as b:
                    with T.serial(0, n * n) as i:
                        m[i] = tirx.Cast("float64", a[b, i // n, i % n])
                    det[0] = tirx.const(1.0, "float64")
                    with T.serial(0, n) as k:
                        piv[0] = tirx.Cast("int64", k)
                        with T.serial(k + 1, n) as r:  # the largest pivot below
                            with T.If(tirx.abs(m[r * n + k]) > tirx.abs(m[piv[0] * n + k])):
                                with T.Then():
                                    piv[0] = tirx.Cast("int64", r)
                        with T.If(piv[0] != tirx.Cast("int64", k)):
                            with T.Then():
                                with T.serial(0, n) as c:
                                    tmp[0] = m[k * n + c]
                                    m[k * n + c] = m[piv[0] * n + c]
                                    m[piv[0] * n + c] = tmp[0]
                                det[0] = -det[0]
                        det[0] = det[0] * m[k * n + k]
                        with T.If(m[k * n + k] != tirx.const(0.0, "float64")):
                            with T.Then():
                                with T.serial(k + 1, n) as r:
                                    tmp[0] = m[r * n + k] / m[k * n + k]
                                    with T.serial(k, n) as c:
                                        m[r * n + c] = m[r * n + c] - tmp[0] * m[k * n + c]
                    out[b] = det[0]
            return ib.get()

    return te.extern([(count,)], [x], lambda ins, outs: gen(ins[0], outs[0]), dtype="float64", name="onnx_det")


@register_lowering("Det")
def det(bb, node, inputs):
    x = bb.normalize(inputs[0])
    dims = _dims(x)
    if len(dims) < 2 or not all(isinstance(d, int) for d in dims) or dims[-1] != dims[-2]:
        raise LoweringError(f"Det needs static (..., n, n) input dims, got {dims}")
    n = dims[-1]
    batch = dims[:-2]
    flat = bb.normalize(op.reshape(x, (int(np.prod(batch, dtype=np.int64)), n, n)))
    d = bb.emit_te(_det_kernel, flat, n, primfunc_name_hint="onnx_det")
    return op.reshape(op.astype(d, _dtype(x)), batch)
