"""attention: BERT-style multi-head self-attention (separate Q/K/V projections
of one input, heads split by Reshape+Transpose, scores scaled by 1/sqrt(head
size), an optional additive mask, Softmax, heads merged back) becomes one
com.microsoft Attention node: the fused attention op that both onnxruntime and
TVM's Relax ONNX frontend convert. TVM has no MultiHeadAttention converter,
rejects the `scale` and `unidirectional` attributes, and (0.27) fails on a
`mask_index` without an `attention_bias`; onnxruntime wants `attention_bias` as
[B or 1, N or 1, S, S]. So the model's own additive mask goes in as
`attention_bias`, expanded from [B, 1, 1, S] to [B, N, S, S]: the same
arithmetic as the original for any mask values. Under standard_only it
stays unfused."""
from __future__ import annotations

import math

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype as onnx_dtype

from ...ir.pattern import Const, Matcher, Op, Var
from ..rewrite import RuleSet, rule
from . import attention_forms

_X = Var("x", rank=3)


def _projection(tag: str) -> Op:
    matmul = Op("MatMul", _X, Const(tag + "_w", rank=2), name=tag + "_mm")
    projection = Op("Add", matmul, Const(tag + "_b", rank=1)) | matmul
    # Whisper and BART scale Q at the projection (and call SDPA with scale 1)
    return Op("Mul", projection, Const(tag + "_s", scalar=True)) | projection


def _heads(tag: str, perm: list[int]) -> Op:
    split = Op("Reshape", _projection(tag), Var(), name=tag + "_split")
    return Op("Transpose", split, attrs={"perm": perm})


_Q, _KT, _V = _heads("q", [0, 2, 1, 3]), _heads("k", [0, 2, 3, 1]), _heads("v", [0, 2, 1, 3])
_SCORES = Op("MatMul", _Q, _KT)
_SCALED = (Op("Mul", _SCORES, Const("scale", scalar=True))
           | Op("Div", _SCORES, Const("inverse_scale", scalar=True))
           | Op("MatMul", Op("Mul", _Q, Const("scale", scalar=True)), _KT)
           | _SCORES)
_SOFTMAX = Op("Softmax", Op("Add", _SCALED, Var("mask_bias")) | _SCALED, name="softmax")
# SDPA exports zero the rows that a mask hides entirely (NaN after Softmax).
_PROBS = Op("Where", Op("IsNaN", _SOFTMAX), Const("nan_fill", value=0.0), _SOFTMAX, name="nan_guard") | _SOFTMAX
_MERGED = Op("Reshape", Op("Transpose", Op("MatMul", _PROBS, _V), attrs={"perm": [0, 2, 1, 3]}), Var(), name="merged")

# What _expanded_bias builds, so that the other layers find and share it.
_SHAPE = Op("Shape", Var("bias"))
_EXPANDED = Op("Expand", Var("bias"), Op("Concat", Op("Gather", _SHAPE, Const("batch_axis")), Const("heads"),
                                          Op("Gather", _SHAPE, Const("seq_axes"))))


def _same_dims(a, b) -> bool:
    return len(a) == len(b) and all(x is not None and x == y for x, y in zip(a, b))


def _heads_shape(m, tag: str, x) -> tuple[int, int] | None:
    """(heads, head size) when the Reshape only splits the last axis of [B, S, H]."""
    shape = m[tag + "_split"].shape
    if shape is None or len(shape) != 4 or not _same_dims(shape[:2], x.shape[:2]):
        return None
    heads, size = shape[2], shape[3]
    if not (isinstance(heads, int) and isinstance(size, int)) or m.const(tag + "_w").shape[1] != heads * size:
        return None
    if tag + "_b" in m and m.const(tag + "_b").size != heads * size:
        return None  # a broadcast bias: not the per-column bias Attention takes
    return heads, size


def _dim_is(dim, *allowed) -> bool:
    return dim is not None and any(dim == a for a in allowed)


def _expanded_bias(b, bias, num_heads: int):
    """[B, 1, 1 or S, S] -> [B, N, S, S] by Expand to a target taken from the
    bias's own shape (so the sequence length may stay symbolic). The target is
    the whole output shape because TVM lowers a computed Expand target as
    broadcast_to, and its attention kernel does not broadcast a computed-shape
    bias over heads. Layers share it. A static shape gets a constant target: a
    computed one reaches TVM as tensor_to_shape + match_cast, which TVM 0.27's CUDA
    pipeline allocates before computing it ("has not been computed")."""
    shape = bias.shape
    if shape is not None and all(isinstance(d, int) for d in shape):
        target = [shape[0], num_heads, shape[3], shape[3]]
        for user, _ in bias.uses:
            given = user.inputs[1].const_value() if user.op_type == "Expand" and user.inputs[0] is bias and \
                user.inputs[1] is not None else None
            if given is not None and given.tolist() == target:
                return user.outputs[0]
        return b.op("Expand", bias, b.const(np.array(target, np.int64), name="attention_bias_shape"), name="attention_bias")
    matcher = Matcher(b.model.opset_imports)
    for user, _ in bias.uses:  # an earlier fusion of another layer made it already
        found = matcher.match(_EXPANDED, user.outputs[0]) if user.op_type == "Expand" else None
        if (found is not None and found["bias"] is bias and found.const("batch_axis").tolist() == [0]
                and found.const("heads").tolist() == [num_heads] and found.const("seq_axes").tolist() == [3, 3]):
            return user.outputs[0]
    shape = b.op("Shape", bias)
    target = b.op("Concat", b.op("Gather", shape, b.const(np.array([0], np.int64), name="batch_axis"), axis=0),
                  b.const(np.array([num_heads], np.int64), name="heads"),
                  b.op("Gather", shape, b.const(np.array([3, 3], np.int64), name="seq_axes"), axis=0), axis=0)
    return b.op("Expand", bias, target, name="attention_bias")


