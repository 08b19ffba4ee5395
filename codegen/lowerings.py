"""Built-in lowerings for ops tvm.relax.frontend.onnx lacks (see registry.py for
the signature). Each is small and written against Relax ops only."""
from __future__ import annotations

import math

import tvm
from tvm import relax

from ..ir import LoweringError
from . import quant  # noqa: F401  (DequantizeLinear with block_size; int4 unpacking)
from . import integer  # noqa: F401
from . import recurrent  # noqa: F401  (RNN, GRU, LSTM, DynamicQuantizeLSTM)
from . import resize  # noqa: F401
from . import onnx_ops  # noqa: F401
from . import onnx_attention  # noqa: F401  (ONNX-domain Attention)
from . import shape_ops  # noqa: F401  (ConstantOfShape, Expand, Squeeze, Pad, CenterCropPad)
from . import elementwise_ops  # noqa: F401  (Pow)
from . import llm_ops  # noqa: F401  (RotaryEmbedding, TensorScatter, CausalConvWithState, LinearAttention)
from . import ml_ops  # noqa: F401  (TfIdfVectorizer, ai.onnx.ml Binarizer / ArrayFeatureExtractor)
from . import nn_ops  # noqa: F401  (BatchNormalization training mode, Elu, AffineGrid, MaxPool indices, ConvTranspose output_shape)
from . import detection_ops  # noqa: F401  (NonMaxSuppression)
from . import linalg_ops  # noqa: F401  (Det)
from .registry import register_lowering


@register_lowering("Swish")
def swish(bb, node, inputs):
    """x * sigmoid(alpha * x): ONNX opset 24, and what the `fuse{patterns=silu}` pass emits."""
    return _x_sigmoid(inputs[0], float(node.attributes.get("alpha", 1.0)))


def _x_sigmoid(x, alpha: float):
    dtype = x.ty.dtype.dtype
    gate = x if alpha == 1.0 else relax.op.multiply(x, relax.const(alpha, dtype))
    return relax.op.multiply(x, relax.op.sigmoid(gate))


@register_lowering("QuickGelu", domain="com.microsoft")
def quick_gelu(bb, node, inputs):
    """x * sigmoid(alpha * x) (alpha 1.702 by default): what `fuse` makes of CLIP's GELU."""
    return _x_sigmoid(inputs[0], float(node.attributes.get("alpha", 1.702)))


def _constant_array(expr):
    """The numpy value of a Relax constant (TVM 0.27: `.value`; older: `.data`), else None."""
    data = getattr(expr, "value", None)
    if data is None:
        data = getattr(expr, "data", None)
    return data.numpy() if hasattr(data, "numpy") else None


@register_lowering("Clip")
def clip(bb, node, inputs):
    """Clip with constant bounds as one relax clip (which DispatchBLAS folds into the
    epilogue of the conv/matmul before it, e.g. ReLU6); the frontend's maximum /
    minimum pair otherwise (bounds computed at run time, NaN or crossed bounds, integers)."""
    from tvm.relax.frontend.onnx.onnx_frontend import Clip

    x = inputs[0]
    legacy = "min" in node.attributes or "max" in node.attributes  # opset < 11: bounds are attributes
    if legacy:
        bounds = [float(node.attributes.get("min", -math.inf)), float(node.attributes.get("max", math.inf))]
    else:
        bounds = []
        for i in (1, 2):
            bound = inputs[i] if len(inputs) > i else None
            value = None if bound is None else _constant_array(bound)
            if bound is not None and (value is None or value.size != 1):
                bounds = None
                break
            bounds.append((-math.inf if i == 1 else math.inf) if bound is None else float(value.reshape(())))
    # min > max: ONNX gives max everywhere, relax's clip min
    if bounds is not None and bounds[0] <= bounds[1] and isinstance(x.ty, relax.TensorType) \
            and str(x.ty.dtype.dtype) == "float32":
        return relax.op.clip(x, bounds[0], bounds[1])
    if legacy:
        return Clip._impl_v1(bb, inputs, dict(node.attributes), {})
    return Clip._impl_v13(bb, list(inputs) + [None] * (3 - len(inputs)), {}, {})


_ATTENTION_DEFAULTS = {"unidirectional": 0, "do_rotary": 0, "past_present_share_buffer": 0}


