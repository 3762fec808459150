"""``vggfeat svm``: fit, evaluate and apply one-vs-rest linear SVMs on stored descriptors.

Heavy imports (numpy, h5py, scikit-learn, matplotlib) stay inside the commands, so
``vggfeat --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from vggfeat.commands.options import device_option, parse_scales, split_csv

__all__ = ["SPEC_FORMAT", "SPEC_VERSION", "evaluate", "fit", "predict", "svm"]

SPEC_FORMAT = "vggfeat-svm-spec"
# 2: labels.train_ids (the training images, as the stores name them) and class names in the
# model's /classes.
SPEC_VERSION = 2

# ----------------------------------------------------------------------------- shared options

features_option = click.option(
    "--features",
    "features",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Feature store (.h5). Repeat to late-fuse nets from several stores (--features "
    "voc07_D.h5 --features voc07_E.h5).",
)
labels_option = click.option(
    "--labels",
    "labels_path",
    required=True,
    type=click.Path(exists=True),
    help="Labels: a CSV/TSV file (id,label or id,class,label[,split]), a VOC ImageSets/Main "
    "folder, or a folder of class folders (Caltech).",
)
model_option = click.option(
    "--model",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Model file written by `vggfeat svm fit`.",
)
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bar or notes (warnings are still shown)."
)
_SPLIT_HELP = (
    "a split name (a 'split' column value, or a VOC split such as trainval/test), a file of "
    "ids (one per line), or the Caltech protocol caltech:N_TRAIN:N_TEST:SEED (e.g. "
    "caltech:30:50:0; N_TEST may be 'all'), whose {part} part is used"
)


def _note(message: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message, err=True)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Report the library's warnings as one ``warning: ...`` line each on stderr (also under
    -q), instead of Python's two-line source excerpts; the solver's convergence warnings are
    summed into one line that names the options to change."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from vggfeat.svm import ModelFormatWarning

    package = str(Path(__file__).resolve().parents[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("always", ModelFormatWarning)
        try:
            yield
        finally:
            lines: dict[str, None] = {}
            unconverged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
            if unconverged:
                lines[_convergence_line([str(w.message) for w in unconverged])] = None
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    continue
                if str(Path(w.filename).resolve()).startswith(package):
                    lines[f"warning: {str(w.message).splitlines()[0]}"] = None
                else:  # not ours: Python's usual report
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            for line in lines:
                click.echo(line, err=True)


def _convergence_line(messages: list[str]) -> str:
    counts = [re.search(r"(\d+) of (\d+) problems", m) for m in messages]
    if all(counts):
        failed = sum(int(c[1]) for c in counts)
        total = f"{failed} SVM problem{'s' if failed > 1 else ''}"
    else:
        total = f"{len(messages)} SVM solver run{'s' if len(messages) > 1 else ''}"
    return (
        f"warning: {total} did not converge within --max-iter epochs, so some scores may be "
        "slightly off; raise --max-iter or loosen --tol (see README: Solver)."
    )


def _prepare_output(path: str | None, what: str = "--out") -> None:
    """Check an output file can be written before the work: not a folder; its folder is made."""
    from vggfeat.files import output_error

    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise click.UsageError(f"{what} {target} is a folder; give a file path, e.g. {target}/x.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, target, f"choose another {what}") from None


def _parse_cs(value: str | None) -> list[float] | None:
    if value is None:
        return None
    from vggfeat.svm import DEFAULT_CS

    if value.strip().lower() == "default":
        return [float(c) for c in DEFAULT_CS]
    try:
        cs = [float(c) for c in split_csv(value)]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers.") from None
    if not cs or min(cs) <= 0:
        raise click.BadParameter(f"{value!r}: give one or more positive C values.")
    return cs


# ----------------------------------------------------------------------------- helpers


def _problems(clf: Any, y: Any) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Name and training counts (as trained: positive, negative, left out) of each problem."""
    import numpy as np

    names = [str(c) for c in clf.classes_]
    if clf.multilabel_:
        return names, {
            name: {"positive": int((y[:, k] == 1).sum()), "negative": int((y[:, k] == -1).sum()),
                   "difficult": int((y[:, k] == 0).sum())}
            for k, name in enumerate(names)
        }  # fmt: skip
    if len(names) == 2:  # one problem: classes_[1] against classes_[0]
        pos = int((y == clf.classes_[1]).sum())
        name = f"{names[1]} vs {names[0]}"
        return [name], {name: {"positive": pos, "negative": len(y) - pos, "difficult": 0}}
    return names, {
        name: {"positive": int(np.sum(y == c)), "negative": int(np.sum(y != c)), "difficult": 0}
        for name, c in zip(names, clf.classes_)
    }


