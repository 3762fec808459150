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


@pytest.fixture
def tiny_weights():
    """Factory: random-weight narrow nets, ``tiny_weights("D", seed=0)``."""
    from vggfeat.weights import load_weights

    def make(net: str = "D", seed: int = 0, **kwargs):
        return load_weights("random", net, seed=seed, width=TEST_WIDTH, **kwargs)

    return make


def write_images(folder, sizes, seed: int = 0, ext: str = ".jpg") -> list:
    """Smooth random images of the given (h, w) sizes saved in ``folder``; returns their paths."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        path = folder / f"img_{i:03d}{ext}"
        img.save(path, quality=95) if ext == ".jpg" else img.save(path)
        paths.append(path)
    return paths


def write_bad_images(folder) -> dict:
    """A corpus of unusable files: name -> expected reason fragment."""
    import io

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(buf, format="JPEG")
    corpus = {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is not an image\n" * 10, "identify"),
        "truncated.jpg": (buf.getvalue()[: len(buf.getvalue()) // 2], "decode"),
        "html.png": (b"<html><body>404</body></html>", "identify"),
        "header_only.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "identify"),
    }
    for name, (data, _) in corpus.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in corpus.items()}


def write_tiff_with_double_offsets(path):
    """A TIFF whose StripOffsets tag (273) has type DOUBLE: PIL raises TypeError on it."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<H", data, entry + 2, 12)  # type 12: DOUBLE
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def images(tmp_path):
    """A folder of 7 small JPEGs of mixed sizes (>= 224 on the short side)."""
    sizes = [(240, 320), (320, 240), (224, 224), (256, 300), (240, 320), (230, 400), (300, 260)]
    return write_images(tmp_path / "images", sizes)
