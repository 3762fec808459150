"""One-vs-rest linear SVMs with C chosen per class, solved on one shared Gram matrix; model files.

:class:`SVMClassifier` solves, for each class, the problem scikit-learn's ``LinearSVC``
(liblinear) solves, with the same bias treatment: x is augmented with a constant feature
``intercept_scaling`` = s, so that the bias is regularised like any weight::

    min_{w, b}  1/2 |w|^2 + 1/2 b^2 + C * sum_i loss(y_i (w . x_i + s b))

with ``loss`` the hinge ``max(0, 1 - m)`` or the squared hinge ``max(0, 1 - m)^2``; the reported
``intercept_`` is ``s * b``. It works in the dual, where every problem sees the data only
through the kernel ``K = X X^T + s^2``: one (N, N) Gram matrix serves every class, every C of
the grid and every cross-validation fold (a fold's problem uses the fold's rows and columns of
K). All (class, C) problems of a fold are solved together by dual coordinate descent, the
method of liblinear, with the problems as the columns of matrices: a block of coordinates is
updated exactly, one coordinate after another, and the decision values of all rows are then
brought up to date with one matrix product (on CPU the folds run at once, in threads, and a
single batch is split over two). Convergence uses liblinear's test: the range of
the projected gradient over all coordinates is at most ``tol``. Chosen Cs are refitted on all
training rows, warm-started from the fold solutions, and the weights ``w = sum_i a_i y_i x_i``
are formed once at the end.

When that Gram matrix would exceed ``max_gram_bytes`` (``solver="auto"``), the squared-hinge
problems are solved instead in the primal by :mod:`vggfeat.primal`, over X in row chunks
(memory O(N D + (N + D) P), no N x N matrix); ``solver_`` records which ran.

Targets, as scikit-learn reads them: a 1-D ``y`` of class labels is multi-class one-vs-rest
(a binary ``y`` is one problem whose positive class is ``classes_[1]``, as in LinearSVC); a
2-D ``y`` is multi-label, one problem per column, read as a 0/1 indicator matrix
(``label_format="indicator"``, the default) or as VOC labels 1 / -1 / 0, with 0 (difficult)
rows left out of that column's problem (``label_format="voc"``).

Model files (HDF5, no pickle; format ``vggfeat-svm`` version 2):

    /            attrs: format, format_version, params (JSON; with "solver_", the solver that
                        ran), spec (JSON), versions (JSON), created,
                        target ("multiclass" | "multilabel"),
                        label_format ("classes" | "indicator" | "voc"),
                        target_dtype (numpy dtype of the fitted y, for multi-label predict)
    /classes     (K,) utf-8 strings: the class labels (multi-label: the class names, or the
                 column numbers when none were given); attrs: kind (str|int|float|bool),
                 dtype (numpy dtype)
    /coef        (P, D) float64: one row per problem (P = K, or 1 for a binary y)
    /intercept   (P,) float64
    /C           (P,) float64: the C used for each problem
    /Cs          (M,) float64: the grid searched
    /cv_scores   (P, M) float64: mean validation AP per problem and C (NaN where not measured)
    /n_iter      (P,) int64: epochs (dual) or Newton iterations (primal) of the final fit

Version 1 files (before the label semantics were recorded) still load: as VOC-labelled, with
the class names taken from the spec where ``vggfeat svm fit`` recorded them, and a
:class:`ModelFormatWarning`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from vggfeat.errors import VggfeatError
from vggfeat.files import publish_stream
from vggfeat.metrics import average_precision
from vggfeat.versions import software_versions

__all__ = [
    "DEFAULT_CS",
    "FORMAT",
    "LABEL_FORMATS",
    "LOSSES",
    "ModelFormatWarning",
    "SVMClassifier",
    "SOLVERS",
    "SVMInputError",
    "load_svm",
    "save_svm",
]

#: Default grid of C: 10^-2 .. 10^1.5 in half-decade steps (8 values). For L2-normalised,
#: non-negative descriptors every |x| = 1, so C is the weight of one margin violation against
#: the unit-scale regulariser: below 10^-2 the bias and the mean direction dominate, and above
#: about 30 the training data (N < D) are separated and larger C changes nothing.
DEFAULT_CS: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-2.0, 1.75, 0.5))

LOSSES = ("hinge", "squared_hinge")
#: How a 2-D y is read: a 0/1 indicator matrix (scikit-learn's) or VOC labels 1 / -1 / 0.
LABEL_FORMATS = ("indicator", "voc")
SOLVERS = ("auto", "dual", "primal")
FORMAT = "vggfeat-svm"
FORMAT_VERSION = 2

_BLOCK = 128  # coordinates per block: one (N, B) x (B, P) product per block
#: Passes over each block per epoch (vggfeat.sweep): single steps, then pair steps, alternately.
#: (128 x 8 passes costs about 10% less per fold at VOC-2007 size than 256 x 6: the passes
#: cost O(B^2) per block, and more of them cut the epochs as much.)
_PASSES = (0, 1) * 4
#: Threads (groups of problems) of the dual solver on CPU. Fixed, not the number of cores, so
#: that the result (each group's coordinate orders) is the same on every machine.
_CPU_GROUPS = 2
_GRAM_BLOCK = 512  # rows per block of the Gram matrix
_PREDICT_ROWS = 2048
#: Default largest N x N float64 Gram matrix (bytes) the dual path builds; above it "auto"
#: uses the primal solver. 4 GiB: N = 23,170 (Caltech-256's 15,420 training images fit).
MAX_GRAM_BYTES = 4 << 30

Progress = Callable[[int, int], None]


class SVMInputError(VggfeatError, ValueError):
    """Invalid data or parameters given to :class:`SVMClassifier`.

    A ``ValueError``, as scikit-learn expects of estimators (``GridSearchCV`` and the
    conformance checks rely on it), and a ``VggfeatError``, so the CLI prints it as one line.
    """


class _SVMTypeError(SVMInputError, TypeError):
    """X holds values that are not numbers (a TypeError, as ``np.asarray`` raises it)."""


class ModelFormatWarning(UserWarning):
    """A model file of an older format was read; what it lacks is said in the message."""


class SVMClassifier(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVMs, with C chosen per class by cross-validated AP.

    Each class gets the solution scikit-learn's ``LinearSVC(dual=True)`` finds with the same
    C, loss, ``fit_intercept`` and ``intercept_scaling``, to solver tolerance.

    Args:
        C: Regularisation weight used for every class when ``Cs`` is None.
        Cs: Grid of C (e.g. :data:`DEFAULT_CS`); if given, each class gets the C of the grid
            with the best mean validation AP ("area"), ties going to the larger C, and is
            then refitted on all the training data. A one-value grid is used without
            validation.
        cv: Number of stratified cross-validation folds used to choose C.
        holdout: If set, choose C on one stratified held-out fraction of the training data
            (e.g. 0.2, the paper's Caltech protocol) instead of ``cv`` folds.
        loss: ``"squared_hinge"`` (liblinear's L2-loss, LinearSVC's default) or ``"hinge"``.
        fit_intercept: Learn a bias (regularised, as in liblinear).
        intercept_scaling: Value s of the constant feature appended to x for the bias.
        tol: Stopping tolerance on the range of the dual projected gradient (liblinear's
            ``eps``).
        max_iter: Maximum epochs (passes over the coordinates) per problem.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``; where the Gram matrix and matrix products run.
        solver: ``"dual"``: dual coordinate descent on one shared (N, N) float64 Gram matrix
            (both losses). ``"primal"``: :mod:`vggfeat.primal`'s finite Newton method over X
            in row chunks, memory O(N D + (N + D) P), squared hinge only; its ``tol`` is
            liblinear's primal rule (relative gradient norm), as in
            ``LinearSVC(dual=False)``. ``"auto"``: dual while the Gram matrix takes at most
            ``max_gram_bytes``, else primal.
        max_gram_bytes: Largest Gram matrix (8 N^2 bytes) ``"auto"`` builds. The dual path's
            peak is about 1.7x that on a CPU: each fold also holds its rows' float64 kernel and
            a float32 copy (12 bytes per pair of the fold's rows).
        random_state: Seed for the folds and the coordinate order.
        verbose: Print stages, epochs and timings to stderr.
        label_format: How a 2-D ``y`` is read: ``"indicator"`` (scikit-learn's 0/1 multi-label
            indicator matrix, 0 = negative) or ``"voc"`` (1 positive, -1 negative, 0 difficult:
            left out of that class's problem). A 2-D ``y`` that fits neither is refused.
        class_names: Names of the columns of a 2-D ``y`` (become ``classes_``); default the
            column numbers.

    Attributes:
        classes_: (K,) class labels (multi-class: sorted unique ``y``; multi-label:
            ``class_names`` or ``arange(K)``).
        coef_: (P, D) weights, one row per problem: P = K, except P = 1 for a binary ``y``
            (positive class ``classes_[1]``, as in scikit-learn). intercept_: (P,) biases
            (``s * b``).
        C_: (P,) C used per problem. Cs_: (M,) grid searched (``[C]`` without a grid).
        cv_scores_: (P, M) mean validation AP (NaN where not measured).
        n_iter_: (P,) epochs (dual) or Newton iterations (primal) of the final fit.
        n_features_in_: D. solver_: The solver that ran, ``"dual"`` or ``"primal"``.
        cv_fold_: (N,) validation part of each training row in the C selection (-1: used
            only for training); None without selection.
        multilabel_: Whether ``y`` was 2-D (one problem per column).
        label_format_: How ``y`` was read: ``"classes"`` (1-D), ``"indicator"`` or ``"voc"``.

    ``decision_function`` and ``predict`` take any matrix with D columns: they cannot check
    that its columns are the features the model was fit on. For feature stores, build X with
    the model's own spec: :func:`vggfeat.features.predict_store` (or ``vggfeat svm predict``).

    Example:
        >>> clf = SVMClassifier(Cs=DEFAULT_CS, label_format="voc").fit(X_train, Y_train)
        >>> scores = clf.decision_function(X_test)  # (N_test, 20); Y_train (N, 20) in 1/-1/0
    """

    def __init__(
        self,
        C: float = 1.0,
        Cs: Sequence[float] | None = None,
        cv: int = 3,
        holdout: float | None = None,
        loss: str = "squared_hinge",
        fit_intercept: bool = True,
        intercept_scaling: float = 1.0,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "auto",
        random_state: Any = 0,
        verbose: bool = False,
        label_format: str = "indicator",
        class_names: Sequence[str] | None = None,
        solver: str = "auto",
        max_gram_bytes: int = MAX_GRAM_BYTES,
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.holdout = holdout
        self.loss = loss
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.label_format = label_format
        self.class_names = class_names
        self.solver = solver
        self.max_gram_bytes = max_gram_bytes

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: Any, y: Any, progress: Progress | None = None) -> SVMClassifier:
        """Choose C per class (if ``Cs``) and fit one linear SVM per class.

        Args:
            X: (N, D) features (finite; float32 recommended). Dense: sparse matrices are
                refused.
            y: (N,) class labels of any sortable type, one-vs-rest (two classes: one
                problem); or (N, K) multi-label targets, one problem per column, read as
                ``label_format`` says. An (N, 1) y is a column vector of class labels, as in
                scikit-learn (with its DataConversionWarning), unless ``label_format="voc"``,
                where it is one VOC class.
            progress: Called as ``progress(done, total)`` as work finishes; the units are
                blocks of the Gram matrix and (class, C, fold) problems.

        Returns:
            self.

        Raises:
            SVMInputError: Invalid parameters, X or y (a ValueError).
        """
        import torch

        from vggfeat.devices import resolve_device

        opts = _check_params(self)
        X = _check_X(X)
        targets = _encode_targets(y, len(X), self.label_format, self.class_names)
        Y, classes, multilabel = targets.Y, targets.classes, targets.kind != "classes"
        n, dim = X.shape
        K = Y.shape[1]
        rng = np.random.default_rng(check_random_state(self.random_state).randint(2**31 - 1))
        device = resolve_device(self.device)
        dtype = torch.float64  # float32 loses the decision values to cancellation at large C
        log = _Log(self.verbose)
        grid = opts["Cs"]
        select = grid is not None and len(grid) > 1
        splits = _make_splits(targets.strata, opts, rng) if select else []
        solver = _choose_solver(opts, n, self.loss)
        n_gram = math.ceil(n / _GRAM_BLOCK) if solver == "dual" else 0
        total = n_gram + K * (len(grid) if select else 0) * len(splits) + K
        ticker = _Ticker(progress, total)
        squared = self.loss == "squared_hinge"
        scale = float(self.intercept_scaling) if self.fit_intercept else 0.0

        t0 = time.perf_counter()
        if solver == "dual":
            with _warming_up():
                gram = _gram(X, scale, device, dtype, ticker)
            log(f"Gram {n}x{n} from D={dim} on {device}: {time.perf_counter() - t0:.1f}s")
        else:
            log(f"primal solver: {n}x{dim} X, Gram would take {8 * n * n / 2**30:.1f} GiB")
        Cs = np.array([float(self.C)]) if grid is None else grid
        scores = np.full((K, len(Cs)), np.nan)
        chosen, warm = np.full(K, Cs[0]), None
        if select:
            if solver == "dual":
                scores, warm = _cross_validate(gram, Y, splits, Cs, squared, opts, rng, ticker, log)
            else:
                scores, warm = _cross_validate_primal(
                    X, Y, splits, Cs, scale, opts, device, ticker, log
                )
            for k in range(K):
                if np.isnan(scores[k]).all():
                    raise SVMInputError(
                        f"Class {_show(targets.problems[k])} has no positive example in any "
                        f"validation part ({int((Y[:, k] > 0).sum())} positives in all), so C "
                        "cannot be chosen for it; use more folds (cv) instead of holdout, a "
                        "larger holdout, or fix C (Cs=None)."
                    )
            # Ties go to the larger C. Validation AP saturates on easy classes; the smallest
            # such C shrinks w until the scores are mostly bias, and one-vs-rest classes fitted
            # that way cannot be compared by argmax (seen: 25% vs 97.5% mean class recall).
            best = (
                len(Cs)
                - 1
                - np.argmax(np.where(np.isnan(scores), -np.inf, scores)[:, ::-1], axis=1)
            )
            chosen = Cs[best]
            warm = warm[:, np.arange(K) * len(Cs) + best]

        t1 = time.perf_counter()
        if solver == "dual":
            alpha, n_iter = _solve_dual(
                gram, np.arange(n), Y, chosen, squared, opts, rng, alpha0=warm, ticker=ticker,
                what="final fit",
            )  # fmt: skip
            del gram
            beta = alpha * Y
            self.coef_ = _weights(beta, X)
            self.intercept_ = scale * scale * beta.sum(axis=0) if scale else np.zeros(K)
        else:
            from vggfeat.primal import solve_primal

            W, n_iter, _ = solve_primal(
                X, Y, chosen, scale=scale, tol=opts["tol"], max_iter=opts["max_iter"],
                device=device, W0=warm, ticker=ticker, what="final fit",
            )  # fmt: skip
            self.coef_ = np.ascontiguousarray(W[:-1].T)
            self.intercept_ = scale * W[-1]
        log(f"final fit ({solver}): {n} rows, {K} problems, iterations max {n_iter.max()}: "
            f"{time.perf_counter() - t1:.1f}s")  # fmt: skip
        self.solver_ = solver
        self.classes_ = classes
        self.multilabel_ = multilabel
        self.label_format_ = targets.kind
        self._target_dtype = targets.dtype
        self.C_ = chosen.astype(np.float64)
        self.Cs_ = Cs
        self.cv_scores_ = scores
        self.n_iter_ = n_iter
        self.n_features_in_ = dim
        self.cv_fold_ = None
        if splits:
            self.cv_fold_ = np.full(n, -1, np.int64)
            for f, (_, va) in enumerate(splits):
                self.cv_fold_[va] = f
        log(f"total {time.perf_counter() - t0:.1f}s")
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed distances ``X @ coef_.T + intercept_``, as scikit-learn shapes them.

        Returns:
            (N,) for a binary ``y`` (positive: ``classes_[1]``), else (N, K), one column per
            class. :meth:`class_scores` always gives (N, K).

        X is only checked for its shape and values: see the class docstring for building it
        from feature stores with the model's own spec.
        """
        scores = self._scores(X)
        return scores[:, 0] if self._binary else scores

    def class_scores(self, X: Any) -> np.ndarray:
        """(N, K) scores, column k for ``classes_[k]``, for every target type.

        For a binary ``y`` the columns are ``(-d, d)``, d the decision function, so their
        argmax is :meth:`predict`; otherwise this is :meth:`decision_function`.
        """
        scores = self._scores(X)
        return np.hstack([-scores, scores]) if self._binary else scores

    def predict(self, X: Any) -> np.ndarray:
        """Class labels.

        Returns:
            Multi-class: (N,) ``classes_[argmax]`` (binary: ``classes_[1]`` where the decision
            is positive). Multi-label: (N, K) in the dtype of the fitted ``y``, 1 where the
            decision is positive, else 0 (indicator) or -1 (VOC).
        """
        scores = self._scores(X)
        if self.multilabel_:
            negative = -1 if self.label_format_ == "voc" else 0
            return np.where(scores > 0, 1, negative).astype(self._target_dtype)
        if self._binary:
            return self.classes_[(scores[:, 0] > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """How well the model predicts ``y``: higher is better, in [0, 1].

        Multi-class and indicator targets: scikit-learn's accuracy (subset accuracy for
        multi-label). VOC targets, where accuracy is undefined (difficult images): mean
        AP ("area", difficult images ignored) over the classes with a positive in ``y``,
        the criterion that chooses C.
        """
        check_is_fitted(self, "coef_")
        if self.label_format_ != "voc":
            return float(super().score(X, y, sample_weight=sample_weight))
        if sample_weight is not None:
            raise SVMInputError("score with VOC labels takes no sample_weight (AP is unweighted).")
        X = _check_X(X, self.n_features_in_)
        Y = np.asarray(y)
        if Y.shape != (len(X), len(self.classes_)):
            raise SVMInputError(
                f"y must be ({len(X)}, {len(self.classes_)}) VOC labels for this model; got "
                f"shape {Y.shape}."
            )
        _voc_values(Y)
        scores = self._scores(X)
        aps = [
            average_precision(scores[:, k], Y[:, k], "area")
            for k in range(Y.shape[1])
            if (Y[:, k] > 0).any()
        ]
        if not aps:
            raise SVMInputError("y has no positive label (1) in any class: AP is undefined.")
        return float(np.mean(aps))

    @property
    def _binary(self) -> bool:
        return not self.multilabel_ and len(self.classes_) == 2

    def _scores(self, X: Any) -> np.ndarray:
        """(N, P) float64 ``X @ coef_.T + intercept_``, after checking X."""
        check_is_fitted(self, "coef_")
        X = _check_X(X, self.n_features_in_)
        out = np.empty((len(X), len(self.coef_)))
        for s in range(0, len(X), _PREDICT_ROWS):
            out[s : s + _PREDICT_ROWS] = X[s : s + _PREDICT_ROWS] @ self.coef_.T
        return out + self.intercept_


# ---------------------------------------------------------------------------------------------
# Validation


def _show(value: Any) -> str:
    """repr of a value as Python writes it ('cat', 3, [0.1, 1.0]), never numpy's
    (np.str_('cat'), np.int64(3), array([0.1, 1. ]))."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    return repr(value)


