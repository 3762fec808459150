"""SVM benchmark: vggfeat's C selection + fit against scikit-learn's LinearSVC doing the same work.

The data are synthetic but shaped like real L2-normalised fc7 descriptors: non-negative
ReLU-like features with a shared positive mean (so rows are strongly correlated, as fc7 rows
are), per-class sparse signal of varying strength, Gaussian noise, L2-normalised.

- ``--preset voc`` (default): VOC-2007 D&E (5,011 training images, 24,576 dims = 3 stacked
  scales of 2 x 4096, or ``--dim 8192``: scales averaged; 20 classes, multi-label with
  VOC-like class frequencies and some positives marked difficult (0)); C by 3-fold CV.
- ``--preset caltech256``: Caltech-256 D&E (257 classes x 60 training images = 15,420 rows,
  24,576 dims, multi-class one-vs-rest); C on a stratified 20% holdout, as in the paper.

Both sides do the same work per class: for every C of the grid and every fold, fit on the
fold's training rows and score AP ("area") on its validation rows; choose C (ties to the
larger); refit on all training rows. The baseline (``LinearSVC(dual=True)``, the same
problem, loss, bias treatment and tolerance) runs on a subset of the classes (spread over
class frequency) and its time is extrapolated to all classes by the number of classes;
everything else (folds, grid, tolerance) is identical. Test APs are compared at the same C.

The baseline's classes are measured, not the whole grid: its time is scaled by the number of
fits (every fit of a class is the same size), which the output states.

Example:
    python benchmarks/bench_svm.py                 # VOC-2007 size, 2 baseline classes
    python benchmarks/bench_svm.py --dim 8192      # VOC-2007 as the recipe builds it
    python benchmarks/bench_svm.py --preset caltech256
    python benchmarks/bench_svm.py --quick         # small and fast
"""

from __future__ import annotations

import json
import os
import time
import warnings

import click
import numpy as np


