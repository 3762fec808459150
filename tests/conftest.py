"""Shared fixtures: tiny random-weight nets and small images made on the fly (no network, no ../shared)."""

from __future__ import annotations

import os

import pytest

# Two cores: keep torch from oversubscribing when pytest runs alongside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TEST_WIDTH = 1 / 16  # channel multiplier for fast nets: convs 4..32, fc6/fc7 256-d


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
