"""ofrun's package checks fuzzed under AddressSanitizer and UndefinedBehaviorSanitizer.

`python -m onnxforge.tools.fuzz --ofrun N` (or `run(N, seed)` here) builds
codegen/device/fuzz_driver.cc (ofrun.cc's checks: tar reader, inflate with its
limit, manifest schema, checksums, target, weights (.npz/.npy readers), ELF
headers) with g++ -fsanitize=address,undefined against the installed TVM FFI
library, writes N package mutants to a corpus file and runs them through it in one
process. The mutants are tools/fuzz.py's hostile packages (truncated, flipped,
recomputed checksums, hostile manifests, extra members, gzip bombs) plus what only a
native reader meets: uncompressed tars with garbled headers and hostile pax records,
.npy headers with hostile shapes and dtypes (checksums recomputed), and hostile
signatures (every other case is checked as `ofrun --trust` with one key). A case is
ok (every check passed), refused (ofrun's one-line PackageError / UsageError) or
BAD: another exception, a sanitizer finding or a crash (the driver names the case
as it dies; the run goes on from the next one).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..codegen.device.libs import cache_root, runtime_for
from ..codegen.host import host_arch

SOURCE_DIR = Path(__file__).resolve().parents[1] / "codegen" / "device"
SOURCES = ("fuzz_driver.cc", "ofrun.cc", "checks.h", "npy.h", "package.h", "inflate.h", "signature.h")
FLAGS = ("-std=c++17", "-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=undefined")
# leaks: TVM's FFI keeps its registries for the process; a failed allocation throws
ASAN_OPTIONS = "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0"


class DriverUnavailable(RuntimeError):
    """No g++ with the sanitizer runtimes here."""


def build_driver() -> Path:
    """The sanitizer build of the driver, cached by its sources and the FFI version."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise DriverUnavailable("no g++ (or $CXX) to build the ofrun fuzz driver")
    runtime = runtime_for(host_arch())
    key = hashlib.sha256(f"{cxx} {FLAGS} {sorted(runtime.versions.items())}".encode())
    for name in SOURCES:
        key.update((SOURCE_DIR / name).read_bytes())
    out = cache_root() / "fuzz" / f"ofrun_driver-{key.hexdigest()[:12]}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    ffi = next(lib for lib in runtime.libs if lib.name.startswith("libtvm_ffi"))
    tmp = out.with_suffix(".tmp")
    done = subprocess.run([cxx, *FLAGS, "-o", str(tmp), str(SOURCE_DIR / "fuzz_driver.cc"), "-I", str(SOURCE_DIR),
                           "-I", str(runtime.include), str(ffi), "-ldl", f"-Wl,-rpath,{ffi.parent}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
        raise DriverUnavailable("building the ofrun fuzz driver failed: " + " | ".join(errors[:3]))
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- native-reader mutants
def _header(name: bytes, size: int, kind: bytes) -> bytes:
    """A ustar header block (checksum filled in)."""
    h = bytearray(512)
    h[0:len(name[:100])] = name[:100]
    h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    h[124:136] = (b"%011o\0" % size) if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    h[136:148], h[156:157], h[257:265] = b"00000000000\0", kind, b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _block(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


_PAX = [b"99999999999999999999 path=x\n", b"5 size=1\n", b"14 size=-5\n", b"30 path=model.so\n",
        b"18446744073709551615 x=y\n", b"26 size=99999999999999\n", b"0 \n", b"9 x\n", b"abc path=x\n",
        b"17 path=../x.so\n", b"40 size=1\n"]


def _npy_mutant(npy: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = 10 if npy[6] == 1 else 12
    length = struct.unpack_from("<H" if npy[6] == 1 else "<I", npy, 8)[0]
    header, body = npy[start:start + length].decode("latin1"), npy[start + length:]
    choice = rng.randrange(5)
    if choice == 0:
        shape = rng.choice(["(-1,)", "(99999999999999999999, 2)", "(4611686018427387904, 4)", "(1, a)", "(", "()",
                            "(0,)", "(2,, 3)"])
        header = header[:header.find("'shape':")] + f"'shape': {shape}, }}"
        what = f"shape {shape}"
    elif choice == 1:
        descr = rng.choice(["'|O'", "'<f8'", "''", "'", "'<f4", "'>f4'", "5"])
        header = header.replace(header[header.find("'descr':"):header.find(",", header.find("'descr':"))],
                                f"'descr': {descr}")
        what = f"descr {descr}"
    elif choice == 2:
        header, what = header.replace("False", "True"), "fortran order"
    elif choice == 3:
        cut = rng.randrange(len(npy))
        return npy[:cut], f"cut at {cut}"
    else:
        version = rng.choice([0, 2, 3, 9])
        return npy[:6] + bytes([version]) + npy[7:], f"version {version}"
    raw = header.encode("latin1")
    return npy[:6] + bytes([1, 0]) + struct.pack("<H", len(raw) & 0xFFFF) + raw + body, what


def _npz_with(npz: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One .npy member of a stored zip garbled in place (sizes fixed up in the local header)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(npz)) as z:
        names = z.namelist()
        if not names:
            return npz, "no members"
        members = {n: z.read(n) for n in names}
    name = rng.choice(names)
    members[name], what = _npy_mutant(members[name], rng)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return buf.getvalue(), f"{name}: {what}"


def native_mutant(original: bytes, index: int, seed: int) -> tuple[bytes, str]:
    """A package mutant for the native readers (see the module doc)."""
    from .fuzz import package_members, package_mutant, repack_package

    rng = random.Random(seed * 1_000_039 + index)
    kind = rng.randrange(6)
    if kind <= 1:
        return package_mutant(original, index, seed)
    if kind == 2:  # an uncompressed tar with header bytes garbled
        b = bytearray(gzip.decompress(original))
        starts = [0] + [i for i in range(512, len(b) - 512, 512) if b[i + 257:i + 262] == b"ustar"]
        for _ in range(rng.randint(1, 6)):
            at = rng.choice(starts) + rng.choice([rng.randrange(512), 124 + rng.randrange(12), 156, 0, 345])
            b[at] = rng.randrange(256)
        return bytes(b), "plain tar, header bytes garbled"
    members = package_members(original)
    if kind == 3:  # hostile pax records before a member
        record = rng.choice(_PAX)
        out = b""
        for name, data in members.items():
            if rng.random() < 0.5:
                out += _header(b"PaxHeader", len(record), b"x") + _block(record)
            out += _header(name.encode(), len(data), b"0") + _block(data)
        return out + bytes(1024), f"pax record {record[:30]!r}"
    text = members.pop("manifest.json")
    members.pop("manifest.sha256")
    if kind == 5:  # a hostile signature (the driver trusts the key 01 x 32 on every other case)
        key = "01" * 32
        members["manifest.sig"] = rng.choice([
            json.dumps({"algorithm": "ed25519", "public_key": key, "signature": os.urandom(64).hex()}).encode(),
            json.dumps({"algorithm": "ed25519", "public_key": key, "signature": "zz" * 64}).encode(),
            json.dumps({"algorithm": "rsa", "public_key": key[:10], "signature": ""}).encode(),
            json.dumps({"algorithm": "ed25519", "public_key": 5, "signature": None}).encode(),
            b"[]", b"{}", b"null", b"{", os.urandom(96)])
        return repack_package(text, members), f"manifest.sig {members['manifest.sig'][:40]!r}"
    members["weights.npz"], what = _npz_with(members["weights.npz"], rng)
    data = repack_package(text, members)
    return (data if rng.random() < 0.5 else gzip.decompress(data)), f"weights .npy {what}, checksums recomputed"


# --------------------------------------------------------------------------- run
def run(cases: int, seed: int = 0, original: bytes | None = None, timeout: float = 1800.0, batch: int = 2000) -> dict:
    """{"counts": {"ok": n, "refused": n, "BAD": n}, "bad": [{"index", "mutation", "message"}], "driver"}.
    Cases go through the driver `batch` at a time (a mutant is ~200 KiB)."""
    driver = build_driver()
    if original is None:
        from .fuzz import _example_package

        with tempfile.TemporaryDirectory(prefix="onnxforge-fuzz-") as tmp:
            original = _example_package(Path(tmp))
    counts = {"ok": 0, "refused": 0, "BAD": 0}
    bad: list[dict] = []
    # the inflate limit at 16 MiB (the seed inflates to under 1 MiB): bombs stop there, not at 64 MiB
    env = dict(os.environ, ASAN_OPTIONS=ASAN_OPTIONS, UBSAN_OPTIONS="print_stacktrace=1",
               ONNXFORGE_PACKAGE_MAX_BYTES=str(16 << 20))
    with tempfile.TemporaryDirectory(prefix="onnxforge-ofrun-fuzz-") as tmp:
        corpus = Path(tmp) / "corpus"
        for first in range(0, cases, batch):
            mutants = {i: native_mutant(original, i, seed) for i in range(first, min(first + batch, cases))}
            pending = list(mutants)
            while pending:
                with open(corpus, "wb") as f:
                    for i in pending:
                        f.write(struct.pack("<Q", len(mutants[i][0])) + mutants[i][0])
                done = subprocess.run([str(driver), str(corpus)], capture_output=True, text=True, env=env,
                                      timeout=timeout)
                verdicts = done.stdout.splitlines()
                for i, verdict in zip(pending, verdicts):
                    status = verdict.split(" ", 1)[0]
                    counts[status] += 1
                    if status == "BAD":
                        bad.append({"index": i, "mutation": mutants[i][1][:200], "message": json.loads(verdict[4:])})
                if len(verdicts) >= len(pending):
                    break
                i = pending[len(verdicts)]  # the driver died on this one
                finding = [line for line in done.stderr.splitlines() if "ERROR:" in line or "runtime error:" in line]
                counts["BAD"] += 1
                bad.append({"index": i, "mutation": mutants[i][1][:200],
                            "message": (finding[0] if finding else f"the driver exited with {done.returncode}")[:300]})
                pending = pending[len(verdicts) + 1:]
    return {"counts": counts, "bad": bad, "driver": str(driver)}
