"""ofrun's gzip/DEFLATE decoder (codegen/device/inflate.h) against Python's zlib:
every level and strategy zlib has, stored/fixed/dynamic blocks, multi-member
files, gzip header fields, and damaged input (an error, never a crash: built with
AddressSanitizer where the compiler has it)."""
import gzip
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DEVICE = Path(__file__).resolve().parents[2] / "codegen" / "device"

DRIVER = r"""
#include <cstdio>
#include <fstream>
#include <sstream>
#include "inflate.h"
int main(int argc, char** argv) {  // gunzip argv[1] to argv[2]
  std::ifstream in(argv[1], std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  try {
    std::string out = inflate::Gunzip(s.str());
    std::ofstream(argv[2], std::ios::binary).write(out.data(), out.size());
  } catch (const inflate::Error& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
"""

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def gunzip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inflate")
    (folder / "main.cc").write_text(DRIVER)
    exe = folder / "gunzip"
    base = ["g++", "-std=c++17", "-O1", "-I", str(DEVICE), "-o", str(exe), str(folder / "main.cc")]
    sanitized = subprocess.run([*base, "-fsanitize=address,undefined", "-fno-sanitize-recover=all"], capture_output=True)
    if sanitized.returncode != 0:
        subprocess.run(base, check=True, capture_output=True)

    def run(data: bytes) -> tuple[int, bytes, str]:
        src, dst = folder / "in.gz", folder / "out"
        src.write_bytes(data)
        dst.unlink(missing_ok=True)
        done = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True)
        return done.returncode, dst.read_bytes() if dst.exists() else b"", done.stderr

    return run


def compress(data: bytes, level: int, strategy: int, mem_level: int = 8) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31, mem_level, strategy)  # wbits 31: a gzip wrapper
    return c.compress(data) + c.flush()


STRATEGIES = [zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FIXED]

# Compressible data: pieces of random bytes repeated (long matches, far and near
# distances) mixed with runs and incompressible stretches.
pieces = st.lists(st.tuples(st.binary(min_size=0, max_size=300), st.integers(1, 40)), max_size=12)


def expand(parts) -> bytes:
    return b"".join(chunk * times for chunk, times in parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=pieces, level=st.integers(0, 9), strategy=st.sampled_from(STRATEGIES), mem_level=st.integers(1, 9))
def test_decodes_what_zlib_writes(gunzip, parts, level, strategy, mem_level):
    data = expand(parts)
    rc, out, err = gunzip(compress(data, level, strategy, mem_level))
    assert rc == 0, err
    assert out == data


def test_large_inputs_multi_member_files_and_header_fields(gunzip, tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    big = rng.integers(0, 16, size=3_000_000, dtype="uint8").tobytes() + bytes(200_000) + rng.bytes(500_000)
    for level in (1, 6, 9):
        rc, out, err = gunzip(gzip.compress(big, level))
        assert rc == 0 and out == big, err
    # a name and a comment in the header, an extra field, a header CRC, two members
    import io
    buf = io.BytesIO()
    with gzip.GzipFile(filename="weights.tar", mode="wb", fileobj=buf, mtime=1) as f:
        f.write(b"first member " * 50)
    header = bytes([0x1F, 0x8B, 8, 4 | 16 | 2, 0, 0, 0, 0, 0, 255]) + (3).to_bytes(2, "little") + b"abc" + b"a comment\0"
    header += (zlib.crc32(header) & 0xFFFF).to_bytes(2, "little")
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    second = b"second" * 1000
    body = raw.compress(second) + raw.flush()
    member2 = header + body + zlib.crc32(second).to_bytes(4, "little") + len(second).to_bytes(4, "little")
    rc, out, err = gunzip(buf.getvalue() + member2 + bytes(16))
    assert rc == 0, err
    assert out == b"first member " * 50 + second


@pytest.mark.parametrize("damage", ["truncated", "no trailer", "bad crc", "bad size", "not gzip", "bad method",
                                    "block type 3", "garbage after"])
def test_damaged_input_is_an_error_with_a_reason(gunzip, damage):
    data = bytes(range(256)) * 40
    gz = bytearray(gzip.compress(data, 6))
    if damage == "truncated":
        gz = gz[: len(gz) // 2]
    elif damage == "no trailer":
        gz = gz[:-8]
    elif damage == "bad crc":
        gz[-6] ^= 1
    elif damage == "bad size":
        gz[-3] ^= 1
    elif damage == "not gzip":
        gz[0] = 0x50
    elif damage == "bad method":
        gz[2] = 7
    elif damage == "block type 3":
        gz[10] |= 0b110
    elif damage == "garbage after":
        gz += b"PK\3\4"
    rc, out, err = gunzip(bytes(gz))
    assert rc == 1, (rc, err)
    assert err.startswith("error: ") and len(err) > 12


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=pieces, level=st.integers(1, 9), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_a_flipped_bit_never_crashes_and_never_decodes_wrong(gunzip, parts, level, where, bit):
    data = expand(parts) or b"x"
    gz = bytearray(gzip.compress(data, level, mtime=0))
    at = min(int(where * len(gz)), len(gz) - 1)
    gz[at] ^= 1 << bit
    rc, out, err = gunzip(bytes(gz))
    assert rc in (0, 1), err  # no signal (a sanitizer report exits with another code)
    if rc == 0:  # header bytes that do not matter (mtime, OS, XFL) may flip harmlessly
        assert out == data
    else:
        assert err.startswith("error: ")
