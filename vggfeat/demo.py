"""The embedded default for ``vggfeat demo``: a small labelled image set drawn on the fly."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DEMO_CLASSES", "make_demo_dataset"]

DEMO_CLASSES = ("stripes", "checkers", "rings", "dots")


def _pattern(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) pattern in [0, 1] of one class, with random frequency, phase and orientation."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    period = rng.uniform(12, 40)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    if kind == "checkers":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == "rings":
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        return 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(y - cy, x - cx) / period)
    pattern = np.zeros((h, w))
    for _ in range(int(h * w / period**2 / 2)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, period / 2)
        pattern[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = 1.0
    return pattern


# Each class has its own palette (jittered per image), as real categories have typical colours.
_PALETTES = {
    "stripes": ((200, 60, 40), (240, 220, 200)),
    "checkers": ((20, 20, 20), (230, 230, 230)),
    "rings": ((40, 90, 200), (250, 200, 60)),
    "dots": ((30, 140, 60), (120, 70, 30)),
}


def _image(kind: str, rng: np.random.Generator) -> Image.Image:
    h, w = int(rng.integers(240, 320)), int(rng.integers(240, 400))
    pattern = _pattern(kind, h, w, rng)[..., None]
    fg, bg = (np.array(c) + rng.normal(0, 25, 3) for c in _PALETTES[kind])
    pixels = pattern * fg + (1 - pattern) * bg + rng.normal(0, 10, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_demo_dataset(
    folder: str | os.PathLike, per_class: int = 10, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``per_class`` JPEGs of each of DEMO_CLASSES under ``folder/images/<class>/`` and a
    labels CSV (``id,label,split``; half of each class train, half test).

    Returns:
        (images folder, labels CSV path).
    """
    rng = np.random.default_rng(seed)
    root = Path(folder)
    images = root / "images"
    rows = []
    for kind in DEMO_CLASSES:
        (images / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            id_ = f"{kind}/{kind}_{i:03d}.jpg"
            _image(kind, rng).save(images / id_, quality=90)
            rows.append((id_, kind, "train" if i % 2 == 0 else "test"))
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("id", "label", "split"))
        writer.writerows(rows)
    return images, labels
