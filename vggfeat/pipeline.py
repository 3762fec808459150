"""The extraction job end to end: samples -> engine -> crash-safe store, resuming what exists."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vggfeat.extract import ExtractConfig, Extractor, ExtractSummary
from vggfeat.files import check_free_space
from vggfeat.store import FeatureStore, Plan, StoreWriter, fingerprint_files
from vggfeat.versions import software_versions
from vggfeat.weights import Weights

__all__ = ["ExtractResult", "extract_to_store"]


@dataclass
class ExtractResult:
    """The finished store, this run's summary, how many images earlier runs had done (kept
    as they were), and the plan that chose what to extract (new, changed, retried, repaired)."""

    store: FeatureStore
    summary: ExtractSummary
    skipped: int
    plan: Plan | None = None


def _space_needed(n_new: int, n_total: int, settings: dict) -> int:
    """Bytes a run adds on disk at its peak: parts for the new rows, then the new store
    beside them (the old store and the parts go once it is in place)."""
    row = len(settings["nets"]) * len(settings["scales"]) * 4 * int(settings["dim"]) + 256
    return (n_new + n_total) * row + (2 << 20)


def extract_to_store(
    samples: Sequence[Sequence],
    out: str | os.PathLike,
    weights: Sequence[Weights],
    config: ExtractConfig,
    progress: bool = True,
    rows_per_part: int = 256,
    *,
    retry_failed: bool = True,
    content_hash: bool = False,
    verify: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Extract ``samples`` (id, path[, box]) into the store ``out``, resuming what it holds.

    A sample with a box (:class:`vggfeat.datasets.Sample`) is that region of its image; the
    store records the box, and a changed box is extracted again like a changed file.

    Images already in the store are kept unless their file changed since (size and mtime, or
    SHA-256 with ``content_hash``), they failed before (``retry_failed``), or their rows are
    damaged. Settings that differ from an existing store's, an id the store holds from another
    file, another process writing ``out``, or too little free disk space are refused before
    any work is done. Re-running after a kill or an I/O error resumes and ends with the same
    store as an uninterrupted run.

    Args:
        retry_failed: Extract again the images that failed in earlier runs.
        content_hash: Compare files by SHA-256 (one more read of each) instead of size and
            modification time.
        verify: Read and verify the existing store even when nothing else is to do (it is
            verified anyway before being rewritten); damaged rows are extracted again.
        log: Called with one line for each thing the user should know before the run ends
            (damaged parts or rows, changed files).
    """
    log = log or (lambda message: None)
    extractor = Extractor(weights, config)
    settings = extractor.settings()
    with StoreWriter(out, settings, software_versions(), rows_per_part=rows_per_part,
                     log=log) as writer:  # fmt: skip
        plan = writer.plan(
            samples, fingerprint_files([s[1] for s in samples], content_hash), retry_failed, verify
        )
        for ids, what in ((plan.changed, "changed since they were extracted"),
                          (plan.retried, "failed before and are retried")):  # fmt: skip
            if ids:
                log(f"{len(ids)} images {what}: extracting them again")
        if plan.unverifiable:
            log(
                f"{plan.unverifiable} images kept from a version-1 store have no fingerprint: a "
                "change to their files cannot be seen (extract into a new --out to get one)"
            )
        if plan.todo:
            n_total = len(writer.done | {s[0] for s in samples})
            check_free_space(writer.path, _space_needed(len(plan.todo), n_total, settings))
        summary = extractor.run(plan.todo, writer.add, progress=progress)
        store = writer.finalize(order=[s[0] for s in samples])
    return ExtractResult(store, summary, plan.kept, plan)
