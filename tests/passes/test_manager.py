import io

import pytest

import onnxforge
from onnxforge.ir import PassError
from onnxforge.passes import Effect, Pass, PassManager, PassResult, PrintAfterChange, register_pass
from onnxforge.passes import registry
from onnxforge.passes.analysis import get_analysis
from tests.models import build


@pytest.fixture
def temp_passes():
    names = []

    def add(name, cls):
        register_pass(name)(cls)
        names.append(name)
        return cls

    yield add
    for n in names:
        registry.unregister_pass(n)


def test_result_reports_each_pass():
    from onnxforge.tools.example import build_example

    result = onnxforge.optimize(onnxforge.load(build_example()), "cleanup,fold-constants")
    assert [r.name for r in result.records] == ["cleanup", "fold-constants"]
    assert all(r.seconds >= 0 for r in result.records) and result.changed
    assert result.records[1].stats["constants_moved"] == 7
    assert "fold-constants" in str(result)


def test_failing_pass_leaves_model_untouched_and_writes_reproducer(tmp_path, temp_passes):
    class Breaks(Pass):
        def run(self, model):
            model.graph.nodes[0].attributes["junk"] = 1  # mutate, then fail
            raise RuntimeError("boom")

    temp_passes("test-breaks", Breaks)
    m = onnxforge.load(build.mlp())
    before = onnxforge.ir.to_proto(m).SerializeToString()
    with pytest.raises(PassError, match="'test-breaks'.*boom"):
        onnxforge.optimize(m, "cleanup,test-breaks", reproducer_dir=str(tmp_path / "repro"))
    assert onnxforge.ir.to_proto(m).SerializeToString() == before
    assert (tmp_path / "repro" / "pipeline.txt").read_text().startswith("test-breaks\n")
    again = onnxforge.load(tmp_path / "repro" / "input.onnx")
    assert "junk" not in again.graph.nodes[0].attributes


def test_structural_verify_catches_broken_pass(temp_passes):
    class Corrupts(Pass):
        def run(self, model):
            model.graph.nodes.reverse()
            return PassResult(True)

    temp_passes("test-corrupts", Corrupts)
    with pytest.raises(PassError, match="not defined before"):
        onnxforge.optimize(onnxforge.load(build.mlp()), "test-corrupts")


def test_numeric_check_catches_wrong_exact_pass(temp_passes):
    class Wrong(Pass):
        effect = Effect.EXACT

        def run(self, model):
            w = model.graph.initializers["w2"]
            w.set_array(w.array * 1.01)
            return PassResult(True)

    class Lossy(Wrong):
        effect = Effect.LOSSY

    temp_passes("test-wrong", Wrong)
    temp_passes("test-lossy", Lossy)
    m = onnxforge.load(build.mlp())
    with pytest.raises(PassError, match="test-wrong.*beyond"):
        onnxforge.optimize(m, "test-wrong", check=True)
    result = onnxforge.optimize(m, "test-lossy", check=True)  # lossy: reported, not fatal
    assert result.records[0].diff.max_abs > 0


def test_repeat_runs_to_fixed_point(temp_passes):
    calls = []

    class Countdown(Pass):
        def run(self, model):
            calls.append(1)
            return PassResult(len(calls) < 3)

    temp_passes("test-countdown", Countdown)
    result = onnxforge.optimize(onnxforge.load(build.mlp()), "repeat{max=10}(test-countdown)")
    assert len(calls) == 3 and len(result.records) == 3


def test_analyses_cached_and_invalidated(temp_passes):
    class Changes(Pass):
        def run(self, model):
            return PassResult(True)

    class Keeps(Changes):
        preserves = frozenset({"shapes"})

    temp_passes("test-changes", Changes)
    temp_passes("test-keeps", Keeps)
    m = onnxforge.load(build.mlp())
    get_analysis(m, "shapes")
    manager = PassManager("test-keeps")
    work = manager.run(m).model
    # the clone starts without a cache; run analysis on it and then a pass
    get_analysis(work, "shapes")
    from onnxforge.passes import run_pass
    run_pass(work, Keeps())
    assert "shapes" in work.analyses
    run_pass(work, Changes())
    assert "shapes" not in work.analyses


def test_print_after_change():
    from onnxforge.tools.example import build_example

    stream = io.StringIO()
    onnxforge.optimize(onnxforge.load(build_example()), "cleanup,cse", instruments=[PrintAfterChange(stream)])
    text = stream.getvalue()
    assert "after cleanup" in text and "Conv(" in text
