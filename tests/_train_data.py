"""Tiny labelled image sets for the training and evaluation tests: class folders of small
images whose colour gives the class away, so a few SGD steps can learn them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("blue", "green", "red")


def write_class_folders(
    root: Path, per_class: int, seed: int = 0, size: tuple[int, int] = (40, 48)
) -> Path:
    """``root/<class>/img_NNN.jpg``: noise with the class's channel raised."""
    rng = np.random.default_rng(seed)
    channel = {"red": 0, "green": 1, "blue": 2}
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (*size, 3)).astype(np.uint8)
            pixels[..., channel[name]] += 140
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.jpg", quality=95)
    return root


def tiny_sets(tmp_path: Path, train: int = 8, val: int = 4) -> tuple[Path, Path]:
    """(train folder, val folder) of the three colour classes."""
    return (
        write_class_folders(tmp_path / "train", train, seed=0),
        write_class_folders(tmp_path / "val", val, seed=1),
    )
