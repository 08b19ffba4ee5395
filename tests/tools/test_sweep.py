"""The sweep's machinery on a tiny model built here (no downloads): a stateful
net compiled unpinned, run three calls with its state carried, compared with
onnxruntime; the comparison rules; the table."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxforge.tools import sweep

pytest.importorskip("tvm")


def _stateful_model(path):
    """out = tanh(x @ W + state), stateN = out: [batch, 8] symbolic batch, like
    silero's input/state/stateN carried across calls."""
    w = np.random.RandomState(0).randn(8, 8).astype(np.float32) * 0.3
    nodes = [h.make_node("MatMul", ["input", "w"], ["xw"]), h.make_node("Add", ["xw", "state"], ["s"]),
             h.make_node("Tanh", ["s"], ["stateN"]), h.make_node("ReduceMean", ["stateN"], ["output"], axes=[1])]
    graph = h.make_graph(nodes, "stateful",
                         [h.make_tensor_value_info("input", T.FLOAT, ["batch", 8]),
                          h.make_tensor_value_info("state", T.FLOAT, ["batch", 8])],
                         [h.make_tensor_value_info("output", T.FLOAT, ["batch", 1]),
                          h.make_tensor_value_info("stateN", T.FLOAT, ["batch", 8])],
                         [nh.from_array(w, "w")])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), path)


def test_sweep_one_carries_state_and_passes(tmp_path):
    path = tmp_path / "stateful.onnx"
    _stateful_model(path)
    rng = np.random.RandomState(1)
    chunks = [rng.randn(2, 8).astype(np.float32) for _ in range(3)]

    def update(feeds, outputs, i):
        feeds["input"] = chunks[i]

    calls = sweep.Calls({"input": chunks[0], "state": np.zeros((2, 8), np.float32)}, 3, {"stateN": "state"}, update)
    row = sweep.sweep_one(path, calls, pipeline="-O0")
    assert row["compiled"] and row["status"] == "pass", row
    assert row["max_diff"] <= sweep.TOLERANCE
    assert row["symbolic_inputs"] == ["input", "state"]
    assert "3 calls carrying stateN->state" in row["inputs"]


def test_run_calls_feeds_outputs_back():
    seen = []

    def run(feeds):
        seen.append(feeds["state"].copy())
        return {"stateN": feeds["state"] + 1}

    results = sweep.run_calls(run, sweep.Calls({"state": np.zeros(2)}, 3, {"stateN": "state"}), ["stateN"])
    assert [s.tolist() for s in seen] == [[0, 0], [1, 1], [2, 2]]
    assert results[-1]["stateN"].tolist() == [3, 3]


def test_compare_rules():
    ref = [{"f": np.ones(3, np.float32), "i": np.arange(3)}]
    assert sweep.compare(ref, [{"f": np.ones(3, np.float32) + 5e-5, "i": np.arange(3)}])[1] is None
    assert "max diff" in sweep.compare(ref, [{"f": np.ones(3, np.float32) + 1e-3, "i": np.arange(3)}])[1]
    assert "integer" in sweep.compare(ref, [{"f": np.ones(3, np.float32), "i": np.arange(3) + 1}])[1]
    assert "shape" in sweep.compare(ref, [{"f": np.ones(4, np.float32), "i": np.arange(3)}])[1]


def test_table_and_model_list():
    rows = [{"model": "a", "inputs": "x[1, 3]", "compiled": True, "max_diff": 1e-6, "status": "pass"},
            {"model": "b", "inputs": "", "compiled": False, "max_diff": None, "status": "error",
             "error": "LoweringError: node 'n' (op Foo): no lowering"}]
    text = sweep.format_table(rows)
    assert "1.00e-06" in text and "LoweringError: node 'n'" in text and "1 of 2 pass" in text
    names = sweep.model_by_name()
    assert {"nudenet/320n", "silero/silero_vad", "rapidocr/PP-OCRv4_rec", "ddddocr/common_old"} <= set(names)
    assert len([n for n in names if n.startswith("silero/")]) == 6


def _requantizing_model(path):
    """sigmoid -> DynamicQuantizeLinear -> dequantize -> MatMul, twice: like ddddocr's
    common_old, a one-ulp change in a Sigmoid can flip a quantization step."""
    rng = np.random.RandomState(0)
    nodes, inits, x = [], [], "x"
    for i in range(2):
        w = rng.randn(64, 64).astype(np.float32) * 0.2
        inits.append(nh.from_array(w, f"w{i}"))
        nodes += [h.make_node("Sigmoid", [x], [f"s{i}"]),
                  h.make_node("DynamicQuantizeLinear", [f"s{i}"], [f"q{i}", f"sc{i}", f"zp{i}"]),
                  h.make_node("DequantizeLinear", [f"q{i}", f"sc{i}", f"zp{i}"], [f"d{i}"]),
                  h.make_node("MatMul", [f"d{i}", f"w{i}"], [f"y{i}"])]
        x = f"y{i}"
    graph = h.make_graph(nodes, "requant", [h.make_tensor_value_info("x", T.FLOAT, [256, 64])],
                         [h.make_tensor_value_info(x, T.FLOAT, [256, 64])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), path)


def test_ulp_spread_measures_onnxruntimes_own_sensitivity(tmp_path):
    path = tmp_path / "requant.onnx"
    _requantizing_model(path)
    import onnxruntime as ort

    calls = sweep.Calls({"x": np.random.RandomState(1).randn(256, 64).astype(np.float32) * 4})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = sweep.run_calls(lambda f: {"y1": sess.run(None, f)[0]}, calls, ["y1"])
    spread = sweep.ulp_spread(path, calls, ["y1"], reference)
    assert spread is not None and spread > 1e-3  # a flipped step moves outputs by far more than 1e-4
    assert sweep.argmax_agreement(reference, reference) == 1.0
    # a model without such ops has no figure
    stateful = tmp_path / "stateful.onnx"
    _stateful_model(stateful)
    zero = np.zeros((2, 8), np.float32)
    plain = sweep.Calls({"input": zero, "state": zero})
    assert sweep.ulp_spread(tmp_path / "missing.onnx", plain, ["output"], []) is None
    sess = ort.InferenceSession(str(stateful), providers=["CPUExecutionProvider"])
    ref = sweep.run_calls(lambda f: dict(zip(["output", "stateN"], sess.run(None, f))), plain, ["output", "stateN"])
    assert sweep.ulp_spread(stateful, plain, ["output", "stateN"], ref) is not None  # Tanh is one of them
