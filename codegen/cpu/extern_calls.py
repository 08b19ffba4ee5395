"""The te.extern calls DispatchBLAS (blas.py) emits: each wraps one C kernel
(kernels.c: onnxforge_sgemm, onnxforge_dwconv2d_plane; gemm_packed.c:
onnxforge_sgemm_packed, onnxforge_sgemm_rows; conv.c: onnxforge_conv2d,
onnxforge_conv2d_transpose) with its arguments, sizes evaluated
at run time where dims are symbolic; plus the packing of a weight parameter (a TE
kernel)."""
from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

# Products with a constant weight and at most this many rows take gemm_packed.c (the
# weight packed once: pack_weight / pack_te) instead of OpenBLAS (which repacks it on every call). Above
# it OpenBLAS's packed-A kernel is faster (measured on Zen 3, 2 threads: 20x8210x1024
# 5.3 -> 4.1 ms; 1024x1024x1024 20 ms against OpenBLAS's 13). Since the tile's k loop
# is unrolled, MiniLM-L6 end to end: 128 rows 0.91-0.92x of onnxruntime packed against
# 0.97-1.03x with OpenBLAS, 256 rows a tie, 512 rows OpenBLAS ahead (1.03x vs 1.06-1.15x).
PACKED_MAX_ROWS = 192
PANEL = 16  # gemm_packed.c's NR
PACK_KERNEL = "pack_weight"  # the packing kernels' name: the CPU pipeline lifts them to load time


def extern_arg(v, dtype: str):
    """A constant, or a symbolic dim (product) evaluated at run time."""
    if isinstance(v, tirx.IntImm):
        v = int(v.value)
    return tirx.const(v, dtype) if isinstance(v, int) else tirx.Cast(dtype, v)


# activation.h's kinds
ACT_NONE, ACT_CLAMP, ACT_SIGMOID_GATE, ACT_HARD_GATE = range(4)


def epilogue_args(ins, outs, bias_kind: int, act=ACT_NONE, lo=-math.inf, hi=math.inf, alpha=1.0, beta=0.0) -> list:
    """bias, bias_kind, act, lo, hi, alpha, beta as the C kernels take them (ins[2]: the
    bias tensor, if any; act: activation.h's kind, ACT_CLAMP when only lo/hi are given)."""
    # call_te may hand the keyword arguments over as IntImm / FloatImm
    lo, hi, alpha, beta = (float(getattr(v, "value", v)) for v in (lo, hi, alpha, beta))
    act = int(getattr(act, "value", act))
    if act == ACT_NONE and (lo != -math.inf or hi != math.inf):
        act = ACT_CLAMP
    has_bias = len(ins) > 2
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    return [ins[2].data if has_bias else outs[0].data,  # no bias: kernels.c reads none
            tirx.const(bias_kind if has_bias else 0, "int32"), tirx.const(act, "int32"),
            f32(lo), f32(hi), f32(alpha), f32(beta)]


def sgemm_te(a, b, *rest, out_shape, batch, m, n, k, stride_a, stride_b, trans_a, trans_b, name,
             bias_kind=0, **act):
    """te.extern: out = act(op(a) @ op(b) [+ bias]), batched, via onnxforge_sgemm
    (rest: the bias tensor, if any; act: epilogue_args's keywords; see blas.Epilogue)."""

    def body(ins, outs):
        return tirx.call_extern("int32", "onnxforge_sgemm", extern_arg(batch, "int32"), extern_arg(m, "int32"),
                                extern_arg(n, "int32"), extern_arg(k, "int32"), ins[0].data,
                                extern_arg(stride_a, "int64"), tirx.const(int(trans_a), "int32"), ins[1].data,
                                extern_arg(stride_b, "int64"), tirx.const(int(trans_b), "int32"), outs[0].data,
                                *epilogue_args(ins, outs, bias_kind, **act))

    return te.extern([out_shape], [a, b, *rest], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype="float32")


