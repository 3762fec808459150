"""Indexing image folders and lists into (id, path) samples."""

import os
import subprocess
import sys

import pytest
from conftest import write_images
from PIL import Image

from vggfeat.datasets import ScanReport, find_images, read_list
from vggfeat.errors import VggfeatError


def test_folders_recursive_ids_relative_to_root(tmp_path):
    write_images(tmp_path / "root" / "cat", [(224, 224)] * 2)
    write_images(tmp_path / "root" / "dog" / "deep", [(224, 224)])
    (tmp_path / "root" / "notes.txt").write_text("not an image")
    samples = find_images([tmp_path / "root"])
    assert [i for i, _ in samples] == ["cat/img_000.jpg", "cat/img_001.jpg", "dog/deep/img_000.jpg"]
    by_root = find_images([tmp_path / "root" / "cat"], root=tmp_path / "root")
    assert [i for i, _ in by_root] == ["cat/img_000.jpg", "cat/img_001.jpg"]


def test_symlinked_class_folders_are_followed(tmp_path):
    write_images(tmp_path / "data" / "cat", [(224, 224)])
    (tmp_path / "view").mkdir()
    os.symlink(tmp_path / "data" / "cat", tmp_path / "view" / "cat")
    samples = find_images([tmp_path / "view"], root=tmp_path / "view")
    assert [i for i, _ in samples] == ["cat/img_000.jpg"]


def test_list_file_and_errors(tmp_path):
    write_images(tmp_path / "imgs", [(224, 224)] * 2)
    listing = tmp_path / "list.txt"
    listing.write_text("img_001.jpg\n\n# skipped\nmissing.jpg\n")
    samples = find_images(root=tmp_path / "imgs", list_file=listing)
    assert [i for i, _ in samples] == [
        "img_001.jpg",
        "missing.jpg",
    ]  # missing: recorded as failed later
    (tmp_path / "other").mkdir()
    with pytest.raises(VggfeatError, match="not under --root"):
        find_images([tmp_path / "imgs" / "img_000.jpg"], root=tmp_path / "other")
    with pytest.raises(VggfeatError, match="occur twice"):
        find_images([tmp_path / "imgs", tmp_path / "imgs" / "img_000.jpg"], root=tmp_path / "imgs")
    with pytest.raises(VggfeatError, match="No images found"):
        find_images([tmp_path / "other"])


_FIND = """
import sys
from vggfeat.datasets import ScanReport, find_images
report = ScanReport()
ids = [i for i, _ in find_images([sys.argv[1]], report=report)]
print(ids)
print(report.summary())
"""


