"""SVMs past one Gram matrix: a fit at 100,000 x 8,192 within this machine's memory.

The dual path would need an N x N float64 Gram matrix (80 GB at N = 100,000); above
``max_gram_bytes`` SVMClassifier's ``solver="auto"`` switches to the primal solver
(:mod:`vggfeat.primal`), whose memory is X itself plus O((N + D) P). This script makes
synthetic fc7-like L2-normalised float32 features (as ``bench_svm.py``), fits, and prints the
solver that ran, the time, the test mAP and the process's peak resident memory (the peak
after making the data, and the fit's own increment above it).

A baseline in the same process: the same fit on a random subset small enough for the dual
path (``--check-n`` rows), solved by both solvers, to show they agree there.

Example:
    python benchmarks/bench_svm_scale.py                       # 100,000 x 8,192, 20 classes
    python benchmarks/bench_svm_scale.py --n 20000 --dim 2048  # smaller
"""

from __future__ import annotations

import os
import resource
import sys
import time

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_svm import finish, make_voc_like  # noqa: E402


def _peak_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@click.command()
@click.option("--n", default=100_000, show_default=True, help="Training images.")
@click.option("--n-test", default=5_000, show_default=True, help="Test images.")
@click.option("--dim", default=8192, show_default=True, help="Feature dimension.")
@click.option("--classes", default=20, show_default=True, help="Classes (multi-label).")
@click.option("--C", "C", default=1.0, show_default=True, help="C for every class.")
@click.option("--tol", default=1e-4, show_default=True)
@click.option("--check-n", default=3000, show_default=True, help="Rows of the dual check.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json-out", type=click.Path(), default=None, help="Also write the figures here.")
def main(n, n_test, dim, classes, C, tol, check_n, device, json_out):
    """Fit one-vs-rest SVMs at a size whose Gram matrix would not fit in memory."""
    import torch

    from vggfeat.metrics import average_precision
    from vggfeat.svm import MAX_GRAM_BYTES, SVMClassifier

    load0 = os.getloadavg()
    t = time.perf_counter()
    X, Y = make_voc_like(n + n_test, dim, classes)
    X, Xt, Y, Yt = X[:n], X[n:], Y[:n], Y[n:]
    made = _peak_gib()
    click.echo(
        f"data: {n} x {dim} float32 ({X.nbytes / 2**30:.2f} GiB) + {n_test} test rows, "
        f"{classes} classes ({time.perf_counter() - t:.0f}s to make); peak RSS {made:.2f} GiB; "
        f"a float64 Gram matrix would take {8 * n * n / 2**30:.1f} GiB (max_gram_bytes "
        f"{MAX_GRAM_BYTES / 2**30:.0f} GiB); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    clf = SVMClassifier(C=C, tol=tol, device=device, verbose=True, label_format="voc")
    t = time.perf_counter()
    clf.fit(X, Y)
    seconds = time.perf_counter() - t
    peak = _peak_gib()
    scores = clf.decision_function(Xt)
    ap = [average_precision(scores[:, k], Yt[:, k], "area") for k in range(classes)]
    click.echo(
        f"fit: solver {clf.solver_}, {seconds:.0f}s, Newton iterations per class "
        f"{clf.n_iter_.min()}..{clf.n_iter_.max()}; test mAP {np.mean(ap):.4f}; peak RSS "
        f"{peak:.2f} GiB (+{peak - made:.2f} GiB over the data)"
    )
    result = {
        "n": n,
        "dim": dim,
        "classes": classes,
        "C": C,
        "tol": tol,
        "solver": clf.solver_,
        "seconds": seconds,
        "peak_rss_gib_after_data": made,
        "peak_rss_gib": peak,
        "test_map": float(np.mean(ap)),
    }

    if check_n:
        # Same process, a size both paths can run: the dual's test APs at the same C.
        rows = np.random.default_rng(1).choice(n, check_n, replace=False)
        fits = {}
        for solver in ("dual", "primal"):
            t = time.perf_counter()
            fits[solver] = SVMClassifier(
                C=C, tol=tol, device=device, solver=solver, label_format="voc"
            ).fit(X[rows], Y[rows])
            fits[solver + "_s"] = time.perf_counter() - t
        aps = {
            s: np.array(
                [
                    average_precision(fits[s].decision_function(Xt)[:, k], Yt[:, k], "area")
                    for k in range(classes)
                ]
            )
            for s in ("dual", "primal")
        }
        diff = float(np.abs(aps["dual"] - aps["primal"]).max())
        click.echo(
            f"check on {check_n} rows: dual {fits['dual_s']:.1f}s, primal "
            f"{fits['primal_s']:.1f}s; test mAP dual {aps['dual'].mean():.4f}, primal "
            f"{aps['primal'].mean():.4f}; max per-class |AP difference| {diff:.5f}"
        )
        result["check"] = {
            "n": check_n,
            "dual_seconds": fits["dual_s"],
            "primal_seconds": fits["primal_s"],
            "max_abs_ap_diff": diff,
        }
    finish(result, load0, json_out)


if __name__ == "__main__":
    main()
