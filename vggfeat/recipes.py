"""The paper's transfer protocols (Appendix B, Tables 11 and 12) as runnable recipes.

A recipe indexes a dataset root, draws (or reads back) its splits, extracts every sample it
needs once into a resumable store per net (all scales; person boxes as region entries next to
the whole images), fits and scores every SVM variant from those stores, and reports the result
beside the paper's, with the time of each stage and a plain statement of how the run differs
from the paper's (weights, classes, scales, test split). Everything goes through the library:
the pipeline (:func:`vggfeat.pipeline.extract_to_store`), :func:`vggfeat.features.design_matrix`,
:class:`vggfeat.svm.SVMClassifier` and :mod:`vggfeat.report`.

Workdir layout::

    features_<net>.h5               one store per net (resumed by a rerun, reused by any --nets)
    splits/<train|test>_<split>.txt store ids, one per line (reuse with --splits DIR)
    results.json, table.txt         every variant, split, figure, note and stage time
    plots/<variant>_<split>/        precision-recall curves or a confusion matrix
    results/VOC2012/{Main,Action}/  evaluation-server files (comp2 / comp10), given test images
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.errors import DatasetError, SettingsMismatch
from vggfeat.labels import Labels

__all__ = [
    "RECIPES",
    "Recipe",
    "RecipeRun",
    "Split",
    "Variant",
    "data_notes",
    "read_splits",
    "run_recipe",
    "variants",
    "weights_notes",
    "write_splits",
]


@dataclass(frozen=True)
class Recipe:
    """One protocol of the paper.

    Attributes:
        name: Its ``vggfeat recipe`` name.
        protocol: The protocol in one line (``vggfeat recipe list``).
        kind: 'voc' (multi-label image classification), 'caltech' (multi-class, random
            splits) or 'action' (VOC person boxes).
        scales: The paper's Q.
        aggregate: How scales combine: 'stack' (Caltech) or 'average' (VOC).
        paper: Variant name -> the paper's figure (%), as printed in its tables.
        metric: What the figure is ('mAP' or 'mean class recall').
        train_split, test_split: VOC splits fit on and scored.
        ap: '11point' (VOC-2007) or 'area' (VOC-2010 and later).
        n_train, n_test, seeds: Caltech: images per class for training and (at most, None for
            all the rest) for test, and the seeds of the random splits.
        classes: Caltech: the number of classes of the paper's protocol (background kept).
        paper_differs: How this protocol's evaluation differs from the paper's, if it does.
    """

    name: str
    protocol: str
    kind: str
    scales: tuple[int, ...]
    aggregate: str
    paper: Mapping[str, str]
    metric: str = "mAP"
    train_split: str = ""
    test_split: str = ""
    ap: str = "area"
    n_train: int = 0
    n_test: int | None = None
    seeds: tuple[int, ...] = ()
    classes: int = 0
    paper_differs: str = ""


_VOC_SCALES = (256, 384, 512, 640, 768)
_CALTECH_SCALES = (256, 384, 512)
# Simonyan & Zisserman (2014): Table 11 (VOC mAP, Caltech mean class recall) and Table 12
# (VOC-2012 action mAP, D&E only), in %.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "voc2007",
            "VOC-2007 classification: SVMs on trainval (C by 3-fold CV), test mAP "
            "(11-point AP, difficult ignored); Q 256-768 averaged",
            "voc",
            _VOC_SCALES,
            "average",
            {"D": "89.3", "E": "89.3", "D&E": "89.7"},
            train_split="trainval",
            test_split="test",
            ap="11point",
        ),
        Recipe(
            "voc2012",
            "VOC-2012 classification: SVMs on train scored on val (area AP); with "
            "test images, trainval SVMs write comp2 server files; Q 256-768 averaged",
            "voc",
            _VOC_SCALES,
            "average",
            {"D": "89.0", "E": "89.0", "D&E": "89.3"},
            train_split="train",
            test_split="val",
            paper_differs="scored on val (the paper: the test server, trained on trainval)",
        ),
        Recipe(
            "caltech101",
            "Caltech-101: 30 train / up to 50 test images per class (102 classes "
            "with background), C on a 20% holdout, mean class recall over 3 splits; Q "
            "256,384,512 stacked",
            "caltech",
            _CALTECH_SCALES,
            "stack",
            {"D": "91.8 ± 1.0", "E": "92.3 ± 0.5", "D&E": "92.7 ± 0.5"},
            metric="mean class recall",
            n_train=30,
            n_test=50,
            seeds=(0, 1, 2),
            classes=102,
        ),
        Recipe(
            "caltech256",
            "Caltech-256: 60 train images per class, the rest for test (257 "
            "classes), C on a 20% holdout, mean class recall over 3 splits; Q 256,384,512 "
            "stacked",
            "caltech",
            _CALTECH_SCALES,
            "stack",
            {"D": "85.0 ± 0.2", "E": "85.1 ± 0.3", "D&E": "86.2 ± 0.3"},
            metric="mean class recall",
            n_train=60,
            n_test=None,
            seeds=(0, 1, 2),
            classes=257,
        ),
        Recipe(
            "voc2012-action",
            "VOC-2012 action: each person box's descriptor stacked with its "
            "image's, SVMs on train scored on val (area AP); with test boxes, trainval SVMs "
            "write comp10 server files; Q 256-768 averaged",
            "action",
            _VOC_SCALES,
            "average",
            {"D&E image": "79.2", "D&E image+box": "84.0"},
            train_split="train",
            test_split="val",
            paper_differs="scored on val (the paper: the test server, trained on trainval)",
        ),
    )
}


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """One train/test pair of store ids. ``name`` names its files (``train_<name>.txt``);
    a submission split's test ids carry no labels (``labelled=False``)."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    labelled: bool = True


