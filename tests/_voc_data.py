"""Tiny synthetic VOC-style and Caltech-style trees for the recipe and VOC tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from vggfeat.datasets.voc import VOC_ACTIONS

CLASSES = ("cat", "dog", "person")
SIZE = (40, 56)  # (height, width) of every image


def _image(path: Path, seed: int, colour: int) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    small[..., colour % 3] = 255  # a class-dependent tint, so the SVMs have something to find
    Image.fromarray(small).resize(SIZE[::-1], Image.Resampling.BILINEAR).save(path, quality=95)


def _xml(name: str, objects: list[tuple[str, tuple, dict]]) -> str:
    body = []
    for cls, (x0, y0, x1, y1), actions in objects:
        acts = "".join(f"<{a}>{v}</{a}>" for a, v in actions.items())
        body.append(
            f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
            + (f"<actions>{acts}</actions>" if actions else "")
            + "</object>"
        )
    return (
        f"<annotation><filename>{name}.jpg</filename><size><width>{SIZE[1]}</width>"
        f"<height>{SIZE[0]}</height><depth>3</depth></size>{''.join(body)}</annotation>"
    )


def write_voc(root: Path, n: dict[str, int] | None = None, degenerate: str | None = None) -> Path:
    """A VOC year folder with ``n[split]`` images per split (train, val, test).

    Image i of a split shows class ``CLASSES[i % 3]`` (Main labels 1 for it, -1 for the other
    classes; image 1 of val is 0, difficult, for 'cat'), and one person (object 2, after a dog
    box) whose action is ``VOC_ACTIONS[i % 10]``, or none ('other') when i == 10. Action files
    exist for train, val, trainval and test (test without labels). ``degenerate`` names an
    image (e.g. '2012_train_003') whose person box has zero area.
    """
    n = n or {"train": 20, "val": 12, "test": 6}
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Action"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    main: dict[str, list[str]] = {}
    action: dict[str, list[tuple[str, int, dict]]] = {}
    for split, count in n.items():
        for i in range(count):
            name = f"2012_{split}_{i:03d}"
            _image(root / "JPEGImages" / f"{name}.jpg", zlib.crc32(name.encode()), i)
            acts = {a: int(k == i % 10 and i != 10) for k, a in enumerate(VOC_ACTIONS)}
            box = (30, 20, 29, 38) if name == degenerate else (10 + i % 5, 5, 40 + i % 7, 36)
            objects = [("dog", (2, 2, 20, 20), {}), ("person", box, acts)]
            (root / "Annotations" / f"{name}.xml").write_text(_xml(name, objects))
            main.setdefault(split, []).append(name)
            action.setdefault(split, []).append((name, 2, acts))
    main["trainval"] = main["train"] + main["val"]
    action["trainval"] = action["train"] + action["val"]
    for split, names in main.items():
        (root / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{x}\n" for x in names))
        if split == "test":
            continue
        for c, cls in enumerate(CLASSES):
            lines = []
            for name in names:
                label = 1 if int(name[-3:]) % 3 == c else -1
                label = 0 if (split != "train" and name.endswith("val_001") and c == 0) else label
                lines.append(f"{name} {label:2d}\n")
            (root / "ImageSets/Main" / f"{cls}_{split}.txt").write_text("".join(lines))
    for split, boxes in action.items():
        for a in VOC_ACTIONS:
            lines = [
                f"{name} {obj}\n"
                if split == "test"
                else f"{name} {obj} {1 if acts[a] else -1:2d}\n"
                for name, obj, acts in boxes
            ]
            (root / "ImageSets/Action" / f"{a}_{split}.txt").write_text("".join(lines))
    return root


def write_caltech(root: Path, classes: int = 3, per_class: int = 32) -> Path:
    """A folder of ``classes`` class folders, ``per_class`` tinted images each."""
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _image(folder / f"image_{i:04d}.jpg", 100 * c + i, c)
    return root
