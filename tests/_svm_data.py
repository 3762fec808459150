"""Small synthetic feature stores and label files for the features/labels/svm CLI tests."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vggfeat.store import Row, StoreWriter

DIM = 16
_TORCHVISION = {"D": "vgg16", "E": "vgg19"}
_PREPROCESS = {
    "torchvision": {
        "name": "torchvision",
        "channel_order": "RGB",
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "caffe": {
        "name": "caffe",
        "channel_order": "BGR",
        "scale": 1.0,
        "mean": [103.939, 116.779, 123.68],
        "std": [1.0, 1.0, 1.0],
    },
}


def weights_provenance(net: str, preprocess: str = "torchvision", sha: str | None = "") -> dict:
    """A store's ``weights[net]`` record, as ``Weights.provenance()`` writes it."""
    if sha == "":
        sha = hashlib.sha256(f"weights-{net}".encode()).hexdigest()
    return {
        "net": net,
        "source": "imagenet",
        "label": f"torchvision {_TORCHVISION.get(net, net)} IMAGENET1K_V1"
        if sha
        else "random (seed 0)",
        "sha256": sha,
        "preprocess": dict(_PREPROCESS[preprocess]),
        "width": 1.0,
        "origin": {},
    }


def store_settings(
    nets: Sequence[str] = ("D",),
    scales: Sequence[int] = (256, 384),
    dim: int = DIM,
    weights: Mapping[str, dict] | None = None,
    **overrides,
) -> dict:
    """Settings as the extractor records them (see ``Extractor.settings``)."""
    settings = {
        "nets": list(nets),
        "weights": dict(weights) if weights else {n: weights_provenance(n) for n in nets},
        "scales": list(scales),
        "flip": True,
        "layer": "fc7",
        "pooling": "global average over the dense map, after ReLU",
        "precision": "fp32",
        "interpolation": "bilinear, antialiased (PIL Image.resize)",
        "max_side": 2048,
        "dim": dim,
    }
    settings.update(overrides)
    return settings


def random_descriptors(
    ids: Sequence[str], settings: Mapping, seed: int = 0
) -> dict[tuple[str, int], np.ndarray]:
    """Non-negative (post-ReLU-like) float32 descriptors per (net, Q): (N, dim) each."""
    rng = np.random.default_rng(seed)
    n, dim = len(ids), int(settings["dim"])
    return {
        (net, int(q)): rng.gamma(1.0, 1.0, (n, dim)).astype(np.float32)
        for net in settings["nets"]
        for q in settings["scales"]
    }


def make_store(
    path: Path,
    ids: Sequence[str],
    settings: Mapping,
    data: Mapping[tuple[str, int], np.ndarray] | None = None,
    failed: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[tuple[str, int], np.ndarray]:
    """Write a store with ``ids`` in that order; returns the descriptors written (rows = ids)."""
    data = dict(data) if data is not None else random_descriptors(ids, settings, seed)
    failed = dict(failed or {})
    writer = StoreWriter(path, settings, {"test": "1"}, rows_per_part=10_000)
    for i, id_ in enumerate(ids):
        if id_ in failed:
            writer.add(Row(id_, ok=False, reason=failed[id_]))
        else:
            writer.add(Row(id_, ok=True, image_size=(240, 320),
                           descriptors={k: v[i] for k, v in data.items()}))  # fmt: skip
    writer.finalize(order=ids)
    return data