def write_splits(folder: str | os.PathLike, splits: Sequence[Split]) -> list[Path]:
    """Write ``<folder>/<train|test>_<name>.txt`` for each split, one id per line."""
    from vggfeat.files import publish_bytes

    paths = []
    for split in splits:
        for part, ids in (("train", split.train), ("test", split.test)):
            path = Path(folder) / f"{part}_{split.name}.txt"
            publish_bytes(path, "".join(f"{i}\n" for i in ids))
            paths.append(path)
    return paths


def read_splits(folder: str | os.PathLike, expected: Sequence[Split]) -> list[Split]:
    """The splits ``expected`` names, with their ids read back from ``folder``.

    Raises:
        DatasetError: a file is missing (the message names every file the recipe needs).
    """
    from vggfeat.labels import read_id_list

    folder = Path(folder)
    names = [f"{p}_{s.name}.txt" for s in expected for p in ("train", "test")]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(
            f"--splits {folder} lacks {', '.join(missing)}: give the splits/ folder of an earlier "
            f"run of this recipe (it needs {', '.join(names)})."
        )
    return [
        Split(
            s.name,
            tuple(read_id_list(folder / f"train_{s.name}.txt")),
            tuple(read_id_list(folder / f"test_{s.name}.txt")),
            s.labelled,
        )
        for s in expected
    ]


