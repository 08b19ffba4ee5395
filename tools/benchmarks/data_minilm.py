"""all-MiniLM-L6-v2 data: the Lee documents and WordSim353 words, with human ratings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import GENSIM_PKG, building, gensim_test_data, save_sample, write_meta


def _lee_documents(test_data: Path) -> list[str]:
    # lee.cor is Latin-1 (one "£"), one document a line, the last one unterminated.
    docs = [line.strip() for line in (test_data / "lee.cor").read_text(encoding="latin-1").splitlines()]
    docs = [d for d in docs if d]
    if len(docs) != 50:
        raise RuntimeError(f"expected 50 Lee documents in {test_data / 'lee.cor'}, found {len(docs)}")
    return docs


def _lee_pairs(test_data: Path) -> list[list]:
    # A 50x50 matrix of mean human ratings; only the upper triangle (i < j) is filled.
    ratings = np.loadtxt(test_data / "similarities0-1.txt")
    i, j = np.triu_indices(len(ratings), k=1)
    return [[f"lee/{a:02d}", f"lee/{b:02d}", float(ratings[a, b])] for a, b in zip(i, j)]


def _wordsim_pairs(test_data: Path) -> list[list]:
    pairs = []
    for line in (test_data / "wordsim353.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            a, b, score = line.split("\t")
            pairs.append([f"word/{a}", f"word/{b}", float(score)])
    return pairs


def _row(values: list[int]) -> np.ndarray:
    return np.asarray([values], dtype=np.int64)  # batch of one


def build_minilm_data(tokenizer_dir: Path, out_dir: Path) -> Path:
    """One sample per Lee document and per distinct WordSim353 word (key label)."""
    from tokenizers import Tokenizer

    out_dir = Path(out_dir)
    if out_dir.is_dir():
        return out_dir
    test_data = gensim_test_data()
    docs = _lee_documents(test_data)
    lee, wordsim = _lee_pairs(test_data), _wordsim_pairs(test_data)
    words = sorted({key.removeprefix("word/") for a, b, _ in wordsim for key in (a, b)})
    texts = {f"lee/{i:02d}": doc for i, doc in enumerate(docs)} | {f"word/{w}": w for w in words}

    # tokenizer.json pads every input to 128 and truncates there; sentence-transformers
    # uses max_seq_length from sentence_bert_config.json (256) and no padding at batch 1.
    max_len = json.loads((Path(tokenizer_dir) / "sentence_bert_config.json").read_text())["max_seq_length"]
    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)

    with building(out_dir) as tmp:
        for index, (key, text) in enumerate(texts.items()):
            enc = tok.encode(text)
            save_sample(tmp, index, {
                "input_ids": _row(enc.ids), "attention_mask": _row(enc.attention_mask),
                "token_type_ids": _row(enc.type_ids), "key": np.array(key),
            })
        write_meta(tmp, {
            "description": (
                "all-MiniLM-L6-v2 sentence similarity: the 50 Lee news documents (gensim "
                "lee.cor) and the distinct WordSim353 words, one text a sample, tokenized with "
                f"the shipped tokenizer (truncation {max_len}, no padding); cosine similarity "
                "of the embeddings against human ratings"),
            "source": f"{GENSIM_PKG} gensim/test/test_data: lee.cor, similarities0-1.txt, wordsim353.tsv",
            "metric": "sentence-similarity",
            "max_seq_length": max_len,
            "pair_sets": {
                "lee": {"stat": "pearson", "pairs": lee},
                "wordsim353": {"stat": "spearman", "pairs": wordsim},
            },
        })
    return out_dir

