"""Task metrics: how good a model's outputs are on labelled data.

A metric is a function `metric(outputs, samples[, context]) -> {name: float}`:
`outputs[i]` holds the model's outputs (by name, first = main) for `samples[i]`,
the arrays of one .npz of a data folder (model inputs plus label keys). The first
key of the result is the headline figure. A metric may carry a
`lower_is_better` set of the keys where smaller is better (error rates).

Built-ins are listed in BUILTIN_METRICS; users pass their own as
"package.module:function" (or "path/to/file.py:function").
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import math
import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...ir.errors import OnnxforgeError

Outputs = list[dict[str, np.ndarray]]
Samples = list[dict[str, np.ndarray]]


class MetricError(OnnxforgeError):
    """A metric that cannot be found, cannot run on the data, or returns a bad result."""

    exit_code = 2


@dataclasses.dataclass
class MetricContext:
    reference: Outputs | None  # baseline outputs per sample; None when scoring the baseline itself
    model_metadata: dict[str, str]  # metadata_props of the original model
    meta: dict  # the data folder's meta.json ({} if none)


# --------------------------------------------------------------------------- helpers


def _main_output(out: dict[str, np.ndarray]) -> np.ndarray:
    if not out:
        raise MetricError("a model produced no outputs")
    return np.asarray(next(iter(out.values())))


def _label(sample: dict[str, np.ndarray], key: str, metric: str) -> list[str]:
    """A string label as a list (one entry per batch row)."""
    if key not in sample:
        raise MetricError(f"metric {metric!r} needs a {key!r} label in every sample; "
                          f"a sample has only {sorted(sample)}")
    return [str(s) for s in np.atleast_1d(sample[key]).ravel()]


def _check_rows(array: np.ndarray, n: int, what: str) -> np.ndarray:
    """The output, after checking it has one batch row per label."""
    if array.shape[:1] != (n,):
        raise MetricError(f"{what}: output of shape {array.shape} does not have {n} batch row(s)")
    return array


# --------------------------------------------------------------------------- ctc-text


def _ctc_characters(context: MetricContext, num_classes: int) -> list[str]:
    text = context.model_metadata.get("character") or context.meta.get("character")
    if text is None:
        raise MetricError("metric 'ctc-text' needs the character list: the model's metadata "
                          "(or the data's meta.json) has no 'character' entry")
    # As rapidocr's CTCLabelDecode: splitlines(), then "blank" first and, when the
    # model has a class for it (use_space_char), " " last.
    chars = text.splitlines() if isinstance(text, str) else list(text)
    if num_classes == len(chars) + 2:
        return ["blank", *chars, " "]
    if num_classes == len(chars) + 1:
        return ["blank", *chars]
    raise MetricError(f"metric 'ctc-text': the model has {num_classes} classes but the character "
                      f"list has {len(chars)} entries (expected {num_classes - 2} or {num_classes - 1})")


def ctc_greedy_decode(probs: np.ndarray, characters: list[str]) -> list[str]:
    """Best-path CTC decode of [N, T, C] scores: argmax, collapse repeats, drop blank (0)."""
    idx = np.asarray(probs).argmax(axis=-1)
    keep = idx != 0
    keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
    return ["".join(characters[k] for k in row[mask]) for row, mask in zip(idx, keep)]


def ctc_text(outputs: Outputs, samples: Samples, context: MetricContext) -> dict[str, float]:
    """OCR: CTC greedy decode vs the `text` label; exact-match rate and character error rate."""
    # Surrounding whitespace is ignored: the recogniser reads the blank margin of a
    # box as a space now and then, which no OCR evaluation counts (PaddleOCR's
    # RecMetric even drops every space); spaces inside the text still count.
    from rapidfuzz.distance import Levenshtein

    predicted, truth, characters = [], [], None
    for out, sample in zip(outputs, samples):
        labels = _label(sample, "text", "ctc-text")
        probs = _check_rows(_main_output(out), len(labels), "ctc-text")
        if probs.ndim != 3:
            raise MetricError(f"metric 'ctc-text' expects [N, T, C] scores, got shape {probs.shape}")
        characters = characters or _ctc_characters(context, probs.shape[-1])
        predicted += [p.strip() for p in ctc_greedy_decode(probs, characters)]
        truth += [t.strip() for t in labels]
    edits = sum(Levenshtein.distance(p, t) for p, t in zip(predicted, truth))
    chars = sum(len(t) for t in truth)
    return {
        "exact_match": float(np.mean([p == t for p, t in zip(predicted, truth)])),
        "cer": edits / chars if chars else math.nan,
    }


ctc_text.lower_is_better = {"cer"}


# --------------------------------------------------------------------------- sentence-similarity


def sentence_similarity(outputs: Outputs, samples: Samples, context: MetricContext) -> dict[str, float]:
    """Embeddings: correlation of cosine similarity with human scores (meta "pair_sets")."""
    from scipy import stats

    embeddings: dict[str, np.ndarray] = {}
    for out, sample in zip(outputs, samples):
        keys = _label(sample, "key", "sentence-similarity")
        rows = _check_rows(_main_output(out), len(keys), "sentence-similarity")
        for key, row in zip(keys, rows.reshape(len(keys), -1).astype(np.float64)):
            embeddings[key] = row / max(float(np.linalg.norm(row)), 1e-12)
    pair_sets = context.meta.get("pair_sets")
    if not pair_sets:
        raise MetricError("metric 'sentence-similarity' needs \"pair_sets\" in the data's meta.json")
    result = {}
    for name, spec in pair_sets.items():
        stat = spec.get("stat", "spearman")
        if stat not in ("pearson", "spearman"):
            raise MetricError(f"pair set {name!r}: stat must be 'pearson' or 'spearman', not {stat!r}")
        # pairs whose texts were not evaluated (`--eval-samples N` takes a subset) are left
        # out, and the number of pairs used is reported next to the correlation
        used = [(a, b, score) for a, b, score in spec["pairs"] if a in embeddings and b in embeddings]
        if len(used) < 3:
            missing = sorted({k for a, b, _ in spec["pairs"] for k in (a, b) if k not in embeddings})
            raise MetricError(f"pair set {name!r}: {len(used)} of {len(spec['pairs'])} pairs have both texts among "
                              f"the evaluated samples (missing keys, e.g. {missing[:3]}); a correlation needs 3")
        cosine = [float(embeddings[a] @ embeddings[b]) for a, b, _ in used]
        human = [float(score) for _, _, score in used]
        if len(used) < len(spec["pairs"]):
            result[f"{name}_pairs"] = float(len(used))
        r = stats.pearsonr(cosine, human)[0] if stat == "pearson" else stats.spearmanr(cosine, human)[0]
        result[f"{name}_{stat}"] = float(r)
    return result


# --------------------------------------------------------------------------- topk-agreement


def topk_agreement(outputs: Outputs, samples: Samples, context: MetricContext) -> dict[str, float]:
    """Classifiers: top-1 / top-5 agreement of the class scores with the original model's."""
    # The baseline agrees with itself by definition; computing it keeps one code path.
    reference = outputs if context.reference is None else context.reference
    if len(reference) != len(outputs):
        raise MetricError(f"topk-agreement: {len(outputs)} outputs but {len(reference)} reference outputs")
    top1 = top5 = total = 0
    for out, ref in zip(outputs, reference):
        got, want = _main_output(out), _main_output(ref)
        if got.shape != want.shape:
            raise MetricError(f"topk-agreement: output shape {got.shape} differs from the reference's {want.shape}")
        got, want = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
        want_top = want.argmax(axis=-1)
        k = min(5, got.shape[-1])
        got_top5 = np.argpartition(-got, k - 1, axis=-1)[:, :k]
        top1 += int((got.argmax(axis=-1) == want_top).sum())
        top5 += int((got_top5 == want_top[:, None]).any(axis=-1).sum())
        total += len(want_top)
    return {"top1_agreement": top1 / total, "top5_agreement": top5 / total}


