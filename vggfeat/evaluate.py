"""Classification error of trained nets as in Sect. 3.2 and 4: dense, multi-crop, both, fusion.

- **dense:** the fully-convolutional net (fc6 as 7x7, fc7/fc8 as 1x1 convolutions) runs over
  the whole image rescaled to smallest side Q; the fc8 class-score map is averaged spatially,
  and the softmax posteriors are averaged over the flip and over Q.
- **multi-crop:** a ``grid`` x ``grid`` regular grid of square crops (the net's training crop,
  224 for the paper's nets) and their flips per Q, through the classifier path; the posteriors
  of all crops are averaged (150 crops for 3 scales).
- **dense+multi-crop:** the average of the two posteriors.
- **fusion:** the posteriors of several models averaged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vggfeat.datasets.classes import LabelledImages
from vggfeat.devices import PRECISIONS, resolve_device
from vggfeat.errors import ImageError, VggfeatError
from vggfeat.images import check_scales, decode_image, rescale
from vggfeat.nets import VGG, DenseVGG
from vggfeat.weights import Preprocess, Weights

__all__ = [
    "MODES",
    "EvalConfig",
    "EvalResult",
    "crop_grid",
    "dense_posteriors",
    "crop_posteriors",
    "evaluate_models",
    "top_k_errors",
]

MODES = ("dense", "multi-crop", "dense+multi-crop")


@dataclass(frozen=True)
class EvalConfig:
    """How posteriors are computed.

    Attributes:
        scales: Test scales Q (smallest side): each >= 224 for dense evaluation, at least the
            crop for multi-crop alone.
        modes: Any of 'dense', 'multi-crop', 'dense+multi-crop'.
        crop: Multi-crop side; None: the net's training crop (224 for the paper's nets).
        grid: Crops per side of the regular grid (5: 25 crops, 50 with flips, per Q).
        flip: Also evaluate the horizontally flipped image (or crops).
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        precision: 'fp32', 'bf16' or 'fp16' autocast.
        workers: Decoding processes.
    """

    scales: tuple[int, ...] = (256, 384, 512)
    modes: tuple[str, ...] = ("dense",)
    crop: int | None = None
    grid: int = 5
    flip: bool = True
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 2

    def __post_init__(self) -> None:
        modes = tuple(dict.fromkeys(self.modes))
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise VggfeatError(f"Unknown mode {unknown[:1] or modes!r}. Valid: {', '.join(MODES)}.")
        object.__setattr__(self, "modes", modes)
        if self.needs_dense:  # fc6 needs a 7x7 pool5 map
            object.__setattr__(self, "scales", check_scales(self.scales))
        else:  # crops only need Q >= the crop (small nets are trained on small crops)
            scales = tuple(int(q) for q in self.scales)
            if not scales or min(scales) < 1 or len(set(scales)) != len(scales):
                raise VggfeatError(f"Scales {self.scales} must be distinct positive sizes.")
            object.__setattr__(self, "scales", scales)
        if self.grid < 1 or (self.crop is not None and self.crop < 1):
            raise VggfeatError("--grid and --crop must be at least 1.")
        if self.crop is not None and self.crop > min(self.scales):
            raise VggfeatError(
                f"--crop {self.crop} is larger than the smallest scale {min(self.scales)}."
            )
        if self.precision not in PRECISIONS:
            raise VggfeatError(
                f"Unknown precision {self.precision!r}. Valid: {', '.join(PRECISIONS)}."
            )

    @property
    def needs_dense(self) -> bool:
        return any(m in ("dense", "dense+multi-crop") for m in self.modes)

    @property
    def needs_crops(self) -> bool:
        return any(m in ("multi-crop", "dense+multi-crop") for m in self.modes)


# ----------------------------------------------------------------------------- posteriors


def _flipped(x: torch.Tensor, flip: bool) -> torch.Tensor:
    return torch.cat([x, x.flip(-1)]) if flip else x


def dense_posteriors(dense: DenseVGG, x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Softmax of the spatially averaged fc8 class-score map of each image, flip-averaged.

    Args:
        dense: The fully-convolutional view of a trained net.
        x: (N, 3, H, W) normalised input of one size, H and W >= 224.
        flip: Average with the horizontally flipped images.

    Returns:
        (N, K) float32 posteriors.
    """
    scores = dense(_flipped(x, flip), layer="fc8").float()
    return F.softmax(scores, dim=1).view(2 if flip else 1, len(x), -1).mean(dim=0)


