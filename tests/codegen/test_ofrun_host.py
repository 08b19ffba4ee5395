"""ofrun built for this machine (g++ against the installed TVM runtime) runs an
x86 package without Python and matches the Python runtime loader: the same
loader a server without Python would use."""
import shutil

import pytest

import onnxforge
from onnxforge.codegen import device, host
from onnxforge.passes.check import compare_outputs, sample_inputs
from tests.codegen import models

pytestmark = pytest.mark.skipif(host.host_arch() != "x86_64" or shutil.which("g++") is None,
                                reason="needs an x86_64 machine with g++")


def test_ofrun_on_this_machine_matches_the_python_loader(packages):
    pkg = packages.get("conv_net")
    feeds = sample_inputs(onnxforge.load(models.conv_net()), seed=1)
    run = device.run_native(pkg.path, feeds, threads=1, repeat=5)
    assert run.command[0].endswith("ofrun")  # no emulator
    diff = compare_outputs(pkg(**feeds), run.outputs, 1e-6, 1e-6)
    assert diff.ok, diff
    assert run.latency_ms is not None


def test_ofrun_runs_a_package_that_dequantizes_at_load(tmp_path):
    """dequantize="load": ofrun calls main_transform_params once, as the Python loader does."""
    model = onnxforge.load(models.int8_weights())
    feeds = sample_inputs(model, seed=2)
    pkgs = {d: onnxforge.compile(model, target="x86", pipeline="-O2", output=tmp_path / f"{d}.ofpkg", dequantize=d)
            for d in ("run", "load")}
    assert pkgs["load"].manifest["dequantize"] == "load"
    reference = pkgs["run"](**feeds)
    for d, pkg in pkgs.items():
        run = device.run_native(pkg.path, feeds, threads=1, repeat=2)
        diff = compare_outputs(reference, run.outputs, 1e-5, 1e-5)
        assert diff.ok, (d, diff)
        assert compare_outputs(reference, pkg(**feeds), 1e-5, 1e-5).ok


def test_ofrun_reads_plain_tars_and_refuses_a_damaged_compressed_package(packages, tmp_path):
    """Packages are gzip-compressed (ofrun's own inflate.h); plain tars, the format
    before, run too; a flipped byte in the compressed file is refused with a reason."""
    import gzip

    pkg = packages.get("conv_net")
    feeds = sample_inputs(onnxforge.load(models.conv_net()), seed=3)
    plain = tmp_path / "plain.ofpkg"
    plain.write_bytes(gzip.decompress(pkg.path.read_bytes()))
    assert compare_outputs(pkg(**feeds), device.run_native(plain, feeds, threads=1).outputs, 1e-6, 1e-6).ok
    damaged = tmp_path / "damaged.ofpkg"
    data = bytearray(pkg.path.read_bytes())
    data[len(data) // 2] ^= 0x04
    damaged.write_bytes(bytes(data))
    done = _ofrun(damaged)
    assert done.returncode == 3, done.stderr
    assert "corrupt" in done.stderr and str(damaged) in done.stderr


def test_ofrun_keeps_a_0d_input_0d(tmp_path):
    """silero-vad's sr: an int64 scalar input reaches the module as a 0-d tensor
    through ofrun's .npz reader, as through the Python loader."""
    import numpy as np

    from tests.codegen.test_symbolic_inputs import paddle_scalar_model

    pkg = onnxforge.compile(onnxforge.load(paddle_scalar_model()), target="x86", pipeline="-O1", output=tmp_path / "s.ofpkg")
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32), "sr": np.array(16000)}
    run = device.run_native(pkg.path, feeds, threads=1)
    assert run.outputs["y"].shape == (2, 3)
    assert compare_outputs(pkg(**feeds), run.outputs, 1e-6, 1e-6).ok


def _ofrun(path, *args):
    import subprocess

    ofrun = device.build_loader() / "ofrun"
    return subprocess.run([str(ofrun), str(path), "-i", "x=/nonexistent.npy", *args], capture_output=True, text=True)


def _repacked(package, tmp_path, name, change):
    """The package with its members changed by `change(members, manifest)` and every
    checksum recomputed, as anyone can."""
    import json

    from onnxforge.tools.fuzz import package_members, repack_package

    members = package_members(package.read_bytes())
    manifest = json.loads(members.pop("manifest.json"))
    members.pop("manifest.sha256")
    change(members, manifest)
    out = tmp_path / name
    out.write_bytes(repack_package(json.dumps(manifest).encode(), members))
    return out


