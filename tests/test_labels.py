"""Label readers (CSV/TSV, VOC ImageSets/Main, class folders), their refusals, and splits."""

from __future__ import annotations

import numpy as np
import pytest

from vggfeat.labels import (
    CaltechSplit,
    Labels,
    LabelsError,
    caltech_split,
    parse_caltech_split,
    read_class_folders,
    read_id_list,
    read_labels,
    read_labels_table,
    read_voc,
    resolve_split,
)


def write(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- CSV / TSV


def test_multiclass_csv_without_header(tmp_path):
    labels = read_labels(write(tmp_path / "l.csv", "a.jpg,dog\nb.jpg, cat \n\n# note\nc.jpg,dog\n"))
    assert labels.ids == ("a.jpg", "b.jpg", "c.jpg") and labels.classes == ("cat", "dog")
    assert not labels.multilabel and labels.y.tolist() == [1, 0, 1] and labels.splits == {}
    assert labels.counts()["dog"] == {"positive": 2, "negative": 1, "difficult": 0}


def test_multiclass_tsv_with_header_and_split_column(tmp_path):
    text = "split\tid\tlabel\r\ntrain\ta\tdog\r\ntest\tb\tcat\r\ntrain\tc\tcat\r\n"
    labels = read_labels_table(write(tmp_path / "l.tsv", text))
    assert labels.ids == ("a", "b", "c") and labels.y.tolist() == [1, 0, 0]
    assert labels.splits == {"train": ("a", "c"), "test": ("b",)}


def test_multilabel_csv_missing_pairs_are_negative(tmp_path):
    text = "id,class,label,split\n1,cat,1,trainval\n1,dog,0,trainval\n2,dog,1,test\n3,cat,-1,test\n"
    labels = read_labels(write(tmp_path / "l.csv", text))
    assert labels.multilabel and labels.classes == ("cat", "dog")
    np.testing.assert_array_equal(labels.y, [[1, 0], [-1, 1], [-1, -1]])
    assert labels.y.dtype == np.int8
    assert labels.splits == {"trainval": ("1",), "test": ("2", "3")}
    assert labels.counts()["dog"] == {"positive": 1, "negative": 1, "difficult": 1}
    headerless = read_labels(write(tmp_path / "h.csv", "1\tcat\t+1\n2\tcat\t-1\n"))
    assert headerless.multilabel and headerless.y.ravel().tolist() == [1, -1]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"l\.csv is empty"),
        ("# only a comment\n\n", "is empty"),
        ("id,label\n", "has a header but no label rows"),
        ("a,dog\nb,cat,x\n", r"line 2: 3 fields, expected 2 \(id,label\)"),
        ("id,class,label\n1,cat,1\n1,dog\n", r"line 3: 2 fields, expected 3"),
        ("id,class,label\n1,cat,1\n2,cat,yes\n", r"line 3: unknown label 'yes'; use 1 \(present\)"),
        ("id,class,label\n1,cat,1\n1,cat,-1\n", r"line 3: duplicate row for image 1, class cat \(first on line 2\)"),
        ("a,dog\nb,cat\na,cat\n", r"line 3: duplicate id a \(first on line 1\)"),
        ("id,label,colour\na,dog,red\n", "unknown or repeated: colour"),
        ("id,class,split\na,dog,train\n", "no 'label' column"),
        ("a,b,c,d,e\n", "5 fields; without a header use 2"),
        ("id,label,split\na,dog,train\na2,dog,test\n,cat,test\n", "line 4: empty image id"),
        ("id,class,label,split\n1,cat,1,train\n1,dog,1,test\n", r"line 3: image 1 is in split 'test' here but 'train'"),
        ("a,\n", "line 1: empty label for a"),
    ],
)  # fmt: skip
def test_bad_tables_give_one_line_errors(tmp_path, text, match):
    with pytest.raises(LabelsError, match=match) as err:
        read_labels(write(tmp_path / "l.csv", text))
    assert "\n" not in str(err.value)


def test_labels_checks_its_own_shape():
    with pytest.raises(LabelsError, match="expected"):
        Labels(("a", "b"), ("x",), np.zeros(3, np.int64), False)
    with pytest.raises(LabelsError, match="repeat image ids"):
        Labels(("a", "a"), ("x",), np.zeros(2, np.int64), False)


