"""vggfeat.metrics against literal transcriptions of the VOC devkit and against scikit-learn."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score

from vggfeat.errors import VggfeatError
from vggfeat.metrics import (
    average_precision,
    confusion_matrix,
    mean_class_recall,
    precision_recall_curve,
    top_k_error,
)

VOC = Path(__file__).parent / "data" / "voc2007"
CLASSES = ("aeroplane", "bottle", "chair")  # VOC-2007 test labels; bottle and chair have many 0s


def read_voc_labels(cls: str) -> np.ndarray:
    """The gt column of ``<cls>_test.txt`` ('000001 -1' lines), as the devkit's textread reads it."""
    lines = (VOC / f"{cls}_test.txt").read_text().split("\n")
    return np.array([int(line.split()[1]) for line in lines if line.strip()])


# ---- The devkit, transcribed line by line (MATLAB semantics spelled out) -----------------------


def matlab_colon(a: float, d: float, b: float) -> list[float]:
    """MATLAB's a:d:b: first half a + k*d, second half b - (n-k)*d, middle (a+b)/2."""
    n = int(math.floor((b - a) / d + 1e-10))
    v = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        v[k] = a + k * d
        v[n - k] = b - k * d
    if n % 2 == 0:
        v[n // 2] = (a + b) / 2
    return v


def matlab_max(values: list[float]) -> float | None:
    """MATLAB's max: NaNs ignored; [] for an empty input (None here); NaN if all are NaN."""
    if not values:
        return None
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def devkit_pr(confidence: np.ndarray, gt: np.ndarray) -> tuple[list[float], list[float]]:
    """VOCevalcls: [sc,si]=sort(-confidence); tp=gt(si)>0; fp=gt(si)<0; cumsum; rec; prec."""
    si = sorted(range(len(confidence)), key=lambda i: -confidence[i])  # stable, like MATLAB
    tp, fp = [], []
    ctp = cfp = 0
    for i in si:
        ctp += gt[i] > 0
        cfp += gt[i] < 0
        tp.append(ctp)
        fp.append(cfp)
    npos = sum(1 for g in gt if g > 0)
    rec = [t / npos for t in tp]
    prec = [t / (f + t) if f + t > 0 else math.nan for t, f in zip(tp, fp)]  # 0/0 = NaN
    return rec, prec


def devkit_11point(confidence: np.ndarray, gt: np.ndarray) -> float:
    """VOC-2007 VOCevalcls: ap=0; for t=0:0.1:1, p=max(prec(rec>=t)); if isempty(p), p=0; end;
    ap=ap+p/11; end."""
    rec, prec = devkit_pr(confidence, gt)
    ap = 0.0
    for t in matlab_colon(0, 0.1, 1):
        p = matlab_max([p for r, p in zip(rec, prec) if r >= t])
        if p is None:
            p = 0.0
        ap = ap + p / 11
    return ap


def devkit_vocap(confidence: np.ndarray, gt: np.ndarray) -> float:
    """VOC-2010+ VOCap: mrec=[0;rec;1]; mpre=[0;prec;0]; back-to-front max; sum over changes."""
    rec, prec = devkit_pr(confidence, gt)
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = matlab_max([mpre[i], mpre[i + 1]])
    idx = [i + 1 for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i]]
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in idx)


# ---- average_precision -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_ap_equals_devkit_on_voc2007_labels(cls):
    gt = read_voc_labels(cls)
    assert len(gt) == 4952 and set(np.unique(gt)) <= {-1, 0, 1}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        # A weak classifier: positives score a bit higher, so the curve is not trivial.
        scores = rng.standard_normal(len(gt)) + 1.5 * (gt > 0)
        assert average_precision(scores, gt, "11point") == pytest.approx(
            devkit_11point(scores, gt), abs=1e-12
        )
        assert average_precision(scores, gt, "area") == pytest.approx(
            devkit_vocap(scores, gt), abs=1e-12
        )


