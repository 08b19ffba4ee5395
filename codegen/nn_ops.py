"""Neural-network ONNX ops lowered by onnxforge: BatchNormalization in training
mode (batch statistics and updated running statistics), Elu in any float type,
AffineGrid (sizes given at run time). See registry.py for the lowering signature."""
from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx.onnx_frontend import _tensor_to_shape_expr

from ..ir import LoweringError
from .op_helpers import _const, _constant_array, _dims, _dtype, emit_opaque_when_symbolic, frontend_attrs
from .registry import register_lowering

op = relax.op


@register_lowering("BatchNormalization")
def batch_normalization(bb, node, inputs):
    """training_mode=1 (opset 14+): normalized with the batch's mean and (population)
    variance over every axis but 1; running_mean / running_var outputs are
    momentum-weighted updates of the given ones. Inference: the frontend's converter."""
    from tvm.relax.frontend.onnx.onnx_frontend import BatchNormalization

    if not int(node.attributes.get("training_mode", 0)):
        return BatchNormalization._impl_v15(bb, list(inputs), frontend_attrs(node), {})
    x, scale, bias, mean, var = (bb.normalize(inputs[i]) for i in range(5))
    rank = x.ty.ndim
    if rank < 2:
        raise LoweringError("BatchNormalization needs an input of rank >= 2")
    dtype = _dtype(x)
    eps = float(node.attributes.get("epsilon", 1e-5))
    momentum = float(node.attributes.get("momentum", 0.9))
    axes = [a for a in range(rank) if a != 1]
    shape = [1, -1] + [1] * (rank - 2)
    batch_mean = bb.normalize(op.mean(x, axis=axes, keepdims=True))
    d = bb.normalize(op.subtract(x, batch_mean))
    batch_var = bb.normalize(op.mean(op.multiply(d, d), axis=axes, keepdims=True))
    y = op.add(op.multiply(op.divide(d, op.sqrt(op.add(batch_var, _const(eps, dtype)))), op.reshape(scale, shape)),
               op.reshape(bias, shape))
    c = _dims(x)[1]
    flat_mean, flat_var = op.reshape(batch_mean, (c,)), op.reshape(batch_var, (c,))
    m, keep = _const(momentum, dtype), _const(1.0 - momentum, dtype)
    running_mean = op.add(op.multiply(mean, m), op.multiply(flat_mean, keep))
    running_var = op.add(op.multiply(var, m), op.multiply(flat_var, keep))
    return [y, running_mean, running_var][:max(1, len(node.outputs))]


@register_lowering("Elu")
def elu(bb, node, inputs):
    """x where x > 0, alpha * (exp(x) - 1) elsewhere, in x's type (the frontend's
    float32 constants broke half inputs)."""
    x = bb.normalize(inputs[0])
    dtype = _dtype(x)
    alpha = _const(float(node.attributes.get("alpha", 1.0)), dtype)
    neg = op.multiply(alpha, op.subtract(op.exp(x), _const(1.0, dtype)))
    return op.where(op.greater(x, _const(0.0, dtype)), x, neg)