# --------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    """What a recipe needs from its root.

    Attributes:
        labels: Labels of every labelled id (images; regions for the action task).
        samples: Every sample to extract (images and regions), each once.
        splits: The evaluated splits, drawn here (replaced by ``--splits``).
        submission: Train/test ids of the server submission (test unlabelled), or None.
        image_of: Action task: region id -> the store id of its whole image.
        objects: Action task: region id -> (VOC image id, object index), for comp10 files.
        notes: How the data differ from the paper's.
    """

    labels: Labels
    samples: list
    splits: list[Split]
    submission: Split | None = None
    image_of: dict[str, str] = field(default_factory=dict)
    objects: dict[str, tuple[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _caltech(recipe: Recipe, root: Path) -> Dataset:
    from vggfeat.labels import caltech_split, read_class_folders

    if not root.is_dir():
        raise DatasetError(
            f"{recipe.name} root {root} does not exist: give the folder of class "
            "folders (e.g. 101_ObjectCategories)."
        )
    folders = [p for p in root.iterdir() if p.is_dir()]
    inner = [p for p in folders if p.name.endswith("_ObjectCategories")]
    if inner or not folders:
        hint = f" (it holds {inner[0]}: give that folder)" if inner else ""
        raise DatasetError(
            f"no class folders under {root}{hint}: give the folder that holds one "
            "sub-folder of images per class (e.g. 101_ObjectCategories)."
        )
    labels = read_class_folders(root)
    splits = []
    for seed in recipe.seeds:
        train, test = caltech_split(labels, recipe.n_train, recipe.n_test, seed)
        splits.append(Split(f"seed{seed}", tuple(train), tuple(test)))
    samples = [(i, str(root / i)) for i in labels.ids]
    notes = []
    if len(labels.classes) != recipe.classes:
        notes.append(
            f"data: {len(labels.classes)} classes, not the paper's {recipe.classes}"
            f" (a Caltech-{len(labels.classes)} subset): not comparable to the paper's figures"
        )
    return Dataset(labels, samples, splits, notes=notes)


def _voc(recipe: Recipe, root: Path) -> Dataset:
    from vggfeat.datasets.voc import check_voc_root, image_samples, read_image_set
    from vggfeat.labels import read_voc

    root = check_voc_root(root, ("JPEGImages", "ImageSets/Main"))
    labels = read_voc(root / "ImageSets" / "Main")
    for split in (recipe.train_split, recipe.test_split):
        if split not in labels.splits:
            raise DatasetError(
                f"no ImageSets/Main/<class>_{split}.txt under {root}: {recipe.name} fits on "
                f"{recipe.train_split} and scores {recipe.test_split}."
            )
    splits = [
        Split(
            recipe.test_split, labels.splits[recipe.train_split], labels.splits[recipe.test_split]
        )
    ]
    ids = [i for s in splits for i in (*s.train, *s.test)]
    submission = None
    if recipe.name == "voc2012" and (root / "ImageSets/Main/test.txt").is_file():
        test = read_image_set(root, "test")
        if "trainval" not in labels.splits:
            raise DatasetError(
                f"no ImageSets/Main/<class>_trainval.txt under {root}: the "
                "test submission fits on trainval."
            )
        submission = Split("submission", labels.splits["trainval"], tuple(test), labelled=False)
        ids += [*submission.train, *test]
    samples = image_samples(root, ids)
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} images the splits list are missing from {root / 'JPEGImages'} "
            f"(e.g. {Path(missing[0]).name}): give the complete VOC year folder."
        )
    return Dataset(labels, samples, splits, submission)


def _action(recipe: Recipe, root: Path) -> Dataset:
    from vggfeat.datasets.samples import unique_samples
    from vggfeat.datasets.voc import read_action_set

    train, test = (read_action_set(root, s) for s in (recipe.train_split, recipe.test_split))
    sets = [train, test]
    submission = None
    has_test = (
        any(Path(root, "ImageSets/Action").glob("*_test.txt"))
        or Path(root, "ImageSets/Action/test.txt").is_file()
    )
    if has_test:
        trainval, held = read_action_set(root, "trainval"), read_action_set(root, "test")
        sets += [trainval, held]
        submission = Split("submission", trainval.ids, held.ids, labelled=False)
    labels = _merge_action_labels([s for s in sets[:2]] + ([sets[2]] if has_test else []))
    image_of: dict[str, str] = {}
    objects: dict[str, tuple[str, int]] = {}
    for s in sets:
        image_of.update(zip(s.ids, s.image_ids))
        objects.update(zip(s.ids, zip(s.images, s.objects)))
    samples = unique_samples([s.image_samples() for s in sets] + [s.region_samples() for s in sets])
    return Dataset(
        labels,
        samples,
        [Split(recipe.test_split, train.ids, test.ids)],
        submission,
        image_of,
        objects,
    )


def _merge_action_labels(sets: Sequence[Any]) -> Labels:
    """One Labels over the labelled boxes of several action splits (a box listed in two
    splits, e.g. train and trainval, has one row)."""
    from vggfeat.datasets.voc import VOC_ACTIONS

    rows: dict[str, np.ndarray] = {}
    for s in sets:
        labels = s.labels
        index = [labels.classes.index(a) if a in labels.classes else -1 for a in VOC_ACTIONS]
        for r, id_ in enumerate(labels.ids):
            rows.setdefault(id_, np.array([labels.y[r, k] if k >= 0 else 0 for k in index]))
    ids = tuple(rows)
    y = np.stack([rows[i] for i in ids]).astype(np.int8)
    splits = {s.split: s.ids for s in sets}
    return Labels(ids, tuple(VOC_ACTIONS), y, True, splits, sets[0].labels.source, ())


_INDEX = {"voc": _voc, "caltech": _caltech, "action": _action}


# --------------------------------------------------------------------------- notes


def weights_notes(weights: Sequence[Any]) -> list[str]:
    """One line per net whose weights are not the paper's (the Oxford models)."""
    notes = []
    for w in weights:
        narrow = w.source != "demo" and w.width not in (None, 1.0)
        width = f" at width {w.width:g}" if narrow else ""
        if w.source == "random":
            what = "random weights (an untrained net: a floor, not a reproduction)"
        elif w.source == "imagenet":
            what = (
                "torchvision's retrained IMAGENET1K_V1 weights, not the Oxford models the "
                "paper used (see README: The original Oxford weights)"
            )
        elif w.source == "demo":
            what = (
                "the demo net (width 1/8, trained by vggfeat train on 48 Caltech-101 classes), "
                "not the paper's ImageNet-trained net"
            )
        elif w.preprocess.name != "caffe" or width:
            what = f"weights file {Path(w.source).name}, not the Oxford models the paper used"
        else:
            continue
        notes.append(f"weights: Net-{w.net}: {what}{width}")
    return notes


