"""The extraction job end to end: samples -> engine -> crash-safe store, resuming what exists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from vggfeat.extract import ExtractConfig, Extractor, ExtractSummary
from vggfeat.store import FeatureStore, StoreWriter
from vggfeat.versions import software_versions
from vggfeat.weights import Weights

__all__ = ["ExtractResult", "extract_to_store"]


@dataclass
class ExtractResult:
    """The finished store, this run's summary, and how many images earlier runs had done."""

    store: FeatureStore
    summary: ExtractSummary
    skipped: int


def extract_to_store(
    samples: Sequence[tuple[str, str]],
    out: str | os.PathLike,
    weights: Sequence[Weights],
    config: ExtractConfig,
    progress: bool = True,
    rows_per_part: int = 256,
) -> ExtractResult:
    """Extract ``samples`` (id, path) into the store ``out``, skipping ids it already holds.

    Settings that differ from an existing store's are refused before any work is done.
    Re-running after a kill resumes and ends with the same store as an uninterrupted run.
    """
    extractor = Extractor(weights, config)
    writer = StoreWriter(
        out, extractor.settings(), software_versions(), rows_per_part=rows_per_part
    )
    todo = [s for s in samples if s[0] not in writer.done]
    summary = extractor.run(todo, writer.add, progress=progress)
    store = writer.finalize(order=[id_ for id_, _ in samples])
    return ExtractResult(store, summary, len(samples) - len(todo))
