"""RNN / GRU / LSTM / com.microsoft DynamicQuantizeLSTM compiled (codegen/recurrent.py,
codegen/cpu/recurrent.c) against onnxruntime: every direction, symbolic sequence
length and batch, sequence_lens, initial states, peepholes, clip, input_forget,
linear_before_reset, listed activations with alpha/beta. Float: atol 1e-5."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import onnxforge

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def rnn_model(kind, *, I=8, H=16, direction="forward", seq="T", batch=2, bias=True, states=True, lens=False,
              peepholes=False, layout=0, opset=14, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    D, G = 2 if direction == "bidirectional" else 1, GATES[kind]
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((D, G * H, n)) * 0.3).astype(np.float32), name)
             for name, n in (("W", I), ("R", H))]
    names = ["x", "W", "R"]
    if bias:
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal((D, 2 * G * H)) * 0.3).astype(np.float32), "B"))
    names.append("B" if bias else "")
    inputs = [h.make_tensor_value_info("x", TP.FLOAT, [batch, seq, I] if layout else [seq, batch, I])]
    if lens:
        inputs.append(h.make_tensor_value_info("lens", TP.INT32, [batch]))
    names.append("lens" if lens else "")
    state_shape = [batch, D, H] if layout else [D, batch, H]
    for s in (["h0", "c0"] if kind == "LSTM" else ["h0"]):
        if states:
            inputs.append(h.make_tensor_value_info(s, TP.FLOAT, state_shape))
        names.append(s if states else "")
    if peepholes:
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal((D, 3 * H)) * 0.3).astype(np.float32), "P"))
        names.append("P")
    outs = ["y", "y_h"] + (["y_c"] if kind == "LSTM" else [])
    node = h.make_node(kind, names, outs, hidden_size=H, direction=direction, **({"layout": 1} if layout else {}), **attrs)
    graph = h.make_graph([node], kind.lower(), inputs, [h.make_tensor_value_info(o, TP.FLOAT, None) for o in outs], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def feeds_for(model, T=5, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (T if d.dim_param == "T" else batch)
                for d in value.type.tensor_type.shape.dim]
        if value.name == "lens":
            feeds["lens"] = rng.integers(1, T + 1, size=dims).astype(np.int32)
        else:
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def check(model, atol=1e-5, **sizes):
    feeds = feeds_for(model, **sizes)
    sess = ort.InferenceSession(model.SerializeToString())
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    out = onnxforge.compile(onnxforge.load(model), target="x86", pipeline="-O0")(**feeds)
    for name, expected in ref.items():
        np.testing.assert_allclose(out[name], expected, atol=atol, rtol=0, err_msg=name)
    return out, ref


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions_with_symbolic_sequence(kind, direction):
    check(rnn_model(kind, direction=direction), T=6)


@pytest.mark.parametrize("kind,options", [
    ("LSTM", dict(lens=True, peepholes=True, direction="bidirectional", batch=3)),
    ("LSTM", dict(bias=False, states=False, clip=0.5, input_forget=1)),
    ("LSTM", dict(direction="bidirectional", activations=["HardSigmoid", "LeakyRelu", "Softsign", "Sigmoid", "Elu", "ScaledTanh"],
                  activation_alpha=[0.3, 0.05, 0.9, 1.1], activation_beta=[0.4, 0.7])),
    ("GRU", dict(direction="bidirectional", linear_before_reset=1, lens=True, batch=3)),
    ("GRU", dict(direction="reverse", lens=True, batch=3, clip=0.8)),
    ("RNN", dict(direction="bidirectional", activations=["Affine", "Softplus"], activation_alpha=[0.7], activation_beta=[0.2])),
    ("RNN", dict(activations=["Relu"], clip=1.0, seq=7, batch="B", states=False)),
])
def test_attributes_and_optional_inputs(kind, options):
    batch = options["batch"] if isinstance(options.get("batch"), int) else 3
    check(rnn_model(kind, **options), T=7 if options.get("seq") == 7 else 5, batch=batch)


def test_sequence_lens_zero_past_the_end_and_state_held():
    out, _ = check(rnn_model("LSTM", lens=True, batch=3), T=6)
    feeds = feeds_for(rnn_model("LSTM", lens=True, batch=3), T=6)
    for b, n in enumerate(feeds["lens"]):
        assert not out["y"][n:, 0, b].any()  # rows past their length are zeros
        np.testing.assert_array_equal(out["y_h"][0, b], out["y"][n - 1, 0, b])  # Y_h: the last valid step


def test_batch_first_layout_against_the_onnx_reference():
    """onnxruntime refuses layout=1; onnx's reference evaluator implements it."""
    from onnx.reference import ReferenceEvaluator

    model = rnn_model("LSTM", direction="bidirectional", layout=1)
    feeds = feeds_for(model, T=4, batch=2)
    expected = ReferenceEvaluator(model).run(None, feeds)
    out = onnxforge.compile(onnxforge.load(model), target="x86", pipeline="-O0")(**feeds)
    for name, ref in zip(("y", "y_h", "y_c"), expected):
        np.testing.assert_allclose(out[name], ref, atol=1e-5, rtol=0, err_msg=name)


