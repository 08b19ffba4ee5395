"""Activation ranges for quantize-static, streamed one calibration sample at a time:
min-max, percentile (histogram tails), entropy (TensorRT's KL threshold) and mse
(the clipping range with the least expected squared error); and the uint8/int8
QuantizeLinear parameters of a range. See static.py's docstring for the methods."""
from __future__ import annotations

import numpy as np


class RangeStats:
    def __init__(self, names, method: str, bins: int):
        self.names, self.method, self.bins = list(names), method, bins
        self.lo = {n: np.inf for n in self.names}
        self.hi = {n: -np.inf for n in self.names}
        self.hist: dict[str, np.ndarray] = {}
        self.zeros = {n: 0 for n in self.names}  # exact zeros (mse: no rounding error)

    def add_minmax(self, sample):
        for n in self.names:
            a = sample[n]
            if a.size:
                self.lo[n] = min(self.lo[n], float(a.min()))
                self.hi[n] = max(self.hi[n], float(a.max()))

    def edges(self, n):
        if self.method == "entropy":
            return 0.0, max(abs(self.lo[n]), abs(self.hi[n]), 1e-12)
        return self.lo[n], max(self.hi[n], self.lo[n] + 1e-12)

    def add_hist(self, sample):
        for n in self.names:
            a = sample[n].astype(np.float64, copy=False).ravel()
            lo, hi = self.edges(n)
            h, _ = np.histogram(np.abs(a) if self.method == "entropy" else a, bins=self.bins, range=(lo, hi))
            self.hist[n] = self.hist[n] + h if n in self.hist else h
            if self.method == "mse":
                self.zeros[n] += int(np.count_nonzero(a == 0))

    def range(self, n, percentile: float) -> tuple[float, float]:
        lo, hi = self.lo[n], self.hi[n]
        if self.method == "minmax" or n not in self.hist:
            return lo, hi
        a, b = self.edges(n)
        hist = self.hist[n].astype(np.float64)
        width = (b - a) / self.bins
        if self.method == "percentile":
            cdf = np.cumsum(hist) / max(hist.sum(), 1)
            tail = 1 - percentile / 100
            i_lo = int(np.searchsorted(cdf, tail, side="left"))
            i_hi = int(np.searchsorted(cdf, 1 - tail, side="left"))
            return max(lo, a + i_lo * width), min(hi, a + (i_hi + 1) * width)
        if self.method == "mse":
            return mse_range(hist, a, b, self.zeros[n])
        # |x| gets all 256 levels when the tensor is non-negative, 128 when both signs share them
        t = kl_threshold(hist, 256 if lo >= 0 else 128) * width
        return max(lo, -t), min(hi, t)


MSE_STEPS = np.geomspace(0.05, 1.0, 61)  # candidate fractions of each side of the observed range


def mse_range(hist: np.ndarray, lo: float, hi: float, zeros: int = 0) -> tuple[float, float]:
    """The clipping range [f_lo * lo, f_hi * hi] minimising the expected squared
    error of 256-level quantization on the histogram (over [lo, hi]): clipping error
    (x - clip(x))^2 outside the range, rounding error step^2 / 12 inside it (exact
    zeros, which the grid always holds, excepted)."""
    centers = lo + (np.arange(hist.size) + 0.5) * (hi - lo) / hist.size
    inside_mass = hist.astype(np.float64).copy()
    if zeros:
        k = min(int((0.0 - lo) / (hi - lo) * hist.size), hist.size - 1) if hi > lo else 0
        inside_mass[k] = max(inside_mass[k] - zeros, 0.0)
    his = [f * hi for f in MSE_STEPS] if hi > 0 else [hi]
    los = [f * lo for f in MSE_STEPS] if lo < 0 else [lo]
    u = np.array(his)[:, None]  # candidate tops (rows) x bins
    best, best_range = np.inf, (lo, hi)
    for lower in los:
        l_, u_ = min(lower, 0.0), np.maximum(u, 0.0)
        step = (u_ - l_) / 255.0
        outside = (centers < l_) | (centers > u_)
        clip_err = (centers - np.clip(centers, l_, u_)) ** 2
        err = np.where(outside, clip_err * hist, (step ** 2 / 12.0) * inside_mass).sum(axis=1)
        i = int(np.argmin(err))
        if err[i] < best:
            best, best_range = float(err[i]), (float(lower), float(his[i]))
    return best_range


def kl_threshold(hist: np.ndarray, levels: int = 128) -> int:
    """TensorRT's entropy calibration: the bin count i (threshold) whose clipped and
    `levels`-level quantized distribution is closest (KL) to the original."""
    bins = hist.size
    if hist.sum() == 0:
        return bins
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # the reference: outliers clipped into the last bin
        sliced = hist[:i]  # the candidate: the unclipped slice, merged into `levels` levels
        nonzero = sliced != 0
        q = np.zeros(i)
        for c in np.array_split(np.arange(i), levels):
            nz = nonzero[c]
            if nz.any():
                q[c[nz]] = sliced[c].sum() / nz.sum()
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        m = ps > 0
        kl = float(np.sum(ps[m] * np.log(ps[m] / np.maximum(qs[m], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i


def act_params(lo: float, hi: float, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exact (padding, ReLU)
    scale = (hi - lo) / 255.0
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    qmin = 0 if dtype == "uint8" else -128
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmin + 255))
    return np.array(scale, np.float32), np.array(zp, np.uint8 if dtype == "uint8" else np.int8)
