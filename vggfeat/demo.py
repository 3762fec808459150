"""The embedded default of ``vggfeat demo``: the trained demo net and real photos of classes it
never saw.

The demo net is a narrowed Net-D trained by ``vggfeat train`` on 48 "source" classes of
Caltech-101 (``recipes/demo_weights.sh``); the bundled images are 40 photos of each of 8 of the
49 held-out "target" classes. The demo is therefore a real transfer run: descriptors of a net
trained on some classes, linear SVMs for others.

Images: Caltech-101, L. Fei-Fei, R. Fergus and P. Perona, "Learning generative visual models
from few training examples", CVPR 2004 Workshop on Generative-Model Based Vision; published by
CaltechDATA under CC BY 4.0 (https://doi.org/10.22002/D1.20086). See vggfeat/data/README.md.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from vggfeat.errors import VggfeatError
from vggfeat.images import IMAGE_EXTENSIONS

__all__ = [
    "DATA_DIR",
    "DEMO_IMAGES",
    "DEMO_WEIGHTS_FILE",
    "ATTRIBUTION",
    "demo_classes",
    "demo_images",
    "write_demo_labels",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
DEMO_WEIGHTS_FILE = DATA_DIR / "demo_vgg16.pth"
DEMO_IMAGES = DATA_DIR / "demo_images"
ATTRIBUTION = (
    "Images: Caltech-101 (Fei-Fei, Fergus, Perona 2004), CaltechDATA, CC BY 4.0 "
    "(https://doi.org/10.22002/D1.20086)"
)


def demo_classes() -> list[str]:
    """The bundled target classes (sorted folder names)."""
    if not DEMO_IMAGES.is_dir():
        raise VggfeatError(
            f"The demo images {DEMO_IMAGES} are missing from this install: reinstall vggfeat."
        )
    return sorted(p.name for p in DEMO_IMAGES.iterdir() if p.is_dir())


def demo_images(per_class: int | None = None) -> list[tuple[str, Path]]:
    """(class, path) of the bundled images: the first ``per_class`` of each class (by name)."""
    out = []
    for name in demo_classes():
        files = sorted(
            p for p in (DEMO_IMAGES / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
        )
        out += [(name, p) for p in files[:per_class]]
    return out


def write_demo_labels(path: str | os.PathLike, per_class: int | None = None) -> tuple[int, int]:
    """Write the demo's labels CSV (``id,label,split``): per class, alternate images train/test.

    Ids are paths relative to :data:`DEMO_IMAGES` (``beaver/image_0001.jpg``), the ids
    ``vggfeat extract --root DEMO_IMAGES`` writes.

    Returns:
        (training images, test images).
    """
    from vggfeat.files import publish_bytes

    rows, counts = [("id", "label", "split")], {"train": 0, "test": 0}
    seen: dict[str, int] = {}
    for name, file in demo_images(per_class):
        split = "train" if seen.get(name, 0) % 2 == 0 else "test"
        seen[name] = seen.get(name, 0) + 1
        counts[split] += 1
        rows.append((file.relative_to(DEMO_IMAGES).as_posix(), name, split))
    if min(seen.values(), default=0) < 2:
        raise VggfeatError("The demo needs at least 2 images per class (--per-class 2 or more).")
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    publish_bytes(path, text.getvalue())
    return counts["train"], counts["test"]
