"""The HDF5 feature store: round trip, plain-h5py layout, resume, mismatches, shards; integrity
under write faults and damage, fingerprints, merging refusals, streamed finalize."""

import errno
import json
import os
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from vggfeat.errors import OutputError, SettingsMismatch, StoreError
from vggfeat.files import GuardedFile, OutputLock
from vggfeat.store import (
    FeatureStore,
    Fingerprint,
    Row,
    StoreWriter,
    combine_stores,
    fingerprint_files,
    parts_dir,
)

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


# --- integrity: fingerprints, checksums, faults, resume (issue 12) ---------------------------

NAMES = [f"im{i}.png" for i in range(7)]


def _images(folder, names=NAMES, bad=()):
    """Small files whose bytes decide their 'descriptors' (see _row_of_file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes((b"bad " if n in bad else b"img ") + n.encode() * 3)
    return folder


def _row_of_file(id_, path):
    """A fake engine: a deterministic function of the file's bytes, failing on 'bad' files."""
    data = Path(path).read_bytes()
    if data.startswith(b"bad"):
        return Row(id_, ok=False, reason="cannot decode: truncated")
    rng = np.random.default_rng(zlib.crc32(data))
    vecs = {k: rng.random(8, dtype=np.float32) for k in KEYS}
    return Row(id_, ok=True, image_size=(len(data), 1), descriptors=vecs)


def _run(path, folder, names=NAMES, rows_per_part=2, log=None, **plan_args):
    """What extract_to_store does, with the fake engine; returns (plan, store)."""
    samples = [(n, str(folder / n)) for n in names]
    with StoreWriter(path, SETTINGS, {"vggfeat": "test"}, rows_per_part=rows_per_part,
                     log=log) as w:  # fmt: skip
        plan = w.plan(samples, fingerprint_files([p for _, p in samples]), **plan_args)
        for id_, p in plan.todo:
            w.add(_row_of_file(id_, p))
        return plan, w.finalize(order=names)


def _assert_same(got, want):
    assert got.ids == want.ids and list(got.status) == list(want.status)
    assert got.reasons == want.reasons
    for net, q in KEYS:
        np.testing.assert_array_equal(got.descriptors(net, q), want.descriptors(net, q))


def _count_writes(monkeypatch, fail_at=None):
    real = GuardedFile._write_at
    calls = [0]

    def write_at(self, data, offset):
        calls[0] += 1
        if calls[0] == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, offset)

    monkeypatch.setattr(GuardedFile, "_write_at", write_at)
    return calls


def _flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _chunk_offset(path, key, row=0):
    with h5py.File(path, "r") as f:
        return f[key].id.get_chunk_info_by_coord((row, 0)).byte_offset


