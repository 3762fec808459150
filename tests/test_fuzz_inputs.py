"""Seeded fuzzing of image files: every file a folder holds ends as a descriptor or a failed row.

Small PIL-written images of each common format are mutated (bytes flipped, header fields
overwritten with extreme values, TIFF tag types changed, truncated, spliced); the decoder must turn each into pixels or
an ``ImageError``, and a ``vggfeat extract`` run over them (plus the hand-made cases of issue 8)
must exit 0 or 3 with every file accounted for.
"""

import io
import os
import struct

import numpy as np
from click.testing import CliRunner
from conftest import write_tiff_with_double_offsets
from PIL import Image

from vggfeat.cli import cli
from vggfeat.errors import ImageError
from vggfeat.images import load_image, rescale_all
from vggfeat.store import FeatureStore

FORMATS = ("JPEG", "PNG", "TIFF", "GIF", "BMP", "WEBP")
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "GIF": ".gif", "BMP": ".bmp",
              "WEBP": ".webp"}  # fmt: skip
MUTANTS_PER_FORMAT = 20
EXTREMES = (b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00")


def _originals(fmt: str) -> list[bytes]:
    """An RGB and a grey (JPEG) or palette (others) image of 20x24, as the format's bytes."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8))
    other = rgb.convert("L" if fmt in ("JPEG", "WEBP") else "P")
    out = []
    for img in (rgb, other):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def _retype_tiff_tag(d: bytearray, rng: np.random.Generator) -> bytearray:
    """Give 1-3 IFD entries of a little-endian TIFF other field types (as issue 8's DOUBLE)."""
    ifd = struct.unpack_from("<I", d, 4)[0]
    for _ in range(rng.integers(1, 4)):
        entry = ifd + 2 + 12 * int(rng.integers(0, struct.unpack_from("<H", d, ifd)[0]))
        struct.pack_into("<H", d, entry + 2, int(rng.integers(1, 13)))
    return d


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    d = bytearray(data)
    kind = rng.integers(0, 5)
    if d[:4] == b"II*\x00" and rng.random() < 0.5:  # the type confusions of issue 8
        return bytes(_retype_tiff_tag(d, rng))
    if kind == 0:  # a few random bytes anywhere
        for _ in range(rng.integers(1, 9)):
            d[rng.integers(0, len(d))] = rng.integers(0, 256)
    elif kind == 1:  # header bytes: sizes, offsets, tag types
        for _ in range(rng.integers(1, 4)):
            d[rng.integers(0, min(64, len(d)))] = rng.integers(0, 256)
    elif kind == 2:  # truncated
        d = d[: rng.integers(1, len(d))]
    elif kind == 3:  # a chunk repeated or cut out
        a = int(rng.integers(0, len(d)))
        b = min(len(d), a + int(rng.integers(1, 64)))
        d = d[:a] + d[a:b] + d[a:] if rng.random() < 0.5 else d[:a] + d[b:]
    else:  # a 32-bit field set to an extreme
        at = int(rng.integers(0, max(1, min(len(d) - 4, 128))))
        d[at : at + 4] = EXTREMES[rng.integers(0, len(EXTREMES))]
    return bytes(d)


def _write_mutants(folder, seed: int = 0, per_format: int = MUTANTS_PER_FORMAT) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for fmt in FORMATS:
        originals = _originals(fmt)
        for i in range(per_format):
            name = f"{fmt.lower()}_{i}{EXTENSIONS[fmt]}"
            (folder / name).write_bytes(_mutate(originals[i % len(originals)], rng))
            names.append(name)
    return names


def test_mutated_images_decode_or_fail_with_a_reason(tmp_path):
    names = _write_mutants(tmp_path)
    outcomes = {"ok": 0, "failed": 0}
    for name in names:
        try:
            decoded = load_image(tmp_path / name, (224,))
            scaled, _ = rescale_all(decoded.pixels, (224,))
        except ImageError as exc:
            assert str(exc), name
            outcomes["failed"] += 1
        else:
            assert scaled[0].dtype == np.uint8 and min(scaled[0].shape[:2]) == 224, name
            outcomes["ok"] += 1
    assert outcomes["ok"] and outcomes["failed"]  # the mutations exercise both ends


def test_extract_run_over_fuzzed_and_hostile_folder_exits_0_or_3(tmp_path):
    data = tmp_path / "data"
    names = _write_mutants(data, seed=1, per_format=3)  # the decoding itself is fuzzed above
    write_tiff_with_double_offsets(data / "double.tif")  # TypeError inside PIL
    Image.new("RGB", (900, 1), (200, 30, 30)).save(data / "thin.png")  # 201600 px long at Q=224
    Image.new("RGB", (16, 16)).save(data / "photo.jfif", format="JPEG")
    os.symlink(".", data / "latest")
    os.symlink("..", data / "up")
    os.mkfifo(data / "fifo.jpg")
    names += ["double.tif", "thin.png", "photo.jfif", "fifo.jpg"]
    out = tmp_path / "s.h5"
    args = ["extract", "--weights", "random", "--width", "0.0625", "--scales", "224",
            "--no-flip", "--workers", "1", "--batch-size", "4", "-q", "--out", str(out),
            str(data)]  # fmt: skip
    # In process (torch is loaded already), decoding in a DataLoader worker as in real runs.
    done = CliRunner().invoke(cli, args)
    assert done.exit_code in (0, 3), f"{done.output[-3000:]}\n{done.exception!r}"
    assert "symlinked folders already scanned" in done.output  # the scan line
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(names)  # every file, once
    failed = dict(store.failed())
    assert all(failed.values())  # each with a reason
    assert failed["double.tif"].startswith("cannot decode: TypeError:")
    assert "not a regular file" in failed["fifo.jpg"]
    ok = [i for i, id_ in enumerate(store.ids) if id_ not in failed]
    assert {"thin.png", "photo.jfif"} <= {store.ids[i] for i in ok}
    assert np.isfinite(store.descriptors("D", 224)[ok]).all()
    assert done.exit_code == (3 if failed else 0)
