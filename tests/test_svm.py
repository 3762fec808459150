"""vggfeat.svm: solutions equal liblinear's, C selection, scikit-learn conventions, model files."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from vggfeat.errors import VggfeatError
from vggfeat.metrics import average_precision
from vggfeat.svm import (
    DEFAULT_CS,
    ModelFormatWarning,
    SVMClassifier,
    SVMInputError,
    load_svm,
    save_svm,
)

TIGHT = {"tol": 1e-6, "max_iter": 100_000}
VOC = {"label_format": "voc"}  # make_problem's labels are VOC's 1 / -1 / 0


def make_problem(n=160, dim=24, classes=3, seed=0, difficult=0.0, signal=1.0):
    """Non-negative, L2-normalised features and (n, classes) VOC labels (1 / -1 / 0)."""
    rng = np.random.default_rng(seed)
    Y = np.where(rng.random((n, classes)) < 0.3, 1, -1)
    protos = rng.random((classes, dim)) * (rng.random((classes, dim)) < 0.3)
    X = np.abs(rng.standard_normal((n, dim)) + 0.5) + signal * (Y > 0) @ protos
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Y[(Y > 0) & (rng.random(Y.shape) < difficult)] = 0
    return X, Y.astype(np.int8)


def liblinear(X, y, C, loss="squared_hinge", **kw):
    """The reference: LinearSVC's dual coordinate descent, run to a tiny tolerance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LinearSVC(C=C, loss=loss, dual=True, tol=1e-10, max_iter=1_000_000, **kw).fit(
            X.astype(np.float64), y
        )


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b)


# ---- Equality with liblinear -------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["squared_hinge", "hinge"])
@pytest.mark.parametrize("C", [0.1, 3.0])
@pytest.mark.parametrize(
    "bias", [{}, {"intercept_scaling": 2.5}, {"fit_intercept": False}], ids=["s1", "s2.5", "nob"]
)
def test_solution_equals_liblinear(loss, C, bias):
    X, Y = make_problem(difficult=0.1)
    ours = SVMClassifier(C=C, loss=loss, **bias, **TIGHT, **VOC).fit(X, Y)
    for k in range(Y.shape[1]):
        rows = Y[:, k] != 0  # difficult rows are left out of that class's problem
        ref = liblinear(X[rows], Y[rows, k], C, loss, **bias)
        assert rel_err(ours.coef_[k], ref.coef_[0]) < 1e-3
        ref_b = float(np.atleast_1d(ref.intercept_)[0])
        assert ours.intercept_[k] == pytest.approx(ref_b, abs=1e-3 * max(1.0, abs(ref_b)))
        if bias.get("fit_intercept") is False:
            assert ours.intercept_[k] == 0.0


def test_default_tolerance_gives_liblinears_aps():
    X, Y = make_problem(n=800, dim=60, classes=4, seed=1, difficult=0.05, signal=0.5)
    X, Xt, Y, Yt = X[:400], X[400:], Y[:400], Y[400:]
    ours = SVMClassifier(C=1.0, **VOC).fit(X, Y)  # tol=1e-4, liblinear's default, on both sides
    scores = ours.decision_function(Xt)
    for k in range(4):
        rows = Y[:, k] != 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = LinearSVC(C=1.0, dual=True).fit(X[rows], Y[rows, k])
        ap_ours = average_precision(scores[:, k], Yt[:, k], "area")
        ap_ref = average_precision(ref.decision_function(Xt), Yt[:, k], "area")
        assert abs(ap_ours - ap_ref) < 0.002
        assert 0.4 < ap_ref < 0.999  # a non-trivial problem