def make_voc_like(
    n: int, dim: int, classes: int, seed: int = 0, signal: float = 0.13
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic (n, dim) float32 L2-normalised features and (n, classes) VOC labels.

    ``signal`` sets the class signal at 24,576 dims (test mAP about 0.9 with 5,011 images);
    it is scaled so that smaller ``dim`` gives similar separability.
    """
    rng = np.random.default_rng(seed)
    prevalence = np.geomspace(0.02, 0.25, classes)
    Y = np.where(rng.random((n, classes)) < prevalence, 1, -1).astype(np.int8)
    none = (Y < 0).all(axis=1)
    Y[none, rng.integers(0, classes, int(none.sum()))] = 1
    X = fc7_like(Y, dim, rng, signal)
    Y[(Y > 0) & (rng.random((n, classes)) < 0.08)] = 0
    return X, Y


def make_caltech_like(
    per_class: int, dim: int, classes: int, seed: int = 0, signal: float = 0.13
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic (classes * per_class, dim) float32 features and (N,) class labels."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(classes), per_class))
    Y = np.where(y[:, None] == np.arange(classes), 1, -1).astype(np.int8)
    return fc7_like(Y, dim, rng, signal), y


def fc7_like(Y: np.ndarray, dim: int, rng: np.random.Generator, signal: float) -> np.ndarray:
    """(N, dim) float32 L2-normalised fc7-like rows carrying the positive labels of Y (N, K)."""
    n, classes = Y.shape
    signal = signal * (24576 / dim) ** 0.25
    base = rng.gamma(0.5, 1.0, dim).astype(np.float32)
    protos = ((rng.random((classes, dim)) < 0.05) * rng.gamma(1.0, 1.0, (classes, dim))).astype(
        np.float32
    ) * rng.uniform(0.6, 1.4, (classes, 1)).astype(np.float32)
    strength = rng.uniform(0.3, 1.0, (n, classes)).astype(np.float32) * signal * 3
    X = np.empty((n, dim), np.float32)
    for s in range(0, n, 512):
        e = min(n, s + 512)
        z = base + 1.5 * rng.standard_normal((e - s, dim), dtype=np.float32)
        z += ((Y[s:e] > 0) * strength[s:e]) @ protos
        np.maximum(z, 0, out=z)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        X[s:e] = z
    return X


def _baseline(X, Y, classes, Cs, splits, loss, tol, max_iter):
    """LinearSVC doing the selection + refit for ``classes``; (seconds, fits, C, cv, models)."""
    from sklearn.svm import LinearSVC

    from vggfeat.metrics import average_precision

    seconds, fits = 0.0, 0
    chosen, cv, models = {}, {}, {}
    for k in classes:
        ap = np.full((len(splits), len(Cs)), np.nan)
        for f, (tr, va) in enumerate(splits):
            rows = tr[Y[tr, k] != 0]
            Xf, yf = X[rows], Y[rows, k]
            for c, C in enumerate(Cs):
                t = time.perf_counter()
                clf = LinearSVC(C=C, loss=loss, dual=True, tol=tol, max_iter=max_iter)
                clf.fit(Xf, yf)
                scores = clf.decision_function(X[va])
                seconds += time.perf_counter() - t
                fits += 1
                if (Y[va, k] > 0).any():
                    ap[f, c] = average_precision(scores, Y[va, k], "area")
        cv[k] = np.nanmean(ap, axis=0)
        chosen[k] = Cs[len(Cs) - 1 - int(np.argmax(cv[k][::-1]))]  # ties to the larger C
        rows = np.flatnonzero(Y[:, k] != 0)
        t = time.perf_counter()
        models[k] = LinearSVC(C=chosen[k], loss=loss, dual=True, tol=tol, max_iter=max_iter).fit(
            X[rows], Y[rows, k]
        )
        seconds += time.perf_counter() - t
        fits += 1
    return seconds, fits, chosen, cv, models


def _table(headers: list[str], rows: list[list]) -> str:
    """Right-aligned plain-text table."""
    cells = [headers] + [
        [c if isinstance(c, str) else f"{c:g}" if isinstance(c, float) else str(c) for c in row]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@click.command()
@click.option(
    "--preset",
    type=click.Choice(["voc", "caltech256"]),
    default="voc",
    show_default=True,
    help="voc: multi-label, 3-fold CV. caltech256: 257 classes x 60 train (+20 test), "
    "multi-class, 20% holdout (sets --n, --n-test and --holdout).",
)
@click.option("--n", default=5011, show_default=True, help="Training images.")
@click.option("--n-test", default=4952, show_default=True, help="Held-out test images.")
@click.option("--dim", default=24576, show_default=True, help="Feature dimension.")
@click.option("--classes", type=int, default=None, help="Classes [voc: 20, caltech256: 257].")
@click.option("--cv", default=3, show_default=True, help="Cross-validation folds.")
@click.option("--holdout", type=float, default=None, help="Choose C on this fraction instead.")
@click.option(
    "--solver", type=click.Choice(["auto", "dual", "primal"]), default="auto", show_default=True
)
@click.option(
    "--loss",
    type=click.Choice(["squared_hinge", "hinge"]),
    default="squared_hinge",
    show_default=True,
)
@click.option("--tol", default=1e-4, show_default=True)
@click.option(
    "--baseline-classes",
    default=2,
    show_default=True,
    help="Classes the LinearSVC baseline runs, spread over class frequency (0: none).",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--quick", is_flag=True, help="Small problem: n=600, dim=2048, 6 classes.")
@click.option("--json-out", type=click.Path(), default=None, help="Also write the figures here.")
def main(
    preset,
    n,
    n_test,
    dim,
    classes,
    cv,
    holdout,
    solver,
    loss,
    tol,
    baseline_classes,
    device,
    quick,
    json_out,
):
    """Time vggfeat's C selection + fit against LinearSVC doing the same work."""
    import torch  # imported before timing: the baseline pays no import either
    from sklearn.svm import LinearSVC

    import vggfeat.sweep  # noqa: F401  (numba) imported before timing, like torch
    from vggfeat.metrics import average_precision
    from vggfeat.svm import DEFAULT_CS, SVMClassifier

    if classes is None:
        classes = (
            {"voc": 6, "caltech256": 8}[preset] if quick else {"voc": 20, "caltech256": 257}[preset]
        )
    if preset == "caltech256":
        holdout, n, n_test = 0.2, 60 * classes, 20 * classes
    if quick:
        dim = 2048
        if preset == "voc":
            n, n_test = 600, 600
    load0 = os.getloadavg()
    t = time.perf_counter()
    if preset == "caltech256":
        X, y = make_caltech_like(80, dim, classes)
        Y = np.where(y[:, None] == np.arange(classes), 1, -1).astype(np.int8)
        train = np.concatenate([np.flatnonzero(y == k)[:60] for k in range(classes)])
        test = np.setdiff1d(np.arange(len(y)), train)
        X, Xt, Y, Yt, target = X[train], X[test], Y[train], Y[test], y[train]
    else:
        X, Y = make_voc_like(n + n_test, dim, classes)
        X, Xt, Y, Yt = X[:n], X[n:], Y[:n], Y[n:]
        target = Y
    pos = (Y > 0).sum(0)
    click.echo(
        f"data ({preset}): {n} train + {n_test} test images x {dim} dims, {classes} classes, "
        f"{pos.min()}..{pos.max()} positives per class, {(Y == 0).mean():.1%} labels "
        f"difficult ({time.perf_counter() - t:.1f}s to make)"
    )
    Cs = np.array(DEFAULT_CS)
    splits_n = 1 if holdout else cv
    select = f"a {holdout:g} holdout" if holdout else f"{cv} folds"
    click.echo(
        f"work: {len(Cs)} Cs ({Cs.min():g}..{Cs.max():g}) x {select} per class, then a "
        f"refit at the chosen C; loss {loss}, tol {tol}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    ours = SVMClassifier(
        Cs=Cs, cv=cv, holdout=holdout, loss=loss, tol=tol, device=device, solver=solver,
        verbose=True, label_format="voc",
    )  # fmt: skip
    t = time.perf_counter()
    ours.fit(X, target)
    our_s = time.perf_counter() - t
    our_fits = classes * (len(Cs) * splits_n + 1)
    test_scores = ours.decision_function(Xt)
    our_ap = np.array(
        [average_precision(test_scores[:, k], Yt[:, k], "area") for k in range(classes)]
    )
    click.echo(
        f"ours: {our_s:.1f}s; test mAP {our_ap.mean():.4f}; chosen C per class "
        f"{' '.join(f'{c:g}' for c in ours.C_)}"
    )
    result = {
        "preset": preset,
        "solver": ours.solver_,
        "holdout": holdout,
        "n": n,
        "n_test": n_test,
        "dim": dim,
        "classes": classes,
        "Cs": Cs.tolist(),
        "cv": cv,
        "loss": loss,
        "tol": tol,
        "ours_seconds": our_s,
        "fits": our_fits,
        "ours_C": ours.C_.tolist(),
        "ours_test_ap": our_ap.tolist(),
    }
    if baseline_classes:
        base_k = np.unique(np.linspace(0, classes - 1, baseline_classes).round().astype(int))
        # Exactly the folds SVMClassifier used.
        splits = [
            (np.flatnonzero(ours.cv_fold_ != f), np.flatnonzero(ours.cv_fold_ == f))
            for f in range(splits_n)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base_s, base_fits, chosen, cv_ap, models = _baseline(
                X, Y, base_k, Cs, splits, loss, tol, 1000
            )
        extrap = base_s * our_fits / base_fits
        click.echo("")
        click.echo(
            _table(
                ["", "classes", "fits", "seconds", "s/fit"],
                [
                    [
                        "vggfeat SVMClassifier",
                        classes,
                        our_fits,
                        f"{our_s:.1f}",
                        f"{our_s / our_fits:.3f}",
                    ],
                    [
                        "LinearSVC, measured",
                        len(base_k),
                        base_fits,
                        f"{base_s:.1f}",
                        f"{base_s / base_fits:.3f}",
                    ],
                    [
                        "LinearSVC, same work",
                        classes,
                        our_fits,
                        f"{extrap:.1f}",
                        f"{base_s / base_fits:.3f}",
                    ],
                ],
            )
        )
        click.echo(
            f"speed-up at the same work: {extrap / our_s:.1f}x (LinearSVC measured on "
            f"{len(base_k)} of {classes} classes, {base_fits} fits, and scaled by fits)"
        )
        rows, per_class = [], []
        for k in base_k:
            model = models[k]
            if chosen[k] != ours.C_[k]:  # compare test APs at the same C: refit at ours
                keep = np.flatnonzero(Y[:, k] != 0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = LinearSVC(C=ours.C_[k], loss=loss, dual=True, tol=tol).fit(
                        X[keep], Y[keep, k]
                    )
            base_ap = average_precision(model.decision_function(Xt), Yt[:, k], "area")
            dcv = float(np.nanmax(np.abs(cv_ap[k] - ours.cv_scores_[k])))
            rows.append(
                [
                    k,
                    int(pos[k]),
                    f"{ours.C_[k]:g}",
                    f"{chosen[k]:g}",
                    f"{dcv:.5f}",
                    f"{our_ap[k]:.4f}",
                    f"{base_ap:.4f}",
                    f"{our_ap[k] - base_ap:+.5f}",
                ]
            )
            per_class.append(
                {
                    "class": int(k),
                    "positives": int(pos[k]),
                    "C_ours": float(ours.C_[k]),
                    "C_baseline": float(chosen[k]),
                    "max_abs_cv_ap_diff": dcv,
                    "test_ap_ours": float(our_ap[k]),
                    "test_ap_baseline": float(base_ap),
                }
            )
        click.echo("")
        click.echo(
            _table(
                [
                    "class",
                    "pos",
                    "C ours",
                    "C base",
                    "max|dAP| CV",
                    "test AP ours",
                    "test AP base",
                    "diff",
                ],
                rows,
            )
        )
        result.update(
            {
                "baseline_classes": base_k.tolist(),
                "baseline_seconds": base_s,
                "baseline_fits": base_fits,
                "baseline_same_work_seconds": extrap,
                "speedup": extrap / our_s,
                "per_class": per_class,
            }
        )
    finish(result, load0, json_out)


def finish(result: dict, load0: tuple[float, float, float], json_out: str | None) -> None:
    """Print the load average at the start and now, record it, and write the JSON."""
    load1 = os.getloadavg()
    click.echo(
        f"\nload average (1, 5, 15 min) on {os.cpu_count()} cores: start "
        f"{load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, end "
        f"{load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}"
    )
    result["loadavg"] = {"start": load0, "end": load1}
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