@register_lowering("AffineGrid")
def affine_grid(bb, node, inputs):
    """The sampling grid of theta (N, 2, 3) / (N, 3, 4) over an output of size
    (N, C, H, W) / (N, C, D, H, W), the size constant or computed at run time:
    out[n, ..., i] = theta[n, i, :] . (x, y[, z], 1) with normalized coordinates
    -1 + 2 k / (L - 1) (align_corners) or -1 + (2 k + 1) / L."""
    theta = bb.normalize(inputs[0])
    align = bool(node.attributes.get("align_corners", 0))
    size = inputs[1]
    value = _constant_array(size)
    n_sp = _dims(theta)[1]
    if n_sp not in (2, 3):
        raise LoweringError(f"AffineGrid theta of shape {_dims(theta)}: (N, 2, 3) or (N, 3, 4) expected")
    if value is not None:
        spatial = [tirx.const(int(v), "int64") for v in value.reshape(-1)[2:]]
    else:
        size64 = bb.normalize(op.astype(size, "int64") if _dtype(size) != "int64" else size)
        spatial = list(_tensor_to_shape_expr(bb, size64, n_sp + 2, "affine_grid_dim").values)[2:]
    dtype = _dtype(theta)

    def compute(t):
        def coord(k, length):
            kf, lf = tirx.Cast("float32", k), tirx.Cast("float32", length)
            one = tirx.const(1.0, "float32")
            if align:
                return tirx.Select(length > 1, -one + kf * tirx.const(2.0, "float32") / (lf - one), -one)
            return -one + (tirx.const(2.0, "float32") * kf + one) / lf

        def body(*index):
            n, pos, i = index[0], index[1:-1], index[-1]
            coords = [coord(k, length) for k, length in zip(pos, spatial)][::-1]  # x (last axis) first
            acc = tirx.Cast("float32", t(n, i, n_sp))
            for j, c in enumerate(coords):
                acc = acc + tirx.Cast("float32", t(n, i, j)) * c
            return acc if dtype == "float32" else tirx.Cast(dtype, acc)

        return te.compute([t.shape[0], *spatial, n_sp], body, name="affine_grid")

    return emit_opaque_when_symbolic(bb, compute, theta, name="onnx_affine_grid")



@register_lowering("MaxPool")
def max_pool(bb, node, inputs):
    """MaxPool; with its Indices output, the indices of each window's first
    maximum (in scan order) into the flattened input, row-major or, with
    storage_order=1, column-major over the spatial dims. Y alone: the frontend's
    converter."""
    from tvm.relax.frontend.onnx.onnx_frontend import MaxPool

    attrs = _explicit_same_pads(frontend_attrs(node), _dims(bb.normalize(inputs[0])))
    y = bb.normalize(MaxPool._impl_v1(bb, [inputs[0]], attrs, {}))
    if len(node.outputs) < 2 or not node.outputs[1] or not getattr(node.outputs[1], "name", ""):
        return y
    x = bb.normalize(inputs[0])
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise LoweringError(f"MaxPool's Indices output with auto_pad={auto_pad} is not supported")
    dims = [_static_dim(d) for d in _dims(x)]
    n_sp = len(dims) - 2
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(s) for s in attrs.get("strides", [1] * n_sp)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n_sp)]
    pads = [int(p) for p in attrs.get("pads", [0] * (2 * n_sp))] if auto_pad == "NOTSET" else [0] * (2 * n_sp)
    column_major = bool(attrs.get("storage_order", 0))
    spatial = dims[2:]

    def compute(data, out):
        axes = [te.reduce_axis((0, k), name=f"k{i}") for i, k in enumerate(kernel)]
        big = tirx.const(np.iinfo(np.int64).max, "int64")

        def body(*index):
            pos = [index[2 + i] * strides[i] - pads[i] + axes[i] * dilations[i] for i in range(n_sp)]
            inside = tirx.all(*[tirx.all(p >= 0, p < spatial[i]) for i, p in enumerate(pos)])
            safe = [tirx.max(tirx.min(p, spatial[i] - 1), 0) for i, p in enumerate(pos)]
            flat = tirx.Cast("int64", index[0] * dims[1] + index[1])
            for i in range(n_sp):
                flat = flat * spatial[i] + tirx.Cast("int64", safe[i])
            hit = tirx.all(inside, data(index[0], index[1], *safe) == out(*index))
            return te.min(tirx.Select(hit, flat, big), axis=axes)

        return te.compute(out.shape, body, name="max_pool_indices")

    first = bb.emit_te(compute, x, y, primfunc_name_hint="onnx_max_pool_indices")
    if column_major and n_sp > 1:  # re-spell the flat row-major index column-major over the spatial dims
        plane = int(np.prod(spatial))
        rest, coords = op.floor_mod(first, _const(plane, "int64")), []
        for extent in reversed(spatial):
            coords.append(op.floor_mod(rest, _const(extent, "int64")))
            rest = op.floor_divide(rest, _const(extent, "int64"))
        coords = coords[::-1]  # per spatial dim, outermost first
        col, stride = None, 1
        for c, extent in zip(coords, spatial):
            term = op.multiply(c, _const(stride, "int64"))
            col = term if col is None else op.add(col, term)
            stride *= extent
        first = op.add(op.multiply(op.floor_divide(first, _const(plane, "int64")), _const(plane, "int64")), col)
    return [y, first]


