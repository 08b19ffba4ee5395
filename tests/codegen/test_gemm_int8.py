"""codegen/cpu/gemm_int8.c on its own: every variant this host can run (generic C,
AVX2's int16 pairs, AVX-512 VNNI) equals numpy's int64 product bit for bit, on
MiniLM-L6's shapes, odd sizes (k and n off the 4 and 16 tiles, one row, an empty k)
and the extreme values (255 x -128 everywhere: no saturation anywhere); the pack's
column sums; and ONNXFORGE_CPU_ISA capping the variant. Built with the C++ compiler
and the stand-in thread pool of test_gemm_packed (three tasks per launch)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnxforge.codegen.cpu.blas import GEMM_PACKED_C
from onnxforge.codegen.host import host_arch
from tests.codegen.test_gemm_packed import _POOL, _host_has

GEMM_INT8_C = Path(GEMM_PACKED_C).with_name("gemm_int8.c")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++)")
    folder = tmp_path_factory.mktemp("gemm_int8")
    (folder / "pool.cc").write_text(_POOL)
    lib = folder / "libgemm_int8.so"
    subprocess.run([cxx, "-O2", "-fPIC", "-shared", "-Wl,-Bsymbolic", "-DONNXFORGE_PARALLEL_MIN_FLOPS=0",
                    str(GEMM_INT8_C), str(GEMM_PACKED_C), str(folder / "pool.cc"), "-pthread", "-o", str(lib)],
                   check=True)
    return lib


_RUN = r"""
import ctypes, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1])
lib.onnxforge_int8_isa_name.restype = ctypes.c_char_p
size = lib.onnxforge_qgemm_packed_size
size.restype, size.argtypes = ctypes.c_int64, [ctypes.c_int32] * 2
pack = lib.onnxforge_qgemm_pack
pack.argtypes = [ctypes.c_int32] * 2 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
gemm = lib.onnxforge_qgemm_u8s8
gemm.argtypes = [ctypes.c_int32] * 3 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_int64]
rng = np.random.default_rng(0)
checked = 0
for m, k, n in [(128, 384, 384), (128, 384, 1536), (128, 1536, 384),  # MiniLM-L6's layers at 1 x 128
                (1, 1, 1), (3, 5, 17), (7, 1030, 33), (13, 77, 40), (9, 3, 16), (2, 6, 100), (17, 0, 5),
                (8, 4, 16), (11, 9, 31)]:
    for extreme in (False, True):
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        if extreme:
            a[:], b[:] = 255, -128
        bp = np.zeros(size(k, n), np.int8)
        colsum = np.zeros(n, np.int32)
        pack(k, n, b.ctypes.data, n, bp.ctypes.data, colsum.ctypes.data)
        assert np.array_equal(colsum, b.astype(np.int64).sum(axis=0)), (m, k, n)
        # a wider output buffer: the kernel writes n columns of each row and nothing else
        c = np.full((m, n + 3), 7, np.int32)
        assert gemm(m, n, k, a.ctypes.data, k, bp.ctypes.data, c.ctypes.data, n + 3) == 0
        want = a.astype(np.int64) @ b.astype(np.int64)
        assert np.array_equal(c[:, :n], want), (m, k, n, extreme, int(np.abs(c[:, :n] - want).max()))
        assert (c[:, n:] == 7).all()
        checked += 1
print(lib.onnxforge_int8_isa_name().decode(), checked)
"""


def _run(library, isa):
    env = {**os.environ, "ONNXFORGE_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", _RUN, str(library)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    name, checked = out.stdout.split()
    return name, int(checked)


@pytest.mark.parametrize("isa, variant", [("generic", "generic"), ("avx2", "avx2"), ("avx512", "vnni512")])
def test_every_variant_is_exact(library, isa, variant):
    if isa != "generic" and host_arch() != "x86_64":
        pytest.skip("x86-64 variant")
    if isa == "avx2" and not _host_has("avx2"):
        pytest.skip("host has no AVX2")
    if isa == "avx512" and not (_host_has("avx512f") and _host_has("avx512_vnni")):
        pytest.skip("host has no AVX-512 VNNI")
    name, checked = _run(library, isa)
    assert name == variant
    assert checked == 24


def test_isa_cap_never_picks_more_than_the_host_has(library):
    name, _ = _run(library, "")
    x86 = host_arch() == "x86_64"
    want = ("vnni512" if _host_has("avx512f") and _host_has("avx512_vnni") else
            "avx2" if _host_has("avx2") and _host_has("fma") else "generic")
    assert name == (want if x86 else "generic")
    assert _run(library, "something-else")[0] == "generic"
