"""Image decoding and isotropic rescaling to smallest side Q (pure functions, no torch).

Decoding applies EXIF orientation and turns every colour mode (grey, CMYK, palette, alpha,
16-bit, float) into 8-bit RGB. Rescaling keeps the aspect ratio, makes the smallest side exactly
Q with PIL's antialiased bilinear filter, and centre-crops the longest side to ``max_side`` so an
extreme panorama cannot exhaust memory (the crop is reported per image).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vggfeat.errors import ImageError, VggfeatError

__all__ = [
    "IMAGE_EXTENSIONS",
    "INTERPOLATION",
    "MIN_SCALE",
    "DEFAULT_MAX_SIDE",
    "Scaled",
    "check_scales",
    "decode_image",
    "to_rgb",
    "scaled_size",
    "rescale",
    "rescale_all",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
INTERPOLATION = "bilinear, antialiased (PIL Image.resize)"
# fc6 is a 7x7 conv on pool5 (stride 32), so the smallest side must be at least 7 * 32 pixels.
MIN_SCALE = 224
DEFAULT_MAX_SIDE = 2048


def check_scales(scales: Iterable[int]) -> tuple[int, ...]:
    """Validate the smallest-side scales Q: integers >= 224, no repeats; keeps their order."""
    out: list[int] = []
    for q in scales:
        if int(q) != q or q < MIN_SCALE:
            raise VggfeatError(
                f"Scale Q={q} is too small: fc6 needs a 7x7 pool5 map, so Q must be an integer "
                f">= {MIN_SCALE}."
            )
        if int(q) in out:
            raise VggfeatError(f"Scale Q={q} is given twice.")
        out.append(int(q))
    if not out:
        raise VggfeatError("No scales given: pass e.g. --scales 256,384,512.")
    return tuple(out)


def _sixteen_bit_to_8(img: Image.Image) -> Image.Image:
    """I;16 / I / F modes -> 8-bit L by their full numeric range (16-bit assumed for ints)."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    else:
        scaled = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited over white; 16-bit greys are scaled down."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _sixteen_bit_to_8(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageError: unreadable, truncated, empty or non-image files, with the reason.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now, so truncation is caught here
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
                arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image PIL can identify") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"too many pixels ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"cannot decode: {reason}") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"decoded to an empty image of shape {arr.shape}")
    return arr


def scaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(H, W) after isotropic rescaling so that the smallest side equals ``scale``."""
    if height <= width:
        return scale, max(scale, int(round(width * scale / height)))
    return max(scale, int(round(height * scale / width))), scale


@dataclass(frozen=True)
class Scaled:
    """One rescaled image: (H, W, 3) uint8 pixels and what was changed, if anything."""

    pixels: np.ndarray
    note: str = ""


def rescale(image: np.ndarray, scale: int, max_side: int = DEFAULT_MAX_SIDE) -> Scaled:
    """Rescale (H, W, 3) uint8 so its smallest side is ``scale``; centre-crop the longest side
    to ``max_side`` if it is longer (keeping Q exact rather than shrinking the image)."""
    if max_side < scale:
        raise VggfeatError(f"--max-side {max_side} is smaller than the scale Q={scale}.")
    h, w = image.shape[:2]
    size = scaled_size(h, w, scale)
    if size == (h, w):
        out = image
    else:
        out = np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))
    note = ""
    if max(size) > max_side:
        axis = 0 if size[0] > size[1] else 1
        start = (size[axis] - max_side) // 2
        out = out[start : start + max_side] if axis == 0 else out[:, start : start + max_side]
        note = f"cropped longest side {max(size)} -> {max_side} px at Q={scale}"
    return Scaled(np.ascontiguousarray(out), note)


def rescale_all(
    image: np.ndarray, scales: Sequence[int], max_side: int = DEFAULT_MAX_SIDE
) -> tuple[list[np.ndarray], str]:
    """Rescale one decoded image to every Q; returns the arrays and the joined notes."""
    results = [rescale(image, q, max_side) for q in scales]
    notes = "; ".join(r.note for r in results if r.note)
    return [r.pixels for r in results], notes