@register_lowering("Attention", domain="com.microsoft")
def attention(bb, node, inputs):
    """com.microsoft Attention (what `fuse` makes of BERT-style self-attention) as
    relax's attention, with symbolic batch and sequence dims: the frontend's
    converter reads every dim as a constant, so MiniLM under -O2 compiled only
    pinned. A 2-D key mask (B, S) broadcasts per batch as (B, 1, 1, S)."""
    attrs = dict(node.attributes)
    for name, default in _ATTENTION_DEFAULTS.items():
        if attrs.get(name, default) != default:
            raise LoweringError(f"Attention with {name}={attrs[name]} is not supported")
    for i, what in ((4, "past key/value state"), (6, "past_sequence_length")):
        if len(inputs) > i and inputs[i] is not None:
            raise LoweringError(f"Attention with {what} (input {i}) is not supported")
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].name:
        raise LoweringError("Attention's present-state output is not supported")
    x, weight = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    bias, mask, qk_bias = (bb.normalize(inputs[i]) if len(inputs) > i and inputs[i] is not None else None
                           for i in (2, 3, 5))
    if x.ty.ndim != 3:
        raise LoweringError(f"Attention input 0 must be (batch, sequence, hidden), got rank {x.ty.ndim}")
    batch, seq, _ = x.ty.shape.values
    heads = int(attrs["num_heads"])
    total = weight.ty.shape.values[1]
    if not hasattr(total, "value"):
        raise LoweringError("Attention's packed QKV weight needs a static width")
    hq, hk, hv = attrs.get("qkv_hidden_sizes") or [int(total.value) // 3] * 3
    if hq != hk or hq % heads or hv % heads:
        raise LoweringError(f"Attention qkv_hidden_sizes={[hq, hk, hv]} with num_heads={heads} is not supported")
    op, dtype = relax.op, x.ty.dtype.dtype
    qkv = op.matmul(x, weight)
    if bias is not None:
        qkv = op.add(qkv, bias)
    parts = bb.normalize(op.split(qkv, [hq, hq + hk], axis=2))
    q, k, v = (bb.normalize(op.reshape(relax.TupleGetItem(parts, i), (batch, seq, heads, size // heads)))
               for i, size in enumerate((hq, hk, hv)))
    if mask is not None:
        if mask.ty.ndim not in (2, 3):
            raise LoweringError(f"Attention mask_index of rank {mask.ty.ndim} is not supported (2-D key masks and 3-D masks are)")
        mask_shape = (batch, 1, 1, seq) if mask.ty.ndim == 2 else (batch, 1, seq, seq)
        filler = float(attrs.get("mask_filter_value", -10000.0))
        keep = op.astype(op.subtract(relax.const(1, mask.ty.dtype.dtype), mask), dtype)
        mask = op.reshape(op.multiply(keep, relax.const(filler, dtype)), mask_shape)
        qk_bias = mask if qk_bias is None else op.add(qk_bias, mask)
    if qk_bias is not None:
        qk_bias = _unbroadcast(bb, qk_bias)
    scale = attrs.get("scale")
    if scale is not None and math.isclose(float(scale), 1.0 / math.sqrt(hq // heads), rel_tol=1e-6):
        scale = None  # the default: keeps the call in the form DispatchBLAS rewrites
    if all(hasattr(d, "value") for d in (batch, seq)):  # DispatchBLAS sends its two products to sgemm
        out = op.nn.attention(q, k, v, None if qk_bias is None else bb.normalize(qk_bias),
                              scale=None if scale is None else relax.FloatImm("float32", float(scale)))
    else:  # spelled out: LLVM took over 10 minutes on relax's legalized attention with symbolic dims
        scores = op.matmul(op.permute_dims(q, [0, 2, 1, 3]), op.permute_dims(k, [0, 2, 3, 1]))
        scores = op.multiply(scores, relax.const(1.0 / math.sqrt(hq // heads) if scale is None else float(scale), dtype))
        if qk_bias is not None:
            scores = op.add(scores, qk_bias)
        probs = op.nn.softmax(bb.normalize(scores), axis=-1)
        out = op.permute_dims(op.matmul(probs, op.permute_dims(v, [0, 2, 1, 3])), [0, 2, 1, 3])
    return op.reshape(bb.normalize(out), (batch, seq, hv))


def _unbroadcast(bb, bias):
    """The source of a broadcast_to (fusion expands a (B, 1, 1, S) mask to the
    scores' shape for onnxruntime): attention broadcasts it anyway, and a
    broadcast to a run-time shape leaves dims that the VM cannot compute."""
    binding = bb.lookup_binding(bias) if isinstance(bias, relax.Var) else bias  # a Var, or the call itself
    if isinstance(binding, relax.Call) and binding.op.same_as(tvm.ir.Op.get("relax.broadcast_to")) \
            and binding.args[0].ty.ndim == 4:
        return binding.args[0]
    return bias
