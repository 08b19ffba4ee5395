"""codegen/cpu/gemm_packed.c on its own: every ISA variant this host can run (and
the AVX-512 variant's blocking, compiled for AVX2 under ONNXFORGE_GEMM_TEST)
against numpy, over shapes that hit every edge (row and column tails, k chunks,
an empty k), with bias, every epilogue activation (activation.h) and NaN; the direct
convolution over a packed weight against a float64 convolution; and ONNXFORGE_CPU_ISA capping the variant.
The library is built here with the C++ compiler the builds use, with a stand-in
for TVM's thread pool (two tasks, run one after the other)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from onnxforge.codegen.cpu.blas import GEMM_PACKED_C
from onnxforge.codegen.host import cpu_flags, host_arch
from onnxforge.codegen.cpu.extern_calls import pack_weight

# A stand-in for TVM's pool: 3 tasks on threads of their own, the other two starting late
# (a worker being woken), and a barrier (the direct convolution pads its input in the
# same launch and must wait for the other tasks' shares before reading them).
_POOL = r"""
#include <stdint.h>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>
extern "C" {
typedef struct { void *sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int, TVMParallelGroupEnv *, void *);
static std::atomic<int> arrived{0}, generation{0};
int TVMBackendParallelLaunch(FTVMParallelLambda f, void *cdata, int num_task) {
  TVMParallelGroupEnv env = {0, 3};
  std::vector<std::thread> others;
  for (int t = 1; t < 3; ++t)
    others.emplace_back([=, &env] {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      f(t, &env, cdata);
    });
  f(0, &env, cdata);
  for (auto &th : others) th.join();
  return 0;
}
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv) {
  const int gen = generation.load();
  if (arrived.fetch_add(1) + 1 == penv->num_task) {
    arrived.store(0);
    generation.fetch_add(1);
  } else {
    while (generation.load() == gen) std::this_thread::yield();
  }
  return 0;
}
int32_t onnxforge_in_serial(void) { return 0; }
/* kernels.c's OpenBLAS path, which onnxforge_sgemm_rows takes above max_rows: says it was called */
int32_t onnxforge_sgemm(int32_t, int32_t, int32_t, int32_t, const float *, int64_t, int32_t, const float *, int64_t,
                        int32_t, float *, const float *, int32_t, int32_t, float, float, float, float) { return 7; }
}
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++)")
    folder = tmp_path_factory.mktemp("gemm")
    (folder / "pool.cc").write_text(_POOL)
    lib = folder / "libgemm.so"
    # the serial bounds at 0: every call below takes the pool's split paths; -Bsymbolic: the
    # stand-in pool, not libtvm_runtime's (loaded first, its symbols would take precedence)
    subprocess.run([cxx, "-O2", "-fPIC", "-shared", "-Wl,-Bsymbolic", "-DONNXFORGE_GEMM_TEST",
                    "-DONNXFORGE_PARALLEL_MIN_FLOPS=0", "-DONNXFORGE_PARALLEL_MIN_VALUES=0", str(GEMM_PACKED_C),
                    str(folder / "pool.cc"), "-pthread", "-o", str(lib)], check=True)
    return lib


