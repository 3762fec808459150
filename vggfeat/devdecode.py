"""JPEG decoding and rescaling on the compute device (nvJPEG through torchvision on a GPU).

For when the CPU cannot decode as fast as the GPU computes: the loader's workers only read
the file bytes and the EXIF orientation; the main process decodes a whole window of JPEGs in
one ``torchvision.io.decode_jpeg`` call on the device, orients them, and rescales them with
``torch.nn.functional.interpolate`` (bilinear, antialiased). Other formats, and JPEGs the
device decoder refuses (CMYK, say), are decoded by PIL and uploaded. The pixels differ from
PIL's by a grey level here and there, so stores record this decoder and refuse to mix it with
the CPU one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from vggfeat.images import decode_image, failure_reason, scaled_size

__all__ = [
    "DECODER",
    "INTERPOLATION_DEVICE",
    "Encoded",
    "ReadDataset",
    "read_encoded",
    "orient",
    "decode_on_device",
    "rescale_on_device",
]

DECODER = "torchvision.io.decode_jpeg on the compute device; other formats PIL"
INTERPOLATION_DEVICE = "bilinear, antialiased (torch.nn.functional.interpolate)"
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


@dataclass
class Encoded:
    """One sample as read by a worker: JPEG bytes to decode on the device, or pixels PIL
    decoded, or the reason it failed."""

    index: int
    id: str
    path: str
    data: np.ndarray | None = None
    pixels: np.ndarray | None = None
    orientation: int = 1
    reason: str = ""


def read_encoded(index: int, id_: str, path: str) -> Encoded:
    """Read one file: a JPEG's bytes and EXIF orientation, or any other image decoded by PIL."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(_JPEG_MAGIC):
            return Encoded(index, id_, path, pixels=decode_image(path))
        with Image.open(io.BytesIO(data)) as img:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
        return Encoded(
            index, id_, path, data=np.frombuffer(data, np.uint8), orientation=orientation
        )
    except Exception as exc:  # one bad file is its failed row; the run goes on
        return Encoded(index, id_, path, reason=failure_reason(exc))


class ReadDataset(Dataset):
    """Reads samples for :func:`decode_on_device`; runs inside DataLoader workers."""

    def __init__(self, samples: Sequence[tuple[str, str]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Encoded:
        return read_encoded(index, *self.samples[index])


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to (3, H, W) pixels, as PIL's ``exif_transpose``."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)
    if orientation in (2, 3, 6, 7):
        image = image.flip(-1)
    if orientation in (3, 4, 7, 8):
        image = image.flip(-2)
    return image


def _decode_jpeg() -> tuple[Any, Any]:
    """torchvision's decode_jpeg, imported without its TorchCodec deprecation notice."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg
    return ImageReadMode, decode_jpeg


def _upload(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 from PIL (read-only) -> (3, H, W) on ``device``."""
    return torch.from_numpy(np.require(pixels, requirements="W")).permute(2, 0, 1).to(device)


def _decode_one(item: Encoded, device: torch.device) -> torch.Tensor:
    ImageReadMode, decode_jpeg = _decode_jpeg()
    try:
        return decode_jpeg(torch.from_numpy(item.data.copy()), ImageReadMode.RGB, device=device)
    except RuntimeError:  # e.g. CMYK or progressive files some decoders refuse: PIL reads them
        item.orientation = 1  # decode_image applies the orientation itself
        return _upload(decode_image(item.path), device)


def decode_on_device(items: Sequence[Encoded], device: torch.device) -> list[torch.Tensor | str]:
    """(3, H, W) uint8 RGB pixels on ``device`` for each item, oriented, or why it failed."""
    ImageReadMode, decode_jpeg = _decode_jpeg()

    out: list[torch.Tensor | str] = [item.reason for item in items]
    jpegs = [i for i, item in enumerate(items) if item.data is not None]
    try:
        # One call for the whole window: nvJPEG decodes the batch together.
        data = [torch.from_numpy(items[i].data.copy()) for i in jpegs]
        decoded = decode_jpeg(data, ImageReadMode.RGB, device=device) if data else []
    except RuntimeError:  # a bad file fails the batched call: decode one by one
        decoded = [None] * len(jpegs)
    for i, image in zip(jpegs, decoded):
        try:
            image = image if image is not None else _decode_one(items[i], device)
            out[i] = orient(image, items[i].orientation)
        except Exception as exc:  # one bad file is its failed row; the run goes on
            out[i] = failure_reason(exc)
    for i, item in enumerate(items):
        if item.pixels is not None:
            out[i] = _upload(item.pixels, device)
    return out


def rescale_on_device(image: torch.Tensor, scale: int, max_side: int) -> tuple[torch.Tensor, str]:
    """Rescale (3, H, W) uint8 so the smallest side is ``scale`` and centre-crop the longest
    side to ``max_side``, as :func:`vggfeat.images.rescale` does on the CPU.

    Returns:
        The (3, h, w) uint8 pixels and the note ('' when nothing was cropped).
    """
    h, w = image.shape[-2:]
    size = scaled_size(h, w, scale)
    if size != (h, w):
        resized = F.interpolate(
            image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        image = resized.round_().clamp_(0, 255).to(torch.uint8)
    if max(size) <= max_side:
        return image, ""
    axis = -2 if size[0] > size[1] else -1
    start = (max(size) - max_side) // 2
    image = image.narrow(axis, start, max_side).contiguous()
    return image, f"cropped longest side {max(size)} -> {max_side} px at Q={scale}"