def test_multiclass_is_one_vs_rest_like_liblinear():
    rng = np.random.default_rng(4)
    X, _ = make_problem(n=150, seed=4)
    names = np.array(["cat", "dog", "emu", "yak"])
    y = names[rng.integers(0, 4, len(X))]
    ours = SVMClassifier(C=0.5, **TIGHT).fit(X, y)
    ref = liblinear(X, y, 0.5)  # multi-class LinearSVC: one-vs-rest, classes sorted
    assert list(ours.classes_) == list(ref.classes_) == list(names)
    assert rel_err(ours.coef_, ref.coef_) < 1e-3
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.decision_function(X).shape == (150, 4)


def test_binary_y_is_one_problem_like_liblinear():
    """A binary y is one problem, positive class classes_[1], with a 1-D decision function."""
    X, Y = make_problem(n=120, classes=1, seed=5)
    y = np.where(Y[:, 0] > 0, "pos", "neg")
    clf = SVMClassifier(C=1.0, **TIGHT).fit(X, y)
    ref = liblinear(X, y, 1.0)
    assert list(clf.classes_) == list(ref.classes_) == ["neg", "pos"]
    assert clf.coef_.shape == ref.coef_.shape == (1, 24) and clf.C_.shape == (1,)
    scores = clf.decision_function(X)
    assert scores.shape == (120,)
    np.testing.assert_allclose(scores, ref.decision_function(X), atol=1e-3)
    np.testing.assert_array_equal(clf.predict(X), ref.predict(X))
    np.testing.assert_array_equal(clf.class_scores(X), np.column_stack([-scores, scores]))
    assert clf.score(X, y) == pytest.approx(ref.score(X, y))


# ---- Choosing C ----------------------------------------------------------------------------------


def test_cross_validation_equals_liblinear_on_the_same_folds():
    X, Y = make_problem(n=180, dim=30, seed=6, difficult=0.05, signal=0.5)
    Cs = [0.01, 0.1, 1.0, 10.0]
    clf = SVMClassifier(Cs=Cs, cv=3, **TIGHT, **VOC).fit(X, Y)
    assert clf.cv_fold_.shape == (180,) and set(clf.cv_fold_) == {0, 1, 2}
    np.testing.assert_array_equal(clf.Cs_, Cs)
    expected = np.zeros((3, len(Cs)))
    for k in range(3):
        for f in range(3):
            tr = (clf.cv_fold_ != f) & (Y[:, k] != 0)
            va = clf.cv_fold_ == f
            for c, C in enumerate(Cs):
                ref = liblinear(X[tr], Y[tr, k], C)
                expected[k, c] += (
                    average_precision(ref.decision_function(X[va]), Y[va, k], "area") / 3
                )
    np.testing.assert_allclose(clf.cv_scores_, expected, atol=1e-6)
    best = np.array(Cs)[len(Cs) - 1 - np.argmax(expected[:, ::-1], axis=1)]  # ties: larger C
    np.testing.assert_array_equal(clf.C_, best)
    # The refit is the full-data fit at each class's C.
    for k in range(3):
        rows = Y[:, k] != 0
        ref = liblinear(X[rows], Y[rows, k], best[k])
        assert rel_err(clf.coef_[k], ref.coef_[0]) < 1e-3


def test_ties_go_to_the_larger_C():
    X, Y = make_problem(n=90, classes=2, seed=7, signal=20.0)  # separable: AP 1 at every C
    clf = SVMClassifier(Cs=[3.0, 0.3, 30.0], cv=3, **VOC).fit(X, Y)
    assert np.all(clf.cv_scores_ == 1.0)
    np.testing.assert_array_equal(clf.C_, [30.0, 30.0])
    np.testing.assert_array_equal(clf.Cs_, [0.3, 3.0, 30.0])


def test_holdout_is_stratified_and_one_split():
    rng = np.random.default_rng(8)
    X, _ = make_problem(n=200, seed=8)
    y = np.repeat(np.arange(5), 40)[rng.permutation(200)]
    clf = SVMClassifier(Cs=[0.1, 1.0], holdout=0.2).fit(X, y)
    assert set(clf.cv_fold_) == {-1, 0}
    for c in range(5):  # 20% of each class held out
        assert np.sum((clf.cv_fold_ == 0) & (y == c)) == 8
    assert np.isfinite(clf.cv_scores_).all()