_RUN = r"""
import ctypes, sys
import numpy as np
from onnxforge.codegen.cpu.extern_calls import pack_weight
lib = ctypes.CDLL(sys.argv[1])
lib.onnxforge_packed_gemm_isa.restype = ctypes.c_char_p
f = lib.onnxforge_sgemm_packed
f.argtypes = [ctypes.c_int32] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int32] * 2 + [ctypes.c_float] * 4
rng = np.random.default_rng(0)
worst = 0.0
sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
# activation.h: (kind, lo, hi, alpha, beta) and what it computes on v = a @ w (+ bias)
ACTS = [((0, 0, 0, 1, 0), lambda v: v), ((1, -0.5, 0.7, 1, 0), lambda v: np.clip(v, -0.5, 0.7)),
        ((1, 0.0, np.inf, 1, 0), lambda v: np.maximum(v, 0)),
        ((2, 0, 0, 1, 0), lambda v: v * sigmoid(v)), ((2, 0, 0, 1.702, 0.1), lambda v: v * sigmoid(1.702 * v + 0.1)),
        ((3, 0, 1, 1 / 6, 0.5), lambda v: v * np.clip(v / 6 + 0.5, 0, 1))]
for m, n, k in [(1, 1, 1), (3, 17, 5), (7, 33, 1030), (13, 40, 77), (25, 16, 2000), (40, 100, 513),
                (130, 48, 64), (2, 8210, 40), (5, 3, 0), (20, 33, 300), (14, 16, 9)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)  # stored transposed, as Gemm transB=1
    bias = rng.standard_normal(n).astype(np.float32)
    if m * k:
        a[0, 0] = np.nan  # a NaN in a row goes through bias and clamp as NaN
    bp = pack_weight(w, True)
    for use_bias, (act, want) in [(0, ACTS[0]), (1, ACTS[0]), (0, ACTS[2])] + [(1, x) for x in ACTS[1:]]:
        c = np.full((m, n), 7.0, np.float32)
        f(m, n, k, a.ctypes.data, bp.ctypes.data, c.ctypes.data, bias.ctypes.data if use_bias else None,
          use_bias, *act)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = want(a.astype(np.float64) @ w.T.astype(np.float64) + (bias if use_bias else 0))
        assert np.array_equal(np.isnan(c), np.isnan(ref)), (m, n, k, act)
        ok = ~np.isnan(ref)
        scale = max(1.0, float(np.abs(ref[ok]).max())) if ok.any() else 1.0
        worst = max(worst, float(np.abs(c[ok] - ref[ok]).max() / scale) if ok.any() else 0.0)
rows = lib.onnxforge_sgemm_rows
rows.argtypes = [ctypes.c_int32] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int32] + [ctypes.c_void_p] * 3 + [ctypes.c_int32] * 2 + [ctypes.c_float] * 4
a = rng.standard_normal((10, 20)).astype(np.float32)
w = rng.standard_normal((20, 30)).astype(np.float32)
c = np.zeros((10, 30), np.float32)
bp = pack_weight(w, False)  # kept alive across the calls
assert rows(10, 30, 20, 10, a.ctypes.data, w.ctypes.data, 0, bp.ctypes.data, c.ctypes.data,
            None, 0, 0, 0, 0, 1, 0) == 0  # up to max_rows: the packed kernel
worst = max(worst, float(np.abs(c - a @ w).max()) / float(np.abs(a @ w).max()))
assert rows(10, 30, 20, 9, a.ctypes.data, w.ctypes.data, 0, bp.ctypes.data, c.ctypes.data,
            None, 0, 0, 0, 0, 1, 0) == 7  # above: OpenBLAS (kernels.c; the stand-in here)
# the direct convolution over a packed weight: windows, strides, dilations, paddings
# (none, uneven, wider than the window), output rows of every tile width (MR, 4, 2, 1),
# tap counts past one k chunk, few output rows (channel stripes) and many; rows
# shorter than 4 tiles take tiles across rows, longer ones (ow >= 48, so for every
# variant) tiles along each row at strides 1, 2 and 3
conv = lib.onnxforge_conv2d_packed
conv.argtypes = [ctypes.c_int32] * 15 + [ctypes.c_void_p] * 4 + [ctypes.c_int32] * 2 + [ctypes.c_float] * 4


def conv_ref(x, w, b, s, p, d, oh, ow):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p[0], oh * s[0] + 64), (p[1], ow * s[1] + 64)))
    out = np.zeros((x.shape[0], w.shape[0], oh, ow)) + b[None, :, None, None]
    for ky in range(w.shape[2]):
        for kx in range(w.shape[3]):
            win = xp[:, :, ky * d[0]::s[0], kx * d[1]::s[1]][:, :, :oh, :ow]
            out += np.einsum("nchw,oc->nohw", win, w[:, :, ky, kx].astype(np.float64))
    return out


for nb, ci, h, wd, co, kh, kw, s, p, d in [
        (1, 3, 17, 19, 5, 3, 3, (1, 1), (1, 1), (1, 1)), (2, 8, 20, 20, 33, 3, 3, (2, 2), (1, 1), (1, 1)),
        (1, 16, 9, 13, 16, 1, 1, (1, 1), (0, 0), (1, 1)), (1, 4, 11, 12, 20, 5, 3, (2, 1), (2, 1), (1, 2)),
        (1, 32, 10, 10, 40, 3, 3, (1, 1), (1, 1), (2, 2)), (3, 5, 7, 7, 7, 7, 7, (1, 1), (3, 3), (1, 1)),
        (1, 2, 30, 40, 18, 3, 3, (1, 1), (0, 0), (1, 1)), (1, 1, 5, 37, 3, 1, 4, (1, 1), (0, 1), (1, 1)),
        (1, 48, 4, 5, 17, 3, 3, (1, 1), (1, 1), (1, 1)), (1, 3, 2, 2, 4, 3, 3, (1, 1), (2, 2), (1, 1)),
        (1, 4, 13, 40, 16, 3, 3, (3, 3), (1, 1), (1, 1)),
        (1, 3, 5, 53, 20, 3, 3, (1, 1), (1, 1), (1, 1)), (1, 4, 7, 110, 17, 3, 3, (2, 2), (1, 1), (1, 1)),
        (1, 3, 9, 160, 8, 3, 3, (3, 3), (1, 1), (1, 1))]:  # stride 3: the any-stride tile (1 and 2 have their own)
    x = rng.standard_normal((nb, ci, h, wd)).astype(np.float32)
    w = rng.standard_normal((co, ci, kh, kw)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    oh = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (wd + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    bp = pack_weight(w.reshape(co, -1), True)
    v = conv_ref(x, w, 0 * b, s, p, d, oh, ow)
    for use_bias, (act, want) in [(0, ACTS[0])] + [(1, a) for a in ACTS]:
        out = np.full((nb, co, oh, ow), 7.0, np.float32)
        assert conv(nb, ci, h, wd, co, oh, ow, kh, kw, *s, *p, *d, x.ctypes.data, bp.ctypes.data, out.ctypes.data,
                    b.ctypes.data, use_bias, *act) == 0
        with np.errstate(over="ignore"):
            ref = want(v + (b[None, :, None, None] if use_bias else 0))
        worst = max(worst, float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max()))))
print(lib.onnxforge_packed_gemm_isa().decode(), worst)
"""


