"""Decoding (EXIF, colour modes, bad files) and isotropic rescaling."""

import io

import numpy as np
import pytest
from conftest import write_bad_images
from PIL import Image

from vggfeat.errors import ImageError, VggfeatError
from vggfeat.images import check_scales, decode_image, rescale, rescale_all, scaled_size


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
