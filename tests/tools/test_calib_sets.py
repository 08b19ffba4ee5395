"""Calibration sets of the benchmark models (tools/benchmarks/calib.py): the pure
pieces that keep them disjoint from the evaluation data, and that a written folder
loads as calibration data. No model cache, wheel or network needed."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxforge.ir import DataError, load
from onnxforge.passes.calibration import Calibration
from onnxforge.tools.benchmarks import calib
from onnxforge.tools.benchmarks.data_effnet import _crops


def _identity_model(inputs: dict[str, tuple[int, list]]) -> onnx.ModelProto:
    """One Identity per input: {name: (elem type, shape)}."""
    values = [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()]
    outs = [helper.make_tensor_value_info(f"{k}_out", t, s) for k, (t, s) in inputs.items()]
    nodes = [helper.make_node("Identity", [k], [f"{k}_out"]) for k in inputs]
    return helper.make_model(helper.make_graph(nodes, "g", values, outs), opset_imports=[helper.make_opsetid("", 17)])


# --------------------------------------------------------------------------- PP-OCRv4 rec
def test_eval_text_universe_holds_every_run_the_evaluation_can_draw():
    sentences = [["The", "cat", "sat", "down."], ["Hello", "world!"]]
    universe = calib.eval_text_universe(sentences, max_words=3)
    assert {"The", "The cat", "The cat sat", "cat sat down.", "down.", "Hello world!"} <= universe
    assert "The cat sat down." not in universe  # 4 words > max_words
    assert "sat down. Hello" not in universe  # runs never cross sentences
    # data_ppocr's draw: a start, a length, then words dropped from the end.
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = sentences[rng.integers(len(sentences))]
        start = int(rng.integers(len(words)))
        words = words[start:start + int(rng.integers(1, 4))]
        words = words[:len(words) - int(rng.integers(len(words)))]
        assert " ".join(words) in universe


# --------------------------------------------------------------------------- MiniLM-L6
def test_minilm_texts_skip_evaluation_documents_and_words_and_interleave():
    eval_docs = ["Fires burn near Sydney. Five homes were lost in the blaze overnight.", "Rain fell."]
    background = [
        eval_docs[1],  # the same document
        "Officials said. Five homes were lost in the blaze overnight.",  # shares a 5+ word sentence
        "Markets rose today. Traders were pleased with the results.",
        "The minister resigned. A new minister will be named next week.",
        "Rain fell.  Crops grew.",
    ]
    words = ["Tiger", "car", "happy", "ocean", "stone"]
    texts = calib.minilm_texts(background, eval_docs, words, {"tiger", "Car"}, n=5, seed=1)
    keys = [k for k, _ in texts]
    assert [k.split("/")[0] for k in keys] == ["lee_background", "simlex"] * 2 + ["lee_background"]
    picked_docs = [t for k, t in texts if k.startswith("lee_background")]
    picked_words = [t for k, t in texts if k.startswith("simlex")]
    assert set(picked_docs) <= set(background[2:]) and not set(picked_docs) & set(eval_docs)
    assert set(picked_words) <= {"happy", "ocean", "stone"}
    assert calib.minilm_texts(background, eval_docs, words, {"tiger", "Car"}, n=5, seed=1) == texts  # seeded
    with pytest.raises(DataError, match="too many"):
        calib.minilm_texts(background, eval_docs, words, {"tiger"}, n=9)


def test_minilm_shaped_samples_load_against_a_model_with_symbolic_dims(tmp_path):
    names = ("input_ids", "attention_mask", "token_type_ids")
    model = load(_identity_model({k: (TensorProto.INT64, ["batch", "sequence"]) for k in names}))
    samples = [{k: np.ones((1, length), np.int64) for k in names} for length in (5, 130, 256)]
    folder = calib.write_calibration(tmp_path / "minilm", samples, {"model": "minilm_l6"})
    cal = Calibration.from_source(folder, model=model)
    assert [s["input_ids"].shape for s in cal] == [(1, 5), (1, 130), (1, 256)]


# --------------------------------------------------------------------------- EfficientNet-Lite0
@pytest.mark.parametrize("size", [(512, 512), (640, 427), (300, 451)])
def test_random_views_are_seeded_in_bounds_and_clear_of_the_evaluation_crops(size):
    width, height = size
    short = min(size)
    draws = [calib.random_view(np.random.default_rng(7), width, height) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(3)
    flips = set()
    for _ in range(300):
        (left, top, right, bottom), flip = calib.random_view(rng, width, height)
        flips.add(flip)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert right - left == bottom - top
        assert round(0.4 * short) <= right - left <= round(0.9 * short)
        assert all(calib._iou((left, top, right, bottom), box) <= calib.MAX_IOU for box in _crops(width, height))
    assert flips == {False, True}


def test_iou():
    assert calib._iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert calib._iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert calib._iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_effnet_samples_write_and_load_through_calibration(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = {f"p{i}.png": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for i, (w, h) in enumerate([(320, 240), (256, 256)])}
    samples, views = calib.effnet_samples(photos, n=3, seed=5)
    assert [v["photo"] for v in views] == ["p0.png", "p1.png", "p0.png"]  # cycled in order
    assert all(set(s) == {"input"} and s["input"].shape == (1, 3, 224, 224) and s["input"].dtype == np.float32
               for s in samples)
    again, _ = calib.effnet_samples(photos, n=3, seed=5)
    assert all(np.array_equal(a["input"], b["input"]) for a, b in zip(samples, again))

    folder = calib.write_calibration(tmp_path / "effnet", samples, {"model": "efficientnet_lite0", "views": views})
    assert sorted(p.name for p in folder.iterdir()) == ["0000.npz", "0001.npz", "0002.npz", "meta.json"]
    assert json.loads((folder / "meta.json").read_text())["views"][1]["photo"] == "p1.png"
    model = load(_identity_model({"input": (TensorProto.FLOAT, [1, 3, 224, 224])}))
    cal = Calibration.from_source(folder, model=model)
    assert len(cal) == 3 and np.array_equal(cal[2]["input"], samples[2]["input"])


# --------------------------------------------------------------------------- checks and entry points
def test_identical_to_eval_compares_model_inputs_only(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    np.savez(tmp_path / "0000.npz", x=x, text=np.array("label"))  # labels are ignored
    np.savez(tmp_path / "0001.npz", x=x + 1, text=np.array("other"))
    assert calib.identical_to_eval([{"x": x.copy()}, {"x": x + 2}], tmp_path) == 1
    assert calib.identical_to_eval([{"x": x + 2}], tmp_path) == 0


def test_build_calibration_reuses_a_folder_and_rejects_bad_arguments(tmp_path, capsys):
    existing = tmp_path / "efficientnet_lite0"
    existing.mkdir()
    assert calib.build_calibration("effnet", existing) == existing  # no wheel or cache touched
    assert calib.main(["effnet"], out=str(tmp_path)) == [existing]
    assert str(existing) in capsys.readouterr().out
    with pytest.raises(DataError, match="known: ppocrv4_rec"):
        calib.build_calibration("resnet50", tmp_path / "x")
    with pytest.raises(DataError, match="at least 1"):
        calib.build_calibration("minilm_l6", tmp_path / "y", n=0)


def test_leading_sentences_stop_before_the_budget_but_keep_one():
    text = "One two. Three four five! Six seven? Eight."
    fits = lambda t: len(t.split()) <= 5  # noqa: E731
    assert calib._leading_sentences(text, fits) == "One two. Three four five!"
    assert calib._leading_sentences(text, lambda t: False) == "One two."