def _run(library, isa):
    env = {**os.environ, "ONNXFORGE_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", _RUN, str(library)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    name, worst = out.stdout.split()
    return name, float(worst)


def _host_has(flag: str) -> bool:
    return flag in cpu_flags()


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "wide-test"])
def test_every_variant_matches_numpy(library, isa):
    x86 = host_arch() == "x86_64"
    if isa != "generic" and not x86:
        pytest.skip("x86-64 variant")
    if isa == "avx512" and not _host_has("avx512f"):
        pytest.skip("host has no AVX-512 (the wide-test case runs its blocking on AVX2)")
    if isa in ("avx2", "wide-test") and not (_host_has("avx2") and _host_has("fma")):
        pytest.skip("host has no AVX2/FMA")
    name, worst = _run(library, isa)
    assert name == isa  # the variant asked for is the one that ran (the host supports it)
    assert worst < 1e-4  # float32 sums of up to 2,000 terms, relative to the largest output


def test_isa_cap_never_picks_more_than_the_host_has(library):
    name, _ = _run(library, "")  # no cap: the best this host has
    want = "avx512" if _host_has("avx512f") else "avx2" if _host_has("avx2") and _host_has("fma") else "generic"
    assert name == (want if host_arch() == "x86_64" else "generic")
    assert _run(library, "something-else")[0] == "generic"  # an unknown value: the lowest


def test_pack_weight_layout():
    w = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)  # k=3, n=20: two panels, the second padded
    bp = pack_weight(w, False)
    assert bp.shape == (2, 3, 16)
    np.testing.assert_array_equal(bp[0], w[:, :16])
    np.testing.assert_array_equal(bp[1, :, :4], w[:, 16:])
    assert not bp[1, :, 4:].any()
    np.testing.assert_array_equal(pack_weight(w.T.copy(), True), bp)


