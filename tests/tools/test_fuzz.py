"""The fuzz harness (tools/fuzz.py) in CI: 500 cases (mutated models through
load -> -O2 -> save, tampered and hostile packages through the loader, garbled
pipelines), every one either going through or refused with an OnnxforgeError."""
import pytest

from onnxforge.tools import fuzz

pytest.importorskip("tvm")


def test_mutants_are_deterministic_for_a_seed():
    seeds = fuzz._seed_models()
    assert fuzz.model_mutant(seeds, 7, 3) == fuzz.model_mutant(seeds, 7, 3)
    assert fuzz.pipeline_mutant(5, 1) == fuzz.pipeline_mutant(5, 1)


def test_500_fuzz_cases_give_no_bad_outcome():
    report = fuzz.run(models=300, packages=150, pipelines=50, seed=0, timeout=120, memory_mb=fuzz.DEFAULT_MEMORY_MB)
    counts = report["counts"]
    assert sum(sum(c.values()) for c in counts.values()) == 500
    assert report["bad"] == [], report["bad"][:5]
    # the harness reaches both outcomes: mutants that go through and mutants refused
    assert counts["model"].get("ok", 0) > 0 and counts["model"].get("refused", 0) > 0
    assert counts["package"].get("refused", 0) > 100
