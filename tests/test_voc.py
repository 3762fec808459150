"""VOC index (annotations, image sets, action person boxes) and region entries in the store."""

import dataclasses

import numpy as np
import pytest
from _voc_data import write_voc
from PIL import Image

from vggfeat.datasets.samples import Sample
from vggfeat.datasets.voc import (
    VOC_ACTIONS,
    check_voc_root,
    read_action_set,
    read_annotation,
    read_image_set,
)
from vggfeat.errors import DatasetError
from vggfeat.extract import ExtractConfig
from vggfeat.images import Box
from vggfeat.pipeline import extract_to_store


def _config():
    return ExtractConfig(scales=(224,), device="cpu", workers=0, batch_size=4)


def test_annotation_and_image_sets(tmp_path):
    root = write_voc(tmp_path / "VOC2012", {"train": 4, "val": 2, "test": 1})
    ann = read_annotation(root / "Annotations" / "2012_train_001.xml")
    assert ann.size == (40, 56)
    assert [o.index for o in ann.objects] == [1, 2]
    assert ann.objects[1].name == "person" and ann.objects[1].box == Box(11, 5, 41, 36)
    assert ann.objects[1].actions["phoning"] == 1 and ann.objects[1].actions["jumping"] == 0
    assert read_image_set(root, "val") == ["2012_val_000", "2012_val_001"]
    with pytest.raises(DatasetError, match="test.*train"):
        read_image_set(root, "nosuch")


def test_action_set_one_sample_per_person_box_with_ten_labels(tmp_path):
    root = write_voc(tmp_path / "VOC2012", {"train": 12, "val": 2, "test": 2})
    s = read_action_set(root, "train")
    assert len(s) == 12 and s.ids[3] == "2012_train_003.jpg#2"
    assert s.image_ids[3] == "2012_train_003.jpg" and s.objects[3] == 2
    assert s.labels.classes == VOC_ACTIONS and s.labels.multilabel
    y = s.labels.y
    assert y[3, 3] == 1 and (np.delete(y[3], 3) == -1).all()  # reading only
    assert (y[10] == -1).all()  # 'other': negative for every action
    samples = s.region_samples()
    assert samples[3] == Sample("2012_train_003.jpg#2", str(root / "JPEGImages/2012_train_003.jpg"),
                                Box(13, 5, 43, 36))  # fmt: skip
    test = read_action_set(root, "test")
    assert test.labels.unknown is not None and test.labels.unknown.all()


def test_wrong_root_says_what_it_expected(tmp_path):
    root = write_voc(tmp_path / "VOCdevkit" / "VOC2012", {"train": 2, "val": 1, "test": 1})
    with pytest.raises(DatasetError, match=r"no JPEGImages/ under .*it holds .*VOC2012"):
        check_voc_root(tmp_path / "VOCdevkit", ("JPEGImages", "ImageSets/Main"))
    (root / "ImageSets/Action").rename(root / "ImageSets/Other")
    with pytest.raises(DatasetError, match=r"no ImageSets/Action/ under"):
        read_action_set(root, "train")


def test_region_entries_resume_record_box_and_fail_bad_boxes(tmp_path, tiny_weights):
    root = write_voc(tmp_path / "VOC2012", {"train": 3, "val": 1, "test": 1})
    image = str(root / "JPEGImages" / "2012_train_000.jpg")
    samples = [
        Sample("2012_train_000.jpg", image),
        Sample("2012_train_000.jpg#1", image, Box(2, 2, 20, 20)),
        Sample("2012_train_000.jpg#2", image, Box(30, 20, 29, 38)),  # zero area
        Sample("2012_train_000.jpg#3", image, Box(100, 100, 120, 130)),  # outside 56x40
    ]
    out = tmp_path / "f.h5"
    w = [tiny_weights("D")]
    first = extract_to_store(samples, out, w, _config(), progress=False)
    store = first.store
    assert list(store.ok) == [True, True, False, False]
    reasons = dict(store.failed())
    assert "degenerate box" in reasons["2012_train_000.jpg#2"]
    assert "outside" in reasons["2012_train_000.jpg#3"]
    assert np.allclose(store.boxes[1], [2, 2, 20, 20]) and np.isnan(store.boxes[0]).all()
    # the action descriptor: the image's and the box's, each L2-normalised, stacked, normalised
    from vggfeat.recipes import RECIPES, Variant, _matrix

    region, whole = "2012_train_000.jpg#1", "2012_train_000.jpg"
    x = _matrix([store], [region], Variant(("D",), True), RECIPES["voc2012-action"], (224,),
                {region: whole})  # fmt: skip
    a, b = (store.descriptors("D", 224, [i])[0].astype(np.float64) for i in (whole, region))
    reference = np.concatenate([a / np.linalg.norm(a), b / np.linalg.norm(b)]) / np.sqrt(2)
    np.testing.assert_allclose(x[0], reference, rtol=1e-5, atol=1e-7)
    # a rerun keeps the good rows and retries only the failed ones
    again = extract_to_store(samples, out, w, _config(), progress=False)
    assert again.skipped == 2 and again.summary.done == 2
    # a changed box is extracted again, and its row records the new box
    moved = samples[:1] + [Sample("2012_train_000.jpg#1", image, Box(3, 2, 20, 20))]
    third = extract_to_store(moved, out, w, _config(), progress=False, retry_failed=False)
    assert third.summary.done == 1
    assert np.allclose(third.store.boxes[third.store.find(["2012_train_000.jpg#1"])[0]],
                       [3, 2, 20, 20])  # fmt: skip


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_box_descriptor_equals_crop_then_dense_reference(tmp_path, tiny_weights, decode):
    """The region row equals the whole-image row of the box cut out independently (PIL crop
    of the decoded pixels, saved losslessly): crop first, then rescale, dense, flip. Device
    decode cannot crop, so a run with boxes decodes on the host."""
    root = write_voc(tmp_path / "VOC2012", {"train": 1, "val": 1, "test": 1})
    image = root / "JPEGImages" / "2012_train_000.jpg"
    box = Box(5, 3, 44, 31)  # VOC: 1-based inclusive pixels
    crop = tmp_path / "crop.png"
    Image.open(image).convert("RGB").crop((4, 2, 44, 31)).save(crop)  # 0-based half-open
    samples = [Sample("region", str(image), box), Sample("reference", str(crop))]
    config = dataclasses.replace(_config(), decode=decode)
    store = extract_to_store(samples, tmp_path / "f.h5", [tiny_weights("D")], config,
                             progress=False).store  # fmt: skip
    a, b = store.descriptors("D", 224, ["region", "reference"])
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_split_files_round_trip(tmp_path):
    from vggfeat.recipes import Split, read_splits, write_splits

    splits = [Split("seed0", ("a/1.jpg", "b/2 x.jpg"), ("c/3.jpg",)),
              Split("submission", ("2012_000001",), ("2012_000002", "2012_000003"), False)]  # fmt: skip
    paths = write_splits(tmp_path, splits)
    assert sorted(p.name for p in paths) == [
        "test_seed0.txt", "test_submission.txt", "train_seed0.txt", "train_submission.txt",
    ]  # fmt: skip
    assert (tmp_path / "train_seed0.txt").read_text() == "a/1.jpg\nb/2 x.jpg\n"
    empty = [Split(s.name, (), (), s.labelled) for s in splits]
    assert read_splits(tmp_path, empty) == splits
    (tmp_path / "test_submission.txt").unlink()
    with pytest.raises(DatasetError, match="lacks test_submission.txt"):
        read_splits(tmp_path, empty)