def _load_model(model: str) -> tuple[Any, dict[str, Any]]:
    from vggfeat.errors import VggfeatError
    from vggfeat.svm import load_svm

    clf, spec = load_svm(model)
    if spec.get("format") != SPEC_FORMAT:
        raise VggfeatError(f"{model} was not written by `vggfeat svm fit` (no {SPEC_FORMAT} spec).")
    if int(spec.get("format_version", 0)) > SPEC_VERSION:
        raise VggfeatError(
            f"{model} has spec version {spec['format_version']}; this vggfeat reads up to "
            f"{SPEC_VERSION}: upgrade vggfeat."
        )
    return clf, spec


def _model_features(model: str, spec: dict[str, Any], features: tuple[str, ...]):
    """Open the stores and check they hold the features the model was fit on."""
    from vggfeat.features import FeatureSpec, check_provenance, open_stores

    fspec = FeatureSpec.from_dict(spec["features"])
    stores = open_stores(features)
    check_provenance(spec["provenance"], stores, fspec, model=Path(model).name)
    return fspec, stores


def _test_targets(labels: Any, spec: dict[str, Any]) -> Any:
    """Test labels arranged as the model's classes: (N, K) {1,-1,0} or (N,) class indices."""
    import numpy as np

    from vggfeat.labels import LabelsError

    info = spec["labels"]
    classes = list(info["classes"])
    if labels.multilabel != info["multilabel"]:
        kind = "multi-label" if info["multilabel"] else "multi-class"
        raise LabelsError(f"The model is {kind} but {labels.source} is not; give matching labels.")
    if labels.multilabel:
        missing = [c for c in classes if c not in labels.classes]
        if missing:
            raise LabelsError(
                f"{labels.source} has no labels for class {', '.join(missing[:3])} of the model; "
                "give labels for every class the model knows."
            )
        labels.check_labelled(classes, role="test")
        return labels.y[:, [labels.classes.index(c) for c in classes]]
    index = {c: k for k, c in enumerate(classes)}
    names = [labels.classes[k] for k in labels.y]
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise LabelsError(
            f"Test images have class {', '.join(unknown[:3])} that the model was not trained on; "
            "drop them from the test split."
        )
    return np.array([index[n] for n in names], dtype=np.int64)


def _exclude_training(
    model: str, spec: dict[str, Any], stores: Any, fspec: Any, ids: list[str], test_split: str,
    drop: bool, quiet: bool,
) -> list[str]:  # fmt: skip
    """The test ids, after refusing (or, with ``drop``, leaving out) the model's training
    images, compared as the stores name them, whatever split syntax chose either."""
    import warnings

    from vggfeat.features import store_ids
    from vggfeat.labels import LabelsError

    info = spec["labels"]
    name = Path(model).name
    if "train_ids" not in info:  # spec version 1
        train_split = str(info.get("train_split", ""))
        if train_split.startswith("caltech:"):
            raise LabelsError(
                f"{name} records no training images and was drawn with vggfeat's former "
                f"Caltech split ({train_split}), which this version does not reproduce; refit "
                "it to evaluate on a Caltech split."
            )
        if train_split == test_split:
            raise LabelsError(f"{name} was trained on split {test_split!r}; test on another split.")
        warnings.warn(
            f"{name} records no training images (spec version 1): the test split cannot be "
            "checked for them; refit to record them.",
            UserWarning,
            stacklevel=2,
        )
        return ids
    trained = set(info["train_ids"])
    canonical = store_ids(stores, ids, fspec, role="test")
    seen = [i for i, c in zip(ids, canonical) if c in trained]
    if not seen:
        return ids
    if not drop:
        raise LabelsError(
            f"{len(seen)} of {len(ids)} test images were training images of {name} (e.g. "
            f"{', '.join(seen[:3])}); test on a split disjoint from its training split "
            f"({info.get('train_split')}), or pass --drop-training-images to leave them out."
        )
    kept = [i for i, c in zip(ids, canonical) if c not in trained]
    if not kept:
        raise LabelsError(
            f"All {len(ids)} test images were training images of {name}; give another split."
        )
    _note(f"note: left out {len(seen)} test images that were training images of {name}; "
          f"{len(kept)} remain.", quiet)  # fmt: skip
    return kept


