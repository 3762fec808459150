"""torchrun extraction: images sharded across ranks by pixel count, one crash-safe shard store
per rank, and one store at the end equal to a single process's.

Under ``torchrun --nproc-per-node N [--nnodes M ...] -m vggfeat extract ... --out all.h5``
every rank reads the headers of a share of the images, the ranks exchange them (gloo), and
each takes a contiguous range of the input whose rescaled pixel count (the work, at every Q)
is near 1/world of the total. A rank extracts its range with
:func:`vggfeat.pipeline.extract_to_store` into ``all.h5.shards/rank-RRRRR-of-WWWWW.h5``,
which resumes like any store: a rank that dies and is restarted (torchrun's elastic restart,
or the same command run again) carries on where its shard stopped. When all ranks are done,
rank 0 joins the shards into ``all.h5`` with :func:`vggfeat.store.combine_stores` as HDF5
virtual datasets (no copy; the shards stay beside it): the same ids in the same order, and the
same descriptors, as a single-process run. ``vggfeat merge --copy`` makes a standalone copy.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.errors import VggfeatError

__all__ = [
    "Rank",
    "current_rank",
    "shards_dir",
    "shard_path",
    "image_cost",
    "partition",
    "extract_distributed",
]

# Ranks wait for one another only at the start and at the end; an extraction may take days,
# and torchrun stops every rank as soon as one fails, so the wait may be long.
_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int


def current_rank() -> Rank | None:
    """The torchrun rank of this process; None outside torchrun or in a one-process job."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def shards_dir(out: str | os.PathLike) -> Path:
    """Folder of the per-rank shard stores of the store ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    """The shard store rank ``rank`` of ``world`` writes (the same on every restart)."""
    return shards_dir(out) / f"rank-{rank:05d}-of-{world:05d}.h5"


def image_cost(path: str | os.PathLike, scales: Sequence[int], max_side: int) -> int:
    """Pixels the engine runs for one image: its rescaled area at every Q (after the max-side
    crop), from the file's header alone. Unreadable files cost 1 (they fail fast)."""
    from PIL import Image

    from vggfeat.images import scaled_size

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # the run itself records why; here it only weighs nothing
        return 1
    total = 0
    for q in scales:
        h, w = scaled_size(height, width, q)
        total += min(h, max_side) * min(w, max_side)
    return total


def partition(costs: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Split items into ``parts`` contiguous [start, stop) ranges of near-equal total cost.

    Contiguous, so that joining the ranges in rank order gives back the input order. Each
    cut sits at the item boundary nearest to k/parts of the total, so no range is more than
    one item's cost away from its share.
    """
    n = len(costs)
    cumulative = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    bounds = [0]
    for k in range(1, parts):
        target = cumulative[-1] * k / parts
        cut = int(np.searchsorted(cumulative, target))
        if cut > 0 and target - cumulative[cut - 1] <= cumulative[min(cut, n)] - target:
            cut -= 1
        bounds.append(min(max(cut, bounds[-1]), n))
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:]))


def _check_shards(out: str | os.PathLike, world: int) -> None:
    """Refuse shards a run with another number of processes left (their ranges differ)."""
    folder = shards_dir(out)
    if not folder.is_dir():
        return
    others = sorted(
        {p.name.rsplit("-of-", 1)[-1].split(".")[0] for p in folder.glob("rank-*-of-*.h5")}
        - {f"{world:05d}"}
    )
    if others:
        raise VggfeatError(
            f"{folder} holds shards of a {int(others[0])}-process run, this one has {world}: "
            f"run with {int(others[0])} processes to resume it, or remove {folder}."
        )


def _merge_summaries(summaries: Sequence[Any]) -> Any:
    from vggfeat.extract import ExtractSummary

    merged = ExtractSummary()
    for rank, s in enumerate(summaries):
        merged.done += s.done
        merged.failed += s.failed
        merged.changed += s.changed
        merged.notices += [f"rank {rank}: {m}" for m in s.notices]
        merged.seconds = max(merged.seconds, s.seconds)
    return merged


def extract_distributed(
    samples: Sequence[tuple[str, str]],
    out: str | os.PathLike,
    weights: Sequence[Any],
    config: Any,
    progress: bool = True,
    rows_per_part: int = 256,
    **options: Any,
) -> Any:
    """:func:`vggfeat.pipeline.extract_to_store` for one rank of a torchrun job.

    Every rank must call it with the same arguments. Rank 0 shows progress, joins the shards
    into ``out`` and returns the ExtractResult of the whole job; the other ranks return None.

    Args:
        options: Passed on to ``extract_to_store`` (each rank's shard is a store of its own).
    """
    import torch
    import torch.distributed as dist

    from vggfeat.pipeline import ExtractResult, extract_to_store
    from vggfeat.store import combine_stores

    me = current_rank()
    if me is None:
        raise VggfeatError("extract_distributed runs under torchrun (WORLD_SIZE > 1).")
    _check_shards(out, me.world)
    if config.device in ("auto", "cuda") and torch.cuda.is_available():
        config = dataclasses.replace(config, device=f"cuda:{me.local_rank}")
    own_group = not dist.is_initialized()
    if own_group:
        # gloo for the little this exchanges (headers, summaries), whatever the device.
        dist.init_process_group("gloo", timeout=_TIMEOUT)
    try:
        share = {i: image_cost(samples[i][1], config.scales, config.max_side)
                 for i in range(me.rank, len(samples), me.world)}  # fmt: skip
        shares: list[dict[int, int]] = [{} for _ in range(me.world)]
        dist.all_gather_object(shares, share)
        costs = [0] * len(samples)
        for part in shares:
            for i, cost in part.items():
                costs[i] = cost
        start, stop = partition(costs, me.world)[me.rank]
        shard = shard_path(out, me.rank, me.world)
        shard.parent.mkdir(parents=True, exist_ok=True)
        result = extract_to_store(
            samples[start:stop],
            shard,
            weights,
            config,
            progress=progress and me.rank == 0,
            rows_per_part=rows_per_part,
            **options,
        )
        summaries: list[Any] = [None] * me.world
        dist.all_gather_object(summaries, (result.summary, result.skipped))
        if me.rank != 0:
            return None
        store = combine_stores(
            out,
            [shard_path(out, r, me.world) for r in range(me.world)],
            order=[id_ for id_, _ in samples],
            virtual=True,
        )
        return ExtractResult(
            store, _merge_summaries([s for s, _ in summaries]), sum(k for _, k in summaries)
        )
    finally:
        if own_group:
            dist.destroy_process_group()
