import json

import numpy as np
import onnx
import pytest

from onnxforge.tools.cli import main
from onnxforge.tools.example import build_example


@pytest.fixture
def example(tmp_path):
    path = tmp_path / "ex.onnx"
    onnx.save(build_example(), path)
    return path


def test_optimize_writes_model_and_table(example, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(example), "-o", str(out), "--pipeline", "cleanup,fold-constants", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "before / after" in text and "Constant" in text and "fold-constants" in text and "OK" in text
    onnx.checker.check_model(str(out))


def test_optimize_json_and_given_inputs(example, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", input=np.ones((1, 3, 32, 32), np.float32))
    assert main(["optimize", str(example), "-O1", "--verify", "--inputs", str(tmp_path / "in.npz"), "--check-each", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["ok"] and report["before"]["ops"]["Constant"] == 7 and "Constant" not in report["after"]["ops"]
    assert [p["pass"] for p in report["passes"]] == ["cleanup", "fold-constants", "cse", "cleanup"]


def test_inspect(example, capsys):
    assert main(["inspect", str(example), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == [{"name": "input", "type": "float[1,3,32,32]"}]
    assert info["params"] == 16 * 27 + 16 + 32 * 16 * 9 + 32 + 320 + 10 + 1 + 49 + 3
    # conv1: 2*16*32*32*27, conv2: 2*32*16*16*144, matmul 2*10*32; elementwise counted once per element
    assert info["flops"] > 2 * 16 * 32 * 32 * 27 + 2 * 32 * 16 * 16 * 144


def test_passes_lists_options(capsys):
    assert main(["passes", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    fold = next(p for p in info["passes"] if p["name"] == "fold-constants")
    assert {"name": "max_bytes", "type": "int", "default": "1048576"} in fold["options"]
    assert info["presets"]["-O1"]


def test_exit_codes(example, tmp_path):
    assert main(["optimize", str(example), "-O", "7"]) == 2
    assert main(["optimize", str(tmp_path / "nope.onnx")]) == 3
    assert main(["inspect"]) == 2


def test_profile_names_each_kernels_time_and_code_path(example, capsys):
    assert main(["profile", str(example), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["kernels"]
    assert rows and {"kernel", "path", "calls", "ms", "total_ms", "gflops"} <= set(rows[0])
    paths = {r["path"] for r in rows}
    assert "packed conv (direct)" in paths and "TVM schedule" in paths  # convs: gemm_packed.c; pooling: TIR
    assert all(r["ms"] > 0 for r in rows)
    conv = next(r for r in rows if r["path"] == "packed conv (direct)")
    assert conv["flops"] > 0 and conv["gflops"] > 0  # its FLOPs are read from the call's sizes


def test_profile_counts_the_c_kernels_flops(tmp_path, capsys):
    """Softmax, LayerNormalization, LSTM and depthwise convolutions run in kernels.c /
    recurrent.c / depthwise.c: their rows carry FLOPs (per value for the row kernels; the
    hidden-state products for the recurrence; every tap of every output for the
    depthwise plane and block kernels), not 0."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("g", [16]), ("b", [16]), ("W", [1, 32, 16]), ("R", [1, 32, 8]), ("k", [20, 1, 3, 3]))]
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1),
             helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1),
             helper.make_node("LSTM", ["seq", "W", "R"], ["h"], hidden_size=8),
             helper.make_node("Conv", ["im", "k"], ["d1"], pads=[1, 1, 1, 1], group=20),  # planes
             helper.make_node("Conv", ["im", "k"], ["d2"], pads=[1, 1, 1, 1], strides=[2, 2], group=20)]  # blocks
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
                                       helper.make_tensor_value_info("seq", TensorProto.FLOAT, [5, 1, 16]),
                                       helper.make_tensor_value_info("im", TensorProto.FLOAT, [2, 20, 18, 11])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s", "n", "h", "d1", "d2")],
                          inits)
    path = tmp_path / "c_kernels.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["profile", str(path), "--pipeline", "cleanup", "--json"]) == 0
    flops = {r["kernel"]: r["flops"] for r in json.loads(capsys.readouterr().out)["kernels"]}
    by_kind = {kind: [f for k, f in flops.items() if kind in k] for kind in ("softmax", "layer_norm", "lstm")}
    assert by_kind["softmax"] == [5 * 4 * 16], flops
    assert by_kind["layer_norm"] == [7 * 4 * 16], flops
    assert by_kind["lstm"] == [2 * 5 * 4 * 8 * 8], flops  # steps x gates x hidden^2, one direction
    assert sorted(f for k, f in flops.items() if "dwconv" in k) == [2 * 2 * 20 * 9 * 6 * 9, 2 * 2 * 20 * 18 * 11 * 9]


def test_profile_asks_for_static_shapes(tmp_path, capsys):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "sym.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["profile", str(path)]) != 0
    assert "--shape" in capsys.readouterr().err
    assert main(["profile", str(path), "--shape", "x=2,4"]) == 0
