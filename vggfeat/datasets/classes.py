"""Labelled image sets for training and evaluation: one sub-folder per class, or a CSV list."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vggfeat.datasets.folder import find_images
from vggfeat.errors import VggfeatError

__all__ = ["LabelledImages", "read_labelled_images", "align_classes"]


@dataclass(frozen=True)
class LabelledImages:
    """Images with one class each.

    Attributes:
        samples: (N,) (id, path) pairs; ids are paths relative to the set's root.
        targets: (N,) class index of each sample, into ``classes``.
        classes: (K,) class names, sorted.
        source: Where the set was read from, for records and messages.
    """

    samples: tuple[tuple[str, str], ...]
    targets: tuple[int, ...]
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        out = dict.fromkeys(self.classes, 0)
        for t in self.targets:
            out[self.classes[t]] += 1
        return out


def _read_folders(root: Path) -> LabelledImages:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise VggfeatError(
            f"{root} has no class folders: give a folder with one sub-folder of images per class."
        )
    samples: list[tuple[str, str]] = []
    targets: list[int] = []
    for k, name in enumerate(classes):
        try:
            found = find_images([root / name], root=root)
        except VggfeatError:
            found = []
        if not found:
            raise VggfeatError(
                f"Class folder {root / name} holds no images: add images or remove the folder."
            )
        samples += found
        targets += [k] * len(found)
    return LabelledImages(tuple(samples), tuple(targets), tuple(classes), str(root))


def _read_csv(path: Path, root: Path | None) -> LabelledImages:
    from vggfeat.labels import read_labels_table

    labels = read_labels_table(path)
    if labels.multilabel:
        raise VggfeatError(
            f"{path} has multi-label rows (id,class,label); training needs one class per image: "
            "give id,label rows."
        )
    base = root if root is not None else path.parent
    present = sorted(set(int(t) for t in labels.y))
    classes = sorted(labels.classes[k] for k in present)
    index = {name: k for k, name in enumerate(classes)}
    samples = tuple((id_, str(base / id_)) for id_ in labels.ids)
    targets = tuple(index[labels.classes[int(t)]] for t in labels.y)
    if not samples:
        raise VggfeatError(f"{path} lists no images.")
    return LabelledImages(samples, targets, tuple(classes), str(path))


def read_labelled_images(
    source: str | os.PathLike, root: str | os.PathLike | None = None
) -> LabelledImages:
    """Read a labelled image set: a folder of class folders (ImageFolder layout) or a CSV/TSV
    list of ``id,label`` rows (ids are paths relative to ``root``, default the list's folder).

    Raises:
        VggfeatError: a missing source, no classes, or a class folder without images.
    """
    path = Path(source)
    if path.is_dir():
        return _read_folders(path)
    if path.is_file():
        return _read_csv(path, Path(root) if root is not None else None)
    raise VggfeatError(
        f"{path} does not exist: give a folder of class folders or a CSV list (id,label)."
    )


def align_classes(
    images: LabelledImages, classes: Sequence[str], what: str, against: str
) -> LabelledImages:
    """Re-index ``images`` to the class list ``classes`` (a model's, or the training set's).

    Args:
        images: The set to re-index (e.g. a val set).
        classes: The class list to index into.
        what: Name of ``images`` for messages, e.g. 'val set'.
        against: Name of the owner of ``classes``, e.g. 'the training set'.

    Raises:
        VggfeatError: ``images`` has classes that ``classes`` lacks.
    """
    index = {name: k for k, name in enumerate(classes)}
    unknown = [c for c in images.classes if c not in index]
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise VggfeatError(
            f"{what} {images.source} has {len(unknown)} class{'es' if len(unknown) > 1 else ''} "
            f"that {against} lacks "
            f"({shown}): remove them, or use a {against.removeprefix('the ')} that has them."
        )
    targets = tuple(index[images.classes[t]] for t in images.targets)
    return LabelledImages(images.samples, targets, tuple(classes), images.source)
