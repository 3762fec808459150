"""Exact coordinate-descent passes over one block of the SVM dual, compiled by numba when present.

:func:`vggfeat.svm._solve_dual` cuts each epoch of dual coordinate descent into blocks of rows;
this module does the sequential work inside one block, for all P problems (the columns) at
once, while the rest of the rows wait for one matrix product. Problem p is liblinear's dual::

    min_a 1/2 (y*a)^T K (y*a) + 1/2 d_p |a|^2 - sum(a),  0 <= a_i <= u_ip

and a pass over the block is one of two kinds of exact minimisation:

- **single** (liblinear's step): each coordinate j in turn, ``a_j <- clip(a_j - g_j / Q_jj)``
  with gradient ``g_j = y_j f_j + d a_j - 1`` and ``Q_jj = K_jj + d``.
- **pair**: disjoint pairs (i, j) in turn, along the direction that moves ``y_i a_i`` up and
  ``y_j a_j`` down by the same amount, which leaves ``sum(y a)`` unchanged. Its curvature is
  ``|x_i - x_j|^2 + 2d``: the constant part of the kernel cancels. That part (the bias feature,
  and the shared mean of non-negative descriptors, one eigenvalue of thousands beside a bulk
  below 3) makes every single step small beside it (``Q_jj`` is about 2 where the bulk is
  about 0.5), which is why single steps alone converge slowly at large C.

Several passes per block cost little (O(b^2 P) each, against O(b N P) for the block's matrix
product) and cut the epochs, and so the products, several times (at VOC-2007 size, 3,340 rows
and C = 31.6: from about 100 epochs to about 20). Every step decreases the objective and every
epoch still holds a full pass of single steps, so the method converges to the same optimum.

The kernel is compiled with numba (``nogil``: the solver's threads, one per fold or group of
problems, sweep at once) when numba can be imported; otherwise the same steps run in numpy,
vectorised over the problems (several times slower per pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COMPILED", "SINGLE", "PAIR", "sweep_block", "warm_up"]

SINGLE, PAIR = 0, 1


def _single(f: Any, a: Any, y: Any, u: Any, d: Any, k: Any, j: int, st: Any) -> bool:
    """Exact step of coordinate j in every problem; returns whether any problem moved."""
    moved = False
    for p in range(a.shape[1]):
        st[p] = 0.0
        yj = y[j, p]
        if yj == 0.0:
            continue
        old = a[j, p]
        g = yj * f[j, p] + d[p] * old - 1.0
        new = old - g / (k[j, j] + d[p])
        new = min(max(new, 0.0), u[j, p])
        if new != old:
            a[j, p] = new
            st[p] = yj * (new - old)
            moved = True
    if moved:
        for r in range(f.shape[0]):
            kr = k[j, r]
            for p in range(f.shape[1]):
                f[r, p] += kr * st[p]
    return moved


def _pair(f: Any, a: Any, y: Any, u: Any, d: Any, k: Any, i: int, j: int, si: Any, sj: Any) -> bool:
    """Exact step along ``y_i a_i += t, y_j a_j -= t`` in every problem."""
    moved = False
    base = k[i, i] + k[j, j] - 2.0 * k[i, j]
    for p in range(a.shape[1]):
        si[p] = 0.0
        sj[p] = 0.0
        yi = y[i, p]
        yj = y[j, p]
        if yi == 0.0 or yj == 0.0:
            continue
        curv = base + 2.0 * d[p]
        if not curv > 1e-12:  # equal rows and no diagonal term: no curvature, no step
            continue
        ai = a[i, p]
        aj = a[j, p]
        gi = yi * f[i, p] + d[p] * ai - 1.0
        gj = yj * f[j, p] + d[p] * aj - 1.0
        t = -(yi * gi - yj * gj) / curv
        # a_i + y_i t and a_j - y_j t stay in [0, u].
        if yi > 0:
            lo, hi = -ai, u[i, p] - ai
        else:
            lo, hi = ai - u[i, p], ai
        if yj > 0:
            lo, hi = max(lo, aj - u[j, p]), min(hi, aj)
        else:
            lo, hi = max(lo, -aj), min(hi, u[j, p] - aj)
        t = min(max(t, lo), hi)
        if t == 0.0:
            continue
        ni = min(max(ai + yi * t, 0.0), u[i, p])
        nj = min(max(aj - yj * t, 0.0), u[j, p])
        if ni != ai or nj != aj:
            a[i, p] = ni
            a[j, p] = nj
            si[p] = yi * (ni - ai)
            sj[p] = yj * (nj - aj)
            moved = True
    if moved:
        for r in range(f.shape[0]):
            ki = k[i, r]
            kj = k[j, r]
            for p in range(f.shape[1]):
                f[r, p] += ki * si[p] + kj * sj[p]
    return moved


def _passes(f: Any, a: Any, y: Any, u: Any, d: Any, k: Any, orders: Any, kinds: Any) -> None:
    P = a.shape[1]
    s1 = np.empty(P)
    s2 = np.empty(P)
    for q in range(orders.shape[0]):
        order = orders[q]
        if kinds[q] == SINGLE:
            for t in range(order.shape[0]):
                _single(f, a, y, u, d, k, order[t], s1)
        else:
            for t in range(0, order.shape[0] - 1, 2):
                _pair(f, a, y, u, d, k, order[t], order[t + 1], s1, s2)


def _passes_numpy(
    f: np.ndarray,
    a: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    d: np.ndarray,
    k: np.ndarray,
    orders: np.ndarray,
    kinds: np.ndarray,
) -> None:
    """:func:`_passes` vectorised over the problems: the same steps, in numpy."""
    from scipy.linalg.blas import dger

    ft = f.T  # Fortran-ordered view, as BLAS ger wants it
    absent = y == 0
    diag = np.diagonal(k)
    for q in range(orders.shape[0]):
        order = orders[q]
        if kinds[q] == SINGLE:
            for j in order:
                old = a[j]
                g = y[j] * f[j] + d * old - 1.0
                new = np.minimum(np.maximum(old - g / (diag[j] + d), 0.0), u[j])
                new[absent[j]] = old[absent[j]]
                st = y[j] * (new - old)
                a[j] = new
                if st.any():
                    dger(1.0, st, k[j], a=ft, overwrite_a=1)
            continue
        for m in range(0, len(order) - 1, 2):
            i, j = order[m], order[m + 1]
            ai, aj = a[i], a[j]
            curv = diag[i] + diag[j] - 2.0 * k[i, j] + 2.0 * d
            skip = absent[i] | absent[j] | ~(curv > 1e-12)
            gi = y[i] * f[i] + d * ai - 1.0
            gj = y[j] * f[j] + d * aj - 1.0
            with np.errstate(divide="ignore", invalid="ignore"):
                t = -(y[i] * gi - y[j] * gj) / curv
            lo = np.where(y[i] > 0, -ai, ai - u[i])
            hi = np.where(y[i] > 0, u[i] - ai, ai)
            lo = np.maximum(lo, np.where(y[j] > 0, aj - u[j], -aj))
            hi = np.minimum(hi, np.where(y[j] > 0, aj, u[j] - aj))
            t = np.where(skip, 0.0, np.minimum(np.maximum(t, lo), hi))
            ni = np.where(t != 0, np.minimum(np.maximum(ai + y[i] * t, 0.0), u[i]), ai)
            nj = np.where(t != 0, np.minimum(np.maximum(aj - y[j] * t, 0.0), u[j]), aj)
            si, sj = y[i] * (ni - ai), y[j] * (nj - aj)
            a[i], a[j] = ni, nj
            if si.any() or sj.any():
                dger(1.0, si, k[i], a=ft, overwrite_a=1)
                dger(1.0, sj, k[j], a=ft, overwrite_a=1)


try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the fallback is for its absence
    numba = None

#: Whether the passes run compiled (numba) rather than in numpy.
COMPILED = numba is not None
if COMPILED:
    _jit = numba.njit(nogil=True, cache=True, fastmath=False)
    _single = _jit(_single)
    _pair = _jit(_pair)
    _passes_compiled = _jit(_passes)


def sweep_block(
    f: np.ndarray,
    a: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    d: np.ndarray,
    k: np.ndarray,
    orders: np.ndarray,
    kinds: np.ndarray,
    compiled: bool | None = None,
) -> None:
    """Run the passes over one block, all problems at once, updating ``f`` and ``a`` in place.

    Args:
        f: (b, P) C-contiguous float64 decision values ``(K (y*a))`` of the block's rows, with
            every coordinate outside the block held fixed; kept exact as the block moves.
        a: (b, P) C-contiguous float64 dual variables.
        y: (b, P) float64 labels in {1, -1, 0} (0: the row is not in that problem).
        u: (b, P) float64 upper bounds (inf for the squared hinge).
        d: (P,) float64 diagonal term (``1 / (2 C)`` for the squared hinge, else 0).
        k: (b, b) C-contiguous float64 kernel block.
        orders: (m, b) int64: the order of the block's coordinates in each of m passes (a
            pair pass takes them two by two).
        kinds: (m,) int64: :data:`SINGLE` or :data:`PAIR`, per pass.
        compiled: Force the numba (True) or numpy (False) kernel; default: numba if present.
    """
    use = COMPILED if compiled is None else compiled
    if use:
        if not COMPILED:
            raise RuntimeError("numba is not installed")
        _passes_compiled(f, a, y, u, d, k, orders, kinds)
    else:
        _passes_numpy(f, a, y, u, d, k, orders, kinds)


def warm_up() -> None:
    """Load (or compile) the numba kernel now, on a tiny block: the first call costs about a
    second even from numba's on-disk cache, so callers start this in a thread beside other
    work (the Gram matrix) instead of paying it inside the first epoch."""
    if COMPILED:
        b, P = 2, 1
        orders = np.tile(np.arange(b, dtype=np.int64), (2, 1))
        kinds = np.array([SINGLE, PAIR], np.int64)
        sweep_block(np.zeros((b, P)), np.zeros((b, P)), np.ones((b, P)), np.ones((b, P)),
                    np.ones(P), np.eye(b), orders, kinds)  # fmt: skip