def data_notes(
    recipe: Recipe, dataset: Dataset, weights: Sequence[Any], scales: Sequence[int]
) -> list[str]:
    """How this run's data, scales and evaluation differ from the paper's."""
    notes = list(dataset.notes)
    if tuple(scales) != recipe.scales:
        notes.append(
            f"scales: Q {','.join(map(str, scales))}, not the paper's "
            f"{','.join(map(str, recipe.scales))}"
        )
    if recipe.paper_differs:
        notes.append(f"evaluation: {recipe.paper_differs}")
    if recipe.kind == "caltech" and any(w.source == "demo" for w in weights):
        from vggfeat.demo import DEMO_WEIGHTS_FILE

        source = DEMO_WEIGHTS_FILE.parent / "source_classes.txt"
        trained = set(source.read_text().split()) if source.is_file() else set()
        shared = sorted(trained & set(dataset.labels.classes))
        if shared:
            notes.append(
                f"data: the demo net was trained on images of {len(shared)} of these classes "
                f"({source.name}): for them this is not a transfer result"
            )
    return notes


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One SVM variant: the nets late-fused, and (action task) whether the box is stacked."""

    nets: tuple[str, ...]
    box: bool | None = None

    @property
    def name(self) -> str:
        name = "&".join(self.nets)
        return name if self.box is None else f"{name} {'image+box' if self.box else 'image'}"


def variants(recipe: Recipe, nets: Sequence[str]) -> list[Variant]:
    """Each net alone, then all of them late-fused; the action task has each with the image
    alone and with the box stacked."""
    sets = [(n,) for n in nets] + ([tuple(nets)] if len(nets) > 1 else [])
    if recipe.kind != "action":
        return [Variant(s) for s in sets]
    return [Variant(s, box) for s in sets for box in (False, True)]


def _matrix(
    stores: Sequence[Any],
    ids: Sequence[str],
    variant: Variant,
    recipe: Recipe,
    scales: Sequence[int],
    image_of: Mapping[str, str],
) -> np.ndarray:
    """(N, D) design matrix of ``ids``: the images' descriptors, or for the action task the
    box's whole image, with (``variant.box``) the box's own descriptor stacked after it; each
    part L2-normalised, then the row."""
    from vggfeat.features import FeatureSpec, design_matrix

    spec = FeatureSpec(variant.nets, tuple(scales), recipe.aggregate)
    stores = [s for s in stores if set(s.nets) & set(variant.nets)]
    if variant.box is None:
        return design_matrix(stores, list(ids), spec)
    image = design_matrix(stores, [image_of[i] for i in ids], spec)
    if not variant.box:
        return image
    return np.hstack([image, design_matrix(stores, list(ids), spec)]) / np.float32(math.sqrt(2))


def _usable(stores: Sequence[Any], ids: Sequence[str], image_of: Mapping[str, str]) -> list[str]:
    """``ids`` whose rows (and, for a region, its image's row) were extracted successfully."""

    def ok(keys: Sequence[str]) -> np.ndarray:
        good = np.ones(len(keys), bool)
        for store in stores:
            rows = store.find(list(keys))
            good &= (rows >= 0) & store.ok[np.maximum(rows, 0)]
        return good

    keep = ok(ids)
    if image_of:
        keep &= ok([image_of[i] for i in ids])
    return [i for i, k in zip(ids, keep) if k]


# --------------------------------------------------------------------------- the run


@dataclass
class RecipeRun:
    """What :func:`run_recipe` did: the JSON-able results and the text table."""

    results: dict[str, Any]
    table: str


def _fit(
    recipe: Recipe,
    x: np.ndarray,
    labels: Labels,
    seed: int,
    cs: Sequence[float] | None,
    progress: bool,
    desc: str,
) -> Any:
    """One-vs-rest SVMs, C chosen from ``cs`` (default the built-in grid) as the recipe says:
    on a 20% holdout (Caltech) or by 3-fold cross-validation (VOC); a bar shows the work."""
    from vggfeat.labels import training_targets
    from vggfeat.report import FitProgress
    from vggfeat.svm import DEFAULT_CS, SVMClassifier

    y = training_targets(labels, "exclude")
    holdout = 0.2 if recipe.kind == "caltech" else None
    clf = SVMClassifier(
        Cs=[float(c) for c in (DEFAULT_CS if cs is None else cs)],
        cv=3,
        holdout=holdout,
        random_state=seed,
        label_format="voc",
        class_names=list(labels.classes) if labels.multilabel else None,
    )
    bar = FitProgress(desc, disable=not progress)
    try:
        return clf.fit(x, y, progress=bar)
    finally:
        bar.close()


def _score(recipe: Recipe, clf: Any, x: np.ndarray, labels: Labels) -> tuple[dict, Any, Any]:
    from vggfeat.report import evaluate_multiclass, evaluate_multilabel

    scores = clf.class_scores(x)
    if labels.multilabel:
        return (
            evaluate_multilabel(scores, labels.y, list(labels.classes), recipe.ap),
            scores,
            labels.y,
        )
    classes = [str(c) for c in clf.classes_]
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[labels.classes[k]] for k in labels.y], dtype=np.int64)
    return evaluate_multiclass(scores, y, classes), scores, y


