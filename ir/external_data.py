"""External tensor data: safe reading (never outside the model's folder, sizes
checked against the declared shape) and the loader a Value calls lazily."""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .errors import ExternalDataError, ModelLoadError


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the raw little-endian data of this tensor must have (None if unknown)."""
    count = math.prod(tensor.dims)  # Python ints: an int64 product of [2**32, 2**32] wraps to 0
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
        return (count + 1) // 2
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        storage = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    return count * storage.itemsize


def check_tensor_size(tensor: onnx.TensorProto, where: str) -> None:
    """Refuse a tensor whose declared shape disagrees with the data it carries."""
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"tensor {tensor.name!r} in {where} has a negative dimension {list(tensor.dims)}")
    if uses_external_data(tensor):
        return  # checked against the file by external_loader
    count = math.prod(tensor.dims)
    if count >= 2**63:
        raise ModelLoadError(f"tensor {tensor.name!r} in {where} declares shape {list(tensor.dims)}, "
                             f"{count} elements: more than any file can hold")
    if tensor.HasField("raw_data"):
        want = expected_nbytes(tensor)
        if want is not None and len(tensor.raw_data) != want:
            raise ModelLoadError(
                f"tensor {tensor.name!r} in {where} declares shape {list(tensor.dims)} "
                f"({want} bytes) but carries {len(tensor.raw_data)} bytes of data"
            )
        return
    if tensor.data_type == onnx.TensorProto.UNDEFINED:
        return
    try:
        field = helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return
    have = len(getattr(tensor, field))
    if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        have //= 2
    elif tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
        count = (count + 1) // 2
    if have != count:
        raise ModelLoadError(
            f"tensor {tensor.name!r} in {where} declares shape {list(tensor.dims)} ({count} elements) "
            f"but carries {have} values"
        )


def resolve_location(base_dir: str | None, location: str, tensor_name: str) -> str:
    """The real path of an external-data file, refused if it leaves base_dir."""
    if base_dir is None:
        raise ExternalDataError(
            f"tensor {tensor_name!r} stores its data in external file {location!r}, but the model "
            "was not loaded from a file: load it by path so the data folder is known"
        )
    if os.path.isabs(location):
        raise ExternalDataError(f"tensor {tensor_name!r}: external data location {location!r} is absolute; refused")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ExternalDataError(
            f"tensor {tensor_name!r}: external data location {location!r} resolves to {path}, "
            f"outside the model folder {root}; refused"
        )
    if not os.path.isfile(path):
        raise ExternalDataError(f"tensor {tensor_name!r}: external data file {path} does not exist")
    return path


def external_loader(tensor: onnx.TensorProto, base_dir: str | None, where: str) -> Callable[[], np.ndarray]:
    """Validate an external reference now; return a function that reads it later."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    if "location" not in info:
        raise ExternalDataError(f"tensor {tensor.name!r} in {where} is marked external but names no location")
    path = resolve_location(base_dir, info["location"], tensor.name)
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise ExternalDataError(f"tensor {tensor.name!r}: bad external data offset/length: {exc}") from None
    file_size = os.path.getsize(path)
    want = expected_nbytes(tensor)
    if length is None:
        length = file_size - offset if want is None else want
    if offset < 0 or length < 0 or offset + length > file_size:
        raise ExternalDataError(
            f"tensor {tensor.name!r}: external data [{offset}, {offset + length}) lies beyond the end of "
            f"{path} ({file_size} bytes)"
        )
    if want is not None and length != want:
        raise ExternalDataError(
            f"tensor {tensor.name!r} declares shape {list(tensor.dims)} ({want} bytes) but its external "
            f"data holds {length} bytes"
        )
    template = onnx.TensorProto()
    template.CopyFrom(tensor)
    del template.external_data[:]
    template.data_location = onnx.TensorProto.DEFAULT

    def load() -> np.ndarray:
        with open(path, "rb") as f:
            f.seek(offset)
            template.raw_data = f.read(length)
        array = onnx.numpy_helper.to_array(template)
        template.ClearField("raw_data")
        return array

    return load