# ----------------------------------------------------------------------------- commands


@click.group()
def svm() -> None:
    """One-vs-rest linear SVMs on stored descriptors: fit, eval, predict.

    \b
    Example (VOC-2007, Net-D and Net-E late-fused, scales averaged):
      vggfeat svm fit --features voc07_D.h5 --features voc07_E.h5 --aggregate average \\
          --labels VOC2007/ImageSets/Main --train-split trainval --Cs default --out voc07.h5
      vggfeat svm eval --model voc07.h5 --features voc07_D.h5 --features voc07_E.h5 \\
          --labels VOC2007/ImageSets/Main --test-split test --json voc07.json --plots plots/
    """


@svm.command()
@features_option
@click.option("--nets", help="Nets to late-fuse, in stacking order, e.g. D,E (default: every "
              "net in the stores, in the order given).")  # fmt: skip
@click.option("--scales", callback=parse_scales, help="Scales Q to use, comma-separated, e.g. "
              "256,384,512 (default: every scale the stores share).")  # fmt: skip
@click.option("--aggregate", type=click.Choice(["stack", "average"]), default="stack",
              show_default=True, help="Combine scales: stack (Caltech) or average (VOC, the "
              "paper's choice there: pass it for VOC).")  # fmt: skip
@click.option("--block-norm/--no-block-norm", default=False, show_default=True,
              help="Also L2-normalise each (net, Q) block and each net's block before they "
                   "are combined; the row is L2-normalised either way.")  # fmt: skip
@labels_option
@click.option("--train-split", required=True, help="Training images: " + _SPLIT_HELP.format(
              part="train") + ".")  # fmt: skip
@click.option("--difficult", type=click.Choice(["exclude", "negative"]), default="exclude",
              show_default=True, help="Multi-label images marked difficult (0): left out of "
              "that class's training, or used as negatives.")  # fmt: skip
@click.option("--loss", type=click.Choice(["squared_hinge", "hinge"]), default="squared_hinge",
              show_default=True)  # fmt: skip
@click.option("--C", "c", type=float, default=None, help="Fixed C for every class "
              "[default: 1.0 unless --Cs].")  # fmt: skip
@click.option("--Cs", "cs", help="Choose C per class from these, comma-separated, or 'default' "
              "for the built-in grid.")  # fmt: skip
@click.option("--cv", type=click.IntRange(min=2), default=None,
              help="Cross-validation folds for --Cs [default: 3].")  # fmt: skip
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Choose C on this held-out fraction of the training images "
              "instead of folds (paper, Caltech: 0.2).")  # fmt: skip
@click.option("--max-iter", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Solver epochs (passes over the training images) per problem before it "
              "stops unconverged (then a warning).")  # fmt: skip
@click.option("--tol", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Solver tolerance: stop when the range of the dual projected gradient is "
              "at most this (liblinear's eps).")  # fmt: skip
@device_option
@click.option("--seed", default=0, show_default=True, help="Random state of the folds or "
              "holdout and of the solver's coordinate order.")  # fmt: skip
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Model file (.h5); "
              "its folder is created if needed.")  # fmt: skip
