"""Decoding (EXIF, colour modes, bad files) and isotropic rescaling."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_bad_images, write_tiff_with_double_offsets
from PIL import Image, ImageOps

from vggfeat.errors import ImageError, VggfeatError
from vggfeat.images import (
    IMAGE_EXTENSIONS,
    check_scales,
    decode_image,
    failure_reason,
    load_image,
    looks_like_image,
    rescale,
    rescale_all,
    scaled_size,
)


def _save(tmp_path, img, name, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(tmp_path, img, "rot.jpg", exif=exif, quality=100)
    out = decode_image(path)
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # white half now on top


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 40, (40, 40, 40)),
        ("RGBA", (200, 0, 0, 0), (255, 255, 255)),  # fully transparent over white
        ("RGBA", (200, 0, 0, 255), (200, 0, 0)),
        ("LA", (0, 128), (127, 127, 127)),
    ],
)
def test_colour_modes_become_rgb(tmp_path, mode, value, expected):
    img = Image.new(mode, (8, 6), value)
    path = _save(tmp_path, img, "m.png" if mode != "CMYK" else "m.tiff")
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_allclose(out[0, 0], expected, atol=1)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    img.info["transparency"] = 1
    img.putpixel((0, 0), 1)
    out = decode_image(_save(tmp_path, img, "p.png", transparency=1))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 20, 30)


def test_bad_files_raise_image_error_with_reason(tmp_path):
    corpus = write_bad_images(tmp_path)
    for name, fragment in corpus.items():
        with pytest.raises(ImageError, match=fragment):
            decode_image(tmp_path / name)


@pytest.mark.parametrize(
    "h,w,q,expected",
    [
        (375, 500, 256, (256, 341)),
        (500, 375, 384, (512, 384)),
        (300, 300, 224, (224, 224)),
        (1000, 10, 256, (25600, 256)),
    ],
)
def test_scaled_size_keeps_aspect_with_exact_smallest_side(h, w, q, expected):
    assert scaled_size(h, w, q) == expected


def test_rescale_and_crop_of_panoramas():
    image = np.random.default_rng(0).integers(0, 255, (100, 800, 3), dtype=np.uint8)
    plain = rescale(image, 256, max_side=4096)
    assert plain.pixels.shape == (256, 2048, 3) and plain.note == ""
    cropped = rescale(image, 256, max_side=1000)
    assert cropped.pixels.shape == (256, 1000, 3) and "2048 -> 1000" in cropped.note
    np.testing.assert_array_equal(cropped.pixels, plain.pixels[:, 524:1524])
    pixels, notes = rescale_all(image, (256, 384), max_side=1000)
    assert [p.shape[0] for p in pixels] == [256, 384] and notes.count("cropped") == 2


def test_resize_is_antialiased():
    stripes = np.zeros((448, 448, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes alias badly without a low-pass filter
    out = rescale(stripes, 224).pixels
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 10


def test_check_scales():
    assert check_scales([256, 384]) == (256, 384)
    with pytest.raises(VggfeatError, match="Q=223 is too small.*7x7 pool5"):
        check_scales([223])
    with pytest.raises(VggfeatError, match="twice"):
        check_scales([256, 256])


def test_jpeg_round_trip_matches_pil(tmp_path):
    buf = io.BytesIO()
    arr = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    np.testing.assert_array_equal(decode_image(tmp_path / "a.png"), arr)


def test_any_decoder_exception_becomes_image_error_with_its_type(tmp_path, monkeypatch):
    path = write_tiff_with_double_offsets(tmp_path / "double.tif")
    with pytest.raises(ImageError, match=r"^cannot decode: TypeError: "):
        decode_image(path)

    def broken(img):
        raise KeyError("orientation")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    good = _save(tmp_path, Image.new("RGB", (8, 8)), "good.png")
    with pytest.raises(ImageError, match=r"KeyError: 'orientation'"):
        decode_image(good)


def test_missing_folder_and_pipe_fail_with_reason(tmp_path):
    with pytest.raises(ImageError, match="cannot read: FileNotFoundError"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        decode_image(tmp_path)
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block forever
    with pytest.raises(ImageError, match="not a regular file"):
        decode_image(tmp_path / "pipe.jpg")


def test_failure_reason_is_type_and_first_line_in_valid_utf8():
    assert failure_reason(ValueError("bad\nmore")) == "ValueError: bad"
    assert failure_reason(MemoryError()) == "MemoryError"
    assert failure_reason(ImageError("empty file (0 bytes)")) == "empty file (0 bytes)"
    name = os.fsdecode(b"caf\xe9.jpg")  # an undecodable byte, as os.listdir gives it
    reason = failure_reason(FileNotFoundError(2, "No such file", name))
    assert reason.encode("utf-8") and "caf\\udce9.jpg" in reason


def test_ordinary_images_are_exactly_plain_pil(tmp_path):
    """Decode + rescale of ordinary images equals PIL's own open, RGB and bilinear resize."""
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(375, 500), (500, 333), (240, 240), (100, 700)]):
        path = _save(
            tmp_path, Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)), f"{i}.jpg"
        )
        decoded = load_image(path, (256, 384))
        assert decoded.note == "" and decoded.size == (h, w)
        with Image.open(path) as ref:
            ref = ref.convert("RGB")
        for q, scaled in zip((256, 384), rescale_all(decoded.pixels, (256, 384))[0]):
            th, tw = scaled_size(h, w, q)
            expected = np.asarray(ref.resize((tw, th), Image.Resampling.BILINEAR))
            if max(th, tw) > 2048:  # 100x700 at Q=384: 2688 -> centre 2048
                start = (tw - 2048) // 2
                expected = expected[:, start : start + 2048]
            np.testing.assert_array_equal(scaled, expected)


