"""layernorm: the mean/variance subgraph that exporters emit for layer norm
becomes one LayerNormalization (opset 17 and later; below that there is no
standard op, so it stays).

    mean = ReduceMean(x); d = x - mean
    var  = ReduceMean(d ** 2)            (or d * d)
    y    = d / Sqrt(var + eps)           (or d * Reciprocal(Sqrt(..)), d * (var + eps) ** -0.5)
    out  = y * gamma + beta              (gamma and beta optional)

The epsilon must sit inside the square root and the reduced axes must be the
trailing ones, the same for both means."""
from __future__ import annotations

import numpy as np

from ...ir.pattern import Const, Op, Opt, Var
from ..rewrite import RuleSet, rule

_X = Var("x", dtype=("float16", "float32", "float64"))
_MEAN = Op("ReduceMean", _X, Opt(Const("mean_axes")), name="mean")
_D = Op("Sub", _X, _MEAN, name="centered")
_VAR = Op("ReduceMean", Op("Pow", _D, Const(value=2.0)) | Op("Mul", _D, _D), Opt(Const("var_axes")), name="variance")
_VAR_EPS = Op("Add", _VAR, Const("eps", scalar=True))
_STD = Op("Sqrt", _VAR_EPS)
_NORM = (Op("Div", _D, _STD, name="norm")
         | Op("Mul", _D, Op("Reciprocal", _STD), name="norm")
         | Op("Mul", _D, Op("Div", Const(value=1.0), _STD), name="norm")
         | Op("Mul", _D, Op("Pow", _VAR_EPS, Const(value=-0.5)), name="norm"))


def _axes(m, node_name: str, input_name: str) -> list[int] | None:
    if m.attr(node_name, "keepdims", 1) != 1:
        return None
    if input_name in m:
        return [int(a) for a in m.const(input_name).reshape(-1)]
    axes = m.node(node_name).attr("axes")
    return None if axes is None else [int(a) for a in axes]


def _trailing(axes: list[int] | None, rank: int | None) -> int | None:
    """How many trailing axes `axes` names (None if they are not the trailing ones)."""
    if axes is None:
        return rank  # no axes: every axis
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    k = len(axes)
    return k if k and sorted(axes) == list(range(-k, 0)) else None


def normalized_shape(x, k: int, params: list[np.ndarray]) -> tuple | None:
    """The shape of the `k` normalized trailing axes of x: static, or (for k = 1) the
    size that the gamma/beta vectors tell when the last dim is symbolic."""
    if x.shape is not None and all(isinstance(d, int) for d in x.shape[-k:]):
        return tuple(x.shape[-k:])
    sizes = {p.size for p in params} - {1}
    return (sizes.pop(),) if k == 1 and len(sizes) == 1 else None


def _param(array: np.ndarray | None, k: int, shape: tuple | None, fill: float) -> np.ndarray | None:
    """gamma/beta as an array of the normalized shape, or None when it would also
    broadcast over the other axes (or the normalized shape is unknown)."""
    if array is None:
        return None if shape is None else np.full(shape, fill)
    array = np.asarray(array)
    while array.ndim > k and array.shape[0] == 1:
        array = array[0]
    if array.ndim > k or shape is None:
        return None
    try:
        return np.broadcast_to(array, shape)
    except ValueError:
        return None


def _fuse(m, b, gamma: str | None, beta: str | None):
    if b.opset < 17:
        return None
    x = m["x"]
    rank = None if x.shape is None else len(x.shape)
    k = _trailing(_axes(m, "mean", "mean_axes"), rank)
    if k is None or k != _trailing(_axes(m, "variance", "var_axes"), rank):
        return None
    shape = normalized_shape(x, k, [m.const(n) for n in (gamma, beta) if n])
    dtype = x.np_dtype
    scale = _param(m.const(gamma) if gamma else None, k, shape, 1.0)
    bias = _param(m.const(beta), k, shape, 0.0) if beta else None
    if scale is None or (beta and bias is None):
        return None
    scale = b.const(scale.astype(dtype), name="ln_scale")
    bias = b.const(bias.astype(dtype), name="ln_bias") if bias is not None else None
    eps = float(m.const("eps").reshape(()))
    return b.op("LayerNormalization", x, scale, bias, axis=-k, epsilon=eps)


@rule(Op("Add", Op("Mul", _NORM, Const("gamma")), Const("beta")), needs_shapes=True)
def layernorm(m, b):
    return _fuse(m, b, "gamma", "beta")


@rule(Op("Mul", _NORM, Const("gamma")), needs_shapes=True)
def layernorm_no_bias(m, b):
    return _fuse(m, b, "gamma", None)


@rule(_NORM, needs_shapes=True)
def layernorm_no_affine(m, b):
    return _fuse(m, b, None, None)


RULES = RuleSet(layernorm, layernorm_no_bias, layernorm_no_affine)