def _show_value(value: float) -> str:
    """A label value read as float, written as the number it is (1, -1, 0.5, nan)."""
    return str(int(value)) if float(value).is_integer() else str(float(value))


def _check_params(est: SVMClassifier) -> dict[str, Any]:
    """Validated copies of the estimator's parameters (raises SVMInputError)."""
    if est.loss not in LOSSES:
        raise SVMInputError(f"Unknown loss {_show(est.loss)}. Valid losses: {', '.join(LOSSES)}.")
    if est.label_format not in LABEL_FORMATS:
        raise SVMInputError(
            f"Unknown label_format {_show(est.label_format)}. Valid: indicator (0/1 multi-label "
            "matrix), voc (1 / -1 / 0 difficult)."
        )
    if not _positive(est.C):
        raise SVMInputError(f"C must be a positive finite number; got {_show(est.C)}.")
    Cs = est.Cs
    if Cs is not None:
        try:
            Cs = np.asarray(Cs, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise SVMInputError(
                f"Cs must be a sequence of positive numbers (e.g. vggfeat.svm.DEFAULT_CS); "
                f"got {_show(est.Cs)}."
            ) from None
        if len(Cs) == 0 or not all(_positive(c) for c in Cs):
            raise SVMInputError(
                f"Cs must be a non-empty sequence of positive finite numbers (e.g. "
                f"vggfeat.svm.DEFAULT_CS); got {_show(est.Cs)}."
            )
        Cs = np.unique(Cs)
    holdout = est.holdout
    if holdout is not None and not (_number(holdout) and 0 < holdout < 1):
        raise SVMInputError(
            f"holdout must be a fraction in (0, 1) (e.g. 0.2) or None; got {_show(holdout)}."
        )
    cv = est.cv
    selecting = Cs is not None and len(Cs) > 1 and holdout is None
    if selecting and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2):
        raise SVMInputError(f"cv must be an integer number of folds >= 2; got {_show(cv)}.")
    if est.fit_intercept and not _positive(est.intercept_scaling):
        raise SVMInputError(
            f"intercept_scaling must be a positive number; got {_show(est.intercept_scaling)}."
        )
    if not _positive(est.tol):
        raise SVMInputError(f"tol must be a positive number; got {_show(est.tol)}.")
    if isinstance(est.max_iter, bool) or not isinstance(est.max_iter, (int, np.integer)):
        raise SVMInputError(f"max_iter must be a positive integer; got {_show(est.max_iter)}.")
    if est.max_iter < 1:
        raise SVMInputError(f"max_iter must be a positive integer; got {_show(est.max_iter)}.")
    if est.solver not in SOLVERS:
        raise SVMInputError(
            f"Unknown solver {_show(est.solver)}. Valid solvers: {', '.join(SOLVERS)}."
        )
    if est.solver == "primal" and est.loss != "squared_hinge":
        raise SVMInputError(
            f"solver='primal' solves the squared hinge only; got loss={_show(est.loss)}. Use "
            "loss='squared_hinge' or solver='dual'."
        )
    if not _positive(est.max_gram_bytes):
        raise SVMInputError(
            f"max_gram_bytes must be a positive number of bytes; got {_show(est.max_gram_bytes)}."
        )
    return {"Cs": Cs, "cv": cv, "holdout": holdout, "tol": float(est.tol),
            "max_iter": int(est.max_iter), "solver": est.solver,
            "max_gram_bytes": float(est.max_gram_bytes)}  # fmt: skip