# ----------------------------------------------------------------------------- VOC


@pytest.fixture
def voc(tmp_path):
    """A fake VOC2007/ImageSets/Main with 2 classes and train/val/trainval/test files."""
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    labels = {
        "cat": {"000001": 1, "000002": -1, "000003": 0, "000004": -1, "000005": 1},
        "dog": {"000001": -1, "000002": 1, "000003": 1, "000004": 0, "000005": -1},
    }
    splits = {"train": ["000001", "000002"], "val": ["000003"], "test": ["000004", "000005"]}
    splits["trainval"] = splits["train"] + splits["val"]
    for cls, values in labels.items():
        for split, ids in splits.items():
            # VOC pads positive labels with an extra space and uses CRLF line ends.
            text = "".join(f"{i} {values[i]:2d}\r\n" for i in ids)
            (main / f"{cls}_{split}.txt").write_text(text)
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return main


def test_voc_reader(voc):
    labels = read_voc(voc)
    assert labels.multilabel and labels.classes == ("cat", "dog")
    assert labels.splits["trainval"] == ("000001", "000002", "000003")
    assert labels.splits["test"] == ("000004", "000005")
    row = {i: labels.y[k].tolist() for k, i in enumerate(labels.ids)}
    assert row["000003"] == [0, 1] and row["000004"] == [-1, 0] and row["000005"] == [1, -1]
    # The VOC root and the Main folder read the same; read_labels recognises both.
    root = read_labels(voc.parent.parent)
    assert root.ids == labels.ids and np.array_equal(root.y, labels.y)
    assert read_labels(voc).classes == ("cat", "dog")


def test_voc_reader_refusals(voc, tmp_path):
    (voc / "cat_val.txt").write_text("000003 1\n")
    with pytest.raises(LabelsError, match=r"cat_val\.txt line 1: image 000003 is 1 for cat here but 0 in cat_trainval\.txt"):  # fmt: skip
        read_voc(voc)
    (voc / "cat_val.txt").write_text("000003 0 extra\n")
    with pytest.raises(LabelsError, match=r"line 1: expected '<id> <label>'"):
        read_voc(voc)
    (voc / "cat_val.txt").write_text("000003 2\n")
    with pytest.raises(LabelsError, match="unknown label '2'"):
        read_voc(voc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelsError, match="has no VOC"):
        read_voc(tmp_path / "empty")


# ----------------------------------------------------------------------------- class folders


@pytest.fixture
def caltech(tmp_path):
    """Class folders: 3 classes of 6, 8 and 5 images, an empty class and some non-images."""
    root = tmp_path / "101_ObjectCategories"
    for cls, n in {"Faces": 6, "ant": 8, "yin_yang": 5}.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"image_{i + 1:04d}.jpg").write_bytes(b"")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / "image_0100.JPG").write_bytes(b"")
    (root / "empty_class").mkdir()
    (root / "stray.jpg").write_bytes(b"")  # not in a class folder
    return root


def test_class_folder_reader(caltech):
    labels = read_labels(caltech)
    assert not labels.multilabel and labels.classes == ("Faces", "ant", "yin_yang")
    assert labels.ids[0] == "Faces/image_0001.jpg" and "ant/image_0100.JPG" in labels.ids
    assert not any(i.endswith(".txt") or "/" not in i for i in labels.ids)
    assert np.bincount(labels.y).tolist() == [6, 9, 5]
    assert labels.ids[labels.y.tolist().index(2)].startswith("yin_yang/")
    assert any("empty_class" in n for n in labels.notes)


def test_class_folder_reader_tolerates_missing_classes(caltech, tmp_path):
    labels = read_class_folders(caltech, classes=["accordion", "ant", "Faces"])
    assert labels.classes == ("Faces", "ant")
    assert labels.notes == (f"class 'accordion' has no folder in {caltech}; skipped",)
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(LabelsError, match="has no class folders with images"):
        read_class_folders(tmp_path / "none")
    with pytest.raises(LabelsError, match="do not exist"):
        read_labels(tmp_path / "nowhere")


def test_class_folder_ids_match_the_extractor(caltech):
    from vggfeat.datasets.folder import find_images

    extracted = {id_ for id_, _ in find_images([caltech], root=caltech)}
    assert set(read_class_folders(caltech).ids) <= extracted


# ----------------------------------------------------------------------------- splits