def test_thin_images_resample_only_the_kept_part():
    rng = np.random.default_rng(4)
    strip = rng.integers(0, 255, (3, 400, 3), np.uint8)
    # 3x400 at Q=256 is 256x34133 whole: over 8x the kept 2048, so only the kept part is made.
    out = rescale(strip, 256, max_side=2048)
    assert out.pixels.shape == (256, 2048, 3) and "only the kept part" in out.note
    whole = np.asarray(Image.fromarray(strip).resize((34133, 256), Image.Resampling.BILINEAR))
    start = (34133 - 2048) // 2
    diff = np.abs(out.pixels.astype(int) - whole[:, start : start + 2048])
    assert diff.max() <= 1 and diff.mean() < 0.05  # PIL holds the box in float32
    tall = rescale(strip.transpose(1, 0, 2), 256, max_side=2048)
    assert tall.pixels.shape == (2048, 256, 3)
    np.testing.assert_allclose(tall.pixels, out.pixels.transpose(1, 0, 2), atol=1)
    # Within EXACT_CROP_FACTOR of the kept part, resize-then-crop as before, bit for bit.
    panorama = rng.integers(0, 255, (40, 1000, 3), np.uint8)  # 256 x 6400 at Q=256
    kept = rescale(panorama, 256, max_side=2048)
    whole = np.asarray(Image.fromarray(panorama).resize((6400, 256), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(kept.pixels, whole[:, 2176:4224])
    assert "only the kept part" not in kept.note


_PEAK_RSS = """
import resource, sys
from vggfeat.images import load_image, rescale_all
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
load_image(sys.argv[1])  # imports and plugins loaded before the baseline
before = peak()
scaled, note = rescale_all(load_image(sys.argv[1], (256, 384)).pixels, (256, 384), 2048)
print(peak() - before, [s.shape for s in scaled])
"""


def test_thin_image_memory_is_bounded_by_max_side_times_q(tmp_path):
    # 600x1 px: whole at Q=384 it would be 230400x384 (88 Mpx, ~600 MB with PIL's copy);
    # the kept 2048x384 part needs ~3 MB.
    path = _save(tmp_path, Image.new("RGB", (600, 1), (10, 200, 30)), "thin.png")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, check=True
    ).stdout
    grown_mb, shapes = out.split(" ", 1)
    assert "(256, 2048, 3), (384, 2048, 3)" in shapes
    assert float(grown_mb) < 40, f"peak RSS grew {grown_mb} MB"


def _big_jpeg(tmp_path, size, name="big.jpg", **kwargs):
    small = np.random.default_rng(5).integers(0, 255, (12, 16, 3), np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    return _save(tmp_path, img, name, quality=90, **kwargs)


def test_images_over_the_pixel_limit_are_decoded_reduced(tmp_path, monkeypatch):
    path = _big_jpeg(tmp_path, (1600, 1200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 1.92 Mpx is over twice this
    decoded = load_image(path, (256, 224))
    # 1200 / 4 = 300 >= 256 > 1200 / 8: JPEG draft mode at 1/4.
    assert decoded.pixels.shape == (300, 400, 3) and decoded.size == (1200, 1600)
    assert decoded.note.startswith("decoded at 1/4 size (JPEG draft): 1600x1200 (2 Mpx) is over")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(path) as ref:
        ref.draft("RGB", (400, 300))
        np.testing.assert_array_equal(decoded.pixels, np.asarray(ref.convert("RGB")))
    assert load_image(path, (256,)).note == ""  # no limit: full size, as always


def test_reduced_decode_keeps_the_oriented_file_size(tmp_path, monkeypatch):
    img = Image.fromarray(np.zeros((600, 800, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate on display: 800 wide becomes 800 high
    path = _save(tmp_path, img, "turned.jpg", exif=exif)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    decoded = load_image(path, (224,))
    assert decoded.size == (800, 600) and decoded.pixels.shape == (400, 300, 3)


def test_non_jpeg_over_the_limit_is_reduced_or_refused_with_which_case(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    arr = rng.integers(0, 255, (500, 600, 3), np.uint8)
    path = _save(tmp_path, Image.fromarray(arr), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 300k: over, not over twice
    decoded = load_image(path, (224,))
    assert "1/2 size (Image.reduce)" in decoded.note and decoded.size == (500, 600)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(Image.fromarray(arr).reduce(2)))
    with pytest.raises(ImageError, match=r"too many pixels: 600x500 .* Q=384 needs every pixel"):
        load_image(path, (384,))  # 500 / 2 < 384: nothing to gain, the guard holds
    with pytest.raises(ImageError, match="no Q given"):
        decode_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 300k: over twice
    with pytest.raises(ImageError, match="decompression-bomb guard"):
        load_image(path, (224,))
    jpeg = _big_jpeg(tmp_path, (3000, 2400))  # 7.2 Mpx; 1/8 is 375x300 = 112k, over 2 x 50k
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(ImageError, match=r"even at 1/8 size \(JPEG draft\)"):
        load_image(jpeg, (224,))


def test_image_extensions_come_from_pil():
    assert {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".gif", ".bmp", ".webp"} <= (
        IMAGE_EXTENSIONS
    )
    assert not {".h5", ".txt", ".pdf", ".eps"} & IMAGE_EXTENSIONS  # stubs, save-only, no decoder


def test_looks_like_image_by_signature(tmp_path):
    for fmt in ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP"):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=fmt)
        assert looks_like_image(buf.getvalue()[:32]), fmt
    assert not looks_like_image(b"BMW 3 series, 1990\n")
    assert not looks_like_image(b"\x89HDF\r\n\x1a\n") and not looks_like_image(b"")
