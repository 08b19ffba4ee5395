"""Dispatch dense float32 matmul and conv2d to OpenBLAS sgemm.

A Relax pass, run before legalization: `relax.matmul` (any batch/broadcast form
with static shapes, a last-two-axes permute_dims of either operand absorbed as a
BLAS transpose), and NCHW `relax.nn.conv2d` (1x1 stride 1 pad 0 as a plain GEMM
per image; any other window, stride, dilation or padding with groups 1 and a weight
that packs (a constant or a weight parameter) through gemm_packed.c's direct
onnxforge_conv2d_packed; grouped ones and run-time weights through conv.c's
onnxforge_conv2d: im2col block by block in cache, then GEMM) and
`relax.nn.conv2d_transpose` (onnxforge_conv2d_transpose: GEMM, then col2im) become
`call_tir` of small PrimFuncs whose body is one `T.call_extern` into kernels.c /
conv.c. A bias and an activation after them fold into the call (epilogues.py);
everything else stays Relax/TIR, fused and scheduled by TVM.

Products with a constant float32 weight and few rows (PACKED_MAX_ROWS; or rows
known only at run time) call gemm_packed.c instead, with the weight packed once
(pack_weight / pack_te, lifted by the CPU pipeline into main_transform_params).

Depthwise conv2d (groups == channels, 3x3 or 5x5, stride 1 or 2, dilation 1, any
padding) does not go to BLAS but to kernels.c's own onnxforge_dwconv2d_plane, one
call per (image, channel) plane in a TIR loop (serial by default, see DW_PARALLEL).

The BLAS is the scipy-openblas32 wheel (`pip install scipy-openblas32`): same
package on x86_64 and aarch64, symbols prefixed `scipy_`, no Fortran runtime
needed. The module is linked against it with an rpath to where it was found and
to $ORIGIN (so a package that ships libscipy_openblas.so next to model.so works
on a device too).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .. import host
from ..device.libs import OPENBLAS, openblas_dir
from .extern_calls import (PACK_KERNEL, PACKED_MAX_ROWS, conv_packed_te, conv_te, conv_transpose_te, dwconv_te,
                           extreme_te, layer_norm_te, mean_te, pack_te, pack_weight, packed_te, rows_te, sgemm_te,
                           softmax_te)
from .epilogues import NO_EPILOGUE, EpilogueMatcher
from .int8_products import IntegerProducts
from .relax_types import dtype_of as _dtype, same_dim as _same_dim, shape_dims, static_shape

KERNELS_C = Path(__file__).with_name("kernels.c")
RECURRENT_C = Path(__file__).with_name("recurrent.c")  # RNN/GRU/LSTM recurrences (codegen/recurrent.py)
GEMM_PACKED_C = Path(__file__).with_name("gemm_packed.c")  # weights packed once (extern_calls.pack_weight)
CONV_C = Path(__file__).with_name("conv.c")  # Conv (im2col by blocks) and ConvTranspose
DEPTHWISE_C = Path(__file__).with_name("depthwise.c")  # strided depthwise Conv, 16 channels at a time
GEMM_INT8_C = Path(__file__).with_name("gemm_int8.c")  # integer products of quantized layers
C_SOURCES = (KERNELS_C, RECURRENT_C, GEMM_PACKED_C, CONV_C, DEPTHWISE_C, GEMM_INT8_C)
# included by the sources (part of their cache key)
C_HEADERS = tuple(Path(__file__).with_name(h) for h in ("activation.h", "exp_approx.h", "thread_pool.h"))

BLAS_SONAME = OPENBLAS


def blas_lib_dir(arch: str | None = None) -> str:
    """Folder holding libscipy_openblas.so for `arch` (default: this machine); BuildError if missing."""
    return str(openblas_dir(arch or host.host_arch()))


def link_options(lib_dir: str) -> list[str]:
    # --no-as-needed: the options come before the objects on the link line
    return ["-Wl,--no-as-needed", f"-L{lib_dir}", "-l:" + BLAS_SONAME, f"-Wl,-rpath,{lib_dir}", "-Wl,-rpath,$ORIGIN"]


def _is_swap_last_two(call) -> bool:
    if not isinstance(call, relax.Call) or call.op != tvm.ir.Op.get("relax.permute_dims"):
        return False
    axes = call.attrs.axes
    shape = static_shape(call.args[0])
    if shape is None or len(shape) < 2:
        return False
    r = len(shape)
    axes = list(range(r))[::-1] if axes is None else [int(a) for a in axes]
    return axes == list(range(r - 2)) + [r - 1, r - 2]


def _trailing(axes, rank: int) -> int | None:
    """The first of `axes` when they are the trailing axes of a rank-`rank` tensor (at
    least one), else None."""
    got = sorted(int(a) % rank for a in axes) if rank else []
    return got[0] if got and got == list(range(rank - len(got), rank)) else None


@mutator
class _BlasRewriter(PyExprMutator, IntegerProducts):
    def __init__(self, mod, int8: bool = False):
        super().__init__(mod)
        self.count = 0
        self.int8 = int8  # integer products through gemm_int8.c (pipeline.int8_dot_products)
        self._matmul = tvm.ir.Op.get("relax.matmul")
        self._conv2d = tvm.ir.Op.get("relax.nn.conv2d")
        self._conv1d = tvm.ir.Op.get("relax.nn.conv1d")
        self._conv2d_transpose = tvm.ir.Op.get("relax.nn.conv2d_transpose")
        self._attention = tvm.ir.Op.get("relax.nn.attention_bias")
        self._broadcast_to = tvm.ir.Op.get("relax.broadcast_to")
        self._softmax = tvm.ir.Op.get("relax.nn.softmax")
        self._layer_norm = tvm.ir.Op.get("relax.nn.layer_norm")
        self._mean = tvm.ir.Op.get("relax.mean")
        self._max = tvm.ir.Op.get("relax.max")
        self._min = tvm.ir.Op.get("relax.min")
        # of the function being rewritten, before rewriting (see analyze)
        self._weights: set = set()  # parameters past "num_input": weights, packed at load
        self._epilogues = EpilogueMatcher()

    def analyze(self, func) -> None:
        """Weights and epilogues of `func`, before it is rewritten."""
        num_input = func.attrs.get("num_input") if func.attrs else None
        self._weights = set(func.params[int(num_input):]) if num_input is not None else set()
        self._epilogues.analyze(func)

    def _producer(self, expr):
        if isinstance(expr, relax.Var):
            try:
                return self.lookup_binding(expr)
            except Exception:
                return None
        return None

    def visit_call_(self, call):  # noqa: N802 (TVM's name)
        original = call
        call = self.visit_expr_post_order(call)
        try:
            new = None
            if call.op.same_as(self._matmul):
                new = self._rewrite_matmul(call)
            elif call.op.same_as(self._conv2d):
                new = self._rewrite_conv2d(call)
            elif call.op.same_as(self._conv1d):
                new = self._rewrite_conv1d(call)
            elif call.op.same_as(self._conv2d_transpose):
                new = self._rewrite_conv2d_transpose(call)
            elif call.op.same_as(self._attention):
                new = self._rewrite_attention(call)
            elif call.op.same_as(self._softmax):
                new = self._rewrite_softmax(call.args[0], int(call.attrs.axis))
            elif call.op.same_as(self._layer_norm):
                new = self._rewrite_layer_norm(call)
            elif call.op.same_as(self._mean):
                new = self._rewrite_mean(call)
            elif call.op.same_as(self._max) or call.op.same_as(self._min):
                new = self._rewrite_extreme(call, call.op.same_as(self._max))
            elif self._epilogues.triggers(call):
                new = self._rewrite_epilogue(original)
            return call if new is None else new
        except Exception:  # anything unexpected: leave the op to TVM
            if os.environ.get("ONNXFORGE_BLAS_DEBUG"):
                raise
            return call
        return call

    # ---- epilogues: conv/matmul -> [add bias] -> [activation] as one C call (epilogues.py)
    def _rewrite_epilogue(self, call):
        match = self._epilogues.match(call)
        if match is None:
            return None
        epilogue, core = match
        # the core's and bias's operands as rewritten so far (the unfused core call
        # emitted before is left unused, and DeadCodeElimination drops it)
        core = self.builder_.normalize(relax.Call(core.op, [self.visit_expr(a) for a in core.args], core.attrs))
        if epilogue.bias is not None:
            epilogue = dataclasses.replace(epilogue, bias=self.visit_expr(epilogue.bias))
        rewrite = (self._rewrite_matmul if core.op.same_as(self._matmul) else self._rewrite_conv2d_transpose
                   if core.op.same_as(self._conv2d_transpose) else self._rewrite_conv2d)
        new = rewrite(core, epilogue)
        if new is not None:
            self.count -= 1  # the unfused call, counted when it was made, is dropped
        return new

    def _operand(self, expr):
        """(expr, transposed) absorbing a last-two-axes permute_dims."""
        prod = self._producer(expr)
        if prod is not None and _is_swap_last_two(prod):
            return prod.args[0], True
        return expr, False

    def _rewrite_matmul(self, call, epilogue=NO_EPILOGUE):
        a, b = call.args
        if epilogue is NO_EPILOGUE:
            integer = self._rewrite_integer_matmul(call)
            if integer is not None:
                return integer
        if _dtype(a) != "float32" or _dtype(b) != "float32" or _dtype(call) != "float32":
            return None
        sa, sb, so = static_shape(a), static_shape(b), static_shape(call)
        if sa is None or so is None:
            return self._rewrite_symbolic_matmul(call, epilogue)
        if sb is None or len(sa) < 2 or len(sb) < 2:
            return None
        a_src, ta = self._operand(a)
        b_src, tb = self._operand(b)
        m, k = sa[-2], sa[-1]
        n = sb[-1]
        if sb[-2] != k:
            return None
        ba, bb_ = sa[:-2], sb[:-2]
        out_batch = so[:-2]
        pa = math.prod(ba) if ba else 1
        pb = math.prod(bb_) if bb_ else 1
        pout = math.prod(out_batch) if out_batch else 1
        if pb == 1 and not ta:
            # fold a's batch into M: one GEMM
            batch, m_eff, stride_a, stride_b = 1, pa * m, 0, 0
        elif pa == pout and pb == pout:
            batch, m_eff, stride_a, stride_b = pout, m, m * k, k * n
        elif pa == pout and pb == 1:
            batch, m_eff, stride_a, stride_b = pout, m, m * k, 0
        elif pa == 1 and pb == pout:
            batch, m_eff, stride_a, stride_b = pout, m, 0, k * n
        else:
            return None
        if batch * m_eff * n * k == 0:
            return None
        bias, act = epilogue.te_args()
        if batch == 1 and not ta and m_eff <= PACKED_MAX_ROWS:
            packed = self._packed(a_src, b_src, tb, bias, act, out_shape=so, m=m_eff, n=n, k=k)
            if packed is not None:
                return packed
        self.count += 1
        return self.builder_.call_te(sgemm_te, a_src, b_src, *bias, out_shape=so, batch=batch, m=m_eff, n=n, k=k,
                                     stride_a=stride_a, stride_b=stride_b, trans_a=ta, trans_b=tb, name="blas_matmul",
                                     bias_kind=1, **act, primfunc_name_hint="blas_matmul")

    def _packed_weight(self, b, trans_b, k, n):
        """B packed for gemm_packed.c when it is a constant or a weight parameter (its
        batch dims all 1), else None. A constant is packed here; a parameter by a kernel
        that the build lifts into main_transform_params (run once, at load)."""
        if isinstance(b, tvm.ir.Constant):
            w = b.data.numpy()
            if w.dtype != np.float32 or w.ndim < 2 or math.prod(w.shape[:-2]) != 1:
                return None
            return relax.const(pack_weight(w.reshape(w.shape[-2:]), trans_b), "float32")
        if b not in self._weights and not self._from_weights(b):
            return None
        shape = static_shape(b)
        if _dtype(b) != "float32" or shape is None or len(shape) < 2 or math.prod(shape[:-2]) != 1:
            return None
        if len(shape) > 2:
            b = self.builder_.emit(relax.op.reshape(b, shape[-2:]))
        return self.builder_.emit(self.builder_.call_te(pack_te, b, trans=trans_b, k=k, n=n,
                                                        primfunc_name_hint=PACK_KERNEL))

    def _packed_conv_weight(self, w, co, k):
        """A conv weight (co, ci, kh, kw) packed as the (co x k) GEMM weight it is
        (_packed_weight, transposed), or None when it does not pack."""
        if isinstance(w, tvm.ir.Constant):
            data = w.data.numpy()
            return relax.const(pack_weight(data.reshape(co, k), True), "float32") if data.dtype == np.float32 else None
        if w not in self._weights and not self._from_weights(w):
            return None
        return self._packed_weight(self.builder_.emit(relax.op.reshape(w, [co, k])), True, k, co)

    def _from_weights(self, expr, limit: int = 32) -> bool:
        """Whether `expr` is computed from float32 weight parameters and constants alone
        (a slice, reshape or transpose of a weight, as recurrent layers and exporters
        write them): then its packing, and what it is computed from, are lifted to load
        time too. Follows at most `limit` bindings."""
        stack, seen = [expr], 0
        while stack:
            e = stack.pop()
            if isinstance(e, relax.Var):
                if e in self._weights:
                    if _dtype(e) != "float32":  # quantized weights stay quantized in memory
                        return False
                    continue
                seen += 1
                value = self._producer(e)
                if value is None or seen > limit:
                    return False  # an input, or a chain too long to follow
                stack.append(value)
            elif isinstance(e, relax.Call):
                if not isinstance(e.op, tvm.ir.Op):
                    return False
                stack.extend(e.args)
            elif isinstance(e, relax.Tuple):
                stack.extend(e.fields)
            elif not isinstance(e, (tvm.ir.Constant, relax.ShapeExpr)):  # prim values are Constants too
                return False
        return True

    def _packed(self, a, b, trans_b, bias, act, *, out_shape, m, n, k):
        """a @ B through gemm_packed.c when B packs (_packed_weight), else None."""
        bp = self._packed_weight(b, trans_b, k, n)
        if bp is None:
            return None
        self.count += 1
        return self.builder_.call_te(packed_te, a, bp, *bias, out_shape=out_shape, m=m, n=n, k=k,
                                     name="packed_matmul", bias_kind=1, **act, primfunc_name_hint="packed_matmul")

    def _rewrite_symbolic_matmul(self, call, epilogue):
        """Products with symbolic batch/sequence dims (MiniLM unpinned) through sgemm,
        the sizes evaluated at run time: a layer (..., K) @ a static (K, N) weight as
        one GEMM with M = the product of a's leading dims, or a batched product whose
        operands have the same batch dims as the output (attention's two)."""
        a, b = call.args
        sa, sb, so = shape_dims(a), shape_dims(b), shape_dims(call)
        if sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
            return None
        if not _same_dim(sa[-1], sb[-2]) or any(isinstance(d, int) and d == 0 for d in (*sa, *sb)):
            return None
        if len(sb) == 2 and all(isinstance(d, int) for d in sb):
            b_src, tb = self._operand(b)
            batch, m, strides = 1, math.prod(sa[:-1]), (0, 0)
        elif len(sa) == len(sb) == len(so) and all(_same_dim(x, y) and _same_dim(x, z) for x, y, z in zip(sa[:-2], sb[:-2], so[:-2])):
            b_src, tb = b, False
            batch, m = math.prod(sa[:-2]), sa[-2]
            strides = (sa[-2] * sa[-1], sb[-2] * sb[-1])
        else:
            return None
        bias, act = epilogue.te_args()
        bp = self._packed_weight(b_src, tb, sa[-1], sb[-1]) if batch == 1 and not isinstance(m, int) else None
        if bp is not None:  # rows known at run time: packed up to PACKED_MAX_ROWS, else OpenBLAS
            self.count += 1
            return self.builder_.call_te(rows_te, a, b_src, bp, *bias, out_shape=so, m=m, n=sb[-1], k=sa[-1],
                                         trans_b=tb, name="packed_or_blas_matmul", bias_kind=1, **act,
                                         primfunc_name_hint="packed_or_blas_matmul")
        self.count += 1
        return self.builder_.call_te(sgemm_te, a, b_src, *bias, out_shape=so, batch=batch, m=m, n=sb[-1], k=sa[-1],
                                     stride_a=strides[0], stride_b=strides[1], trans_a=False, trans_b=tb, name="blas_matmul",
                                     bias_kind=1, **act, primfunc_name_hint="blas_matmul")

    def _gemm(self, a, b):
        """matmul(a, b) through BLAS when it qualifies, else relax's matmul."""
        bb = self.builder_
        plain = bb.normalize(relax.op.matmul(a, b))
        new = self._rewrite_matmul(plain)
        return bb.emit(plain if new is None else new)

    def _rewrite_attention(self, call):
        """relax.nn.attention_bias (what the frontend makes of com.microsoft
        Attention) as permute + BLAS matmul + softmax + BLAS matmul, so that both
        batched products go to BLAS; a bias that the frontend broadcast to a
        run-time (symbolic) shape is used unbroadcast."""
        q, k, v = call.args[:3]
        bias = call.args[3] if len(call.args) > 3 else None
        attrs = call.attrs
        if getattr(attrs, "causal_mask", None) or getattr(attrs, "window_size", None):
            return None
        sq, sk, sv = static_shape(q), static_shape(k), static_shape(v)
        if sq is None or sk is None or sv is None or _dtype(q) != "float32":
            return None
        if bias is not None:
            prod = self._producer(bias)
            if prod is not None and isinstance(prod, relax.Call) and prod.op.same_as(self._broadcast_to):
                bias = prod.args[0]
            if static_shape(bias) is None:
                return None
        scale = attrs.scale
        scale = float(scale.value) if scale is not None else 1.0 / math.sqrt(sq[-1])
        bb, op = self.builder_, relax.op
        qt = bb.emit(op.permute_dims(q, [0, 2, 1, 3]))
        kt = bb.emit(op.permute_dims(k, [0, 2, 3, 1]))
        vt = bb.emit(op.permute_dims(v, [0, 2, 1, 3]))
        scores = bb.emit(op.multiply(self._gemm(qt, kt), relax.const(scale, "float32")))
        if bias is not None:
            scores = bb.emit(op.add(scores, bias))
        probs = self._rewrite_softmax(scores, -1)
        probs = bb.emit(op.nn.softmax(scores, axis=-1) if probs is None else probs)
        out = self._gemm(probs, vt)
        return op.permute_dims(out, [0, 2, 1, 3])

    def _rewrite_softmax(self, x, axis: int):
        """float32 softmax -> kernels.c's onnxforge_softmax_rows over the last axis; over
        another one (YOLOv8's box decoder: 16 values 8,400 floats apart) the axis is moved
        last and back, two cheap transposes. Dims may be symbolic."""
        dims = shape_dims(x)
        if dims is None or not dims or _dtype(x) != "float32":
            return None
        rank, axis = len(dims), axis % len(dims)
        bb, op = self.builder_, relax.op
        perm = [d for d in range(rank) if d != axis] + [axis]
        moved = x if axis == rank - 1 else bb.emit(op.permute_dims(x, perm))
        y = bb.call_te(softmax_te, moved, rows=math.prod(dims[d] for d in perm[:-1]), n=dims[axis], name="softmax_rows",
                       primfunc_name_hint="softmax_rows")
        if axis == rank - 1:
            return y
        return op.permute_dims(bb.emit(y), [perm.index(d) for d in range(rank)])

    def _rewrite_mean(self, call):
        """float32 mean over trailing axes (GlobalAveragePool, ReduceMean) whose size is
        known only at run time -> kernels.c's onnxforge_mean_rows; static ones keep
        schedules.LongReduction (as fast)."""
        x = call.args[0]
        dims, out = shape_dims(x), shape_dims(call)
        if dims is None or out is None or _dtype(x) != "float32" or call.attrs.axis is None:
            return None
        first = _trailing(call.attrs.axis, len(dims))
        if first is None or all(isinstance(d, int) for d in dims):
            return None
        return self.builder_.call_te(mean_te, x, rows=math.prod(dims[:first]), n=math.prod(dims[first:]),
                                     out_shape=out, name="mean_rows", primfunc_name_hint="mean_rows")

    def _rewrite_extreme(self, call, top: bool):
        """float32 max / min over all axes or trailing ones (a dynamic quantization's
        range, ReduceMax/Min) -> kernels.c's onnxforge_max_rows / onnxforge_min_rows."""
        x = call.args[0]
        dims, out = shape_dims(x), shape_dims(call)
        if dims is None or out is None or _dtype(x) != "float32" or not dims:
            return None
        first = 0 if call.attrs.axis is None else _trailing(call.attrs.axis, len(dims))
        if first is None or any(isinstance(d, int) and d == 0 for d in dims[first:]):
            return None  # an empty reduction: TVM's identity element
        return self.builder_.call_te(extreme_te, x, top=top, rows=math.prod(dims[:first]),
                                     n=math.prod(dims[first:]), out_shape=out, name="extreme_rows",
                                     primfunc_name_hint="extreme_rows")

    def _rewrite_layer_norm(self, call):
        """float32 layer_norm over trailing axes (ONNX's LayerNormalization always is) with a
        scale and a bias of those dims -> kernels.c's onnxforge_layer_norm_rows over rows of
        their product (dims may be symbolic). TVM's own takes the variance as E[x^2] -
        mean^2, which loses digits on rows with a large mean."""
        x, gamma, beta = call.args
        attrs = call.attrs
        dims = shape_dims(x)
        if dims is None or not (attrs.center and attrs.scale):
            return None
        first = _trailing(attrs.axes, len(dims))
        if first is None:
            return None
        if any(_dtype(t) != "float32" for t in (x, gamma, beta)) or any(shape_dims(t) != dims[first:] for t in (gamma, beta)):
            return None
        return self.builder_.call_te(layer_norm_te, x, gamma, beta, rows=math.prod(dims[:first]),
                                     n=math.prod(dims[first:]), epsilon=float(attrs.epsilon),
                                     name="layer_norm_rows", primfunc_name_hint="layer_norm_rows")

    def _rewrite_conv2d(self, call, epilogue=NO_EPILOGUE):
        x, w = call.args
        attrs = call.attrs
        if (_dtype(x), _dtype(w), _dtype(call)) != ("float32",) * 3:
            return None
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return None
        # batch and spatial dims may be symbolic (sizes read at run time); the weight is static
        sx, sw, so = shape_dims(x), static_shape(w), shape_dims(call)
        if sx is None or sw is None or so is None or len(sx) != 4 or len(so) != 4:
            return None
        groups = int(attrs.groups)
        if groups != 1 and sw[1] == 1 and sw[0] == sx[1]:  # depthwise (batch and spatial dims may be symbolic)
            if not isinstance(sx[1], int) or not isinstance(so[1], int):
                return None
            return self._rewrite_depthwise(call, sx, sw, so, epilogue)
        nb, ci, h, wd = sx
        co, _, kh, kw = sw
        strides = [int(s) for s in attrs.strides]
        pad = [int(p) for p in attrs.padding]
        dil = [int(d) for d in attrs.dilation]
        bias, act = epilogue.te_args()
        plain_1x1 = (kh, kw) == (1, 1) and strides == [1, 1] and pad == [0, 0, 0, 0]
        # The direct kernel's tiles are 16 output channels wide: with 24 (PP-OCRv4 det's head) a quarter
        # of its lanes idled and im2col + OpenBLAS was 1.3x faster, so it takes channel counts that fill them.
        # Plain 1x1s too (a GEMM over x as it is otherwise): since its block-buffer stores it is 3-6% faster
        # on whole models than OpenBLAS with AVX-512 and equal with AVX2 (2026-12-07); but not over 32 input
        # channels or fewer, where the per-tile store and transpose outweigh the short k loop and OpenBLAS,
        # writing NCHW rows directly, was 2.5-5% faster on YOLOv8n, EfficientNet-Lite0 and PP-LCNet.
        lanes = co / (16 * -(-co // 16))
        if (groups == 1 and lanes >= 0.9 and isinstance(ci, int) and not (plain_1x1 and ci <= 32) and min(pad) >= 0
                and len(pad) == 4):
            bp = self._packed_conv_weight(w, co, ci * kh * kw)
            if bp is not None:  # direct, over the weight packed once (at load for a parameter)
                self.count += 1
                return self.builder_.call_te(conv_packed_te, x, bp, *bias, co=co, kh=kh, kw=kw, out_shape=so,
                                             strides=strides, pad=pad, dil=dil, name="packed_conv", **act,
                                             primfunc_name_hint="packed_conv")
        if plain_1x1 and groups == 1:
            self.count += 1
            return self.builder_.call_te(sgemm_te, w, x, *bias, out_shape=so, batch=nb, m=co, n=h * wd, k=ci,
                                         stride_a=0, stride_b=ci * h * wd, trans_a=False, trans_b=False,
                                         name="blas_conv1x1", bias_kind=2, **act, primfunc_name_hint="blas_conv1x1")
        if min(pad) < 0 or len(pad) != 4 or not isinstance(ci, int) or ci % groups or co % groups:
            return None
        self.count += 1
        return self.builder_.call_te(conv_te, x, w, *bias, out_shape=so, strides=strides, pad=pad, dil=dil,
                                     groups=groups, name="blas_conv", **act, primfunc_name_hint="blas_conv")

    def _rewrite_conv2d_transpose(self, call, epilogue=NO_EPILOGUE):
        """NCHW / IOHW conv2d_transpose -> onnxforge_conv2d_transpose (conv.c); batch and
        spatial dims may be symbolic, the weight is static."""
        x, w = call.args
        attrs = call.attrs
        if (_dtype(x), _dtype(w), _dtype(call)) != ("float32",) * 3:
            return None
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "IOHW" or attrs.out_layout != "NCHW":
            return None
        sx, sw, so = shape_dims(x), static_shape(w), shape_dims(call)
        if sx is None or sw is None or so is None or len(sx) != 4 or len(so) != 4 or not isinstance(sx[1], int):
            return None
        groups = int(attrs.groups)
        pad = [int(p) for p in attrs.padding]
        if len(pad) != 4 or min(pad) < 0 or sx[1] % groups or sw[0] != sx[1] or so[1] != sw[1] * groups:
            return None
        bias, act = epilogue.te_args()
        self.count += 1
        return self.builder_.call_te(conv_transpose_te, x, w, *bias, out_shape=so,
                                     strides=[int(s) for s in attrs.strides], pad=pad,
                                     dil=[int(d) for d in attrs.dilation], groups=groups, name="blas_conv_transpose",
                                     **act, primfunc_name_hint="blas_conv_transpose")

    def _rewrite_conv1d(self, call):
        """conv1d (NCW) as a conv2d of height 1, so it takes the same BLAS path
        (silero-vad's front end is conv1d: 5-10x slower on TVM's default schedule)."""
        x, w = call.args
        attrs = call.attrs
        if attrs.data_layout != "NCW" or attrs.kernel_layout != "OIW" or int(attrs.groups) != 1:
            return None
        sx, sw, so = shape_dims(x), static_shape(w), shape_dims(call)
        if sx is None or sw is None or so is None or len(sx) != 3 or _dtype(x) != "float32":
            return None
        bb, op = self.builder_, relax.op
        x4 = bb.emit(op.reshape(x, [sx[0], sx[1], 1, sx[2]]))
        w4 = bb.emit(op.reshape(w, [sw[0], sw[1], 1, sw[2]]))
        pad = [int(p) for p in attrs.padding]
        conv = bb.normalize(op.nn.conv2d(x4, w4, strides=[1, int(attrs.strides[0])], padding=[0, pad[0], 0, pad[1]],
                                         dilation=[1, int(attrs.dilation[0])], groups=1, out_dtype="float32"))
        new = self._rewrite_conv2d(conv)
        if new is None:
            return None
        return op.reshape(bb.emit(new), so)

    def _rewrite_depthwise(self, call, sx, sw, so, epilogue=NO_EPILOGUE):
        """Depthwise conv2d (groups == channels, one filter per channel, any window up to
        16 rows, any stride, dilation 1, any padding) -> onnxforge_dwconv2d_plane (kernels.c;
        stride 1) or onnxforge_dwconv2d_block (depthwise.c; strided)."""
        x, w = call.args
        attrs = call.attrs
        nb, ci, h, wd = sx
        co, cpg, kh, kw = sw
        if int(attrs.groups) != ci or co != ci or cpg != 1 or len(so) != 4:
            return None
        strides = [int(s) for s in attrs.strides]
        pad = [int(p) for p in attrs.padding]
        dil = [int(d) for d in attrs.dilation]
        # other windows and strides (PP-OCR's stride (2, 1)) take the kernel's generic
        # path: TVM's default schedule of those ran at ~1 GFLOP/s, a quarter of the PP-OCR
        # direction classifier's time, and worse at symbolic sizes (a div/mod per element)
        if dil != [1, 1] or len(pad) != 4 or min(strides) < 1 or kh > 16:
            return None
        _, _, oh, ow = so
        want = ((h + pad[0] + pad[2] - kh) // strides[0] + 1, (wd + pad[1] + pad[3] - kw) // strides[1] + 1)
        analyzer = tvm.sym.Analyzer()
        if not all(analyzer.can_prove_equal(tirx.const(o, "int64") if isinstance(o, int) else o,
                                            tirx.const(e, "int64") if isinstance(e, int) else e)
                   for o, e in zip((oh, ow), want)):
            return None
        if min(pad) < 0 or any(isinstance(d, int) and d == 0 for d in (nb, ci, oh, ow)):
            return None
        self.count += 1
        bias, act = epilogue.te_args()
        return self.builder_.call_te(dwconv_te, x, w, *bias, out_shape=so, kh=kh, kw=kw, strides=strides, pad=pad,
                                     name="blas_dwconv", **act, primfunc_name_hint="blas_dwconv")


@tvm.transform.module_pass(opt_level=0, name="onnxforge.DispatchBLAS")
class DispatchBLAS:
    """Relax pass: float32 matmul / conv2d -> OpenBLAS sgemm and onnxforge's C kernels;
    with `int8`, MatMulInteger's products -> gemm_int8.c."""

    def __init__(self, int8: bool = False):
        self.count = 0
        self.int8 = int8

    def transform_module(self, mod, _ctx):
        rewriter = _BlasRewriter(mod, self.int8)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.analyze(func)
                new = rewriter.visit_expr(func)
                rewriter.builder_.update_func(gv, new)
        self.count = rewriter.count
        # a conv/matmul whose epilogue was folded in left its unfused call unused
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
