"""GPTQ (Frantar et al., 2022): quantize a weight column by column along its
reduction axis and push each column's rounding error onto the columns not yet
quantized, weighted by the inverse Hessian H = 2/n X^T X of the layer's inputs on
calibration data, so that the layer's *output* error ||X W - X W_q|| stays small.

Layouts. A weight is viewed as a matrix Wm (rows = output channels, columns =
the reduction axis): MatMul / Attention B (K, N) -> B^T; Gemm B (N, K) with
transB, else B^T; Conv W (Cout, Cin/g, kh, kw) -> (Cout, Cin/g*kh*kw), columns in
im2col order (c, i, j), one Hessian per group over the unfolded input patches.
The integer grid (scales, zero points) is fixed before the sweep from the
weight's ranges (per channel, tensor or block: "static groups"), so the stored
format is exactly the round-to-nearest one (standard DequantizeLinear) and only
the integers differ.

Algorithm per weight (the paper's Algorithm 1): dampen H by `damp` x mean(diag H)
(dead inputs, diag 0, get 1 and a zero weight column), optionally sort the
columns by decreasing diag(H) (act_order), take the upper Cholesky factor U of
H^-1, then in blocks of 128 columns: quantize column i, err = (w - q) / U[i, i],
subtract err x U[i, i:] from the rest of the block, and after the block apply
the block's errors to all later columns at once (lazy batch updates).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from ...ir import Node
from ...ir.pattern import attribute

LAZY_BLOCK = 128


# ------------------------------------------------------------------ Hessians
@dataclasses.dataclass(frozen=True)
class HessianKey:
    """What one Hessian depends on: the input value and how the op reads it."""
    value: str
    kind: str  # "linear" (last axis), "linear-t" (Gemm transA), "conv"
    conv: tuple = ()  # (kernel, strides, pads, dilations, group)


def hessian_key(node: Node, opsets, weight_shape: tuple[int, ...]) -> HessianKey | None:
    x = node.inputs[0]
    if x is None:
        return None
    if node.op_type == "Conv":
        kernel = tuple(weight_shape[2:])
        nd = len(kernel)
        auto_pad = attribute(node, "auto_pad", opsets, "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad not in ("NOTSET", "VALID"):
            return None  # SAME_* pads depend on the input size; rare in exported models
        strides = tuple(attribute(node, "strides", opsets, None) or (1,) * nd)
        pads = tuple(attribute(node, "pads", opsets, None) or (0,) * (2 * nd)) if auto_pad == "NOTSET" else (0,) * (2 * nd)
        dilations = tuple(attribute(node, "dilations", opsets, None) or (1,) * nd)
        group = int(attribute(node, "group", opsets, 1))
        if nd != 2:
            return None
        return HessianKey(x.name, "conv", (kernel, strides, pads, dilations, group))
    if node.op_type == "Gemm" and attribute(node, "transA", opsets, 0):
        return HessianKey(x.name, "linear-t")
    return HessianKey(x.name, "linear")


def im2col(x: np.ndarray, kernel, strides, pads, dilations, group: int) -> np.ndarray:
    """(N, C, H, W) -> patches (M, group, C/group * kh * kw), columns in (c, i, j) order."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    ho, wo = win.shape[2], win.shape[3]
    cg = c // group
    patches = win.reshape(n, group, cg, ho, wo, kh, kw).transpose(0, 3, 4, 1, 2, 5, 6)
    return patches.reshape(n * ho * wo, group, cg * kh * kw)


class HessianAccumulator:
    """2/n X^T X per HessianKey, accumulated one calibration sample at a time."""

    def __init__(self, keys: Iterable[HessianKey]):
        self.keys = list(dict.fromkeys(keys))
        self.sums: dict[HessianKey, np.ndarray] = {}
        self.counts: dict[HessianKey, int] = {k: 0 for k in self.keys}

    def add(self, activations: dict[str, np.ndarray]) -> None:
        for key in self.keys:
            x = np.asarray(activations[key.value], dtype=np.float64)
            if key.kind == "conv":
                if x.ndim != 4:
                    raise ValueError(f"Conv input {key.value!r} has rank {x.ndim}; GPTQ handles 2-D convolutions")
                p = im2col(x, *key.conv)
                h = np.einsum("mgi,mgj->gij", p, p, optimize=True)
                rows = p.shape[0]
            else:
                x2 = x.T if key.kind == "linear-t" else x
                x2 = x2.reshape(-1, x2.shape[-1])
                h = (x2.T @ x2)[None]
                rows = x2.shape[0]
            self.sums[key] = self.sums[key] + h if key in self.sums else h
            self.counts[key] += rows

    def hessian(self, key: HessianKey) -> np.ndarray:
        """(groups, cols, cols)."""
        return 2.0 * self.sums[key] / max(self.counts[key], 1)