def _choose_solver(opts: dict[str, Any], n: int, loss: str) -> str:
    """``"dual"`` or ``"primal"``: "auto" builds the Gram matrix only when it fits."""
    if opts["solver"] != "auto":
        return opts["solver"]
    need = 8.0 * n * n
    if need <= opts["max_gram_bytes"]:
        return "dual"
    if loss != "squared_hinge":
        raise VggfeatError(
            f"{n} training rows need a {need / 2**30:.1f} GiB Gram matrix, more than "
            f"max_gram_bytes ({opts['max_gram_bytes'] / 2**30:.1f} GiB), and the primal "
            f"solver that needs none solves the squared hinge only; use "
            "loss='squared_hinge' or raise max_gram_bytes."
        )
    return "primal"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _positive(v: Any) -> bool:
    return _number(v) and math.isfinite(v) and v > 0


def _check_X(X: Any, n_features: int | None = None) -> np.ndarray:
    """(N, D) float32 or float64, C-contiguous, writable array of finite values.

    Args:
        X: The input.
        n_features: D the model was fitted on (checked), or None when fitting.
    """
    if X is None:
        raise SVMInputError("X is None; pass an (N, D) array of features.")
    if hasattr(X, "tocsr") or hasattr(X, "toarray"):
        raise SVMInputError(
            "Sparse data was passed for X, but dense data is required: use X.toarray() "
            "(vggfeat's SVMs take dense descriptors)."
        )
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise SVMInputError(f"X is not a numeric array: {exc}") from None
    if X.dtype.kind == "c":
        raise SVMInputError(f"Complex data not supported: X has dtype {X.dtype}.")
    if X.dtype.kind == "O":
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise _SVMTypeError(f"X holds values that are not numbers: {exc}.") from None
    if X.dtype.kind not in "fiub":
        raise SVMInputError(f"X must be numeric; got dtype {X.dtype}.")
    if X.ndim != 2:
        hint = (
            " Reshape your data: X.reshape(-1, 1) for one feature, X.reshape(1, -1) for one sample."
            if X.ndim < 2
            else ""
        )
        raise SVMInputError(f"X must be 2-D (N, D); got shape {X.shape}.{hint}")
    if X.shape[0] == 0:
        raise SVMInputError(
            f"X has 0 sample(s) (shape={X.shape}) while a minimum of 1 is required: nothing "
            "to train on or score."
        )
    if X.shape[1] == 0:
        raise SVMInputError(
            f"X has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required."
        )
    if n_features is not None and X.shape[1] != n_features:
        raise SVMInputError(
            f"X has {X.shape[1]} features, but SVMClassifier is expecting {n_features} "
            "features as input; build X with the model's feature spec "
            "(vggfeat.features.predict_store)."
        )
    if X.dtype != np.float64:
        X = X.astype(np.float32, copy=False)
    X = np.require(X, requirements=["C", "W"])  # torch cannot wrap read-only arrays
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        rows = "row" if len(bad) == 1 else "rows"
        raise SVMInputError(
            f"X has {len(bad)} {rows} with NaN or inf values ({rows} "
            f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); drop them "
            "(failed images are NaN rows in a feature store)."
        )
    return X