def test_fixed_C_and_one_value_grids_skip_selection():
    X, Y = make_problem(n=80, seed=9)
    a = SVMClassifier(C=0.7, **VOC).fit(X, Y)
    b = SVMClassifier(Cs=[0.7], **VOC).fit(X, Y)
    np.testing.assert_array_equal(a.C_, [0.7] * 3)
    assert a.cv_fold_ is None and np.isnan(a.cv_scores_).all() and a.cv_scores_.shape == (3, 1)
    np.testing.assert_allclose(a.coef_, b.coef_)


def test_default_grid():
    assert len(DEFAULT_CS) >= 8
    ratios = np.diff(np.log10(DEFAULT_CS))
    np.testing.assert_allclose(ratios, ratios[0])
    assert min(DEFAULT_CS) <= 0.01 and max(DEFAULT_CS) >= 10


def test_progress_and_determinism():
    X, Y = make_problem(n=90, seed=10)
    calls = []
    a = SVMClassifier(Cs=[0.1, 1.0], cv=3, random_state=3, **VOC).fit(
        X, Y, progress=lambda d, t: calls.append((d, t))
    )
    done, total = zip(*calls)
    assert calls[0][0] == 0 and done[-1] == total[-1] and list(done) == sorted(done)
    assert total[0] == 1 + 3 * 2 * 3 + 3  # Gram blocks + (class, C, fold) problems + refits
    b = SVMClassifier(Cs=[0.1, 1.0], cv=3, random_state=3, **VOC).fit(X, Y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.cv_fold_, b.cv_fold_)


@pytest.mark.parametrize("groups", [1, 3])
def test_threads_do_not_change_the_solution(monkeypatch, groups):
    """Folds run at once in threads, and a batch's problems are split over threads, each group
    with its own coordinate orders: the optimum, and so the chosen C, is the same (to the
    solver's tolerance) as with folds one after another and another grouping."""
    import vggfeat.svm as svm

    X, Y = make_problem(n=150, dim=30, seed=11, difficult=0.05, signal=0.5)
    params = dict(Cs=[0.03, 0.3, 3.0], cv=3, solver="dual", **TIGHT, **VOC)
    ref = SVMClassifier(**params).fit(X, Y)
    monkeypatch.setattr(svm, "_CPU_GROUPS", groups)
    # A budget too small for one fold kernel at a time runs the folds one after another.
    other = SVMClassifier(**params, max_gram_bytes=12 * 100**2).fit(X, Y)
    np.testing.assert_array_equal(other.cv_fold_, ref.cv_fold_)
    np.testing.assert_allclose(other.cv_scores_, ref.cv_scores_, atol=1e-6)
    np.testing.assert_array_equal(other.C_, ref.C_)
    assert rel_err(other.coef_, ref.coef_) < 1e-4


def test_convergence_warning():
    X, Y = make_problem(n=80, seed=11)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        clf = SVMClassifier(C=10.0, max_iter=1, **VOC).fit(X, Y)
    assert np.all(clf.n_iter_ == 1)


# ---- scikit-learn conventions ---------------------------------------------------------------------


def test_sklearn_conventions():
    clf = SVMClassifier(C=2.0, Cs=(0.1, 1.0), loss="hinge")
    assert clf.get_params()["Cs"] == (0.1, 1.0)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf
    assert clf.set_params(C=5.0) is clf and clf.C == 5.0
    with pytest.raises(NotFittedError):
        clf.decision_function(np.zeros((2, 3)))
    # __init__ stores, fit validates.
    bad = SVMClassifier(loss="log")
    with pytest.raises(VggfeatError, match="Unknown loss"):
        bad.fit(*make_problem(n=20))


