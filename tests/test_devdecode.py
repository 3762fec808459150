"""Decoding and rescaling on the compute device, checked on the CPU (torchvision's CPU JPEG
decoder, torch interpolation) against PIL: orientation, formats, bad files, rescale, crop."""

import numpy as np
import pytest
import torch
from conftest import write_bad_images, write_images
from PIL import Image

from vggfeat.devdecode import decode_on_device, orient, read_encoded, rescale_on_device
from vggfeat.extract import ExtractConfig, Extractor
from vggfeat.images import decode_image, rescale

CPU = torch.device("cpu")


def _jpeg_with_orientation(path, orientation):
    rng = np.random.default_rng(orientation)
    low = rng.integers(0, 256, (6, 8, 3), np.uint8)
    img = Image.fromarray(low).resize((160, 120), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_decode_orients_like_pil(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / "o.jpg", orientation)
    item = read_encoded(0, "o.jpg", str(path))
    assert item.data is not None and item.orientation == orientation
    (got,) = decode_on_device([item], CPU)
    want = decode_image(path)  # PIL, exif_transpose
    assert tuple(got.shape) == (3, *want.shape[:2])
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8  # decoders differ by rounding only


def test_orient_matches_pil_transposes_exactly():
    x = torch.arange(6, dtype=torch.uint8).view(2, 3).expand(3, 2, 3)
    pil = Image.fromarray(x[0].numpy())
    ops = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}  # fmt: skip
    for orientation, op in ops.items():
        want = np.asarray(pil.transpose(op))
        assert (orient(x, orientation)[0].numpy() == want).all(), orientation


def test_other_formats_and_bad_files(tmp_path):
    (png,) = write_images(tmp_path / "ok", [(230, 250)], ext=".png")
    corpus = write_bad_images(tmp_path / "bad")
    items = [read_encoded(0, "png", str(png))]
    items += [read_encoded(i + 1, n, str(tmp_path / "bad" / n)) for i, n in enumerate(corpus)]
    items.append(read_encoded(99, "missing", str(tmp_path / "missing.jpg")))
    assert items[0].data is None and items[0].pixels is not None  # PNG: PIL on the CPU
    out = decode_on_device(items, CPU)
    assert (out[0].permute(1, 2, 0).numpy() == decode_image(png)).all()
    for item, got in zip(items[1:], out[1:]):
        assert isinstance(got, str) and got, item.id
    assert "No such file" in out[-1]


def test_rescale_on_device_is_close_to_pil_and_crops_alike():
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (30, 40, 3), np.uint8)
    image = np.asarray(Image.fromarray(low).resize((500, 375), Image.Resampling.BILINEAR))
    x = torch.from_numpy(image).permute(2, 0, 1)
    for q in (256, 384, 512):
        got, note = rescale_on_device(x, q, 2048)
        want = rescale(image, q).pixels
        assert tuple(got.shape[1:]) == want.shape[:2] and note == ""
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 4
    panorama = torch.zeros((3, 100, 2000), dtype=torch.uint8)
    got, note = rescale_on_device(panorama, 256, 1024)
    assert tuple(got.shape[1:]) == (256, 1024)
    assert note == rescale(np.zeros((100, 2000, 3), np.uint8), 256, 1024).note


def test_extraction_with_device_decode_is_close_and_recorded(tiny_weights, tmp_path):
    paths = write_images(tmp_path, [(240, 320), (320, 240), (256, 300)])
    samples = [(p.name, str(p)) for p in paths]
    w = tiny_weights("D", seed=3)
    results = {}
    for decode in ("cpu", "device"):
        rows = []
        ex = Extractor([w], ExtractConfig(scales=(224, 256), device="cpu", workers=0,
                                          decode=decode))  # fmt: skip
        ex.run(samples, rows.append, progress=False)
        results[decode] = (rows, ex.settings())
    (cpu_rows, cpu_settings), (dev_rows, dev_settings) = results["cpu"], results["device"]
    assert "decoder" not in cpu_settings and "decode_jpeg" in dev_settings["decoder"]
    assert dev_settings["interpolation"] != cpu_settings["interpolation"]
    for a, b in zip(cpu_rows, dev_rows):
        assert a.ok and b.ok and a.image_size == b.image_size
        for key in a.descriptors:
            rel = np.abs(a.descriptors[key] - b.descriptors[key]).max()
            assert rel / np.abs(a.descriptors[key]).max() < 5e-2
