"""PP-OCRv4 recogniser data: text lines rendered from real English sentences.

Word runs from the Lee background corpus (gensim's test data), drawn with a few
DejaVu fonts at a few sizes and grey levels, cropped the way a text detector
would box them, then preprocessed exactly as rapidocr's TextRecognizer does for
one line: resize to height 48 keeping the aspect ratio, (x/255 - 0.5)/0.5, pad
on the right with zeros to width 320. Only lines that fit in 320 are kept, so no
line is squashed.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np

from .datasets import GENSIM_PKG, building, gensim_test_data, save_sample, write_meta

HEIGHT, WIDTH = 48, 320  # rapidocr's rec_img_shape [3, 48, 320]
SEED = 20240601
SYSTEM_FONTS = Path("/usr/share/fonts/truetype/dejavu")  # Debian's fonts-dejavu-core
# Regular, bold, mono and italic faces that matplotlib also bundles, so a machine
# without the Debian package renders with the same designs.
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf")
FONT_SIZES = (20, 24, 28, 32, 40)  # pixels; every crop is resized to height 48 anyway
MAX_WORDS = 7


def _font_paths() -> list[Path]:
    import matplotlib

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = []
    for name in FONT_FILES:  # the system copy when there is one
        found = [d / name for d in (SYSTEM_FONTS, bundled) if (d / name).is_file()]
        paths += found[:1]
    if not paths:
        raise RuntimeError(f"no DejaVu fonts in {SYSTEM_FONTS} or {bundled}")
    return paths


def _sentences(corpus: Path) -> list[list[str]]:
    text = corpus.read_text(encoding="utf-8")
    return [s.split() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 2]


def _render(text: str, font, rng: np.random.Generator):
    """Dark text on a light background, boxed with a detector-like margin."""
    from PIL import Image, ImageDraw

    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    size = ascent + descent
    mx, my = int(rng.integers(2, size // 2)), int(rng.integers(1, size // 5 + 2))
    bg, fg = int(rng.integers(190, 256)), int(rng.integers(0, 71))
    img = Image.new("L", (right - left + 2 * mx, size + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - left, my), text, font=font, fill=fg)
    return img


def preprocess(img) -> np.ndarray | None:
    """rapidocr's resize_norm_img for a single line (PIL bilinear in place of cv2's);
    None when the line would not fit in 320 pixels at height 48."""
    from PIL import Image

    resized_w = math.ceil(HEIGHT * img.width / img.height)
    if resized_w > WIDTH:
        return None
    gray = np.asarray(img.resize((resized_w, HEIGHT), Image.BILINEAR), dtype=np.float32)
    x = np.zeros((1, 3, HEIGHT, WIDTH), dtype=np.float32)
    x[0, :, :, :resized_w] = (gray / 255 - 0.5) / 0.5  # grey: B, G and R alike
    return x


def build_ppocr_data(model_path: Path, out_dir: Path, n: int = 300) -> Path:
    """`n` rendered text lines: input `x` [1, 3, 48, 320] float32, label `text`."""
    import onnx
    from PIL import ImageFont

    out_dir = Path(out_dir)
    if out_dir.is_dir():
        return out_dir
    metadata = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    known = set(metadata["character"].splitlines()) | {" "}  # what the model can output
    sentences = _sentences(gensim_test_data() / "lee_background.cor")
    font_paths = _font_paths()
    fonts = {(p, s): ImageFont.truetype(str(p), s) for p in font_paths for s in FONT_SIZES}

    rng = np.random.default_rng(SEED)
    seen: set[str] = set()
    with building(out_dir) as tmp:
        attempts = 0
        while len(seen) < n:
            attempts += 1
            if attempts > 100 * n:
                raise RuntimeError(f"found only {len(seen)} distinct text lines that fit, not {n}")
            words = sentences[rng.integers(len(sentences))]
            start = int(rng.integers(len(words)))
            words = words[start:start + int(rng.integers(1, MAX_WORDS + 1))]
            font = fonts[font_paths[rng.integers(len(font_paths))], FONT_SIZES[rng.integers(len(FONT_SIZES))]]
            x = None
            while words and x is None:  # drop words from the end until the line fits
                text = " ".join(words)
                x = preprocess(_render(text, font, rng))
                words = words[:-1]
            if x is None or text in seen or not set(text) <= known:
                continue
            save_sample(tmp, len(seen), {"x": x, "text": np.array(text)})
            seen.add(text)
        write_meta(tmp, {
            "description": (
                "PP-OCRv4 recognition: word runs from real English news sentences rendered as "
                "single text lines (DejaVu fonts, several sizes, grey levels and margins), "
                "preprocessed as rapidocr does (height 48, (x/255-0.5)/0.5, zero-padded to 320)"),
            "source": f"{GENSIM_PKG} gensim/test/test_data/lee_background.cor",
            "metric": "ctc-text",
            "seed": SEED,
            "fonts": [{"file": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in font_paths],
            "font_sizes_px": list(FONT_SIZES),
            "resize": "PIL bilinear to height 48 (rapidocr uses cv2.resize INTER_LINEAR)",
        })
    return out_dir
