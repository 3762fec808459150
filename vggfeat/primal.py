"""Squared-hinge linear SVMs solved in the primal over X in row chunks: memory grows with D, not N².

This is the solver :class:`vggfeat.svm.SVMClassifier` switches to when the shared Gram matrix
would not fit (``solver="auto"`` and ``max_gram_bytes``). Each column p of the labels is
liblinear's L2-loss problem with the bias as a regularised constant feature s::

    min_{w, b}  1/2 |w|^2 + 1/2 b^2 + C_p * sum_i max(0, 1 - y_ip (w . x_i + s b))^2

over the rows with ``y_ip != 0`` (the same problem as the dual path and ``LinearSVC``).

Method: the modified finite Newton method of Keerthi & DeCoste (2005, "L2-SVM-MFN"). At w, the
rows with margin < 1 form the active set I, on which the objective is quadratic; the Newton
point solves ``(I/(2C) + X~_I^T X~_I) w = X~_I^T y_I`` (X~ = [X, s]) by conjugate gradients,
and an exact line search on the piecewise-quadratic objective moves w towards it. It stops by
liblinear's primal rule (``LinearSVC(dual=False)``'s meaning of ``tol``): the gradient norm is
at most ``tol * max(min(#pos, #neg), 1) / #rows`` times its norm at w = 0.

All problems (classes, Cs, folds as masked label columns) run together as the columns of
matrices, so every conjugate-gradient step is two passes over X, ``X V`` and ``X^T U``, one
chunk of rows at a time; X is read in its own dtype (float32 descriptors: float32 products,
float64 accumulation and state) on the compute device (CUDA when present). Memory: X itself,
O(N P) decision values and O(D P) weights; no N x N matrix.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

__all__ = ["solve_primal"]

_CHUNK_BYTES = 256 << 20  # bytes of X per chunk streamed to the compute device
_FORCING = 1e-3  # conjugate gradients stop at this fraction of the initial residual
_SMALL_WORK = 1 << 26  # N * D * P below which the CPU runs one torch thread


class _Rows:
    """X~ = [X, s] as an operator, applied a chunk of rows at a time on ``device``."""

    def __init__(self, X: Any, scale: float, device: Any) -> None:
        import torch

        self.X, self.scale, self.device = X, scale, device
        self.n, self.dim = X.shape
        dtype = np.dtype(X.dtype)
        self.dtype = torch.float64 if dtype == np.float64 else torch.float32
        self.step = max(1, _CHUNK_BYTES // max(1, self.dim * dtype.itemsize))
        self.cached = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if X.nbytes < free // 2:  # fits with room to spare: upload once, not every pass
                self.cached = torch.as_tensor(np.asarray(X), device=device)

    def chunks(self) -> Any:
        import torch

        for s in range(0, self.n, self.step):
            e = min(self.n, s + self.step)
            if self.cached is not None:
                yield s, e, self.cached[s:e]
            else:
                part = self.X[s:e]  # a view of an in-memory array; read from a memmap
                if not (isinstance(part, np.ndarray) and part.flags.writeable):
                    part = np.array(part)
                block = torch.from_numpy(np.ascontiguousarray(part))
                yield s, e, block.to(self.device, non_blocking=True)

    def forward(self, W: Any, b: Any) -> Any:
        """(N, P) float64 ``X W + s b`` for weights W (D, P) and biases b (P,)."""
        import torch

        out = torch.empty((self.n, W.shape[1]), dtype=torch.float64, device=self.device)
        Wc = W.to(self.dtype)
        for s, e, block in self.chunks():
            out[s:e] = block @ Wc
        return out.add_(self.scale * b)

    def backward(self, U: Any) -> tuple[Any, Any]:
        """``X^T U`` (D, P) and ``s * sum(U)`` (P,), float64, for U (N, P)."""
        import torch

        acc = torch.zeros((self.dim, U.shape[1]), dtype=torch.float64, device=self.device)
        for s, e, block in self.chunks():
            acc += (block.T @ U[s:e].to(self.dtype)).to(torch.float64)
        return acc, self.scale * U.sum(dim=0)


def solve_primal(
    X: Any,
    Y: np.ndarray,
    C: np.ndarray,
    *,
    scale: float,
    tol: float,
    max_iter: int,
    device: Any,
    W0: np.ndarray | None = None,
    ticker: Callable[[int], None] | None = None,
    what: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve P squared-hinge SVM problems on the rows of X, all at once.

    Args:
        X: (N, D) float32 or float64 array (or any array-like whose row slices are arrays,
            e.g. a memmap), read a chunk of rows at a time.
        Y: (N, P) labels in {1, -1, 0}; rows with 0 are not in that column's problem.
        C: (P,) C per problem.
        scale: The constant feature s of the bias (0: no bias).
        tol: Relative gradient-norm tolerance (liblinear's primal ``eps``).
        max_iter: Maximum Newton iterations per problem.
        device: torch device for the products and the state.
        W0: (D + 1, P) warm start (weights, then the bias weight b in the last row).
        ticker: Called with the number of problems that finish.
        what: Name of the batch, for warnings.

    Returns:
        W (D + 1, P) float64 (weights; the last row is b, so ``intercept = s * b``), the
        Newton iterations used per problem (P,), and the (N, P) float64 decision values
        ``X w + s b`` of every row (validation rows included).
    """
    with _threads(device, X.shape[0] * X.shape[1] * Y.shape[1]):
        return _solve(X, Y, C, scale, tol, max_iter, device, W0, ticker, what)


