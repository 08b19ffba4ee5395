import numpy as np
import pytest

import onnxforge
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs


def run_and_check(proto, pipeline, atol=1e-5, rtol=1e-5, feeds=None):
    """Run a pipeline with the numeric check after each pass, verify the result,
    compare final outputs with the original in onnxruntime (stated tolerance), and
    check that a second run changes nothing. Returns the first result."""
    model = onnxforge.load(proto)
    feeds = feeds or sample_inputs(model)
    result = onnxforge.optimize(model, pipeline, check=True, inputs=feeds)
    onnxforge.verify(result.model)
    diff = compare_outputs(run_ort(model, feeds), run_ort(result.model, feeds), atol, rtol)
    assert diff.ok, f"{pipeline}: {diff}"
    again = onnxforge.optimize(result.model, pipeline)
    assert not again.changed, f"second run of {pipeline} changed: {[r.spec for r in again.records if r.changed]}"
    return result


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cleanup_registry():
    """Passes a test registers are unregistered after it."""
    from onnxforge.passes import registry

    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        registry.unregister_pass(name)
