"""The runtime loader: checksums, manifest, target checks, input checks, and what
it imports."""
import ast
import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import onnxforge
import onnxforge.runtime
from onnxforge.codegen import host
from onnxforge.codegen.manifest import LIBRARY, MANIFEST, PackageError, TargetMismatchError, read_package, write_package
from onnxforge.ir import DataError

ROOT = Path(__file__).resolve().parents[2]


def edit_tar(path: Path, edit) -> None:
    """Apply `edit` to the package's tar (a file name) and compress it again: a
    package altered after it was built, whose gzip layer is intact."""
    tar_path = path.with_suffix(".tar")
    tar_path.write_bytes(gzip.decompress(path.read_bytes()))
    edit(tar_path)
    path.write_bytes(gzip.compress(tar_path.read_bytes()))


def flip_byte(path: Path, member: str, offset: int = 100) -> None:
    """Change one byte inside `member`'s data."""
    def flip(tar_path):
        with tarfile.open(tar_path) as tar:
            start = tar.getmember(member).offset_data
        with open(tar_path, "r+b") as f:
            f.seek(start + offset)
            byte = f.read(1)
            f.seek(start + offset)
            f.write(bytes([byte[0] ^ 0x01]))
    edit_tar(path, flip)


def rewrite_manifest(src: Path, dest: Path, edit) -> Path:
    """A consistently re-checksummed package whose manifest was edited (a package
    honestly built elsewhere, as far as the loader can tell)."""
    manifest, files = read_package(src)
    edit(manifest)
    manifest.pop("files")
    write_package(dest, manifest, files)
    return dest


# ---------------------------------------------------------------- integrity
def test_modified_library_byte_is_refused(packages, package_copy):
    path = package_copy(packages.get("mlp"))
    flip_byte(path, LIBRARY, 1000)
    with pytest.raises(PackageError, match="checksum mismatch for model.so"):
        onnxforge.runtime.load(path)


def test_modified_manifest_byte_is_refused(packages, package_copy):
    path = package_copy(packages.get("mlp"))
    flip_byte(path, MANIFEST, 20)
    with pytest.raises(PackageError, match="manifest.json does not match its checksum"):
        onnxforge.runtime.load(path)