def _headline(result: Mapping[str, Any]) -> float:
    value = result["mAP"] if result["task"] == "multilabel" else result["mean_class_recall"]
    return 100 * float(value)


def _summary(values: Sequence[float]) -> str:
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def run_recipe(
    recipe: Recipe,
    root: str | os.PathLike,
    workdir: str | os.PathLike,
    weights: Sequence[Any],
    config: Any,
    *,
    splits_dir: str | os.PathLike | None = None,
    cs: Sequence[float] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    rows_per_part: int = 256,
) -> RecipeRun:
    """Run ``recipe`` on ``root`` end to end, writing everything under ``workdir``.

    Args:
        recipe: One of :data:`RECIPES`.
        root: The dataset root (a VOC year folder, or a folder of class folders).
        workdir: Where the stores, splits, results, plots and server files go; a rerun resumes
            its stores.
        weights: Loaded :class:`vggfeat.weights.Weights`, one per net, in fusion order.
        config: The :class:`vggfeat.extract.ExtractConfig` (scales default to the recipe's).
        splits_dir: Read the splits from here (an earlier run's ``splits/``) instead of
            drawing them.
        cs: The grid C is chosen from (default :data:`vggfeat.svm.DEFAULT_CS`).
        log: Called with one line per thing the user should know as it happens.

    Raises:
        DatasetError: ``root`` does not hold what the recipe needs, or ``splits_dir`` lacks a
            file.
    """
    from vggfeat.pipeline import extract_to_store
    from vggfeat.report import format_table, plot_confusion, plot_pr_curves, write_json

    log = log or (lambda line: None)
    workdir = Path(workdir)
    times: dict[str, float] = {}
    start = time.perf_counter()
    dataset = _INDEX[recipe.kind](recipe, Path(root))
    splits = dataset.splits + ([dataset.submission] if dataset.submission else [])
    if splits_dir is not None:
        splits = read_splits(splits_dir, splits)
        log(f"splits read from {splits_dir}")
    write_splits(workdir / "splits", splits)
    wanted = {i for s in splits for i in (*s.train, *s.test)}
    wanted |= {dataset.image_of[i] for i in wanted if i in dataset.image_of}
    known = {k for s in dataset.samples for k in (s[0], Path(s[0]).stem)}
    unknown = sorted(wanted - known)
    if unknown:
        raise DatasetError(
            f"the splits list {len(unknown)} ids that {root} does not hold (e.g. {unknown[0]}): "
            "give the splits of a run of this recipe on this root."
        )
    samples = [s for s in dataset.samples if s[0] in wanted or Path(s[0]).stem in wanted]
    times["index"] = time.perf_counter() - start
    log(f"{recipe.name}: {len(samples)} samples to describe, {len(splits)} split(s)")

    # One store per net: any later --nets reuses (and resumes) the stores it needs.
    start = time.perf_counter()
    stores, done, kept = [], 0, 0
    for w in weights:
        try:
            extracted = extract_to_store(
                samples,
                workdir / f"features_{w.net}.h5",
                [w],
                config,
                progress=progress,
                rows_per_part=rows_per_part,
                log=log,
            )
        except SettingsMismatch as exc:  # the store's own advice names extract's --out
            raise SettingsMismatch(
                f"{str(exc).split(' Re-run')[0]} Give that run's weights and scales, or "
                "another --workdir."
            ) from None
        stores.append(extracted.store)
        done, kept = done + extracted.summary.done, kept + extracted.skipped
    times["extract"] = time.perf_counter() - start
    failed = list(dict(f for store in stores for f in store.failed()).items())
    if failed:
        log(f"{len(failed)} samples failed and are left out (e.g. {failed[0][0]}: {failed[0][1]})")

    nets = tuple(w.net for w in weights)
    scales = tuple(config.scales)
    notes = weights_notes(weights) + data_notes(recipe, dataset, weights, scales)
    from vggfeat.svm import DEFAULT_CS

    if cs is not None and [float(c) for c in cs] != [float(c) for c in DEFAULT_CS]:
        notes.append(f"svm: C chosen from {', '.join(f'{c:g}' for c in cs)}, not the full grid")
    rows, entries = [], []
    for variant in variants(recipe, nets):
        start = time.perf_counter()
        per_split = []
        for split in (s for s in splits if s.labelled):
            seed = int(split.name[4:]) if split.name.startswith("seed") else 0
            train = _usable(stores, split.train, dataset.image_of)
            test = _usable(stores, split.test, dataset.image_of)
            log(f"{variant.name}, split {split.name}: fitting on {len(train)}, scoring {len(test)}")
            clf = _fit(
                recipe,
                _matrix(stores, train, variant, recipe, scales, dataset.image_of),
                dataset.labels.select(train, role="training"),
                seed,
                cs,
                progress,
                f"SVMs {variant.name}, {split.name}",
            )
            test_labels = dataset.labels.select(test, role="test")
            x = _matrix(stores, test, variant, recipe, scales, dataset.image_of)
            result, scores, y = _score(recipe, clf, x, test_labels)
            result.update(
                split=split.name,
                n_train=len(train),
                n_test=len(test),
                left_out=len(split.train) + len(split.test) - len(train) - len(test),
                C=[float(c) for c in clf.C_],
            )
            folder = (
                workdir / "plots" / f"{variant.name.replace('&', '').replace(' ', '_')}_"
                f"{split.name}"
            )
            if result["task"] == "multilabel":
                plot_pr_curves(folder, scores, y, result)
            else:
                plot_confusion(folder / "confusion.png", y, np.argmax(scores, axis=1), result)
            per_split.append(result)
        seconds = time.perf_counter() - start
        times[f"svm {variant.name}"] = seconds
        values = [_headline(r) for r in per_split]
        ours = _summary(values)
        paper = recipe.paper.get(variant.name, "-")
        rows.append([variant.name, ours, paper, len(values), f"{seconds:.1f}"])
        entries.append(
            {
                "variant": variant.name,
                "nets": list(variant.nets),
                "box": variant.box,
                "ours": ours,
                "values": values,
                "paper": paper,
                "seconds": seconds,
                "splits": per_split,
            }
        )
        log(f"{variant.name}: {ours} ({recipe.metric}, {seconds:.1f} s)")

    written: list[str] = []
    if dataset.submission is not None:
        start = time.perf_counter()
        written = _submit(
            recipe,
            dataset,
            splits[-1],
            stores,
            variants(recipe, nets)[-1],
            scales,
            workdir,
            cs,
            progress,
        )
        times["submission"] = time.perf_counter() - start
        log(f"wrote {len(written)} evaluation-server files under {workdir / 'results'}")

    table = _table(recipe, rows, notes, times, len(samples), len(failed), written, format_table)
    results = {
        "recipe": recipe.name,
        "protocol": recipe.protocol,
        "root": str(root),
        "metric": recipe.metric,
        "scales": list(scales),
        "aggregate": recipe.aggregate,
        "Cs": [float(c) for c in (DEFAULT_CS if cs is None else cs)],
        "weights": [
            {"net": w.net, "source": w.source, "label": w.label, "sha256": w.sha256}
            for w in weights
        ],
        "differs_from_paper": notes,
        "samples": len(samples),
        "extracted": done,
        "kept_from_store": kept,
        "failed": [{"id": i, "reason": r} for i, r in failed],
        "variants": entries,
        "server_files": written,
        "seconds": times,
    }
    write_json(workdir / "results.json", results)
    from vggfeat.files import publish_bytes

    publish_bytes(workdir / "table.txt", table + "\n")
    return RecipeRun(results, table)


