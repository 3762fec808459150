"""Indexing image folders and lists into (id, path) samples."""

import os

import pytest
from conftest import write_images

from vggfeat.datasets import find_images
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
