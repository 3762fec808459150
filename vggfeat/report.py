"""Presentation of SVM results: scoring summaries, text tables, JSON, CSV and plots.

Results are plain JSON-serialisable dicts, so the table, the JSON file and the plots all show the
same numbers. Plots use matplotlib's object API (no pyplot state), so they work headless.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.files import publish_bytes

__all__ = [
    "FitProgress",
    "evaluate_multiclass",
    "evaluate_multilabel",
    "fit_table",
    "format_table",
    "plot_confusion",
    "plot_pr_curves",
    "results_table",
    "write_json",
    "write_scores_csv",
]


class FitProgress:
    """A tqdm bar (on stderr) driven by ``SVMClassifier.fit``'s ``progress(done, total)``."""

    def __init__(self, desc: str, disable: bool = False) -> None:
        self.desc, self.disable, self.bar = desc, disable, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:  # made on the first report, when the total is known
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, total=total, unit="step", disable=self.disable,
                            file=sys.stderr)  # fmt: skip
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


# --------------------------------------------------------------------------- scoring


def evaluate_multilabel(
    scores: np.ndarray, y: np.ndarray, classes: Sequence[str], method: str = "11point"
) -> dict[str, Any]:
    """Per-class AP and mAP; images labelled 0 (difficult) are ignored.

    Args:
        scores: (N, K) SVM decision values.
        y: (N, K) labels in {1, -1, 0}.
        classes: (K,) class names.
        method: '11point' (VOC-2007 devkit) or 'area' (VOC-2010 and later).
    """
    from vggfeat.metrics import average_precision

    per_class = []
    for k, name in enumerate(classes):
        col = y[:, k]
        positive = int((col == 1).sum())
        # AP is undefined without a positive: reported as None and left out of the mean.
        ap = float(average_precision(scores[:, k], col, method=method)) if positive else None
        per_class.append(
            {
                "class": name,
                "ap": ap,
                "positive": positive,
                "negative": int((col == -1).sum()),
                "difficult": int((col == 0).sum()),
            }
        )
    scored = [c["ap"] for c in per_class if c["ap"] is not None]
    return {
        "task": "multilabel",
        "metric": "average precision",
        "ap_method": method,
        "difficult": "ignored",
        "n_images": len(y),
        "per_class": per_class,
        "mAP": float(np.mean(scored)) if scored else None,
        "classes_scored": len(scored),
    }


def _per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(k):
        members = y_true == c
        out.append(float((y_pred[members] == c).mean()) if members.any() else None)
    return out


def evaluate_multiclass(
    scores: np.ndarray, y_true: np.ndarray, classes: Sequence[str], top_k: int = 5
) -> dict[str, Any]:
    """Per-class recall, mean class recall and top-1 / top-k error.

    Args:
        scores: (N, K) SVM decision values; column k is class k.
        y_true: (N,) true class indices.
        classes: (K,) class names.
        top_k: The k of the second top-k error. Its key is ``top{top_k}_error`` whatever K, so
            scripts can rely on it; with K <= k every class is in the top k and it is 0.
    """
    from vggfeat.metrics import mean_class_recall, top_k_error

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.argmax(scores, axis=1)
    recalls = _per_class_recall(y_true, y_pred, len(classes))
    k = int(top_k)
    return {
        "task": "multiclass",
        "metric": "recall",
        "n_images": len(y_true),
        "per_class": [
            {"class": name, "recall": r, "n": int((y_true == c).sum())}
            for c, (name, r) in enumerate(zip(classes, recalls))
        ],
        "mean_class_recall": float(mean_class_recall(y_true, y_pred)),
        "top1_error": float(top_k_error(scores, y_true, 1)),
        f"top{k}_error": float(top_k_error(scores, y_true, min(k, len(classes)))),
        "top_k": k,
    }


# --------------------------------------------------------------------------- text


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def results_table(results: Mapping[str, Any]) -> str:
    """The per-class table and the mean line(s) of an ``evaluate_*`` result, percentages."""
    if results["task"] == "multilabel":
        rows = [
            [c["class"], _percent(c["ap"]), c["positive"], c["negative"], c["difficult"]]
            for c in results["per_class"]
        ]
        scored, k = results["classes_scored"], len(results["per_class"])
        mean = "mAP" if scored == k else f"mAP ({scored} of {k} classes with positives)"
        rows.append([mean, _percent(results["mAP"]), "", "", ""])
        headers = ["class", f"AP % ({results['ap_method']})", "pos", "neg", "difficult"]
        return format_table(headers, rows)
    rows = [[c["class"], _percent(c["recall"]), c["n"]] for c in results["per_class"]]
    k = results["top_k"]
    rows.append(["mean class recall", _percent(results["mean_class_recall"]), ""])
    rows.append(["top-1 error", _percent(results["top1_error"]), ""])
    if k != 1:
        rows.append([f"top-{k} error", _percent(results[f"top{k}_error"]), ""])
    return format_table(["class", "recall %", "images"], rows)