# scikit-learn's own conformance suite, run on every build. Checks expected to fail, as
# {check name: why}: none. (max_iter=200 keeps it quick: the checks' unscaled toy data would
# otherwise run 1000 epochs in some unconverging fits; every check passes either way.)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [SVMClassifier(max_iter=200)], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_pipeline_and_grid_search():
    rng = np.random.default_rng(12)
    X, _ = make_problem(n=150, seed=12)
    y = rng.integers(0, 3, 150)
    X = X * rng.uniform(0.5, 5, (150, 1)).astype(np.float32)  # not normalised
    pipe = Pipeline([("scale", Normalizer()), ("svm", SVMClassifier(C=1.0))]).fit(X, y)
    ref = SVMClassifier(C=1.0).fit(Normalizer().fit_transform(X), y)
    np.testing.assert_allclose(
        pipe.decision_function(X),
        ref.decision_function(X / np.linalg.norm(X, axis=1, keepdims=True)),
        atol=1e-5,
    )
    search = GridSearchCV(SVMClassifier(), {"C": [0.01, 0.1, 1.0]}, cv=3).fit(X, y)
    assert search.best_params_["C"] in (0.01, 0.1, 1.0)
    assert 0 <= search.score(X, y) <= 1
    assert search.best_estimator_.n_features_in_ == 24


