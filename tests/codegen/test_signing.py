"""Signed packages (codegen/signing.py): a loader given trusted keys runs a package
only if one of them signed it; checksums alone (which anyone can recompute) do not
pass. A valid signature, a flipped byte, a recomputed checksum without the key, a
wrong key, an unsigned package with and without trust; the CLI's keygen / sign /
compile --sign / run --trust."""
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cryptography")

from onnxforge.codegen import runtime  # noqa: E402
from onnxforge.codegen.manifest import SIGNATURE, PackageError, read_package, sign_package  # noqa: E402
from onnxforge.codegen.signing import keygen  # noqa: E402
from onnxforge.ir.errors import DataError  # noqa: E402
from onnxforge.tools.fuzz import _tar, package_members, repack_package  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return keygen(folder / "team"), keygen(folder / "other")


@pytest.fixture(scope="module")
def signed(packages, keys, tmp_path_factory):
    """The mlp package, signed with the team key."""
    path = tmp_path_factory.mktemp("signed") / "mlp.ofpkg"
    shutil.copyfile(packages.get("mlp").path, path)
    sign_package(path, keys[0][0])
    return path


def _members(path) -> dict[str, bytes]:
    return package_members(path.read_bytes())


def _write(path, members: dict[str, bytes]):
    path.write_bytes(gzip.compress(_tar(members)))
    return path


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    (private, public), _ = keys
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(DataError, match="exists"):
        keygen(private)


def test_a_signed_package_loads_with_its_key_and_runs(signed, keys, packages):
    (_, public), _ = keys
    model = runtime.load(signed, trusted_keys=[public])
    x = np.ones(model.inputs[0].shape, np.float32)
    want = runtime.load(packages.get("mlp").path)(x=x)
    for name, value in model(x=x).items():
        np.testing.assert_array_equal(value, want[name])
    runtime.load(signed, trusted_keys=[keys[0][0]])  # the private key file names the same public key


def test_a_flipped_byte_in_the_signature_is_refused(signed, keys, tmp_path):
    members = _members(signed)
    entry = json.loads(members[SIGNATURE])
    entry["signature"] = ("0" if entry["signature"][0] != "0" else "1") + entry["signature"][1:]
    members[SIGNATURE] = json.dumps(entry).encode()
    bad = _write(tmp_path / "bad.ofpkg", members)
    with pytest.raises(PackageError, match="does not match the manifest"):
        runtime.load(bad, trusted_keys=[keys[0][1]])


def test_recomputed_checksums_without_the_key_are_refused(signed, keys, tmp_path):
    """An attacker changes the weights and recomputes every checksum: the checksums
    pass, the signature (kept from the original) does not."""
    members = _members(signed)
    signature = members.pop(SIGNATURE)
    text = members.pop("manifest.json")
    members.pop("manifest.sha256")
    weights = bytearray(members["weights.npz"])
    weights[-30] ^= 0xFF
    members["weights.npz"] = bytes(weights)
    repacked = package_members(repack_package(text, members))
    repacked[SIGNATURE] = signature
    bad = _write(tmp_path / "resummed.ofpkg", repacked)
    read_package(bad)  # the checksums alone are fine
    with pytest.raises(PackageError, match="does not match the manifest"):
        runtime.load(bad, trusted_keys=[keys[0][1]])


def test_a_package_signed_with_another_key_is_refused(signed, keys):
    with pytest.raises(PackageError, match="not among the trusted keys"):
        runtime.load(signed, trusted_keys=[keys[1][1]])
    with pytest.raises(PackageError, match="not among the trusted keys"):
        runtime.load(signed, trusted_keys=[])  # an empty list trusts nothing


def test_unsigned_packages_load_without_trust_and_are_refused_with_it(packages, keys, signed):
    unsigned = packages.get("mlp").path
    runtime.load(unsigned)
    runtime.load(signed)  # a signature is not required when no key is given
    with pytest.raises(PackageError, match="not signed"):
        runtime.load(unsigned, trusted_keys=[keys[0][1]])


def test_signing_refuses_a_damaged_package(packages, keys, tmp_path):
    members = _members(packages.get("mlp").path)
    members["model.so"] = members["model.so"][:-10]
    bad = _write(tmp_path / "damaged.ofpkg", members)
    with pytest.raises(PackageError, match="checksum mismatch"):
        sign_package(bad, keys[0][0])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxforge.tools.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_keygen_compile_sign_and_run_trust(tmp_path):
    key = tmp_path / "k"
    assert _cli("keygen", str(key)).returncode == 0
    pkg = tmp_path / "ex.ofpkg"
    built = _cli("compile", "example", "-O0", "-o", str(pkg), "--sign", str(key), "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["signed"] is True
    ran = _cli("run", str(pkg), "--trust", f"{key}.pub", "--json")
    assert ran.returncode == 0, ran.stderr
    other = tmp_path / "o"
    _cli("keygen", str(other))
    refused = _cli("run", str(pkg), "--trust", f"{other}.pub")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1 and "not among the trusted keys" in lines[0], refused.stderr
    assert _cli("sign", str(pkg), "--key", str(other)).returncode == 0  # re-signed with the other key
    assert _cli("run", str(pkg), "--trust", f"{other}.pub").returncode == 0
    bad_key = _cli("compile", "example", "-O0", "-o", str(tmp_path / "x.ofpkg"), "--sign", str(tmp_path / "none"))
    assert bad_key.returncode != 0 and "cannot read the key" in bad_key.stderr and not (tmp_path / "x.ofpkg").exists()
