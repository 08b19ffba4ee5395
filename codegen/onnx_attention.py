"""ONNX-domain Attention (opsets 23-25) lowered to Relax; TVM's frontend sends it to
its com.microsoft converter. Registered from codegen/lowerings.py like onnx_ops."""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from ..ir import LoweringError
from .op_helpers import _const, _dims, _dtype, _input, _static
from .registry import register_lowering

op = relax.op


def _matmul(bb, a, b, dtype):
    """a @ b; half-precision products accumulate in float32 (as numpy's and
    onnxruntime's do), rounded once at the end."""
    if dtype in ("float16", "bfloat16"):
        return bb.normalize(op.astype(op.matmul(a, b, out_dtype="float32"), dtype))
    return bb.normalize(op.matmul(a, b))


@register_lowering("Attention")
def attention(bb, node, inputs):
    """ONNX Attention (opsets 23-25): 3-D inputs with q_num_heads / kv_num_heads
    or 4-D (batch, heads, seq, head_size); grouped-query attention (each KV head
    repeated for Hq / Hkv query heads); past_key / past_value concatenated into the
    present outputs; bool or additive attn_mask (shorter than the total KV length:
    padded as masked); is_causal aligned bottom-right (offset = past length, or
    nonpad_kv_seqlen - q_len per batch); left/right window sizes; softcap;
    softmax_precision; qk_matmul_output in modes 0-3. Fully masked query rows give
    zeros, as onnx's reference does. Follows onnx.reference's op_attention."""
    attrs = node.attributes
    q, k, v = (bb.normalize(x) for x in inputs[:3])
    mask, past_key, past_value, nonpad = (None if x is None else bb.normalize(x)
                                          for x in (_input(inputs, i) for i in (3, 4, 5, 6)))
    if (past_key is None) != (past_value is None):
        raise LoweringError("Attention: past_key and past_value must be given together")
    if nonpad is not None and past_key is not None:
        raise LoweringError("Attention: nonpad_kv_seqlen cannot be combined with past_key / past_value")
    dtype = _dtype(q)
    rank = q.ty.ndim
    if rank not in (3, 4) or k.ty.ndim != rank or v.ty.ndim != rank:
        raise LoweringError(f"Attention: Q, K, V must all be 3-D or all 4-D, got ranks {q.ty.ndim}, {k.ty.ndim}, {v.ty.ndim}")
    qd, kd, vd = _dims(q), _dims(k), _dims(v)
    if rank == 3:
        hq, hkv = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
        if hq is None or hkv is None:
            raise LoweringError("Attention with 3-D inputs needs q_num_heads and kv_num_heads")
        hq, hkv = int(hq), int(hkv)

        def heads(x, d, n, what):
            size = _static(d[2], f"Attention's {what} hidden size")
            if size % n:
                raise LoweringError(f"Attention: {what} hidden size {size} is not a multiple of {n} heads")
            return bb.normalize(op.permute_dims(op.reshape(x, (d[0], d[1], n, size // n)), [0, 2, 1, 3]))

        q, k, v = heads(q, qd, hq, "Q"), heads(k, kd, hkv, "K"), heads(v, vd, hkv, "V")
        qd, kd, vd = _dims(q), _dims(k), _dims(v)
    else:
        hq, hkv = _static(qd[1], "Attention's Q head count"), _static(kd[1], "Attention's K head count")
    head_size = _static(qd[3], "Attention's head size")
    scale = attrs.get("scale")
    scale = 1.0 / math.sqrt(head_size) if scale is None else float(scale)
    s = _const(np.sqrt(np.float64(scale)).astype(dtype), dtype)  # sqrt(scale) on Q and on K, cast first

    if past_key is not None:
        k = bb.normalize(op.concat([past_key, k], axis=2))
        v = bb.normalize(op.concat([past_value, v], axis=2))
    present_key, present_value = k, v
    q_len = _static(qd[2], "Attention's query length")
    kv_len = _static(_dims(k)[2], "Attention's total key length")
    past_len = 0 if past_key is None else _static(_dims(past_key)[2], "Attention's past length")

    neg_inf = _const(-np.inf, dtype)
    zero = _const(0, dtype)
    i_idx = np.arange(q_len, dtype=np.int64).reshape(q_len, 1)
    j_idx = np.arange(kv_len, dtype=np.int64).reshape(1, kv_len)
    offsets = None  # per-batch offsets (B, 1, 1) for an external cache, else the scalar past_len
    if nonpad is not None:
        nonpad = bb.normalize(op.astype(nonpad, "int64"))
        offsets = bb.normalize(op.reshape(bb.normalize(op.subtract(nonpad, _const(q_len, "int64"))), (-1, 1, 1)))

    def allowed_where(rule):
        """An additive bias: 0 where rule(diff) holds, -inf elsewhere, with
        diff = (i + offset) - j; (q, kv) for a scalar offset, (B, 1, q, kv) per batch."""
        if offsets is None:
            ok = rule(i_idx + past_len - j_idx)
            return _const(np.where(ok, 0, -np.inf), dtype)
        diff = bb.normalize(op.subtract(op.add(_const(i_idx, "int64"), offsets), _const(j_idx, "int64")))
        bias = bb.normalize(op.where(rule(diff), zero, neg_inf))
        return op.reshape(bias, (-1, 1, q_len, kv_len))

    if mask is not None:
        md = _dims(mask)
        pad = kv_len - _static(md[-1], "Attention's mask length")
        if pad < 0:
            raise LoweringError(f"Attention: attn_mask is longer ({md[-1]}) than the total key length {kv_len}")
        is_bool = _dtype(mask) == "bool"
        if pad:
            fill_shape = [_static(d, "Attention's mask dims") for d in md[:-1]] + [pad]
            fill = np.zeros(fill_shape, bool) if is_bool else np.full(fill_shape, -np.inf, dtype)
            mask = bb.normalize(op.concat([mask, relax.const(fill)], axis=-1))
        if is_bool:
            mask = bb.normalize(op.where(mask, zero, neg_inf))
        elif _dtype(mask) != dtype:
            mask = bb.normalize(op.astype(mask, dtype))
    bias = _const(np.zeros((q_len, kv_len)), dtype)
    if mask is not None:
        bias = bb.normalize(op.add(bias, mask))
    if attrs.get("is_causal", 0):
        bias = bb.normalize(op.add(bias, allowed_where(
            lambda d: d >= 0 if isinstance(d, np.ndarray) else op.greater_equal(d, relax.const(0, "int64")))))
    left, right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
    if left >= 0 or right >= 0:
        def window(d):
            if isinstance(d, np.ndarray):
                ok = np.ones_like(d, dtype=bool)
                if left >= 0:
                    ok &= d <= left
                if right >= 0:
                    ok &= -d <= right
                return ok
            ok = None
            if left >= 0:
                ok = op.less_equal(d, relax.const(left, "int64"))
            if right >= 0:
                r = op.greater_equal(d, relax.const(-right, "int64"))
                ok = r if ok is None else op.logical_and(ok, r)
            return ok
        bias = bb.normalize(op.add(bias, allowed_where(window)))
    if nonpad is not None:
        keep = op.less(_const(j_idx, "int64"), bb.normalize(op.reshape(nonpad, (-1, 1))))  # (B, kv)
        pad_bias = bb.normalize(op.where(keep, zero, neg_inf))
        bias = bb.normalize(op.add(bias, op.reshape(pad_bias, (-1, 1, 1, kv_len))))

    if hq != hkv:
        if hq % hkv:
            raise LoweringError(f"Attention: q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
        k = bb.normalize(op.repeat(k, hq // hkv, axis=1))
        v = bb.normalize(op.repeat(v, hq // hkv, axis=1))
    qk = _matmul(bb, op.multiply(q, s), op.permute_dims(op.multiply(k, s), [0, 1, 3, 2]), dtype)
    softcap = float(attrs.get("softcap", 0.0) or 0.0)
    if softcap > 0:
        cap = _const(softcap, dtype)
        qk = bb.normalize(op.multiply(op.tanh(op.divide(qk, cap)), cap))
    qk_out = qk
    scores = bb.normalize(op.add(qk, bias))
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    if mode == 2:
        qk_out = scores
    precision = attrs.get("softmax_precision")
    if precision is not None:
        import onnx.helper

        sm_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(precision))).name
        if sm_dtype != dtype:
            scores = op.astype(scores, sm_dtype)
    probs = bb.normalize(op.nn.softmax(bb.normalize(scores), axis=-1))
    # decided on the bias, not the logits; not max(bias) == -inf: TVM's max starts from the lowest finite value
    open_keys = op.sum(op.astype(op.not_equal(bias, neg_inf), "int32"), axis=-1, keepdims=True)
    masked_row = op.equal(open_keys, relax.const(0, "int32"))
    probs = bb.normalize(op.where(masked_row, _const(0, _dtype(probs)), probs))
    if mode == 3:
        qk_out = probs
    if _dtype(probs) != dtype:
        probs = op.astype(probs, dtype)
    if mode not in (0, 1, 2, 3):
        raise LoweringError(f"Attention: qk_matmul_output_mode={mode} is not one of 0-3")
    if _dtype(qk_out) != dtype:
        qk_out = op.astype(qk_out, dtype)
    y = _matmul(bb, probs, v, dtype)
    if rank == 3:
        yd = _dims(y)
        y = op.reshape(op.permute_dims(y, [0, 2, 1, 3]), (yd[0], yd[2], hq * _static(yd[3], "Attention's V head size")))
    outs = [y, present_key, present_value, qk_out]
    return outs[:max(1, len(node.outputs))]


