"""`vggfeat extract` / `info` / `merge` through CliRunner and as subprocesses, including real kills."""

import json
import os
import signal
import subprocess
import sys
import time

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
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code in (1, 2) and message in result.output
    assert "Traceback" not in result.output


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
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


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