class _Targets(NamedTuple):
    """Encoded training targets.

    Y: (N, P) int8 in {1, -1, 0} (0: row not in that problem). classes: (K,) labels.
    kind: 'classes' (1-D y), 'indicator' or 'voc'. strata: (N,) int stratum of each row for
    the folds. problems: (P,) label naming each problem. dtype: numpy dtype of y.
    """

    Y: np.ndarray
    classes: np.ndarray
    kind: str
    strata: np.ndarray
    problems: np.ndarray
    dtype: np.dtype


def _encode_targets(
    y: Any, n: int, label_format: str, class_names: Sequence[str] | None
) -> _Targets:
    """Read ``y`` as scikit-learn does (see the module docstring); raises SVMInputError."""
    if y is None:
        raise SVMInputError("SVMClassifier requires y to be passed, but the target y is None.")
    if hasattr(y, "tocsr") or hasattr(y, "toarray"):
        raise SVMInputError("Sparse data was passed for y; pass a dense array (y.toarray()).")
    try:
        y = np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise SVMInputError(f"y is not an array of labels: {exc}") from None
    if y.ndim == 2 and y.shape[1] == 1 and label_format == "indicator":
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; read as (N,) class "
            "labels (use label_format='voc' for one VOC class).",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y[:, 0]
    if y.ndim not in (1, 2) or len(y) != n:
        raise SVMInputError(
            f"y must be (N,) class labels or an (N, K) label matrix with N = {n} rows of X; "
            f"got shape {y.shape} (found input variables with inconsistent numbers of samples)."
        )
    if y.dtype.kind == "c":
        raise SVMInputError(f"Complex data not supported: y has dtype {y.dtype}.")
    if y.ndim == 1:
        if class_names is not None:
            raise SVMInputError(
                "class_names names the columns of a 2-D y; a 1-D y's classes are its values."
            )
        return _encode_classes(y)
    return _encode_multilabel(y, label_format, class_names)


def _encode_classes(y: np.ndarray) -> _Targets:
    from sklearn.utils.multiclass import type_of_target

    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).sum())
        raise SVMInputError(f"Input y contains NaN or infinity ({bad} of {len(y)} labels).")
    try:
        kind = type_of_target(y, input_name="y")
    except ValueError as exc:
        raise SVMInputError(str(exc).splitlines()[0]) from None
    if kind.startswith("continuous"):
        example = y[np.flatnonzero(y != np.round(y))[0]]
        raise SVMInputError(
            f"Unknown label type: continuous y (e.g. {_show(example)}); SVMClassifier needs "
            "class labels (ints or strings), not regression targets."
        )
    try:
        classes, inverse = np.unique(y, return_inverse=True)
    except TypeError:
        raise SVMInputError(
            "y holds labels of mixed types that cannot be sorted; use one type (all str or "
            "all int)."
        ) from None
    if len(classes) < 2:
        raise SVMInputError(
            f"y has only one class ({_show(classes[0])}); a classifier needs examples of at "
            "least two."
        )
    inverse = inverse.ravel()
    if len(classes) == 2:  # one problem, positive class classes_[1], as in LinearSVC
        Y = np.where(inverse == 1, 1, -1).astype(np.int8)[:, None]
        problems = classes[1:]
    else:
        Y = np.where(inverse[:, None] == np.arange(len(classes))[None, :], 1, -1).astype(np.int8)
        problems = classes
    return _Targets(Y, classes, "classes", inverse, problems, classes.dtype)


def _voc_values(y: np.ndarray) -> np.ndarray:
    """(N, K) int8 copy of VOC labels; refuses other values."""
    try:
        values = np.unique(y.astype(np.float64))
    except (TypeError, ValueError):
        values = np.array([np.nan])
    bad = values[~np.isin(values, (1, -1, 0))]
    if len(bad):
        raise SVMInputError(
            "VOC labels must be 1 (positive), -1 (negative) or 0 (difficult); got "
            f"{', '.join(_show_value(v) for v in bad[:5])}."
        )
    return y.astype(np.int8)


def _encode_multilabel(
    y: np.ndarray, label_format: str, class_names: Sequence[str] | None
) -> _Targets:
    K = y.shape[1]
    if K == 0:
        raise SVMInputError("y has no columns: there is no class to train.")
    try:
        values = np.unique(y.astype(np.float64))
    except (TypeError, ValueError):
        values = np.array([np.nan])
    valid = (0, 1) if label_format == "indicator" else (1, -1, 0)
    if not np.isin(values, valid).all():
        found = ", ".join(_show_value(v) for v in values[:6])
        hint = ""
        if label_format == "indicator" and np.isin(values, (1, -1, 0)).all():
            hint = " These look like VOC labels: pass label_format='voc'."
        raise SVMInputError(
            "A 2-D y must be a 0/1 indicator matrix (label_format='indicator') or VOC labels "
            f"1 / -1 / 0 difficult (label_format='voc'); got values {found} with "
            f"label_format={label_format!r}.{hint}"
        )
    if label_format == "indicator":
        Y = np.where(y.astype(np.float64) == 1, 1, -1).astype(np.int8)
    else:
        Y = y.astype(np.int8)
    if class_names is None:
        classes = np.arange(K)
    else:
        classes = np.asarray(list(class_names))
        if classes.ndim != 1 or len(classes) != K or len(set(classes.tolist())) != K:
            raise SVMInputError(
                f"class_names must name the {K} columns of y, each once; got {len(classes)} names."
            )
    for sign, word in ((1, "positive"), (-1, "negative")):
        missing = np.flatnonzero(~(Y == sign).any(axis=0))
        if len(missing):
            k = int(missing[0])
            hint = ""
            if sign < 0 and label_format == "voc" and (y == 0).any():
                hint = " (if 0 means negative, use label_format='indicator')"
            raise SVMInputError(
                f"Class {_show(classes[k])} (column {k} of y) has no {word} training example "
                f"({len(missing)} such classes){hint}; drop it or add examples."
            )
    # Strata for the folds: a row's rarest positive class, so each class's positives spread
    # evenly over the parts.
    n = len(Y)
    pos = Y > 0
    rarity = np.where(pos, pos.sum(axis=0)[None, :], n + 1)
    strata = np.where(pos.any(axis=1), np.argmin(rarity, axis=1), K)
    return _Targets(Y, classes, label_format, strata, classes, y.dtype)