def _explicit_same_pads(attrs: dict, dims) -> dict:
    """auto_pad SAME_UPPER / SAME_LOWER as explicit pads (ONNX: output ceil(in /
    stride), the odd pad at the end or the start) when the spatial dims are static,
    or as a start pad + ceil_mode where that holds for every size.
    TVM's converter reads every dim as an int for max pooling, the batch too (a
    model for any batch failed to lower), and gives SAME_LOWER a floor."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    spatial = list(dims[2:])
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER") or attrs.get("ceil_mode", 0):
        return attrs
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(s) for s in attrs.get("strides", [1] * len(spatial))]
    dilations = [int(d) for d in attrs.get("dilations", [1] * len(spatial))]

    def pads(size, k, stride, dilation):
        total = max(0, (-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size)
        begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        return begin, total - begin

    if all(isinstance(d, int) for d in spatial):
        begins, ends = zip(*(pads(*axis) for axis in zip(spatial, kernel, strides, dilations)))
        return {**attrs, "auto_pad": b"NOTSET", "pads": list(begins) + list(ends)}
    # Sizes known at run time: where the start pad is the same for every size (2x2
    # stride 2, as P-Net and YOLO-style nets write), pad the start and let ceil_mode
    # take the partial last window, which is what padding the end with -inf gives.
    begins = []
    for k, stride, dilation in zip(kernel, strides, dilations):
        span = (k - 1) * dilation + 1
        sizes = range(span, span + 2 * stride)  # every residue mod stride
        starts = {pads(size, k, stride, dilation)[0] for size in sizes}
        if len(starts) != 1:
            return attrs
        begin = starts.pop()
        if any(-(-(size + begin - span) // stride) + 1 != -(-size // stride) for size in sizes):
            return attrs
        begins.append(begin)
    return {**attrs, "auto_pad": b"NOTSET", "pads": begins + [0] * len(begins), "ceil_mode": 1}


def _static_dim(d):
    if not isinstance(d, int):
        raise LoweringError("MaxPool's Indices output needs static input dims")
    return d


@register_lowering("ConvTranspose")
def conv_transpose(bb, node, inputs):
    """ConvTranspose; an output_shape attribute (which the frontend's converter
    ignores) becomes pads and output_padding as onnxruntime derives them: total
    padding max(0, stride (in - 1) + output_padding + (k - 1) dilation + 1 - out),
    split head-heavy unless SAME_UPPER; what the output still lacks is output padding."""
    from tvm.relax.frontend.onnx.onnx_frontend import ConvTranspose

    attrs = frontend_attrs(node)
    if "output_shape" not in attrs:
        return ConvTranspose._impl_v1(bb, list(inputs) + [None] * (3 - len(inputs)), attrs, {})
    x, w = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    spatial = [d for d in _dims(x)[2:]]
    if not all(isinstance(d, int) for d in spatial):
        raise LoweringError("ConvTranspose with output_shape needs static spatial input dims")
    n = len(spatial)
    out_shape = [int(v) for v in attrs.pop("output_shape")][-n:]
    kernel = [int(k) for k in attrs.get("kernel_shape", _dims(w)[2:])]
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    adjust = [int(a) for a in attrs.get("output_padding", [0] * n)]
    auto_pad = attrs.pop("auto_pad", b"NOTSET")
    heads, tails, pads_out = [], [], []
    for i in range(n):
        full = strides[i] * (spatial[i] - 1) + adjust[i] + (kernel[i] - 1) * dilations[i] + 1
        total = max(0, full - out_shape[i])
        head = total // 2 if auto_pad == b"SAME_UPPER" else total - total // 2
        heads.append(head)
        tails.append(total - head)
        pads_out.append(adjust[i] + out_shape[i] - (full - total))
    attrs["pads"] = heads + tails
    attrs["output_padding"] = pads_out
    return ConvTranspose._impl_v1(bb, list(inputs) + [None] * (3 - len(inputs)), attrs, {})