@quiet_option
def fit(features, nets, scales, aggregate, block_norm, labels_path, train_split, difficult, loss,
        c, cs, cv, holdout, max_iter, tol, device, seed, out, quiet) -> None:  # fmt: skip
    """Fit one-vs-rest linear SVMs on the descriptors of the training split.

    Prints the C chosen for each class and writes the model, with the feature spec, the stores'
    provenance, the label choices and the training images, to --out.
    """
    from vggfeat.features import (
        design_matrix,
        feature_record,
        open_stores,
        resolve_spec,
        store_ids,
    )
    from vggfeat.labels import read_labels, resolve_split, training_targets
    from vggfeat.report import fit_table
    from vggfeat.svm import SVMClassifier, save_svm
    from vggfeat.versions import software_versions

    if c is not None and cs is not None:
        raise click.UsageError("Give --C (one fixed C) or --Cs (a grid to choose from), not both.")
    if cv is not None and holdout is not None:
        raise click.UsageError("Give --cv (folds) or --holdout (a fraction), not both.")
    grid = _parse_cs(cs)
    if grid is None and (cv is not None or holdout is not None):
        raise click.UsageError("--cv and --holdout choose C: they need --Cs.")
    _prepare_output(out)

    stores = open_stores(features)
    spec = resolve_spec(stores, split_csv(nets) if nets else None, scales, aggregate, block_norm)
    labels = read_labels(labels_path)
    for note in labels.notes:
        _note(f"note: {note}", quiet)
    ids = resolve_split(labels, train_split, part="train")
    train = labels.select(ids, role="training")
    y = training_targets(train, difficult, train_split)
    x = design_matrix(stores, ids, spec, role="training")
    trained_ids = store_ids(stores, ids, spec, role="training")
    _note(
        f"Training on {len(ids)} images x {x.shape[1]} features ({'+'.join(spec.nets)} at "
        f"{','.join(map(str, spec.scales))}, {spec.aggregate}), {len(labels.classes)} classes.",
        quiet,
    )
    if grid is not None and len(set(grid)) == 1:
        _note(f"note: --Cs holds one value ({grid[0]:g}): C is fixed, no validation runs.", quiet)

    clf = SVMClassifier(
        C=1.0 if c is None else c, Cs=grid, cv=3 if cv is None else cv, holdout=holdout,
        loss=loss, tol=tol, max_iter=max_iter, device=device, random_state=seed,
        label_format="voc", class_names=list(train.classes) if train.multilabel else None,
    )  # fmt: skip
    from vggfeat.report import FitProgress

    bar = FitProgress("fitting SVMs", disable=quiet)
    with _warnings_as_lines():
        try:
            clf.fit(x, y, progress=bar)
        finally:
            bar.close()

    method = None if clf.cv_fold_ is None else ("holdout" if holdout else "cv")
    names, counts = _problems(clf, y)
    scores = None if method is None else clf.cv_scores_
    click.echo(fit_table(names, clf.C_, counts, scores, selection=method or "cv"))
    model_spec = {
        "format": SPEC_FORMAT,
        "format_version": SPEC_VERSION,
        **feature_record(stores, spec),
        "labels": {
            "source": str(labels_path),
            "classes": [str(k) for k in clf.classes_],
            "multilabel": train.multilabel,
            "difficult": difficult if train.multilabel else "none",
            "train_split": train_split,
            "n_train": len(ids),
            "counts": counts,
            "train_ids": trained_ids,
        },
        "selection": {
            "Cs": grid,
            "method": method,
            "cv": clf.cv if method == "cv" else None,
            "holdout": holdout if method == "holdout" else None,
        },
        "versions": software_versions(),
    }
    save_svm(out, clf, model_spec)
    click.echo(f"Wrote {out}: {len(clf.classes_)} classes, {x.shape[1]}-d features.")


@svm.command("eval")
@model_option
@features_option
@labels_option
@click.option("--test-split", required=True, help="Test images: " + _SPLIT_HELP.format(
              part="test") + ". Images the model was trained on are refused.")  # fmt: skip
@click.option("--drop-training-images", is_flag=True, help="Leave out (and count) test images "
              "that the model was trained on, instead of refusing them.")  # fmt: skip
