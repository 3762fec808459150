"""Scores for the transfer protocols: VOC average precision, mean class recall, top-k error.

Labels follow the VOC devkit: ``1`` positive, ``-1`` negative, ``0`` difficult (ignored).

Ties: images are ranked by score, descending, with a *stable* sort, so images with equal scores
keep their input order. That is what the devkit's ``[sc, si] = sort(-confidence)`` does (MATLAB's
sort is stable), and it makes every result here independent of the platform's sort.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from vggfeat.errors import VggfeatError

__all__ = [
    "AP_METHODS",
    "average_precision",
    "confusion_matrix",
    "mean_class_recall",
    "precision_recall_curve",
    "top_k_error",
]

AP_METHODS = ("11point", "area")

# The recall thresholds of the VOC-2007 devkit's ``for t=0:0.1:1`` exactly as MATLAB's colon
# operator makes them: the first half as 0 + k*0.1, the second half as 1 - k*0.1. So the fourth
# is 3*0.1 = 0.30000000000000004, not the double nearest 0.3 (a recall of exactly 3/10 does not
# reach it in the devkit, and does not here).
_ELEVEN_POINTS = np.array([k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)])


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N,) float64 scores and (N,) int8 VOC labels."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(labels)
    if s.ndim != 1 or g.ndim != 1 or len(s) != len(g):
        raise VggfeatError(
            f"scores and labels must be 1-D of equal length; got shapes {s.shape} and {g.shape}."
        )
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s))
        raise VggfeatError(
            f"{len(bad)} scores are NaN or inf (e.g. at {', '.join(map(str, bad[:5]))}); "
            "fix the classifier's input features."
        )
    values = set(np.unique(g).tolist())
    if not values <= {1, -1, 0}:
        raise VggfeatError(
            f"labels must be VOC labels 1 (positive), -1 (negative), 0 (difficult); got "
            f"{sorted(values - {1, -1, 0})[:5]}."
        )
    # Positives and difficult images without negatives are a valid VOC column (AP 1), so a
    # 0/1 indicator column cannot be told apart here; callers convert indicators (0 -> -1).
    return s, g.astype(np.int8)


def _ranked_curve(s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Devkit precision and recall after each ranked non-difficult image."""
    npos = int((g > 0).sum())
    if npos == 0:
        raise VggfeatError(
            "No positive example (label 1) among the labels: AP is undefined; check the "
            "class and split."
        )
    order = np.argsort(-s, kind="stable")
    ranked = g[order]
    # Difficult images repeat the previous point of the curve (or an undefined 0/0 before the
    # first hit), which changes neither the interpolated nor the area AP; drop them.
    ranked = ranked[ranked != 0]
    tp = np.cumsum(ranked > 0)
    fp = np.cumsum(ranked < 0)
    return tp / (tp + fp), tp / npos


def precision_recall_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked image, as the VOC devkit computes them.

    Difficult images (label 0) are left out; ties keep input order (see the module docstring).

    Args:
        scores: (N,) classifier scores, higher meaning more confident.
        labels: (N,) VOC labels 1 / -1 / 0.

    Returns:
        (precision, recall), each (M,) for the M non-difficult images in rank order; recall is
        non-decreasing and ends at 1.

    Raises:
        VggfeatError: If there is no positive, or the inputs are malformed.
    """
    s, g = _check_scores_labels(scores, labels)
    return _ranked_curve(s, g)


def average_precision(
    scores: Any, labels: Any, method: Literal["11point", "area"] = "11point"
) -> float:
    """Average precision of one class, as the VOC devkit defines it.

    Args:
        scores: (N,) classifier scores, higher meaning more confident.
        labels: (N,) VOC labels: 1 positive, -1 negative, 0 difficult (ignored).
        method: ``"11point"``, the VOC-2007 devkit: mean over t = 0, 0.1, ..., 1 of the maximum
            precision at recall >= t (0 where none). ``"area"``, VOC-2010 and later (the
            devkit's ``VOCap``): area under the precision-recall curve made monotone by
            taking, at each recall, the maximum precision at any higher recall.

    Returns:
        AP in [0, 1].

    Raises:
        VggfeatError: If there is no positive, the method is unknown, or the inputs are
            malformed.
    """
    if method not in AP_METHODS:
        raise VggfeatError(f"Unknown AP method {method!r}. Valid methods: {', '.join(AP_METHODS)}.")
    prec, rec = precision_recall_curve(scores, labels)
    if method == "11point":
        # envelope[i]: max precision at any rank >= i, i.e. at recall >= rec[i].
        envelope = np.maximum.accumulate(prec[::-1])[::-1]
        first = np.searchsorted(rec, _ELEVEN_POINTS, side="left")
        picked = np.where(first < len(rec), envelope[np.minimum(first, len(rec) - 1)], 0.0)
        return float(picked.sum() / 11)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def confusion_matrix(y_true: Any, y_pred: Any, labels: Any = None) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predicted labels.
        labels: The K classes, in row order; default: the sorted union of both.
    """
    from sklearn.metrics import confusion_matrix as _cm

    t, p = _check_pair(y_true, y_pred)
    return _cm(t, p, labels=labels)


def _check_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or p.shape != t.shape:
        raise VggfeatError(
            f"y_true and y_pred must be 1-D of equal length; got shapes {t.shape} and {p.shape}."
        )
    if len(t) == 0:
        raise VggfeatError("y_true is empty: nothing to score.")
    return t, p


def mean_class_recall(y_true: Any, y_pred: Any) -> float:
    """Mean over the classes present in ``y_true`` of the fraction of them predicted right.

    This is the mean of the diagonal of the row-normalised confusion matrix (the Caltech
    protocol's score; scikit-learn calls it balanced accuracy). Predicted classes absent from
    ``y_true`` only count as errors.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predicted labels.
    """
    t, p = _check_pair(y_true, y_pred)
    classes, inverse = np.unique(t, return_inverse=True)
    hit = np.bincount(inverse, weights=(t == p), minlength=len(classes))
    return float(np.mean(hit / np.bincount(inverse, minlength=len(classes))))


def top_k_error(scores: Any, y_true: Any, k: int = 1) -> float:
    """Fraction of rows whose true class is not among the ``k`` highest scores.

    Ties between classes are broken by class index (lower first), as a stable sort of the
    negated scores does.

    Args:
        scores: (N, K) class scores.
        y_true: (N,) true class indices in ``[0, K)``.
        k: 1 for top-1 error, 5 for top-5 error.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(y_true)
    if s.ndim != 2 or t.ndim != 1 or len(t) != len(s) or len(s) == 0:
        raise VggfeatError(
            f"scores must be (N, K) and y_true (N,) with N > 0; got {s.shape} and {t.shape}."
        )
    if not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= s.shape[1]:
        raise VggfeatError(
            f"y_true must hold class indices in [0, {s.shape[1]}) (columns of scores)."
        )
    if not 1 <= int(k) <= s.shape[1]:
        raise VggfeatError(f"k={k} is out of range: use 1 <= k <= {s.shape[1]} (classes).")
    if not np.isfinite(s).all():
        raise VggfeatError("scores contain NaN or inf; fix the classifier's input.")
    top = np.argsort(-s, axis=1, kind="stable")[:, : int(k)]
    return float(1.0 - np.mean((top == t[:, None]).any(axis=1)))
