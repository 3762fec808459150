"""The dense engine: decoded images -> flip-averaged, globally pooled fc7 descriptors per (net, Q).

Images are decoded once (in background workers) and rescaled once per Q; every requested net
then runs on the same pixels. Images of different sizes share a forward pass: they are padded
onto one canvas and ``DenseVGG`` masks the padding, so results equal one-at-a-time evaluation.
This module never opens HDF5: finished rows go to a callback (the CLI passes a StoreWriter).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vggfeat.datasets.samples import sample_box
from vggfeat.devices import resolve_device
from vggfeat.errors import VggfeatError
from vggfeat.images import (
    DEFAULT_MAX_SIDE,
    INTERPOLATION,
    check_scales,
    crop_box,
    failure_reason,
    load_image,
    rescale_all,
)
from vggfeat.nets import LAYERS, DenseVGG
from vggfeat.store import Row
from vggfeat.weights import Preprocess, Weights

__all__ = [
    "PRECISIONS",
    "ExtractConfig",
    "ExtractSummary",
    "Extractor",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExtractConfig:
    """How descriptors are computed (all but device/batch/workers are recorded in the store).

    Attributes:
        scales: Smallest-side sizes Q, each >= 224.
        flip: Average each descriptor with that of the horizontally flipped image.
        layer: 'fc7' (the paper's descriptor), 'fc6' or 'pool5', each after ReLU, then GAP.
        precision: 'fp32' (default; TF32 off), 'bf16' or 'fp16' autocast.
        device: 'cpu', 'cuda', 'cuda:N' or 'auto'.
        batch_size: Images per forward pass (each with its flip).
        workers: Background decoding processes (0 decodes in the main process).
        max_side: Longest side after rescaling; longer images are centre-cropped to it.
    """

    scales: tuple[int, ...] = (256, 384, 512)
    flip: bool = True
    layer: str = "fc7"
    precision: str = "fp32"
    device: str = "auto"
    batch_size: int = 8
    workers: int = 2
    max_side: int = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", check_scales(self.scales))
        if self.layer not in LAYERS:
            raise VggfeatError(f"Unknown layer {self.layer!r}. Valid layers: {', '.join(LAYERS)}.")
        if self.precision not in PRECISIONS:
            raise VggfeatError(
                f"Unknown precision {self.precision!r}. Valid: {', '.join(PRECISIONS)}."
            )
        if self.batch_size < 1 or self.workers < 0:
            raise VggfeatError("--batch-size must be >= 1 and --workers >= 0.")
        if self.max_side < max(self.scales):
            raise VggfeatError(
                f"--max-side {self.max_side} is smaller than the largest scale {max(self.scales)}."
            )


@dataclass
class ExtractSummary:
    """What a run did: counts, failures and changes, and its speed."""

    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Decoded:
    """One sample after decoding: per-Q pixels or the reason it failed."""

    index: int
    id: str
    scaled: list[np.ndarray] | None
    image_size: tuple[int, int] = (0, 0)
    note: str = ""
    reason: str = ""


class _DecodeDataset(Dataset):
    """Decodes and rescales samples; runs inside DataLoader workers."""

    def __init__(self, samples: Sequence[Sequence], scales: Sequence[int], max_side: int):
        self.samples, self.scales, self.max_side = samples, scales, max_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> _Decoded:
        sample = self.samples[index]
        id_, path, box = sample[0], sample[1], sample_box(sample)
        try:
            image = load_image(path, self.scales)
            if box is not None:  # a region: cut out before rescaling, then as any image
                image = crop_box(image, box)
            scaled, note = rescale_all(image.pixels, self.scales, self.max_side)
        except Exception as exc:  # whatever one image raises is its failed row; the run goes on
            return _Decoded(index, id_, None, reason=failure_reason(exc))
        notes = "; ".join(n for n in (image.note, note) if n)
        return _Decoded(index, id_, scaled, image.size, notes)


def _batches_by_shape(
    items: Sequence[tuple[int, np.ndarray]], batch_size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Split (position, pixels) into batches, sorted by shape so padding stays small."""
    ordered = sorted(items, key=lambda item: item[1].shape[:2])
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


class Extractor:
    """Runs one or more nets densely over images at several scales.

    Args:
        weights: One ``Weights`` per net (e.g. D and E); each carries its preprocessing.
        config: Scales, flip, layer, precision, device and batching.
    """

    def __init__(self, weights: Sequence[Weights], config: ExtractConfig) -> None:
        nets = [w.net for w in weights]
        if not weights or len(set(nets)) != len(nets):
            raise VggfeatError(f"Give each net once; got nets {nets}.")
        self.config = config
        self.weights = list(weights)
        self.device = resolve_device(config.device)
        self.dtype = PRECISIONS[config.precision]
        if self.device.type == "cuda" and config.precision == "fp32":
            # fp32 means fp32: TF32 convs would move descriptors by ~1e-3.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        # channels_last: oneDNN and cuDNN convolutions run ~1.5x faster in NHWC.
        self.models: dict[str, tuple[DenseVGG, Preprocess]] = {
            w.net: (
                DenseVGG(w.build().to(self.device, memory_format=torch.channels_last)).eval(),
                w.preprocess,
            )
            for w in weights
        }
        dims = {net: self._dim(model) for net, (model, _) in self.models.items()}
        if len(set(dims.values())) != 1:
            raise VggfeatError(f"Nets give descriptors of different sizes: {dims}.")
        self.dim = next(iter(dims.values()))

    def _dim(self, model: DenseVGG) -> int:
        if self.config.layer == "pool5":
            return model.vgg.pool5_channels
        return model.vgg.classifier[0 if self.config.layer == "fc6" else 3].out_features

    @property
    def nets(self) -> list[str]:
        return list(self.models)

    def settings(self) -> dict[str, Any]:
        """Everything that determines the numbers; stores refuse to mix different settings."""
        c = self.config
        return {
            "nets": self.nets,
            "weights": {w.net: w.provenance() for w in self.weights},
            "scales": list(c.scales),
            "flip": c.flip,
            "layer": c.layer,
            "pooling": "global average over the dense map, after ReLU",
            "precision": c.precision,
            "interpolation": INTERPOLATION,
            "max_side": c.max_side,
            "dim": self.dim,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def forward(self, net: str, images: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors (n, dim) of n rescaled (H, W, 3) uint8 images, in one padded pass."""
        model, preprocess = self.models[net]
        sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
        height, width = sizes.max(axis=0)
        copies = 2 if self.config.flip else 1
        canvas = np.zeros((len(images) * copies, int(height), int(width), 3), dtype=np.uint8)
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            canvas[copies * i, :h, :w] = im
            if copies == 2:
                # Flip within the image's own extent, so padding stays bottom-right.
                canvas[2 * i + 1, :h, :w] = im[:, ::-1]
        x = torch.from_numpy(canvas).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = preprocess.normalize(x).contiguous(memory_format=torch.channels_last)
        uniform = bool((sizes == sizes[0]).all())
        valid = None if uniform else torch.from_numpy(np.repeat(sizes, copies, 0)).to(self.device)
        with self._autocast():
            pooled = model(x, layer=self.config.layer, sizes=valid)
        pooled = pooled.float().view(len(images), copies, -1).mean(dim=1)
        return pooled.cpu().numpy()

    def describe_scaled(
        self, per_image: Sequence[Sequence[np.ndarray]]
    ) -> dict[tuple[str, int], np.ndarray]:
        """Descriptors of images already rescaled to every Q: (net, Q) -> (n, dim) float32.

        Args:
            per_image: For each image, its (H, W, 3) uint8 pixels at each of ``config.scales``.
        """
        n = len(per_image)
        out = {}
        for s, q in enumerate(self.config.scales):
            items = [(i, pixels[s]) for i, pixels in enumerate(per_image)]
            for net in self.nets:
                block = np.empty((n, self.dim), dtype=np.float32)
                for batch in _batches_by_shape(items, self.config.batch_size):
                    positions = [i for i, _ in batch]
                    block[positions] = self.forward(net, [pixels for _, pixels in batch])
                out[(net, q)] = block
        return out

    def describe(self, images: Sequence[np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
        """Descriptors of decoded (H, W, 3) uint8 RGB images: (net, Q) -> (n, dim) float32."""
        scaled = [rescale_all(im, self.config.scales, self.config.max_side)[0] for im in images]
        return self.describe_scaled(scaled)

    def _loader(self, samples: Sequence[tuple[str, str]]) -> DataLoader:
        # A chunk of several batches lets the shape sort group equal sizes together.
        chunk = self.config.batch_size * 4
        return DataLoader(
            _DecodeDataset(samples, self.config.scales, self.config.max_side),
            batch_size=chunk,
            num_workers=self.config.workers,
            collate_fn=list,
            prefetch_factor=2 if self.config.workers else None,
        )

    def run(
        self,
        samples: Sequence[tuple[str, str]],
        sink: Callable[[Row], None],
        progress: bool = True,
    ) -> ExtractSummary:
        """Extract ``samples`` (id, path[, box]); hand every finished image to ``sink`` in input
        order. A sample with a box is that region of its image (see ``Sample``).

        A bad image (or box) becomes a failed row with its reason; the run goes on.
        """
        from tqdm import tqdm

        summary = ExtractSummary()
        start = time.perf_counter()
        with tqdm(total=len(samples), unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for chunk in self._loader(samples):
                good = [d for d in chunk if d.scaled is not None]
                vectors = self.describe_scaled([d.scaled for d in good])
                position = {d.index: i for i, d in enumerate(good)}
                for d in chunk:
                    sink(self._row(d, vectors, position.get(d.index)))
                    if d.scaled is None:
                        summary.failed.append((d.id, d.reason))
                    elif d.note:
                        summary.changed.append((d.id, d.note))
                summary.done += len(chunk)
                bar.update(len(chunk))
                bar.set_postfix(failed=len(summary.failed), refresh=False)
        summary.seconds = time.perf_counter() - start
        return summary

    def _row(
        self, d: _Decoded, vectors: dict[tuple[str, int], np.ndarray], position: int | None
    ) -> Row:
        if position is None:
            return Row(d.id, ok=False, reason=d.reason)
        descriptors = {key: block[position] for key, block in vectors.items()}
        return Row(d.id, ok=True, note=d.note, image_size=d.image_size, descriptors=descriptors)
