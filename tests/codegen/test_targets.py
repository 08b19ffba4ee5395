"""Named targets: parsing, host detection, and the cross-compiled outputs (arm64
ELF, CUDA for sm_80/sm_90 without a GPU)."""
import shutil
import tarfile

import pytest

import onnxforge
from onnxforge.codegen import TARGETS, TargetError, host, resolve_target, targets
from onnxforge.codegen.manifest import LIBRARY
from onnxforge.ir import BuildError
from tests.codegen import models

EM_AARCH64, EM_X86_64 = 183, 62


def library_of(pkg) -> bytes:
    with tarfile.open(pkg.path) as tar:
        return tar.extractfile(LIBRARY).read()


def elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(data[18:20], "little")


def test_names_and_options():
    assert list(TARGETS) == ["x86", "x86-avx2", "x86-avx512", "arm64", "cuda"]
    assert resolve_target("x86-avx2").tvm == {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "core-avx2"}
    assert resolve_target("x86-avx512{num-cores=8}").tvm["num-cores"] == 8
    arm = resolve_target("arm64{mcpu=cortex-a55 mattr=+neon,+dotprod}")
    assert arm.tvm["mcpu"] == "cortex-a55" and arm.tvm["mattr"] == ["+neon", "+dotprod"] and arm.arch == "aarch64"
    for spec, arch in [("cuda-sm80", "sm_80"), ("cuda-sm_90", "sm_90"), ("cuda{arch=sm_90}", "sm_90")]:
        t = resolve_target(spec)
        assert t.device == "cuda" and t.tvm["arch"] == arch and t.name == "cuda-" + arch.replace("_", "")
    assert resolve_target("cuda{arch=sm_87 host=arm64}").tvm["host"]["mtriple"] == "aarch64-linux-gnu"


@pytest.mark.parametrize("spec,message", [
    ("x68", "unknown target 'x68'; did you mean x86"),
    ("x86{cores=4}", "unknown option cores; it takes num-cores"),
    ("x86{num-cores=zero}", "num-cores must be an integer"),
    ("cuda{arch=90}", "arch must look like sm_80"),
    ("x86{num-cores}", "is not key=value"),
])
def test_bad_targets(spec, message):
    with pytest.raises(TargetError, match=message.replace("{", r"\{")):
        resolve_target(spec)


def test_x86_detects_host_features(monkeypatch):
    monkeypatch.setattr(host, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(host, "cpu_count", lambda: 6)
    avx512 = frozenset(targets.AVX512_FEATURES)
    for flags, mcpu in [(avx512 | {"avx512_vnni"}, "cascadelake"), (avx512, "skylake-avx512"),
                        (frozenset(targets.AVX2_FEATURES), "core-avx2"), (frozenset({"sse4_2"}), "x86-64")]:
        monkeypatch.setattr(host, "cpu_flags", lambda flags=flags: flags)
        t = resolve_target("x86")
        assert t.tvm["mcpu"] == mcpu and t.tvm["num-cores"] == 6
        assert set(t.cpu_features) <= flags


def test_x86_on_another_architecture_says_what_to_use(monkeypatch):
    monkeypatch.setattr(host, "host_arch", lambda: "aarch64")
    with pytest.raises(TargetError, match="this machine is aarch64; name the level instead: x86-avx2 or x86-avx512"):
        resolve_target("x86")


def test_cuda_without_arch_or_gpu(monkeypatch):
    monkeypatch.setattr(host, "cuda_arch", lambda: None)
    with pytest.raises(TargetError, match="use cuda-sm80, cuda-sm90 or cuda{arch=sm_90}"):
        resolve_target("cuda")
    monkeypatch.setattr(host, "cuda_arch", lambda: "sm_89")
    assert resolve_target("cuda").tvm["arch"] == "sm_89"


def test_missing_cross_compiler_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(host, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(targets.shutil, "which", lambda name: None)
    with pytest.raises(BuildError, match="aarch64-linux-gnu-g\\+\\+ is not installed; on Debian/Ubuntu: apt-get install "
                                         "g\\+\\+-aarch64-linux-gnu"):
        onnxforge.compile(onnxforge.load(models.mlp()), target="arm64")


@pytest.mark.skipif(shutil.which(targets.AARCH64_CROSS) is None and host.host_arch() != "aarch64",
                    reason=f"{targets.AARCH64_CROSS} not installed (Debian: apt-get install {targets.AARCH64_CROSS_DEBIAN})")
def test_arm64_package_holds_aarch64_code(packages):
    pkg = packages.get("conv_net", target="arm64")
    assert elf_machine(library_of(pkg)) == EM_AARCH64
    assert pkg.manifest["target"]["arch"] == "aarch64"
    assert elf_machine(library_of(packages.get("conv_net"))) == EM_X86_64  # the host build, for contrast


@pytest.mark.parametrize("target", ["cuda-sm80", "cuda{arch=sm_90}"])
def test_cuda_compiles_without_a_gpu(packages, target):
    pkg = packages.get("transformer_block", target=target)
    lib = library_of(pkg)
    assert elf_machine(lib) == EM_X86_64  # host code, with the CUDA kernels embedded
    assert lib.count(b"__global__") >= 5, "no CUDA kernels in the library"
    assert pkg.manifest["target"]["device"] == "cuda"
    gpu = host.cuda_arch()
    if gpu is not None and int(gpu[3:5]) >= int(pkg.manifest["target"]["tvm"]["arch"][3:5]):  # a GPU at hand: run it
        from tests.codegen.test_compile import check_against_ort

        check_against_ort(pkg, models.transformer_block())