@pytest.mark.parametrize("cls", CLASSES)
def test_ap_ties_follow_the_devkits_stable_sort(cls):
    gt = read_voc_labels(cls)
    rng = np.random.default_rng(7)
    scores = np.round(rng.standard_normal(len(gt)) + 1.0 * (gt > 0), 1)  # many ties
    assert len(np.unique(scores)) < len(scores) / 20
    for method, ref in (("11point", devkit_11point), ("area", devkit_vocap)):
        assert average_precision(scores, gt, method) == pytest.approx(ref(scores, gt), abs=1e-12)
    # Deterministic: ties are broken by input order, so reversing the input changes the result.
    forward = average_precision(scores, gt, "area")
    assert average_precision(scores[::-1], gt[::-1], "area") != forward


def test_eleven_point_thresholds_are_matlabs():
    # 0:0.1:1 in MATLAB: the 4th threshold is 3*0.1 = 0.30000000000000004, so a recall of exactly
    # 3/10 does not reach it. 10 positives, the first 3 ranked on top, then a negative, ...
    gt = np.array([1, 1, 1, -1] + [-1] * 6 + [1] * 7)
    scores = -np.arange(len(gt), dtype=float)
    assert matlab_colon(0, 0.1, 1)[3] == 3 * 0.1 != 0.3
    ours = average_precision(scores, gt, "11point")
    assert ours == pytest.approx(devkit_11point(scores, gt), abs=1e-15)
    # With the nearest doubles k/10 as thresholds the answer would differ.
    prec, rec = precision_recall_curve(scores, gt)
    naive = np.mean([max([p for p, r in zip(prec, rec) if r >= k / 10], default=0.0)
                     for k in range(11)])  # fmt: skip
    assert abs(naive - ours) > 0.01


def test_ap_known_values():
    gt = np.array([1, -1, 1, -1, -1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])  # hits at ranks 1 and 3: P = 1, 2/3
    assert average_precision(scores, gt, "area") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 11-point: recall >= 0..0.5 -> max precision 1 (6 thresholds), 0.6..1 -> 2/3 (5).
    assert average_precision(scores, gt, "11point") == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert average_precision([3, 2, 1], [1, 1, -1]) == 1.0
    assert average_precision([1, 2, 3], [1, -1, -1], "area") == pytest.approx(1 / 3)


def test_area_ap_against_sklearn():
    rng = np.random.default_rng(0)
    gt = np.where(rng.random(500) < 0.2, 1, -1)
    scores = rng.standard_normal(500) + gt
    ours = average_precision(scores, gt, "area")
    theirs = average_precision_score(gt > 0, scores)
    # scikit-learn does not interpolate: the devkit's monotone envelope can only add area.
    assert ours >= theirs - 1e-12
    assert ours - theirs > 1e-4  # and does, for a non-monotone random curve
    # Where every hit's precision is at least every later one's, the two agree exactly.
    gt = np.array([1, 1, -1, 1, -1, -1, 1, -1, -1, -1])
    scores = np.linspace(1, 0, len(gt))
    assert average_precision(scores, gt, "area") == pytest.approx(
        average_precision_score(gt > 0, scores), abs=1e-12
    )


def test_difficult_images_are_ignored():
    gt = read_voc_labels("bottle")
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(len(gt)) + (gt > 0)
    keep = gt != 0
    for method in ("11point", "area"):
        full = average_precision(scores, gt, method)
        assert full == pytest.approx(average_precision(scores[keep], gt[keep], method), abs=1e-15)
        moved = scores.copy()
        moved[~keep] = 100.0  # difficult images on top change nothing
        assert average_precision(moved, gt, method) == pytest.approx(full, abs=1e-15)
        # As positives they would count.
        assert average_precision(scores, np.where(keep, gt, 1), method) != pytest.approx(full)


