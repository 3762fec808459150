"""Result summaries, tables, JSON/CSV files and plots of vggfeat.report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vggfeat.metrics import average_precision, mean_class_recall, top_k_error
from vggfeat.report import (
    FitProgress,
    evaluate_multiclass,
    evaluate_multilabel,
    fit_table,
    format_table,
    plot_confusion,
    plot_pr_curves,
    results_table,
    write_json,
    write_scores_csv,
)


def test_format_table_aligns_columns():
    text = format_table(["class", "AP"], [["cat", "91.5"], ["aeroplane", "7.0"]])
    assert text.splitlines() == [
        "class        AP",
        "---------  ----",
        "cat        91.5",
        "aeroplane   7.0",
    ]


def test_multilabel_summary_skips_classes_without_positives(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([[1, -1, -1], [-1, 0, -1], [1, -1, -1], [-1, -1, 0], [-1, 1, -1], [1, -1, -1]])
    scores = rng.normal(size=(6, 3))
    results = evaluate_multilabel(scores, y, ["a", "b", "c"], "area")
    aps = [average_precision(scores[:, k], y[:, k], "area") for k in range(2)]
    assert [c["ap"] for c in results["per_class"]] == [*aps, None]
    assert results["mAP"] == pytest.approx(np.mean(aps)) and results["classes_scored"] == 2
    assert results["per_class"][1] == {"class": "b", "ap": aps[1], "positive": 1,
                                       "negative": 4, "difficult": 1}  # fmt: skip
    table = results_table(results)
    assert "AP % (area)" in table and "mAP (2 of 3 classes with positives)" in table
    assert table.splitlines()[4].split()[:2] == ["c", "-"]
    written = plot_pr_curves(tmp_path, scores, y, results)
    assert [p.name for p in written] == ["pr_a.png", "pr_b.png"]
    json.dumps(results)  # JSON-serialisable as is


def test_multiclass_summary(tmp_path):
    scores = np.array([[3, 1, 0, 0], [0, 2, 1, 0], [2, 1, 0, 0], [0, 0, 1, 2], [1, 0, 0, 3.0]])
    y_true = np.array([0, 1, 1, 3, 3])  # class 2 has no test image
    results = evaluate_multiclass(scores, y_true, ["w", "x", "y", "z"])
    assert [c["recall"] for c in results["per_class"]] == [1.0, 0.5, None, 1.0]
    y_pred = scores.argmax(axis=1)
    assert (
        results["mean_class_recall"] == pytest.approx(mean_class_recall(y_true, y_pred)) == 2.5 / 3
    )
    assert results["top1_error"] == pytest.approx(top_k_error(scores, y_true, 1)) == 0.2
    # A stable key whatever K: with 4 classes every class is in the top 5, so the error is 0.
    assert results["top_k"] == 5 and results["top5_error"] == 0.0 and "top4_error" not in results
    two = evaluate_multiclass(scores, y_true, list("wxyz"), top_k=2)
    assert two["top2_error"] == top_k_error(scores, y_true, 2) and two["top_k"] == 2
    table = results_table(results)
    assert "mean class recall      83.3" in table.splitlines() and "top-5 error" in table
    png = plot_confusion(tmp_path / "cm" / "confusion.png", y_true, y_pred, results)
    assert png.stat().st_size > 5_000
    assert not list(png.parent.glob(".*.tmp"))


def test_fit_table():
    counts = {"a": {"positive": 3, "negative": 5, "difficult": 0},
              "b": {"positive": 2, "negative": 6, "difficult": 1}}  # fmt: skip
    text = fit_table(["a", "b"], [0.1, 10.0], counts, np.array([[0.5, 0.7], [0.9, 0.2]]))
    assert text.splitlines()[0].split() == ["class", "pos", "neg", "difficult", "C", "cv", "AP"]
    assert text.splitlines()[3].split() == ["b", "2", "6", "1", "10", "0.9000"]
    counts["b"]["difficult"] = 0
    assert fit_table(["a", "b"], [1.0, 1.0], counts).splitlines()[2].split() == ["a", "3", "5", "1"]
    held = fit_table(["a", "b"], [0.1, 10.0], counts, np.array([[0.5, 0.7], [0.9, 0.2]]),
                     selection="holdout")  # fmt: skip
    assert held.splitlines()[0].split() == ["class", "pos", "neg", "C", "holdout", "AP"]


def test_pr_plot_names_never_collide(tmp_path):
    """Regression: 'dog adult', 'dog/adult' and 'dog_adult' all wrote pr_dog_adult.png."""
    names = ["dog adult", "dog/adult", "dog_adult", "Cat", "cat", "bird"]
    y = np.tile([1, -1, -1, 1], (len(names), 1)).T
    scores = np.random.default_rng(1).normal(size=y.shape)
    results = evaluate_multilabel(scores, y, names)
    written = plot_pr_curves(tmp_path, scores, y, results)
    assert len(written) == len(set(p.name.lower() for p in written)) == len(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert tmp_path / "pr_bird.png" in written and tmp_path / "pr_dog_adult.png" not in written


def test_json_and_scores_csv(tmp_path):
    write_json(tmp_path / "r.json", {"mAP": 0.5, "per_class": []})
    assert json.loads((tmp_path / "r.json").read_text()) == {"mAP": 0.5, "per_class": []}
    scores = np.array([[0.5, -1.0, 2.0], [-0.2, -0.1, -3.0]])
    write_scores_csv(tmp_path / "mc.csv", ["a/1.jpg", "b/2.jpg"], ["x", "y", "z"], scores, False)
    rows = list(csv.reader((tmp_path / "mc.csv").open()))
    assert rows[0] == ["id", "score_x", "score_y", "score_z", "predicted"]
    assert rows[1] == ["a/1.jpg", "0.5", "-1", "2", "z"] and rows[2][-1] == "y"
    write_scores_csv(tmp_path / "ml.csv", ["a", "b"], ["x", "y", "z"], scores, True)
    rows = list(csv.reader((tmp_path / "ml.csv").open()))
    assert rows[1][-1] == "x;z" and rows[2][-1] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mc.csv", "ml.csv", "r.json"]


def test_fit_progress_bar_follows_a_real_fit_to_its_total(capsys):
    from vggfeat.svm import SVMClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    bar = FitProgress("SVMs D, seed0")
    SVMClassifier(Cs=[0.1, 1.0], holdout=0.2, random_state=0).fit(x, y, progress=bar)
    bar.close()
    assert bar.bar is not None and bar.bar.n == bar.bar.total > 0
    err = capsys.readouterr().err
    assert "SVMs D, seed0" in err and "100%" in err
    quiet = FitProgress("quiet", disable=True)
    SVMClassifier(Cs=[1.0], random_state=0).fit(x, y, progress=quiet)
    quiet.close()
    assert "quiet" not in capsys.readouterr().err
