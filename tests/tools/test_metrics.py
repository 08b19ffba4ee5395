import math

import numpy as np
import pytest
from onnxforge.ir.errors import OnnxforgeError
from onnxforge.tools.bench.metrics import (
    BUILTIN_METRICS,
    MetricContext,
    MetricError,
    evaluate,
    get_metric,
    lower_is_better,
)

CHARS = "a\nb\nc"  # classes: 0 blank, 1 a, 2 b, 3 c, 4 space


def one_hot(indices, num_classes=5):
    """[1, T, C] scores whose argmax per step is `indices`."""
    probs = np.full((1, len(indices), num_classes), 0.01, dtype=np.float32)
    probs[0, np.arange(len(indices)), indices] = 0.9
    return {"softmax": probs}


def ctx(reference=None, meta=None, characters=CHARS):
    return MetricContext(reference=reference, model_metadata={"character": characters}, meta=meta or {})


def text(s):
    return {"text": np.array(s)}


# --------------------------------------------------------------------------- ctc-text


def test_ctc_collapses_repeats_and_blanks_split_them():
    # a a _ a b b ␣ c  ->  "a" "a" "b" " " "c"
    outputs = [one_hot([1, 1, 0, 1, 2, 2, 4, 3])]
    result = evaluate(get_metric("ctc-text"), outputs, [text("aab c")], ctx())
    assert result == {"exact_match": 1.0, "cer": 0.0}
    assert list(result) == ["exact_match", "cer"]  # headline first


def test_ctc_cer_is_total_edits_over_total_reference_chars():
    outputs = [one_hot([1, 0, 2]), one_hot([1, 2, 0, 0])]  # "ab", "ab"
    result = evaluate(get_metric("ctc-text"), outputs, [text("ab"), text("abc")], ctx())
    assert result["exact_match"] == 0.5
    assert result["cer"] == pytest.approx(1 / 5)


def test_ctc_ignores_surrounding_whitespace_only():
    outputs = [one_hot([4, 1, 4, 2, 4]), one_hot([1, 2])]  # " a b ", "ab"
    result = evaluate(get_metric("ctc-text"), outputs, [text("a b"), text("a b")], ctx())
    assert result["exact_match"] == 0.5
    assert result["cer"] == pytest.approx(1 / 6)


def test_ctc_model_without_space_class():
    outputs = [one_hot([3, 3, 0, 3], num_classes=4)]
    assert evaluate(get_metric("ctc-text"), outputs, [text("cc")], ctx())["exact_match"] == 1.0


def test_ctc_class_count_mismatch_is_clear():
    with pytest.raises(MetricError, match="7 classes but the character list has 3"):
        evaluate(get_metric("ctc-text"), [one_hot([1], num_classes=7)], [text("a")], ctx())


def test_ctc_needs_text_label_and_character_list():
    with pytest.raises(MetricError, match="'text' label"):
        evaluate(get_metric("ctc-text"), [one_hot([1])], [{"x": np.zeros(1)}], ctx())
    no_chars = MetricContext(reference=None, model_metadata={}, meta={})
    with pytest.raises(MetricError, match="character"):
        evaluate(get_metric("ctc-text"), [one_hot([1])], [text("a")], no_chars)


def test_ctc_lower_is_better():
    metric = get_metric("ctc-text")
    assert lower_is_better(metric, "cer")
    assert not lower_is_better(metric, "exact_match")


# --------------------------------------------------------------------------- sentence-similarity


def embeddings(angles, scale=3.0):
    """Unnormalised 2-d embeddings; cosine similarity of two is cos(angle difference)."""
    return [{"embedding": scale * np.array([[math.cos(a), math.sin(a)]], dtype=np.float32)} for a in angles]


def test_sentence_similarity_correlations():
    angles = [0.0, 0.3, 1.0, 2.0]
    samples = [{"key": np.array(k)} for k in "wxyz"]
    pairs = [["w", "x"], ["w", "y"], ["w", "z"], ["x", "z"]]
    cosines = [math.cos(0.3), math.cos(1.0), math.cos(2.0), math.cos(1.7)]
    meta = {"pair_sets": {
        "linear": {"stat": "pearson", "pairs": [[a, b, 5 + 2 * c] for (a, b), c in zip(pairs, cosines)]},
        "reversed": {"stat": "spearman", "pairs": [[a, b, -c] for (a, b), c in zip(pairs, cosines)]},
    }}
    result = evaluate(get_metric("sentence-similarity"), embeddings(angles), samples, ctx(meta=meta))
    assert list(result) == ["linear_pearson", "reversed_spearman"]  # meta order
    assert result["linear_pearson"] == pytest.approx(1.0)
    assert result["reversed_spearman"] == pytest.approx(-1.0)


def test_sentence_similarity_on_a_subset_of_the_samples():
    """`--eval-samples N` evaluates some texts only: pairs with an unevaluated text are
    left out and the number used is reported; too few pairs is an error."""
    angles = [0.0, 0.3, 1.0, 2.0]
    pairs = [["w", "x", 3.0], ["w", "y", 2.0], ["w", "z", 0.0], ["x", "z", 1.0], ["x", "gone", 5.0]]
    meta = {"pair_sets": {"s": {"stat": "spearman", "pairs": pairs}}}
    samples = [{"key": np.array(k)} for k in "wxyz"]
    result = evaluate(get_metric("sentence-similarity"), embeddings(angles), samples, ctx(meta=meta))
    assert result == {"s_pairs": 4.0, "s_spearman": pytest.approx(1.0)}
    with pytest.raises(MetricError, match="1 of 5 pairs"):
        evaluate(get_metric("sentence-similarity"), embeddings(angles[:2]), samples[:2], ctx(meta=meta))