@pytest.mark.parametrize("case, change, message", [
    ("cut-library", lambda m, j: m.update({"model.so": m["model.so"][: len(m["model.so"]) // 3]}),
     "model.so cannot be loaded: segment"),
    ("string-target", lambda m, j: j.update(target="x86"), "manifest.json: 'target': an object"),
    ("no-inputs", lambda m, j: j.pop("inputs"), "manifest.json: 'inputs': missing"),
    ("nameless-input", lambda m, j: j["inputs"][0].pop("name"), "manifest.json: 'inputs'[0]'name': missing"),
    ("library-path", lambda m, j: j.update(native_libraries=[{"soname": "../../lib/evil.so"}]),
     "'native_libraries'[0]'soname': a plain file name"),
    ("huge-weight", lambda m, j: j["params"][0].update(shape=[2**32, 2**32]), "weight"),
])
def test_ofrun_refuses_a_tampered_package_in_one_line(packages, tmp_path, case, change, message):
    """Checksums recomputed (they catch damage, not malice): ofrun still refuses before
    any field is used or code loaded, exit 3 and one line, never a crash."""
    pkg = packages.get("conv_net")
    done = _ofrun(_repacked(pkg.path, tmp_path, f"{case}.ofpkg", change))
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_ofrun_stops_a_gzip_bomb_at_its_limit(tmp_path):
    import gzip

    bomb = tmp_path / "bomb.ofpkg"
    bomb.write_bytes(gzip.compress(bytes(200 << 20), compresslevel=9))  # 200 MiB of zeros in ~200 KiB
    limit = ((64 << 20) + 64 * bomb.stat().st_size) >> 20  # as the Python loader's (manifest.inflate_limit)
    done = _ofrun(bomb)
    assert done.returncode == 3 and f"inflates to more than {limit} MiB" in done.stderr, done.stderr


def test_ofrun_checks_survive_sanitized_fuzzing():
    """ofrun's readers and checks (tar, inflate, manifest, .npz/.npy, ELF) built with
    AddressSanitizer and UBSan, over package mutants: every case ok or refused in one
    line; no finding, crash or other exception (the offline run: README)."""
    from onnxforge.tools import fuzz_ofrun

    try:
        fuzz_ofrun.build_driver()
    except fuzz_ofrun.DriverUnavailable as exc:
        pytest.skip(str(exc))
    report = fuzz_ofrun.run(300, seed=7)
    assert report["bad"] == [] and report["counts"]["BAD"] == 0, report["bad"][:5]
    assert report["counts"]["refused"] > 200 and report["counts"]["ok"] > 0  # the mutants reach the checks


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory):
    pytest.importorskip("cryptography")
    from onnxforge.codegen.signing import keygen

    folder = tmp_path_factory.mktemp("keys")
    return keygen(folder / "team"), keygen(folder / "other")


def test_ofrun_trusts_only_packages_signed_by_its_keys(packages, signing_keys, tmp_path):
    """ofrun --trust KEY.pub (OpenSSL's ed25519): a package signed by the key runs; one
    signed by another key, an unsigned one and one changed after signing (checksums
    recomputed, as anyone can) are refused, exit 3, before the manifest is used."""
    import shutil

    from onnxforge.codegen.manifest import sign_package

    (team, team_pub), (_, other_pub) = signing_keys
    pkg = packages.get("conv_net")
    feeds = sample_inputs(onnxforge.load(models.conv_net()), seed=5)
    signed = tmp_path / "signed.ofpkg"
    shutil.copy(pkg.path, signed)
    sign_package(signed, team)
    run = device.run_native(signed, feeds, threads=1, extra_args=["--trust", str(team_pub)])
    assert compare_outputs(pkg(**feeds), run.outputs, 1e-6, 1e-6).ok
    changed = _repacked(signed, tmp_path, "changed.ofpkg", lambda m, j: j.update(note="edited after signing"))
    for path, key, message in [(signed, other_pub, "not among the trusted keys"), (pkg.path, team_pub, "is not signed"),
                               (changed, team_pub, "changed after it was signed")]:
        done = _ofrun(path, "--trust", str(key))
        assert done.returncode == 3 and message in done.stderr, (path.name, done.stderr)
    done = _ofrun(signed, "--trust", str(team))  # the private key is not a --trust key
    assert done.returncode == 2 and "private key" in done.stderr, done.stderr
