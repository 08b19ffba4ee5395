"""Lowerings for standard ONNX ops (domain "") that tvm.relax.frontend.onnx lacks,
or lowers wrongly (ONNX Attention, which the frontend mistakes for com.microsoft's,
is in onnx_attention.py). Written against Relax ops only and checked against
onnx's node test cases (tools/conformance.py) and onnx's reference implementation.
See registry.py for the lowering signature."""
from __future__ import annotations


import numpy as np
import tvm
from tvm import relax

from ..ir import LoweringError
from . import reduce_ops  # noqa: F401  (the Reduce* ops)
from .op_helpers import _const, _constant_array, _dims, _dtype, _input, _onnx_dtype, _static, _want
from .registry import register_lowering

op = relax.op


# --------------------------------------------------------------------------- normalization


def _stash(expr, stash_type) -> str:
    import onnx.helper

    stash = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(stash_type))).name
    return stash


@register_lowering("LayerNormalization")
def layer_normalization(bb, node, inputs):
    """LayerNormalization with its optional Mean and InvStdDev outputs (the
    frontend's converter returns placeholders for them and misreads a negative
    axis of a scale of rank > 1). Y alone in float32: relax's layer_norm; otherwise
    spelled out in the stash type (float32 by default), as ONNX's function body."""
    x = bb.normalize(inputs[0])
    scale, bias = bb.normalize(inputs[1]), _input(inputs, 2)
    rank = x.ty.ndim
    if rank < 0:
        raise LoweringError("LayerNormalization needs an input of known rank")
    axis = int(node.attributes.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise LoweringError(f"LayerNormalization axis {node.attributes.get('axis')} is out of range for rank {rank}")
    axes = list(range(axis, rank))
    eps = float(node.attributes.get("epsilon", 1e-5))
    dtype = _dtype(x)
    stash = _stash(x, node.attributes.get("stash_type", 1))
    extra = _want(node, 1) or _want(node, 2)
    if not extra and dtype == "float32" and stash == "float32" and scale.ty.ndim == len(axes) \
            and (bias is None or bias.ty.ndim == len(axes)):
        b = bb.normalize(op.zeros_like(scale)) if bias is None else bias
        return [op.nn.layer_norm(x, scale, b, axes, eps)] + [x] * (len(node.outputs) - 1)
    xs = x if stash == dtype else bb.normalize(op.astype(x, stash))
    mean = bb.normalize(op.mean(xs, axis=axes, keepdims=True))
    d = bb.normalize(op.subtract(xs, mean))
    var = op.mean(op.multiply(d, d), axis=axes, keepdims=True)
    inv = bb.normalize(op.divide(_const(1, stash), op.sqrt(op.add(var, _const(eps, stash)))))
    normalized = op.multiply(d, inv)
    if stash != dtype:
        normalized = op.astype(normalized, dtype)
    y = op.multiply(normalized, scale)
    if bias is not None:
        y = op.add(y, bias)
    return [y, mean, inv][:len(node.outputs)]


@register_lowering("RMSNormalization")
def rms_normalization(bb, node, inputs):
    """RMSNormalization (opset 23): x / sqrt(mean(x^2 over axis..) + eps) * scale,
    in the stash type (the frontend's converter failed to build, a rank mismatch)."""
    x = bb.normalize(inputs[0])
    scale = inputs[1]
    rank = x.ty.ndim
    if rank < 0:
        raise LoweringError("RMSNormalization needs an input of known rank")
    axis = int(node.attributes.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    eps = float(node.attributes.get("epsilon", 1e-5))
    dtype = _dtype(x)
    stash = _stash(x, node.attributes.get("stash_type", 1))
    xs = x if stash == dtype else bb.normalize(op.astype(x, stash))
    ms = op.mean(op.multiply(xs, xs), axis=axes, keepdims=True)
    inv = op.divide(_const(1, stash), op.sqrt(op.add(ms, _const(eps, stash))))
    normalized = op.multiply(xs, inv)
    if stash != dtype:
        normalized = op.astype(normalized, dtype)
    return op.multiply(normalized, scale)


@register_lowering("LpNormalization")
def lp_normalization(bb, node, inputs):
    """x / ||x||_p along one axis, p in {1, 2}; a zero vector stays zero (onnx's reference)."""
    x = bb.normalize(inputs[0])
    axis = int(node.attributes.get("axis", -1))
    p = int(node.attributes.get("p", 2))
    if p == 1:
        norm = op.sum(op.abs(x), axis=[axis], keepdims=True)
    elif p == 2:
        norm = op.sqrt(op.sum(op.multiply(x, x), axis=[axis], keepdims=True))
    else:
        raise LoweringError(f"LpNormalization with p={p}: ONNX allows only 1 and 2")
    norm = bb.normalize(norm)
    zero = _const(0, _dtype(x))
    return op.divide(x, op.where(op.equal(norm, zero), _const(1, _dtype(x)), norm))  # a zero vector stays zero


# --------------------------------------------------------------------------- losses


def _nll(bb, node, logp, target, weight):
    """NegativeLogLikelihoodLoss on log-probabilities (N, C, d1..): the loss per
    element, then the reduction; ignore_index counts neither loss nor weight."""
    dtype = _dtype(logp)
    reduction = node.attributes.get("reduction", "mean")
    if isinstance(reduction, bytes):
        reduction = reduction.decode()
    ignore = node.attributes.get("ignore_index")
    target = bb.normalize(target)
    tdtype = _dtype(target)
    safe = target
    keep = None
    if ignore is not None:
        is_ignored = bb.normalize(op.equal(target, _const(int(ignore), tdtype)))
        safe = bb.normalize(op.where(is_ignored, _const(0, tdtype), target))
        keep = bb.normalize(op.astype(op.logical_not(is_ignored), dtype))
    picked = op.gather_elements(logp, op.expand_dims(safe, 1), axis=1)
    loss = bb.normalize(op.negative(op.squeeze(bb.normalize(picked), [1])))
    w = None
    if weight is not None:
        w = bb.normalize(op.take(weight, safe, axis=0))
        if keep is not None:
            w = bb.normalize(op.multiply(w, keep))
    elif keep is not None:
        w = keep
    if w is not None:
        loss = bb.normalize(op.multiply(loss, w))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return op.sum(loss)
    if reduction != "mean":
        raise LoweringError(f"{node.op_type} reduction {reduction!r} is not one of none, sum, mean")
    if w is None:
        return op.mean(loss)
    return op.divide(op.sum(loss), op.sum(w))


@register_lowering("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(bb, node, inputs):
    x = bb.normalize(inputs[0])
    if x.ty.ndim < 2:
        raise LoweringError("NegativeLogLikelihoodLoss needs an input of rank >= 2 (N, C, ...)")
    return _nll(bb, node, x, inputs[1], _input(inputs, 2))


@register_lowering("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(bb, node, inputs):
    """log_softmax over the class axis (1), then NegativeLogLikelihoodLoss; the
    optional second output is the log-probabilities."""
    x = bb.normalize(inputs[0])
    if x.ty.ndim < 2:
        raise LoweringError("SoftmaxCrossEntropyLoss needs scores of rank >= 2 (N, C, ...)")
    logp = bb.normalize(op.nn.log_softmax(x, axis=1))
    loss = _nll(bb, node, logp, inputs[1], _input(inputs, 2))
    return [loss, logp][:max(1, len(node.outputs))]


# --------------------------------------------------------------------------- elementwise and scans


@register_lowering("Celu")
def celu(bb, node, inputs):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    x = inputs[0]
    dtype = _dtype(x)
    alpha = _const(float(node.attributes.get("alpha", 1.0)), dtype)
    zero = _const(0, dtype)
    neg = op.multiply(alpha, op.subtract(op.exp(op.divide(x, alpha)), _const(1, dtype)))
    return op.add(op.maximum(x, zero), op.minimum(neg, zero))


def _constant_axis(expr, what: str) -> int:
    value = _constant_array(expr)
    if value is None or value.size != 1:
        raise LoweringError(f"{what}: the axis must be a constant (it decides the computation), "
                            "but it is computed at run time")
    return int(value.reshape(()))


@register_lowering("CumProd")
def cum_prod(bb, node, inputs):
    """Cumulative product along an axis; exclusive and reverse. An axis given at
    run time (the output shape does not depend on it): the product along every
    axis of the input, the one asked for selected with where."""
    x = bb.normalize(inputs[0])
    rank = x.ty.ndim
    if rank < 1:
        raise LoweringError("CumProd needs an input of known rank >= 1")
    reverse = bool(node.attributes.get("reverse", 0))
    exclusive = bool(node.attributes.get("exclusive", 0))

    def along(axis):
        data = bb.normalize(op.flip(x, axis)) if reverse else x
        out = bb.normalize(op.cumprod(data, axis=axis, exclusive=exclusive))
        return bb.normalize(op.flip(out, axis)) if reverse else out

    value = _constant_array(inputs[1])
    if value is not None:
        axis = int(value.reshape(()))
        if not -rank <= axis < rank:
            raise LoweringError(f"CumProd axis {axis} is out of range for rank {rank}")
        return along(axis + rank if axis < 0 else axis)
    axis = bb.normalize(op.reshape(inputs[1], ()))
    adt = _dtype(axis)
    out = along(rank - 1)
    for a in range(rank - 2, -1, -1):
        hit = op.logical_or(op.equal(axis, _const(a, adt)), op.equal(axis, _const(a - rank, adt)))
        out = bb.normalize(op.where(hit, along(a), out))
    return out


@register_lowering("ReverseSequence")
def reverse_sequence(bb, node, inputs):
    """Reverse the first sequence_lens[b] steps of each batch entry along the time
    axis, as a gather along that axis (static time and batch extents)."""
    x = bb.normalize(inputs[0])
    lens = bb.normalize(op.astype(inputs[1], "int64"))
    time_axis = int(node.attributes.get("time_axis", 0))
    batch_axis = int(node.attributes.get("batch_axis", 1))
    dims = _dims(x)
    steps = _static(dims[time_axis], "ReverseSequence's time extent")
    t = _const(np.arange(steps, dtype=np.int64).reshape(1, steps), "int64")  # (1, T)
    length = bb.normalize(op.reshape(lens, (-1, 1)))  # (B, 1)
    reversed_ = op.subtract(op.subtract(length, _const(1, "int64")), t)
    index = bb.normalize(op.where(op.less(t, length), reversed_, t))  # (B, T)
    if time_axis < batch_axis:
        index = bb.normalize(op.permute_dims(index, [1, 0]))  # (T, B)
    shape = [1] * len(dims)
    shape[time_axis], shape[batch_axis] = dims[time_axis], dims[batch_axis]
    index = bb.normalize(op.broadcast_to(op.reshape(index, shape), dims))
    return op.gather_elements(x, index, axis=time_axis)


# --------------------------------------------------------------------------- small ops


@register_lowering("BitCast")
def bit_cast(bb, node, inputs):
    """Reinterpret the bits as another type of the same width (opset 26)."""
    from tvm import topi

    x = bb.normalize(inputs[0])
    to = _onnx_dtype(node.attributes["to"])
    if np.dtype(to).itemsize != np.dtype(_dtype(x)).itemsize:
        raise LoweringError(f"BitCast from {_dtype(x)} to {to}: the widths differ")
    if to == _dtype(x):
        return x
    return bb.emit_te(topi.reinterpret, x, to)


@register_lowering("BitShift")
def bit_shift(bb, node, inputs):
    """x << s / x >> s with ONNX's rule for shifts outside [0, width): 0 (a right
    shift of a negative signed value: -1), where C and LLVM leave it undefined."""
    x, s = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    dtype = _dtype(x)
    width = np.iinfo(dtype).bits
    out_of_range = bb.normalize(op.logical_or(op.less(s, _const(0, _dtype(s))), op.greater_equal(s, _const(width, _dtype(s)))))
    safe = bb.normalize(op.where(out_of_range, _const(0, _dtype(s)), s))
    direction = node.attributes.get("direction", "")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction == "LEFT":
        shifted, fill = op.left_shift(x, safe), _const(0, dtype)
    elif direction == "RIGHT":
        shifted = op.right_shift(x, safe)
        fill = _const(0, dtype) if np.dtype(dtype).kind == "u" else \
            op.where(op.less(x, _const(0, dtype)), _const(-1, dtype), _const(0, dtype))
    else:
        raise LoweringError(f"BitShift direction {direction!r} is not LEFT or RIGHT")
    return op.where(out_of_range, fill, shifted)


@register_lowering("IsInf")
def is_inf(bb, node, inputs):
    """isinf restricted by detect_positive / detect_negative (the frontend ignored them)."""
    x = bb.normalize(inputs[0])
    pos = bool(node.attributes.get("detect_positive", 1))
    neg = bool(node.attributes.get("detect_negative", 1))
    inf = bb.normalize(op.isinf(x))
    if pos and neg:
        return inf
    if not pos and not neg:
        return op.zeros(_dims(x), "bool")
    sign = op.greater(x, _const(0, _dtype(x))) if pos else op.less(x, _const(0, _dtype(x)))
    return op.logical_and(inf, sign)


def _fmod(bb, a, b):
    """C's fmod elementwise (exact, unlike a - trunc(a / b) * b), broadcasting a and
    b; half precision through float32 (the remainder of two halves is a half)."""
    from tvm import te

    dtype = _dtype(a)
    wide = "float64" if dtype == "float64" else "float32"
    func = "fmod" if wide == "float64" else "fmodf"
    shape = bb.normalize(op.add(a, b)).ty.shape
    a, b = (bb.normalize(op.broadcast_to(v if dtype == wide else op.astype(v, wide), shape)) for v in (a, b))
    r = bb.emit_te(lambda x, y: te.compute(x.shape, lambda *i: tvm.tirx.call_pure_extern(wide, func, x(*i), y(*i)),
                                           name="fmod"), a, b)
    return r if dtype == wide else bb.normalize(op.astype(r, dtype))


@register_lowering("Mod")
def mod(bb, node, inputs):
    """Float Mod from C's fmod: fmod=1 is fmod, fmod=0 numpy's mod (the remainder
    takes the divisor's sign); x mod inf and x mod 0 as numpy gives them. Integers:
    the frontend's converter."""
    a, b = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    dtype = _dtype(a)
    if np.dtype(dtype).kind != "f":
        from tvm.relax.frontend.onnx.onnx_frontend import Mod

        return Mod._impl_v10(bb, [a, b], dict(node.attributes), {})
    r = _fmod(bb, a, b)
    if node.attributes.get("fmod", 0):
        return r
    zero = _const(0, dtype)
    fix = op.logical_and(op.not_equal(r, zero), op.logical_xor(op.less(r, zero), op.less(b, zero)))
    return op.where(fix, op.add(r, b), r)


@register_lowering("Dropout")
def dropout(bb, node, inputs):
    """Dropout at inference: the input, and an all-true bool mask. training_mode
    true (or computed at run time) draws random numbers: not lowered."""
    x = bb.normalize(inputs[0])
    training = _input(inputs, 2)
    if training is not None:
        value = _constant_array(training)
        if value is None or bool(value.reshape(())):
            raise LoweringError("Dropout with training_mode true or computed at run time (random masks) is not supported")
    if len(node.outputs) < 2:
        return x
    return [x, op.ones(_dims(x), "bool")]


@register_lowering("SpaceToDepth")
def space_to_depth(bb, node, inputs):
    """SpaceToDepth in DCR (the default) and CRD modes."""
    x = bb.normalize(inputs[0])
    n, c, h, w = _dims(x)
    bs = int(node.attributes["blocksize"])
    mode = node.attributes.get("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    perm = {"DCR": [0, 3, 5, 1, 2, 4], "CRD": [0, 1, 3, 5, 2, 4]}.get(mode)
    if perm is None:
        raise LoweringError(f"SpaceToDepth mode {mode!r} is not DCR or CRD")
    t = op.permute_dims(op.reshape(x, (n, c, h // bs, bs, w // bs, bs)), perm)
    return op.reshape(t, (n, c * bs * bs, h // bs, w // bs))


@register_lowering("EyeLike")
def eye_like(bb, node, inputs):
    """Ones on the k-th diagonal of a 2-D tensor of the input's (static) shape, in
    `dtype` (the input's when absent)."""
    x = inputs[0]
    rows, cols = (_static(d, "EyeLike's dims") for d in _dims(x))
    dtype = _onnx_dtype(node.attributes["dtype"]) if "dtype" in node.attributes else _dtype(x)
    return _const(np.eye(rows, cols, int(node.attributes.get("k", 0))), dtype)


# --------------------------------------------------------------------------- run-time sizes


def _slice_along(bb, x, axis, begin, end):
    """x[..., begin:end, ...] along `axis`, begin/end int64 scalars computed at run
    time (the output's extent there is then a run-time dim)."""
    dims = _dims(x)
    rank = len(dims)
    full = bb.normalize(op.shape_to_tensor(op.shape_of(x)))
    onehot = _const(np.eye(rank, dtype=np.int64)[axis], "int64")
    begins = bb.normalize(op.multiply(onehot, begin))
    ends = bb.normalize(op.add(op.multiply(op.subtract(_const(1, "int64"), onehot), full), op.multiply(onehot, end)))
    return bb.normalize(op.dynamic_strided_slice(x, begins, ends, _const(np.ones(rank), "int64")))


@register_lowering("TopK")
def top_k(bb, node, inputs):
    """TopK; a k computed at run time: the whole axis sorted, then the first k
    (the output's extent on that axis is a run-time dim)."""
    x = bb.normalize(inputs[0])
    rank = x.ty.ndim
    axis = int(node.attributes.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    largest = bool(node.attributes.get("largest", 1))
    k_value = _constant_array(inputs[1])
    dims = _dims(x)
    if k_value is not None:
        k = int(k_value.reshape(-1)[0])
        return _topk_pair(bb, x, k, axis, largest)
    full = _static(dims[axis], "TopK's extent on its axis")
    values, indices = _topk_pair(bb, x, full, axis, largest)
    k = bb.normalize(op.reshape(op.astype(inputs[1], "int64"), ()))
    zero = _const(0, "int64")
    return [_slice_along(bb, values, axis, zero, k), _slice_along(bb, indices, axis, zero, k)]


def _topk_pair(bb, x, k, axis, largest):
    pair = bb.normalize(op.topk(x, k, axis, "both", largest, "int64"))
    return [bb.normalize(relax.TupleGetItem(pair, 0)), bb.normalize(relax.TupleGetItem(pair, 1))]


@register_lowering("Split")
def split(bb, node, inputs):
    """Split; split sizes computed at run time: each output sliced between the
    running sums of the sizes (their extents on the axis are run-time dims).
    Constant or absent sizes: the frontend's converter."""
    from tvm.relax.frontend.onnx.onnx_frontend import Split

    x = bb.normalize(inputs[0])
    sizes = _input(inputs, 1)
    if sizes is None or _constant_array(sizes) is not None or "split" in node.attributes:
        attrs = dict(node.attributes)
        attrs["tvm_custom"] = {"name": node.name, "num_outputs": len(node.outputs)}  # what the frontend adds
        impl = Split._impl_v1 if "split" in node.attributes else Split._impl_v13
        return impl(bb, list(inputs) + [None] * (2 - len(inputs)), attrs, ({}, {}))
    rank = x.ty.ndim
    axis = int(node.attributes.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    count = len(node.outputs)
    sizes = bb.normalize(op.astype(sizes, "int64"))
    ends = bb.normalize(op.cumsum(sizes, axis=0))
    outs = []
    for i in range(count):
        end = bb.normalize(op.reshape(op.strided_slice(ends, [0], [i], [i + 1]), ()))
        begin = _const(0, "int64") if i == 0 else \
            bb.normalize(op.reshape(op.strided_slice(ends, [0], [i - 1], [i]), ()))
        outs.append(_slice_along(bb, x, axis, begin, end))
    return outs
