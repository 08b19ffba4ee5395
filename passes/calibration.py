"""Calibration data shared by the passes that learn from real inputs (static and
GPTQ quantization, pruning, low-rank), and the one way they read activations.

    cal = Calibration.from_source("calib/", model=m, limit=64)   # or a list of dicts
    result = onnxforge.optimize(m, "quantize-weights{bits=4 method=gptq}", calibration=cal)

Inside a pass:

    cal = current_calibration(self.name)          # PassOptionError when none was given
    acts = collect(model, cal, ["h", "x"])       # {value name: [array per sample]}
    for sample in iter_activations(model, cal, names): ...   # streaming, one sample at a time

Accepted sources (`Calibration.from_source`):

- a `Calibration` (returned as is, or re-validated / cut to `limit`);
- any Python iterable of dicts `{input name: array}`;
- a folder of `.npz` files, one sample per file, keys = model input names (other
  keys, such as the labels of a benchmark data folder, are ignored);
- a folder of `.npy` files, one sample per file, for a model with one input;
- a folder of `<input name>/` subfolders of `.npy` files, one sample per file
  name (`x/0001.npy` and `mask/0001.npy` form sample `0001`).

Files are read in sorted name order; `limit` keeps the first N samples. With
`model`, every sample is checked against the model's inputs: each input present,
same dtype, same rank and the same size on every fixed dim (symbolic dims take
any size). Problems raise `DataError` naming the sample, the input and what is
wrong; an empty set is an error too.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ..ir import DataError, Model, PassOptionError, to_proto

__all__ = ["Calibration", "collect", "iter_activations", "current_calibration", "has_calibration", "use_calibration"]


class Calibration:
    """A validated, re-iterable list of input dicts (model feeds)."""

    def __init__(self, samples: Sequence[Mapping[str, Any]], source: str = "<python>",
                 names: Sequence[str] | None = None, single_input: bool = False):
        self._samples = [dict(s) for s in samples]
        self.source = source
        self._names = list(names) if names is not None else [f"sample {i}" for i in range(len(self._samples))]
        self._single = single_input  # .npy folder: the key is filled in once the model is known
        if not self._samples:
            raise DataError(f"the calibration set {source} is empty: give at least one sample")

    # ------------------------------------------------------------- building
    @classmethod
    def from_source(cls, source: "Calibration | str | Path | Iterable[Mapping[str, Any]]", model: Model | None = None,
                    limit: int | None = None) -> "Calibration":
        if limit is not None and limit < 1:
            raise DataError(f"calibration limit={limit}: must be at least 1 sample")
        if isinstance(source, Calibration):
            cal = source if limit is None or limit >= len(source) else \
                Calibration(source._samples[:limit], source.source, source._names[:limit], source._single)
        elif isinstance(source, (str, Path)):
            cal = _load_folder(Path(source), limit)
        elif isinstance(source, Mapping):
            raise DataError("calibration data must be an iterable of input dicts, got a single dict: wrap it in a list")
        else:
            try:
                iterator = iter(source)
            except TypeError:
                raise DataError(f"calibration data must be a folder, a Calibration or an iterable of input dicts, "
                                f"got {type(source).__name__}") from None
            samples = []
            for i, sample in enumerate(iterator):
                if limit is not None and i >= limit:
                    break
                if not isinstance(sample, Mapping):
                    raise DataError(f"calibration sample {i} is a {type(sample).__name__}, expected a dict of arrays")
                samples.append({str(k): np.asarray(v) for k, v in sample.items()})
            cal = Calibration(samples)
        if model is not None:
            cal = cal.bind(model)
        return cal

    def bind(self, model: Model) -> "Calibration":
        """Check every sample against the model's inputs; returns a Calibration
        holding only the model's inputs (a new one when anything was dropped)."""
        inputs = [v for v in model.graph.inputs if not v.is_initializer]
        samples = self._samples
        if self._single:
            if len(inputs) != 1:
                raise DataError(f"calibration folder {self.source} holds .npy files (one input per sample), but the model "
                                f"has {len(inputs)} inputs {[v.name for v in inputs]}: use .npz files or one "
                                "<input name>/ subfolder of .npy files per input")
            samples = [{inputs[0].name: s[""]} for s in samples]
        out = []
        for label, sample in zip(self._names, samples):
            feed = {}
            for value in inputs:
                where = f"calibration {label} ({self.source})"
                if value.name not in sample:
                    raise DataError(f"{where} lacks model input {value.name!r} (it has {sorted(sample)}); the model's "
                                    f"inputs are {[v.name for v in inputs]}")
                array = np.asarray(sample[value.name])
                if value.dtype is not None:
                    want = np.dtype(helper.tensor_dtype_to_np_dtype(value.dtype))
                    if array.dtype != want:
                        raise DataError(f"{where}: input {value.name!r} is {array.dtype}, the model wants {want}")
                if value.shape is not None:
                    shape = list(value.shape)
                    if array.ndim != len(shape) or any(isinstance(d, int) and d != a for d, a in zip(shape, array.shape)):
                        raise DataError(f"{where}: input {value.name!r} has shape {list(array.shape)}, the model wants "
                                        f"{[d if isinstance(d, int) else str(d) for d in shape]}")
                feed[value.name] = array
            out.append(feed)
        return Calibration(out, self.source, self._names)

    # ------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._single:
            raise DataError(f"calibration folder {self.source} holds single-input .npy files: bind it to a model first "
                            "(Calibration.from_source(folder, model=...))")
        return (dict(s) for s in self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return dict(self._samples[index])

    def head(self, n: int) -> "Calibration":
        """The first `n` samples (all of them when there are fewer)."""
        return self if n >= len(self) else Calibration(self._samples[:n], self.source, self._names[:n], self._single)

    def __repr__(self) -> str:
        return f"Calibration({len(self)} samples from {self.source})"


def _load_folder(folder: Path, limit: int | None) -> Calibration:
    if not folder.is_dir():
        raise DataError(f"calibration folder {str(folder)!r} does not exist or is not a folder")
    npz = sorted(folder.glob("*.npz"))
    npy = sorted(folder.glob("*.npy"))
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.npy")))
    if npz and (npy or subdirs):
        raise DataError(f"calibration folder {str(folder)!r} mixes .npz and .npy files: use one format")
    if npz:
        files = npz[:limit]
        samples = read_npz_samples(files, "calibration sample")
        return Calibration(samples, repr(str(folder)), [f"sample {f.name!r}" for f in files])
    if npy:
        files = npy[:limit]
        return Calibration([{"": _read_npy(f)} for f in files], repr(str(folder)), [f"sample {f.name!r}" for f in files],
                           single_input=True)
    if subdirs:
        stems = sorted({f.stem for d in subdirs for f in d.glob("*.npy")})
        samples = []
        for stem in stems[:limit]:
            missing = [d.name for d in subdirs if not (d / f"{stem}.npy").is_file()]
            if missing:
                raise DataError(f"calibration sample {stem!r} in {str(folder)!r} lacks {missing[0]}/{stem}.npy "
                                f"(every input subfolder needs one file per sample)")
            samples.append({d.name: _read_npy(d / f"{stem}.npy") for d in subdirs})
        return Calibration(samples, repr(str(folder)), [f"sample {s!r}" for s in stems[:limit]])
    raise DataError(f"calibration folder {str(folder)!r} holds no .npz or .npy files")


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read calibration sample {str(path)!r}: {exc}") from None


# ------------------------------------------------------------------ the run's calibration
_CURRENT: contextvars.ContextVar[Calibration | None] = contextvars.ContextVar("onnxforge_calibration", default=None)


@contextlib.contextmanager
def use_calibration(calibration: Calibration | None):
    """Make `calibration` what `current_calibration()` returns inside the block
    (the pass manager does this for `optimize(..., calibration=...)`)."""
    token = _CURRENT.set(calibration)
    try:
        yield calibration
    finally:
        _CURRENT.reset(token)


def has_calibration() -> bool:
    return _CURRENT.get() is not None


def current_calibration(pass_name: str) -> Calibration:
    cal = _CURRENT.get()
    if cal is None:
        raise PassOptionError(f"{pass_name} needs calibration data: pass calibration=... to onnxforge.optimize() "
                              "or --calib DIR on the command line")
    return cal


# ------------------------------------------------------------------ activations
def _session_with_outputs(model: Model, values: Sequence[str]):
    import onnxruntime as ort

    proto = to_proto(model)
    graph = proto.graph
    present = {o.name for o in graph.output}
    wanted = [v for v in values if v not in present]
    if wanted:
        known = {vi.name: vi for vi in graph.value_info}
        missing_types = [v for v in wanted if v not in known or not known[v].type.tensor_type.elem_type]
        if missing_types:
            inferred = onnx.shape_inference.infer_shapes(proto)
            known.update({vi.name: vi for vi in inferred.graph.value_info})
        producers = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
            {i.name for i in graph.initializer}
        for name in wanted:
            if name not in producers:
                raise DataError(f"cannot collect activations of {name!r}: no node of the top-level graph produces it")
            vi = known.get(name)
            elem = vi.type.tensor_type.elem_type if vi is not None and vi.type.tensor_type.elem_type else None
            if elem is None:
                value = _find_value(model, name)
                elem = value.dtype if value is not None and value.dtype else onnx.TensorProto.FLOAT
            graph.output.append(helper.make_tensor_value_info(name, elem, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DataError(f"onnxruntime cannot load the model to collect calibration activations: {exc}") from None


def _find_value(model: Model, name: str):
    for value in model.graph.values():
        if value.name == name:
            return value
    return None


def _progress(total: int, description: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


def iter_activations(model: Model, calibration: "Calibration | Iterable[Mapping[str, Any]]", values: Sequence[str],
                     progress: bool = True, description: str = "calibration") -> Iterator[dict[str, np.ndarray]]:
    """Run onnxruntime once per calibration sample with `values` (names of
    top-level values) added as outputs; yields {name: array} per sample."""
    cal = Calibration.from_source(calibration, model=model)
    names = list(dict.fromkeys(values))
    session = _session_with_outputs(model, names)
    with _progress(len(cal), description, progress) as bar:
        task = bar.add_task(description, total=len(cal)) if bar is not None else None
        for i, feed in enumerate(cal):
            try:
                outs = session.run(names, feed)
            except Exception as exc:
                raise DataError(f"onnxruntime failed on calibration sample {i} ({cal.source}): {exc}") from None
            yield dict(zip(names, outs))
            if bar is not None:
                bar.advance(task)


def collect(model: Model, calibration: "Calibration | Iterable[Mapping[str, Any]]", values: Sequence[str],
            progress: bool = True) -> dict[str, list[np.ndarray]]:
    """The named intermediate values on every calibration sample: {name: [array per sample]}."""
    out: dict[str, list[np.ndarray]] = {v: [] for v in dict.fromkeys(values)}
    for sample in iter_activations(model, calibration, list(out), progress):
        for name, array in sample.items():
            out[name].append(array)
    return out


def read_npz_samples(files, what: str = "sample") -> list[dict[str, np.ndarray]]:
    """One dict of arrays per .npz file (no pickles); DataError naming the file."""
    samples = []
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as data:
                samples.append({k: data[k] for k in data.files})
        except Exception as exc:
            raise DataError(f"cannot read {what} {str(file)!r}: {exc}") from None
    return samples
