"""Classic ML ops: TfIdfVectorizer (integer pools), and from the ai.onnx.ml domain
Binarizer and ArrayFeatureExtractor. String pools and string tensors are not
supported (TVM has no string dtype). See registry.py for the lowering signature."""
from __future__ import annotations

import numpy as np
from tvm import relax

from ..ir import LoweringError
from .op_helpers import _attr_str, _const, _dims, _dtype
from .registry import register_lowering

op = relax.op


@register_lowering("TfIdfVectorizer")
def tfidf_vectorizer(bb, node, inputs):
    """Counts of the pool's n-grams per row (sizes min_gram_length..max_gram_length;
    n-grams of two or more items for every skip distance 1..max_skip_count + 1,
    unigrams once), weighted as TF (counts), IDF (weight where present) or TFIDF
    (count * weight), at ngram_indexes. Per n-gram size and skip distance: the
    row's windows compared with all pool n-grams of that size at once."""
    attrs = node.attributes
    if attrs.get("pool_strings"):
        raise LoweringError("TfIdfVectorizer with pool_strings (string tensors) is not supported")
    x = bb.normalize(inputs[0])
    dims = _dims(x)
    if len(dims) not in (1, 2) or not all(isinstance(d, int) for d in dims):
        raise LoweringError("TfIdfVectorizer needs a 1-D or 2-D input of static shape")
    rows, width = (1, dims[0]) if len(dims) == 1 else dims
    mode = _attr_str(node, "mode", "TF")
    lo, hi = int(attrs["min_gram_length"]), int(attrs["max_gram_length"])
    skips = int(attrs.get("max_skip_count", 0))
    counts = [int(c) for c in attrs["ngram_counts"]]
    indexes = [int(i) for i in attrs["ngram_indexes"]]
    pool = [int(v) for v in attrs.get("pool_int64s", [])]
    weights = attrs.get("weights")
    out_size = max(indexes) + 1
    x2 = bb.normalize(op.astype(op.reshape(x, (rows, width)), "int64"))
    total = None
    gram_id = 0  # position of the first n-gram of this size in ngram_indexes
    for g, start in enumerate(counts, start=1):
        end = counts[g] if g < len(counts) else len(pool)
        n = (end - start) // g
        if n > 0 and lo <= g <= hi:
            grams = np.asarray(pool[start:end], np.int64).reshape(n, g)
            scatter = np.zeros((n, out_size), np.float32)
            for k in range(n):
                scatter[k, indexes[gram_id + k]] = 1.0
            found = None
            for s in range(1, (skips + 1 if g > 1 else 1) + 1):
                positions = width - (g - 1) * s
                if positions <= 0:
                    break
                hits = None  # (rows, positions, n): window j matches n-gram k
                for j in range(g):
                    item = op.strided_slice(x2, axes=[1], begin=[j * s], end=[j * s + positions])
                    eq = op.equal(op.reshape(item, (rows, positions, 1)), _const(grams[:, j].reshape(1, 1, n), "int64"))
                    hits = eq if hits is None else op.logical_and(hits, eq)
                c = op.sum(op.astype(hits, "float32"), axis=[1])  # (rows, n)
                found = c if found is None else op.add(found, c)
            if found is not None:
                part = op.matmul(bb.normalize(found), _const(scatter, "float32"))
                total = part if total is None else op.add(total, part)
        gram_id += max(n, 0)
    total = _const(np.zeros((rows, out_size), np.float32), "float32") if total is None else bb.normalize(total)
    w = None if not weights else _const(np.asarray(weights, np.float32).reshape(1, -1), "float32")
    if mode == "TF":
        out = total
    elif mode == "IDF":
        present = op.astype(op.greater(total, _const(0, "float32")), "float32")
        out = present if w is None else op.multiply(present, w)
    elif mode == "TFIDF":
        out = total if w is None else op.multiply(total, w)
    else:
        raise LoweringError(f"TfIdfVectorizer mode {mode!r} is not TF, IDF or TFIDF")
    return op.reshape(out, (out_size,)) if len(dims) == 1 else out


@register_lowering("Binarizer", domain="ai.onnx.ml")
def binarizer(bb, node, inputs):
    """1 where x > threshold, else 0, in x's type."""
    x = bb.normalize(inputs[0])
    dtype = _dtype(x)
    threshold = _const(float(node.attributes.get("threshold", 0.0)), dtype)
    return op.astype(op.greater(x, threshold), dtype)


@register_lowering("ArrayFeatureExtractor", domain="ai.onnx.ml")
def array_feature_extractor(bb, node, inputs):
    """The entries of x's last axis at the given indices (a 1-D x gives (1, k))."""
    x = bb.normalize(inputs[0])
    idx = bb.normalize(inputs[1])
    count = int(np.prod([int(d) for d in _dims(idx)]))
    indices = bb.normalize(op.reshape(bb.normalize(op.astype(idx, "int64")), (count,)))
    out = bb.normalize(op.take(x, indices, axis=x.ty.ndim - 1))
    return op.reshape(out, (1, count)) if x.ty.ndim == 1 else out
