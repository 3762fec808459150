"""PASCAL VOC indexes: image sets (ImageSets/Main), annotations (Annotations/*.xml) and the
action task's person boxes (ImageSets/Action), as samples for the extractor.

A VOC root is a year folder such as ``VOCdevkit/VOC2012``::

    JPEGImages/<image>.jpg
    Annotations/<image>.xml                    objects, boxes (1-based inclusive pixels), actions
    ImageSets/Main/<split>.txt                 image ids; <class>_<split>.txt: '<id> <1|-1|0>'
    ImageSets/Action/<action>_<split>.txt      '<image id> <object index> [<1|-1>]'

Image samples have the id ``<image>.jpg`` (what ``vggfeat extract --root JPEGImages`` gives);
the action task's samples are regions, one per listed person box, with the id
``<image>.jpg#<object index>``, the index being the 1-based position of the object in the
image's annotation, as the devkit and the evaluation server count it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.datasets.samples import Sample, region_id
from vggfeat.errors import DatasetError
from vggfeat.images import Box
from vggfeat.labels import Labels

__all__ = [
    "VOC_ACTIONS",
    "VOC_CLASSES",
    "ActionSet",
    "Annotation",
    "VocObject",
    "check_voc_root",
    "image_samples",
    "read_action_set",
    "read_annotation",
    "read_image_set",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
# The ten actions scored by the devkit; 'other' (none of them) marks distractor persons, which
# are samples negative for every action (VOCinit.m: "skip this when training classifiers").
VOC_ACTIONS = (
    "jumping", "phoning", "playinginstrument", "reading", "ridingbike", "ridinghorse", "running",
    "takingphoto", "usingcomputer", "walking",
)  # fmt: skip
_ACTION_VALUES = {"1": 1, "-1": -1}


def check_voc_root(root: str | os.PathLike, needs: Iterable[str]) -> Path:
    """``root`` as a Path, after checking it holds each of the folders ``needs``.

    Raises:
        DatasetError: naming the first missing folder, what a VOC root holds, and, when
            ``root`` holds a year folder (or VOCdevkit) instead, which one to give.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"VOC root {root} does not exist: give a VOC year folder such as "
                           "VOCdevkit/VOC2007.")  # fmt: skip
    for sub in needs:
        if not (root / sub).is_dir():
            inner = sorted(p for p in root.glob("VOC*/VOC20*") if p.is_dir())
            inner += sorted(p for p in root.glob("VOC20*") if p.is_dir())
            hint = f" (it holds {inner[0]}: give that folder)" if inner else ""
            raise DatasetError(
                f"no {sub}/ under {root}{hint}: give the VOC year folder (e.g. "
                f"VOCdevkit/VOC2012) that holds {', '.join(s + '/' for s in needs)}."
            )
    return root