def pack_weight(w: np.ndarray, trans: bool) -> np.ndarray:
    """B (k x n; n x k when `trans`) as gemm_packed.c reads it: ceil(n / 16) column
    panels, each k x 16 contiguous, the last one zero-padded."""
    b = w.T if trans else w
    k, n = b.shape
    panels = -(-n // PANEL)
    padded = np.zeros((k, panels * PANEL), np.float32)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2))


def pack_te(w, *, trans, k, n):
    """The packing of pack_weight as a TIR kernel, for a weight that is a parameter
    (the build lifts it into main_transform_params: it runs once, at load)."""
    zero = tirx.const(0.0, "float32")

    def f(p, q, j):
        col = p * PANEL + j
        safe = te.min(col, n - 1)  # no read past the weight, even where the value is dropped
        return tirx.if_then_else(col < n, w[safe, q] if trans else w[q, safe], zero)

    return te.compute((-(-n // PANEL), k, PANEL), f, name=PACK_KERNEL)


def packed_te(a, bp, *rest, out_shape, m, n, k, name, bias_kind=0, **act):
    """te.extern: out = act(a @ B [+ bias]) through onnxforge_sgemm_packed, with
    `bp` the packed weight (pack_weight) and a's leading dims folded into m rows."""

    def body(ins, outs):
        return tirx.call_extern("int32", "onnxforge_sgemm_packed", extern_arg(m, "int32"), extern_arg(n, "int32"),
                                extern_arg(k, "int32"), ins[0].data, ins[1].data, outs[0].data,
                                *epilogue_args(ins, outs, bias_kind, **act))

    return te.extern([out_shape], [a, bp, *rest], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype="float32")


def qmatmul_te(a, w, za, zw, *, out_shape, m, n, k, dtype, name):
    """te.extern: out = (a - za) @ (w - zw) computed in int32 by gemm_int8.c's
    onnxforge_qmatmul, as `dtype` (int32, or float32: exact as float32 where the
    lowering chose it): a uint8 (its leading dims folded into m rows), w a k x n
    int8/uint8 weight, za / zw their zero points (None: 0; zw one value or n)."""
    extra = [t for t in (za, zw) if t is not None]

    def body(ins, outs):
        at = iter(ins[2:])
        za_ = next(at) if za is not None else None
        zw_ = next(at) if zw is not None else None
        count = lambda t: tirx.const(0 if t is None else math.prod(int(d) for d in t.shape), "int32")  # noqa: E731
        return tirx.call_extern("int32", "onnxforge_qmatmul", extern_arg(m, "int32"), extern_arg(n, "int32"),
                                extern_arg(k, "int32"), ins[0].data, (outs[0] if za_ is None else za_).data, count(za_),
                                ins[1].data, tirx.const(int(w.dtype == "uint8"), "int32"),
                                (outs[0] if zw_ is None else zw_).data, count(zw_), outs[0].data,
                                tirx.const(int(dtype == "float32"), "int32"))

    return te.extern([out_shape], [a, w, *extra], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype=dtype)


QPANEL, QGROUP = 16, 4  # gemm_int8.c: columns per panel, k per group


def qpack_te(w, *, k, n):
    """gemm_int8.c's packed weight (onnxforge_qgemm_pack's layout; a uint8 weight as
    w - 128) from a k x n int8/uint8 weight parameter, as a TIR kernel the build lifts
    to load time (PACK_KERNEL)."""
    unsigned = w.dtype == "uint8"

    def f(p, g, j, i):
        q, col = g * QGROUP + i, p * QPANEL + j
        v = tirx.Cast("int32", w[te.min(q, k - 1), te.min(col, n - 1)])  # no read past the weight
        v = v - 128 if unsigned else v
        return tirx.if_then_else(tirx.all(q < k, col < n), tirx.Cast("int8", v), tirx.const(0, "int8"))

    return te.compute((-(-n // QPANEL), -(-k // QGROUP), QPANEL, QGROUP), f, name=PACK_KERNEL + "_int8")


def qcols_te(w, zw, *, k, n):
    """Per column of the weight: row 0 its offset o (128 - zw for uint8, -zw for
    int8), row 1 the sum of w - zw over k (int32), lifted to load time like qpack_te."""
    unsigned = w.dtype == "uint8"
    q = te.reduce_axis((0, k), name="q")
    sums = te.compute((n,), lambda j: te.sum(tirx.Cast("int32", w[q, j]), axis=q), name=PACK_KERNEL + "_int8_sums")

    def zero(j):  # zw: none, one value (any rank) or one per column ((n,) or (1, n))
        if zw is None:
            return tirx.const(0, "int32")
        index = [0] * len(zw.shape)
        if math.prod(int(d) for d in zw.shape) > 1:
            index[-1] = j
        return tirx.Cast("int32", zw(*index))

    def f(r, j):
        z = zero(j)
        return tirx.if_then_else(r == 0, tirx.const(128 if unsigned else 0, "int32") - z, sums[j] - k * z)

    return te.compute((2, n), f, name=PACK_KERNEL + "_int8_cols")


def qmatmul_packed_te(a, bp, cols, za, *, out_shape, m, n, k, dtype, name):
    """te.extern: as qmatmul_te, the weight packed beforehand (qpack_te, qcols_te)."""
    extra = [za] if za is not None else []

    def body(ins, outs):
        za_ = ins[3] if za is not None else None
        return tirx.call_extern("int32", "onnxforge_qmatmul_packed", extern_arg(m, "int32"), extern_arg(n, "int32"),
                                extern_arg(k, "int32"), ins[0].data, (outs[0] if za_ is None else za_).data,
                                tirx.const(0 if za_ is None else 1, "int32"), ins[1].data, ins[2].data,
                                outs[0].data, tirx.const(int(dtype == "float32"), "int32"))

    return te.extern([out_shape], [a, bp, cols, *extra], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype=dtype)


def rows_te(a, b, bp, *rest, out_shape, m, n, k, trans_b, name, bias_kind=0, **act):
    """te.extern: out = act(a @ B [+ bias]) with the row count m known at run
    time: onnxforge_sgemm_rows takes the packed `bp` up to PACKED_MAX_ROWS rows, else
    OpenBLAS on `b` as stored (n x k when trans_b)."""

    def body(ins, outs):
        epilogue = epilogue_args([ins[0], ins[1], *ins[3:]], outs, bias_kind, **act)
        return tirx.call_extern("int32", "onnxforge_sgemm_rows", extern_arg(m, "int32"), extern_arg(n, "int32"),
                                extern_arg(k, "int32"), tirx.const(PACKED_MAX_ROWS, "int32"), ins[0].data, ins[1].data,
                                tirx.const(int(trans_b), "int32"), ins[2].data, outs[0].data, *epilogue)

    return te.extern([out_shape], [a, b, bp, *rest], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype="float32")


# Depthwise planes in a TVM parallel loop (or one after another on the calling thread).
# Parallel: with OpenBLAS single-threaded and TVM's pool unpinned (runtime.set_threads),
# EfficientNet-Lite0 on 2 cores went from 19.9-22.5 ms (serial planes) to 15.0-19.6 ms
# (same process, interleaved). Serial had been the choice while OpenBLAS's own threads
# spun next to TVM's pool: the parallel loop then fell to ~450 ms under outside load.
DW_PARALLEL = True
# Smaller depthwise convolutions run on the calling thread (see thread_pool.h's
# ONNXFORGE_PARALLEL_MIN_FLOPS): a quarter of its bound, as the plane kernel does ~20
# GFLOP/s, a fifth of a GEMM's, so this is 20-30 us of work too.
DW_PARALLEL_MIN_FLOPS = 1 << 19


DW_LANES, DW_BAND = 16, 8  # depthwise.c: channels per task, output rows per task


def dwconv_te(x, w, *rest, out_shape, kh, kw, strides, pad, name, **act):
    """te.extern: a loop (serial, or over TVM's thread pool when DW_PARALLEL) of
    onnxforge_dwconv2d_plane calls, one per (image, channel), at stride 1, or of
    onnxforge_dwconv2d_block calls, one per (image, 16-channel block, band of 8 output
    rows), when strided; rest: the epilogue's bias."""
    nb, c, h, wd = x.shape  # ints, or symbolic sizes read at run time
    _, _, oh, ow = out_shape
    i32 = lambda v: extern_arg(v, "int32")  # noqa: E731
    i64 = lambda v: extern_arg(v, "int64")  # noqa: E731
    blocks = max(strides) > 1

    def body(ins, outs):
        def loop(kind):  # a loop variable of its own per loop (TIR defines each once)
            index = tirx.Var("task" if blocks else "plane", "int64")
            call = tirx.call_extern("int32", "onnxforge_dwconv2d_block" if blocks else "onnxforge_dwconv2d_plane",
                                    tirx.Cast("int32", index), i32(c), i32(h), i32(wd), i32(oh), i32(ow), i32(kh),
                                    i32(kw), i32(strides[0]), i32(strides[1]), i32(pad[0]), i32(pad[1]), ins[0].data,
                                    ins[1].data, *epilogue_args(ins, outs, 1, **act), outs[0].data)
            count = (i64(nb) * tirx.floordiv(i64(c) + (DW_LANES - 1), DW_LANES)
                     * tirx.floordiv(i64(oh) + (DW_BAND - 1), DW_BAND)) if blocks else i64(nb) * i64(c)
            return tirx.For(index, tirx.const(0, "int64"), count, kind, tirx.Evaluate(call))

        if not DW_PARALLEL:
            return loop(tirx.ForKind.SERIAL)
        sizes = [int(d.value) if isinstance(d, tirx.IntImm) else d for d in (nb, c, oh, ow, kh, kw)]
        if all(isinstance(d, int) for d in sizes):
            small = 2 * math.prod(sizes) < DW_PARALLEL_MIN_FLOPS
            return loop(tirx.ForKind.SERIAL if small else tirx.ForKind.PARALLEL)
        # sizes known at run time (a package for any image size): the same choice, made then
        flops = tirx.const(2, "int64")
        for d in sizes:
            flops = flops * extern_arg(d, "int64")
        return tirx.IfThenElse(flops < tirx.const(DW_PARALLEL_MIN_FLOPS, "int64"), loop(tirx.ForKind.SERIAL),
                               loop(tirx.ForKind.PARALLEL))

    return te.extern([out_shape], [x, w, *rest], body, name=name, dtype="float32")


def _conv_extern(kernel, x, w, rest, *, co, kh, kw, out_shape, strides, pad, dil, groups, name, act):
    """te.extern calling conv.c's `kernel` with (nb, ci, h, w, co, oh, ow, kh, kw, sh, sw,
    pad top, pad left, dh, dw, groups), the tensors and the epilogue (a bias per channel)."""
    nb, ci, h, wd = x.shape  # ints, or symbolic sizes read at run time
    _, _, oh, ow = out_shape

    def body(ins, outs):
        dims = [extern_arg(v, "int32") for v in (nb, ci, h, wd, co, oh, ow, kh, kw, *strides, pad[0], pad[1], *dil,
                                                  groups)]
        return tirx.call_extern("int32", kernel, *dims, ins[0].data, ins[1].data, outs[0].data,
                                *epilogue_args(ins, outs, 2, **act))

    return te.extern([out_shape], [x, w, *rest], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype="float32")


def conv_packed_te(x, bp, *rest, co, kh, kw, out_shape, strides, pad, dil, name, **act):
    """te.extern: out = act(conv2d(x, w) [+ bias]) (NCHW, groups 1) through
    onnxforge_conv2d_packed (gemm_packed.c: direct, over `bp`, the weight packed as
    pack_weight(w.reshape(co, -1), trans=True)); rest: the bias."""
    nb, ci, h, wd = x.shape  # ints, or symbolic sizes read at run time
    _, _, oh, ow = out_shape

    def body(ins, outs):
        dims = [extern_arg(v, "int32") for v in (nb, ci, h, wd, co, oh, ow, kh, kw, *strides, pad[0], pad[1], *dil)]
        return tirx.call_extern("int32", "onnxforge_conv2d_packed", *dims, ins[0].data, ins[1].data, outs[0].data,
                                *epilogue_args(ins, outs, 2, **act))

    return te.extern([out_shape], [x, bp, *rest], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype="float32")


def conv_transpose_te(x, w, *rest, out_shape, strides, pad, dil, groups, name, **act):
    """te.extern: out = act(conv_transpose2d(x, w) [+ bias]) (NCHW / IOHW) through
    onnxforge_conv2d_transpose (conv.c: sgemm then col2im, by blocks); rest: the bias."""
    _, _, kh, kw = w.shape
    return _conv_extern("onnxforge_conv2d_transpose", x, w, rest, co=out_shape[1], kh=kh, kw=kw, out_shape=out_shape,
                        strides=strides, pad=pad, dil=dil, groups=groups, name=name, act=act)


def conv_te(x, w, *rest, out_shape, strides, pad, dil, groups, name, **act):
    """te.extern: out = act(conv2d(x, w) [+ bias]) (NCHW / OIHW) through onnxforge_conv2d
    (conv.c: im2col per block of pixels, in cache, then sgemm); rest: the bias."""
    co, _, kh, kw = w.shape
    return _conv_extern("onnxforge_conv2d", x, w, rest, co=co, kh=kh, kw=kw, out_shape=out_shape, strides=strides,
                        pad=pad, dil=dil, groups=groups, name=name, act=act)


def _rows_te(kernel, x, *, rows, n, out_shape, name):
    """te.extern: kernels.c's `kernel`(rows, n, x, y) over x's `rows` rows of n values."""

    def body(ins, outs):
        return tirx.call_extern("int32", kernel, extern_arg(rows, "int64"), extern_arg(n, "int32"), ins[0].data,
                                outs[0].data)

    return te.extern([out_shape], [x], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name, dtype="float32")


def softmax_te(x, *, rows, n, name):
    """te.extern: softmax of x over its last axis (n values per row, `rows` rows) via
    kernels.c's onnxforge_softmax_rows."""
    return _rows_te("onnxforge_softmax_rows", x, rows=rows, n=n, out_shape=x.shape, name=name)


def mean_te(x, *, rows, n, out_shape, name):
    """te.extern: the mean of each of x's `rows` rows of n values (its trailing axes)
    via kernels.c's onnxforge_mean_rows, shaped out_shape."""
    return _rows_te("onnxforge_mean_rows", x, rows=rows, n=n, out_shape=out_shape, name=name)


def extreme_te(x, *, top, rows, n, out_shape, name):
    """te.extern: the max (top) or min of each of x's `rows` rows of n values (its
    trailing axes) via kernels.c's onnxforge_max_rows / onnxforge_min_rows."""
    kernel = "onnxforge_max_rows" if top else "onnxforge_min_rows"
    return _rows_te(kernel, x, rows=rows, n=n, out_shape=out_shape, name=name)


def layer_norm_te(x, gamma, beta, *, rows, n, epsilon, name):
    """te.extern: layer normalization of x over its last axis (n values per row) with
    scale gamma and bias beta (n values each), via kernels.c's onnxforge_layer_norm_rows."""

    def body(ins, outs):
        return tirx.call_extern("int32", "onnxforge_layer_norm_rows", extern_arg(rows, "int64"), extern_arg(n, "int32"),
                                ins[0].data, ins[1].data, ins[2].data, tirx.const(float(epsilon), "float32"),
                                outs[0].data)

    return te.extern([x.shape], [x, gamma, beta], lambda ins, outs: tirx.Evaluate(body(ins, outs)), name=name,
                     dtype="float32")
