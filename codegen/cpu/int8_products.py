"""The integer part of DispatchBLAS (blas.py): what codegen/integer.py makes of
MatMulInteger, float32(a - za) @ float32(w - zw) where its sums are exact in float32,
else the same in int32, as one call of gemm_int8.c (pipeline.int8_dot_products says
for which targets). A mixin of blas._BlasRewriter: it uses the rewriter's builder,
bindings and weight set."""
from __future__ import annotations

import math

import tvm
from tvm import relax

from .extern_calls import PACK_KERNEL, qcols_te, qmatmul_packed_te, qmatmul_te, qpack_te
from .relax_types import dtype_of as _dtype, same_dim as _same_dim, shape_dims, static_shape


class IntegerProducts:
    _astype = tvm.ir.Op.get("relax.astype")
    _subtract = tvm.ir.Op.get("relax.subtract")
    _reshape = tvm.ir.Op.get("relax.reshape")

    def _astype_source(self, expr, dtypes):
        """x where expr is astype(x) with x of one of `dtypes`, else None."""
        prod = self._producer(expr)
        if prod is None or not isinstance(prod, relax.Call) or not prod.op.same_as(self._astype):
            return None
        return prod.args[0] if _dtype(prod.args[0]) in dtypes else None

    def _centered_source(self, expr, dtypes):
        """(x, zero point or None) where expr is astype(x) [- astype(zp)], else None."""
        x = self._astype_source(expr, dtypes)
        if x is not None:
            return x, None
        prod = self._producer(expr)
        if prod is None or not isinstance(prod, relax.Call) or not prod.op.same_as(self._subtract):
            return None
        x, zp = (self._astype_source(arg, dtypes) for arg in prod.args)
        return (x, zp) if x is not None and zp is not None and _dtype(x) == _dtype(zp) else None

    def _reshaped_source(self, expr):
        """What a reshape (codegen/integer.py's per-column zero point [1, n], a scalar's
        [] view) was made from: the parameter itself, read with its own shape."""
        prod = self._producer(expr) if expr is not None else None
        while isinstance(prod, relax.Call) and prod.op.same_as(self._reshape):
            expr = prod.args[0]
            prod = self._producer(expr)
        return expr

    def _rewrite_integer_matmul(self, call):
        """uint8 activations (any leading dims, symbolic too) times a 2-D int8/uint8
        weight, zero points per tensor (activations) and per tensor or per column
        (weight): the same values, computed in int32 by onnxforge_qmatmul."""
        a, b = call.args
        out_dtype = _dtype(call)
        if not self.int8 or out_dtype not in ("float32", "int32") or _dtype(a) != out_dtype or _dtype(b) != out_dtype:
            return None
        lhs, rhs = self._centered_source(a, ("uint8",)), self._centered_source(b, ("int8", "uint8"))
        sa, sw, so = shape_dims(a), static_shape(b), shape_dims(call)
        if lhs is None or rhs is None or sa is None or sw is None or so is None or len(sw) != 2 or len(sa) < 2:
            return None
        (x, za), (w, zw) = lhs, rhs
        k, n = sw
        if not _same_dim(sa[-1], k) or len(so) != len(sa) or k == 0 or n == 0:
            return None
        sza = static_shape(za) if za is not None else ()
        szw = static_shape(zw) if zw is not None else ()
        if sza is None or szw is None or math.prod(sza) != 1:
            return None  # per-row activation zero points: left to the float product
        if math.prod(szw) not in (1, n) or (math.prod(szw) == n and tuple(szw) not in ((n,), (1, n))):
            return None
        self.count += 1
        m = math.prod(sa[:-1])
        zw = self._reshaped_source(zw)
        if w in self._weights and (zw is None or zw in self._weights or isinstance(zw, tvm.ir.Constant)):
            # packed once, at load (the build lifts the PACK_KERNEL kernels into main_transform_params)
            bb = self.builder_
            bp = bb.emit(bb.call_te(qpack_te, w, k=k, n=n, primfunc_name_hint=PACK_KERNEL + "_int8"))
            cols = bb.emit(bb.call_te(qcols_te, w, zw=zw, k=k, n=n, primfunc_name_hint=PACK_KERNEL + "_int8_cols"))
            return bb.call_te(qmatmul_packed_te, x, bp, cols, za=za, out_shape=so, m=m, n=n, k=k, dtype=out_dtype,
                              name="qmatmul", primfunc_name_hint="qmatmul")
        return self.builder_.call_te(qmatmul_te, x, w, za=za, zw=zw, out_shape=so, m=m, n=n, k=k,
                                     dtype=out_dtype, name="qmatmul", primfunc_name_hint="qmatmul")