# --------------------------------------------------------------------------- registry and checks


BUILTIN_METRICS: dict[str, Callable] = {
    "ctc-text": ctc_text,
    "sentence-similarity": sentence_similarity,
    "topk-agreement": topk_agreement,
}


def _builtin_list() -> str:
    return ", ".join(BUILTIN_METRICS)


def _load_module(name: str, spec: str):
    if name.endswith(".py"):  # a user's script: "path/to/file.py:function"
        path = Path(name)
        if not path.is_file():
            raise MetricError(f"metric {spec!r}: file {path} not found")
        module_spec = importlib.util.spec_from_file_location(f"onnxforge_user_metric_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def get_metric(spec: str | Callable) -> Callable:
    """A built-in metric by name, or "package.module:function" / "file.py:function"."""
    if callable(spec):
        return spec
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    if ":" not in spec:
        close = difflib.get_close_matches(spec, BUILTIN_METRICS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MetricError(f"unknown metric {spec!r}{hint}; built-in metrics: {_builtin_list()}; "
                          "or give your own as 'package.module:function'")
    module_name, _, attr = spec.rpartition(":")
    try:
        module = _load_module(module_name, spec)
    except MetricError:
        raise
    except Exception as exc:  # ImportError, or whatever the module raises on import
        raise MetricError(f"metric {spec!r}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise MetricError(f"metric {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise MetricError(f"metric {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def _takes_context(metric: Callable) -> bool:
    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):  # some builtins and C functions have no signature
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _metric_name(metric: Callable) -> str:
    return getattr(metric, "__qualname__", None) or repr(metric)


def evaluate(metric: Callable, outputs: Outputs, samples: Samples, context: MetricContext) -> dict[str, float]:
    """Run a metric and check its result: a non-empty {str: float} with no infinities."""
    if len(outputs) != len(samples):
        raise MetricError(f"{len(outputs)} outputs for {len(samples)} samples")
    name = _metric_name(metric)
    try:
        result = metric(outputs, samples, context) if _takes_context(metric) else metric(outputs, samples)
    except OnnxforgeError:
        raise
    except Exception as exc:
        raise MetricError(f"metric {name!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, dict) or not result:
        raise MetricError(f"metric {name!r} must return a non-empty dict of name -> number, "
                          f"got {type(result).__name__}: {result!r:.200}")
    checked = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise MetricError(f"metric {name!r} returned a non-string key {key!r}")
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise MetricError(f"metric {name!r}: value of {key!r} is {value!r:.100}, not a number")
        value = float(value)
        if math.isinf(value):
            raise MetricError(f"metric {name!r}: value of {key!r} is infinite")
        checked[key] = value
    return checked


def lower_is_better(metric: Callable, key: str) -> bool:
    """Whether smaller values of `key` are better (the metric's `lower_is_better` set)."""
    return key in getattr(metric, "lower_is_better", ())
