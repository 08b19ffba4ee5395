"""ONNX ops of recent language models (opsets 23-27): RotaryEmbedding,
TensorScatter (KV-cache writes), CausalConvWithState (Mamba-style depthwise
causal conv with carried state) and LinearAttention (linear / gated / delta /
gated-delta recurrences, GQA). Written from the ONNX spec and its reference
implementation (onnx/reference/ops). See registry.py for the lowering signature."""
from __future__ import annotations

import math

from tvm import relax, te, tirx

from ..ir import LoweringError
from .op_helpers import _attr_str, _const, _dims, _dtype, _input, _static
from .registry import register_lowering

op = relax.op


def _slice(x, axis: int, begin: int, end: int, stride: int = 1):
    return op.strided_slice(x, axes=[axis], begin=[begin], end=[end], strides=[stride])


@register_lowering("RotaryEmbedding")
def rotary_embedding(bb, node, inputs):
    """Rotate the first rotary_embedding_dim features of each head by the cached
    cos / sin of its position (halves, or interleaved pairs); 4-D input
    (batch, heads, seq, head) or 3-D (batch, seq, heads * head) with num_heads."""
    x = bb.normalize(inputs[0])
    cos, sin = bb.normalize(inputs[1]), bb.normalize(inputs[2])
    positions = _input(inputs, 3)
    interleaved = bool(node.attributes.get("interleaved", 0))
    dims = _dims(x)
    if len(dims) == 4:
        b, h, s, d = dims
        x4 = op.permute_dims(x, [0, 2, 1, 3])  # (B, S, H, D)
    elif len(dims) == 3:
        heads = int(node.attributes.get("num_heads", 0))
        if heads <= 0:
            raise LoweringError("RotaryEmbedding of a 3-D input needs num_heads")
        b, s, hidden = dims
        h, d = heads, _static(hidden, "RotaryEmbedding's hidden size") // heads
        x4 = op.reshape(x, (b, s, h, d))
    else:
        raise LoweringError(f"RotaryEmbedding input of rank {len(dims)} (3 or 4 expected)")
    d = _static(d, "RotaryEmbedding's head size")
    rot = int(node.attributes.get("rotary_embedding_dim", 0)) or d
    x4 = bb.normalize(x4)
    if positions is not None:
        cos, sin = op.take(cos, positions, axis=0), op.take(sin, positions, axis=0)  # (B, S, rot / 2)
    cos, sin = bb.normalize(op.expand_dims(cos, 2)), bb.normalize(op.expand_dims(sin, 2))  # (B, S, 1, rot / 2)
    x_rot = bb.normalize(_slice(x4, 3, 0, rot)) if rot < d else x4
    if interleaved:
        x1, x2 = bb.normalize(_slice(x_rot, 3, 0, rot, 2)), bb.normalize(_slice(x_rot, 3, 1, rot, 2))
    else:
        x1, x2 = bb.normalize(_slice(x_rot, 3, 0, rot // 2)), bb.normalize(_slice(x_rot, 3, rot // 2, rot))
    real = op.subtract(op.multiply(cos, x1), op.multiply(sin, x2))
    imag = op.add(op.multiply(sin, x1), op.multiply(cos, x2))
    if interleaved:
        out = op.reshape(op.stack([real, imag], axis=4), (b, s, h, rot))
    else:
        out = op.concat([real, imag], axis=3)
    if rot < d:
        out = op.concat([out, _slice(x4, 3, rot, d)], axis=3)
    out = bb.normalize(out)
    if len(dims) == 4:
        return op.permute_dims(out, [0, 2, 1, 3])
    return op.reshape(out, dims)


@register_lowering("TensorScatter")
def tensor_scatter(bb, node, inputs):
    """present = past with `update` written along `axis` from write_indices[b] on
    (per batch entry; 0 when absent), wrapping around in circular mode: one TE
    compute over the cache."""
    past, update = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    indices = _input(inputs, 2)
    rank = past.ty.ndim
    axis = int(node.attributes.get("axis", -2))
    axis = axis + rank if axis < 0 else axis
    mode = _attr_str(node, "mode", "linear")
    if mode not in ("linear", "circular"):
        raise LoweringError(f"TensorScatter mode {mode!r} is not linear or circular")
    if indices is None:
        indices = op.zeros([_dims(past)[0]], "int64")
    indices = bb.normalize(op.astype(indices, "int64"))

    def compute(cache, new, where):
        length, count = cache.shape[axis], new.shape[axis]

        def body(*i):
            j = i[axis] - where(i[0])
            if mode == "circular":
                j = tirx.floormod(j, length)
            src = list(i)
            src[axis] = tirx.max(tirx.min(j, count - 1), tirx.const(0, "int64"))
            return tirx.if_then_else(tirx.And(j >= 0, j < count), new(*src), cache(*i))

        return te.compute(cache.shape, body, name="tensor_scatter")

    return bb.emit_te(compute, past, update, indices, primfunc_name_hint="onnx_tensor_scatter")


@register_lowering("CausalConvWithState")
def causal_conv_with_state(bb, node, inputs):
    """Depthwise causal conv1d over [past_state (zeros when absent), input] along
    time, plus bias, then SiLU when asked; the new state is the last k - 1 steps.
    The k taps are summed in float32 (half inputs too), then cast back."""
    x, weight = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    bias, past = _input(inputs, 2), _input(inputs, 3)
    activation = _attr_str(node, "activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise LoweringError(f"CausalConvWithState activation {activation!r} is not none, silu or swish")
    b, c, length = _dims(x)
    k = _static(_dims(weight)[2], "CausalConvWithState's kernel size")
    length = _static(length, "CausalConvWithState's input length")
    dtype = _dtype(x)
    if past is None:
        past = op.zeros((b, c, k - 1), dtype)
    padded = bb.normalize(op.concat([past, x], axis=2) if k > 1 else x)
    wide = padded if dtype == "float32" else bb.normalize(op.astype(padded, "float32"))
    w = bb.normalize(op.astype(weight, "float32") if dtype != "float32" else weight)
    out = None
    for j in range(k):
        tap = op.multiply(_slice(wide, 2, j, j + length), op.reshape(_slice(w, 2, j, j + 1), (c, 1)))
        out = tap if out is None else op.add(out, tap)
    if bias is not None:
        out = op.add(out, op.reshape(op.astype(bias, "float32") if dtype != "float32" else bias, (c, 1)))
    out = bb.normalize(out)
    if dtype != "float32":  # the reference rounds the conv to the input's type before the activation
        out = bb.normalize(op.astype(op.astype(out, dtype), "float32"))
    if activation != "none":
        out = op.multiply(out, op.sigmoid(out))
    out = op.astype(out, dtype) if dtype != "float32" else out
    state = _slice(padded, 2, length, length + k - 1)  # k == 1: empty, sliced (a size-0 constant breaks the package)
    return [out, state]


@register_lowering("LinearAttention")
def linear_attention(bb, node, inputs):
    """The recurrence of onnx's reference, unrolled over the (static) sequence in
    float32: per step, state *= exp(decay) (gated), v <- beta * (v - state^T k)
    (delta), state += k v^T, output = scale * q state (state repeated over the
    query heads of each KV head)."""
    q, k, v = (bb.normalize(inputs[i]) for i in range(3))
    past, decay, beta = _input(inputs, 3), _input(inputs, 4), _input(inputs, 5)
    rule = _attr_str(node, "update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise LoweringError(f"LinearAttention update_rule {rule!r} is not linear, gated, delta or gated_delta")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gating and decay is None or delta and beta is None:
        raise LoweringError(f"LinearAttention update_rule {rule!r} needs its decay / beta inputs")
    hq, hkv = int(node.attributes["q_num_heads"]), int(node.attributes["kv_num_heads"])
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise LoweringError(f"LinearAttention q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")
    b, t, qw = _dims(q)
    t = _static(t, "LinearAttention's sequence length")
    dk = _static(qw, "LinearAttention's query width") // hq
    dv = _static(_dims(v)[2], "LinearAttention's value width") // hkv
    out_dtype = _dtype(q)
    f32 = "float32"

    def heads4(x, n):  # (B, T, n * d) -> (B, n, T, d) in float32
        x = bb.normalize(x)
        d = _static(_dims(x)[2], "LinearAttention's widths") // n
        wide = x if _dtype(x) == f32 else op.astype(x, f32)
        return bb.normalize(op.permute_dims(op.reshape(wide, (b, t, n, d)), [0, 2, 1, 3]))

    q4, k4, v4 = heads4(q, hq), heads4(k, hkv), heads4(v, hkv)
    decay4 = beta4 = None
    if decay is not None:
        decay4 = heads4(decay, hkv)  # (B, Hkv, T, 1) per head, (B, Hkv, T, dk) per key dim
    if beta is not None:
        beta4 = heads4(beta, _static(_dims(beta)[2], "LinearAttention's beta width"))  # (B, 1 or Hkv, T, 1)
    state_dtype = out_dtype if past is None else _dtype(past)
    state = op.zeros((b, hkv, dk, dv), f32) if past is None else op.astype(past, f32)
    state = bb.normalize(state)
    scale = float(node.attributes.get("scale", 0.0) or 0.0) or 1.0 / math.sqrt(dk)
    group = hq // hkv
    outs = []
    for i in range(t):
        q_t, k_t, v_t = (bb.normalize(_slice(x, 2, i, i + 1)) for x in (q4, k4, v4))  # (B, H, 1, d)
        if gating:
            g = op.permute_dims(_slice(decay4, 2, i, i + 1), [0, 1, 3, 2])  # (B, Hkv, 1 or dk, 1)
            state = bb.normalize(op.multiply(state, op.exp(g)))
        if delta:
            retrieved = op.matmul(k_t, state)  # (B, Hkv, 1, dv)
            v_t = bb.normalize(op.multiply(_slice(beta4, 2, i, i + 1), op.subtract(v_t, retrieved)))
        state = bb.normalize(op.add(state, op.multiply(op.permute_dims(k_t, [0, 1, 3, 2]), v_t)))
        read = state if group == 1 else op.repeat(state, group, axis=1)
        outs.append(op.multiply(op.matmul(q_t, read), _const(scale, f32)))  # (B, Hq, 1, dv)
    out = bb.normalize(op.concat(outs, axis=2) if len(outs) > 1 else outs[0])
    out = op.reshape(op.permute_dims(out, [0, 2, 1, 3]), (b, t, hq * dv))
    if out_dtype != f32:
        out = op.astype(out, out_dtype)
    present = state if state_dtype == f32 else op.astype(state, state_dtype)
    return [out, present]
