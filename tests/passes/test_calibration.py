"""The calibration API: sources (iterables, .npz / .npy folders), validation against
the model's inputs (names, dtypes, shapes, symbolic dims), activation collection
through onnxruntime, and how passes get the run's calibration."""
import numpy as np
import pytest
from onnx import helper

import onnxforge
from onnxforge.ir import DataError, PassError, PassOptionError
from onnxforge.passes.calibration import Calibration, collect, current_calibration, iter_activations, use_calibration
from tests.models.build import mlp, model, tensor


def two_input_model():
    return onnxforge.load(model([helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                                [tensor("a", ["batch", 4]), tensor("b", ["batch", 4])], [tensor("y", ["batch", 4])]))


def samples(n, batch=2):
    rng = np.random.default_rng(0)
    return [{"a": rng.standard_normal((batch, 4)).astype(np.float32),
             "b": rng.standard_normal((batch, 4)).astype(np.float32)} for _ in range(n)]


def test_iterable_source_is_validated_and_reiterable():
    m = two_input_model()
    cal = Calibration.from_source(iter(samples(3)), model=m)  # a one-shot iterator becomes re-iterable
    assert len(cal) == 3
    assert [sorted(s) for s in cal] == [["a", "b"]] * 3
    assert len(list(cal)) == 3
    assert Calibration.from_source(cal) is cal
    assert len(Calibration.from_source(cal, limit=2)) == 2


def test_symbolic_dims_take_any_size_and_extra_keys_are_dropped():
    m = two_input_model()
    data = samples(1, batch=5)
    data[0]["label"] = np.array(3)
    cal = Calibration.from_source(data, model=m)
    assert sorted(next(iter(cal))) == ["a", "b"]


def test_npz_folder(tmp_path):
    for i, s in enumerate(samples(4)):
        np.savez(tmp_path / f"{i:03d}.npz", **s)
    cal = Calibration.from_source(tmp_path, model=two_input_model(), limit=3)
    assert len(cal) == 3
    np.testing.assert_array_equal(cal[0]["a"], samples(4)[0]["a"])


def test_npy_folder_single_input(tmp_path):
    m = onnxforge.load(mlp())
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full((2, 8), i, np.float32))
    cal = Calibration.from_source(str(tmp_path), model=m)
    assert [float(s["x"][0, 0]) for s in cal] == [0.0, 1.0, 2.0]
    with pytest.raises(DataError, match="model has 2 inputs"):
        Calibration.from_source(tmp_path, model=two_input_model())
    with pytest.raises(DataError, match="bind it to a model"):
        list(Calibration.from_source(tmp_path))


def test_npy_subfolders_per_input(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            np.save(tmp_path / name / f"{i:02d}.npy", np.ones((1, 4), np.float32) * i)
    cal = Calibration.from_source(tmp_path, model=two_input_model())
    assert len(cal) == 2 and float(cal[1]["b"][0, 0]) == 1.0
    np.save(tmp_path / "a" / "02.npy", np.ones((1, 4), np.float32))
    with pytest.raises(DataError, match="sample '02'.*lacks b/02.npy"):
        Calibration.from_source(tmp_path, model=two_input_model())


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("b"), r"calibration sample 1 .*lacks model input 'b' \(it has \['a'\]\)"),
    (lambda s: s.update(B=s.pop("b")), r"sample 1 .*lacks model input 'b' \(it has \['B', 'a'\]\)"),
    (lambda s: s.update(a=s["a"].astype(np.float64)), r"sample 1 .*input 'a' is float64, the model wants float32"),
    (lambda s: s.update(a=s["a"][:, :3]), r"sample 1 .*input 'a' has shape \[2, 3\], the model wants \['batch', 4\]"),
    (lambda s: s.update(a=s["a"][None]), r"input 'a' has shape \[1, 2, 4\]"),
])
def test_bad_samples_name_the_sample_the_input_and_the_problem(mutate, match):
    data = samples(3)
    mutate(data[1])
    with pytest.raises(DataError, match=match):
        Calibration.from_source(data, model=two_input_model())