def _make_splits(
    strata: np.ndarray, opts: dict[str, Any], rng: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train rows, validation rows) pairs: ``cv`` folds, or one holdout split.

    Args:
        strata: (N,) stratum of each row (its class, or its rarest positive class), so each
            class's positives spread evenly over the parts.
    """
    n = len(strata)
    if opts["holdout"] is not None:
        frac = float(opts["holdout"])
        val = np.zeros(n, bool)
        for s in np.unique(strata):
            rows = rng.permutation(np.flatnonzero(strata == s))
            take = math.floor(frac * len(rows) + 0.5)
            if len(rows) >= 2:
                take = min(max(take, 1), len(rows) - 1)
            val[rows[:take]] = True
        if val.all() or not val.any():
            raise SVMInputError(
                f"holdout={frac} leaves an empty training or validation part of {n} rows; "
                "use a fraction that keeps both non-empty."
            )
        return [(np.flatnonzero(~val), np.flatnonzero(val))]
    folds = int(opts["cv"])
    if folds > n:
        raise SVMInputError(f"cv={folds} folds need at least {folds} training rows; got {n}.")
    fold_of = np.empty(n, np.int64)
    offset = int(rng.integers(folds))
    for s in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == s))
        fold_of[rows] = (offset + np.arange(len(rows))) % folds
        offset += len(rows)
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]


# ---------------------------------------------------------------------------------------------
# Solver


class _Ticker:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self._lock = threading.Lock()
        if progress is not None:
            progress(0, total)

    def __call__(self, n: int = 1) -> None:
        with self._lock:  # folds may finish problems in several threads
            self.done += n
            if self.progress is not None and n:
                self.progress(min(self.done, self.total), self.total)


class _Log:
    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"[vggfeat.svm] {msg}", file=sys.stderr, flush=True)


def _cross_validate(
    gram: Any,
    Y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    Cs: np.ndarray,
    squared: bool,
    opts: dict[str, Any],
    rng: Any,
    ticker: _Ticker,
    log: _Log,
) -> tuple[np.ndarray, np.ndarray]:
    """Validation AP of every (class, C) on every split, all solved on the one kernel.

    On CPU the splits run at once, one thread each (as many as the fold kernels, 12 n^2
    bytes each, fit in ``max_gram_bytes``), each split's problems in one batch: three folds
    on two cores keep both busy with no thread waiting on another. Each split has its own
    random generator, so results do not depend on which runs first.

    Returns:
        (K, M) mean validation AP over the splits where the class has a positive (NaN where
        none has), and the (N, K * M) mean of each row's dual variables over the splits it
        trained in (column k * M + c: class k at Cs[c]), to warm-start the refit.
    """
    import torch

    n, K = Y.shape
    M = len(Cs)
    dev = gram.device
    col_C = np.tile(Cs, K)  # columns are (class, C) pairs, class-major
    col_Y = np.repeat(Y, M, axis=1)
    ap = np.full((len(splits), K, M), np.nan)
    alpha_sum = np.zeros((n, K * M))
    counts = np.zeros(n)
    seeds = rng.integers(2**63 - 1, size=len(splits))
    largest = max(len(tr) for tr, _ in splits)
    workers = min(len(splits), int(opts["max_gram_bytes"] // (12 * largest**2)))
    concurrent = dev.type == "cpu" and workers > 1

    def solve(f: int) -> np.ndarray:
        tr, va = splits[f]
        t = time.perf_counter()
        alpha, n_iter = _solve_dual(
            gram, tr, col_Y[tr], col_C, squared, opts, np.random.default_rng(seeds[f]),
            ticker=ticker, what=f"fold {f + 1}/{len(splits)}", groups=1 if concurrent else 0,
        )  # fmt: skip
        cross = _submatrix(gram, va, tr)
        val = (cross @ torch.from_numpy(alpha * col_Y[tr]).to(dev, gram.dtype)).cpu().numpy()
        del cross
        ap[f] = _validation_ap(val, Y[va], M)
        log(f"fold {f + 1}/{len(splits)}: {len(tr)} train, {len(va)} validation rows, {K * M} "
            f"problems, epochs max {n_iter.max()} median {int(np.median(n_iter))}: "
            f"{time.perf_counter() - t:.1f}s")  # fmt: skip
        return alpha

    if concurrent:
        alphas = _in_threads(solve, len(splits), workers)
    else:
        alphas = [solve(f) for f in range(len(splits))]
    for (tr, _), alpha in zip(splits, alphas):
        alpha_sum[tr] += alpha
        counts[tr] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN classes: the caller raises
        scores = np.nanmean(ap, axis=0)
    return scores, alpha_sum / np.maximum(counts, 1)[:, None]


def _validation_ap(val: np.ndarray, Y: np.ndarray, M: int) -> np.ndarray:
    """(K, M) AP ("area") of the (n, K * M) validation scores, column k * M + c scored
    against labels Y[:, k]; NaN for classes without a positive validation row."""
    K = Y.shape[1]
    ap = np.full((K, M), np.nan)
    for k in range(K):
        if (Y[:, k] > 0).any():
            for c in range(M):
                ap[k, c] = average_precision(val[:, k * M + c], Y[:, k], "area")
    return ap


def _cross_validate_primal(
    X: np.ndarray,
    Y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    Cs: np.ndarray,
    scale: float,
    opts: dict[str, Any],
    device: Any,
    ticker: _Ticker,
    log: _Log,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_cross_validate` for the primal solver: every (split, class, C) problem in one
    batch over all of X, each split's validation rows masked out of its problems (label 0),
    so one pass over X serves every problem and gives the validation scores too.

    Returns:
        (K, M) mean validation AP, and the (D + 1, K * M) mean over the splits of each
        problem's weights (column k * M + c), to warm-start the refit.
    """
    from vggfeat.primal import solve_primal

    n, K = Y.shape
    M, F = len(Cs), len(splits)
    cols = np.empty((n, F, K, M), np.int8)
    for f, (_, va) in enumerate(splits):
        cols[:, f] = Y[:, :, None]
        cols[va, f] = 0
    t = time.perf_counter()
    W, n_iter, out = solve_primal(
        X, cols.reshape(n, -1), np.tile(Cs, F * K), scale=scale, tol=opts["tol"],
        max_iter=opts["max_iter"], device=device, ticker=ticker, what="cross-validation",
    )  # fmt: skip
    out = out.reshape(n, F, K * M)
    ap = np.stack([_validation_ap(out[va, f], Y[va], M) for f, (_, va) in enumerate(splits)])
    log(f"cross-validation (primal): {F} splits x {K * M} problems, Newton iterations max "
        f"{n_iter.max()} median {int(np.median(n_iter))}: "
        f"{time.perf_counter() - t:.1f}s")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN classes: the caller raises
        scores = np.nanmean(ap, axis=0)
    return scores, W.reshape(-1, F, K * M).mean(axis=1)


def _gram(X: np.ndarray, scale: float, device: Any, dtype: Any, ticker: _Ticker) -> Any:
    """(N, N) kernel ``X X^T + scale^2`` on ``device``; lower-triangle blocks, then mirrored.

    Products run in X's own precision and are stored in ``dtype``: float32 descriptors are
    already rounded at 6e-8 relative, and their float32 products (twice as fast on a CPU,
    many times on a GPU) differ from float64 ones by errors of that order (measured: 4e-7 at
    most on 5,011 x 8,192 L2-normalised rows), far below the solver tolerance.
    """
    import torch

    n = len(X)
    gram = torch.empty((n, n), device=device, dtype=dtype)
    if device.type == "cpu":
        # One BLAS syrk (numpy's OpenBLAS: float32 products about 1.5x faster than torch's
        # here) computes one triangle, about 20% faster than row blocks of products; it is
        # then mirrored into the float64 kernel by blocks.
        from scipy.linalg.blas import dsyrk, ssyrk

        syrk = ssyrk if X.dtype == np.float32 else dsyrk
        low = syrk(1.0, X.T, trans=1).T  # C-ordered view; its lower triangle is X X^T's
        out = gram.numpy()
        for i0 in range(0, n, _GRAM_BLOCK):
            i1 = min(n, i0 + _GRAM_BLOCK)
            block = low[i0:i1, :i1]
            out[i0:i1, :i0] = block[:, :i0]
            out[:i0, i0:i1] = block[:, :i0].T
            diag = block[:, i0:i1]
            out[i0:i1, i0:i1] = np.tril(diag) + np.tril(diag, -1).T
            ticker()
        del low
    else:
        Xt = torch.from_numpy(X).to(device=device)
        for i0 in range(0, n, _GRAM_BLOCK):
            i1 = min(n, i0 + _GRAM_BLOCK)
            block = (Xt[i0:i1] @ Xt[:i1].T).to(dtype)
            gram[i0:i1, :i1] = block
            gram[:i0, i0:i1] = block[:, :i0].T
            ticker()
        del Xt
    if scale:
        gram += scale * scale
    return gram


