"""Benchmark data: a folder of .npz samples (plus an optional meta.json), or any
Python iterable of dicts. A sample holds the model inputs by name plus whatever
labels the metric needs; only the model's own inputs are fed to it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ...ir import DataError
from ...passes.calibration import read_npz_samples


@dataclasses.dataclass
class Dataset:
    samples: list[dict[str, np.ndarray]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "<python>"

    def __len__(self) -> int:
        return len(self.samples)


def load_folder(path: str | Path) -> Dataset:
    """Every *.npz in `path`, sorted by name; meta.json (optional) for the metric."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist or is not a folder")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise DataError(f"data folder {str(folder)!r} holds no .npz files")
    samples = read_npz_samples(files)
    meta: dict[str, Any] = {}
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(meta_path)!r} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise DataError(f"{str(meta_path)!r} must hold a JSON object")
    return Dataset(samples, meta, str(folder))


def as_dataset(data: "str | Path | Dataset | Iterable[Mapping[str, Any]] | None") -> Dataset | None:
    """Accepts what users pass: a folder path, a Dataset, or an iterable of dicts."""
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_folder(data)
    samples = []
    for i, sample in enumerate(data):
        if not isinstance(sample, Mapping):
            raise DataError(f"data sample {i} is a {type(sample).__name__}, expected a dict of arrays")
        samples.append({k: np.asarray(v) for k, v in sample.items()})
    if not samples:
        raise DataError("the data iterable is empty")
    return Dataset(samples)


def check_inputs(dataset: Dataset, inputs: Mapping[str, tuple[np.dtype, Sequence]]) -> None:
    """Every sample must carry every model input with the right dtype and rank, and
    static dims must match: a clear error here beats an onnxruntime traceback."""
    for i, sample in enumerate(dataset.samples):
        for name, (dtype, shape) in inputs.items():
            where = f"sample {i} of {dataset.source}"
            if name not in sample:
                raise DataError(f"{where} lacks model input {name!r} (it has {sorted(sample)})")
            array = sample[name]
            if array.dtype != dtype:
                raise DataError(f"{where}: input {name!r} is {array.dtype}, the model wants {np.dtype(dtype)}")
            if shape is not None and (len(array.shape) != len(shape) or any(
                    isinstance(d, int) and d != a for d, a in zip(shape, array.shape))):
                raise DataError(f"{where}: input {name!r} has shape {list(array.shape)}, the model wants {list(shape)}")


def feeds_of(sample: Mapping[str, np.ndarray], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: sample[name] for name in input_names}
