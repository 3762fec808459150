"""Image labels for SVMs: readers (CSV/TSV, VOC ImageSets, class folders) and splits.

Two kinds of labels:

- **multi-label** (VOC): ``y`` is (N, K) int8 with 1 (present), -1 (absent) or 0 (difficult);
- **multi-class** (Caltech): ``y`` is (N,) int64, the index of each image's class in ``classes``.

The labels CSV/TSV format (delimiter: tab if the first row has one, else comma; blank lines
and lines starting with ``#`` are skipped; fields are stripped):

- multi-class: ``id,label`` -- one row per image, ``label`` is the class name;
- multi-label: ``id,class,label`` -- ``label`` is 1, -1 or 0 (difficult); an (id, class) pair
  that has no row is -1 (absent);
- an optional ``split`` column names the split of each row (e.g. ``trainval``); an image's
  rows must agree on it.

The header row is optional. A first row that names a column (``id``, ``label``, ``class``,
``split``, in any order; the id column may also be called ``filename``, ``file``, ``image``,
``image_id`` or ``path``) is a header, and the columns are found by name. Without one, 2 columns
are ``id,label``, 3 are ``id,class,label`` and 4 are ``id,class,label,split``; a multi-class
file with a split column needs the header ``id,label,split``.

Ids are whole fields (CSV/TSV) or whole lines (id lists): they may contain spaces
(``golden retriever/img 0.png``). VOC ImageSets files are whitespace-separated by definition.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.errors import VggfeatError

__all__ = [
    "CaltechSplit",
    "Labels",
    "LabelsError",
    "caltech_split",
    "parse_caltech_split",
    "read_class_folders",
    "read_id_list",
    "read_labels",
    "read_labels_table",
    "read_voc",
    "resolve_split",
    "training_targets",
]

_COLUMNS = ("id", "label", "class", "split")
# Other names a header may give the id column (e.g. the common ``filename,label``).
_ID_ALIASES = ("filename", "file", "image", "image_id", "path")
_MULTILABEL_VALUES = {"1": 1, "+1": 1, "-1": -1, "0": 0}
_HEADERLESS = {
    2: ("id", "label"),
    3: ("id", "class", "label"),
    4: ("id", "class", "label", "split"),
}


class LabelsError(VggfeatError):
    """A labels file, folder or split is malformed or does not fit the features."""


@dataclass(frozen=True, eq=False)
class Labels:
    """Labels of a set of images.

    Attributes:
        ids: (N,) image ids, as the feature stores name them.
        classes: (K,) class names.
        y: (N, K) int8 in {1, -1, 0} if ``multilabel`` (0 = difficult), else (N,) int64 class
            indices into ``classes``.
        multilabel: Whether an image may have several classes (VOC) or exactly one (Caltech).
        splits: Split name -> ids in that split (e.g. 'trainval', 'test'); may be empty.
        source: Where the labels were read from, for records and messages.
        notes: Things the reader tolerated (e.g. a missing class folder), to show the user.
        unknown: (N, K) bool, multi-label only: True where no file gives the (image, class)
            label (a VOC split without that class's file); ``y`` is 0 there. None when every
            pair is labelled. :meth:`check_labelled` refuses such pairs.
    """

    ids: tuple[str, ...]
    classes: tuple[str, ...]
    y: np.ndarray
    multilabel: bool
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""
    notes: tuple[str, ...] = ()
    unknown: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, k = len(self.ids), len(self.classes)
        want = (n, k) if self.multilabel else (n,)
        if self.y.shape != want:
            raise LabelsError(f"Labels y has shape {self.y.shape}, expected {want}.")
        if self.unknown is not None and self.unknown.shape != want:
            raise LabelsError(f"Labels unknown has shape {self.unknown.shape}, expected {want}.")
        if len(set(self.ids)) != n:
            raise LabelsError(f"Labels from {self.source or 'input'} repeat image ids.")
        if len(set(self.classes)) != k:
            raise LabelsError(f"Labels from {self.source or 'input'} repeat class names.")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        kind = "multilabel" if self.multilabel else "multiclass"
        return f"Labels({kind}, n={len(self)}, classes={len(self.classes)}, source={self.source!r})"

    def select(self, ids: Sequence[str], role: str = "") -> Labels:
        """Labels of ``ids``, in that order; refuses ids that have no labels.

        Args:
            ids: Image ids to keep.
            role: Word for messages, e.g. 'training'.
        """
        index = {id_: i for i, id_ in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            what = f"{role} ids" if role else "ids"
            raise LabelsError(
                f"{len(missing)} of {len(ids)} {what} have no labels in {self.source} "
                f"(e.g. {_examples(missing)}); use ids that the labels list."
            )
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        unknown = None if self.unknown is None else self.unknown[rows]
        return Labels(
            tuple(ids), self.classes, self.y[rows], self.multilabel, {}, self.source, self.notes,
            unknown,
        )  # fmt: skip

    def check_labelled(self, classes: Sequence[str] | None = None, role: str = "") -> None:
        """Refuse (image, class) pairs that no labels file gives, for ``classes`` (default all).

        A VOC split whose class file is missing leaves that class unlabelled for the split's
        images; treating them as absent (or ignoring them) would silently change the class's
        training set and AP.

        Raises:
            LabelsError: Naming the class, the count and example ids.
        """
        if self.unknown is None:
            return
        for name in self.classes if classes is None else classes:
            col = self.unknown[:, self.classes.index(name)]
            if col.any():
                what = f"{role} images" if role else "images"
                missing = [self.ids[i] for i in np.flatnonzero(col)]
                raise LabelsError(
                    f"No labels for class {name} for {len(missing)} of {len(self)} {what} in "
                    f"{self.source} (e.g. {_examples(missing)}); give that class's file for the "
                    "split (VOC: <class>_<split>.txt)."
                )

    def counts(self) -> dict[str, dict[str, int]]:
        """Per class: images that are positive, negative and difficult (multi-label only)."""
        out = {}
        for k, name in enumerate(self.classes):
            if self.multilabel:
                col = self.y[:, k]
                known = np.ones(len(col), bool) if self.unknown is None else ~self.unknown[:, k]
                out[name] = {
                    "positive": int((col == 1).sum()),
                    "negative": int((col == -1).sum()),
                    "difficult": int(((col == 0) & known).sum()),
                }
            else:
                pos = int((self.y == k).sum())
                out[name] = {"positive": pos, "negative": len(self) - pos, "difficult": 0}
        return out


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(str(i) for i in items[:n])


# --------------------------------------------------------------------------- reading


def read_labels(path: str | os.PathLike) -> Labels:
    """Read labels from a CSV/TSV file, a VOC ``ImageSets/Main`` folder or class folders.

    A file is read as CSV/TSV (:func:`read_labels_table`). A folder holding ``ImageSets/Main``,
    or ``<class>_<split>.txt`` files and no sub-folders, is read as VOC (:func:`read_voc`); any
    other folder as one sub-folder per class (:func:`read_class_folders`), where stray text
    files (e.g. a ``train_ids.txt`` beside the class folders) are ignored with a note.
    """
    path = Path(path)
    if path.is_file():
        return read_labels_table(path)
    if not path.is_dir():
        raise LabelsError(f"Labels {path} do not exist: give a CSV/TSV file or a folder.")
    if (path / "ImageSets" / "Main").is_dir():
        return read_voc(path)
    voc_like = [p.name for _, _, p in _voc_files(path)]
    if voc_like and not _sub_folders(path):
        return read_voc(path)
    labels = read_class_folders(path)
    if voc_like:
        note = f"ignored {', '.join(voc_like[:3])} in {path}: it holds class folders, not VOC files"
        labels = Labels(labels.ids, labels.classes, labels.y, False, labels.splits,
                        labels.source, (*labels.notes, note))  # fmt: skip
    return labels


def _sub_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _sniff_delimiter(line: str) -> str:
    return "\t" if "\t" in line else ","


def _table_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped fields) of the data-bearing lines of a CSV/TSV file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{path} is not UTF-8 text ({exc.reason}).") from None
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise LabelsError(
            f"Labels file {path} is empty: it needs rows 'id,label' or 'id,class,label'."
        )
    delimiter = _sniff_delimiter(lines[0][1])
    return [(n, [f.strip() for f in line.split(delimiter)]) for n, line in lines]


def _columns(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[dict[str, int], int]:
    """Column index of each named field, and the number of header lines (0 or 1)."""
    first = [f.lower() for f in rows[0][1]]
    if any(f in _COLUMNS or f in _ID_ALIASES for f in first):
        aliased = [f for f in first if f in _ID_ALIASES]
        if "id" not in first and len(aliased) == 1:
            first = ["id" if f == aliased[0] else f for f in first]
        unknown = [f for f in first if f not in _COLUMNS]
        if unknown or len(set(first)) != len(first):
            raise LabelsError(
                f"{path} line {rows[0][0]}: header {','.join(rows[0][1])!r} must name each of "
                f"{', '.join(_COLUMNS)} at most once "
                f"(unknown or repeated: {','.join(unknown) or 'repeat'})."
            )
        if "id" not in first:
            raise LabelsError(
                f"{path} line {rows[0][0]}: header has no id column; name it id (or "
                f"{', '.join(_ID_ALIASES)})."
            )
        if "label" not in first:
            raise LabelsError(f"{path} line {rows[0][0]}: header has no 'label' column.")
        return {name: first.index(name) for name in first}, 1
    names = _HEADERLESS.get(len(first))
    if names is None:
        raise LabelsError(
            f"{path} line {rows[0][0]}: {len(first)} fields; without a header use 2 (id,label), "
            "3 (id,class,label) or 4 (id,class,label,split) columns, or add a header row."
        )
    return {name: i for i, name in enumerate(names)}, 0


def read_labels_table(path: str | os.PathLike) -> Labels:
    """Read a labels CSV/TSV file (format in the module docstring)."""
    path = Path(path)
    rows = _table_rows(path)
    cols, skip = _columns(path, rows)
    width = len(rows[0][1])
    body = rows[skip:]
    if not body:
        raise LabelsError(f"Labels file {path} has a header but no label rows.")
    for n, fields in body:
        if len(fields) != width:
            raise LabelsError(
                f"{path} line {n}: {len(fields)} fields, expected {width} "
                f"({','.join(sorted(cols, key=cols.get))})."
            )
        if not fields[cols["id"]]:
            raise LabelsError(f"{path} line {n}: empty image id.")
    if "class" in cols:
        return _multilabel_table(path, body, cols)
    return _multiclass_table(path, body, cols)


def _record_split(splits: dict[str, str], id_: str, split: str, path: Path, n: int) -> None:
    if splits.setdefault(id_, split) != split:
        raise LabelsError(
            f"{path} line {n}: image {id_} is in split {split!r} here but {splits[id_]!r} "
            "earlier; give each image one split."
        )


def _group_splits(split_of: Mapping[str, str], ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for id_ in ids:
        if split_of.get(id_):
            groups.setdefault(split_of[id_], []).append(id_)
    return {name: tuple(members) for name, members in groups.items()}


def _multiclass_table(path: Path, body: list, cols: Mapping[str, int]) -> Labels:
    label_of: dict[str, str] = {}
    line_of: dict[str, int] = {}
    split_of: dict[str, str] = {}
    for n, fields in body:
        id_, label = fields[cols["id"]], fields[cols["label"]]
        if id_ in label_of:
            raise LabelsError(
                f"{path} line {n}: duplicate id {id_} (first on line {line_of[id_]}); a "
                "multi-class file has one row per image (use id,class,label for multi-label)."
            )
        if not label:
            raise LabelsError(f"{path} line {n}: empty label for {id_}.")
        label_of[id_], line_of[id_] = label, n
        if "split" in cols:
            _record_split(split_of, id_, fields[cols["split"]], path, n)
    ids = list(label_of)
    classes = sorted(set(label_of.values()))
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[label_of[i]] for i in ids], dtype=np.int64)
    return Labels(tuple(ids), tuple(classes), y, False, _group_splits(split_of, ids), str(path))


def _multilabel_value(path: Path, n: int, value: str) -> int:
    if value not in _MULTILABEL_VALUES:
        raise LabelsError(
            f"{path} line {n}: unknown label {value!r}; "
            "use 1 (present), -1 (absent) or 0 (difficult)."
        )
    return _MULTILABEL_VALUES[value]


def _multilabel_table(path: Path, body: list, cols: Mapping[str, int]) -> Labels:
    pairs: dict[tuple[str, str], tuple[int, int]] = {}  # (id, class) -> (label, line)
    split_of: dict[str, str] = {}
    ids: dict[str, None] = {}
    for n, fields in body:
        id_, cls = fields[cols["id"]], fields[cols["class"]]
        if not cls:
            raise LabelsError(f"{path} line {n}: empty class for {id_}.")
        value = _multilabel_value(path, n, fields[cols["label"]])
        if (id_, cls) in pairs:
            raise LabelsError(
                f"{path} line {n}: duplicate row for image {id_}, class {cls} "
                f"(first on line {pairs[id_, cls][1]})."
            )
        pairs[id_, cls] = (value, n)
        ids.setdefault(id_)
        if "split" in cols:
            _record_split(split_of, id_, fields[cols["split"]], path, n)
    classes = sorted({c for _, c in pairs})
    return _multilabel_labels(
        list(ids),
        classes,
        {k: v for k, (v, _) in pairs.items()},
        _group_splits(split_of, ids),
        str(path),
    )


def _multilabel_labels(
    ids: Sequence[str],
    classes: Sequence[str],
    values: Mapping[tuple[str, str], int],
    splits: Mapping[str, tuple[str, ...]],
    source: str,
    absent_known: bool = True,
) -> Labels:
    """Labels from (id, class) -> value; a pair without a value is -1 (absent) if
    ``absent_known``, else unknown (y 0, marked in ``Labels.unknown``)."""
    row = {id_: i for i, id_ in enumerate(ids)}
    col = {c: k for k, c in enumerate(classes)}
    y = np.full((len(ids), len(classes)), -1 if absent_known else 0, dtype=np.int8)
    unknown = None if absent_known else np.ones(y.shape, bool)
    for (id_, cls), value in values.items():
        y[row[id_], col[cls]] = value
        if unknown is not None:
            unknown[row[id_], col[cls]] = False
    if unknown is not None and not unknown.any():
        unknown = None
    return Labels(tuple(ids), tuple(classes), y, True, dict(splits), source, (), unknown)


_VOC_FILE = re.compile(r"^(?P<cls>.+)_(?P<split>[^_]+)\.txt$")


def _voc_files(folder: Path) -> Iterable[tuple[str, str, Path]]:
    for path in sorted(folder.glob("*_*.txt")):
        match = _VOC_FILE.match(path.name)
        if match:
            yield match["cls"], match["split"], path


def read_voc(folder: str | os.PathLike) -> Labels:
    """Read VOC classification labels from ``ImageSets/Main`` (or a VOC root holding it).

    Reads every ``<class>_<split>.txt`` (lines ``<id> <label>``, label 1, -1 or 0) and records
    each split's ids (e.g. 'train', 'val', 'trainval', 'test'). An image listed in several
    files must have the same label in each, and the class files of one split must all list
    the same images (a truncated file is refused, never read as negatives). A class without a
    file for a split leaves its pairs unknown (:meth:`Labels.check_labelled` refuses them).
    """
    folder = Path(folder)
    if (folder / "ImageSets" / "Main").is_dir():
        folder = folder / "ImageSets" / "Main"
    files = list(_voc_files(folder))
    if not files:
        raise LabelsError(
            f"{folder} has no VOC '<class>_<split>.txt' files; give VOC's ImageSets/Main folder."
        )
    values: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], str] = {}
    members: dict[str, dict[str, None]] = {}
    listed: dict[str, dict[Path, set[str]]] = {}  # split -> class file -> its ids
    ids: dict[str, None] = {}
    for cls, split, path in files:
        seen: set[str] = listed.setdefault(split, {}).setdefault(path, set())
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise LabelsError(
                    f"{path} line {n}: expected '<id> <label>', got {line.strip()!r}."
                )
            id_, value = fields[0], _multilabel_value(path, n, fields[1])
            if id_ in seen:
                raise LabelsError(f"{path} line {n}: duplicate id {id_}.")
            seen.add(id_)
            old = values.setdefault((id_, cls), value)
            if old != value:
                raise LabelsError(
                    f"{path} line {n}: image {id_} is {value} for {cls} here but {old} in "
                    f"{where[id_, cls]}; the VOC files disagree."
                )
            where.setdefault((id_, cls), path.name)
            members.setdefault(split, {})[id_] = None
            ids.setdefault(id_)
    for split, by_file in listed.items():
        _check_same_ids(split, by_file)
    classes = sorted({cls for cls, _, _ in files})
    splits = {name: tuple(m) for name, m in members.items()}
    return _multilabel_labels(list(ids), classes, values, splits, str(folder), absent_known=False)


def _check_same_ids(split: str, by_file: Mapping[Path, set[str]]) -> None:
    """Refuse class files of one VOC split that do not all list the same images."""
    union = set().union(*by_file.values())
    path, ids = max(by_file.items(), key=lambda item: len(union - item[1]))
    missing = sorted(union - ids)
    if missing:
        raise LabelsError(
            f"{path.name} lists {len(ids)} images but the {split!r} class files together list "
            f"{len(union)}: {len(missing)} are missing from it (e.g. {_examples(missing)}); "
            f"every <class>_{split}.txt must list the same images (is it truncated?)."
        )


def read_class_folders(root: str | os.PathLike, classes: Sequence[str] | None = None) -> Labels:
    """Read multi-class labels from one sub-folder per class (Caltech-101/256 layout).

    Images are found as ``vggfeat extract`` finds them (recursively, by extension), and ids are
    the same: paths relative to ``root`` with '/' separators (``class/image_0001.jpg``) when the
    extractor's ``--root`` is this folder.

    Args:
        root: The folder of class folders (e.g. ``101_ObjectCategories``).
        classes: Classes to read; by default every sub-folder. Missing or empty class folders
            are tolerated (recorded in ``notes``) as long as one class remains.
    """
    from vggfeat.datasets.folder import find_images

    root = Path(root)
    if not root.is_dir():
        raise LabelsError(f"Class folder root {root} does not exist.")
    present = _sub_folders(root)
    wanted = sorted(classes) if classes is not None else present
    notes = [f"class {c!r} has no folder in {root}; skipped" for c in wanted if c not in present]
    folders = [root / c for c in wanted if c in present]
    by_class: dict[str, list[str]] = {c: [] for c in wanted if c in present}
    try:
        samples = find_images(folders, root=root) if folders else []
    except VggfeatError:  # no image at all; reported below
        samples = []
    for id_, _ in samples:
        by_class[id_.split("/", 1)[0]].append(id_)
    notes += [
        f"class folder {c!r} holds no images; skipped" for c, ids in by_class.items() if not ids
    ]
    found = [c for c, ids in by_class.items() if ids]
    if not found:
        raise LabelsError(
            f"{root} has no class folders with images; give the folder that holds one "
            "sub-folder per class."
        )
    ids = [id_ for c in found for id_ in sorted(by_class[c])]
    y = np.concatenate([np.full(len(by_class[c]), k, dtype=np.int64) for k, c in enumerate(found)])
    return Labels(tuple(ids), tuple(found), y, False, {}, str(root), tuple(notes))


# --------------------------------------------------------------------------- splits


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids listed in a text file, one per line, each the whole line (only the line end is
    stripped, so ids may hold spaces); blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"Id list {path} is not UTF-8 text ({exc.reason}).") from None
    ids = [
        line.rstrip("\r") for line in text.split("\n") if line.strip() and not line.startswith("#")
    ]
    repeated = [id_ for id_, n in Counter(ids).items() if n > 1]
    if repeated:
        raise LabelsError(
            f"Id list {path} repeats {len(repeated)} ids (e.g. {_examples(repeated)})."
        )
    return ids


@dataclass(frozen=True)
class CaltechSplit:
    """The Caltech protocol split: per class ``n_train`` random training images and up to
    ``n_test`` of the rest for test (``None``: all the rest), drawn with ``seed``.

    Written ``caltech:N_TRAIN:N_TEST:SEED`` (e.g. ``caltech:30:50:0``; ``N_TEST`` may be
    ``all``; ``SEED`` defaults to 0).
    """

    n_train: int = 30
    n_test: int | None = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 1 or (self.n_test is not None and self.n_test < 1) or self.seed < 0:
            raise LabelsError(
                f"Bad Caltech split {self}: n_train and n_test must be >= 1 and seed >= 0."
            )

    def __str__(self) -> str:
        n_test = "all" if self.n_test is None else self.n_test
        return f"caltech:{self.n_train}:{n_test}:{self.seed}"


def parse_caltech_split(text: str) -> CaltechSplit:
    """Parse ``caltech:N_TRAIN:N_TEST[:SEED]`` (``N_TEST`` may be ``all``)."""
    parts = text.split(":")
    usage = "use caltech:N_TRAIN:N_TEST:SEED, e.g. caltech:30:50:0 or caltech:60:all:0"
    if parts[0] != "caltech" or len(parts) not in (3, 4):
        raise LabelsError(f"Bad split {text!r}: {usage}.")
    try:
        n_train = int(parts[1])
        n_test = None if parts[2] == "all" else int(parts[2])
        seed = int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        raise LabelsError(f"Bad split {text!r}: {usage}.") from None
    return CaltechSplit(n_train, n_test, seed)


def caltech_split(
    labels: Labels, n_train: int = 30, n_test: int | None = 50, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Caltech protocol: per class ``n_train`` random training ids, up to ``n_test`` of the rest.

    Each class's images are ranked by a hash of (seed, class name, image id); the first
    ``n_train`` are its training images and the next ``n_test`` its test images. A class's draw
    therefore depends only on the seed, its name and its own ids: not on reading order, nor on
    which other classes are present or how many images they hold. With the same N_TRAIN and
    seed, every N_TEST gives the same training part, and adding or removing an image changes a
    class's training part by at most that image.

    Returns:
        (train ids, test ids), each grouped by class in ``labels.classes`` order.
    """
    protocol = CaltechSplit(n_train, n_test, seed)
    if labels.multilabel:
        raise LabelsError("The Caltech split needs multi-class labels (one class per image).")
    ids = np.array(labels.ids, dtype=object)
    train: list[str] = []
    test: list[str] = []
    for k, cls in enumerate(labels.classes):
        members = ids[labels.y == k].tolist()
        if len(members) < n_train:
            raise LabelsError(
                f"Class {cls!r} has {len(members)} images, fewer than the {n_train} training "
                f"images of split {protocol}; use a smaller N_TRAIN."
            )
        order = sorted(members, key=lambda id_: _draw_key(protocol.seed, cls, id_))
        rest = order[n_train:] if n_test is None else order[n_train : n_train + n_test]
        train += order[:n_train]
        test += rest
    return train, test


def _draw_key(seed: int, cls: str, id_: str) -> bytes:
    """A uniformly random-looking rank of an image in its class's draw, fixed by its inputs."""
    return hashlib.sha256(f"vggfeat-caltech\0{seed}\0{cls}\0{id_}".encode()).digest()


def resolve_split(labels: Labels, split: str, part: str = "train") -> list[str]:
    """Ids of a split, given as a split name, a ``caltech:...`` protocol or an id-list file.

    Args:
        labels: The labels the split refers to.
        split: A split name in ``labels.splits`` (a ``split`` column value or a VOC split such
            as 'trainval'), ``caltech:N_TRAIN:N_TEST:SEED`` or a path to a file of ids.
        part: 'train' or 'test': which part of a Caltech split to return.

    Raises:
        LabelsError: Unknown split, an empty split, or ids without labels.
    """
    if split.startswith("caltech:"):
        protocol = parse_caltech_split(split)
        train, test = caltech_split(labels, protocol.n_train, protocol.n_test, protocol.seed)
        ids = train if part == "train" else test
    elif split in labels.splits:
        ids = list(labels.splits[split])
    elif Path(split).is_file():
        ids = read_id_list(split)
        labels.select(ids, role=f"{part} split {split}")  # refuses ids without labels
    else:
        known = ", ".join(sorted(labels.splits)) or "none"
        raise LabelsError(
            f"Unknown split {split!r}: not a split of {labels.source} (splits: {known}), not "
            "'caltech:N_TRAIN:N_TEST:SEED' and not a file of ids."
        )
    if not ids:
        raise LabelsError(
            f"The {part} split {split!r} has no images; check the split name or file."
        )
    return ids


def training_targets(labels: Labels, difficult: str = "exclude", split: str = "") -> np.ndarray:
    """The ``y`` to fit SVMs on.

    Multi-label: (N, K) VOC labels, difficult (0) kept as 0 (left out of that class's
    training) or, with ``difficult="negative"``, made -1. Multi-class: (N,) class names.

    Raises:
        LabelsError: (image, class) pairs without labels, or a class without a positive (or,
            multi-label, a negative) training example in ``split``.
    """
    labels.check_labelled(role="training")
    if not labels.multilabel:
        counts = np.bincount(labels.y, minlength=len(labels.classes))
        for name, count in zip(labels.classes, counts):
            if count == 0:
                raise LabelsError(
                    f"Class {name!r} has no positive training example in split {split!r} "
                    f"({len(labels)} images); add positives or remove the class from the labels."
                )
        return np.array(labels.classes)[labels.y]
    y = labels.y.copy()
    if difficult == "negative":
        y[y == 0] = -1
    for k, name in enumerate(labels.classes):
        if not (y[:, k] == 1).any():
            raise LabelsError(
                f"Class {name!r} has no positive training example in split {split!r} "
                f"({len(labels)} images); add positives or remove the class from the labels."
            )
        if not (y[:, k] == -1).any():
            raise LabelsError(
                f"Class {name!r} has no negative training example in split {split!r}; a "
                "one-vs-rest SVM needs both."
            )
    return y
