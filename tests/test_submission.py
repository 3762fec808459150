"""Evaluation-server files, checked against the VOC2012 devkit's description of them.

Devkit doc, section 3.3 (classification): "a separate text file for each class ... each line
should be a detection output ... <image identifier> <confidence>", file
``results/VOC2012/Main/%s_cls_test_%s.txt`` (competition, class); section 6.3 (action):
``results/VOC2012/Action/%s_action_test_%s.txt``, lines
``<image identifier> <object index> <confidence>``.
"""

import re

import numpy as np
import pytest

from vggfeat.errors import VggfeatError
from vggfeat.submission import write_action_results, write_classification_results

NUMBER = r"-?\d+(\.\d+)?(e[-+]?\d+)?"


def test_comp2_classification_files(tmp_path):
    ids = ["2008_000001", "2008_000002", "2009_000003"]
    scores = np.array([[0.5, -1.25], [2.0, 0.0], [-0.125, 3.5]])
    paths = write_classification_results(tmp_path, ids, ["cat", "dog"], scores)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "results/VOC2012/Main/comp2_cls_test_cat.txt",
        "results/VOC2012/Main/comp2_cls_test_dog.txt",
    ]
    for k, path in enumerate(paths):
        lines = path.read_text().splitlines()
        assert len(lines) == len(ids)
        for line, id_, s in zip(lines, ids, scores[:, k]):
            assert re.fullmatch(rf"\d{{4}}_\d{{6}} {NUMBER}", line)
            name, value = line.split(" ")
            assert name == id_ and float(value) == pytest.approx(s, abs=1e-6)


def test_comp10_action_files(tmp_path):
    ids, objects = ["2010_006107", "2010_006107", "2011_000001"], [1, 3, 2]
    scores = np.arange(30, dtype=float).reshape(3, 10) / 7 - 2
    actions = [f"a{k}" for k in range(10)]
    paths = write_action_results(tmp_path, ids, objects, actions, scores)
    assert paths[4].relative_to(tmp_path).as_posix() == (
        "results/VOC2012/Action/comp10_action_test_a4.txt"
    )
    rows = [line.split(" ") for line in paths[4].read_text().splitlines()]
    assert [(r[0], int(r[1])) for r in rows] == list(zip(ids, objects))
    np.testing.assert_allclose([float(r[2]) for r in rows], scores[:, 4], atol=1e-6)
    assert all(re.fullmatch(rf"\d{{4}}_\d{{6}} \d+ {NUMBER}", " ".join(r)) for r in rows)


def test_bad_scores_are_refused(tmp_path):
    with pytest.raises(VggfeatError, match="shape"):
        write_classification_results(tmp_path, ["a"], ["cat", "dog"], np.zeros((2, 2)))
    with pytest.raises(VggfeatError, match="NaN"):
        write_classification_results(tmp_path, ["a"], ["cat"], np.array([[np.nan]]))
    with pytest.raises(VggfeatError, match="object indices"):
        write_action_results(tmp_path, ["a", "b"], [1], ["x"], np.zeros((2, 1)))