def test_sentence_similarity_unknown_key_and_missing_pairs():
    samples = [{"key": np.array("w")}, {"key": np.array("x")}]
    meta = {"pair_sets": {"s": {"stat": "pearson", "pairs": [["w", "nope", 1.0]]}}}
    with pytest.raises(MetricError, match="nope"):
        evaluate(get_metric("sentence-similarity"), embeddings([0, 1]), samples, ctx(meta=meta))
    with pytest.raises(MetricError, match="pair_sets"):
        evaluate(get_metric("sentence-similarity"), embeddings([0, 1]), samples, ctx())


# --------------------------------------------------------------------------- topk-agreement


def logits(order):
    """[1, 10] scores ranking the classes in `order` first."""
    scores = np.zeros((1, 10), dtype=np.float32)
    scores[0, list(order)] = np.arange(len(order), 0, -1)
    return {"logits": scores}


def test_topk_agreement_against_reference():
    reference = [logits([3]), logits([7]), logits([1])]
    outputs = [logits([3]), logits([2, 0, 7]), logits([2, 4, 5, 6, 8, 1])]
    result = evaluate(get_metric("topk-agreement"), outputs, [{}] * 3, ctx(reference=reference))
    assert result == {"top1_agreement": pytest.approx(1 / 3), "top5_agreement": pytest.approx(2 / 3)}


def test_topk_agreement_of_baseline_is_one():
    outputs = [logits([3]), logits([7])]
    result = evaluate(get_metric("topk-agreement"), outputs, [{}] * 2, ctx())
    assert result == {"top1_agreement": 1.0, "top5_agreement": 1.0}


# --------------------------------------------------------------------------- get_metric / evaluate


def test_builtins_have_one_line_docstrings():
    for name, fn in BUILTIN_METRICS.items():
        assert get_metric(name) is fn
        assert fn.__doc__ and "\n" not in fn.__doc__.strip(), name


def test_unknown_metric_lists_builtins_and_suggests():
    with pytest.raises(MetricError) as err:
        get_metric("ctc-txt")
    message = str(err.value)
    assert "'ctc-txt'" in message and "did you mean 'ctc-text'" in message
    assert all(name in message for name in BUILTIN_METRICS)
    assert isinstance(err.value, OnnxforgeError)


@pytest.mark.parametrize("spec, pattern", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("math:no_such_function", "has no attribute 'no_such_function'"),
    ("math:pi", "'pi' is a float, not a function"),
    ("missing_file.py:f", "not found"),
])
def test_get_metric_user_spec_errors(spec, pattern):
    with pytest.raises(MetricError, match=pattern) as err:
        get_metric(spec)
    assert spec in str(err.value)


def test_two_and_three_argument_user_metrics(tmp_path):
    script = tmp_path / "my_metrics.py"
    script.write_text(
        "import numpy as np\n"
        "def mean_out(outputs, samples):\n"
        "    return {'mean': np.float32(np.mean([o['y'] for o in outputs])), 'n': len(samples)}\n"
        "def uses_meta(outputs, samples, context):\n"
        "    return {'scale': context.meta['scale'] * len(outputs)}\n"
        "uses_meta.lower_is_better = {'scale'}\n"
    )
    outputs, samples = [{"y": np.array([1.0])}, {"y": np.array([2.0])}], [{}, {}]
    two = get_metric(f"{script}:mean_out")
    result = evaluate(two, outputs, samples, ctx())
    assert result == {"mean": 1.5, "n": 2.0} and all(type(v) is float for v in result.values())
    three = get_metric(f"{script}:uses_meta")
    assert evaluate(three, outputs, samples, ctx(meta={"scale": 0.5})) == {"scale": 1.0}
    assert lower_is_better(three, "scale") and not lower_is_better(two, "mean")


@pytest.mark.parametrize("bad, pattern", [
    ([0.5], "non-empty dict"),
    ({}, "non-empty dict"),
    ({"a": "0.5"}, "not a number"),
    ({"a": [1.0, 2.0]}, "not a number"),
    ({1: 0.5}, "non-string key"),
    ({"a": float("inf")}, "infinite"),
])
def test_evaluate_rejects_bad_results(bad, pattern):
    with pytest.raises(MetricError, match=pattern):
        evaluate(lambda outputs, samples: bad, [{}], [{}], ctx())


def test_evaluate_allows_nan_and_wraps_metric_failures():
    assert math.isnan(evaluate(lambda o, s: {"r": np.nan}, [{}], [{}], ctx())["r"])

    def broken(outputs, samples):
        raise KeyError("label")

    with pytest.raises(MetricError, match="broken.*KeyError"):
        evaluate(broken, [{}], [{}], ctx())
    with pytest.raises(MetricError, match="2 outputs for 1 samples"):
        evaluate(broken, [{}, {}], [{}], ctx())