# ---- Model files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["voc", "indicator", "str", "int", "binary"])
def test_save_load_round_trip(tmp_path, kind):
    X, Y = make_problem(n=90, seed=13)
    names = np.array(["b", "a", "c"])
    y, params = {
        "voc": (Y, {**VOC, "class_names": ["cat", "dog", "emu"]}),
        "indicator": ((Y > 0).astype(bool), {}),
        "str": (names[np.argmax(Y, 1)], {}),
        "int": (np.array([7, 3, 11])[np.argmax(Y, 1)], {}),
        "binary": (names[(Y[:, 0] > 0).astype(int)], {}),
    }[kind]
    clf = SVMClassifier(Cs=[0.1, 1.0], cv=3, **params).fit(X, y)
    spec = {"features": {"nets": ["D", "E"], "scales": [256, 384]}, "note": "ü"}
    path = tmp_path / "model.h5"
    save_svm(path, clf, spec)
    assert [p.name for p in tmp_path.iterdir()] == ["model.h5"]  # no temporary file left
    back, spec2 = load_svm(path)
    assert spec2 == spec
    np.testing.assert_array_equal(back.decision_function(X), clf.decision_function(X))
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))
    assert back.predict(X).dtype == clf.predict(X).dtype
    assert back.classes_.dtype.kind == clf.classes_.dtype.kind
    np.testing.assert_array_equal(back.classes_, clf.classes_)
    assert back.label_format_ == clf.label_format_ and back.multilabel_ == clf.multilabel_
    for name in ("C_", "Cs_", "cv_scores_", "intercept_", "n_iter_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(clf, name))
    assert back.get_params() == {**clf.get_params(), "Cs": [0.1, 1.0]}
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "vggfeat-svm" and f.attrs["format_version"] == 2
        assert f.attrs["label_format"] == {"str": "classes", "int": "classes",
                                           "binary": "classes"}.get(kind, kind)  # fmt: skip
        assert json.loads(f.attrs["params"])["cv"] == 3
        assert "scikit-learn" in json.loads(f.attrs["versions"])
        assert f["coef"].shape == ((1, 24) if kind == "binary" else (3, 24))
        if kind == "voc":  # the names themselves are stored (issue: /classes held 0..K-1)
            assert [c.decode() for c in f["classes"][()]] == ["cat", "dog", "emu"]


def _as_version_1(path, classes=None, spec=None):
    """Rewrite a model file as version 1 wrote it: no label semantics, class indices."""
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f.attrs["label_format"], f.attrs["target_dtype"]
        if classes is not None:
            del f["classes"]
            ds = f.create_dataset("classes", data=classes, dtype=h5py.string_dtype("utf-8"))
            ds.attrs["kind"], ds.attrs["dtype"] = "int", "<i8"
        if spec is not None:
            f.attrs["spec"] = json.dumps(spec)


def test_version_1_files_load_as_voc_with_a_warning(tmp_path):
    X, Y = make_problem(n=90, seed=13)
    clf = SVMClassifier(C=1.0, **VOC).fit(X, Y)
    save_svm(tmp_path / "m.h5", clf, {})
    # As the version-1 CLI wrote it: /classes 0..K-1, the names only in the spec.
    _as_version_1(tmp_path / "m.h5", ["0", "1", "2"], {"labels": {"classes": ["a", "b", "c"]}})
    with pytest.warns(ModelFormatWarning, match="version-1 .* VOC labels .* restored"):
        back, _ = load_svm(tmp_path / "m.h5")
    assert back.label_format_ == "voc" and back.label_format == "voc"
    assert back.classes_.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(back.decision_function(X), clf.decision_function(X))
    assert back.predict(X).tolist() == clf.predict(X).tolist()  # 1 / -1, as before
    assert back.score(X, Y) == pytest.approx(clf.score(X, Y))
    # Written by the Python API without names: loads, and says the classes may be indices.
    save_svm(tmp_path / "n.h5", clf, {"other": 1})
    _as_version_1(tmp_path / "n.h5")
    with pytest.warns(ModelFormatWarning, match="may hold class indices"):
        assert load_svm(tmp_path / "n.h5")[0].classes_.tolist() == [0, 1, 2]


def test_version_1_binary_models_keep_their_predictions(tmp_path):
    """Version 1 kept two one-vs-rest rows for a binary y; they load as their difference."""
    X, Y = make_problem(n=90, classes=2, seed=21)
    clf = SVMClassifier(C=1.0, **VOC).fit(X, Y)  # two independent problems
    old_scores = clf.decision_function(X)
    clf.classes_, clf.multilabel_, clf.label_format_ = np.array([0, 1]), False, "classes"
    save_svm(tmp_path / "m.h5", clf, {})
    _as_version_1(tmp_path / "m.h5", spec={"labels": {"classes": ["no", "yes"]}})
    with pytest.warns(ModelFormatWarning):
        back, _ = load_svm(tmp_path / "m.h5")
    assert back.classes_.tolist() == ["no", "yes"] and back.coef_.shape == (1, 24)
    np.testing.assert_allclose(
        back.decision_function(X), old_scores[:, 1] - old_scores[:, 0], atol=1e-12
    )
    want = np.where(np.argmax(old_scores, axis=1) == 1, "yes", "no")
    np.testing.assert_array_equal(back.predict(X), want)


def test_large_spec_round_trips(tmp_path):
    """A model spec past HDF5's 64 KB compact-attribute limit (e.g. 1000 classes of provenance)."""
    X, Y = make_problem(n=60, seed=14)
    clf = SVMClassifier(C=1.0, **VOC).fit(X, Y)
    spec = {"classes": [f"class_{i:04d}_" + "x" * 90 for i in range(1000)]}
    save_svm(tmp_path / "big.h5", clf, spec)
    assert load_svm(tmp_path / "big.h5")[1] == spec


def test_load_errors(tmp_path):
    with pytest.raises(VggfeatError, match="does not exist"):
        load_svm(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(VggfeatError, match="Cannot read model file"):
        load_svm(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "vggfeat-store"
    with pytest.raises(VggfeatError, match="not a vggfeat SVM model"):
        load_svm(tmp_path / "other.h5")
    X, Y = make_problem(n=40)
    save_svm(tmp_path / "m.h5", SVMClassifier(**VOC).fit(X, Y), {})
    with h5py.File(tmp_path / "m.h5", "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(VggfeatError, match="upgrade vggfeat"):
        load_svm(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        f.attrs["format_version"] = 1
        del f["coef"]
    with pytest.raises(VggfeatError, match="'coef'"):
        load_svm(tmp_path / "m.h5")
    with pytest.raises(VggfeatError, match="JSON"):
        save_svm(tmp_path / "n.h5", SVMClassifier(**VOC).fit(X, Y), {"bad": object()})


# ---- Bad input ------------------------------------------------------------------------------------


def test_nan_rows_are_named():
    X, Y = make_problem(n=60)
    X[[4, 17, 30, 31, 40, 50]] = np.nan
    X[45, 2] = np.inf
    with pytest.raises(
        VggfeatError, match=r"7 rows with NaN or inf values \(rows 4, 17, 30, 31, 40, \.\.\.\)"
    ):
        SVMClassifier(**VOC).fit(X, Y)
    clf = SVMClassifier(**VOC).fit(*make_problem(n=60))
    with pytest.raises(VggfeatError, match=r"X has 1 row with NaN or inf values \(row 4\)"):
        clf.decision_function(X[41:50])


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"loss": "l1"}, "Unknown loss 'l1'. Valid losses: hinge, squared_hinge"),
        ({"C": 0}, "C must be a positive"),
        ({"C": float("nan")}, "C must be a positive"),
        ({"Cs": []}, "Cs must be a non-empty"),
        ({"Cs": [1.0, -1.0]}, "Cs must be a non-empty"),
        ({"Cs": ["a"]}, "Cs must be a sequence"),
        ({"Cs": [1.0, 2.0], "cv": 1}, "cv must be an integer"),
        ({"Cs": [1.0, 2.0], "cv": 2.5}, "cv must be an integer"),
        ({"Cs": [1.0, 2.0], "holdout": 1.5}, "holdout must be a fraction"),
        ({"Cs": [1.0, 2.0], "holdout": 0}, "holdout must be a fraction"),
        ({"tol": -1}, "tol must be"),
        ({"max_iter": 0}, "max_iter must be"),
        ({"intercept_scaling": 0}, "intercept_scaling must be"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
    ],
)
def test_bad_parameters(params, match):
    X, Y = make_problem(n=30)
    with pytest.raises(VggfeatError, match=match):
        SVMClassifier(**{**VOC, **params}).fit(X, Y)


def test_bad_data():
    X, Y = make_problem(n=30)
    with pytest.raises(SVMInputError, match=r"X has 0 sample\(s\)"):
        SVMClassifier(**VOC).fit(X[:0], Y[:0])
    with pytest.raises(VggfeatError, match="N = 30 rows of X; got shape \\(29, 3\\)"):
        SVMClassifier(**VOC).fit(X, Y[:29])
    with pytest.raises(VggfeatError, match="2-D"):
        SVMClassifier(**VOC).fit(X[0], Y)
    Y0 = Y.copy()
    Y0[:, 1] = np.where(Y0[:, 1] > 0, 0, Y0[:, 1])
    with pytest.raises(VggfeatError, match="Class 1 .* has no positive training example"):
        SVMClassifier(**VOC).fit(X, Y0)
    Y0[:, 1] = np.where(Y0[:, 1] < 0, 0, 1)
    with pytest.raises(VggfeatError, match="Class 1 .* no negative .* label_format='indicator'"):
        SVMClassifier(**VOC).fit(X, Y0)
    with pytest.raises(VggfeatError, match=r"VOC labels 1 / -1 / 0 .*got values -2, 2"):
        SVMClassifier(**VOC).fit(X, Y * 2)
    with pytest.raises(VggfeatError, match=r"y has only one class \('cat'\)"):
        SVMClassifier().fit(X, np.full(30, "cat"))
    with pytest.raises(VggfeatError, match="cv=40 folds need at least 40"):
        SVMClassifier(Cs=[1.0, 2.0], cv=40, **VOC).fit(X, Y)
    one = np.where(np.arange(30) == 3, 1, -1)
    with pytest.raises(VggfeatError, match="no positive example in any validation part"):
        SVMClassifier(Cs=[1.0, 2.0], holdout=0.2, **VOC).fit(X, one[:, None])
    clf = SVMClassifier(**VOC).fit(X, Y)
    with pytest.raises(
        VggfeatError, match="X has 23 features, but SVMClassifier is expecting 24 features"
    ):
        clf.predict(X[:, :23])
    with pytest.raises(VggfeatError, match="Sparse data"):
        from scipy.sparse import csr_matrix

        clf.predict(csr_matrix(X))


def test_input_errors_are_value_errors_without_numpy_reprs():
    """scikit-learn's contract (ValueError) and the CLI's (one clean line) at once."""
    X, Y = make_problem(n=30)
    cases = [
        (lambda: SVMClassifier().fit(X, np.full(30, "cat")), "one class ('cat')"),
        (lambda: SVMClassifier().fit(X, np.full(30, 3)), "one class (3)"),
        (lambda: SVMClassifier(C=np.float64(-1)).fit(X, Y), "got -1.0."),
        (lambda: SVMClassifier(Cs=np.array([1.0, -1.0])).fit(X, Y), "got [1.0, -1.0]."),
        (lambda: SVMClassifier().fit(X, np.linspace(0, 1, 30)), "Unknown label type: cont"),
        (lambda: SVMClassifier().fit(X, None), "requires y to be passed"),
        (lambda: SVMClassifier().fit(X, np.full(30, np.nan)), "y contains NaN or infinity"),
        (lambda: SVMClassifier().fit(X.astype(complex), Y), "Complex data not supported"),
        (lambda: SVMClassifier().fit(X, Y), "label_format='voc'"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as err:
            call()
        text = str(err.value)
        assert isinstance(err.value, VggfeatError) and fragment in text, text
        assert "np." not in text and "array(" not in text and "\n" not in text, text


# ---- Label semantics (indicator vs VOC) -----------------------------------------------------------


def test_indicator_matrix_means_zero_is_negative():
    """Regression: a 0/1 indicator y was read as VOC (0 = difficult), dropping every negative."""
    X, Y = make_problem(n=120, seed=15)
    Y01 = (Y > 0).astype(np.int64)  # scikit-learn's multilabel-indicator format
    clf = SVMClassifier(C=1.0, **TIGHT).fit(X, Y01)
    assert clf.label_format_ == "indicator" and clf.multilabel_
    voc = SVMClassifier(C=1.0, **TIGHT, **VOC).fit(X, np.where(Y01 == 1, 1, -1))
    np.testing.assert_allclose(clf.coef_, voc.coef_, atol=1e-9)
    for k in range(3):  # each column is LinearSVC on that column, 0 = negative
        ref = liblinear(X, Y01[:, k], 1.0)
        assert rel_err(clf.coef_[k], ref.coef_[0]) < 1e-3
    pred = clf.predict(X)
    assert pred.dtype == Y01.dtype and set(np.unique(pred)) == {0, 1}
    assert (pred == 0).mean() > 0.4  # negatives are predicted, not 1 everywhere
    assert clf.score(X, Y01) == pytest.approx(np.mean((pred == Y01).all(axis=1)))
    # VOC labels stay explicit: 0 there is difficult, and the prediction is 1 / -1.
    assert set(np.unique(voc.predict(X))) == {1, -1} and voc.predict(X).dtype == np.int64


def test_a_2d_y_that_fits_neither_format_is_refused():
    X, Y = make_problem(n=40, seed=18)
    with pytest.raises(SVMInputError, match="indicator matrix .* VOC labels .*pass label_format"):
        SVMClassifier().fit(X, Y)  # VOC values under the default indicator format
    for labels, y in (("indicator", Y + 1), ("voc", Y + 2)):
        with pytest.raises(SVMInputError, match="label_format='indicator'.*label_format='voc'"):
            SVMClassifier(label_format=labels).fit(X, y)
    with pytest.raises(SVMInputError, match="Unknown label_format 'multilabel'"):
        SVMClassifier(label_format="multilabel").fit(X, Y)
    # A column vector is a 1-D y (with scikit-learn's warning), not a one-class matrix.
    y = (Y[:, 0] > 0).astype(int)
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        col = SVMClassifier().fit(X, y[:, None])
    np.testing.assert_array_equal(col.predict(X), SVMClassifier().fit(X, y).predict(X))


def test_score_on_voc_labels_is_map_and_grid_search_uses_it():
    """Regression: score raised on VOC y, so GridSearchCV scored every C NaN and kept the first."""
    X, Y = make_problem(n=150, seed=16, difficult=0.1, signal=0.4)
    clf = SVMClassifier(C=1.0, **VOC).fit(X[:100], Y[:100])
    scores = clf.decision_function(X[100:])
    want = np.mean([average_precision(scores[:, k], Y[100:, k], "area") for k in range(3)])
    assert clf.score(X[100:], Y[100:]) == pytest.approx(want)
    search = GridSearchCV(SVMClassifier(**VOC), {"C": [1e-4, 1.0]}, cv=3, error_score="raise")
    search.fit(X, Y)
    means = search.cv_results_["mean_test_score"]
    assert np.isfinite(means).all() and means[1] > means[0]
    assert search.best_params_ == {"C": 1.0}


def test_class_names_name_the_columns():
    X, Y = make_problem(n=60, seed=17)
    clf = SVMClassifier(class_names=("cat", "dog", "emu"), **VOC).fit(X, Y)
    assert clf.classes_.tolist() == ["cat", "dog", "emu"]
    with pytest.raises(SVMInputError, match="class_names must name the 3 columns"):
        SVMClassifier(class_names=["cat"], **VOC).fit(X, Y)
    with pytest.raises(SVMInputError, match="class_names names the columns of a 2-D y"):
        SVMClassifier(class_names=["a", "b"]).fit(X, np.argmax(Y, axis=1))


# ---- Devices -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu():
    X, Y = make_problem(n=200, difficult=0.05)
    cpu = SVMClassifier(Cs=[0.1, 1.0], device="cpu", **TIGHT, **VOC).fit(X, Y)
    gpu = SVMClassifier(Cs=[0.1, 1.0], device="cuda", **TIGHT, **VOC).fit(X, Y)
    np.testing.assert_array_equal(gpu.C_, cpu.C_)
    np.testing.assert_allclose(gpu.cv_scores_, cpu.cv_scores_, atol=1e-6)
    assert rel_err(gpu.coef_, cpu.coef_) < 1e-5


def test_cuda_requested_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(VggfeatError, match="no CUDA GPU is visible"):
        SVMClassifier(device="cuda", **VOC).fit(*make_problem(n=30))


@pytest.mark.parametrize("k", [1, 3])
def test_a_full_disk_while_saving_a_model_is_one_error_and_keeps_the_old_file(
    tmp_path, monkeypatch, k
):
    import errno

    from vggfeat.files import GuardedFile, OutputError

    X, Y = make_problem(n=40)
    clf = SVMClassifier(**VOC).fit(X, Y)
    path = tmp_path / "m.h5"
    save_svm(path, clf, {"old": True})
    real, calls = GuardedFile._write_at, [0]

    def write_at(self, data, offset):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, offset)

    monkeypatch.setattr(GuardedFile, "_write_at", write_at)
    with pytest.raises(OutputError, match="^no space left on device while writing .*m.h5"):
        save_svm(path, clf, {"old": False})
    monkeypatch.undo()
    assert load_svm(path)[1] == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
