"""The benchmark harness on a tiny model: every figure present, ratios against the
same-run baseline, failing variants reported without losing the others."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnxforge.ir import DataError, load, save
from onnxforge.tools.bench.harness import bench
from onnxforge.tools.bench.variants import Built, Variant, ort_runner
from onnxforge.tools.cli import main
from onnxforge.tools.example import build_example

FAST = dict(warmup=1, min_runs=3, max_seconds=2.0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "example.onnx"
    save(load(build_example()), path)
    return path


def _samples(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32), "label": np.int64(i % 2)}
            for i in range(n)]


def mean_output(outputs, samples):
    """A user metric with two arguments; labels ride along in the samples."""
    assert all("label" in s for s in samples)
    return {"mean_output": float(np.mean([next(iter(o.values())).mean() for o in outputs]))}


def _flaky(after: int) -> Variant:
    """Builds fine, then its runner raises from the `after`-th call on."""
    def build(ctx):
        run = ort_runner(ctx.original, ctx.threads)
        calls = [0]

        def flaky(feeds):
            calls[0] += 1
            if calls[0] > after:
                raise RuntimeError("device lost")
            return run(feeds)

        return Built(flaky, ctx.original)

    return Variant("flaky", "pipeline", "fails while being timed", build)


def test_every_figure_present_and_ratios_from_the_same_run(model_path, tmp_path):
    result = bench(model_path, ["-O1", "cse-only=cse"], data=_samples(), metric=mean_output, out=tmp_path,
                   compare=["onnxsim", "ort-quantize-dynamic", "ort-quantize-static"], peak=True, **FAST)
    rows = {v["name"]: v for v in result["variants"]}
    assert list(rows) == ["onnxruntime", "-O1", "cse-only", "onnxsim", "ort-quantize-dynamic", "ort-quantize-static"]
    base = rows["onnxruntime"]
    assert result["peak"]["gflops"] > 0 and result["machine"]["threads"] == result["timing"]["threads"]
    for v in rows.values():
        assert v["status"] == "ok", v.get("error")
        assert v["latency"]["runs"] >= 3 and v["latency"]["p25"] <= v["latency"]["median"] <= v["latency"]["p75"]
        assert v["latency_ratio"] == pytest.approx(v["latency"]["median"] / base["latency"]["median"])
        assert v["speedup"] == pytest.approx(1 / v["latency_ratio"])
        assert v["size_ratio"] == pytest.approx(v["size_bytes"] / base["size_bytes"])
        assert v["gflops"] == pytest.approx(v["flops"] / v["latency"]["median"] / 1e9)
        assert v["peak_fraction"] == pytest.approx(v["gflops"] / result["peak"]["gflops"])
        assert set(v["metrics"]) == {"mean_output"}
        assert v["metric_delta"]["mean_output"] == pytest.approx(v["metrics"]["mean_output"] - base["metrics"]["mean_output"])
    assert rows["-O1"]["output_diff"]["max_abs"] < 1e-4  # exact pipeline
    assert rows["ort-quantize-dynamic"]["weight_ratio"] < 0.5  # int8 weights
    assert rows["ort-quantize-static"]["info"]["settings"].endswith("on 6 samples")
    assert "passes" in rows["-O1"]["info"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["variants"][1]["latency"] == rows["-O1"]["latency"]
    md = (tmp_path / "report.md").read_text()
    assert "| -O1 | ok |" in md and "sgemm peak" in md
    for png in ("latency_ratio.png", "size.png", "metric_vs_speedup.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_variants_are_reported_and_the_rest_measured(model_path, tmp_path):
    def broken_build(ctx):
        raise ValueError("cannot build this")

    result = bench(model_path, ["-O1", "typo=cleanup,fold-constans", _flaky(after=2),
                                Variant("broken", "pipeline", "never builds", broken_build)],
                   out=tmp_path, compare=[], peak=False, **FAST)
    rows = {v["name"]: v for v in result["variants"]}
    assert rows["typo"]["status"] == "failed" and "fold-constans" in rows["typo"]["error"]
    assert rows["broken"]["status"] == "failed" and "cannot build this" in rows["broken"]["error"]
    assert rows["flaky"]["status"] == "failed" and "device lost" in rows["flaky"]["error"]
    assert "latency" not in rows["flaky"]
    for name in ("onnxruntime", "-O1"):
        assert rows[name]["status"] == "ok" and rows[name]["latency"]["runs"] >= 3
    assert "flaky failed: RuntimeError: device lost" in (tmp_path / "report.md").read_text()


def test_static_quantization_is_skipped_without_data(model_path, tmp_path):
    result = bench(model_path, out=tmp_path, compare=["ort-quantize-static"], peak=False, **FAST)
    static = result["variants"][1]
    assert static["status"] == "skipped" and "calibration data" in static["error"]


def test_data_folder_with_meta_metric_and_cli(model_path, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, s in enumerate(_samples(4)):
        np.savez(data / f"{i:03d}.npz", **s)
    (data / "meta.json").write_text(json.dumps({"metric": "tests.tools.test_bench:mean_output"}))
    out = tmp_path / "out"
    code = main(["bench", str(model_path), "-p", "-O1", "--data", str(data), "--out", str(out), "--compare", "none",
                 "--runs", "3", "--warmup", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == {"source": str(data), "samples": 4, "metric": "tests.tools.test_bench:mean_output"}
    assert [v["name"] for v in report["variants"]] == ["onnxruntime", "-O1"]
    assert all("mean_output" in v["metrics"] for v in report["variants"])


@pytest.mark.parametrize("data, message", [
    ([{"x": np.zeros((1, 3, 32, 32), np.float32)}], "lacks model input 'input'"),
    ([{"input": np.zeros((1, 3, 32, 32), np.float64)}], "is float64, the model wants float32"),
    ([{"input": np.zeros((1, 3, 16, 32), np.float32)}], "has shape [1, 3, 16, 32]"),
    ([], "empty"),
    ("/nonexistent/folder", "does not exist"),
])
def test_bad_data_is_a_clear_error(model_path, tmp_path, data, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        bench(model_path, data=data, out=tmp_path, compare=[], peak=False, **FAST)


def test_cli_bad_options_exit_2(model_path, tmp_path):
    assert main(["bench", str(model_path), "--compare", "tvm-magic", "--out", str(tmp_path)]) == 2
    assert main(["bench", str(model_path), "--dims", "batch=x", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--out", str(tmp_path)]) == 2


def test_suite_runs_each_model_and_reports_a_failing_one(model_path, tmp_path, monkeypatch):
    from onnxforge.ir import OnnxforgeError
    from onnxforge.tools.benchmarks import suite

    data = tmp_path / "data"
    data.mkdir()
    for i, s in enumerate(_samples(3)):
        np.savez(data / f"{i:03d}.npz", **s)

    def missing():
        raise FileNotFoundError("wheel not reachable")

    monkeypatch.setattr(suite, "SUITE", {"tiny": suite.Entry(lambda: model_path, lambda m: data),
                                         "gone": suite.Entry(missing, lambda m: data)})
    with pytest.raises(OnnxforgeError, match="gone"):
        suite.run_suite(out=tmp_path / "out", pipelines=["-O1"], compare=[], log=lambda s: None, peak=False, **FAST)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## tiny" in summary and "| -O1 | ok |" in summary
    assert "## gone" in summary and "FAILED: FileNotFoundError: wheel not reachable" in summary
    assert (tmp_path / "out" / "tiny" / "report.json").exists()


def test_a_failing_baseline_is_an_error_not_a_report(model_path, tmp_path):
    from onnxforge.ir import OnnxforgeError

    def broken_metric(outputs, samples):
        raise KeyError("no such output")

    with pytest.raises(OnnxforgeError, match="baseline.*failed.*no such output"):
        bench(model_path, ["-O1"], data=_samples(2), metric=broken_metric, out=tmp_path, compare=[], peak=False, **FAST)
    assert not (tmp_path / "report.json").exists()


def test_timing_shape_of_symbolic_inputs_must_be_given(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", None])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    with pytest.raises(DataError, match="unknown size"):
        bench(path, out=tmp_path / "a", compare=[], peak=False, **FAST)
    result = bench(path, out=tmp_path / "b", compare=[], peak=False, shapes={"x": [2, 5]}, **FAST)
    assert result["timing"]["feeds"] == {"x": [2, 5]}
    assert main(["bench", str(path), "--shape", "x=3x4", "--compare", "none", "--runs", "3", "--out", str(tmp_path / "c")]) == 0
    assert main(["bench", str(path), "--shape", "x=3,4,5", "--compare", "none", "--out", str(tmp_path / "d")]) == 2


def test_cli_compiled_variant_next_to_onnxruntime(model_path, tmp_path):
    out = tmp_path / "out"
    assert main(["bench", str(model_path), "-p", "-O1", "--target", "x86", "--compare", "none", "--runs", "3",
                 "--warmup", "1", "--out", str(out)]) == 0
    rows = {v["name"]: v for v in json.loads((out / "report.json").read_text())["variants"]}
    compiled = rows["tvm-x86:-O1"]
    assert compiled["kind"] == "compiled" and compiled["status"] == "ok", compiled.get("error")
    assert compiled["output_diff"]["max_abs"] < 1e-4 and compiled["gflops"] > 0
    assert compiled["artifact"].endswith(".ofpkg")


def test_a_variant_refusing_the_samples_is_timed_without_a_metric(model_path, tmp_path):
    """Like a compiled module pinned to the timed shape: a DataError on the data
    leaves it timed, unevaluated, and says so."""
    def pinned(ctx):
        run = ort_runner(ctx.original, ctx.threads)

        def only_the_timed_input(feeds):
            if feeds["input"] is not ctx.timing_feeds["input"]:
                raise DataError("input 'input': shape [1, 3, 16, 16], expected [1, 3, 32, 32]")
            return run(feeds)

        return Built(only_the_timed_input, ctx.original)

    result = bench(model_path, [Variant("pinned", "compiled", "pinned to the timed shape", pinned)], data=_samples(3),
                   metric=mean_output, out=tmp_path, compare=[], peak=False, **FAST)
    row = result["variants"][1]
    assert row["status"] == "ok" and row["latency"]["runs"] >= 3 and "latency_ratio" in row
    assert "metrics" not in row and "expected [1, 3, 32, 32]" in row["not_evaluated"]
    assert "pinned timed but not evaluated" in (tmp_path / "report.md").read_text()


def test_flops_of_a_model_whose_shapes_need_folding(tmp_path):
    """A weight shaped by a computed subgraph (as EfficientNet-Lite0's padding is):
    the report's FLOPs are the MatMul's, found after constant folding."""
    import onnx
    from onnx import TensorProto, helper

    from onnxforge.tools.bench.harness import _graph_stats

    F = TensorProto.FLOAT
    nodes = [helper.make_node("Shape", ["c"], ["s"]), helper.make_node("Cast", ["s"], ["sf0"], to=F),
             helper.make_node("Mul", ["sf0", "one"], ["sf"]),  # float arithmetic: shape inference gives up
             helper.make_node("Cast", ["sf"], ["si"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["w"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["y"])]
    nodes[4].input.append("si")
    inits = [onnx.numpy_helper.from_array(np.zeros((8, 4), np.float32), "c"),
             onnx.numpy_helper.from_array(np.ones(2, np.float32), "one"),
             onnx.numpy_helper.from_array(np.ones(32, np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 8])],
                              [helper.make_tensor_value_info("y", F, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    _, flops = _graph_stats(path, {"x": np.zeros((2, 8), np.float32)})
    assert flops == 2 * 2 * 8 * 4


def test_reports_name_the_hosts_vector_isa(monkeypatch, tmp_path):
    """Rows from hosts with different ISAs must not read as comparable: the report
    line carries the CPU model and its AVX2 / AVX-512 / AMX / NEON flags."""
    import builtins

    from onnxforge.tools.bench import harness
    from onnxforge.tools.bench.report import machine_line

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni amx_tile\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(cpuinfo if p == "/proc/cpuinfo" else p, *a, **k))
    m = harness.machine_info(2)
    assert m["cpu"] == "Some Xeon" and m["isa"] == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]
    line = machine_line({"date": "2026-12-06", "machine": m, "timing": {"threads": 2}})
    assert "Some Xeon (avx2 fma avx512f avx512_vnni amx_tile)" in line


def test_openvino_comparators_run_the_original_model(tmp_path):
    """OpenVINO (installed with the bench extra) reads the ONNX file itself; the fp32
    variant must agree with onnxruntime, and reports the precision it ran at."""
    import onnx

    from onnxforge.tools.bench.variants import BuildContext, COMPARATORS, DEFAULT_COMPARATORS, ort_runner
    from onnxforge.tools.example import build_example

    assert {"openvino", "openvino-default"} <= set(DEFAULT_COMPARATORS)
    path = tmp_path / "ex.onnx"
    onnx.save(build_example(), str(path))
    ctx = BuildContext(original=path, work_dir=tmp_path, threads=2, calibration=None)
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    want = ort_runner(path, 2)(feeds)
    built = COMPARATORS["openvino"]().build(ctx)
    got = built.runner(feeds)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    assert built.info["inference_precision"] == "f32"
    assert built.info["settings"]["INFERENCE_NUM_THREADS"] == 2


def test_under_load_times_every_variant_again_next_to_a_busy_process(model_path, tmp_path, monkeypatch):
    import subprocess

    from onnxforge.tools.bench import timing

    started = []
    real_popen = subprocess.Popen

    def spy(args, **kw):  # the load really runs, and is really stopped
        proc = real_popen(args, **kw)
        started.append(proc)
        return proc

    monkeypatch.setattr(timing.subprocess, "Popen", spy)
    result = bench(model_path, ["-O1"], out=tmp_path, compare=[], peak=False, under_load="nice", **FAST)
    assert len(started) == 1 and started[0].poll() is not None  # killed and reaped after timing
    rows = {v["name"]: v for v in result["variants"]}
    for v in rows.values():
        assert v["latency_loaded"]["runs"] >= 3
        assert v["load_slowdown"] == pytest.approx(v["latency_loaded"]["median"] / v["latency"]["median"])
        assert v["latency_ratio_loaded"] == pytest.approx(
            v["latency_loaded"]["median"] / rows["onnxruntime"]["latency_loaded"]["median"])
    assert result["timing"]["under_load"] == "nice"
    md = (tmp_path / "report.md").read_text()
    assert "slowdown under load" in md and "niced to 19" in md
    with pytest.raises(DataError, match="under_load"):
        bench(model_path, [], out=tmp_path, compare=[], peak=False, under_load="heavy", **FAST)
