"""Folding y' = f * y + s (f, s per output channel) into the weights and bias of
the Conv / ConvTranspose / Gemm / MatMul that produced y. Shared by the
BatchNorm and the constant Mul/Add fusions. Arithmetic runs in float64 and is
rounded once to the weights' dtype."""
from __future__ import annotations

import numpy as np

from ...ir import Node
from ...ir.pattern import attribute

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def output_channels(node: Node, weight: np.ndarray, opsets) -> int | None:
    """Number of output channels of a linear node, from its weight."""
    op = node.op_type
    if op == "Conv" and weight.ndim >= 3:
        return weight.shape[0]
    if op == "ConvTranspose" and weight.ndim >= 3:
        return weight.shape[1] * int(attribute(node, "group", opsets, 1))
    if op == "Gemm" and weight.ndim == 2:
        return weight.shape[0] if attribute(node, "transB", opsets, 0) else weight.shape[1]
    if op == "MatMul" and weight.ndim == 2:
        return weight.shape[1]
    return None


def channel_axis(node: Node) -> int:
    """Axis of the output that indexes channels: 1 for convolutions, last for Gemm/MatMul."""
    return 1 if node.op_type in ("Conv", "ConvTranspose") else -1


def per_channel(array: np.ndarray, channels: int, out_rank: int | None, axis: int) -> np.ndarray | None:
    """`array` as a vector over output channels when broadcasting it against an
    output of rank `out_rank` touches only the channel axis (and never adds dims);
    else None. A single element is the same for every channel."""
    array = np.asarray(array)
    if array.size == 1:
        if out_rank is None and array.ndim > 1:
            return None
        if out_rank is not None and array.ndim > out_rank:
            return None
        return np.full(channels, array.reshape(()), dtype=np.float64)
    if out_rank is None:
        if axis != -1 or array.ndim != 1:
            return None  # without the output rank only a plain vector on the last axis is safe
        out_rank = 1
    if array.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - array.ndim) + array.shape
    position = axis % out_rank
    if shape[position] != channels or any(d != 1 for i, d in enumerate(shape) if i != position):
        return None
    return array.reshape(channels).astype(np.float64)


def scale_weight(node: Node, weight: np.ndarray, f: np.ndarray, opsets) -> np.ndarray:
    """The weight with output channel c multiplied by f[c]."""
    w = weight.astype(np.float64)
    op = node.op_type
    if op == "Conv":
        out = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":  # (C_in, C_out/group, k...): channel c = g * (C_out/group) + j
        group = int(attribute(node, "group", opsets, 1))
        c_in, per_group = w.shape[0], w.shape[1]
        grouped = w.reshape((group, c_in // group, per_group) + w.shape[2:])
        out = (grouped * f.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif op == "Gemm" and attribute(node, "transB", opsets, 0):
        out = w * f[:, None]
    else:  # Gemm without transB, MatMul: (K, N)
        out = w * f[None, :]
    return out.astype(weight.dtype)


def fold_bias(bias: np.ndarray | None, f: np.ndarray, s: np.ndarray, dtype) -> np.ndarray:
    """f * bias + s, with a missing bias read as zero."""
    if bias is None:
        return s.astype(dtype)
    return (np.asarray(bias, dtype=np.float64) * f + s).astype(dtype)
