"""What an index hands the extractor: a sample is an id, an image file and, for a region, a box.

A whole image is ``(id, path)`` (a plain pair works too); a region of an image, such as a VOC
person box, is ``Sample(id, path, box)``: it is decoded like its image and cropped to the box
before rescaling, so images and regions share one code path, and the store records the box.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from vggfeat.images import Box

__all__ = ["Box", "Sample", "region_id", "sample_box", "unique_samples"]


class Sample(NamedTuple):
    """One thing to describe: ``id`` (unique in a store), ``path`` (the image file) and
    ``box`` (a region of it, VOC convention; None for the whole image)."""

    id: str
    path: str
    box: Box | None = None


def sample_box(sample: Sequence) -> Box | None:
    """The box of a sample (None for a whole image, and for a plain ``(id, path)`` pair)."""
    return sample[2] if len(sample) > 2 and sample[2] is not None else None


def region_id(image_id: str, index: int) -> str:
    """The store id of region ``index`` of an image: ``<image id>#<index>`` (VOC: the 1-based
    object index in the image's annotation, e.g. ``2012_000001.jpg#2``)."""
    return f"{image_id}#{index}"


def unique_samples(groups: Iterable[Iterable[Sequence]]) -> list[Sequence]:
    """The samples of several groups (e.g. splits), each id once, in first-seen order."""
    seen: dict[str, Sequence] = {}
    for group in groups:
        for sample in group:
            seen.setdefault(sample[0], sample)
    return list(seen.values())
