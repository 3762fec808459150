#!/usr/bin/env python
"""Data of the shipped demo net: a seeded half of the Caltech-101 classes to train on (the
"source" classes), the rest held out (the "target" classes) for transfer.

    python recipes/demo_data.py split  CALTECH_101_DIR RUN_DIR  # class lists, train/val CSVs
    python recipes/demo_data.py bundle CALTECH_101_DIR          # target images -> package

`split` writes RUN_DIR/source_classes.txt, target_classes.txt, train.csv and val.csv (id,label;
ids relative to CALTECH_101_DIR; 20% of each source class, at least 5 images, for validation).
`bundle` copies 40 images of each of 8 seeded target classes into vggfeat/data/demo_images/.
Both draws depend only on the sorted class and file names and the seeds below.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np

CLASS_SEED = 0  # which classes are source and which target
VAL_SEED = 1  # which source images are held out for validation
BUNDLE_SEED = 2  # which target classes and images go into the package
N_SOURCE = 48  # of the 97 classes in this Caltech-101 copy (the README lists the missing 5)
VAL_FRACTION = 0.2
BUNDLE_CLASSES, BUNDLE_PER_CLASS = 8, 40
PACKAGE_IMAGES = Path(__file__).resolve().parent.parent / "vggfeat" / "data" / "demo_images"


def class_split(root: Path) -> tuple[list[str], list[str]]:
    """(source, target) classes: a seeded permutation of the sorted class folders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    order = np.random.default_rng(CLASS_SEED).permutation(len(classes))
    source = sorted(classes[i] for i in order[:N_SOURCE])
    return source, sorted(set(classes) - set(source))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def write_split(root: Path, run: Path) -> None:
    source, target = class_split(root)
    run.mkdir(parents=True, exist_ok=True)
    (run / "source_classes.txt").write_text("\n".join(source) + "\n")
    (run / "target_classes.txt").write_text("\n".join(target) + "\n")
    rng = np.random.default_rng(VAL_SEED)
    rows = {"train": [], "val": []}
    for name in source:
        files = _images(root / name)
        n_val = max(5, int(len(files) * VAL_FRACTION))
        for j, i in enumerate(rng.permutation(len(files))):
            rows["val" if j < n_val else "train"].append((f"{name}/{files[i].name}", name))
    for split, body in rows.items():
        with open(run / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("id", "label"))
            writer.writerows(sorted(body))
    print(
        f"{len(source)} source classes ({len(rows['train'])} train, {len(rows['val'])} val "
        f"images), {len(target)} target classes -> {run}"
    )


def bundle(root: Path) -> None:
    _, target = class_split(root)
    rng = np.random.default_rng(BUNDLE_SEED)
    eligible = [c for c in target if len(_images(root / c)) >= BUNDLE_PER_CLASS]
    chosen = sorted(rng.choice(eligible, BUNDLE_CLASSES, replace=False).tolist())
    if PACKAGE_IMAGES.exists():
        shutil.rmtree(PACKAGE_IMAGES)
    total = 0
    for name in chosen:
        files = _images(root / name)
        picks = sorted(rng.choice(len(files), BUNDLE_PER_CLASS, replace=False).tolist())
        (PACKAGE_IMAGES / name).mkdir(parents=True)
        for i in picks:
            shutil.copy2(files[i], PACKAGE_IMAGES / name / files[i].name)
            total += files[i].stat().st_size
    print(
        f"bundled {BUNDLE_CLASSES} x {BUNDLE_PER_CLASS} images ({total / 1e6:.1f} MB) of "
        f"{', '.join(chosen)} -> {PACKAGE_IMAGES}"
    )


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("split", "bundle"):
        sys.exit(__doc__)
    if sys.argv[1] == "split":
        if len(sys.argv) != 4:
            sys.exit(__doc__)
        write_split(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        bundle(Path(sys.argv[2]))
