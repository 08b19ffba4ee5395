"""Packages compiled for arm64 really run on aarch64: ofrun (codegen/device), built
with the aarch64 cross compiler against the aarch64 TVM runtime from PyPI's
wheels, runs them under qemu-user, and the outputs match onnxruntime on x86
within 1e-4. ofrun's own checks (checksums, target, inputs) are tested the same way.

Needs g++-aarch64-linux-gnu and qemu-user-static (Debian; CI installs both). The
first run downloads the two aarch64 wheels (about 97 MB) and builds ofrun (about
12 s); both are cached in $ONNXFORGE_CACHE/aarch64."""
import subprocess

import numpy as np
import pytest

import onnxforge
from onnxforge.codegen import device
from onnxforge.codegen.device import loader
from onnxforge.ir import DataError
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from tests.codegen import models
from tests.codegen.test_runtime import flip_byte

ATOL = RTOL = 1e-4
_MISSING = [what for what, found in [(f"{loader.CROSS['aarch64'][0]} ({loader.CROSS['aarch64'][1]})",
                                      device.compiler_for("aarch64")),
                                     (f"qemu-aarch64-static ({loader.QEMU_APT})", device.emulator_for("aarch64") is not None)]
            if not found]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"not installed: {', '.join(_MISSING)}; Debian: apt-get install -y "
                                                       f"{loader.CROSS['aarch64'][1]} {loader.QEMU_APT}")


@pytest.fixture(scope="module")
def ofrun():
    """The aarch64 ofrun folder (built once, cached across sessions)."""
    return device.build_loader("aarch64")


def run_ofrun(ofrun, *args):
    """ofrun itself under qemu, without the Python-side package checks."""
    return subprocess.run([*device.emulator_for("aarch64"), str(ofrun / "ofrun"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["conv_net", "mlp", "int8_weights", "dynamic_int8"])
def test_arm64_package_matches_onnxruntime(packages, ofrun, name):
    pkg = packages.get(name, target="arm64")
    proto = getattr(models, name)()
    model = onnxforge.load(proto)
    feeds = sample_inputs(model, seed=0)
    ref = run_ort(model, feeds)
    run = device.run_native(pkg.path, feeds, threads=1, repeat=3, loader=ofrun)
    assert run.command[0].endswith(("qemu-aarch64-static", "qemu-aarch64")) or device.emulator_for("aarch64") == []
    assert list(run.outputs) == list(ref)
    diff = compare_outputs(ref, run.outputs, ATOL, RTOL)
    assert diff.ok, diff
    assert run.latency_ms is not None and run.latency_ms > 0
    print(f"{name}: max abs diff {diff.max_abs:.2e}, {run.latency_ms:.3f} ms under emulation, ofrun {run.seconds:.2f} s")


def test_symbolic_batch_binds_at_run_time(packages, ofrun):
    pkg = packages.get("symbolic_batch", target="arm64")
    model = onnxforge.load(models.symbolic_batch())
    feeds = sample_inputs(model, seed=3, dims={"batch": 3})
    got = device.run_native(pkg.path, feeds, threads=1, loader=ofrun).outputs
    assert got["y"].shape == (3, 1)
    assert compare_outputs(run_ort(model, feeds), got, ATOL, RTOL).ok


def test_wrong_inputs_are_refused(packages, ofrun):
    pkg = packages.get("mlp", target="arm64")
    with pytest.raises(DataError, match=r"input 'x': shape \[4,31\], expected \[4,32\]"):
        device.run_native(pkg.path, {"x": np.zeros((4, 31), np.float32)}, loader=ofrun)
    with pytest.raises(DataError, match="input 'x': dtype float64, expected float32"):
        device.run_native(pkg.path, {"x": np.zeros((4, 32))}, loader=ofrun)
    with pytest.raises(DataError, match=r"unknown input 'X'; the model's inputs are: x float32\[4,32\]"):
        device.run_native(pkg.path, {"X": np.zeros((4, 32), np.float32)}, loader=ofrun)


def test_ofrun_refuses_a_modified_library(packages, package_copy, ofrun, tmp_path):
    path = package_copy(packages.get("mlp", target="arm64"))
    flip_byte(path, "model.so")
    np.save(tmp_path / "x.npy", np.zeros((4, 32), np.float32))
    done = run_ofrun(ofrun, path, "-i", f"x={tmp_path / 'x.npy'}")
    assert done.returncode == 3, done.stderr
    assert "checksum mismatch for model.so" in done.stderr


def test_ofrun_refuses_a_package_for_another_machine(packages, ofrun, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 32), np.float32))
    done = run_ofrun(ofrun, packages.get("mlp").path, "-i", f"x={tmp_path / 'x.npy'}")  # the x86 build
    assert done.returncode == 3, done.stderr
    assert "was built for target x86 (x86_64); this ofrun runs aarch64 packages" in done.stderr


def test_ofrun_prints_outputs_and_usage(packages, ofrun, tmp_path):
    np.save(tmp_path / "x.npy", sample_inputs(onnxforge.load(models.mlp()), seed=0)["x"])
    done = run_ofrun(ofrun, packages.get("mlp", target="arm64").path, "-i", f"x={tmp_path / 'x.npy'}")
    assert done.returncode == 0, done.stderr
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [["y", "float32[4,16]"], ["t", "float32[4,16]"]]
    bad = run_ofrun(ofrun, "--repeat", "0")
    assert bad.returncode == 2 and "--repeat needs a positive integer" in bad.stderr and "usage: ofrun" in bad.stderr


def test_bundle_for_a_device_and_the_command_line(packages, ofrun, tmp_path):
    """`python -m onnxforge.codegen.device build --arch aarch64 -o DIR` gathers what to
    copy to a device; `... run PACKAGE ofrun-options` runs a package here."""
    from onnxforge.codegen.device.__main__ import main

    bundle = tmp_path / "bundle"
    assert main(["build", "--arch", "aarch64", "-o", str(bundle)]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["libscipy_openblas.so", "libtvm_ffi.so", "libtvm_runtime.so", "ofrun", "src"]
    assert (bundle / "src" / "build.sh").is_file() and (bundle / "src" / "include" / "tvm" / "ffi" / "tvm_ffi.h").is_file()
    for item in bundle.glob("*o*"):  # ofrun and the two libraries
        head = item.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, item.name  # EM_AARCH64
    np.save(tmp_path / "x.npy", np.ones((4, 32), np.float32))
    pkg = packages.get("mlp", target="arm64")
    out = tmp_path / "out.npz"
    assert main(["run", str(pkg.path), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(out)]) == 0
    ref = run_ort(onnxforge.load(models.mlp()), {"x": np.ones((4, 32), np.float32)})
    with np.load(out) as got:
        assert got.files == ["y", "t"]
        assert compare_outputs(ref, {k: got[k] for k in got.files}, ATOL, RTOL).ok