def _uniform(value, depth: int = 0):
    """The one value every element of `value` holds, when the graph says so: a
    constant, or Expand / Cast / Where of such (transformers builds an all-true
    mask for ViT, and the dynamo export keeps it as Where(Expand(True), 0, -inf))."""
    array = value.const_value()
    if array is not None:
        flat = np.asarray(array).reshape(-1)
        return flat[0].item() if flat.size and (flat == flat[0]).all() else None
    node = value.producer
    if node is None or depth > 8 or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Expand":
        return _uniform(node.inputs[0], depth + 1)
    if node.op_type == "Cast":
        inner = _uniform(node.inputs[0], depth + 1)
        return None if inner is None else np.asarray(inner).astype(onnx_dtype(node.attr("to"))).item()
    if node.op_type == "Where":
        cond = _uniform(node.inputs[0], depth + 1)
        return None if cond is None else _uniform(node.inputs[1 if cond else 2], depth + 1)
    return None


def _attention_bias(b, bias, x, num_heads: int):
    """The additive mask as Attention's attention_bias, or None if its shape does
    not broadcast as [B or 1, N or 1, S or 1, S] over the scores."""
    shape, (batch, seq) = bias.shape, x.shape[:2]
    if shape is None or len(shape) != 4 or bias.dtype != x.dtype:
        return None
    if not (_dim_is(shape[0], batch, 1) and _dim_is(shape[1], num_heads, 1) and _dim_is(shape[3], seq)):
        return None
    if _dim_is(shape[1], num_heads) and _dim_is(shape[2], seq):
        return bias
    return _expanded_bias(b, bias, num_heads) if _dim_is(shape[2], seq, 1) else None


def rules(standard_only: bool = False) -> RuleSet:
    @rule(_MERGED, needs_shapes=True)
    def attention(m, b):
        if standard_only:
            return None
        x = m["x"]
        heads = {_heads_shape(m, t, x) for t in "qkv"}
        if len(heads) != 1 or None in heads:
            return None
        num_heads, size = heads.pop()
        merged = m["merged"].shape
        if merged is None or not _same_dims(merged, tuple(x.shape[:2]) + (num_heads * size,)):
            return None
        axis = m.attr("softmax", "axis", -1)
        if axis not in (-1, 3):
            return None
        scale = (float(m.const("scale").reshape(())) if "scale" in m
                 else 1.0 / float(m.const("inverse_scale").reshape(())) if "inverse_scale" in m else 1.0)
        # Attention scales by 1/sqrt(head size), and TVM's converter takes no other
        # scale: any other (T5's 1, a model's own temperature) goes into Q's weights.
        q_factor = scale * math.sqrt(size)
        if math.isclose(q_factor, 1.0, rel_tol=1e-6):
            q_factor = 1.0
        bias_input = None
        if "mask_bias" in m and _uniform(m["mask_bias"]) == 0 and len(m["mask_bias"].shape or ()) == 4:
            pass  # a mask that hides nothing (shape checked: it cannot broadcast the scores bigger)
        elif "mask_bias" in m:
            bias_input = _attention_bias(b, m["mask_bias"], x, num_heads)
            if bias_input is None:
                return None
        dtype = m.const("q_w").dtype
        factors = {t: float(m.const(t + "_s").reshape(())) if t + "_s" in m else 1.0 for t in "qkv"}
        factors["q"] *= q_factor
        weight = np.concatenate([m.const(t + "_w") * factors[t] for t in "qkv"], axis=1)
        bias = np.concatenate([m.const(t + "_b") * factors[t] if t + "_b" in m else np.zeros(num_heads * size, dtype)
                               for t in "qkv"])
        inputs = [x, b.const(weight.astype(dtype), name="qkv_weight"), b.const(bias.astype(dtype), name="qkv_bias")]
        if bias_input is not None:
            inputs += [None, None, bias_input]  # no mask_index, no past: attention_bias is input 5
        out = b.op("Attention", *inputs, domain="com.microsoft", num_heads=num_heads)
        if "nan_guard" in m.nodes:  # rows the mask hides entirely: 0, as the original
            out = b.op("Where", b.op("IsNaN", out), b.const(np.zeros((), dtype), name="nan_fill"), out)
        return out

    return RuleSet(attention) if standard_only else RuleSet(attention, attention_forms.rules())