def test_caltech_split_protocol(caltech):
    labels = read_class_folders(caltech)
    train, test = caltech_split(labels, n_train=3, n_test=2, seed=0)
    assert len(train) == 9 and len(test) == 6 and not set(train) & set(test)
    cls_of = dict(zip(labels.ids, labels.y.tolist()))
    assert np.bincount([cls_of[i] for i in train]).tolist() == [3, 3, 3]
    assert caltech_split(labels, 3, 2, seed=0) == (train, test)  # deterministic
    assert caltech_split(labels, 3, 2, seed=1) != (train, test)
    # The draw depends on the ids, not the order they were read in.
    order = np.random.default_rng(5).permutation(len(labels))
    shuffled = Labels(tuple(labels.ids[i] for i in order), labels.classes, labels.y[order], False)
    assert caltech_split(shuffled, 3, 2, seed=0) == (train, test)
    train_all, test_all = caltech_split(labels, n_train=3, n_test=None)
    assert len(train_all) + len(test_all) == len(labels)
    with pytest.raises(LabelsError, match=r"Class 'yin_yang' has 5 images, fewer than the 6"):
        caltech_split(labels, n_train=6)


def test_parse_caltech_split():
    assert parse_caltech_split("caltech:30:50:2") == CaltechSplit(30, 50, 2)
    assert parse_caltech_split("caltech:60:all") == CaltechSplit(60, None, 0)
    assert str(CaltechSplit(60, None, 1)) == "caltech:60:all:1"
    for bad in ["caltech:30", "caltech:x:50:0", "caltech:30:50:0:1", "caltech:0:50:0"]:
        with pytest.raises(LabelsError, match="caltech:N_TRAIN:N_TEST:SEED|must be >= 1"):
            parse_caltech_split(bad)


def test_resolve_split(tmp_path, voc, caltech):
    labels = read_voc(voc)
    assert resolve_split(labels, "trainval") == ["000001", "000002", "000003"]
    ids_file = write(tmp_path / "ids.txt", "# held out\n000005\r\n000002\n\n")
    assert resolve_split(labels, str(ids_file)) == ["000005", "000002"]
    with pytest.raises(LabelsError, match=r"Unknown split 'tset'.*\(splits: test, train, trainval, val\)"):  # fmt: skip
        resolve_split(labels, "tset")
    write(ids_file, "000005\n999999\n")
    with pytest.raises(LabelsError, match=r"1 of 2 train split .*ids\.txt ids have no labels .*\(e\.g\. 999999\)"):  # fmt: skip
        resolve_split(labels, str(ids_file))
    write(ids_file, "# nothing\n")
    with pytest.raises(LabelsError, match="The test split .* has no images"):
        resolve_split(labels, str(ids_file), part="test")
    write(ids_file, "a\nb\na\n")
    with pytest.raises(LabelsError, match=r"repeats 1 ids \(e\.g\. a\)"):
        read_id_list(ids_file)
    with pytest.raises(LabelsError, match="multi-class"):
        resolve_split(labels, "caltech:1:1:0")

    folders = read_class_folders(caltech)
    train = resolve_split(folders, "caltech:3:2:7", part="train")
    test = resolve_split(folders, "caltech:3:2:7", part="test")
    assert (train, test) == caltech_split(folders, 3, 2, 7)


def test_select(voc):
    labels = read_voc(voc)
    sub = labels.select(["000005", "000003"])
    assert sub.ids == ("000005", "000003") and sub.y.tolist() == [[1, -1], [0, 1]]
    with pytest.raises(LabelsError, match=r"1 of 2 test ids have no labels .*\(e\.g\. 123\)"):
        labels.select(["000005", "123"], role="test")


# ----------------------------------------------------------------------------- issue 11


def test_id_lists_keep_whole_lines(tmp_path):
    """Regression: 'x/photo - Copy.png' was cut at the first space and read as 'x/photo'."""
    path = write(tmp_path / "ids.txt", "x/photo - Copy.png\r\ngolden retriever/img 0.png\n"
                 "# a comment\n   \nlast id")  # fmt: skip
    assert read_id_list(path) == ["x/photo - Copy.png", "golden retriever/img 0.png", "last id"]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(LabelsError, match="is not UTF-8"):
        read_id_list(tmp_path / "latin1.txt")