def crop_grid(pixels: np.ndarray, crop: int, grid: int = 5) -> np.ndarray:
    """A ``grid`` x ``grid`` regular grid of ``crop`` x ``crop`` crops spanning the image.

    Args:
        pixels: (H, W, 3) image with H, W >= ``crop``.

    Returns:
        (grid * grid, crop, crop, 3) crops, row-major from the top-left one.
    """
    h, w = pixels.shape[:2]
    if min(h, w) < crop:
        raise VggfeatError(f"Image {h}x{w} is smaller than the {crop} crop.")
    tops = np.round(np.linspace(0, h - crop, grid)).astype(int)
    lefts = np.round(np.linspace(0, w - crop, grid)).astype(int)
    return np.stack([pixels[t : t + crop, s : s + crop] for t in tops for s in lefts])


def crop_posteriors(vgg: VGG, x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Mean softmax over crops (and their flips) through the classifier path.

    Args:
        vgg: A trained net.
        x: (M, 3, c, c) normalised crops of one image.

    Returns:
        (K,) float32 posterior.
    """
    return F.softmax(vgg(_flipped(x, flip)).float(), dim=1).mean(dim=0)


# ----------------------------------------------------------------------------- data


@dataclass
class _Decoded:
    index: int
    scaled: list[np.ndarray] | None
    reason: str = ""


class _ScaledDataset(Dataset):
    def __init__(self, images: LabelledImages, scales: Sequence[int]):
        self.images, self.scales = images, scales

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> _Decoded:
        try:
            image = decode_image(self.images.samples[index][1])
        except ImageError as exc:
            return _Decoded(index, None, str(exc))
        return _Decoded(
            index, [rescale(image, q, max_side=max(2048, 4 * q)).pixels for q in self.scales]
        )


# ----------------------------------------------------------------------------- models


@dataclass
class _Model:
    label: str
    dense: DenseVGG
    preprocess: Preprocess
    crop: int
    columns: np.ndarray  # model output index of each evaluation class

    def input(self, pixels: np.ndarray, device: torch.device) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> normalised (N, 3, H, W) channels-last input."""
        writable = np.require(pixels, requirements=["C", "W"])  # PIL arrays are read-only
        x = torch.from_numpy(writable).to(device).permute(0, 3, 1, 2)
        return self.preprocess.normalize(x).contiguous(memory_format=torch.channels_last)


def _prepare(w: Weights, classes: Sequence[str], config: EvalConfig, device: torch.device):
    names = list(w.classes) if w.classes else None
    if names is None:
        if w.num_classes != len(classes):
            raise VggfeatError(
                f"{w.label} has {w.num_classes} outputs and no class names, but the val set has "
                f"{len(classes)} classes: give the val set in the training class order (sorted "
                "folder names), or weights trained by `vggfeat train`."
            )
        names = list(classes)
    index = {n: k for k, n in enumerate(names)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise VggfeatError(
            f"The val set has {len(missing)} class{'es' if len(missing) > 1 else ''} that "
            f"{w.label} was not trained on "
            f"({', '.join(missing[:3])}): remove them from the val set."
        )
    crop = config.crop or int(w.origin.get("crop", 224))
    if config.needs_crops and crop > min(config.scales):
        raise VggfeatError(
            f"The {crop} crop of {w.label} is larger than the smallest scale {min(config.scales)}."
        )
    dense = DenseVGG(w.build().to(device, memory_format=torch.channels_last)).eval()
    return _Model(w.label, dense, w.preprocess, crop, np.array([index[c] for c in classes]))


@dataclass
class EvalResult:
    """Posteriors and errors of each model, and of their fusion.

    Attributes:
        classes: (K,) evaluated classes, the columns of the posteriors.
        targets: (N,) true class of each image that decoded.
        ids: (N,) their ids.
        posteriors: (model label or 'fusion', mode) -> (N, K) posteriors.
        errors: Rows of {'model', 'mode', 'top1_error', 'top5_error'}.
        failed: (id, reason) of images that could not be decoded (left out).
    """

    classes: list[str]
    targets: np.ndarray
    ids: list[str]
    posteriors: dict[tuple[str, str], np.ndarray]
    errors: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def top_k_errors(posteriors: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(top-1, top-5) error; top-5 is top-K when there are fewer than 5 classes."""
    from vggfeat.metrics import top_k_error

    k = min(5, posteriors.shape[1])
    return float(top_k_error(posteriors, targets, 1)), float(top_k_error(posteriors, targets, k))


def evaluate_models(
    weights: Sequence[Weights],
    images: LabelledImages,
    config: EvalConfig,
    progress: bool = True,
    on_image: Callable[[int], None] | None = None,
) -> EvalResult:
    """Posteriors and top-1/top-5 errors of each model (and their fusion) on ``images``.

    Args:
        weights: One or more trained nets; the fusion averages their posteriors.
        images: The val set; its classes must be classes of every model.
        config: Scales, modes, crop grid, flips, device and precision.
        progress: Show a progress bar.
        on_image: Called with the number of images done (for callers' own progress).
    """
    from tqdm import tqdm

    if not weights:
        raise VggfeatError("Give at least one model to evaluate (--weights).")
    labels = [w.label for w in weights]
    if len(set(labels)) != len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    device = resolve_device(config.device)
    dtype = PRECISIONS[config.precision]
    models = [_prepare(w, images.classes, config, device) for w in weights]
    for model, label in zip(models, labels):
        model.label = label
    autocast = (
        contextlib.nullcontext()
        if dtype == torch.float32
        else torch.autocast(device.type, dtype=dtype)
    )
    loader = DataLoader(
        _ScaledDataset(images, config.scales),
        batch_size=1,
        num_workers=config.workers,
        collate_fn=lambda b: b[0],
        generator=torch.Generator().manual_seed(0),
    )
    sums: dict[tuple[str, str], list[np.ndarray]] = {}
    targets, ids, failed = [], [], []
    with (
        torch.inference_mode(),
        autocast,
        tqdm(total=len(images), unit="img", disable=not progress) as bar,
    ):
        for item in loader:
            id_ = images.samples[item.index][0]
            bar.update(1)
            if on_image is not None:
                on_image(bar.n)
            if item.scaled is None:
                failed.append((id_, item.reason))
                continue
            ids.append(id_)
            targets.append(images.targets[item.index])
            for m in models:
                dense = torch.zeros(len(m.columns), device=device)
                crops = torch.zeros(len(m.columns), device=device)
                for pixels in item.scaled:
                    if config.needs_dense:
                        x = m.input(pixels[None], device)
                        dense += dense_posteriors(m.dense, x, config.flip)[0, m.columns]
                    if config.needs_crops:
                        x = m.input(crop_grid(pixels, m.crop, config.grid), device)
                        crops += crop_posteriors(m.dense.vgg, x, config.flip)[m.columns]
                dense, crops = dense / len(item.scaled), crops / len(item.scaled)
                per_mode = {
                    "dense": dense,
                    "multi-crop": crops,
                    "dense+multi-crop": (dense + crops) / 2,
                }
                for mode in config.modes:
                    sums.setdefault((m.label, mode), []).append(per_mode[mode].cpu().numpy())
    if not ids:
        raise VggfeatError(f"No image of {images.source} could be decoded.")
    y = np.array(targets, dtype=np.int64)
    posteriors = {key: np.stack(rows) for key, rows in sums.items()}
    if len(models) > 1:
        for mode in config.modes:
            posteriors[("fusion", mode)] = np.mean(
                [posteriors[(m.label, mode)] for m in models], axis=0
            )
    result = EvalResult(list(images.classes), y, ids, posteriors, failed=failed)
    for (label, mode), p in posteriors.items():
        top1, top5 = top_k_errors(p, y)
        result.errors.append({"model": label, "mode": mode, "top1_error": top1, "top5_error": top5})
    return result
