"""The package format: one gzip-compressed tar holding

    manifest.json     inputs/outputs/params (names, dtypes, shapes), target, pipeline,
                      versions, and the sha256 and size of every other file
    manifest.sha256   sha256 of manifest.json's exact bytes
    model.so          the compiled library (TVM Relax VM executable)
    weights.npz       the weights in their stored dtype (int8 stays int8), no pickle

Compressed because quantized weights and code shrink by a quarter to a third
(PP-OCRv4 int4: 2.26 MB -> 1.50 MB); float weights by about 7%. Uncompressed
tars (packages written before) are read too.

Standard library and numpy only: the runtime loader uses this module on devices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from typing import Any, Union

from ..ir.errors import ModelLoadError

FORMAT = "onnxforge-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
LIBRARY = "model.so"
WEIGHTS = "weights.npz"
MEMBERS = (MANIFEST, MANIFEST_SUM, LIBRARY, WEIGHTS)
SUFFIX = ".ofpkg"
COMPRESSLEVEL = 6  # level 9 saves 0.1% more on PP-OCRv4 and takes twice as long

Dim = Union[int, str, None]  # static, symbolic (kept by name), unknown


class PackageError(ModelLoadError):
    """A package that cannot be used: not a package, corrupted, tampered with."""


class TargetMismatchError(PackageError):
    """A package built for another target or architecture than this machine."""


@dataclasses.dataclass
class TensorSpec:
    name: str
    dtype: str | None  # numpy dtype name ("float32", "int8", ...)
    shape: tuple[Dim, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "TensorSpec":
        shape = data.get("shape")
        return TensorSpec(str(data["name"]), data.get("dtype"), None if shape is None else tuple(shape))

    def shape_text(self) -> str:
        if self.shape is None:
            return "[...]"
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_package(path: str | os.PathLike, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write the archive; fills manifest["files"] with each file's sha256 and size."""
    manifest = dict(manifest, files={name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()})
    text = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
    members = {MANIFEST: text, MANIFEST_SUM: (sha256(text) + "\n").encode(), **files}
    tmp = f"{os.fspath(path)}.tmp"
    try:
        # mtime=0 and no file name in the gzip header: the same build gives the same bytes.
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=COMPRESSLEVEL,
                                                  mtime=0) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)  # never leave a half-written package under the real name
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_package(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read and verify a package: every checksum and size, the format and version.
    Returns (manifest, files by name). Only the known members are read, as bytes;
    nothing is extracted to disk."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PackageError(f"{path}: no such file")
    members: dict[str, bytes] = {}
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # gzip; plain tars are packages written before compression
        try:  # all at once, so that the CRC is checked: tarfile stops reading at a damaged header
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise PackageError(f"{path}: corrupt or truncated package (gzip: {exc})") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar.getmembers():
                if info.name not in MEMBERS:
                    raise PackageError(f"{path}: unexpected file {info.name!r} in the package")
                if not info.isfile():
                    raise PackageError(f"{path}: {info.name!r} is not a regular file")
                if info.name in members:
                    raise PackageError(f"{path}: {info.name!r} appears twice")
                members[info.name] = tar.extractfile(info).read()
    except PackageError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"{path}: not a readable onnxforge package (corrupt or truncated archive): {exc}") from None
    for name in MEMBERS:
        if name not in members:
            raise PackageError(f"{path}: the package has no {name}")
    text = members.pop(MANIFEST)
    expected = members.pop(MANIFEST_SUM).decode("ascii", "replace").strip()
    if sha256(text) != expected:
        raise PackageError(f"{path}: {MANIFEST} does not match its checksum in {MANIFEST_SUM}: the package was "
                           "modified or corrupted; rebuild it with `onnxforge compile`")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise PackageError(f"{path}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(f"{path}: not an onnxforge package (manifest format is {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{path}: package format version {manifest.get('format_version')!r}; this onnxforge "
                           f"reads version {FORMAT_VERSION}: rebuild the package or upgrade onnxforge")
    listed = manifest.get("files") or {}
    for name, data in members.items():
        entry = listed.get(name)
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise PackageError(f"{path}: {name} is not listed in the manifest")
        if entry.get("bytes") != len(data) or sha256(data) != entry["sha256"]:
            raise PackageError(f"{path}: checksum mismatch for {name}: the file was modified or corrupted; "
                               "rebuild the package with `onnxforge compile`")
    return manifest, members