def _require_all(stores: Sequence[Any], ids: Sequence[str]) -> None:
    """Refuse test images that failed: the server needs a line for every one."""
    usable = set(_usable(stores, ids, {}))
    bad = [i for i in ids if i not in usable]
    if bad:
        raise DatasetError(
            f"{len(bad)} test images failed extraction (e.g. {bad[0]}); the server needs every "
            "one: fix or replace them and rerun."
        )


def _submit(
    recipe: Recipe,
    dataset: Dataset,
    split: Split,
    stores: Sequence[Any],
    variant: Variant,
    scales: Sequence[int],
    workdir: Path,
    cs: Sequence[float] | None,
    progress: bool,
) -> list[str]:
    """Fit the last (fullest) variant on the submission's training ids and write the server
    files for its test ids. A test sample that could not be described still needs a line:
    a box that failed is scored from its image alone (its box part zero)."""
    from vggfeat.submission import write_action_results, write_classification_results

    train = _usable(stores, split.train, dataset.image_of)
    clf = _fit(
        recipe,
        _matrix(stores, train, variant, recipe, scales, dataset.image_of),
        dataset.labels.select(train, role="training"),
        0,
        cs,
        progress,
        f"SVMs {variant.name}, {split.name}",
    )
    test = list(split.test)
    if recipe.kind == "action":
        usable = set(_usable(stores, test, {}))
        _require_all(stores, [dataset.image_of[i] for i in test])
        x = _matrix(stores, test, Variant(variant.nets, False), recipe, scales, dataset.image_of)
        if variant.box:
            box = np.zeros_like(x)
            good = [k for k, i in enumerate(test) if i in usable]
            box[good] = _matrix(
                stores,
                [test[k] for k in good],
                Variant(variant.nets, None),
                recipe,
                scales,
                dataset.image_of,
            )
            x = np.hstack([x, box])
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        scores = clf.class_scores(x)
        paths = write_action_results(
            workdir,
            [dataset.objects[i][0] for i in test],
            [dataset.objects[i][1] for i in test],
            list(dataset.labels.classes),
            scores,
        )
    else:
        _require_all(stores, test)
        scores = clf.class_scores(_matrix(stores, test, variant, recipe, scales, {}))
        paths = write_classification_results(workdir, test, list(dataset.labels.classes), scores)
    return [str(p) for p in paths]


def _table(
    recipe: Recipe,
    rows: list,
    notes: Sequence[str],
    times: Mapping[str, float],
    n_samples: int,
    n_failed: int,
    written: Sequence[str],
    format_table: Callable,
) -> str:
    """The run's summary: figures beside the paper's, what differs from it, stage times."""
    splits = "splits" if recipe.kind == "caltech" else "runs"
    lines = [
        f"{recipe.name}: {recipe.protocol}",
        "",
        format_table(["variant", f"ours ({recipe.metric} %)", "paper", splits, "svm s"], rows),
        "",
    ]
    if notes:
        lines.append("NOT A REPRODUCTION of the paper's numbers; this run differs from it:")
        lines += [f"  - {n}" for n in notes]
    else:
        lines.append("Same weights, data, scales and evaluation as the paper.")
    stage = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    lines += [
        "",
        f"samples: {n_samples} described, {n_failed} failed (left out)",
        f"stage times: {stage}",
    ]
    if written:
        lines.append(f"server files: {len(written)} in {Path(written[0]).parent}")
    return "\n".join(lines)
