"""vggfeat.primal: the streamed squared-hinge solver equals liblinear and the dual path."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

import vggfeat.primal as primal
from vggfeat.errors import VggfeatError
from vggfeat.metrics import average_precision
from vggfeat.primal import solve_primal
from vggfeat.svm import SVMClassifier, load_svm, save_svm

CPU = torch.device("cpu")


def make_problem(n=200, dim=30, classes=3, seed=0, difficult=0.1, signal=1.0):
    """Non-negative, L2-normalised features and (n, classes) VOC labels (1 / -1 / 0)."""
    rng = np.random.default_rng(seed)
    Y = np.where(rng.random((n, classes)) < 0.3, 1, -1)
    protos = rng.random((classes, dim)) * (rng.random((classes, dim)) < 0.3)
    X = np.abs(rng.standard_normal((n, dim)) + 0.5) + signal * (Y > 0) @ protos
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Y[(Y > 0) & (rng.random(Y.shape) < difficult)] = 0
    return X, Y.astype(np.int8)


def liblinear(X, y, C, **kw):
    """LinearSVC's dual coordinate descent (the reference), run to a tiny tolerance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LinearSVC(C=C, dual=True, tol=1e-9, max_iter=1_000_000, **kw).fit(
            X.astype(np.float64), y
        )


@pytest.mark.parametrize("C", [0.1, 3.0])
@pytest.mark.parametrize("scale", [1.0, 2.5, 0.0], ids=["s1", "s2.5", "nob"])
def test_solution_equals_liblinear(C, scale):
    X, Y = make_problem()
    kw = {"intercept_scaling": scale} if scale else {"fit_intercept": False}
    W, n_iter, out = solve_primal(
        X.astype(np.float64), Y, np.full(3, C), scale=scale, tol=1e-10, max_iter=200, device=CPU
    )
    assert (n_iter < 200).all()
    for k in range(3):
        rows = Y[:, k] != 0  # difficult rows are left out of that class's problem
        ref = liblinear(X[rows], Y[rows, k], C, **kw)
        ours = np.append(W[:-1, k], scale * W[-1, k])
        theirs = np.append(ref.coef_[0], ref.intercept_)
        assert np.linalg.norm(ours - theirs) <= 1e-7 * np.linalg.norm(theirs)
        assert np.allclose(out[:, k], X @ W[:-1, k] + scale * W[-1, k], atol=1e-9)


def test_stopping_rule_is_liblinears_primal_rule():
    # Same tol as LinearSVC(dual=False): the gradient norm at our solution is within the
    # rule, and the objective matches liblinear's primal solution at that tolerance.
    X, Y = make_problem(n=300, dim=40, seed=2)
    X = X.astype(np.float64)
    y, C, tol = Y[:, 0], 1.0, 1e-3
    rows = y != 0
    W, _, _ = solve_primal(X, Y[:, :1], np.array([C]), scale=1.0, tol=tol, max_iter=100, device=CPU)
    Xa = np.hstack([X[rows], np.ones((rows.sum(), 1))])
    ya = y[rows]

    def grad(w):
        m = ya * (Xa @ w)
        act = m < 1
        return w - 2 * C * Xa[act].T @ (ya[act] * (1 - m[act]))

    def objective(w):
        return 0.5 * w @ w + C * (np.maximum(0, 1 - ya * (Xa @ w)) ** 2).sum()

    w = W[:, 0]
    npos, nneg = (ya > 0).sum(), (ya < 0).sum()
    bound = tol * max(min(npos, nneg), 1) / len(ya) * np.linalg.norm(grad(np.zeros(Xa.shape[1])))
    assert np.linalg.norm(grad(w)) <= bound
    ref = LinearSVC(C=C, dual=False, tol=tol).fit(X[rows], ya)
    w_ref = np.append(ref.coef_[0], ref.intercept_)
    assert objective(w) == pytest.approx(objective(w_ref), rel=1e-6)


def test_chunks_memmaps_hdf5_and_float32_give_the_same_solution(tmp_path, monkeypatch):
    X, Y = make_problem(n=150, dim=20)
    args = {"scale": 1.0, "tol": 1e-6, "max_iter": 100, "device": CPU}
    C = np.array([0.3, 3.0, 30.0])
    whole, _, _ = solve_primal(X, Y, C, **args)
    path = tmp_path / "x.f32"
    X.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    monkeypatch.setattr(primal, "_CHUNK_BYTES", 7 * X.shape[1] * 4)  # 7-row chunks
    chunked, _, out = solve_primal(mm, Y, C, **args)
    # Chunks only change the float32 summation order.
    assert np.abs(chunked - whole).max() <= 1e-5 * np.abs(whole).max()
    with h5py.File(tmp_path / "x.h5", "w") as f:  # straight from an HDF5 dataset
        f["x"] = X
    with h5py.File(tmp_path / "x.h5", "r") as f:
        from_h5, _, _ = solve_primal(f["x"], Y, C, **args)
    assert np.array_equal(from_h5, chunked)
    ref, _, _ = solve_primal(X.astype(np.float64), Y, C, **args)
    assert np.abs(chunked - ref).max() <= 1e-4 * np.abs(ref).max()  # float32 products
    assert out.shape == (len(X), 3)