def fit_table(
    classes: Sequence[str],
    chosen_c: Sequence[float],
    counts: Mapping[str, Mapping[str, int]],
    cv_scores: np.ndarray | None = None,
    selection: str = "cv",
) -> str:
    """Per class: training counts, the chosen C and (when C was selected) its mean validation AP.

    Args:
        classes: (K,) names of the one-vs-rest problems (rows).
        chosen_c: (K,) C of each problem.
        counts: Per name, the ``positive``, ``negative`` and ``difficult`` (left out) examples
            the problem was trained on.
        cv_scores: (K, M) validation AP per C, or None when no C was selected.
        selection: How C was selected, 'cv' or 'holdout' (the AP column's header).
    """
    difficult = any(c["difficult"] for c in counts.values())
    headers = ["class", "pos", "neg", *(["difficult"] if difficult else []), "C"]
    headers += [f"{selection} AP"] if cv_scores is not None else []
    rows = []
    for k, name in enumerate(classes):
        row = [name, counts[name]["positive"], counts[name]["negative"]]
        row += [counts[name]["difficult"]] if difficult else []
        row.append(f"{chosen_c[k]:g}")
        if cv_scores is not None:
            row.append(f"{np.nanmax(cv_scores[k]):.4f}")
        rows.append(row)
    return format_table(headers, rows)


def write_json(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Write results as indented JSON, atomically."""
    publish_bytes(Path(path), json.dumps(results, indent=2, sort_keys=False) + "\n")


def write_scores_csv(
    path: str | os.PathLike,
    ids: Sequence[str],
    classes: Sequence[str],
    scores: np.ndarray,
    multilabel: bool,
) -> None:
    """Per-image scores and predictions as CSV, atomically.

    Columns: ``id``, ``score_<class>`` for each class, then ``predicted``: the top class
    (multi-class) or the ';'-joined classes with a positive score (multi-label).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", *(f"score_{c}" for c in classes), "predicted"])
    for id_, row in zip(ids, scores):
        if multilabel:
            predicted = ";".join(c for c, s in zip(classes, row) if s > 0)
        else:
            predicted = classes[int(np.argmax(row))]
        writer.writerow([id_, *(f"{s:.6g}" for s in row), predicted])
    publish_bytes(Path(path), buf.getvalue())


# --------------------------------------------------------------------------- plots


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "class"


def _file_stems(names: Sequence[str]) -> list[str]:
    """One distinct, file-system-safe stem per name.

    A name that had to be changed to be safe (``dog adult``, ``dog/adult``), or whose safe form
    collides with another's even ignoring case, gets a short hash of the name, so two classes
    never share a file.
    """
    safe = [_safe_name(n) for n in names]
    seen = Counter(s.lower() for s in safe)
    return [
        s if s == n and seen[s.lower()] == 1 else f"{s}-{hashlib.sha1(n.encode()).hexdigest()[:8]}"
        for n, s in zip(names, safe)
    ]


def _save(fig: Any, path: Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    publish_bytes(path, buf.getvalue())
    return path


def plot_pr_curves(
    folder: str | os.PathLike,
    scores: np.ndarray,
    y: np.ndarray,
    results: Mapping[str, Any],
) -> list[Path]:
    """One precision-recall PNG per class with positives, ``pr_<class>.png``, titled with its AP.

    Class names that are not safe file names (spaces, '/', ...) or that collide get a short
    hash of the name: ``pr_dog_adult-1a2b3c4d.png``.

    Args:
        folder: Where to write the PNGs (created if needed).
        scores: (N, K) decision values.
        y: (N, K) labels in {1, -1, 0}; 0 is ignored.
        results: The :func:`evaluate_multilabel` result (for names, APs and the AP method).
    """
    from matplotlib.figure import Figure

    from vggfeat.metrics import precision_recall_curve

    folder = Path(folder)
    paths = []
    stems = _file_stems([entry["class"] for entry in results["per_class"]])
    for k, entry in enumerate(results["per_class"]):
        if entry["ap"] is None:  # no positive: no curve
            continue
        precision, recall = precision_recall_curve(scores[:, k], y[:, k])
        fig = Figure(figsize=(5, 4.5))
        ax = fig.add_subplot()
        ax.plot(recall, precision, drawstyle="steps-post", linewidth=1.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        ax.set_title(
            f"{entry['class']}: AP {_percent(entry['ap'])}% ({results['ap_method']})\n"
            f"{entry['positive']} positives, {entry['difficult']} difficult ignored"
        )
        fig.tight_layout()
        paths.append(_save(fig, folder / f"pr_{stems[k]}.png"))
    return paths


def plot_confusion(
    path: str | os.PathLike,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    results: Mapping[str, Any],
) -> Path:
    """Row-normalised confusion matrix PNG (rows: true class), titled with mean class recall.

    Args:
        path: The PNG to write.
        y_true: (N,) true class indices.
        y_pred: (N,) predicted class indices.
        results: The :func:`evaluate_multiclass` result (for names and the mean).
    """
    from matplotlib.figure import Figure

    from vggfeat.metrics import confusion_matrix

    classes = [c["class"] for c in results["per_class"]]
    k = len(classes)
    counts = confusion_matrix(y_true, y_pred, labels=np.arange(k)).astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    matrix = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    # About 0.16 inch (11.5 pt) per class row, so 6 pt names fit; capped for huge class sets.
    side = min(max(6.0, 0.16 * k + 3), 45.0)
    font = 9.0 if k <= 30 else 6.0
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"Confusion matrix (rows normalised)\nmean class recall "
        f"{_percent(results['mean_class_recall'])}%, {results['n_images']} images, {k} classes"
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return _save(fig, Path(path), dpi=100 if k <= 30 else 150)