def test_truncated_or_foreign_files_are_refused(packages, package_copy, tmp_path):
    path = package_copy(packages.get("mlp"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError):
        onnxforge.runtime.load(path)
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07" * 100)
    with pytest.raises(PackageError, match="not a readable onnxforge package"):
        onnxforge.runtime.load(other)
    with pytest.raises(PackageError, match="no such file"):
        onnxforge.runtime.load(tmp_path / "missing.ofpkg")


def test_a_flipped_byte_in_the_compressed_file_is_refused(packages, package_copy):
    path = package_copy(packages.get("mlp"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="corrupt"):
        onnxforge.runtime.load(path)


def test_packages_are_compressed_and_uncompressed_ones_still_load(packages, package_copy):
    """Packages are gzip-compressed tars; plain tars (the format before) load the same."""
    pkg = packages.get("mlp")
    assert pkg.path.read_bytes()[:2] == b"\x1f\x8b"
    _, files = read_package(pkg.path)
    plain = package_copy(pkg)
    plain.write_bytes(gzip.decompress(plain.read_bytes()))
    assert tarfile.open(plain, "r:").getnames()[0] == MANIFEST
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_array_equal(onnxforge.runtime.load(plain)(x=x)["y"], pkg(x=x)["y"])
    assert read_package(plain)[1] == files


def test_extra_member_is_refused(packages, package_copy):
    path = package_copy(packages.get("mlp"))

    def add(tar_path):
        with tarfile.open(tar_path, "a") as tar:
            tar.add(__file__, arcname="../evil.py")
    edit_tar(path, add)
    with pytest.raises(PackageError, match="unexpected file '../evil.py'"):
        onnxforge.runtime.load(path)


# ---------------------------------------------------------------- targets
def test_package_for_another_architecture_is_refused(packages, tmp_path):
    def to_arm(m):
        m["target"].update(name="arm64", arch="aarch64", cpu_features=[])
    path = rewrite_manifest(packages.get("mlp").path, tmp_path / "arm.ofpkg", to_arm)
    with pytest.raises(TargetMismatchError, match=r"built for target arm64 \(aarch64\); this machine is x86_64"):
        onnxforge.runtime.load(path)


@pytest.mark.skipif(not host.cpu_flags(), reason="no /proc/cpuinfo flags here")
def test_package_needing_missing_cpu_features_is_refused(packages, tmp_path):
    def needs_more(m):
        m["target"].update(name="x86-future", cpu_features=m["target"]["cpu_features"] + ["avx1024_imaginary"])
    path = rewrite_manifest(packages.get("mlp").path, tmp_path / "future.ofpkg", needs_more)
    with pytest.raises(TargetMismatchError, match="lacks: avx1024_imaginary"):
        onnxforge.runtime.load(path)


@pytest.mark.skipif(host.cuda_arch() is not None, reason="a GPU is present: the cuda test runs the package instead")
def test_cuda_package_without_gpu_is_refused(packages):
    with pytest.raises(TargetMismatchError, match="no CUDA GPU"):
        onnxforge.runtime.load(packages.get("mlp", target="cuda-sm80").path)


# ---------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def mlp_runtime(packages):
    return onnxforge.runtime.load(packages.get("mlp").path)


def test_outputs_by_name(mlp_runtime):
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    out = mlp_runtime(x=x)
    assert list(out) == ["y", "t"] and out["y"].shape == (4, 16)
    np.testing.assert_allclose(out["t"], np.tanh(out["y"]), atol=1e-6)
    assert mlp_runtime({"x": x})["y"].tolist() == out["y"].tolist()


def test_wrong_input_name(mlp_runtime):
    with pytest.raises(DataError, match=r"unknown input 'X' \(did you mean 'x'\?\); the model's inputs are: x float32\[4,32\]"):
        mlp_runtime(X=np.zeros((4, 32), np.float32))
    with pytest.raises(DataError, match="missing input 'x'"):
        mlp_runtime()


def test_wrong_input_dtype(mlp_runtime):
    with pytest.raises(DataError, match="input 'x': dtype float64, expected float32"):
        mlp_runtime(x=np.zeros((4, 32)))


def test_wrong_input_shape(mlp_runtime, packages):
    with pytest.raises(DataError, match=r"input 'x': shape \[4, 31\], expected \[4,32\] \(dim 1 must be 32\)"):
        mlp_runtime(x=np.zeros((4, 31), np.float32))
    with pytest.raises(DataError, match="has rank 1, expected rank 2"):
        mlp_runtime(x=np.zeros(128, np.float32))
    symbolic = onnxforge.runtime.load(packages.get("symbolic_batch").path)
    assert symbolic(x=np.zeros((7, 16), np.float32))["y"].shape == (7, 1)
    with pytest.raises(DataError, match=r"dim 1 must be 16"):
        symbolic(x=np.zeros((7, 15), np.float32))


# ---------------------------------------------------------------- imports
def test_import_onnxforge_does_not_import_tvm():
    code = ("import sys, onnxforge, onnxforge.codegen, onnxforge.runtime; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tvm', 'tvm_ffi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


def test_runtime_modules_import_only_numpy_and_tvm_runtime():
    """codegen/runtime.py and what it reads (manifest*.py, host.py, elf_check.py, signing.py) need the
    standard library, numpy, TVM's runtime (tvm.runtime, tvm_ffi), ml_dtypes (raw-stored weights) and,
    for signed packages only, cryptography."""
    # tvm.base, tvm_ffi.libinfo, tvm.support (nvcc): loading a CUDA package under runtime-only TVM
    allowed_third_party = {"numpy", "tvm.runtime", "tvm.runtime.vm", "tvm_ffi", "ml_dtypes", "tvm.base", "tvm_ffi.libinfo",
                           "tvm.support", "cryptography.hazmat.primitives", "cryptography.hazmat.primitives.asymmetric"}
    for name in ("runtime.py", "manifest.py", "manifest_schema.py", "host.py", "elf_check.py", "signing.py"):
        tree = ast.parse((ROOT / "codegen" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only our own format/host modules and the error classes
                    ours = ("manifest", "manifest_schema", "elf_check", "signing", "ir.errors", None)
                    assert node.module in ours or (node.module or "").startswith("ir.errors"), \
                        f"{name}: from {'.' * node.level}{node.module}"
                    if node.module is None:
                        assert {a.name for a in node.names} <= {"host", "manifest", "elf_check"}, name
                    continue
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top in sys.stdlib_module_names or mod in allowed_third_party, f"{name} imports {mod}"


_THREADS_PROBE = """
import os, sys, numpy as np, onnxforge.runtime
pkg = onnxforge.runtime.load(sys.argv[1], threads=int(sys.argv[2]) or None)
x = np.ones((4, 32), np.float32)
for _ in range(3):
    pkg(x=x)
allowed = os.sched_getaffinity(os.getpid())
pinned = [t for t in os.listdir("/proc/self/task") if os.sched_getaffinity(int(t)) != allowed]
print(len(allowed), len(pinned))
"""


@pytest.mark.parametrize("threads", [0, 2])
def test_thread_pool_leaves_every_core_to_every_thread(packages, threads):
    """TVM's config_threadpool(1, n) pinned the main thread to core 0 and the model ran on
    one core; set_threads (and the default on load) must pin nothing."""
    if not hasattr(__import__("os"), "sched_getaffinity"):
        pytest.skip("no affinity API on this platform")
    run = subprocess.run([sys.executable, "-c", _THREADS_PROBE, str(packages.get("mlp").path), str(threads)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    allowed, pinned = map(int, run.stdout.split()[-2:])
    assert allowed >= 1 and pinned == 0


def test_pool_workers_sleep_unless_the_user_says_otherwise(monkeypatch):
    """TVM's workers spin on sched_yield() for new work (300000 times by default),
    which on a loaded machine stalls every kernel barrier: the loader sets
    TVM_THREAD_POOL_SPIN_COUNT=0 before the pool starts, keeping a user's value."""
    from onnxforge.codegen import runtime

    monkeypatch.delenv("TVM_THREAD_POOL_SPIN_COUNT", raising=False)
    runtime.quiet_pool_workers()
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "0"
    monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", "1000")
    runtime.quiet_pool_workers()
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "1000"


def _passthrough_model():
    """y = x (Identity), z = the weight w, n = Not(b), q = int8 + 1, e = Relu of an empty input."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(4, 5), "w")
    one = numpy_helper.from_array(np.array(1, np.int8), "one")
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["w"], ["z"]),
             helper.make_node("Not", ["b"], ["n"]), helper.make_node("Add", ["i8", "one"], ["q"]),
             helper.make_node("Relu", ["empty"], ["e"])]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "passthrough", [
        helper.make_tensor_value_info("x", f, [3, 7]), helper.make_tensor_value_info("b", TensorProto.BOOL, [5]),
        helper.make_tensor_value_info("i8", TensorProto.INT8, [9]), helper.make_tensor_value_info("empty", f, [0, 3])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("y", f), ("z", f), ("n", TensorProto.BOOL), ("q", TensorProto.INT8), ("e", f))], [w, one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_outputs_never_share_memory_with_inputs_or_weights_and_any_dtype_passes(tmp_path):
    """Arrays cross into and out of the module without copies on the CPU (DLPack), but
    an output that is an input or a weight comes back as its own array, odd-sized and
    unaligned inputs (bool, int8, empty, slices) are taken as they are."""
    import onnxforge

    pkg = onnxforge.compile(_passthrough_model(), "x86", "-O0", output=tmp_path / "p.ofpkg")
    model = onnxforge.runtime.load(pkg.path)
    base = np.arange(30, dtype=np.float32)
    x = base[1:22].reshape(3, 7)  # unaligned view
    feeds = {"x": x, "b": np.array([1, 0, 1, 1, 0], bool), "i8": np.arange(-4, 5, dtype=np.int8),
             "empty": np.zeros((0, 3), np.float32)}
    for _ in range(2):
        out = model(**feeds)
        np.testing.assert_array_equal(out["y"], x)
        np.testing.assert_array_equal(out["z"], np.arange(20, dtype=np.float32).reshape(4, 5))
        np.testing.assert_array_equal(out["n"], ~feeds["b"])
        np.testing.assert_array_equal(out["q"], feeds["i8"] + 1)
        assert out["e"].shape == (0, 3)
        assert not np.shares_memory(out["y"], x)
        out["y"][...] = -1
        out["z"][...] = -1  # must not reach the weights
    aligned = np.zeros((3, 7), np.float32)
    again = model(**{**feeds, "x": aligned})
    assert not np.shares_memory(again["y"], aligned)
    np.testing.assert_array_equal(model(**feeds)["z"], np.arange(20, dtype=np.float32).reshape(4, 5))


# ---------------------------------------------------------------- hostile packages
def _set(path, value):
    def edit(m):
        *parents, last = path
        for key in parents:
            m = m[key]
        if value is _DROP:
            del m[last]
        else:
            m[last] = value
    return edit


_DROP = object()


@pytest.mark.parametrize("edit, message", [
    (_set(["target"], "x86"), r"manifest\.target: expected an object, got a string \('x86'\)"),
    (_set(["inputs"], _DROP), "the field 'inputs' is missing"),
    (_set(["inputs", 0, "name"], _DROP), r"manifest\.inputs\[0\]: the field 'name' is missing"),
    (_set(["inputs", 0, "shape"], [4, 1.5]), r"manifest\.inputs\[0\]\.shape: expected item 1"),
    (_set(["inputs", 0, "dtype"], "__class__"), r"manifest\.inputs\[0\]\.dtype: expected a dtype name"),
    (_set(["native_libraries"], [{}]), r"manifest\.native_libraries\[0\]: the field 'soname' is missing"),
    (_set(["native_libraries"], [{"soname": "../../evil.so", "python_package": "scipy-openblas32"}]),
     r"native_libraries\[0\]\.soname: expected a plain file or package name"),
    (_set(["params", 0, "shape"], [-1]), r"manifest\.params\[0\]\.shape\[0\]: expected a size"),
    (_set(["format_version"], "1"), "package format version '1'"),
])
def test_malformed_manifest_fields_are_refused_before_use(packages, tmp_path, edit, message):
    path = rewrite_manifest(packages.get("mlp").path, tmp_path / "bad.ofpkg", edit)
    with pytest.raises(PackageError, match=message):
        onnxforge.runtime.load(path)


def test_a_manifest_that_is_not_an_object_is_refused(packages, tmp_path):
    from onnxforge.tools.fuzz import repack_package

    _, files = read_package(packages.get("mlp").path)
    path = tmp_path / "list.ofpkg"
    path.write_bytes(repack_package(b"[1, 2, 3]\n", files))
    with pytest.raises(PackageError, match=r"not an onnxforge package \(manifest format is '\[1, 2, 3\]'\)"):
        onnxforge.runtime.load(path)


def test_native_libraries_only_from_the_packages_onnxforge_uses(packages, tmp_path):
    from onnxforge.codegen.device.libs import OPENBLAS_PACKAGE
    from onnxforge.codegen.manifest import NATIVE_LIBRARY_PACKAGES

    assert OPENBLAS_PACKAGE in NATIVE_LIBRARY_PACKAGES
    edit = _set(["native_libraries"], [{"soname": "this.so", "python_package": "antigravity"}])
    path = rewrite_manifest(packages.get("mlp").path, tmp_path / "imports.ofpkg", edit)
    with pytest.raises(PackageError, match="native libraries from 'antigravity', which onnxforge does not use"):
        onnxforge.runtime.load(path)
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("cut", ["third", "last byte"])
def test_a_truncated_library_with_recomputed_checksums_is_refused_not_a_crash(packages, tmp_path, cut):
    """dlopen of a library cut short dies with SIGBUS; the ELF check refuses it first."""
    manifest, files = read_package(packages.get("mlp").path)
    lib = files[LIBRARY]
    files[LIBRARY] = lib[:len(lib) // 3] if cut == "third" else lib[:-1]
    manifest.pop("files")
    write_package(tmp_path / "cut.ofpkg", manifest, files)
    probe = ("import sys, onnxforge.runtime\n"
             "try:\n    onnxforge.runtime.load(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    run = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "cut.ofpkg")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]  # a signal would be a negative return code
    assert run.stdout.startswith("PackageError") and "model.so is damaged" in run.stdout, run.stdout


def test_a_compression_bomb_is_refused_before_it_fills_memory(tmp_path, monkeypatch):
    from onnxforge.codegen import manifest as fmt

    bomb = tmp_path / "bomb.ofpkg"
    bomb.write_bytes(gzip.compress(bytes(96 << 20), compresslevel=1))  # 96 MiB of zeros in ~100 KiB
    assert bomb.stat().st_size < (1 << 20) and fmt.inflate_limit(bomb.stat().st_size) < (96 << 20)
    with pytest.raises(PackageError, match="inflates to more than .* MiB .*ONNXFORGE_PACKAGE_MAX_BYTES"):
        onnxforge.runtime.load(bomb)
    monkeypatch.setenv("ONNXFORGE_PACKAGE_MAX_BYTES", str(1 << 30))  # the user's override: it inflates (no tar)
    with pytest.raises(PackageError, match="the package has no manifest.json|not a readable onnxforge package"):
        onnxforge.runtime.load(bomb)


def test_a_library_whose_segment_alignment_is_garbled_is_refused():
    """A TLS segment with an impossible alignment loads, then aborts the process when
    the thread pool starts (found by tools/fuzz.py): the header check refuses it."""
    import struct

    from onnxforge.codegen.elf_check import check_elf

    lib = bytearray(next(Path(np.__file__).parent.rglob("*.so")).read_bytes())  # any shared library of this machine
    assert check_elf(bytes(lib), host.host_arch()) is None
    phoff, = struct.unpack_from("<Q", lib, 32)
    struct.pack_into("<Q", lib, phoff + 48, 3 << 40)  # p_align of the first program header
    assert "impossible alignment" in check_elf(bytes(lib), host.host_arch())
