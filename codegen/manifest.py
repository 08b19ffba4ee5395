"""The package format: one gzip-compressed tar holding

    manifest.json     inputs/outputs/params (names, dtypes, shapes), target, pipeline,
                      versions, and the sha256 and size of every other file
    manifest.sha256   sha256 of manifest.json's exact bytes
    manifest.sig      optional: an ed25519 signature of manifest.json (signing.py)
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
from .manifest_schema import check_manifest

FORMAT = "onnxforge-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
LIBRARY = "model.so"
WEIGHTS = "weights.npz"
MEMBERS = (MANIFEST, MANIFEST_SUM, LIBRARY, WEIGHTS)
SIGNATURE = "manifest.sig"  # optional
SUFFIX = ".ofpkg"
# Python packages whose native libraries a package may ask the loader to preload
# (cpu_kernels=blas links OpenBLAS: codegen/device/libs.py)
NATIVE_LIBRARY_PACKAGES = frozenset({"scipy-openblas32"})
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


def write_package(path: str | os.PathLike, manifest: dict[str, Any], files: dict[str, bytes],
                  sign_key: str | os.PathLike | None = None) -> None:
    """Write the archive; fills manifest["files"] with each file's sha256 and size.
    With `sign_key` (a private key file, signing.py), the manifest is signed."""
    manifest = dict(manifest, files={name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()})
    text = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
    members = {MANIFEST: text, MANIFEST_SUM: (sha256(text) + "\n").encode(), **files}
    if sign_key is not None:
        from .signing import signature_for

        members[SIGNATURE] = signature_for(text, sign_key)
    _write_members(path, members)


def sign_package(path: str | os.PathLike, key: str | os.PathLike) -> None:
    """Sign a package in place with a private key file (replacing any signature):
    it is read and verified first, and its manifest signed as it is, byte for byte."""
    members = _read_members(os.fspath(path))
    _verify(os.fspath(path), dict(members), None)  # never sign a damaged package
    from .signing import signature_for

    members[SIGNATURE] = signature_for(members[MANIFEST], key)
    _write_members(path, members)


def _write_members(path: str | os.PathLike, members: dict[str, bytes]) -> None:
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


# Inflated size allowed per compressed byte, beyond a first 64 MiB: packages inflate
# 1.1-4x (float weights barely compress, code about 3x); a gzip bomb inflates up to
# ~1000x. ONNXFORGE_PACKAGE_MAX_BYTES sets the limit for a package that needs more.
INFLATE_RATIO = 64
INFLATE_BASE = 64 << 20
_CHUNK = 16 << 20


def inflate_limit(compressed_bytes: int) -> int:
    override = os.environ.get("ONNXFORGE_PACKAGE_MAX_BYTES", "")
    if override.isdigit():
        return int(override)
    return INFLATE_BASE + INFLATE_RATIO * compressed_bytes


def _inflate(data: bytes, path: str) -> bytes:
    """gunzip in chunks, stopping at inflate_limit (a bomb never reaches memory);
    the gzip CRC and length are checked at the end (tarfile would stop reading at a
    damaged header without noticing)."""
    limit = inflate_limit(len(data))
    stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    parts, total, pending = [], 0, data
    try:
        while not stream.eof:
            piece = stream.decompress(pending, _CHUNK)
            pending = stream.unconsumed_tail
            total += len(piece)
            if total > limit:
                raise PackageError(f"{path}: the package inflates to more than {limit >> 20} MiB from "
                                   f"{len(data) >> 20} MiB (a compression bomb?); if it is genuine, set "
                                   f"ONNXFORGE_PACKAGE_MAX_BYTES to a larger limit")
            parts.append(piece)
            if not piece and not pending:
                break
    except zlib.error as exc:
        raise PackageError(f"{path}: corrupt or truncated package (gzip: {exc})") from None
    except MemoryError:
        raise PackageError(f"{path}: not enough memory to unpack the package ({total >> 20} MiB so far)") from None
    if not stream.eof:
        raise PackageError(f"{path}: corrupt or truncated package (gzip: the compressed data ends early)")
    if stream.unused_data.strip(b"\0"):
        raise PackageError(f"{path}: corrupt package (data after the end of the gzip stream)")
    return b"".join(parts)


def read_package(path: str | os.PathLike,
                 trusted_keys: list[bytes] | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read and verify a package: every checksum and size, the format and version;
    with `trusted_keys` (raw ed25519 public keys, signing.public_key_bytes), also that
    one of them signed it. Returns (manifest, files by name). Only the known members
    are read, as bytes; nothing is extracted to disk."""
    path = os.fspath(path)
    return _verify(path, _read_members(path), trusted_keys)


def _read_members(path: str) -> dict[str, bytes]:
    if not os.path.isfile(path):
        raise PackageError(f"{path}: no such file")
    members: dict[str, bytes] = {}
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # gzip; plain tars are packages written before compression
        data = _inflate(data, path)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar.getmembers():
                if info.name not in MEMBERS and info.name != SIGNATURE:
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
    return members


def _verify(path: str, members: dict[str, bytes], trusted_keys: list[bytes] | None):
    text = members.pop(MANIFEST)
    expected = members.pop(MANIFEST_SUM).decode("ascii", "replace").strip()
    signature = members.pop(SIGNATURE, None)
    if sha256(text) != expected:
        raise PackageError(f"{path}: {MANIFEST} does not match its checksum in {MANIFEST_SUM}: the package was "
                           "modified or corrupted; rebuild it with `onnxforge compile`")
    if trusted_keys is not None:  # before any field of the manifest is read
        from .signing import check_signature

        check_signature(path, text, signature, list(trusted_keys))
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise PackageError(f"{path}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise PackageError(f"{path}: not an onnxforge package (manifest format is {str(found)[:80]!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{path}: package format version {str(manifest.get('format_version'))[:20]!r}; this "
                           f"onnxforge reads version {FORMAT_VERSION}: rebuild the package or upgrade onnxforge")
    problem = check_manifest(manifest)
    if problem is not None:
        raise PackageError(f"{path}: {problem}: the package is damaged or was not written by onnxforge; "
                           "rebuild it with `onnxforge compile`")
    listed = manifest["files"]
    for name, data in members.items():
        entry = listed.get(name)
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise PackageError(f"{path}: {name} is not listed in the manifest")
        if entry.get("bytes") != len(data) or sha256(data) != entry["sha256"]:
            raise PackageError(f"{path}: checksum mismatch for {name}: the file was modified or corrupted; "
                               "rebuild the package with `onnxforge compile`")
    return manifest, members
