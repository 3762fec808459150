"""torchrun extraction: pixel-balanced contiguous shards, per-rank shard stores, one combined
store equal to a single-process run's, resume of a lost shard (2 CPU processes on gloo)."""

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import TEST_WIDTH, write_images
from PIL import Image

from vggfeat.distributed import (
    _check_shards,
    current_rank,
    image_cost,
    partition,
    shard_path,
)
from vggfeat.errors import VggfeatError
from vggfeat.images import rescale_all
from vggfeat.store import FeatureStore

SIZES = [(240, 320), (320, 240), (224, 224), (256, 300), (240, 320), (230, 400), (300, 260),
         (400, 230), (224, 300), (260, 640), (224, 224)]  # fmt: skip


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_partition_is_contiguous_complete_and_balanced(parts):
    rng = np.random.default_rng(parts)
    costs = rng.integers(1, 1000, 50).tolist()
    ranges = partition(costs, parts)
    assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == len(costs)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
    share = sum(costs) / parts
    for start, stop in ranges:
        # Each cut is the boundary nearest to its target, so a range misses its share by at
        # most one item's cost at each end.
        assert abs(sum(costs[start:stop]) - share) <= 2 * max(costs)
    assert partition(costs, parts) == ranges  # deterministic: a restart gets the same range


def test_partition_balances_pixels_not_counts():
    costs = [10] * 6 + [1] * 6  # the first half of the images is ten times the work
    (a, b), (c, d) = partition(costs, 2)
    assert (a, b, c, d) == (0, 3, 3, 12)


def test_partition_with_more_parts_than_items():
    ranges = partition([5, 5], 4)
    assert sorted(i for s, e in ranges for i in range(s, e)) == [0, 1]


def test_image_cost_is_the_rescaled_area_at_every_scale(tmp_path):
    paths = write_images(tmp_path, [(240, 320), (300, 1200)])
    for path in paths:
        pixels, _ = rescale_all(np.asarray(Image.open(path).convert("RGB")), (224, 256), 512)
        assert image_cost(path, (224, 256), 512) == sum(p.shape[0] * p.shape[1] for p in pixels)
    assert image_cost(tmp_path / "missing.jpg", (224,), 512) == 1


def test_current_rank_reads_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current_rank() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank = current_rank()
    assert (rank.rank, rank.world, rank.local_rank) == (3, 4, 1)


def test_shards_of_another_world_size_are_refused(tmp_path):
    out = tmp_path / "all.h5"
    shard = shard_path(out, 0, 2)
    assert shard.name == "rank-00000-of-00002.h5" and shard.parent.name == "all.h5.shards"
    shard.parent.mkdir()
    shard.write_bytes(b"")
    _check_shards(out, 2)  # same world size: resumes
    with pytest.raises(VggfeatError, match="2-process run, this one has 3"):
        _check_shards(out, 3)


def _extract(args, cwd, torchrun=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        if torchrun
        else [sys.executable]
    )
    cmd = launcher + ["-m", "vggfeat", "extract", "--weights", "random", "--width",
                      str(TEST_WIDTH), "--scales", "224,256", "--workers", "0", "--device",
                      "cpu", "-q", *args]  # fmt: skip
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_and_resume(tmp_path):
    write_images(tmp_path / "images", SIZES)
    _extract(["--out", "single.h5", "images"], tmp_path)
    _extract(["--out", "all.h5", "images"], tmp_path, torchrun=True)

    single, combined = FeatureStore(tmp_path / "single.h5"), FeatureStore(tmp_path / "all.h5")
    assert combined.ids == single.ids  # same order
    assert (combined.status == single.status).all()
    assert (combined.image_size == single.image_size).all()
    for q in (224, 256):
        np.testing.assert_allclose(
            combined.descriptors("D", q), single.descriptors("D", q), rtol=1e-5, atol=1e-7
        )
    shards = [FeatureStore(shard_path(tmp_path / "all.h5", r, 2)) for r in range(2)]
    assert shards[0].ids + shards[1].ids == single.ids  # each rank did a contiguous share
    assert len(shards[0]) and len(shards[1])
    with h5py.File(tmp_path / "all.h5") as f:
        assert f["descriptors/D/224"].is_virtual  # joined without copying

    # Rank 1's shard is lost (a rank that died before its first checkpoint): the same command
    # again extracts only that share, and the joined store is the same.
    lost = shard_path(tmp_path / "all.h5", 1, 2)
    lost.unlink()
    out = _extract(["--out", "all.h5", "images"], tmp_path, torchrun=True)
    match = re.search(r"(\d+) images extracted.*?(\d+) already in store", out)
    assert match, out
    assert (int(match.group(1)), int(match.group(2))) == (len(shards[1]), len(shards[0]))
    again = FeatureStore(tmp_path / "all.h5")
    assert again.ids == single.ids
    np.testing.assert_allclose(
        again.descriptors("D", 256), single.descriptors("D", 256), rtol=1e-5, atol=1e-7
    )