def test_dynamic_quantize_lstm_from_onnxruntime_quantizer(tmp_path):
    """onnxruntime's quantize_dynamic turns LSTM into com.microsoft.DynamicQuantizeLSTM
    (int8 weights, activations quantized to uint8 at run time, the hidden state at
    every step). The compiled module quantizes the same way and computes the integer
    products exactly. On x86 hosts without VNNI onnxruntime multiplies uint8 x int8
    with vpmaddubsw, whose int16 sums of two products saturate, so it drifts from the
    exact result whenever 255 * 127-sized pairs meet; this layer's data never
    saturates there, so both agree to float rounding on every host."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_model = onnx.shape_inference.infer_shapes(rnn_model("LSTM", I=24, H=32, batch=1, states=False, direction="forward"))
    onnx.save(float_model, tmp_path / "lstm.onnx")
    quantize_dynamic(tmp_path / "lstm.onnx", tmp_path / "lstm_q.onnx", op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8)
    quantized = onnx.load(tmp_path / "lstm_q.onnx")
    assert [n.op_type for n in quantized.graph.node] == ["DynamicQuantizeLSTM"]
    feeds = feeds_for(quantized, T=6, batch=1)
    ref = ort.InferenceSession(quantized.SerializeToString()).run(None, feeds)[0]
    float_ref = ort.InferenceSession(float_model.SerializeToString()).run(None, feeds)[0]
    out = onnxforge.compile(onnxforge.load(quantized), target="x86", pipeline="-O0")(**feeds)["y"]
    quantization_error = np.abs(float_ref - ref).mean()
    assert quantization_error > 1e-4  # the quantized model really differs from the float one
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,options", [
    ("LSTM", dict(direction="bidirectional", lens=True, peepholes=True, batch=3)),
    ("GRU", dict(direction="reverse", linear_before_reset=1)),
    ("GRU", dict(clip=0.7, activations=["HardSigmoid", "Softsign"], activation_alpha=[0.3], activation_beta=[0.4])),
    ("RNN", dict(direction="bidirectional", activations=["Relu", "LeakyRelu"], activation_alpha=[0.2])),
])
def test_unrolled_recurrence_without_the_c_kernels(kind, options):
    """Builds that do not link recurrent.c (GPU targets, cpu_kernels='schedule') get the
    recurrence unrolled into Relax ops: it needs a sequence length known at compile time."""
    model = rnn_model(kind, seq=5, **options)
    batch = options.get("batch", 2)
    feeds = feeds_for(model, T=5, batch=batch)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    out = onnxforge.compile(onnxforge.load(model), target="x86", pipeline="-O0", cpu_kernels="schedule")(**feeds)
    for o, expected in zip(model.graph.output, ref):
        np.testing.assert_allclose(out[o.name], expected, atol=1e-5, rtol=0, err_msg=o.name)


def test_unrolled_recurrence_needs_a_static_sequence_length():
    from onnxforge.ir import LoweringError

    with pytest.raises(LoweringError, match=r"sequence length known only at run time needs onnxforge's C kernels"):
        onnxforge.compile(onnxforge.load(rnn_model("LSTM")), target="x86", pipeline="-O0", cpu_kernels="schedule")