def test_symlink_loops_neither_duplicate_nor_hang(tmp_path):
    data = tmp_path / "data"
    write_images(data / "cat", [(224, 224)] * 2)
    write_images(data, [(224, 224)])
    os.symlink(".", data / "latest")  # each image again under latest/, latest/latest/, ...
    os.symlink("..", data / "up")  # up/data/... forever, and out of the folder
    os.symlink("cat", data / "kitty")  # a second name for a folder already indexed
    (tmp_path / "outside").mkdir()
    # A subprocess, so that a regression (an endless walk) fails on the timeout.
    done = subprocess.run(
        [sys.executable, "-c", _FIND, str(data)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    ids, summary = done.stdout.splitlines()
    assert eval(ids) == ["cat/img_000.jpg", "cat/img_001.jpg", "img_000.jpg"]
    assert "3 symlinked folders already scanned" in summary
    assert "kitty, latest, up/data" in summary  # each loop reported once


def test_real_folders_keep_their_path_over_links_to_them(tmp_path):
    write_images(tmp_path / "b_real", [(224, 224)])
    os.symlink("b_real", tmp_path / "a_link")  # sorts first, scanned after the real tree
    report = ScanReport()
    assert [i for i, _ in find_images([tmp_path], report=report)] == ["b_real/img_000.jpg"]
    assert report.revisited == ["a_link"]


def test_pil_extensions_content_sniffing_and_skip_report(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, fmt in [("a.jfif", "JPEG"), ("b.JPE", "JPEG"), ("c.tiff", "TIFF"), ("d", "PNG")]:
        Image.new("RGB", (8, 8)).save(folder / name, format=fmt)
    Image.new("RGB", (8, 8)).save(folder / "e.dat", format="JPEG")  # an image by its content
    (folder / "notes.txt").write_text("BM but not a bitmap")
    (folder / "labels.csv").write_text("id,label\n")
    (folder / "README").write_text("hello")
    os.symlink("nowhere", folder / "gone.jpg")  # kept: fails later with its reason
    os.symlink("nowhere", folder / "gone")
    os.mkfifo(folder / "fifo")  # never opened: reading it would block
    report = ScanReport()
    ids = [i for i, _ in find_images([folder], report=report)]
    assert ids == ["a.jfif", "b.JPE", "c.tiff", "d", "e.dat", "gone.jpg"]
    assert report.by_content == ["d", "e.dat"]
    assert report.not_images == {".txt": 1, ".csv": 1, "no extension": 1}
    assert report.not_files == {"broken symlink": 1, "pipe": 1}
    summary = report.summary()
    assert summary.startswith("scan: 6 images (2 recognised by content: no image extension)")
    assert "3 non-image files (.csv 1, .txt 1, no extension 1)" in summary
    assert "2 non-files (broken symlink 1, pipe 1)" in summary


def test_nothing_found_says_what_was_skipped(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VggfeatError, match=r"No images found \(scan: 0 images; skipped 1 non"):
        find_images([tmp_path])


def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    write_images(tmp_path / "ok", [(224, 224)])
    (tmp_path / "secret").mkdir()
    real_scandir = os.scandir

    def scandir(path):  # chmod 000 does not stop root, so refuse the way the kernel would
        if os.path.basename(path) == "secret":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = ScanReport()
    assert len(find_images([tmp_path], report=report)) == 1
    assert report.unreadable == ["secret: Permission denied"]
    assert "1 unreadable entry (secret: Permission denied)" in report.summary()


@pytest.mark.parametrize(
    "encoding,bom",
    [
        ("utf-8", b""),
        ("utf-8", b"\xef\xbb\xbf"),  # Notepad's "UTF-8 with BOM"
        ("utf-16-le", b"\xff\xfe"),  # PowerShell 5's `>`
        ("utf-16-be", b"\xfe\xff"),
        ("utf-16-le", b""),
        ("utf-32-le", b"\xff\xfe\x00\x00"),
    ],
)
def test_list_file_encodings_and_spaces(tmp_path, encoding, bom):
    names = ["img 1.jpg", " lead.jpg", "trail.jpg ", "é.jpg"]
    for name in names:
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="JPEG")
    text = "\r\n".join(["# comment", *names, "", "   ", "  # indented comment"]) + "\r\n"
    listing = tmp_path / "list.txt"
    listing.write_bytes(bom + text.encode(encoding))
    assert read_list(listing) == names
    samples = find_images(root=tmp_path, list_file=listing)
    assert [i for i, _ in samples] == names
    assert all(os.path.isfile(p) for _, p in samples)


def test_list_file_in_a_legacy_encoding_finds_the_files_by_their_bytes(tmp_path):
    name = b"caf\xe9.jpg"  # Latin-1 on disk and in the list
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
        f.write(b"x")
    (tmp_path / "list.txt").write_bytes(name + b"\n")
    [(id_, path)] = find_images(root=tmp_path, list_file=tmp_path / "list.txt")
    assert os.fsencode(id_) == name and os.path.isfile(path)


def test_list_file_that_is_no_text_is_refused_in_one_line(tmp_path):
    (tmp_path / "list.txt").write_bytes(b"\xff\xfe" + b"\x00\xd8")  # UTF-16 lone surrogate
    with pytest.raises(VggfeatError, match=r"--list .* is not valid utf-16-le text.*UTF-8"):
        read_list(tmp_path / "list.txt")