def _submatrix(gram: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
    """``gram[rows][:, cols]`` as a new tensor (one gather on CPU, where numpy's is faster)."""
    import torch

    if gram.device.type == "cpu":
        return torch.from_numpy(gram.numpy()[np.ix_(rows, cols)])
    dev = gram.device
    part = gram.index_select(0, torch.from_numpy(rows).to(dev))
    return part.index_select(1, torch.from_numpy(cols).to(dev))


@contextlib.contextmanager
def _warming_up() -> Iterator[None]:
    """Load the compiled block sweeps (:func:`vggfeat.sweep.warm_up`, about a second) in a
    thread while the caller computes the Gram matrix, rather than in the first epoch."""
    from vggfeat.sweep import warm_up

    thread = threading.Thread(target=warm_up, name="vggfeat-sweep-warm-up", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _in_threads(task: Callable[[int], Any], count: int, workers: int) -> list[Any]:
    """``[task(i) for i in range(count)]`` in ``workers`` threads, with BLAS single-threaded
    meanwhile (the threads divide the cores among themselves)."""
    with _single_threaded_blas(), ThreadPoolExecutor(workers, "vggfeat-svm") as pool:
        return list(pool.map(task, range(count)))


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """torch and BLAS single-threaded meanwhile: the solver's own threads share the cores,
    and spinning BLAS workers slow its Python part down."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def _solve_dual(
    gram: Any,
    rows: np.ndarray,
    Y: np.ndarray,
    C: np.ndarray,
    squared: bool,
    opts: dict[str, Any],
    rng: Any,
    alpha0: np.ndarray | None = None,
    ticker: _Ticker | None = None,
    what: str = "",
    groups: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Dual coordinate descent for P SVM problems on the same rows of one kernel.

    Problem p (column p) is liblinear's dual::

        min_a 1/2 (y*a)^T K (y*a) + 1/2 d_p |a|^2 - sum(a),  0 <= a_i <= U_ip

    with K = gram[rows][:, rows]; d_p = 1/(2 C_p), U = inf for the squared hinge and d_p = 0,
    U = C_p for the hinge; rows with y_ip = 0 are not in problem p (U_ip = 0).

    The problems are independent. On CPU they are dealt (in order of C, so that every group
    holds each C alike) into ``groups`` (default :data:`_CPU_GROUPS`) groups, each solved by
    :func:`_descend` in its own thread, with single-threaded BLAS, on one shared kernel. Each
    group has its own random generator, drawn from ``rng``, so the result does not depend on
    which thread runs first. On a GPU one batch holds them all.

    Args:
        gram: (N, N) kernel, on the compute device.
        rows: (n,) rows of ``gram`` in the problems.
        Y: (n, P) labels in {1, -1, 0} of ``rows``.
        C: (P,) C per problem.
        squared: Squared hinge (else hinge).
        opts: Validated parameters (tol, max_iter).
        rng: numpy Generator for the coordinate orders.
        alpha0: (n, P) warm start (clipped to the box).
        ticker: Told of each problem that finishes.
        what: Name of the batch, for warnings.
        groups: CPU threads (0: :data:`_CPU_GROUPS`; 1: this thread, BLAS as the caller set).

    Returns:
        alpha (n, P) float64 in the order of ``rows``, and the epochs used per problem (P,).
    """
    rows = np.asarray(rows)
    C = np.asarray(C, dtype=np.float64)
    whole = len(rows) == len(gram) and np.array_equal(rows, np.arange(len(rows)))
    K = gram if whole else _submatrix(gram, rows, rows)  # no copy for a refit on all rows
    if gram.device.type != "cpu":
        return _descend(K, None, Y, C, squared, opts, rng, alpha0, ticker, what)
    K = K.numpy()
    K32 = K.astype(np.float32)
    n, P = Y.shape
    G = groups or _CPU_GROUPS
    by_C = np.argsort(C, kind="stable")
    parts = [np.sort(by_C[g::G]) for g in range(min(G, P))]
    seeds = rng.integers(2**63 - 1, size=len(parts))

    def solve(g: int) -> tuple[np.ndarray, np.ndarray]:
        cols = parts[g]
        return _descend(
            K, K32, Y[:, cols], C[cols], squared, opts, np.random.default_rng(seeds[g]),
            None if alpha0 is None else alpha0[:, cols], ticker, what,
        )  # fmt: skip

    if len(parts) == 1:  # in the caller's thread (a fold of the concurrent cross-validation)
        return solve(0)
    solved = _in_threads(solve, len(parts), len(parts))
    alpha, epochs = np.empty((n, P)), np.empty(P, np.int64)
    for cols, (a, e) in zip(parts, solved):
        alpha[:, cols], epochs[cols] = a, e
    return alpha, epochs


def _descend(
    K: Any,
    K32: np.ndarray | None,
    Y: np.ndarray,
    C: np.ndarray,
    squared: bool,
    opts: dict[str, Any],
    rng: Any,
    alpha0: np.ndarray | None,
    ticker: _Ticker | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_solve_dual`'s problems solved as one batch on the (n, n) kernel K (numpy on
    CPU, with its float32 copy K32; else a tensor, and K32 None).

    Each epoch visits the coordinates in a new random order, as liblinear does (a fixed or
    block-structured order is many times slower here: the kernel of non-negative features has
    a large constant component, the worst case for cyclic coordinate descent). The order is
    cut into blocks of :data:`_BLOCK`; each block gets several exact passes on the host
    (:func:`vggfeat.sweep.sweep_block`: single steps, and pair steps that leave the constant
    component alone); then one (n, b) x (b, P) product brings every row's decision values up
    to date. On CPU those products read K32 (twice as fast) and accumulate in float32 over an
    epoch; the decision values then drift from K's by float32 rounding, so they are
    recomputed exactly (float64) before a problem is declared converged: a problem stops when
    the range of its projected gradient over all its coordinates, from exact decision values,
    is at most ``tol`` (liblinear's test).
    """
    import torch

    n, P = Y.shape
    cpu = K32 is not None
    dev = None if cpu else K.device
    tol, max_iter = opts["tol"], opts["max_iter"]
    upper = np.full(P, np.inf) if squared else C
    Yf = Y.astype(np.float64)
    U = np.where(Yf != 0, upper[None, :], 0).astype(np.float64)
    D = (0.5 / C if squared else np.zeros(P)).astype(np.float64)
    A = np.zeros((n, P), np.float64)
    if alpha0 is not None:
        A[:] = np.clip(alpha0, 0, U)
    out = np.zeros((n, P))
    epochs = np.zeros(P, np.int64)
    active = np.arange(P)

    def decisions(cols: np.ndarray | None = None) -> Any:
        """(n, p) exact decision values K (y*a), float64, of all or some problems."""
        beta = Yf * A if cols is None else Yf[:, cols] * A[:, cols]
        if cpu:  # (beta^T K)^T, K symmetric: a third faster than K @ beta for a few columns
            return np.ascontiguousarray((np.ascontiguousarray(beta.T) @ K).T)
        return K @ torch.from_numpy(beta).to(dev)

    if alpha0 is not None:
        F = decisions()  # (n, P): rows are contiguous for the blocks
    else:
        F = np.zeros((n, P)) if cpu else torch.zeros((n, P), dtype=K.dtype, device=dev)
    G = _gradient(Yf, F, D, A)
    hi = np.full(P, np.inf)
    lo = np.full(P, -np.inf)
    for epoch in range(1, max_iter + 1):
        # liblinear's shrinking: a coordinate at a bound whose gradient points out of the box
        # by more than last epoch's largest violation is skipped; here only when that holds
        # in every problem of the batch.
        movable = ~(((A <= 0) & (G > hi)) | ((A >= U) & (G < lo)) | (U <= 0)).all(axis=1)
        visit = np.flatnonzero(movable)
        visit = visit[rng.permutation(len(visit))]
        _epoch(K, F, A, Yf, U, D, visit, rng, K32)
        G = _gradient(Yf, F, D, A)
        pmax, pmin = _pg_range(G, A, U)
        done = pmax - pmin <= tol
        if done.any():  # confirm on exactly recomputed decision values
            cols = np.flatnonzero(done)
            F[:, cols if cpu else torch.from_numpy(cols).to(dev)] = decisions(cols)
            G = _gradient(Yf, F, D, A)
            pmax, pmin = _pg_range(G, A, U)
            done = pmax - pmin <= tol
        if epoch == max_iter and not done.all():
            warnings.warn(
                f"vggfeat.svm: {int((~done).sum())} of {P} problems ({what}) did not converge "
                f"in max_iter={max_iter} epochs; increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
            done[:] = True
        if done.any():
            out[:, active[done]] = A[:, done]
            epochs[active[done]] = epoch
            if ticker is not None:
                ticker(int(done.sum()))
            keep = np.flatnonzero(~done)
            active = active[keep]
            if not len(active):
                break
            # take on axis 1 keeps rows contiguous (M[:, mask] would be Fortran-ordered,
            # and every block's row gathers 50x slower).
            Yf, U, A, G = (np.take(M, keep, axis=1) for M in (Yf, U, A, G))
            D, pmax, pmin = D[keep], pmax[keep], pmin[keep]
            F = np.take(F, keep, axis=1) if cpu else F[:, torch.from_numpy(keep).to(dev)]
        hi = np.where(pmax > 0, pmax, np.inf)
        lo = np.where(pmin < 0, pmin, -np.inf)
    return out, epochs


def _epoch(
    K: Any,
    F: Any,
    A: np.ndarray,
    Yf: np.ndarray,
    U: np.ndarray,
    D: np.ndarray,
    visit: np.ndarray,
    rng: Any,
    K32: np.ndarray | None = None,
) -> None:
    """One pass of coordinate descent over ``visit``, in blocks, updating A and F in place.

    Each block gets the passes of :data:`_PASSES` (:func:`vggfeat.sweep.sweep_block`), each in
    a new random order, then one product brings every row's decision values up to date. On
    CPU the products go into a float32 accumulator, in place (faster than a product and a
    float64 addition per block), added to F at the end. On
    a GPU the update by block t is queued while block t+1 is swept: block t+1's rows get
    block t's effect at once from the (b, b) part of block t's panel.

    Args:
        K: (n, n) kernel: a numpy array on CPU, else a tensor. F: (n, P) decision values,
            the same kind. A, Yf, U: (n, P) duals, labels, upper bounds. D: (P,) diagonal
            term. visit: coordinates in order. rng: numpy Generator (orders).
        K32: (n, n) float32 copy of K, which the products read (CPU only).
    """
    from vggfeat.sweep import sweep_block

    cpu = K32 is not None
    kinds = np.array(_PASSES, np.int64)
    if cpu:
        acc = np.zeros(F.shape, np.float32)
        buffer = np.empty((_BLOCK, len(K32)), np.float32)
    prev = None  # GPU: (panel (b, n), step (b, P)) of block t-1, not yet applied
    for s in range(0, len(visit), _BLOCK):
        at = visit[s : s + _BLOCK]
        fb = _take_rows(F, at)
        if cpu:
            fb += acc[at]
            panel = np.take(K32, at, axis=0, out=buffer[: len(at)])
        else:
            if prev is not None:
                fb += _host(prev[0])[:, at].T.astype(np.float64) @ _host(prev[1], np.float64)
                _add_product(F, *prev)
            panel = _take_rows(K, at, keep=True)
        kbb = np.ascontiguousarray(_host(panel)[:, at], dtype=np.float64)
        old = A[at]
        new = old.copy()
        orders = np.argsort(rng.random((len(kinds), len(at))), axis=1)
        sweep_block(fb, new, Yf[at], U[at], D, kbb, orders, kinds)
        A[at] = new
        step = _like(Yf[at] * (new - old), panel)
        if cpu:
            _add_product(acc, panel, step)
        else:
            prev = (panel, step)
    if prev is not None:
        _add_product(F, *prev)
    if cpu:
        F += acc


def _take_rows(M: Any, at: np.ndarray, keep: bool = False) -> Any:
    """Rows ``at`` of a numpy array or tensor: as the same kind if ``keep``, else as a
    float64 C-contiguous numpy array."""
    if isinstance(M, np.ndarray):
        part = np.take(M, at, axis=0)
    else:
        import torch

        part = M.index_select(0, torch.from_numpy(at).to(M.device))
    return part if keep else np.ascontiguousarray(_host(part), dtype=np.float64)


def _host(M: Any, dtype: Any = None) -> np.ndarray:
    """A numpy array or tensor as a numpy array (copied to the host if on a device)."""
    if not isinstance(M, np.ndarray):
        M = M.cpu().numpy()
    return M if dtype is None else M.astype(dtype, copy=False)


def _like(step: np.ndarray, panel: Any) -> Any:
    """The (b, P) step in the panel's kind, device and precision."""
    if isinstance(panel, np.ndarray):
        return step.astype(panel.dtype)
    import torch

    return torch.from_numpy(step).to(panel.device, panel.dtype)


def _add_product(F: Any, panel: Any, step: Any) -> None:
    """``F += panel.T @ step`` in place, by torch (numpy arrays are viewed as tensors): it
    releases the GIL, so the solver's threads multiply at once (scipy's BLAS wrappers hold
    it); on a GPU the product is queued on the device stream."""
    import torch

    def tensor(M: Any) -> Any:
        return torch.from_numpy(M) if isinstance(M, np.ndarray) else M

    tensor(F).addmm_(tensor(panel).T, tensor(step))


def _gradient(Yf: np.ndarray, F: Any, D: np.ndarray, A: np.ndarray) -> np.ndarray:
    """(n, P) dual gradient ``y f + d a - 1`` from the (n, P) decision values F."""
    return Yf * _host(F) + D * A - 1


def _pg_range(G: np.ndarray, A: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) max and min of the projected gradient over all coordinates (liblinear's test)."""
    pg = np.where(A <= 0, np.minimum(G, 0), np.where(A >= U, np.maximum(G, 0), G))
    pg[U <= 0] = 0
    return pg.max(axis=0), pg.min(axis=0)


def _weights(beta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(K, D) float64 ``beta^T X``, accumulated in float64 a block of rows at a time."""
    coef = np.zeros((beta.shape[1], X.shape[1]))
    for s in range(0, len(X), _PREDICT_ROWS):
        coef += beta[s : s + _PREDICT_ROWS].T @ X[s : s + _PREDICT_ROWS].astype(np.float64)
    return coef


# ---------------------------------------------------------------------------------------------
# Model files


def _json_params(clf: SVMClassifier) -> str:
    params = clf.get_params(deep=False)
    if params["Cs"] is not None:
        params["Cs"] = [float(c) for c in np.asarray(params["Cs"], dtype=np.float64).ravel()]
    if params.get("class_names") is not None:
        params["class_names"] = [str(c) for c in params["class_names"]]
    rs = params["random_state"]
    if rs is not None and not isinstance(rs, (int, np.integer)):
        params["random_state"] = None  # a RandomState object cannot be recorded
    for key, value in params.items():
        if isinstance(value, np.generic):
            params[key] = value.item()
    params["solver_"] = getattr(clf, "solver_", "dual")  # the solver that ran
    return json.dumps(params, sort_keys=True)


def _class_kind(classes: np.ndarray) -> tuple[str, str]:
    """How /classes stores the labels: (kind, numpy dtype to restore)."""
    kind = classes.dtype.kind
    if kind == "b":
        return "bool", classes.dtype.str
    if kind in "iu":
        return "int", classes.dtype.str
    if kind == "f":
        return "float", classes.dtype.str
    values = classes.tolist()
    if kind in "US" or all(isinstance(c, str) for c in values):
        return "str", "str"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in values):
        return "int", "<i8"
    raise SVMInputError(
        f"Cannot store classes of type {type(values[0]).__name__}; use str or int labels."
    )


def save_svm(path: str | os.PathLike, clf: SVMClassifier, spec: dict[str, Any]) -> None:
    """Write a fitted classifier and its feature spec to an HDF5 model file, atomically.

    Args:
        path: Destination (replaced atomically: temporary file, fsync, rename).
        clf: A fitted :class:`SVMClassifier`.
        spec: JSON-serialisable description of the features and their provenance (stored as
            the ``spec`` attribute and returned by :func:`load_svm`); include
            :func:`vggfeat.features.feature_record` so that
            :func:`vggfeat.features.predict_store` can apply the model to feature stores.
    """
    import h5py

    check_is_fitted(clf, "coef_")
    try:
        spec_json = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise VggfeatError(f"The model spec is not JSON-serialisable: {exc}.") from None
    classes = np.asarray(clf.classes_)
    kind, dtype = _class_kind(classes)
    names = [repr(float(c)) if kind == "float" else str(c) for c in classes.tolist()]

    def verify(tmp: Path) -> None:
        # Read the file back: what load_svm will see must be what was fitted.
        back, back_spec = load_svm(tmp)
        same = back_spec == json.loads(spec_json) and np.array_equal(back.classes_, classes)
        same = same and back.label_format_ == clf.label_format_
        for name in ("coef_", "intercept_", "C_"):
            same = same and np.array_equal(getattr(back, name), getattr(clf, name))
        if not same:
            raise OSError(errno.EIO, "model file read back differs from the fitted model")

    with publish_stream(path, verify=verify, hint="free space or choose another --out") as fh:
        # libver="latest": dense attribute storage, so a large spec is not capped at 64 KB.
        with h5py.File(fh, "w", libver="latest") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["params"] = _json_params(clf)
            f.attrs["spec"] = spec_json
            f.attrs["versions"] = json.dumps(software_versions(), sort_keys=True)
            f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            f.attrs["target"] = "multilabel" if clf.multilabel_ else "multiclass"
            f.attrs["label_format"] = clf.label_format_
            f.attrs["target_dtype"] = np.dtype(clf._target_dtype).str
            ds = f.create_dataset("classes", data=names, dtype=h5py.string_dtype("utf-8"))
            ds.attrs["kind"] = kind
            ds.attrs["dtype"] = dtype
            f.create_dataset("coef", data=np.asarray(clf.coef_, np.float64))
            f.create_dataset("intercept", data=np.asarray(clf.intercept_, np.float64))
            f.create_dataset("C", data=np.asarray(clf.C_, np.float64))
            f.create_dataset("Cs", data=np.asarray(clf.Cs_, np.float64))
            f.create_dataset("cv_scores", data=np.asarray(clf.cv_scores_, np.float64))
            f.create_dataset("n_iter", data=np.asarray(clf.n_iter_, np.int64))
            f.flush()  # h5py can swallow errors raised while closing; flushing raises them


def load_svm(path: str | os.PathLike) -> tuple[SVMClassifier, dict[str, Any]]:
    """Read a model file written by :func:`save_svm`.

    Version 1 files load as VOC-labelled (their multi-label targets were VOC labels), with
    the class names restored from the spec where ``vggfeat svm fit`` recorded them, and a
    :class:`ModelFormatWarning`.

    Returns:
        The fitted classifier (no refit; ``decision_function`` gives the saved model's
        scores) and the feature spec.
    """
    import h5py

    from vggfeat.store import check_format

    path = Path(path)
    if not path.is_file():
        raise VggfeatError(f"Model file {path} does not exist.")
    key = "/"
    try:
        with h5py.File(path, "r") as f:
            check_format(f.attrs, path, FORMAT, FORMAT_VERSION, "SVM model file")
            version = int(f.attrs.get("format_version", 0))
            key = "params"
            params = json.loads(f.attrs["params"])
            key = "spec"
            spec = json.loads(f.attrs["spec"])
            key = "target"
            multilabel = str(f.attrs["target"]) == "multilabel"
            label_format = "voc" if multilabel else "classes"
            target_dtype = "<i1"
            if version >= 2:
                key = "label_format"
                label_format = str(f.attrs["label_format"])
                key = "target_dtype"
                target_dtype = str(f.attrs["target_dtype"])
            arrays = {}
            for key in ("classes", "coef", "intercept", "C", "Cs", "cv_scores", "n_iter"):
                arrays[key] = f[key][()]
            key = "classes"
            kind = str(f["classes"].attrs["kind"])
            dtype = str(f["classes"].attrs["dtype"])
    except VggfeatError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise VggfeatError(f"Cannot read model file {path} (HDF5 key {key!r}): {exc}") from None
    names = [s.decode() if isinstance(s, bytes) else str(s) for s in arrays["classes"]]
    if kind == "str":
        classes = np.array(names)
    elif kind == "bool":
        classes = np.array([s == "True" for s in names])
    else:
        classes = np.array([float(s) if kind == "float" else int(s) for s in names]).astype(dtype)
    known = SVMClassifier().get_params(deep=False)
    clf = SVMClassifier(**{k: v for k, v in params.items() if k in known})
    if version < 2:
        classes = _upgrade_v1(path, arrays, classes, multilabel, spec)
        if multilabel:
            clf.label_format = "voc"
    clf.classes_ = classes
    clf.coef_ = arrays["coef"]
    clf.intercept_ = arrays["intercept"]
    clf.C_ = arrays["C"]
    clf.Cs_ = arrays["Cs"]
    clf.cv_scores_ = arrays["cv_scores"]
    clf.n_iter_ = arrays["n_iter"]
    clf.multilabel_ = multilabel
    clf.label_format_ = label_format
    clf._target_dtype = np.dtype(target_dtype)
    clf.n_features_in_ = int(arrays["coef"].shape[1])
    clf.solver_ = str(params.get("solver_", "dual"))
    return clf, spec


def _upgrade_v1(
    path: Path,
    arrays: dict[str, np.ndarray],
    classes: np.ndarray,
    multilabel: bool,
    spec: dict[str, Any],
) -> np.ndarray:
    """Bring a version-1 model to version 2's meaning, in place; returns its classes.

    Version 1 stored what the CLI fitted on, class indices, in /classes (names only in the
    spec), and kept two one-vs-rest rows for a binary y, where version 2 has one problem.
    """
    recorded = spec.get("labels", {}).get("classes") if isinstance(spec, dict) else None
    restored = (
        recorded is not None
        and len(recorded) == len(classes)
        and classes.dtype.kind in "iu"
        and np.array_equal(classes, np.arange(len(classes)))
    )
    if restored:
        classes = np.array([str(c) for c in recorded])
    note = (
        "its class names were restored from the spec"
        if restored
        else "its /classes may hold class indices rather than names"
    )
    if not multilabel and len(classes) == 2 and len(arrays["coef"]) == 2:
        # The decision classes_[1] vs classes_[0] is the difference of the two columns:
        # predictions are unchanged.
        for key in ("coef", "intercept"):
            arrays[key] = arrays[key][1:] - arrays[key][:1]
        for key in ("C", "cv_scores", "n_iter"):
            arrays[key] = arrays[key][1:]
    warnings.warn(
        f"{path.name} is a version-1 SVM model file: read with VOC labels (1 / -1 / 0) and "
        f"{note}; refit it to write version {FORMAT_VERSION}.",
        ModelFormatWarning,
        stacklevel=3,
    )
    return classes