def test_precision_recall_curve_matches_devkit():
    gt = read_voc_labels("chair")
    rng = np.random.default_rng(5)
    scores = rng.standard_normal(len(gt)) + (gt > 0)
    precision, recall = precision_recall_curve(scores, gt)
    rec, prec = devkit_pr(scores, gt)
    keep = [i for i, g in enumerate(sorted(range(len(gt)), key=lambda i: -scores[i])) if gt[g]]
    assert len(precision) == len(recall) == int((gt != 0).sum())
    np.testing.assert_allclose(recall, np.array(rec)[keep], rtol=0, atol=1e-15)
    np.testing.assert_allclose(precision, np.array(prec)[keep], rtol=0, atol=1e-15)
    assert recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2], [-1, -1], "No positive"),
        ([0.1, 0.2], [-1, 0], "No positive"),
        ([0.1, 0.2], [1, 2], "VOC labels"),
        ([0.1, np.nan], [1, -1], "NaN"),
        ([0.1, 0.2, 0.3], [1, -1], "equal length"),
    ],
)
def test_ap_errors(scores, labels, match):
    with pytest.raises(VggfeatError, match=match):
        average_precision(scores, labels)


def test_ap_without_negatives_is_one():
    """Positives and difficult images but no negative: every ranked image is a hit, AP 1."""
    for method in ("11point", "area"):
        assert average_precision([0.1, 0.9, 0.5], [1, 0, 1], method) == 1.0
        assert average_precision([0.3], [1], method) == 1.0
    precision, recall = precision_recall_curve([0.1, 0.9, 0.5], [1, 0, 1])
    assert precision.tolist() == [1.0, 1.0] and recall.tolist() == [0.5, 1.0]


def test_ap_unknown_method():
    with pytest.raises(VggfeatError, match="Valid methods: 11point, area"):
        average_precision([1.0, 0.0], [1, -1], method="trapezoid")


# ---- mean class recall, confusion matrix, top-k --------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_mean_class_recall_equals_balanced_accuracy(seed):
    rng = np.random.default_rng(seed)
    names = np.array(["bonsai", "cougar", "ewer", "faces", "gramophone"])
    y_true = names[rng.integers(0, 4, 200)]  # 'gramophone' only ever predicted
    y_pred = np.where(rng.random(200) < 0.6, y_true, names[rng.integers(0, 5, 200)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted-only class
        expected = balanced_accuracy_score(y_true, y_pred)
    assert mean_class_recall(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_mean_class_recall_by_hand():
    # Class 0: 1 of 2 right; class 1: 3 of 3; class 2: 0 of 1 -> (0.5 + 1 + 0) / 3.
    assert mean_class_recall([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 0]) == pytest.approx(0.5)
    cm = confusion_matrix([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 0], labels=[0, 1, 2])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 3, 0], [1, 0, 0]])
    with pytest.raises(VggfeatError, match="equal length"):
        mean_class_recall([0, 1], [0])


def test_top_k_error_by_hand():
    scores = np.array(
        [
            [0.1, 0.5, 0.2, 0.9],  # ranking 3, 1, 2, 0
            [0.8, 0.1, 0.3, 0.2],  # ranking 0, 2, 3, 1
            [0.3, 0.3, 0.1, 0.0],  # tie: class 0 before class 1
        ]
    )
    y = np.array([1, 0, 1])
    # Top-1: row 0 wrong, row 1 right, row 2 wrong (the tie ranks class 0 first).
    assert top_k_error(scores, y, 1) == pytest.approx(2 / 3)
    assert top_k_error(scores, y, 2) == pytest.approx(0.0)
    # True classes 0, 1, 2 rank 4th, 4th and 3rd.
    assert top_k_error(scores, np.array([0, 1, 2]), 3) == pytest.approx(2 / 3)
    assert top_k_error(scores, np.array([0, 1, 2]), 4) == 0.0


def test_top_k_error_top1_is_argmax_error():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((300, 10))
    y = rng.integers(0, 10, 300)
    assert top_k_error(scores, y, 1) == pytest.approx(np.mean(scores.argmax(1) != y))
    assert top_k_error(scores, y, 5) < top_k_error(scores, y, 1)


@pytest.mark.parametrize(("k", "y", "match"), [(0, [0], "out of range"), (3, [0], "out of range"),
                                                (1, [2], r"\[0, 2\)"), (1, [0, 1], r"y_true \(N,\)")])  # fmt: skip
def test_top_k_error_errors(k, y, match):
    with pytest.raises(VggfeatError, match=match):
        top_k_error(np.array([[0.1, 0.2]]), np.array(y), k)