def _draw(labels, n_train=3, n_test=2, seed=0):
    train, test = caltech_split(labels, n_train, n_test, seed)
    cls_of = dict(zip(labels.ids, (labels.classes[k] for k in labels.y)))
    return {c: ([i for i in train if cls_of[i] == c], [i for i in test if cls_of[i] == c])
            for c in labels.classes}  # fmt: skip


def test_caltech_draw_of_a_class_depends_only_on_its_own_images(caltech):
    """Regression: one shared RNG made each class's draw depend on every earlier class."""
    labels = read_class_folders(caltech)
    full = _draw(labels)
    # Without the first class, or with one image less in another class, the rest is unchanged.
    cases = [(labels.y != 0, None),
             (np.array([i != "ant/image_0003.jpg" for i in labels.ids]), "ant")]  # fmt: skip
    for keep, changed in cases:
        rows = np.flatnonzero(keep)
        classes = sorted({labels.classes[k] for k in labels.y[rows]})
        y = np.array([classes.index(labels.classes[k]) for k in labels.y[rows]])
        sub = _draw(Labels(tuple(labels.ids[i] for i in rows), tuple(classes), y, False))
        assert len(sub) == len(classes)
        for cls in sub:
            if cls != changed:
                assert sub[cls] == full[cls]
    # Another N_TEST of the same draw keeps the training part; the test parts nest.
    for n_test in (1, None):
        other = _draw(labels, n_test=n_test)
        for cls in full:
            assert other[cls][0] == full[cls][0]
            assert set(other[cls][1]) <= set(full[cls][1]) or set(full[cls][1]) <= set(
                other[cls][1])  # fmt: skip
    # Seeds give different draws (and over many seeds, every image trains sometimes).
    seen = {i for seed in range(20) for tr, _ in _draw(labels, seed=seed).values() for i in tr}
    assert seen == set(labels.ids)


def test_voc_class_files_of_a_split_must_agree(voc):
    """Regression: a truncated class file turned the unlisted pairs into negatives."""
    lines = (voc / "dog_trainval.txt").read_text().splitlines(keepends=True)
    (voc / "dog_trainval.txt").write_text("".join(lines[:1]))
    with pytest.raises(LabelsError, match=r"dog_trainval\.txt lists 1 images but the 'trainval' "
                       r"class files together list 3: 2 are missing from it \(e\.g\. 000002, "
                       r"000003\)"):  # fmt: skip
        read_voc(voc)


def test_missing_voc_class_file_means_no_labels_not_negatives(voc):
    (voc / "dog_test.txt").unlink()
    labels = read_voc(voc)
    test = labels.select(list(labels.splits["test"]), role="test")
    assert test.y[:, 1].tolist() == [0, 0]  # unknown, not -1 (absent)
    assert test.counts()["dog"] == {"positive": 0, "negative": 0, "difficult": 0}
    test.check_labelled(["cat"], role="test")  # cat is labelled
    with pytest.raises(LabelsError, match=r"No labels for class dog for 2 of 2 test images"):
        test.check_labelled(role="test")
    labels.select(list(labels.splits["trainval"])).check_labelled()  # complete there


def test_stray_text_file_does_not_make_class_folders_voc(caltech):
    """Regression: a train_ids.txt beside the class folders switched the reader to VOC."""
    (caltech / "train_ids.txt").write_text("Faces/image_0001.jpg\n")
    labels = read_labels(caltech)
    assert not labels.multilabel and labels.classes == ("Faces", "ant", "yin_yang")
    assert any("ignored train_ids.txt" in note for note in labels.notes)


@pytest.mark.parametrize("header", ["filename,label", "image,label", "label,path"])
def test_header_with_an_id_alias_is_a_header(tmp_path, header):
    """Regression: a 'filename,label' header was read as an image called 'filename'."""
    rows = ["a.jpg,dog", "b.jpg,cat"] if header != "label,path" else ["dog,a.jpg", "cat,b.jpg"]
    labels = read_labels_table(write(tmp_path / "l.csv", "\n".join([header, *rows]) + "\n"))
    assert labels.ids == ("a.jpg", "b.jpg") and labels.classes == ("cat", "dog")
    with pytest.raises(LabelsError, match="header has no id column"):
        read_labels_table(write(tmp_path / "m.csv", "label,class,split\ndog,x,y\n"))
