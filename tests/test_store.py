"""The HDF5 feature store: round trip, plain-h5py layout, resume, mismatches, shards."""

import json

import h5py
import numpy as np
import pytest

from vggfeat.errors import SettingsMismatch, StoreError
from vggfeat.store import FeatureStore, Row, StoreWriter, combine_stores, parts_dir

SETTINGS = {"nets": ["D", "E"], "scales": [256, 384], "dim": 8, "flip": True, "layer": "fc7",
            "precision": "fp32", "weights": {"D": {"label": "random (seed 0)"}}}  # fmt: skip
KEYS = [("D", 256), ("D", 384), ("E", 256), ("E", 384)]


def _row(i, ok=True):
    rng = np.random.default_rng(i)
    if not ok:
        return Row(f"img{i}.jpg", ok=False, reason="cannot decode: truncated")
    vecs = {k: rng.random(8, dtype=np.float32) for k in KEYS}
    return Row(f"img{i}.jpg", ok=True, note="", image_size=(100 + i, 200), descriptors=vecs)


def _write(path, rows, order=None, **kwargs):
    w = StoreWriter(path, SETTINGS, {"vggfeat": "test"}, **kwargs)
    for r in rows:
        w.add(r)
    return w.finalize(order=order)


def test_round_trip_and_plain_h5py_layout(tmp_path):
    rows = [_row(0), _row(1, ok=False), _row(2)]
    store = _write(tmp_path / "s.h5", rows)
    assert store.ids == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert store.failed() == [("img1.jpg", "cannot decode: truncated")]
    d = store.descriptors("E", 384)
    assert d.shape == (3, 8) and d.dtype == np.float32
    np.testing.assert_array_equal(d[2], rows[2].descriptors[("E", 384)])
    assert np.isnan(d[1]).all()
    np.testing.assert_array_equal(store.descriptors("D", 256, ids=["img2", "img0.jpg"]),
                                  np.stack([rows[2].descriptors[("D", 256)],
                                            rows[0].descriptors[("D", 256)]]))  # fmt: skip
    with h5py.File(tmp_path / "s.h5", "r") as f:  # readable without vggfeat
        assert f.attrs["format"] == "vggfeat-store" and f.attrs["format_version"] == 2
        assert json.loads(f.attrs["settings"])["scales"] == [256, 384]
        assert f["ids"][0].decode() == "img0.jpg" and list(f["status"][()]) == [0, 1, 0]
        assert f["descriptors/D/384"].shape == (3, 8)
        assert tuple(f["image_size"][2]) == (102, 200)
    assert not parts_dir(tmp_path / "s.h5").exists()


def test_resume_appends_in_input_order_and_ignores_half_written_parts(tmp_path):
    path = tmp_path / "s.h5"
    order = [f"img{i}.jpg" for i in range(6)]
    w = StoreWriter(path, SETTINGS, rows_per_part=2)
    for i in (0, 1, 2):
        w.add(_row(i))  # one part of 2 rows written, row 2 buffered and "lost in a kill"
    w.close()  # the kill: its lock goes with it
    (parts_dir(path) / ".part-x.h5.tmp").write_bytes(b"half-written")
    (tmp_path / ".s.h5.1234abcd.tmp").write_bytes(b"half-written store")
    assert len(list(parts_dir(path).glob("part-*.h5"))) == 1
    w2 = StoreWriter(path, SETTINGS, rows_per_part=2)
    assert w2.done == {"img0.jpg", "img1.jpg"}
    for i in (2, 3, 4, 5):
        w2.add(_row(i))
    store = w2.finalize(order=order)
    reference = _write(tmp_path / "ref.h5", [_row(i) for i in range(6)], order=order)
    assert store.ids == reference.ids == order
    for net, q in KEYS:
        np.testing.assert_array_equal(store.descriptors(net, q), reference.descriptors(net, q))
    assert not list(tmp_path.glob(".*.tmp")) and not parts_dir(path).exists()


def test_settings_mismatch_names_the_key(tmp_path):
    _write(tmp_path / "s.h5", [_row(0)])
    with pytest.raises(SettingsMismatch, match=r"flip: store has True, this run False"):
        StoreWriter(tmp_path / "s.h5", {**SETTINGS, "flip": False})
    with pytest.raises(SettingsMismatch, match=r"weights.D.label"):
        StoreWriter(tmp_path / "s.h5", {**SETTINGS, "weights": {"D": {"label": "imagenet"}}})


def test_unknown_ids_and_bad_files(tmp_path):
    store = _write(tmp_path / "s.h5", [_row(0)])
    with pytest.raises(StoreError, match="1 of 2 ids are not in .*nope"):
        store.descriptors("D", 256, ids=["img0.jpg", "nope"])
    with pytest.raises(StoreError, match="no /descriptors/D/512"):
        store.descriptors("D", 512)
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="Cannot read"):
        FeatureStore(tmp_path / "x.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a vggfeat feature store"):
        FeatureStore(tmp_path / "other.h5")


@pytest.mark.parametrize("virtual", [True, False])
def test_shards_combine(tmp_path, virtual):
    (tmp_path / "shards").mkdir()
    a = _write(tmp_path / "shards" / "rank0.h5", [_row(0), _row(2)])
    b = _write(tmp_path / "shards" / "rank1.h5", [_row(1), _row(3, ok=False), _row(2)])
    out = combine_stores(tmp_path / "all.h5", [a.path, b.path], virtual=virtual)
    assert out.ids == ["img0.jpg", "img2.jpg", "img1.jpg", "img3.jpg"]
    expected = np.stack([_row(i).descriptors[("E", 256)] for i in (0, 2, 1)])
    np.testing.assert_array_equal(out.descriptors("E", 256)[:3], expected)
    assert np.isnan(out.descriptors("E", 256)[3]).all()
    with h5py.File(out.path, "r") as f:
        assert f["descriptors/E/256"].is_virtual == virtual
        if virtual:  # no descriptor copied: rows map into the shards, by relative path
            files = {src.file_name for src in f["descriptors/E/256"].virtual_sources()}
            assert files == {"shards/rank0.h5", "shards/rank1.h5"}
    if virtual:  # the set moves as a whole
        moved = tmp_path / "moved"
        moved.mkdir()
        (tmp_path / "all.h5").rename(moved / "all.h5")
        (tmp_path / "shards").rename(moved / "shards")
        again = FeatureStore(moved / "all.h5").descriptors("E", 256)[:3]
        np.testing.assert_array_equal(again, expected)


def test_combine_refuses_different_settings(tmp_path):
    a = _write(tmp_path / "a.h5", [_row(0)])
    w = StoreWriter(tmp_path / "b.h5", {**SETTINGS, "precision": "bf16"})
    w.add(_row(1))
    b = w.finalize()
    with pytest.raises(SettingsMismatch, match="precision"):
        combine_stores(tmp_path / "c.h5", [a.path, b.path])


def test_empty_store(tmp_path):
    store = StoreWriter(tmp_path / "e.h5", SETTINGS).finalize()
    assert len(store) == 0 and store.descriptors("D", 256).shape == (0, 8)
