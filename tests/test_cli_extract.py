"""`vggfeat extract` / `info` / `merge` through CliRunner and as subprocesses, including real kills."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_bad_images, write_images

from vggfeat.cli import cli
from vggfeat.store import FeatureStore, parts_dir

TINY = ["--weights", "random", "--width", "0.0625", "--scales", "224,256", "--workers", "0", "-q"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_extract_info_and_exit_status(images, tmp_path):
    out = tmp_path / "s.h5"
    result = _invoke("extract", *TINY, "--net", "D,E", "--out", out, images[0].parent)
    assert result.exit_code == 0, result.output
    assert "7 images extracted" in result.output and "0 failed" in result.output
    store = FeatureStore(out)
    assert store.ids == sorted(p.name for p in images)
    assert store.descriptors("E", 256).shape == (7, 256)
    assert store.settings["weights"]["D"]["label"].startswith("random")

    info = _invoke("info", out)
    assert "nets: D, E" in info.output and "random (seed 0)" in info.output
    assert "scales Q: 224, 256" in info.output and "torch" in info.output
    data = json.loads(_invoke("info", "--json", out).output)
    assert data["images"] == 7 and data["settings"]["flip"] is True


def test_bad_images_are_recorded_and_reported(images, tmp_path):
    corpus = write_bad_images(images[0].parent)
    out = tmp_path / "s.h5"
    result = _invoke("extract", *TINY, "--out", out, images[0].parent)
    assert result.exit_code == 3
    assert f"{len(corpus)} failed" in result.output
    store = FeatureStore(out)
    assert {i for i, _ in store.failed()} == set(corpus)
    assert int(store.ok.sum()) == len(images)
    info = _invoke("info", out).output
    assert all(name in info for name in corpus) and "failed (5)" in info
    again = _invoke("extract", *TINY, "--out", out, images[0].parent)  # resume: nothing to do
    assert again.exit_code == 3 and "0 images extracted" in again.output


def test_root_list_and_resume_adds_only_missing(images, tmp_path):
    root = images[0].parent
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(p.name for p in images[:3]) + "\n# comment\n")
    out = tmp_path / "s.h5"
    assert _invoke("extract", *TINY, "--root", root, "--list", listing, "--out", out).exit_code == 0
    assert FeatureStore(out).ids == [p.name for p in images[:3]]
    result = _invoke("extract", *TINY, "--root", root, "--out", out, root)
    assert "4 images extracted" in result.output and "3 already in store" in result.output
    assert FeatureStore(out).ids == [p.name for p in images[:3]] + [p.name for p in images[3:]]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scales", "200"], "Q=200 is too small"),
        (["--net", "F"], "Unknown net 'F'"),
        (["--weights", "nope.pth"], "does not exist"),
        (["--scales", "2x"], "not a comma-separated list"),
    ],
)
def test_user_errors_are_one_line(images, tmp_path, args, message):
    base = ["extract", "--width", "0.0625", "--out", str(tmp_path / "s.h5"), str(images[0])]
    if "--weights" not in args:
        base += ["--weights", "random"]
    _one_line_error(CliRunner().invoke(cli, base + args), message)


def test_settings_mismatch_is_refused(images, tmp_path):
    out = tmp_path / "s.h5"
    _invoke("extract", *TINY, "--out", out, images[0])
    result = CliRunner().invoke(
        cli, ["extract", *TINY, "--no-flip", "--out", str(out), str(images[1])]
    )
    assert result.exit_code == 1 and "flip: store has True, this run False" in result.output


def test_merge_shards(images, tmp_path):
    for k, chunk in enumerate((images[:4], images[4:])):
        _invoke(
            "extract", *TINY, "--root", images[0].parent, "--out", tmp_path / f"shard{k}.h5", *chunk
        )
    result = _invoke("merge", tmp_path / "all.h5", tmp_path / "shard0.h5", tmp_path / "shard1.h5")
    assert "7 images from 2 shards" in result.output
    merged = FeatureStore(tmp_path / "all.h5")
    whole = tmp_path / "whole.h5"
    _invoke("extract", *TINY, "--root", images[0].parent, "--out", whole, *images)
    assert merged.ids == FeatureStore(whole).ids
    np.testing.assert_allclose(merged.descriptors("D", 256), FeatureStore(whole).descriptors("D", 256),
                               rtol=1e-5, atol=1e-7)  # fmt: skip


# --- subprocesses and real kills --------------------------------------------------------------

KILL_ARGS = [*TINY, "--batch-size", "1", "--checkpoint-every", "2", "--net", "D,E"]


def _command(folder, out):
    return [sys.executable, "-m", "vggfeat", "extract", *KILL_ARGS, "--out", str(out), str(folder)]


def _corpus(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(224, 300)), int(rng.integers(224, 340))) for _ in range(14)]
    folder = tmp_path / "imgs"
    write_images(folder, sizes, seed=1)
    write_bad_images(folder / "bad")
    return folder


def _assert_same_store(got, want):
    assert got.ids == want.ids
    assert list(got.status) == list(want.status) and got.reasons == want.reasons
    for net in want.nets:
        for q in want.scales:
            np.testing.assert_allclose(got.descriptors(net, q), want.descriptors(net, q),
                                       rtol=1e-5, atol=1e-7, equal_nan=True)  # fmt: skip


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_subprocess_extract_and_info(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, [(240, 300), (300, 240)])
    out = tmp_path / "s.h5"
    run = subprocess.run([sys.executable, "-m", "vggfeat", "extract", *TINY, "--out", str(out),
                          str(folder)], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    info = subprocess.run(["vggfeat", "info", "--json", str(out)], capture_output=True, text=True)
    assert json.loads(info.stdout)["images"] == 2
    bad = subprocess.run(["vggfeat", "info", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_sigkill_at_several_points_resumes_to_the_same_store(tmp_path):
    folder = _corpus(tmp_path)
    reference = tmp_path / "reference.h5"
    subprocess.run(_command(folder, reference), check=False, capture_output=True)
    want = FeatureStore(reference)
    assert len(want) == 19 and len(want.failed()) == 5

    out = tmp_path / "killed.h5"
    parts = parts_dir(out)

    def n_parts():
        return len(list(parts.glob("part-*.h5"))) if parts.is_dir() else 0

    # Kill points: after the first part, mid-run, and as the final store appears (while parts are
    # being cleaned up); each resume starts from what the previous kill left.
    kill_points = [lambda: n_parts() >= 1, lambda: n_parts() >= 5, lambda: out.exists()]
    killed_alive: list[bool] = []
    for condition in kill_points:
        proc = subprocess.Popen(_command(folder, out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        assert _wait_for(lambda: condition() or proc.poll() is not None)  # noqa: B023
        killed_alive.append(proc.poll() is None)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            FeatureStore(out)  # never unreadable
        for part in parts.glob("part-*.h5") if parts.is_dir() else []:
            FeatureStore(part)
    assert killed_alive[:2] == [True, True]  # the mid-run kills really hit a running extraction
    final = subprocess.run(_command(folder, out), capture_output=True, text=True)
    assert final.returncode == 3, final.stderr  # the 5 bad files
    _assert_same_store(FeatureStore(out), want)
    assert not parts.exists() and not list(tmp_path.glob(".*.tmp"))


def test_precision_auto_and_device_decode_are_recorded(images, tmp_path):
    import torch

    from vggfeat.devices import resolve_precision

    out = tmp_path / "auto.h5"
    result = _invoke("extract", *TINY, "--precision", "auto", "--device", "cpu", "--out", out,
                     images[0].parent)  # fmt: skip
    assert result.exit_code == 0, result.output
    ran = resolve_precision("auto", torch.device("cpu"))
    assert FeatureStore(out).settings["precision"] == ran  # what ran, not 'auto'
    again = _invoke("extract", *TINY, "--precision", ran, "--device", "cpu", "--out", out,
                    images[0].parent)  # fmt: skip
    assert again.exit_code == 0 and "0 images extracted" in again.output  # same settings

    device = tmp_path / "device.h5"
    result = _invoke("extract", *TINY, "--decode", "device", "--device", "cpu", "--out", device,
                     images[0].parent)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decode_jpeg" in FeatureStore(device).settings["decoder"]
    mixed = _invoke("extract", *TINY, "--device", "cpu", "--out", device, images[0].parent)
    assert mixed.exit_code == 1 and "decoder" in mixed.output  # not mixed with PIL decoding


# --- storage integrity through the CLI (issue 12; issue 8 items 2 and 6) --------------------------


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_summary_counts_failed_images_apart_and_fixed_files_are_retried(images, tmp_path):
    folder = images[0].parent
    corpus = write_bad_images(folder)
    out = tmp_path / "s.h5"
    result = _invoke("extract", *TINY, "--out", out, folder)
    n_ok, n_bad = len(images), len(corpus)
    assert f"{n_ok} images extracted, {n_bad} failed" in result.output
    assert "--no-retry-failed keeps them" in _invoke("info", out).output  # says how they retry
    kept = _invoke("extract", *TINY, "--no-retry-failed", "--out", out, folder)
    assert kept.exit_code == 3 and f"0 images extracted, 0 failed, 0 cropped, {n_ok + n_bad}" in (
        kept.output
    )
    good = folder / "img_000.jpg"
    (folder / "truncated.jpg").write_bytes(good.read_bytes())  # the user fixes a file
    again = _invoke("extract", *TINY, "--out", out, folder)
    assert again.exit_code == 3 and f"1 images extracted, {n_bad - 1} failed" in again.output
    store = FeatureStore(out)
    row = store.rows(["truncated.jpg", "img_000.jpg"])
    np.testing.assert_allclose(*store.descriptors("D", 256)[row], rtol=1e-6)  # same picture


def test_changed_image_is_extracted_again_and_a_second_folder_is_refused(images, tmp_path):
    folder = images[0].parent
    out = tmp_path / "s.h5"
    _invoke("extract", *TINY, "--out", out, *images[:4])
    images[3].write_bytes(images[5].read_bytes())  # a different picture under the same name
    result = _invoke("extract", *TINY, "--out", out, *images[:4])
    assert "1 images extracted" in result.output and "3 already in store" in result.output
    assert "1 images changed since they were extracted" in result.output
    fresh = tmp_path / "fresh.h5"
    _invoke("extract", *TINY, "--out", fresh, *images[:4])
    np.testing.assert_allclose(FeatureStore(out).descriptors("D", 256),
                               FeatureStore(fresh).descriptors("D", 256), rtol=1e-6)  # fmt: skip
    dogs = tmp_path / "dogs"
    write_images(dogs, [(250, 260), (260, 250)], seed=7)  # img_000.jpg, img_001.jpg again
    refused = CliRunner().invoke(cli, ["extract", *TINY, "--out", str(out), str(dogs)])
    _one_line_error(refused, "2 ids in", "come from other files", "--root")
    assert len(FeatureStore(out)) == 4 and folder.is_dir()


def test_non_utf8_file_name_round_trips(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, [(240, 250), (250, 240)])
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    os.rename(folder / "img_001.jpg", latin1)
    out = tmp_path / "s.h5"
    result = _invoke("extract", *TINY, "--out", out, folder)
    assert result.exit_code == 0 and "2 images extracted" in result.output
    store = FeatureStore(out)
    name = os.fsdecode(b"caf\xe9.jpg")
    assert name in store.ids and store.sources[store.rows([name])[0]] == os.fsdecode(latin1)
    assert "0 images extracted" in _invoke("extract", *TINY, "--out", out, folder).output
    assert _invoke("info", "--all", out).exit_code == 0


def test_info_on_an_interrupted_first_run_and_verify(images, tmp_path):
    out = tmp_path / "k.h5"
    from vggfeat.store import Row, StoreWriter

    _invoke("extract", *TINY, "--out", tmp_path / "ok.h5", images[0])
    settings = FeatureStore(tmp_path / "ok.h5").settings
    w = StoreWriter(out, settings, rows_per_part=1)
    w.add(Row("a.jpg", ok=False, reason="x"))
    w.close()  # killed: one part, no store
    info = _invoke("info", out)
    assert info.exit_code == 0 and "k.h5 does not exist yet" in info.output
    assert "1 part files (1 images)" in info.output and "same `vggfeat extract`" in info.output
    assert _invoke("info", "--verify", out).exit_code == 0
    checked = _invoke("info", "--verify", tmp_path / "ok.h5")
    assert checked.exit_code == 0 and "verify: ok" in checked.output
    with h5py.File(tmp_path / "ok.h5", "r") as f:
        offset = f["descriptors/D/224"].id.get_chunk_info(0).byte_offset
    with open(tmp_path / "ok.h5", "r+b") as fh:
        fh.seek(offset + 9)
        byte = fh.read(1)[0]
        fh.seek(offset + 9)
        fh.write(bytes([byte ^ 0x10]))
    damaged = CliRunner().invoke(cli, ["info", "--verify", str(tmp_path / "ok.h5")])
    assert "/descriptors/D/224 rows 0-0" in damaged.output
    _one_line_error(damaged, "1 damaged", "--verify")
    _one_line_error(CliRunner().invoke(cli, ["info", str(tmp_path / "none.h5")]), "does not exist")


def test_merge_refusals_are_one_line(images, tmp_path):
    for k, chunk in enumerate((images[:2], images[2:4])):
        _invoke("extract", *TINY, "--out", tmp_path / f"s{k}.h5", *chunk)
    s0, s1, all_ = tmp_path / "s0.h5", tmp_path / "s1.h5", tmp_path / "all.h5"
    assert _invoke("merge", all_, s0).exit_code == 0
    _one_line_error(CliRunner().invoke(cli, ["merge", str(all_), str(all_), str(s1)]),
                    "also an input")  # fmt: skip
    appended = _invoke("merge", "--copy", all_, all_, s1)
    assert "4 images from 2 shards" in appended.output and len(FeatureStore(all_)) == 4
    nested = _invoke("merge", tmp_path / "new" / "dir" / "m.h5", s0, s1)
    assert nested.exit_code == 0 and len(FeatureStore(tmp_path / "new" / "dir" / "m.h5")) == 4
    os.rename(s0, tmp_path / "moved.h5")
    _one_line_error(CliRunner().invoke(cli, ["info", str(tmp_path / "new/dir/m.h5")]),
                    "s0.h5 is missing")  # fmt: skip


def test_a_second_writer_is_refused_while_the_store_is_in_use(images, tmp_path):
    from vggfeat.files import OutputLock

    out = tmp_path / "s.h5"
    with OutputLock(out):  # another process extracting into s.h5
        result = CliRunner().invoke(cli, ["extract", *TINY, "--out", str(out), str(images[0])])
        _one_line_error(result, "s.h5 is in use by another vggfeat process", "wait for it")
        merged = CliRunner().invoke(cli, ["merge", str(out), str(images[0])])
        assert merged.exit_code == 1
    assert not out.exists() and _invoke("extract", *TINY, "--out", out, images[0]).exit_code == 0


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["extract", "."], "Missing option '--out'"),
        (["extract", "--scales", "2x", "--out", "s.h5"], "not a comma-separated list"),
        (["merge", "all.h5"], "Missing argument 'SHARDS...'"),
        (["info"], "Missing argument 'FILE'"),
        (["nope"], "No such command 'nope'"),
        (["svm", "fit", "--C", "1"], "Missing option"),
        (["weights", "info"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_with_status_1(tmp_path, args, fragment):
    _one_line_error(CliRunner().invoke(cli, args), fragment, "--help'")


FAULT_ARGS = [*TINY, "--batch-size", "1", "--checkpoint-every", "2"]


def _small_corpus(tmp_path):
    """6 images and 2 bad files: parts of 2 rows are ~14 KB, the finished store ~27 KB."""
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(224, 300)), int(rng.integers(224, 340))) for _ in range(6)]
    folder = tmp_path / "imgs"
    write_images(folder, sizes, seed=1)
    (folder / "bad").mkdir()
    (folder / "bad" / "empty.jpg").write_bytes(b"")
    (folder / "bad" / "text.jpg").write_bytes(b"not an image\n" * 10)
    reference = tmp_path / "reference.h5"
    _invoke("extract", *FAULT_ARGS, "--out", reference, folder)
    return folder, FeatureStore(reference)


def _fault_command(folder, out):
    return [sys.executable, "-m", "vggfeat", "extract", *FAULT_ARGS, "--out", str(out), str(folder)]


def _limited(limit):
    """preexec_fn: a per-file size limit, so writing past ``limit`` bytes fails with EFBIG."""
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


def test_write_error_during_finalize_is_one_line_and_resume_equals_a_clean_run(tmp_path):
    folder, reference = _small_corpus(tmp_path)
    out = tmp_path / "limited.h5"
    # Parts (2 rows) fit under the limit; the finished store (8 rows) does not.
    failed = subprocess.run(_fault_command(folder, out), capture_output=True, text=True,
                            preexec_fn=_limited(20_000))  # fmt: skip
    assert failed.returncode == 1, failed.stderr  # not -11: no segmentation fault
    assert "Traceback" not in failed.stderr
    cause = "file too large for the file system or the process's file size limit"
    assert f"Error: {cause} while writing {out}; free space" in failed.stderr
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.h5"))) == 4
    resumed = _invoke("extract", *FAULT_ARGS, "--out", out, folder)
    assert resumed.exit_code == 3
    assert "0 images extracted, 2 failed, 0 cropped, 6 already in store" in resumed.output
    _assert_same_store(FeatureStore(out), reference)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0, reason="mounting needs root on Linux"
)
def test_full_disk_on_a_real_tmpfs_then_resume(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        folder, reference = _small_corpus(tmp_path)
        out = small / "store.h5"
        proc = subprocess.Popen(_fault_command(folder, out), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        parts = parts_dir(out)
        assert _wait_for(lambda: (parts.is_dir() and any(parts.glob("part-*.h5")))
                         or proc.poll() is not None)  # fmt: skip
        with open(small / "filler", "wb") as fh:  # another program fills the disk
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        stdout, stderr = proc.communicate(timeout=300)
        if proc.returncode in (0, 3):
            pytest.skip("the run finished before the disk could be filled")
        assert proc.returncode == 1, stderr  # not -11: no segmentation fault
        assert (
            "Traceback" not in stderr and "Error: no space left on device while writing" in stderr
        )
        (small / "filler").unlink()
        resumed = _invoke("extract", *FAULT_ARGS, "--out", out, folder)
        assert resumed.exit_code == 3
        _assert_same_store(FeatureStore(out), reference)
    finally:
        subprocess.run(["umount", str(small)], check=False)