def test_warm_start_and_convergence_warning():
    X, Y = make_problem(n=150, dim=20)
    C = np.full(3, 10.0)
    args = {"scale": 1.0, "tol": 1e-8, "device": CPU}
    cold, it_cold, _ = solve_primal(X.astype(np.float64), Y, C, max_iter=100, **args)
    warm, it_warm, _ = solve_primal(X.astype(np.float64), Y, C, max_iter=100, W0=cold, **args)
    assert (it_warm <= 1).all() and (it_cold > 1).all()
    assert np.allclose(warm, cold, atol=1e-8)
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=1"):
        solve_primal(X.astype(np.float64), Y, C, max_iter=1, **args)


def test_primal_path_agrees_with_dual_path_on_ap_and_C():
    # Cross-validated C selection and the refit, end to end through SVMClassifier.
    X, Y = make_problem(n=700, dim=50, classes=4, seed=1, difficult=0.05, signal=0.5)
    X, Xt, Y, Yt = X[:400], X[400:], Y[:400], Y[400:]
    kw = {
        "Cs": [0.01, 0.1, 1.0, 10.0],
        "cv": 3,
        "tol": 1e-5,
        "max_iter": 10_000,
        "label_format": "voc",
    }
    dual = SVMClassifier(solver="dual", **kw).fit(X, Y)
    prim = SVMClassifier(solver="primal", **kw).fit(X, Y)
    assert (dual.solver_, prim.solver_) == ("dual", "primal")
    assert np.array_equal(dual.cv_fold_, prim.cv_fold_)
    assert np.abs(dual.cv_scores_ - prim.cv_scores_).max() < 2e-3
    assert np.array_equal(dual.C_, prim.C_)
    sd, sp = dual.decision_function(Xt), prim.decision_function(Xt)
    for k in range(4):
        ap_d = average_precision(sd[:, k], Yt[:, k], "area")
        ap_p = average_precision(sp[:, k], Yt[:, k], "area")
        assert ap_p == pytest.approx(ap_d, abs=1e-3)
    assert np.linalg.norm(prim.coef_ - dual.coef_) < 1e-2 * np.linalg.norm(dual.coef_)


def test_auto_switches_above_max_gram_bytes_and_records_it(tmp_path):
    X, Y = make_problem(n=120, dim=16)
    y = np.argmax(Y > 0, axis=1)  # multi-class labels too
    small = SVMClassifier(C=1.0).fit(X, y)
    assert small.solver_ == "dual"
    big = SVMClassifier(C=1.0, max_gram_bytes=8 * 120 * 120 - 1, tol=1e-6).fit(X, y)
    assert big.solver_ == "primal"
    assert np.mean(big.predict(X) == small.predict(X)) > 0.95
    save_svm(tmp_path / "m.h5", big, {"note": "x"})
    with h5py.File(tmp_path / "m.h5") as f:
        params = json.loads(f.attrs["params"])
    assert params["solver_"] == "primal" and params["solver"] == "auto"
    back, _ = load_svm(tmp_path / "m.h5")
    assert back.solver_ == "primal"
    assert np.array_equal(back.decision_function(X), big.decision_function(X))


def test_solver_errors():
    X, Y = make_problem(n=60, dim=8)
    with pytest.raises(VggfeatError, match="squared hinge only"):
        SVMClassifier(solver="primal", loss="hinge").fit(X, Y)
    with pytest.raises(VggfeatError, match="Gram matrix, more than max_gram_bytes"):
        SVMClassifier(loss="hinge", max_gram_bytes=1000, label_format="voc").fit(X, Y)
    with pytest.raises(VggfeatError, match="Unknown solver 'newton'"):
        SVMClassifier(solver="newton").fit(X, Y)
    with pytest.raises(VggfeatError, match="max_gram_bytes must be"):
        SVMClassifier(max_gram_bytes=0).fit(X, Y)


@pytest.mark.gpu
def test_cuda_matches_cpu(monkeypatch):
    X, Y = make_problem(n=300, dim=40)
    args = {"scale": 1.0, "tol": 1e-8, "max_iter": 100}
    C = np.array([0.1, 1.0, 10.0])
    cpu, _, out_cpu = solve_primal(X, Y, C, device=CPU, **args)
    cached, _, out_gpu = solve_primal(X, Y, C, device=torch.device("cuda"), **args)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 0))  # stream chunks
    monkeypatch.setattr(primal, "_CHUNK_BYTES", 16 * X.shape[1] * 4)
    streamed, _, _ = solve_primal(X, Y, C, device=torch.device("cuda"), **args)
    for gpu in (cached, streamed):
        assert np.abs(gpu - cpu).max() <= 1e-5 * np.abs(cpu).max()
    assert np.allclose(out_gpu, out_cpu, atol=1e-4)