@contextlib.contextmanager
def _threads(device: Any, work: int) -> Iterator[None]:
    """One torch thread on CPU for small problems: there every step is many small operations,
    and on a busy machine spinning intra-op workers make those tens of times slower."""
    import torch

    if device.type != "cpu" or work >= _SMALL_WORK:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _solve(
    X: Any,
    Y: np.ndarray,
    C: np.ndarray,
    scale: float,
    tol: float,
    max_iter: int,
    device: Any,
    W0: np.ndarray | None,
    ticker: Callable[[int], None] | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch

    rows = _Rows(X, float(scale), device)
    n, dim = rows.n, rows.dim
    P = Y.shape[1]
    f64 = {"dtype": torch.float64, "device": device}
    Yall = torch.as_tensor(np.asarray(Y, np.float64), **f64)
    Call = torch.as_tensor(np.asarray(C, np.float64), **f64)
    W_out = np.zeros((dim + 1, P))
    iters = np.zeros(P, np.int64)
    out = torch.zeros((n, P), **f64)

    W = torch.zeros((dim, P), **f64)
    b = torch.zeros(P, **f64)
    if W0 is not None:
        W = torch.as_tensor(np.ascontiguousarray(W0[:dim]), **f64).clone()
        b = torch.as_tensor(np.asarray(W0[dim]), **f64).clone()
    if not scale:
        b.zero_()
    # liblinear's primal stopping rule: |grad f(w)| <= tol * max(min(#pos, #neg), 1) / l *
    # |grad f(0)|, with grad f(0) = -2C X~^T y over the problem's rows.
    pos = (Yall > 0).sum(dim=0)
    neg = (Yall < 0).sum(dim=0)
    frac = torch.clamp(torch.minimum(pos, neg), min=1) / torch.clamp(pos + neg, min=1)
    g0, g0b = rows.backward(Yall)
    target = tol * frac * torch.sqrt((g0 * g0).sum(dim=0) + g0b * g0b)

    cols = np.arange(P)
    Yf, Cc = Yall, Call
    for it in range(max_iter + 1):
        lam = 0.5 / Cc
        o = rows.forward(W, b)
        m = Yf * o
        act = ((Yf != 0) & (m < 1)).to(torch.float64)
        # Residual of the Newton system at w: r = X~_I^T (y_I - o_I) - w / (2C) = -grad / (2C).
        R, rb = rows.backward(act * (Yf - o))
        R -= lam * W
        rb -= lam * b
        if not scale:
            rb.zero_()
        rr = (R * R).sum(dim=0) + rb * rb
        done = (torch.sqrt(rr) <= target).cpu().numpy()
        if it == max_iter and not done.all():
            warnings.warn(
                f"vggfeat.primal: {int((~done).sum())} of {P} problems ({what}) did not "
                f"converge in max_iter={max_iter} Newton iterations; increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
            done[:] = True
        if done.any():
            sel = torch.from_numpy(np.flatnonzero(done)).to(device)
            W_out[:dim, cols[done]] = W[:, sel].cpu().numpy()
            W_out[dim, cols[done]] = b[sel].cpu().numpy()
            out[:, torch.from_numpy(cols[done]).to(device)] = o[:, sel]
            iters[cols[done]] = it
            if ticker is not None:
                ticker(int(done.sum()))
            keep_np = ~done
            cols = cols[keep_np]
            if not len(cols):
                break
            keep = torch.from_numpy(np.flatnonzero(keep_np)).to(device)
            Yf, Cc, lam, W, b, o, m, act, R, rb, rr, target = (
                v.index_select(-1, keep) for v in (Yf, Cc, lam, W, b, o, m, act, R, rb, rr, target)
            )
        Z, zb, XZ = _newton_point(rows, W, b, o, act, lam, R, rb, rr, bool(scale))
        d, db, q = Z - W, zb - b, XZ - o
        t = _line_search(
            m, Yf * q, Yf != 0, Cc, (d * W).sum(dim=0) + db * b, (d * d).sum(dim=0) + db * db
        )
        W += t * d
        b += t * db
    return W_out, iters, out.cpu().numpy()


def _newton_point(
    rows: _Rows,
    W: Any,
    b: Any,
    o: Any,
    act: Any,
    lam: Any,
    R: Any,
    rb: Any,
    rr: Any,
    bias: bool,
) -> tuple[Any, Any, Any]:
    """Conjugate gradients on ``(lam + X~_I^T X~_I) z = X~_I^T y_I`` from z = w.

    Args:
        rows: The operator X~. W (D, P), b (P,): the current point; o (N, P): its decision
            values. act: (N, P) 1.0 on the active rows I. lam: (P,) 1 / (2C).
        R, rb, rr: The residual at w (D, P), (P,) and its squared norm (P,).
        bias: Whether b is a variable.

    Returns:
        The approximate Newton point (Z (D, P), zb (P,)) and its decision values X~ z (N, P).
    """
    import torch

    Z, zb, XZ = W.clone(), b.clone(), o.clone()
    Pd, pb = R.clone(), rb.clone()
    stop = _FORCING * torch.sqrt(rr)
    for _ in range(10 * (rows.dim + 1)):
        going = torch.sqrt(rr) > stop
        if not bool(going.any()):
            break
        xp = rows.forward(Pd, pb)
        U, ub = rows.backward(act * xp)
        U += lam * Pd
        ub += lam * pb
        if not bias:
            ub.zero_()
        pu = (Pd * U).sum(dim=0) + pb * ub
        step = torch.where(going & (pu > 0), rr / torch.where(pu > 0, pu, 1.0), 0.0)
        Z += step * Pd
        zb += step * pb
        XZ += step * xp
        R -= step * U
        rb -= step * ub
        rr_new = (R * R).sum(dim=0) + rb * rb
        ratio = torch.where(going & (rr > 0), rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        Pd = R + ratio * Pd
        pb = rb + ratio * pb
        rr = rr_new
    return Z, zb, XZ


def _line_search(m: Any, s: Any, inprob: Any, C: Any, reg1: Any, reg2: Any) -> Any:
    """Exact minimiser t > 0, per column, of the objective along a direction.

    Along w + t d the objective is ``1/2 |w|^2 + t reg1 + 1/2 t^2 reg2 + C sum_i max(0, 1 -
    m_i - t s_i)^2`` (m: margins at w, s: change of margin per unit t), convex and piecewise
    quadratic in t: its derivative is piecewise linear and increasing, with a breakpoint
    where a row's margin crosses 1. The breakpoints are sorted and the derivative's zero is
    found on its interval (Keerthi & DeCoste's exact line search), all columns at once.

    Args:
        m, s: (N, P) margins and their slopes. inprob: (N, P) rows in each problem.
        C: (P,). reg1, reg2: (P,) ``d . w`` and ``d . d``.

    Returns:
        (P,) step t (1 where the direction is degenerate).
    """
    import torch

    c = 2 * C * s * (m - 1)  # the row's term in the derivative is c + e t while m + t s < 1
    e = 2 * C * s * s
    on = inprob & (m < 1)
    A = reg1 + (c * on).sum(dim=0)
    B = reg2 + (e * on).sum(dim=0)
    cross = inprob & (s != 0)
    bp = torch.where(cross, (1 - m) / torch.where(cross, s, 1.0), -1.0)
    bp = torch.where(bp > 0, bp, math.inf)  # only crossings at t > 0 matter
    sign = torch.where(s > 0, -1.0, 1.0)  # s > 0: the row leaves the active set; s < 0: enters
    bp, order = torch.sort(bp, dim=0)
    finite = torch.isfinite(bp)
    dA = torch.where(finite, torch.take_along_dim(sign * c, order, dim=0), 0.0)
    dB = torch.where(finite, torch.take_along_dim(sign * e, order, dim=0), 0.0)
    zero = torch.zeros_like(A)[None]
    As = A + torch.cat([zero, torch.cumsum(dA, dim=0)])  # derivative on interval k: As + Bs t
    Bs = B + torch.cat([zero, torch.cumsum(dB, dim=0)])
    ends = torch.cat([bp, torch.full_like(zero, math.inf)])
    with torch.no_grad():
        right = torch.where(torch.isinf(ends), torch.where(Bs > 0, math.inf, As), As + Bs * ends)
    k = torch.argmax((right >= 0).to(torch.int8), dim=0)
    Ak = As.gather(0, k[None])[0]
    Bk = Bs.gather(0, k[None])[0]
    t = -Ak / torch.where(Bk > 0, Bk, 1.0)
    return torch.where((Bk > 0) & (t > 0) & torch.isfinite(t), t, 1.0)