def read_image_set(root: str | os.PathLike, split: str, task: str = "Main") -> list[str]:
    """Image ids of ``ImageSets/<task>/<split>.txt`` (the first field of each line), in order.

    Raises:
        DatasetError: the file is missing (the message lists the splits that exist).
    """
    folder = Path(root) / "ImageSets" / task
    path = folder / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem)
        raise DatasetError(
            f"no ImageSets/{task}/{split}.txt under {root} (image sets there: "
            f"{', '.join(found) or 'none'})."
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def image_samples(root: str | os.PathLike, ids: Iterable[str]) -> list[Sample]:
    """Whole-image samples ``<id>.jpg`` of VOC image ids (JPEGImages/<id>.jpg), each once."""
    folder = Path(root) / "JPEGImages"
    return [Sample(f"{i}.jpg", str(folder / f"{i}.jpg")) for i in dict.fromkeys(ids)]


@dataclass(frozen=True)
class VocObject:
    """One annotated object.

    Attributes:
        index: 1-based position among the image's objects (the devkit's object index).
        name: Its class, e.g. 'person'.
        box: Its bounding box, VOC convention (1-based inclusive pixels).
        difficult: VOC's difficult flag.
        actions: Action name -> 1 or 0 from the object's <actions> element (empty if none).
    """

    index: int
    name: str
    box: Box
    difficult: bool = False
    actions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Annotation:
    """A parsed ``Annotations/<image>.xml``: file name, (height, width) and objects in order."""

    filename: str
    size: tuple[int, int] | None
    objects: tuple[VocObject, ...]


def _number(node: ET.Element | None, tag: str, path: Path) -> float:
    text = node.findtext(tag) if node is not None else None
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: <{tag}> is missing or not a number ({text!r}).") from None


def read_annotation(path: str | os.PathLike) -> Annotation:
    """Parse one VOC annotation file.

    Raises:
        DatasetError: unreadable XML, or an object without a numeric box.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"Cannot read annotation {path}: {exc}.") from None
    size = root.find("size")
    dims = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        dims = (int(_number(size, "height", path)), int(_number(size, "width", path)))
    objects = []
    for index, obj in enumerate(root.findall("object"), start=1):
        bb = obj.find("bndbox")
        box = Box(*(_number(bb, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax")))
        acts = obj.find("actions")
        actions = {} if acts is None else {a.tag: int(float(a.text or 0)) for a in acts}
        objects.append(
            VocObject(
                index=index,
                name=(obj.findtext("name") or "").strip(),
                box=box,
                difficult=(obj.findtext("difficult") or "0").strip() == "1",
                actions=actions,
            )
        )
    return Annotation(root.findtext("filename") or path.stem + ".jpg", dims, tuple(objects))


@dataclass(frozen=True, eq=False)
class ActionSet:
    """The person boxes of one action split, each a sample with its ten action labels.

    Attributes:
        root: The VOC root.
        split: E.g. 'train', 'val', 'trainval', 'test'.
        images: (N,) VOC image id of each box, e.g. '2012_000001'.
        objects: (N,) the box's 1-based object index in its image's annotation.
        boxes: (N,) the boxes, VOC convention.
        labels: Multi-label ``Labels`` of the region ids (``<image>.jpg#<index>``), classes the
            actions with a file for this split; y 1 / -1, unknown (test) where no label is given.
    """

    root: Path
    split: str
    images: tuple[str, ...]
    objects: tuple[int, ...]
    boxes: tuple[Box, ...]
    labels: Labels

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> tuple[str, ...]:
        """Region ids, ``<image>.jpg#<object index>``."""
        return self.labels.ids

    @property
    def image_ids(self) -> list[str]:
        """The store id of each box's whole image, ``<image>.jpg``, aligned with ``ids``."""
        return [f"{i}.jpg" for i in self.images]

    def region_samples(self) -> list[Sample]:
        """One region sample per box: its image file, cropped to the box."""
        folder = self.root / "JPEGImages"
        return [
            Sample(id_, str(folder / f"{image}.jpg"), box)
            for id_, image, box in zip(self.ids, self.images, self.boxes)
        ]

    def image_samples(self) -> list[Sample]:
        """One whole-image sample per image that holds a box."""
        return image_samples(self.root, self.images)


def _action_files(folder: Path, split: str) -> dict[str, Path]:
    return {
        a: folder / f"{a}_{split}.txt"
        for a in VOC_ACTIONS
        if (folder / f"{a}_{split}.txt").is_file()
    }


def _read_action_file(path: Path) -> dict[tuple[str, int], int | None]:
    """(image id, object index) -> label (1 / -1, None when the line gives none), in order."""
    out: dict[tuple[str, int], int | None] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or not fields[1].lstrip("-").isdigit():
            raise DatasetError(
                f"{path} line {n}: expected '<image id> <object index> [<1|-1>]', got "
                f"{line.strip()!r}."
            )
        if len(fields) == 3 and fields[2] not in _ACTION_VALUES:
            raise DatasetError(f"{path} line {n}: label {fields[2]!r} is not 1 or -1.")
        key = (fields[0], int(fields[1]))
        if key in out:
            raise DatasetError(f"{path} line {n}: object {key[1]} of {key[0]} is listed twice.")
        out[key] = _ACTION_VALUES[fields[2]] if len(fields) == 3 else None
    return out


def _listed_persons(root: Path, split: str) -> dict[tuple[str, int], int | None] | None:
    """A split given only as an image list (``ImageSets/Action/<split>.txt``): every person of
    those images, labels unknown. None when there is no such list."""
    path = root / "ImageSets" / "Action" / f"{split}.txt"
    if not path.is_file():
        return None
    pairs: dict[tuple[str, int], int | None] = {}
    for image in read_image_set(root, split, task="Action"):
        for obj in read_annotation(root / "Annotations" / f"{image}.xml").objects:
            if obj.name == "person":
                pairs[(image, obj.index)] = None
    return pairs


def read_action_set(root: str | os.PathLike, split: str) -> ActionSet:
    """The person boxes of VOC action split ``split``, with their labels and boxes.

    The boxes and their labels come from ``ImageSets/Action/<action>_<split>.txt`` (lines
    ``<image id> <object index> <label>``; the label may be absent, as for test boxes), which
    must all list the same boxes; each box is read from its image's annotation. A split given
    only as ``ImageSets/Action/<split>.txt`` (image ids) takes every person of those images,
    unlabelled. Boxes are not judged here: a degenerate one becomes a failed row when extracted.

    Raises:
        DatasetError: a missing folder or split, malformed lines, files of one split that list
            different boxes, or an object index the annotation does not have.
    """
    root = check_voc_root(root, ("JPEGImages", "Annotations", "ImageSets/Action"))
    folder = root / "ImageSets" / "Action"
    files = _action_files(folder, split)
    per_action = {action: _read_action_file(path) for action, path in files.items()}
    if per_action:
        first = next(iter(per_action.values()))
        for action, pairs in per_action.items():
            if pairs.keys() != first.keys():
                missing = sorted(set(first) ^ set(pairs))[0]
                raise DatasetError(
                    f"{files[action].name} and {next(iter(files.values())).name} list different "
                    f"boxes (e.g. {missing[0]} object {missing[1]}); every <action>_{split}.txt "
                    "must list the same boxes (is one truncated?)."
                )
        keys = list(first)
    else:
        listed = _listed_persons(root, split)
        if listed is None:
            found = sorted({p.stem.rsplit("_", 1)[-1] for p in folder.glob("*_*.txt")})
            raise DatasetError(
                f"no ImageSets/Action/<action>_{split}.txt under {root} (action splits there: "
                f"{', '.join(found) or 'none'})."
            )
        keys, per_action = list(listed), {}
    annotations: dict[str, Annotation] = {}
    boxes = []
    for image, index in keys:
        if image not in annotations:
            annotations[image] = read_annotation(root / "Annotations" / f"{image}.xml")
        objects = annotations[image].objects
        if not 1 <= index <= len(objects):
            raise DatasetError(
                f"ImageSets/Action lists object {index} of {image}, but Annotations/{image}.xml "
                f"has {len(objects)} objects."
            )
        boxes.append(objects[index - 1].box)
    classes = list(per_action) or list(VOC_ACTIONS)
    y = np.zeros((len(keys), len(classes)), np.int8)
    unknown = np.ones(y.shape, bool)
    for k, action in enumerate(classes):
        for row, key in enumerate(keys):
            value = per_action.get(action, {}).get(key)
            if value is not None:
                y[row, k], unknown[row, k] = value, False
    ids = tuple(region_id(f"{image}.jpg", index) for image, index in keys)
    labels = Labels(ids, tuple(classes), y, True, {split: ids},
                    str(folder), (), unknown if unknown.any() else None)  # fmt: skip
    return ActionSet(
        root,
        split,
        tuple(image for image, _ in keys),
        tuple(index for _, index in keys),
        tuple(boxes),
        labels,
    )