@pytest.mark.parametrize("source, match", [
    ([], "calibration set .* is empty"),
    ({"a": np.zeros(3)}, "single dict"),
    ([np.zeros(3)], "sample 0 is a ndarray"),
    (42, "got int"),
])
def test_bad_sources(source, match):
    with pytest.raises(DataError, match=match):
        Calibration.from_source(source, model=two_input_model())


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Calibration.from_source(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no .npz or .npy files"):
        Calibration.from_source(tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read calibration sample"):
        Calibration.from_source(tmp_path)


def test_collect_intermediate_values():
    m = onnxforge.load(mlp())
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(3)]
    acts = collect(m, data, ["r", "h", "y"], progress=False)
    assert sorted(acts) == ["h", "r", "y"] and all(len(v) == 3 for v in acts.values())
    w1 = m.graph.initializers["w1"].const_value()
    np.testing.assert_allclose(acts["h"][2], data[2]["x"] @ w1, rtol=1e-5, atol=1e-5)
    assert np.all(acts["r"][0] >= 0)
    assert len(list(iter_activations(m, data, ["h"], progress=False))) == 3
    with pytest.raises(DataError, match="no node of the top-level graph produces it"):
        collect(m, data, ["nothing"], progress=False)


def test_current_calibration_comes_from_the_run():
    with pytest.raises(PassOptionError, match="my-pass needs calibration data: pass calibration=... to "
                                              r"onnxforge.optimize\(\) or --calib DIR on the command line"):
        current_calibration("my-pass")
    cal = Calibration(samples(1))
    with use_calibration(cal):
        assert current_calibration("my-pass") is cal
    with pytest.raises(PassOptionError):
        current_calibration("my-pass")


def test_optimize_validates_calibration_against_the_model():
    m = onnxforge.load(mlp())
    with pytest.raises(DataError, match="lacks model input 'x'"):
        onnxforge.optimize(m, "cleanup", calibration=[{"y": np.zeros((2, 8), np.float32)}])
    with pytest.raises(DataError, match="is empty"):
        onnxforge.optimize(m, "cleanup", calibration=[])


def test_a_pass_that_needs_data_without_it():
    m = onnxforge.load(mlp())
    with pytest.raises(PassError, match="quantize-weights needs calibration data.*--calib DIR"):
        onnxforge.optimize(m, "quantize-weights{method=gptq min_elements=0}")
    with pytest.raises(PassError, match="quantize-static needs calibration data"):
        onnxforge.optimize(m, "quantize-static")


def test_cli_optimize_with_calib(tmp_path):
    from onnxforge.tools.cli import main

    src = tmp_path / "m.onnx"
    onnxforge.save(onnxforge.load(mlp()), src)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        np.savez(calib / f"{i}.npz", x=np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    assert main(["optimize", str(src), "-p", "quantize-static{sensitivity=false}", "--calib", str(calib),
                 "--calib-samples", "2", "-o", str(out)]) == 0
    ops = {n.op_type for n in onnxforge.load(out).graph.nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert main(["optimize", str(src), "-p", "quantize-static"]) == 4  # a pass error: no data
    np.savez(calib / "9.npz", x=np.zeros((2, 9), np.float32))
    assert main(["optimize", str(src), "-p", "quantize-static", "--calib", str(calib)]) == 2  # DataError


def test_bench_gives_its_calibration_to_pipelines(tmp_path):
    from onnxforge.tools.bench.harness import bench
    from onnxforge.tools.example import build_example

    path = tmp_path / "example.onnx"
    onnxforge.save(onnxforge.load(build_example()), path)
    sample = lambda i: {"input": np.random.default_rng(i).standard_normal((1, 3, 32, 32), dtype=np.float32)}  # noqa: E731
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        np.savez(calib / f"{i}.npz", **sample(100 + i))
    report = bench(path, ["gptq=quantize-weights{bits=4 method=gptq min_elements=0}", "static=quantize-static"],
                   data=[sample(i) for i in range(4)], calibration=calib, out=tmp_path / "bench", compare=[],
                   min_runs=3, max_seconds=1, peak=False)
    rows = {r["name"]: r for r in report["variants"]}
    assert rows["gptq"]["status"] == "ok" and rows["static"]["status"] == "ok"
    assert rows["gptq"]["info"]["passes"][0]["stats"]["gptq"] > 0
    assert report["calibration"] == {"samples": 3}
    no_data = bench(path, ["gptq=quantize-weights{method=gptq}"], out=tmp_path / "bench2", compare=[], min_runs=3,
                    max_seconds=1, peak=False)
    assert "needs calibration data" in no_data["variants"][1]["error"]