@click.option("--ap", "ap_method", type=click.Choice(["11point", "area"]), default="11point",
              show_default=True, help="AP definition (multi-label): 11-point interpolated "
              "(VOC-2007 devkit) or area under the curve (VOC-2010+).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the results as JSON here.")  # fmt: skip
@click.option("--plots", type=click.Path(file_okay=False), help="Write PNG plots here: "
              "precision-recall per class (multi-label) or a confusion matrix "
              "(multi-class).")  # fmt: skip
@quiet_option
def evaluate(model, features, labels_path, test_split, drop_training_images, ap_method,
             json_path, plots, quiet) -> None:  # fmt: skip
    """Score the test split: AP per class and mAP (multi-label, difficult images ignored), or
    recall per class, mean class recall and top-1/top-5 error (multi-class)."""
    import numpy as np

    from vggfeat.features import design_matrix
    from vggfeat.labels import read_labels, resolve_split
    from vggfeat.report import (
        evaluate_multiclass,
        evaluate_multilabel,
        plot_confusion,
        plot_pr_curves,
        results_table,
        write_json,
    )

    _prepare_output(json_path, "--json")
    with _warnings_as_lines():
        clf, spec = _load_model(model)
        fspec, stores = _model_features(model, spec, features)
        labels = read_labels(labels_path)
        for note in labels.notes:
            _note(f"note: {note}", quiet)
        ids = resolve_split(labels, test_split, part="test")
        ids = _exclude_training(model, spec, stores, fspec, ids, test_split,
                                drop_training_images, quiet)  # fmt: skip
    y = _test_targets(labels.select(ids, role="test"), spec)
    scores = clf.class_scores(design_matrix(stores, ids, fspec, role="test"))
    classes = spec["labels"]["classes"]
    if spec["labels"]["multilabel"]:
        results = evaluate_multilabel(scores, y, classes, ap_method)
    else:
        results = evaluate_multiclass(scores, y, classes)
    results = {
        **results,
        "model": str(model),
        "features": [str(f) for f in features],
        "feature_spec": fspec.to_dict(),
        "labels": str(labels_path),
        "test_split": test_split,
        "train_split": spec["labels"].get("train_split"),
    }
    click.echo(results_table(results))
    if json_path:
        write_json(json_path, results)
        _note(f"Wrote {json_path}.", quiet)
    if plots:
        if results["task"] == "multilabel":
            written = plot_pr_curves(plots, scores, y, results)
        else:
            written = [plot_confusion(Path(plots) / "confusion.png", y,
                                      np.argmax(scores, axis=1), results)]  # fmt: skip
        _note(f"Wrote {len(written)} plot(s) to {plots}.", quiet)


@svm.command()
@model_option
@features_option
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False),
              help="File of image ids to score, one per line, each the whole line (default: "
              "every image that every store extracted successfully).")  # fmt: skip
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="CSV: id, score_<class> per class, predicted.")  # fmt: skip
@quiet_option
def predict(model, features, ids_file, out, quiet) -> None:
    """Score images with a fitted model; writes per-class scores and predicted labels as CSV."""
    from vggfeat.features import design_matrix, usable_ids
    from vggfeat.labels import read_id_list
    from vggfeat.report import write_scores_csv

    _prepare_output(out)
    with _warnings_as_lines():
        clf, spec = _load_model(model)
    fspec, stores = _model_features(model, spec, features)
    if ids_file:
        ids = read_id_list(ids_file)
        if not ids:
            raise click.ClickException(f"{ids_file} lists no ids.")
    else:
        ids, skipped = usable_ids(stores, fspec.nets)
        for line in skipped:
            _note(f"note: skipped {line}.", quiet)
        if not ids:
            raise click.ClickException("No image extracted successfully in every store.")
    scores = clf.class_scores(design_matrix(stores, ids, fspec, role="requested"))
    info = spec["labels"]
    write_scores_csv(out, ids, info["classes"], scores, info["multilabel"])
    click.echo(f"Wrote scores of {len(ids)} images x {len(info['classes'])} classes to {out}.")
