"""Package signatures: who built a package, not only whether it is intact.

A package's checksums (manifest.sha256, and the manifest's sha256 of every file)
catch damage, but anyone who changes a file can recompute them. A signature is an
ed25519 signature (the `cryptography` package) over manifest.json's exact bytes,
stored beside it as manifest.sig; the manifest lists the sha256 and size of every
other file and the loader checks those, so the signature covers the whole package.
A loader given trusted keys refuses a package that is unsigned, signed by another
key, or whose manifest changed after signing. What neither catches: a package the
key holder built from a malicious model or toolchain.

Keys: `onnxforge keygen KEY` writes KEY (the private key, PEM, mode 0600) and
KEY.pub (the public key, PEM); loaders take either file as a trusted key."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..ir.errors import DataError
from .manifest import PackageError

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise DataError("signing and checking package signatures needs the `cryptography` package: "
                        "pip install 'onnxforge[sign]' (or pip install cryptography)") from None
    return serialization, ed25519


def keygen(path: str | os.PathLike) -> tuple[Path, Path]:
    """A new ed25519 key pair: the private key at `path` (PEM, readable by its owner
    only) and the public key at `path`.pub. Refuses to overwrite either."""
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(path), Path(f"{os.fspath(path)}.pub")
    for p in (private_path, public_path):
        if p.exists():
            raise DataError(f"{p} exists: choose another name or remove it first (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise DataError(f"cannot write the key {private_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_bytes(public)
    return private_path, public_path


def _read_key_file(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the key {os.fspath(path)}: {exc.strerror}") from None


def load_private_key(path: str | os.PathLike, data: bytes | None = None):
    """The ed25519 private key in the PEM file at `path` (`data`: its bytes, if read)."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(_read_key_file(path) if data is None else data, password=None)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{os.fspath(path)} is not an unencrypted PEM private key ({exc}); make one with "
                        "`onnxforge keygen KEY`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DataError(f"{os.fspath(path)} is a {type(key).__name__}, not an ed25519 key; make one with "
                        "`onnxforge keygen KEY`")
    return key


def public_key_bytes(path: str | os.PathLike) -> bytes:
    """The raw 32-byte public key from a key file: KEY.pub, or the private KEY."""
    serialization, ed25519 = _crypto()
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        key = load_private_key(path, data).public_key()
    else:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{os.fspath(path)} is not a PEM public key ({exc}); use the KEY.pub that "
                            "`onnxforge keygen KEY` wrote") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise DataError(f"{os.fspath(path)} is not an ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_for(manifest_text: bytes, key_path: str | os.PathLike) -> bytes:
    """manifest.sig's bytes for these manifest bytes, signed with the private key file."""
    serialization, _ = _crypto()
    key = load_private_key(key_path)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    entry = {"algorithm": ALGORITHM, "public_key": public.hex(), "signature": key.sign(manifest_text).hex()}
    return json.dumps(entry).encode() + b"\n"


def check_signature(path: str, manifest_text: bytes, signature: bytes | None, trusted: list[bytes]) -> None:
    """Raise PackageError unless `signature` (manifest.sig's bytes) is a valid signature
    of `manifest_text` by one of the `trusted` raw public keys."""
    _, ed25519 = _crypto()
    if signature is None:
        raise PackageError(f"{path}: the package is not signed, and trusted keys were given: sign it with "
                           "`onnxforge sign PACKAGE --key KEY` (or compile with --sign KEY)")
    try:
        entry = json.loads(signature)
        public, sig = bytes.fromhex(entry["public_key"]), bytes.fromhex(entry["signature"])
        if entry.get("algorithm") != ALGORITHM or len(public) != 32 or len(sig) != 64:
            raise ValueError("not an ed25519 signature")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PackageError(f"{path}: {SIGNATURE} is malformed ({exc}): the package was damaged or tampered with") from None
    if public not in trusted:
        raise PackageError(f"{path}: signed by key {public.hex()[:16]}..., which is not among the trusted keys")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(sig, manifest_text)
    except Exception:  # noqa: BLE001 - cryptography's InvalidSignature
        raise PackageError(f"{path}: the signature does not match the manifest: the package was changed after it "
                           "was signed") from None


def trusted_key_bytes(keys) -> list[bytes]:
    """Raw public keys from key files (KEY.pub or KEY) and raw 32-byte keys; an empty
    list trusts nothing (every package is refused)."""
    if isinstance(keys, (str, bytes, os.PathLike)):
        keys = [keys]
    return [k if isinstance(k, bytes) and len(k) == 32 else public_key_bytes(k) for k in keys]
