"""PASCAL VOC evaluation-server result files, in the devkit's format.

The devkit (VOC2012 development kit, sections 3.3 and 6.3) expects one text file per class and
competition under ``results/VOC2012/<task>/``:

- classification, ``Main/<comp>_cls_test_<class>.txt``: one line per test image,
  ``<image identifier> <confidence>`` (e.g. ``2009_000001 0.702732``);
- action classification, ``Action/<comp>_action_test_<action>.txt``: one line per test person,
  ``<image identifier> <object index> <confidence>`` (e.g. ``2010_006107 1 0.241236``).

Higher confidence means more likely. Nets pre-trained on ImageNet use data from outside VOC, so
their results go to the "outside data" competitions: comp2 (classification) and comp10
(action); comp1 and comp9 are for VOC data alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vggfeat.errors import VggfeatError
from vggfeat.files import publish_bytes

__all__ = ["write_action_results", "write_classification_results"]


def _check(ids: Sequence, scores: np.ndarray, names: Sequence[str]) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids), len(names)):
        raise VggfeatError(
            f"Scores have shape {scores.shape}, expected ({len(ids)}, {len(names)}): one row "
            "per test sample, one column per class."
        )
    if not np.isfinite(scores).all():
        raise VggfeatError("Scores hold NaN or inf; the server needs a number per line.")
    return scores


def _folder(out: str | os.PathLike, year: str, task: str) -> Path:
    return Path(out) / "results" / year / task


def write_classification_results(
    out: str | os.PathLike,
    image_ids: Sequence[str],
    classes: Sequence[str],
    scores: np.ndarray,
    comp: str = "comp2",
    year: str = "VOC2012",
    split: str = "test",
) -> list[Path]:
    """Write ``results/<year>/Main/<comp>_cls_<split>_<class>.txt`` under ``out``.

    Args:
        out: Folder the ``results/`` tree is made in (tar it up to submit).
        image_ids: (N,) VOC image identifiers, without extension (``2009_000001``).
        classes: (K,) class names.
        scores: (N, K) confidences, column k for ``classes[k]``.

    Returns:
        The files written, one per class.
    """
    scores = _check(image_ids, scores, classes)
    folder = _folder(out, year, "Main")
    paths = []
    for k, name in enumerate(classes):
        lines = "".join(f"{i} {s:.6f}\n" for i, s in zip(image_ids, scores[:, k]))
        path = folder / f"{comp}_cls_{split}_{name}.txt"
        publish_bytes(path, lines)
        paths.append(path)
    return paths


def write_action_results(
    out: str | os.PathLike,
    image_ids: Sequence[str],
    objects: Sequence[int],
    actions: Sequence[str],
    scores: np.ndarray,
    comp: str = "comp10",
    year: str = "VOC2012",
    split: str = "test",
) -> list[Path]:
    """Write ``results/<year>/Action/<comp>_action_<split>_<action>.txt`` under ``out``.

    Args:
        out: Folder the ``results/`` tree is made in.
        image_ids: (N,) VOC image identifier of each person (``2010_006107``).
        objects: (N,) the person's 1-based object index in its image's annotation.
        actions: (K,) action names.
        scores: (N, K) confidences, column k for ``actions[k]``.

    Returns:
        The files written, one per action.
    """
    scores = _check(image_ids, scores, actions)
    if len(objects) != len(image_ids):
        raise VggfeatError(f"{len(objects)} object indices for {len(image_ids)} persons.")
    folder = _folder(out, year, "Action")
    paths = []
    for k, name in enumerate(actions):
        rows = zip(image_ids, objects, scores[:, k])
        lines = "".join(f"{i} {int(o)} {s:.6f}\n" for i, o, s in rows)
        path = folder / f"{comp}_action_{split}_{name}.txt"
        publish_bytes(path, lines)
        paths.append(path)
    return paths