def test_fault_on_any_write_then_resume_equals_a_clean_run(tmp_path, monkeypatch):
    folder = _images(tmp_path / "imgs", bad={"im3.png"})
    calls = _count_writes(monkeypatch)
    _, clean = _run(tmp_path / "clean.h5", folder)
    total = calls[0]  # writes of 4 parts and the final store
    # First write, inside parts (data, metadata at close, the last superblock write), the
    # first write of the final store and its last.
    for k in sorted({1, total // 5, total // 3, total // 2, total - 40, total - 1, total}):
        out = tmp_path / f"k{k}.h5"
        calls = _count_writes(monkeypatch, fail_at=k)
        with pytest.raises(OutputError, match="^no space left on device while writing"):
            _run(out, folder)
        monkeypatch.undo()
        assert not out.exists()
        for part in parts_dir(out).glob("part-*.h5"):
            assert not FeatureStore(part).verify()  # published parts are whole
        _, resumed = _run(out, folder)
        _assert_same(resumed, clean)
        assert not parts_dir(out).exists() and not list(tmp_path.glob(".*.tmp"))


def test_damaged_parts_are_removed_and_their_images_extracted_again(tmp_path):
    folder = _images(tmp_path / "imgs")
    _, clean = _run(tmp_path / "clean.h5", folder)
    out = tmp_path / "s.h5"
    samples = [(n, str(folder / n)) for n in NAMES]
    with StoreWriter(out, SETTINGS, rows_per_part=2) as w:  # a run killed after 3 parts
        w.plan(samples, fingerprint_files([p for _, p in samples]))
        for id_, p in samples[:6]:
            w.add(_row_of_file(id_, p))
    first, second, third = sorted(parts_dir(out).glob("part-*.h5"))
    _flip_byte(second, _chunk_offset(second, "descriptors/E/384") + 5)  # bit rot in a chunk
    third.write_bytes(third.read_bytes()[:1000])  # a truncated copy
    messages = []
    plan, resumed = _run(out, folder, log=messages.append)
    assert any(second.name in m and "rows 0-1" in m for m in messages)
    assert any(third.name in m and "truncated file" in m for m in messages)
    assert plan.new == NAMES[2:] and plan.kept == 2  # only the first part was trusted
    _assert_same(resumed, clean)


def test_damaged_store_rows_are_reported_and_extracted_again(tmp_path, monkeypatch):
    import vggfeat.store as store_module

    monkeypatch.setattr(store_module, "_CHUNK_BYTES", 2 * 8 * 4)  # 2 rows per chunk
    folder = _images(tmp_path / "imgs")
    _, clean = _run(tmp_path / "clean.h5", folder)
    _, store = _run(tmp_path / "s.h5", folder)
    _flip_byte(store.path, _chunk_offset(store.path, "descriptors/D/256", row=2) + 3)
    problems = FeatureStore(store.path).verify()
    assert [(p.key, p.rows) for p in problems] == [("descriptors/D/256", (2, 4))]
    assert "fletcher32" in problems[0].cause or "filter" in problems[0].cause
    with pytest.raises(StoreError, match=r"/descriptors/D/256 is damaged .*info --verify"):
        FeatureStore(store.path).descriptors("D", 256)
    plan, _ = _run(store.path, folder)  # nothing new: the store is not read, nor rewritten
    assert plan.todo == [] and FeatureStore(store.path).verify()
    messages = []
    plan, repaired = _run(store.path, folder, verify=True, log=messages.append)
    assert plan.repaired == ["im2.png", "im3.png"] and plan.kept == 5
    assert "2 damaged rows" in messages[0]
    _assert_same(repaired, clean)
    assert not repaired.verify()
    # A damaged row whose image is not among the run's inputs is dropped, and said so.
    _flip_byte(store.path, _chunk_offset(store.path, "descriptors/E/256", row=6) + 3)
    messages.clear()
    _, fewer = _run(store.path, folder, names=NAMES[:4], verify=True, log=messages.append)
    assert fewer.ids == NAMES[:6] and "1 of them are not among this run's inputs" in messages[0]


def test_damaged_per_image_data_is_refused_on_open(tmp_path):
    store = _write(tmp_path / "s.h5", [_row(0), _row(1)])
    raw = store.path.read_bytes()
    _flip_byte(store.path, raw.index(b"img1.jpg") + 3)
    with pytest.raises(StoreError, match=r"/ids is damaged \(checksum mismatch\)"):
        FeatureStore(store.path)


def test_checksums_are_in_the_format(tmp_path):
    store = _write(tmp_path / "s.h5", [_row(0), _row(1, ok=False)])
    with h5py.File(store.path, "r") as f:
        for key in ("descriptors/D/256", "status", "image_size", "file_size"):
            assert f[key].fletcher32 and "crc32" in f[key].attrs
        assert f["ids"].attrs["errors"] == "surrogateescape" and "crc32" in f["ids"].attrs
        assert (
            zlib.crc32(f["descriptors/E/384"][()].tobytes())
            == f["descriptors/E/384"].attrs["crc32"]
        )


def test_changed_image_is_extracted_again(tmp_path):
    folder = _images(tmp_path / "imgs")
    _run(tmp_path / "s.h5", folder)
    (folder / "im1.png").write_bytes(b"img another picture")
    plan, store = _run(tmp_path / "s.h5", folder)
    assert plan.changed == ["im1.png"] and plan.kept == 6
    _, fresh = _run(tmp_path / "fresh.h5", folder)
    _assert_same(store, fresh)
    row = store.rows(["im1.png"])[0]
    st = os.stat(folder / "im1.png")
    assert store.fingerprint(row) == Fingerprint(st.st_size, st.st_mtime_ns, "")
    assert store.sources[row] == str(folder / "im1.png")


def test_content_hash_sees_a_change_that_keeps_size_and_mtime(tmp_path):
    folder = _images(tmp_path / "imgs")
    samples = [(n, str(folder / n)) for n in NAMES]
    _run(tmp_path / "s.h5", folder)
    st = os.stat(folder / "im1.png")
    (folder / "im1.png").write_bytes(b"img " + b"X" * (st.st_size - 4))  # same size
    os.utime(folder / "im1.png", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert _run(tmp_path / "s.h5", folder)[0].changed == []  # size + mtime cannot see it
    hashed = fingerprint_files([p for _, p in samples], content_hash=True)
    with StoreWriter(tmp_path / "h.h5", SETTINGS) as w:
        w.plan(samples, hashed)
        for id_, p in samples:
            w.add(_row_of_file(id_, p))
        w.finalize()
    (folder / "im2.png").write_bytes(b"img " + b"Y" * (os.stat(folder / "im2.png").st_size - 4))
    with StoreWriter(tmp_path / "h.h5", SETTINGS) as w:
        plan = w.plan(samples, fingerprint_files([p for _, p in samples], content_hash=True))
    assert plan.changed == ["im2.png"]


def test_an_id_from_another_file_is_refused(tmp_path):
    cats = _images(tmp_path / "cats", names=["img000.jpg", "img001.jpg"])
    dogs = _images(tmp_path / "dogs", names=["img000.jpg", "img001.jpg", "img002.jpg"])
    (dogs / "img000.jpg").write_bytes(b"img a dog")
    (dogs / "img001.jpg").write_bytes(b"img another dog")
    _run(tmp_path / "s.h5", cats, names=["img000.jpg", "img001.jpg"])
    with pytest.raises(StoreError, match=r"2 ids in .*s.h5 come from other files .*--root"):
        _run(tmp_path / "s.h5", dogs, names=["img000.jpg", "img001.jpg", "img002.jpg"])
    assert len(FeatureStore(tmp_path / "s.h5")) == 2  # untouched
    # The same images moved elsewhere (same fingerprints) are not another file.
    moved = tmp_path / "moved"
    os.rename(cats, moved)
    plan, _ = _run(tmp_path / "s.h5", moved, names=["img000.jpg", "img001.jpg"])
    assert plan.kept == 2 and plan.todo == []


def test_failed_images_are_retried_unless_asked_not_to(tmp_path):
    folder = _images(tmp_path / "imgs", bad={"im2.png", "im5.png"})
    _, store = _run(tmp_path / "s.h5", folder)
    assert [i for i, _ in store.failed()] == ["im2.png", "im5.png"]
    plan, store = _run(tmp_path / "s.h5", folder, retry_failed=False)
    assert plan.todo == [] and len(store.failed()) == 2
    (folder / "im2.png").write_bytes(b"img fixed")  # the user fixes one file
    plan, store = _run(tmp_path / "s.h5", folder)
    assert plan.retried == ["im5.png"] and plan.changed == ["im2.png"]
    assert [i for i, _ in store.failed()] == ["im5.png"] and store.ids == NAMES


def test_version_1_store_opens_and_resumes(tmp_path):
    path = tmp_path / "v1.h5"
    rows = [_row(0), _row(1, ok=False)]
    with h5py.File(path, "w") as f:  # the version-1 layout, as vggfeat 0.1 wrote it
        f.attrs.update(format="vggfeat-store", format_version=1, created="2026-01-01",
                       settings=json.dumps(SETTINGS), versions="{}")  # fmt: skip
        f.create_dataset("ids", data=[r.id for r in rows], dtype=h5py.string_dtype())
        f.create_dataset("status", data=np.array([0, 1], np.int8))
        f.create_dataset("reason", data=[r.reason for r in rows], dtype=h5py.string_dtype())
        f.create_dataset("note", data=["", ""], dtype=h5py.string_dtype())
        f.create_dataset("image_size", data=np.array([[100, 200], [0, 0]], np.int32))
        for net, q in KEYS:
            f[f"descriptors/{net}/{q}"] = np.stack([rows[0].descriptors[(net, q)],
                                                    np.full(8, np.nan, np.float32)])  # fmt: skip
    old = FeatureStore(path)
    assert old.format_version == 1 and old.ids == ["img0.jpg", "img1.jpg"]
    assert not old.fingerprint(0).known and old.sources == ["", ""] and not old.verify()
    np.testing.assert_array_equal(old.descriptors("D", 256)[0], rows[0].descriptors[("D", 256)])
    w = StoreWriter(path, SETTINGS)
    plan = w.plan([("img0.jpg", "/x/img0.jpg"), ("img1.jpg", "/x/img1.jpg"), ("img2.jpg", "/x/2")])
    assert plan.kept == 1 and plan.unverifiable == 1 and plan.retried == ["img1.jpg"]
    w.add(_row(1))
    w.add(_row(2))
    new = w.finalize()
    assert new.format_version == 2 and new.ids == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert list(new.status) == [0, 0, 0] and not new.fingerprint(0).known


def test_non_utf8_file_names_round_trip(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")  # what os.walk gives for a Latin-1 name: 'caf\udce9.jpg'
    row = _row(0)
    row.id = name
    store = _write(tmp_path / "s.h5", [row, _row(1)])
    assert store.ids == [name, "img1.jpg"] and store.rows([name])[0] == 0
    with h5py.File(store.path, "r") as f:
        assert f["ids"][0] == b"caf\xe9.jpg"  # the file name's own bytes
    from vggfeat.store import printable

    assert printable(name) == "caf\\xe9.jpg"


def test_the_store_is_locked_while_a_writer_holds_it(tmp_path):
    w = StoreWriter(tmp_path / "s.h5", SETTINGS)
    with pytest.raises(OutputError, match=r"s.h5 is in use by another vggfeat process \(pid"):
        StoreWriter(tmp_path / "s.h5", SETTINGS)
    w.add(_row(0))
    w.finalize()  # releases
    with StoreWriter(tmp_path / "s.h5", SETTINGS) as again:
        assert again.done == {"img0.jpg"}
    with pytest.raises(SettingsMismatch):  # a refused writer does not keep the lock
        StoreWriter(tmp_path / "s.h5", {**SETTINGS, "flip": False})
    with OutputLock(tmp_path / "s.h5"):
        pass


def test_finalize_streams_in_bounded_memory(tmp_path, monkeypatch):
    import tracemalloc

    import vggfeat.store as store_module

    dim, n = 1024, 600  # 4 blocks of 2.4 MB
    settings = {**SETTINGS, "dim": dim}
    monkeypatch.setattr(store_module, "_CHUNK_BYTES", 64 * dim * 4)  # 64-row chunks: 256 KB
    with StoreWriter(tmp_path / "s.h5", settings, rows_per_part=200) as w:
        for i in range(n):
            vecs = {k: np.full(dim, i, np.float32) for k in KEYS}
            w.add(Row(f"img{i}.jpg", ok=True, descriptors=vecs))
        w.flush()  # 3 parts
        tracemalloc.start()
        store = w.finalize()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    block = n * dim * 4
    assert peak < block / 2, peak  # the whole-block combine held 2 blocks at once
    np.testing.assert_array_equal(store.descriptors("E", 384)[:, 0], np.arange(n))


# --- merging cannot destroy or hollow out a store ----------------------------------------------


def _shards(tmp_path):
    (tmp_path / "shards").mkdir()
    a = _write(tmp_path / "shards" / "a.h5", [_row(0), _row(1)])
    b = _write(tmp_path / "shards" / "b.h5", [_row(2)])
    return a.path, b.path


def test_merge_into_one_of_its_inputs(tmp_path):
    a, b = _shards(tmp_path)
    all_ = combine_stores(tmp_path / "all.h5", [a], virtual=True).path
    with pytest.raises(StoreError, match="also an input: a merged store would point into itself"):
        combine_stores(all_, [all_, b], virtual=True)
    assert FeatureStore(all_).ids == ["img0.jpg", "img1.jpg"]  # untouched
    with pytest.raises(StoreError, match="a shard that the input .*all.h5 points into"):
        combine_stores(a, [all_, b])  # would change all.h5 behind its back
    appended = combine_stores(all_, [all_, b])  # by copy: appends a shard
    assert appended.ids == ["img0.jpg", "img1.jpg", "img2.jpg"]
    with h5py.File(all_, "r") as f:
        assert not f["descriptors/D/256"].is_virtual
    np.testing.assert_array_equal(
        appended.descriptors("D", 384)[2], _row(2).descriptors[("D", 384)]
    )


def test_merged_store_without_its_shards_refuses_to_read(tmp_path):
    a, b = _shards(tmp_path)
    combine_stores(tmp_path / "all.h5", [a, b], virtual=True)
    (tmp_path / "away").mkdir()
    moved = tmp_path / "away" / "all.h5"
    os.rename(tmp_path / "all.h5", moved)
    with pytest.raises(StoreError, match=r"merged store whose shard .*shards/a.h5 is missing"):
        FeatureStore(moved)
    (tmp_path / "all.h5").symlink_to(moved)  # and a resume into it must not copy NaNs
    with pytest.raises(StoreError, match="is missing"):
        StoreWriter(tmp_path / "all.h5", SETTINGS)


def test_merge_refuses_pending_parts_and_ids_from_different_files(tmp_path):
    folder = _images(tmp_path / "x")
    _run(tmp_path / "a.h5", folder, names=NAMES[:3])
    (folder / "im2.png").write_bytes(b"img something else")
    _run(tmp_path / "b.h5", folder, names=NAMES[2:5])
    with pytest.raises(StoreError, match=r"1 ids are in two stores from different files .*im2.png"):
        combine_stores(tmp_path / "all.h5", [tmp_path / "a.h5", tmp_path / "b.h5"])
    _write(tmp_path / "c.h5", [_row(8)])
    w = StoreWriter(tmp_path / "c.h5", SETTINGS, rows_per_part=1)
    w.add(_row(9))
    w.close()  # a resume killed after one part
    with pytest.raises(StoreError, match=r"c.h5 has 1 parts from an interrupted run"):
        combine_stores(tmp_path / "all.h5", [tmp_path / "a.h5", tmp_path / "c.h5"])


def test_merge_writes_through_a_symlink_and_into_a_new_folder(tmp_path):
    a, b = _shards(tmp_path)
    merged = combine_stores(tmp_path / "new" / "deeper" / "all.h5", [a, b], virtual=True)
    np.testing.assert_array_equal(merged.descriptors("E", 256)[2], _row(2).descriptors[("E", 256)])
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "all.h5"
    _write(target, [_row(5)])
    link = tmp_path / "all.h5"
    link.symlink_to(target)
    combine_stores(link, [a, b], virtual=True)
    assert link.is_symlink() and FeatureStore(target).ids == ["img0.jpg", "img1.jpg", "img2.jpg"]
    np.testing.assert_array_equal(FeatureStore(link).descriptors("D", 256)[1],
                                  _row(1).descriptors[("D", 256)])  # fmt: skip


def test_fault_during_merge_copy_leaves_out_as_it_was_and_a_rerun_equals_a_clean_merge(
    tmp_path, monkeypatch
):
    a, b = _shards(tmp_path)
    clean = combine_stores(tmp_path / "clean.h5", [a, b])
    out = _write(tmp_path / "all.h5", [_row(7)])  # an older merge the new one replaces
    calls = _count_writes(monkeypatch)
    combine_stores(tmp_path / "probe.h5", [a, b])
    for k in (1, calls[0] // 2, calls[0]):
        _count_writes(monkeypatch, fail_at=k)
        with pytest.raises(OutputError, match="no space left on device while writing .*all.h5"):
            combine_stores(out.path, [a, b])
        monkeypatch.undo()
        assert FeatureStore(out.path).ids == ["img7.jpg"]  # untouched
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    _assert_same(combine_stores(out.path, [a, b]), clean)


def test_fault_at_close_then_resume_equals_a_clean_run(tmp_path, monkeypatch):
    folder = _images(tmp_path / "imgs")
    _, clean = _run(tmp_path / "clean.h5", folder)
    calls = [0]

    def sync(self):  # the 3rd file's fsync fails (EIO at close, as NFS reports it)
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(self._fd)

    monkeypatch.setattr(GuardedFile, "_sync", sync)
    with pytest.raises(OutputError, match="^input/output error while writing .*part-"):
        _run(tmp_path / "s.h5", folder)
    assert len(list(parts_dir(tmp_path / "s.h5").glob("part-*.h5"))) == 2
    monkeypatch.undo()
    _assert_same(_run(tmp_path / "s.h5", folder)[1], clean)


def test_a_symlinked_store_is_written_through_the_link(tmp_path):
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "s.h5"
    link = tmp_path / "s.h5"
    link.symlink_to(target)
    _write(link, [_row(0)])
    _write(link, [_row(1)])  # a resume through the link
    assert link.is_symlink() and FeatureStore(target).ids == ["img0.jpg", "img1.jpg"]
    assert not parts_dir(link).exists() and not parts_dir(target).exists()
