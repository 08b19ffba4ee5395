"""Bad input ends in an OnnxforgeError subclass that names what and where, and
never writes a partial output file."""
import os

import onnx
import pytest
from onnx import helper

import onnxforge
from onnxforge.ir import ExternalDataError, ModelLoadError, OnnxforgeError, VerifierError
from onnxforge.tools.cli import main
from tests.models import build


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(build.mlp(), path)
    return path


def test_truncated_file(mlp_file, tmp_path):
    data = mlp_file.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        onnxforge.load(bad)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        onnxforge.load(tmp_path / "empty.onnx")
    with pytest.raises(ModelLoadError, match="no such file"):
        onnxforge.load(tmp_path / "missing.onnx")


def test_bit_flips_load_or_fail_cleanly(mlp_file):
    """Every single-bit flip in the first 2 KiB either loads into a model that
    verifies or raises ModelLoadError; nothing else escapes."""
    data = bytearray(mlp_file.read_bytes())
    outcomes = {"loaded": 0, "refused": 0}
    for bit in range(0, min(len(data), 2048) * 8, 7):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            model = onnxforge.load(bytes(flipped))
        except ModelLoadError as exc:
            assert str(exc)
            outcomes["refused"] += 1
            continue
        onnxforge.verify(model)
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0


def test_cycle_is_reported_with_node_names():
    proto = build.model(
        [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second")],
        [build.tensor("x", [2])], [build.tensor("a", [2])], check=False)
    with pytest.raises(VerifierError, match="cycle.*(first|second)"):
        onnxforge.load(proto)


def test_undefined_input_name():
    proto = build.model([helper.make_node("Relu", ["ghost"], ["y"], name="r")],
                        [build.tensor("x", [2])], [build.tensor("y", [2])], check=False)
    with pytest.raises(ModelLoadError, match="'r'.*'ghost'"):
        onnxforge.load(proto)


def test_duplicate_definition_is_not_ssa():
    proto = build.model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])],
                        [build.tensor("x", [2])], [build.tensor("y", [2])], check=False)
    with pytest.raises(ModelLoadError, match="defined twice"):
        onnxforge.load(proto)


def test_declared_size_disagrees_with_data():
    proto = build.mlp()
    proto.graph.initializer[0].dims[0] = 9  # 9x16 declared, 8x16 stored
    with pytest.raises(ModelLoadError, match="w1.*9, 16"):
        onnxforge.load(proto)


def _external(tmp_path, location):
    proto = build.mlp()
    src = tmp_path / "model"
    src.mkdir()
    onnx.save_model(proto, src / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    m = onnx.load(src / "m.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, src / "m.onnx")
    return src / "m.onnx"


def test_external_data_outside_folder(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        onnxforge.load(_external(tmp_path, "../secret.bin"))


def test_external_data_absolute_path(tmp_path):
    with pytest.raises(ExternalDataError, match="absolute"):
        onnxforge.load(_external(tmp_path, str(tmp_path / "x.bin")))


def test_external_data_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 4096)
    path = _external(tmp_path, "link/w.bin")
    os.symlink(outside, path.parent / "link")
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        onnxforge.load(path)


def test_external_data_too_short(tmp_path):
    path = _external(tmp_path, "w.bin")
    with open(path.parent / "w.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ExternalDataError, match="beyond the end"):
        onnxforge.load(path)


def test_cli_failures_write_no_output(tmp_path, mlp_file):
    out = tmp_path / "out.onnx"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(mlp_file.read_bytes()[:50])
    assert main(["optimize", str(bad), "-o", str(out)]) == 3
    assert main(["optimize", str(mlp_file), "-o", str(out), "--pipeline", "cleanup,nope"]) == 2
    assert main(["optimize", str(mlp_file), "-o", str(out), "--pipeline", "cleanup{"]) == 2
    assert main(["optimize", str(mlp_file), "-o", str(out), "--pipeline", "fold-constants{max_bytes=lots}"]) == 2
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".onnxforge")]


def test_every_error_is_an_onnxforge_error():
    for cls in (ModelLoadError, ExternalDataError, VerifierError):
        assert issubclass(cls, OnnxforgeError)