def _isa_model(path):
    """A dense layer with a weight (packed GEMM), a depthwise conv (kernels.c), a strided
    one (depthwise.c) and an LSTM (recurrent.c gates): every ISA-picked kernel of a module."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"dw": rng.standard_normal((4, 1, 3, 3)), "dw2": rng.standard_normal((4, 1, 5, 5)), "fc": rng.standard_normal((40, 24)) * 0.2,
             "W": rng.standard_normal((1, 32, 24)) * 0.3, "R": rng.standard_normal((1, 32, 8)) * 0.3,
             "shape": np.array([6, 40])}
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k) for k, v in inits.items()]
    nodes = [helper.make_node("Conv", ["x", "dw"], ["c"], pads=[1, 1, 1, 1], group=4),
             helper.make_node("Reshape", ["c", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["y"]),
             helper.make_node("Unsqueeze", ["y", "axis1"], ["seq"]),
             helper.make_node("LSTM", ["seq", "W", "R"], ["h", "hn"], hidden_size=8),
             helper.make_node("Conv", ["x", "dw2"], ["z"], pads=[2, 2, 2, 2], strides=[2, 2], group=4)]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(nodes, "isa", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, path)


_RUN_PACKAGE = r"""
import sys
import numpy as np
import onnxforge
x = np.load(sys.argv[2])
out = onnxforge.runtime.load(sys.argv[1])(x=x)
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in out.items()})
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_compiled_module_matches_under_every_isa_cap(tmp_path, isa):
    """ONNXFORGE_CPU_ISA reaches every kernel of a compiled module: the package runs
    with the cap in a fresh process and matches onnxruntime."""
    pytest.importorskip("scipy_openblas32")
    ort = pytest.importorskip("onnxruntime")
    import onnxforge

    if isa == "avx2" and not _host_has("avx2"):
        pytest.skip("host has no AVX2")
    if isa == "avx512" and not _host_has("avx512f"):
        pytest.skip("host has no AVX-512")
    _isa_model(tmp_path / "m.onnx")
    pkg = onnxforge.compile(tmp_path / "m.onnx", target="x86", pipeline="-O1", output=tmp_path / "m.ofpkg")
    assert pkg.manifest.get("transform_params") is True  # the dense layer's weight is packed at load
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 10)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "ONNXFORGE_CPU_ISA": isa}
    run = subprocess.run([sys.executable, "-c", _RUN_PACKAGE, str(tmp_path / "m.ofpkg"), str(tmp_path / "x.npy"),
                          str(tmp_path / "out.npz")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    ref = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for name, r in zip(("y", "h", "z"), ref):
        np.testing.assert_allclose(got[name], r, rtol=1e-4, atol=1e-4)


def test_rows_known_at_run_time_take_packed_or_openblas(tmp_path):
    """A dense layer with a symbolic batch: up to PACKED_MAX_ROWS rows the packed
    weight, above it OpenBLAS on the weight as stored; both match onnxruntime."""
    pytest.importorskip("scipy_openblas32")
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnxforge
    from onnxforge.codegen.cpu.extern_calls import PACKED_MAX_ROWS

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 40])],
                              [numpy_helper.from_array(rng.standard_normal((40, 24)).astype(np.float32), "w"),
                               numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    pkg = onnxforge.compile(tmp_path / "m.onnx", target="x86", pipeline="-O1", output=tmp_path / "m.ofpkg")
    assert pkg.manifest.get("transform_params") is True
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for rows in (1, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1, 300):
        x = rng.standard_normal((rows, 24)).astype(np.float32)
        np.testing.assert_allclose(pkg(x=x)["y"], sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_kernel_objects_are_compiled_once_and_cached(tmp_path, monkeypatch):
    from onnxforge.codegen.cpu.pipeline import kernel_object

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler (g++)")
    monkeypatch.setenv("ONNXFORGE_CACHE", str(tmp_path))
    obj = kernel_object(GEMM_PACKED_C, os.environ.get("CXX", "g++"))
    assert obj.endswith(".o") and os.path.isfile(obj) and str(tmp_path) in obj
    first = os.stat(obj).st_mtime_ns
    assert kernel_object(GEMM_PACKED_C, os.environ.get("CXX", "g++")) == obj and os.stat(obj).st_mtime_ns == first
    changed = tmp_path / "gemm_packed.c"  # another source text: another object
    changed.write_text(GEMM_PACKED_C.read_text() + "\n/* changed */\n")
    assert kernel_object(changed, os.environ.get("CXX", "g++")) != obj
    assert kernel_object(GEMM_PACKED_C, "no-such-compiler-here") == str(GEMM_PACKED_C)  # compiled in the link
