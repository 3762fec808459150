"""vggfeat.sweep: the compiled and numpy block passes agree, keep f exact, descend, and the SVMs
still equal liblinear when numba cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vggfeat.sweep import COMPILED, PAIR, SINGLE, sweep_block


def make_block(b=24, P=5, seed=0, squared=True):
    """A random block of the SVM dual: its state is consistent (f = K (y*a) + outside)."""
    rng = np.random.default_rng(seed)
    X = np.abs(rng.standard_normal((b, 7)) + 0.5)
    k = X @ X.T + 1.0  # with the bias feature: a large constant component, as in practice
    y = np.where(rng.random((b, P)) < 0.4, 1.0, -1.0)
    y[rng.random((b, P)) < 0.1] = 0.0  # rows left out of some problems
    C = np.geomspace(0.1, 10, P)
    u = np.where(y != 0, np.inf if squared else C, 0.0) * np.ones((b, P))
    d = 0.5 / C if squared else np.zeros(P)
    a = np.minimum(rng.random((b, P)) * 0.5, u)
    outside = rng.standard_normal((b, P)) * 0.3  # the effect of rows outside the block
    f = k @ (y * a) + outside
    orders = np.argsort(rng.random((4, b)), axis=1)
    kinds = np.array([SINGLE, PAIR, SINGLE, PAIR])
    return f, a, y, u, d, k, orders, kinds, outside


def objective(a, y, d, k, outside):
    """The dual objective of every problem, (P,), with the block's outside effect linear."""
    beta = y * a
    return 0.5 * np.einsum("ip,ij,jp->p", beta, k, beta) + (
        0.5 * d * (a * a).sum(0) + (beta * outside).sum(0) - a.sum(0)
    )


@pytest.mark.parametrize("squared", [True, False], ids=["squared_hinge", "hinge"])
@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "numba"])
def test_passes_keep_f_exact_stay_feasible_and_descend(squared, compiled):
    if compiled and not COMPILED:
        pytest.skip("numba is not installed")
    f, a, y, u, d, k, orders, kinds, outside = make_block(squared=squared)
    before = objective(a, y, d, k, outside)
    sweep_block(f, a, y, u, d, k, orders, kinds, compiled=compiled)
    np.testing.assert_allclose(f, k @ (y * a) + outside, atol=1e-12)
    assert (a >= 0).all() and (a <= u).all()
    assert (a[y == 0] == 0).all()
    after = objective(a, y, d, k, outside)
    assert (after < before - 1e-9).all()


def test_numba_and_numpy_take_the_same_steps():
    if not COMPILED:
        pytest.skip("numba is not installed")
    state = make_block(seed=3)
    f1, a1 = state[0].copy(), state[1].copy()
    sweep_block(f1, a1, *state[2:8], compiled=True)
    f2, a2 = state[0].copy(), state[1].copy()
    sweep_block(f2, a2, *state[2:8], compiled=False)
    np.testing.assert_allclose(a1, a2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(f1, f2, rtol=1e-12, atol=1e-12)


def test_many_passes_reach_the_block_optimum():
    """Passes alone solve the block's own problem: the KKT conditions hold at the end."""
    f, a, y, u, d, k, orders, kinds, outside = make_block(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        orders = np.argsort(rng.random((4, len(a))), axis=1)
        sweep_block(f, a, y, u, d, k, orders, kinds)
    g = y * f + d * a - 1  # dual gradient; optimal: 0 where a > 0, >= 0 where a = 0
    inside = y != 0
    assert np.abs(g[inside & (a > 1e-9)]).max() < 1e-8
    assert g[inside & (a <= 1e-9)].min() > -1e-8


def test_without_numba_the_svms_still_equal_liblinear():
    """numba blocked from import: the numpy passes run, and the fit is liblinear's."""
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["numba"] = None  # import numba -> ImportError
        import numpy as np
        from sklearn.svm import LinearSVC
        import vggfeat.sweep
        from vggfeat.svm import SVMClassifier
        assert not vggfeat.sweep.COMPILED
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 150)
        X = np.abs(rng.standard_normal((150, 20)) + 0.5) + 2 * (y[:, None] == np.arange(20) % 3)
        X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
        ours = SVMClassifier(C=1.0, tol=1e-8, max_iter=100000).fit(X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LinearSVC(C=1.0, dual=True, tol=1e-10, max_iter=1000000).fit(
                X.astype(np.float64), y
            )
        err = np.linalg.norm(ours.coef_ - ref.coef_) / np.linalg.norm(ref.coef_)
        print("relative error", err)
        assert err < 1e-3, err
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "relative error" in out.stdout
