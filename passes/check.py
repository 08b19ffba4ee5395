"""Numeric checks against onnxruntime: sample inputs, run, compare."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ..ir import Model, NumericMismatchError, OnnxforgeError, save, to_proto
from .analysis import param_stats


def sample_inputs(model: Model, seed: int = 0, dims: Mapping[str, int] | None = None,
                  shapes: Mapping[str, Sequence[int]] | None = None, strict: bool = False) -> dict[str, np.ndarray]:
    """Random inputs for every graph input without a default initializer. An input
    takes `shapes[name]` when given; its symbolic dims take `dims[dim name]`, else 1
    (or an error when `strict`: a timing at a made-up shape would mislead). Float
    inputs are standard normal, integers 0 or 1 (safe as indices and masks), bools random."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    unknown_names = set(shapes or {}) - {v.name for v in model.graph.inputs}
    if unknown_names:
        raise OnnxforgeError(f"no model input named {sorted(unknown_names)}; inputs: {[v.name for v in model.graph.inputs]}")
    for value in model.graph.inputs:
        if value.is_initializer:
            continue
        if value.dtype is None or value.shape is None:
            raise OnnxforgeError(f"input {value.name!r} has no static type; pass inputs explicitly (.npz)")
        if shapes and value.name in shapes:
            shape = list(shapes[value.name])
            if len(shape) != len(value.shape) or any(isinstance(d, int) and d != s for d, s in zip(value.shape, shape)):
                raise OnnxforgeError(f"input {value.name!r}: shape {shape} does not fit the model's {list(value.shape)}")
        else:
            unresolved = [str(d) for d in value.shape if not isinstance(d, int) and str(d) not in (dims or {})]
            if strict and unresolved:
                raise OnnxforgeError(f"input {value.name!r} has dims {unresolved} of unknown size {list(value.shape)}: "
                                     f"give its shape (--shape {value.name}=...) or the dim sizes (--dims NAME=N)")
            shape = [d if isinstance(d, int) else (dims or {}).get(str(d), 1) for d in value.shape]
        dtype = helper.tensor_dtype_to_np_dtype(value.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            raise OnnxforgeError(f"input {value.name!r}: cannot make random data of type {dtype}; pass inputs explicitly")
    return feeds


def load_inputs(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise OnnxforgeError(f"cannot read inputs from {path}: {exc}") from None


def ort_session(model: Model | onnx.ModelProto, optimize: bool = False, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = threads
    try:
        if isinstance(model, onnx.ModelProto):
            return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        if param_stats(model)["bytes"] < 2**31 - 2**24:
            return ort.InferenceSession(to_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as tmp:  # over protobuf's limit: through a file
            path = os.path.join(tmp, "model.onnx")
            save(model, path, external_data=True)
            return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxforgeError(f"onnxruntime cannot load the model: {exc}") from None


def run_ort(model: Model | onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    try:
        outs = session.run(names, dict(feeds))
    except Exception as exc:
        raise OnnxforgeError(f"onnxruntime failed to run the model: {exc}") from None
    return dict(zip(names, outs))


@dataclasses.dataclass
class Diff:
    max_abs: float
    max_rel: float
    ok: bool
    worst_output: str

    def __str__(self) -> str:
        return f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} (worst: {self.worst_output})"


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], atol: float, rtol: float) -> Diff:
    """Max abs/rel difference over all outputs (matched by position when names differ)."""
    if len(ref) != len(got):
        raise NumericMismatchError(f"output count differs: {len(ref)} vs {len(got)}")
    max_abs = max_rel = 0.0
    ok = True
    worst = ""
    for (name, a), b in zip(ref.items(), got.values()):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise NumericMismatchError(f"output {name!r}: shape {a.shape} vs {b.shape}")
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            nan_a, nan_b = np.isnan(a64), np.isnan(b64)
            if (nan_a != nan_b).any():
                ok, worst, max_abs = False, name, float("inf")
                continue
            finite = ~nan_a
            diff = np.abs(a64 - b64)[finite]
            denom = np.abs(a64)[finite]
        elif a.dtype.kind in "iub":
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            denom = np.abs(a.astype(np.float64))
        else:
            same = bool(np.array_equal(a, b))
            ok &= same
            if not same:
                worst = name
            continue
        if diff.size == 0:
            continue
        out_abs = float(diff.max())
        out_rel = float((diff / np.maximum(denom, 1e-12)).max())
        if not np.all(diff <= atol + rtol * denom):
            ok = False
        if out_abs >= max_abs:
            max_abs, worst = out_abs, name
        max_rel = max(max_rel, out_rel)
    return Diff(max_abs, max_rel, ok, worst)
