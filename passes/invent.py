"""Inputs made up for a check when the user gave none: random values (as
check.sample_inputs makes them) at sizes the model can run.

Every symbolic dim gets a size by its role: axis 0 of a rank-2+ input is a batch
(1), and so is the first open dim of a recurrent state [2,batch,128]; the dims
past the channel axis of a rank-3+ input are spatial (64, 224, 32: multiples of
the usual stride 32; at 32, PP-OCR's classifier runs in onnxruntime but through an
empty tensor); the other open dims of rank-1..3 inputs are sequences (16,
128, 512: audio models need a few hundred samples).
A dim the model itself fixes (an input reshaped to a constant shape) takes that
size. onnxruntime then runs the model at the first sizes in turn until a run
succeeds; what was invented, and what was tried, is reported."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..ir import DataError, Model, OnnxforgeError
from .check import ort_session, sample_inputs

# sizes to try per role, one column per attempt (the last: everything 1)
CANDIDATES = {
    "batch": (1, 1, 1, 1),
    "spatial": (64, 224, 32, 1),  # 64 first: at 32 a stride-32 net is down to 1x1, and one more pool makes it empty
    "sequence": (16, 128, 512, 1),
    "other": (1, 16, 64, 1),
}
HOW_TO_FIX = "give real inputs with --inputs file.npz (one array per input name; Python: inputs={name: array})"


@dataclasses.dataclass
class InventedInputs:
    """Made-up inputs, the symbolic dim sizes behind them, and onnxruntime's
    outputs on them (None when it could not run them)."""

    feeds: dict[str, np.ndarray]
    dims: dict[str, int]  # symbolic dim -> the size chosen (those the caller did not fix)
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None  # why onnxruntime failed (on the first sizes tried), None when it ran
    load_error: str | None = None  # onnxruntime could not load the model at all
    tried: list[dict[str, int]] = dataclasses.field(default_factory=list)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(int(d) for d in a.shape) for name, a in self.feeds.items()}

    def describe(self) -> str:
        """'x: float32[1,3,32,32], sr: int64[]'."""
        return ", ".join(f"{name}: {a.dtype.name}[{','.join(str(d) for d in a.shape)}]" for name, a in self.feeds.items())

    def note(self) -> str:
        """One line for the user: what was invented and how to give real inputs."""
        dims = f" (symbolic dims {_dims_text(self.dims)})" if self.dims else ""
        checked = "" if self.outputs is not None else " (not checked: onnxruntime did not run them)"
        return f"no inputs given: invented random inputs {self.describe()}{dims}{checked}; {HOW_TO_FIX}"

    def reference(self) -> dict[str, np.ndarray]:
        """onnxruntime's outputs on these inputs, or an error saying they were invented."""
        if self.load_error is not None:
            raise OnnxforgeError(self.load_error)
        if self.outputs is None:
            tried = "; ".join(_dims_text(t) for t in self.tried[1:])
            also = f" (also tried symbolic dims {tried})" if tried else ""
            raise DataError(f"onnxruntime failed to run the model on invented inputs {self.describe()}{also}: "
                            f"{self.error}; the inputs were made up (random values, symbolic dims guessed): {HOW_TO_FIX}")
        return self.outputs


def invent_inputs(model: Model, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None,
                  run: bool = True) -> InventedInputs:
    """Random inputs for `model` at the first sizes onnxruntime runs (see the module
    docstring); when none runs, the first sizes tried with the error. `shapes`
    fixes the shapes of some inputs. run=False only picks the first sizes, without
    onnxruntime."""
    first = None
    for invented in iter_invented(model, seed, shapes, run):
        if invented.outputs is not None or invented.load_error is not None or not run:
            return invented
        if first is None:
            first = invented
        first.tried = invented.tried
    return first


def iter_invented(model: Model, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None,
                  run: bool = True) -> Iterator[InventedInputs]:
    """Every candidate size set in turn, each with onnxruntime's outputs (or its
    error); only the first when onnxruntime cannot load the model or run=False."""
    roles = symbolic_dims(model, shapes)
    fixed = _sizes_from_reshapes(model, roles)
    attempts: list[dict[str, int]] = []
    for k in range(max(len(c) for c in CANDIDATES.values())):
        dims = {sym: fixed.get(sym, CANDIDATES[role][min(k, len(CANDIDATES[role]) - 1)]) for sym, role in roles.items()}
        if dims not in attempts:
            attempts.append(dims)
    session = None
    if run:
        try:
            session = ort_session(model)
        except OnnxforgeError as exc:
            invented = InventedInputs(sample_inputs(model, seed, dims=attempts[0], shapes=shapes), attempts[0],
                                      load_error=str(exc), tried=attempts[:1])
            yield invented
            return
    for i, dims in enumerate(attempts):
        invented = InventedInputs(sample_inputs(model, seed, dims=dims, shapes=shapes), dims, tried=attempts[:i + 1])
        if session is None:
            yield invented
            return
        names = [o.name for o in session.get_outputs()]
        try:
            invented.outputs = dict(zip(names, session.run(names, invented.feeds)))
        except Exception as exc:  # onnxruntime raises its own types
            invented.error = _first_line(exc)
        yield invented


def symbolic_dims(model: Model, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, str]:
    """Symbolic dim -> its role ("batch", "spatial", "sequence", "other") over the
    graph inputs whose shape `shapes` does not fix, in input order."""
    roles: dict[str, str] = {}
    for value in model.graph.inputs:
        if value.is_initializer or value.shape is None or (shapes and value.name in shapes):
            continue
        rank = len(value.shape)
        open_axes = [axis for axis, d in enumerate(value.shape) if isinstance(d, str)]
        for axis in open_axes:
            if rank >= 3 and axis >= 2:
                role = "spatial"  # [N,C,H,W], [N,C,L]
            elif axis == 0 and rank >= 2:
                role = "batch"
            elif rank <= 2:
                role = "sequence"  # [N,T] audio or tokens, [T]
            elif axis == open_axes[0]:
                role = "batch"  # [2,batch,128]: a recurrent state
            else:
                role = "sequence" if rank == 3 else "other"  # [N,T,C]; [N,?,H,W]
            roles.setdefault(str(value.shape[axis]), role)
    return roles


def _sizes_from_reshapes(model: Model, roles: Mapping[str, str]) -> dict[str, int]:
    """Sizes the model fixes itself: an input with one symbolic dim that a Reshape
    turns into a constant shape (no -1, no 0) has exactly that many elements."""
    fixed: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.is_initializer or value.shape is None:
            continue
        open_dims = [d for d in value.shape if isinstance(d, str)]
        if len(open_dims) != 1 or open_dims[0] not in roles or not all(isinstance(d, (int, str)) for d in value.shape):
            continue
        known = int(np.prod([d for d in value.shape if isinstance(d, int)], dtype=np.int64))
        for node, index in value.uses:
            target = node.inputs[1].const_value() if node.op_type == "Reshape" and index == 0 else None
            if target is None or target.ndim != 1 or not (target > 0).all():
                continue
            total = int(np.prod(target, dtype=np.int64))
            if known > 0 and total % known == 0:
                fixed[open_dims[0]] = total // known
                break
    return fixed


def _dims_text(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items()) or "none"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
