"""Property tests for -O2: the random graphs of tests/test_property.py (MatMuls with
constant weights, constant Mul/Add/Sub/Div, Transposes, Reshapes, ...) keep
verifying, keep their outputs within fuse's tolerance, and a second -O2 run
changes nothing."""
import numpy as np
import onnx
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import onnxforge
from onnxforge.ir import to_proto
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from onnxforge.passes.fusion import Fuse
from tests.models import fusion as fm
from tests.test_property import random_models

SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(random_models())
def test_o2_keeps_outputs_and_reaches_a_fixed_point(proto):
    note(onnx.printer.to_text(proto))
    result = onnxforge.optimize(onnxforge.load(proto), "-O2")
    onnxforge.verify(result.model)
    fuse = next(r for r in result.records if r.name == "fuse")
    for name in fuse.stats:
        if not name.endswith("_in_model"):
            event(f"fused: {name}")
    optimized = to_proto(result.model)
    onnx.checker.check_model(optimized)
    feeds = sample_inputs(onnxforge.load(proto), seed=0)
    diff = compare_outputs(run_ort(proto, feeds), run_ort(optimized, feeds), atol=Fuse.atol, rtol=Fuse.rtol)
    assert diff.ok, f"{diff}\n{result}"
    again = onnxforge.optimize(result.model, "-O2")
    assert not again.changed, f"second -O2 run still changed the model:\n{again}"


def _broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


@st.composite
def linear_then_affine(draw):
    """A Conv / ConvTranspose / Gemm / MatMul with constant weights, then 1-3 of
    BatchNormalization or Mul/Div/Add/Sub by a constant of a random broadcastable
    shape (per channel, per position, single, or over the wrong axis)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    net = fm.Net(seed=draw(st.integers(0, 1000)))
    op = draw(st.sampled_from(["Conv", "ConvTranspose", "Gemm", "MatMul", "MatMul3d"]))
    c_in, c_out = draw(st.sampled_from([(2, 4), (4, 4), (3, 6)]))
    if op in ("Conv", "ConvTranspose"):
        group = draw(st.sampled_from([g for g in (1, 2) if c_in % g == 0 and c_out % g == 0]))
        w = net.weight(c_out, c_in // group, 3, 3) if op == "Conv" else net.weight(c_in, c_out // group, 3, 3)
        bias = [net.const(rng.standard_normal(c_out).astype(np.float32))] if draw(st.booleans()) else []
        y, x_shape, out_shape = net.op(op, "x", w, *bias, group=group, pads=[1, 1, 1, 1]), [1, c_in, 3, 4], (1, c_out, 3, 4)
    elif op == "Gemm":
        trans_b = draw(st.booleans())
        w = net.weight(c_out, c_in) if trans_b else net.weight(c_in, c_out)
        c = [net.const(rng.standard_normal(draw(st.sampled_from([(c_out,), (3, c_out), ()]))).astype(np.float32))]
        y = net.op("Gemm", "x", w, *(c if draw(st.booleans()) else []), transB=int(trans_b), beta=0.5)
        x_shape, out_shape = [3, c_in], (3, c_out)
    else:
        x_shape = [3, c_in] if op == "MatMul" else [2, 3, c_in]
        y, out_shape = net.op("MatMul", "x", net.weight(c_in, c_out)), tuple(x_shape[:-1]) + (c_out,)
    channel = 1 if len(out_shape) == 4 or op == "Gemm" or op == "MatMul" else -1
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["BatchNormalization", "Mul", "Div", "Add", "Sub"]))
        if kind == "BatchNormalization":
            if len(out_shape) == 3:
                continue  # BN normalizes axis 1; not the MatMul's channels here
            ch = out_shape[1]
            params = [rng.uniform(0.5, 2, ch), rng.standard_normal(ch), rng.standard_normal(ch), rng.uniform(0.2, 2, ch)]
            y = net.op(kind, y, *[net.const(p.astype(np.float32)) for p in params])
            continue
        rank = len(out_shape)
        shapes = [(), (out_shape[channel],), tuple(d if i == channel % rank else 1 for i, d in enumerate(out_shape)),
                  tuple(out_shape), (1,) + tuple(out_shape[1:]), (out_shape[-1],)]
        shape = draw(st.sampled_from([s for s in shapes if _broadcasts_to(s, out_shape)]))
        const = rng.uniform(0.5, 2, shape) * rng.choice([-1, 1], shape)
        args = [y, net.const(const.astype(np.float32))]
        y = net.op(kind, *(args[::-1] if kind in ("Mul", "Add") and draw(st.booleans()) else args))
    return net.model([("x", x_shape, fm.F)], [y])


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(linear_then_affine())
def test_weight_folds_keep_outputs(proto):
    note(onnx.printer.to_text(proto))
    result = onnxforge.optimize(onnxforge.load(proto), "fuse")
    onnxforge.verify(result.model)
    for name in result.records[0].stats:
        event(f"fused: {name}")
    feeds = sample_inputs(onnxforge.load(proto), seed=0)
    diff = compare_outputs(run_ort(proto, feeds), run_ort(result.model, feeds), atol=Fuse.atol, rtol=Fuse.rtol)
    assert diff.ok, f"{diff}\n{result}"
    assert not onnxforge.optimize(result.model, "fuse").changed