# ------------------------------------------------------------------ the sweep
def to_matrix(a: np.ndarray, op: str, channel_axis: int) -> np.ndarray:
    """Weight layout -> (rows = outputs, cols = reduction)."""
    if op == "Conv":
        return a.reshape(a.shape[0], -1)
    return a.T if channel_axis == 1 else a


def from_matrix(m: np.ndarray, shape: tuple[int, ...], op: str, channel_axis: int) -> np.ndarray:
    if op == "Conv":
        return m.reshape(shape)
    return m.T if channel_axis == 1 else m


def gptq_matrix(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, qmin: int, qmax: int, hessian: np.ndarray,
                damp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """Integers (float64, rows x cols) for Wm on the fixed grid scale/zero (rows x cols)."""
    w = np.array(w, dtype=np.float64)
    scale = np.broadcast_to(scale, w.shape)
    zero = np.broadcast_to(zero, w.shape)
    h = np.array(hessian, dtype=np.float64)
    cols = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        w, scale, zero, h = w[:, perm], scale[:, perm], zero[:, perm], h[perm][:, perm]
    mean_diag = float(np.mean(np.diag(h)))
    u = None
    for attempt in range(6):
        try:
            hd = h + np.eye(cols) * damp * (10 ** attempt) * mean_diag
            u = np.linalg.cholesky(np.linalg.inv(hd)).T  # upper: H^-1 = U^T U
            if np.all(np.isfinite(u)):
                break
        except np.linalg.LinAlgError:
            continue
    if u is None or not np.all(np.isfinite(u)):
        raise ValueError("the Hessian is not positive definite even with strong dampening")
    ints = np.empty_like(w)
    for i1 in range(0, cols, LAZY_BLOCK):
        i2 = min(i1 + LAZY_BLOCK, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            s, z = scale[:, i1 + i], zero[:, i1 + i]
            q = np.clip(np.rint(col / s) + z, qmin, qmax)
            ints[:, i1 + i] = q
            err = (col - (q - z) * s) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    if perm is not None:
        ints = ints[:, np.argsort(perm)]
    return ints


def output_error(delta: np.ndarray, hessian: np.ndarray) -> float:
    """tr(D H D^T): the layer's squared output error (up to the 2/n factor) for weight error D (rows x cols)."""
    return float(np.sum((delta @ hessian) * delta))


def gptq_ints(w: np.ndarray, op: str, channel_axis: int, grid, hessians: np.ndarray, damp: float,
              act_order: bool) -> tuple[np.ndarray, float, float]:
    """GPTQ integers in the weight's own layout, and the output error of GPTQ and of
    round-to-nearest on the same grid (summed over groups). A group (Conv group)
    where GPTQ's calibration output error is above round to nearest's keeps the
    rounded integers, so GPTQ is never worse than RTN on the calibration data."""
    shape = w.shape
    wm = to_matrix(np.asarray(w, np.float64), op, channel_axis)
    sm = to_matrix(np.broadcast_to(grid.full_scale, shape), op, channel_axis)
    zm = to_matrix(np.broadcast_to(grid.full_zero, shape), op, channel_axis)
    groups = hessians.shape[0]
    rows = wm.shape[0] // groups
    ints = np.empty_like(wm)
    err_gptq = err_rtn = 0.0
    for g in range(groups):
        sl = slice(g * rows, (g + 1) * rows)
        q = gptq_matrix(wm[sl], sm[sl], zm[sl], grid.qmin, grid.qmax, hessians[g], damp, act_order)
        rtn = np.clip(np.rint(wm[sl] / sm[sl]) + zm[sl], grid.qmin, grid.qmax)
        e_q = output_error(wm[sl] - (q - zm[sl]) * sm[sl], hessians[g])
        e_r = output_error(wm[sl] - (rtn - zm[sl]) * sm[sl], hessians[g])
        if e_q > e_r:  # tiny reductions (depthwise: 9 columns) can lose to rounding: keep the better
            q, e_q = rtn, e_r
        ints[sl] = q
        err_gptq += e_q
        err_rtn += e_r
    return from_matrix(ints, shape, op, channel_axis), err_gptq, err_rtn
