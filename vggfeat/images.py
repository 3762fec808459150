"""Image decoding and isotropic rescaling to smallest side Q (pure functions, no torch).

Decoding applies EXIF orientation and turns every colour mode (grey, CMYK, palette, alpha,
16-bit, float) into 8-bit RGB; whatever stops it becomes an ``ImageError`` with the reason.
Images over PIL's decompression-bomb limit are decoded reduced (JPEG draft mode, ``reduce``)
when the largest Q needs far fewer pixels, and the image's note says so. Rescaling keeps the
aspect ratio, makes the smallest side exactly Q with PIL's antialiased bilinear filter, and
centre-crops the longest side to ``max_side``, so memory stays bounded by ``max_side`` x Q
whatever the aspect ratio (the crop is reported per image). A region of an image (a VOC person
box) is cut out of the decoded pixels by :func:`crop_box` before rescaling, so a region is
described exactly as a whole image is.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from vggfeat.errors import ImageError, VggfeatError

__all__ = [
    "IMAGE_EXTENSIONS",
    "INTERPOLATION",
    "MIN_SCALE",
    "DEFAULT_MAX_SIDE",
    "EXACT_CROP_FACTOR",
    "Box",
    "Decoded",
    "Scaled",
    "check_scales",
    "crop_box",
    "load_image",
    "decode_image",
    "failure_reason",
    "looks_like_image",
    "to_rgb",
    "scaled_size",
    "rescale",
    "rescale_all",
]

# Formats Pillow registers but that are no pictures to describe: EPS needs Ghostscript (and
# .ps/.eps are documents); MPEG is identified but never decoded.
_NOT_PICTURES = frozenset({"EPS", "MPEG"})


def _decodable_extensions() -> frozenset[str]:
    """Extensions of every format this Pillow can decode (.jpg, .jpe, .jfif, .png, .tif, ...)."""
    Image.init()
    stubs = {
        fmt
        for fmt, (factory, _) in Image.OPEN.items()
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
    }
    return frozenset(
        ext
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in stubs | _NOT_PICTURES
    )


IMAGE_EXTENSIONS = _decodable_extensions()
INTERPOLATION = "bilinear, antialiased (PIL Image.resize)"
# fc6 is a 7x7 conv on pool5 (stride 32), so the smallest side must be at least 7 * 32 pixels.
MIN_SCALE = 224
DEFAULT_MAX_SIDE = 2048
# A panorama is rescaled whole and then cropped (bit-identical to earlier versions) while the
# whole is at most this many times the kept part; beyond, only the kept part is resampled (PIL's
# resize box), so a 3000x1 strip cannot make a 768,000-px-long image first. The box path may
# differ from resize-then-crop by one grey level (PIL holds the box in float32); it is noted.
EXACT_CROP_FACTOR = 8


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


_JPEG_MAGIC = b"\xff\xd8\xff"


def looks_like_image(head: bytes) -> bool:
    """Whether a file's first 32 bytes are a JPEG, PNG, GIF, TIFF, WebP or BMP signature."""
    if head.startswith((_JPEG_MAGIC, b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")):
        return True
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    # "BM" alone starts plenty of text: also ask for zero reserved bytes and a known DIB header.
    return (
        head[:2] == b"BM"
        and len(head) >= 18
        and head[6:10] == b"\x00" * 4
        and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
    )


def failure_reason(exc: BaseException) -> str:
    """One-line reason for a failed image: an ``ImageError``'s own text, else 'Type: message'."""
    if isinstance(exc, ImageError):
        text = str(exc)
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    # File names in messages may hold undecodable bytes (surrogates); stores want valid UTF-8.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Decoded:
    """A decoded image.

    Attributes:
        pixels: (H, W, 3) uint8 RGB, EXIF orientation applied; smaller than ``size`` when the
            file was decoded reduced.
        size: The file's (height, width) after EXIF orientation.
        note: What was changed ('' when nothing), e.g. 'decoded at 1/8 size (JPEG draft) ...'.
    """

    pixels: np.ndarray
    size: tuple[int, int]
    note: str = ""


class Box(NamedTuple):
    """A region of an image in VOC's convention: 1-based, inclusive pixel coordinates of the
    image as stored (after EXIF orientation), so ``(1, 1, W, H)`` is the whole ``W x H`` image.
    Coordinates may be fractional (some VOC annotations are); they are rounded when cropping."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def __str__(self) -> str:
        return "(" + ", ".join(f"{v:g}" for v in self) + ")"


def _box_bounds(box: Box, height: int, width: int) -> tuple[int, int, int, int, str]:
    """0-based half-open (top, bottom, left, right) rows and columns of ``box`` in an image of
    ``height`` x ``width`` pixels, clipped to it, and a note when clipping was needed.

    Raises:
        ImageError: a box that is not four finite numbers, that has no area, or that lies
            wholly outside the image.
    """
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ImageError(f"bad box {box!r}: need four numbers xmin, ymin, xmax, ymax") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ImageError(f"bad box {box!r}: need four finite numbers xmin, ymin, xmax, ymax")
    xmin, ymin, xmax, ymax = values
    # Inclusive 1-based (VOC) -> half-open 0-based: pixels xmin..xmax are columns xmin-1..xmax-1.
    left, right = round(xmin) - 1, round(xmax)
    top, bottom = round(ymin) - 1, round(ymax)
    if right <= left or bottom <= top:
        raise ImageError(f"degenerate box {Box(*values)}: zero area (xmax < xmin or ymax < ymin)")
    clipped = (max(top, 0), min(bottom, height), max(left, 0), min(right, width))
    if clipped[1] <= clipped[0] or clipped[3] <= clipped[2]:
        raise ImageError(f"box {Box(*values)} lies outside the {width}x{height} image")
    note = ""
    if clipped != (top, bottom, left, right):
        note = f"box {Box(*values)} clipped to the {width}x{height} image"
    return (*clipped, note)


def crop_box(image: Decoded, box: Box) -> Decoded:
    """The region ``box`` of a decoded image, as a decoded image of its own.

    ``box`` is in the file's pixel coordinates (``image.size``); an image decoded reduced (a
    huge one) has its box scaled to the pixels it holds. A box partly outside the image is
    clipped to it (noted); ``size`` stays the whole image's, so the row records the image the
    region came from.

    Raises:
        ImageError: a degenerate box (zero area, not finite) or one wholly outside the image.
    """
    height, width = image.size
    top, bottom, left, right, note = _box_bounds(box, height, width)
    ph, pw = image.pixels.shape[:2]
    if (ph, pw) != (height, width):  # decoded at 1/k size: scale the bounds to its pixels
        top, bottom = top * ph // height, max(top * ph // height + 1, bottom * ph // height)
        left, right = left * pw // width, max(left * pw // width + 1, right * pw // width)
    pixels = np.ascontiguousarray(image.pixels[top:bottom, left:right])
    notes = "; ".join(n for n in (image.note, note) if n)
    return Decoded(pixels, image.size, notes)


def _reduction(smallest: int, need: int) -> int:
    """Largest power of two k such that ``smallest / k`` is still >= ``need`` (1 if none)."""
    k = 1
    while need > 0 and smallest // (2 * k) >= need:
        k *= 2
    return k


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        # Image.open refuses more than twice the limit before a reduced decode can be asked
        # for; a JPEG can still be decoded at 1/2 to 1/8 size (draft mode), so open it directly.
        with open(path, "rb") as f:
            if f.read(3) != _JPEG_MAGIC:
                raise
        return JpegImagePlugin.JpegImageFile(path)


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """``Image.reduce`` (a box filter), after converting modes it cannot handle."""
    if img.mode in ("P", "1") or img.mode.startswith("I;16"):
        img = img.convert("I") if img.mode.startswith("I;16") else to_rgb(img)
    return img.reduce(factor)


def _load_over_limit(img: Image.Image, need: int, limit: int) -> tuple[Image.Image, str]:
    """Load an image over PIL's pixel limit reduced, as far as ``need`` allows; with a note.

    Raises:
        ImageError: when it cannot be reduced (the guard applies as in PIL), or when what must be
            decoded is over twice the limit (PIL's hard limit) even so.
    """
    width, height = img.size
    what = f"{width}x{height} ({width * height / 1e6:.0f} Mpx)"
    guard = f"PIL's decompression-bomb limit of {limit / 1e6:.0f} Mpx (Image.MAX_IMAGE_PIXELS)"
    k = _reduction(min(width, height), need)
    if k == 1:
        wants = f"Q={need} needs every pixel" if need else "no Q given to reduce it for"
        raise ImageError(f"too many pixels: {what} is over {guard}, and {wants}")
    drafted = 1
    if img.format in ("JPEG", "MPO"):
        # Ask for at least 1/k of each side, so draft's power of two stays <= k.
        result = img.draft(img.mode, (-(-width // k), -(-height // k)))
        if result is not None:
            drafted = max(1, round(width / result[1][2]))
    if img.size[0] * img.size[1] > 2 * limit:
        why = (
            f"even at 1/{drafted} size (JPEG draft) it is"
            if drafted > 1
            else "only JPEGs are decoded reduced without decoding every pixel, and it is"
        )
        raise ImageError(f"too many pixels: {what}; {why} over twice {guard}")
    img.load()
    rest = k // drafted
    if rest > 1:
        img = _reduce(img, rest)
    how = " + ".join(m for m, f in (("JPEG draft", drafted), ("Image.reduce", rest)) if f > 1)
    return img, f"decoded at 1/{k} size ({how}): {what} is over {guard}"


def load_image(path: str | os.PathLike, scales: Sequence[int] = ()) -> Decoded:
    """Decode an image file to RGB; one over PIL's pixel limit is decoded reduced if Q allows.

    Images within ``Image.MAX_IMAGE_PIXELS`` (89.5 Mpx) are decoded at full size, exactly as
    always. Larger ones are decoded at 1/2, 1/4, ... size (JPEG draft mode, else a full decode
    and ``Image.reduce``) while their smallest side stays >= the largest Q, and noted. PIL's
    decompression-bomb guard still refuses them when no such reduction exists, or when what
    must be decoded is over twice the limit (only JPEG draft mode decodes less than the whole).

    Args:
        path: The image file.
        scales: The Q the image is for; the largest bounds the reduction. Empty: no reduction.

    Raises:
        ImageError: missing, unreadable, empty, truncated, corrupt, not an image, or too many
            pixels, with the reason. Whatever PIL raises is turned into this.
    """
    try:
        return _load(path, max(scales, default=0))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image PIL can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels (PIL's decompression-bomb guard): {exc}") from None
    except Exception as exc:  # PIL's decoders raise many types on corrupt data (TypeError, ...)
        raise ImageError(f"cannot decode: {failure_reason(exc)}") from None


def _load(path: str | os.PathLike, need: int) -> Decoded:
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read: {failure_reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file (a folder, pipe, socket or device)")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    note = ""
    with warnings.catch_warnings():
        # The pixel limit is applied here, per image, so an image over it can be decoded reduced;
        # other decoder warnings (bad metadata, skipped tags) would only litter a run's output.
        warnings.simplefilter("ignore")
        with _open(path) as opened:
            width, height = opened.size
            if limit is not None and width * height > limit:
                img, note = _load_over_limit(opened, need, limit)
            else:
                img = opened
                img.load()  # decode now, so truncation is caught here
            oriented = ImageOps.exif_transpose(img)
            turned = oriented.size != img.size
            arr = np.asarray(to_rgb(oriented), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"decoded to an empty image of shape {arr.shape}")
    # The file's own size, oriented as the pixels are (they are smaller if decoded reduced).
    size = (width, height) if turned else (height, width)
    return Decoded(arr, size, note)


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageError: unreadable, truncated, empty or non-image files, with the reason.
    """
    return load_image(path).pixels


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
    to ``max_side`` if it is longer (keeping Q exact rather than shrinking the image).

    Memory is bounded by about ``EXACT_CROP_FACTOR * max_side * scale`` pixels whatever the
    aspect ratio: past that, only the kept part is resampled.
    """
    if max_side < scale:
        raise VggfeatError(f"--max-side {max_side} is smaller than the scale Q={scale}.")
    h, w = image.shape[:2]
    size = scaled_size(h, w, scale)
    if max(size) <= max_side:
        return Scaled(_resize(image, size))
    axis = 0 if size[0] > size[1] else 1
    start = (size[axis] - max_side) // 2
    note = f"cropped longest side {max(size)} -> {max_side} px at Q={scale}"
    if size == (h, w) or max(size) <= EXACT_CROP_FACTOR * max_side:
        out = _take(_resize(image, size), axis, start, start + max_side)
    else:
        out = _resize_part(image, size, axis, start, start + max_side)
        note += " (only the kept part resampled)"
    return Scaled(np.ascontiguousarray(out), note)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) -> ``size`` (h, w) by PIL's antialiased bilinear filter."""
    if size == image.shape[:2]:
        return image
    resized = Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _take(image: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    return image[lo:hi] if axis == 0 else image[:, lo:hi]


def _resize_part(
    image: np.ndarray, size: tuple[int, int], axis: int, lo: int, hi: int
) -> np.ndarray:
    """Pixels ``lo:hi`` along ``axis`` of ``image`` resized to ``size``, making only those."""
    step = image.shape[axis] / size[axis]  # source pixels per output pixel
    start, stop = lo * step, hi * step
    # Bilinear support is one output pixel (in source pixels, at least one): take a margin.
    margin = math.ceil(max(step, 1.0)) + 1
    first = max(0, math.floor(start) - margin)
    last = min(image.shape[axis], math.ceil(stop) + margin)
    part = _take(image, axis, first, last)
    h, w = part.shape[:2]
    box = (0, start - first, w, stop - first) if axis == 0 else (start - first, 0, stop - first, h)
    kept = (hi - lo, size[1]) if axis == 0 else (size[0], hi - lo)
    resized = Image.fromarray(np.ascontiguousarray(part)).resize(
        kept[::-1], Image.Resampling.BILINEAR, box=box
    )
    return np.asarray(resized)


def rescale_all(
    image: np.ndarray, scales: Sequence[int], max_side: int = DEFAULT_MAX_SIDE
) -> tuple[list[np.ndarray], str]:
    """Rescale one decoded image to every Q; returns the arrays and the joined notes."""
    results = [rescale(image, q, max_side) for q in scales]
    notes = "; ".join(r.note for r in results if r.note)
    return [r.pixels for r in results], notes
