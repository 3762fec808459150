"""vggfeat.train and `vggfeat train`: learning, the LR schedule, resume, DDP, records, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _train_data import CLASSES, tiny_sets, write_class_folders
from click.testing import CliRunner

from vggfeat.cli import cli
from vggfeat.datasets.classes import read_labelled_images
from vggfeat.errors import VggfeatError
from vggfeat.nets import VGG
from vggfeat.train import (
    PlateauSchedule,
    TrainConfig,
    Trainer,
    colour_pca,
    init_from_checkpoint,
    train,
)
from vggfeat.weights import load_weights, read_checkpoint

# A narrow net on 32-pixel crops: a step takes milliseconds.
TINY = dict(width=1 / 16, scale=(36, 44), crop=32, batch_size=4, workers=0, device="cpu")
CLI_TINY = ["--width", "0.0625", "--scale", "36:44", "--crop", "32", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "-q"]  # fmt: skip


def _sets(tmp_path, **kwargs):
    train_dir, val_dir = tiny_sets(tmp_path, **kwargs)
    return read_labelled_images(train_dir), read_labelled_images(val_dir)


def _run(tmp_path, name, train_set, val_set, resume=False, **overrides):
    config = TrainConfig(**{"net": "A", "init": "kaiming", **TINY, **overrides})
    return train(config, train_set, val_set, tmp_path / name, resume=resume, progress=False,
                 echo=lambda line: None)  # fmt: skip


def _state(path):
    return read_checkpoint(path)[0]


def _assert_same_state(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


# ----------------------------------------------------------------------------- learning


def test_training_steps_reduce_the_loss(tmp_path):
    # The training set doubles as the val set: validate() is then the training loss.
    train_set, _ = _sets(tmp_path)
    config = TrainConfig(net="A", init="kaiming", lr=0.01, epochs=3, dropout=0.0, **TINY)
    trainer = Trainer(config, train_set, train_set, tmp_path / "run", progress=False,
                      echo=lambda line: None)  # fmt: skip
    before = trainer.validate()["val_loss"]
    result = trainer.fit()
    after = trainer.validate()["val_loss"]
    assert after < 0.7 * before
    assert result.finished and result.record["global_step"] == 3 * (24 // 4)


def test_plateau_schedule_drops_then_stops():
    s = PlateauSchedule(lr=0.01, max_drops=2, patience=2)
    actions = [s.step(a) for a in (0.1, 0.2, 0.2, 0.15, 0.3, 0.3, 0.3, 0.3, 0.3)]
    assert actions == ["keep", "keep", "keep", "drop", "keep", "keep", "drop", "keep", "stop"]
    assert s.lr == pytest.approx(1e-4) and s.drops == 2 and s.stopped
    again = PlateauSchedule(lr=1.0)
    again.load_state_dict(s.state_dict())
    assert again == s


def test_lr_drops_on_a_validation_plateau_and_the_run_stops(tmp_path):
    train_set, val_set = _sets(tmp_path)
    # A learning rate this small leaves the validation accuracy where it is: a plateau.
    result = _run(tmp_path, "run", train_set, val_set, lr=1e-7, epochs=10, lr_drops=1)
    epochs = result.record["epochs"]
    assert [e["action"] for e in epochs] == ["keep", "drop", "stop"]
    assert [e["lr"] for e in epochs] == pytest.approx([1e-7, 1e-7, 1e-8])
    assert result.record["stopped"] and result.record["lr_drops"] == 1


def test_a_diverging_run_stops_with_a_one_line_error(tmp_path):
    train_set, val_set = _sets(tmp_path)
    with pytest.raises(VggfeatError, match="diverged; lower --lr"):
        _run(tmp_path, "run", train_set, val_set, lr=1e6, epochs=2)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    train_set, val_set = _sets(tmp_path)
    whole = _run(tmp_path, "whole", train_set, val_set, epochs=1, dropout=0.0)
    parts = _run(tmp_path, "parts", train_set, val_set, epochs=1, dropout=0.0, accumulate=2)
    _assert_same_state(_state(whole.final), _state(parts.final), atol=1e-6)


def test_colour_pca_matches_numpy(tmp_path):
    train_set, _ = _sets(tmp_path)
    pca = colour_pca(train_set, n_images=1000, seed=0)
    vec, sigma = np.array(pca["eigvec"]), np.array(pca["sigma"])
    assert pca["images"] == len(train_set)
    np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=1e-9)  # orthonormal components
    assert sigma[0] >= sigma[1] >= sigma[2] > 0


# ----------------------------------------------------------------------------- resume


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    train_set, val_set = _sets(tmp_path)
    # Dropout on, so the restored RNG state matters; workers differ, which must not matter.
    full = _run(tmp_path, "full", train_set, val_set, epochs=2)
    paused = _run(tmp_path, "cut", train_set, val_set, epochs=2, max_steps=3)
    assert not paused.finished and paused.final is None
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert (ckpt["resume"]["epoch"], ckpt["resume"]["step_in_epoch"]) == (0, 3)
    resumed = _run(tmp_path, "cut", train_set, val_set, resume=True, epochs=2, workers=1)
    assert resumed.finished
    _assert_same_state(_state(full.final), _state(resumed.final), atol=1e-6)
    for a, b in zip(full.record["epochs"], resumed.record["epochs"]):
        for key in ("train_loss", "train_top1_error", "val_loss", "val_top1_error"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # atomic writes left nothing behind


@pytest.mark.slow
def test_resume_after_a_real_kill_equals_an_uninterrupted_run(tmp_path):
    train_dir, val_dir = tiny_sets(tmp_path, train=12)
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "vggfeat", "train", "--train", str(train_dir), "--val",
            str(val_dir), "--net", "A", "--init", "kaiming", "--epochs", "3",
            "--checkpoint-every", "1", "--out", str(run), *CLI_TINY]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pth").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final.pth").exists()
    result = CliRunner().invoke(cli, args[3:] + ["--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    full = _run(tmp_path, "full", read_labelled_images(train_dir), read_labelled_images(val_dir),
                epochs=3)  # fmt: skip
    _assert_same_state(_state(full.final), _state(run / "final.pth"), atol=1e-6)


def test_resume_refuses_other_settings_and_fresh_runs_refuse_an_existing_one(tmp_path):
    train_dir, val_dir = tiny_sets(tmp_path)
    run = tmp_path / "run"
    base = ["train", "--train", str(train_dir), "--val", str(val_dir), "--net", "A", "--out",
            str(run), "--max-steps", "2", *CLI_TINY]  # fmt: skip
    assert CliRunner().invoke(cli, base).exit_code == 0
    again = CliRunner().invoke(cli, base)
    assert again.exit_code == 1 and "--resume" in again.output
    other = CliRunner().invoke(cli, [*base, "--resume", "--crop", "28"])
    assert other.exit_code == 1
    assert "crop=32" in other.output and len(other.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    train_dir, val_dir = tiny_sets(tmp_path)
    common = ["--train", str(train_dir), "--val", str(val_dir), "--net", "A", "--init",
              "kaiming", "--epochs", "1", "--dropout", "0", *CLI_TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "vggfeat", "train", *common, "--out",
                          str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = CliRunner().invoke(cli, ["train", *common, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    _assert_same_state(_state(tmp_path / "one" / "final.pth"),
                       _state(tmp_path / "ddp" / "final.pth"), atol=1e-6)  # fmt: skip
    record = json.loads((tmp_path / "ddp" / "log.json").read_text())
    assert record["world_size"] == 2 and record["global_step"] == 6


# ----------------------------------------------------------------------------- init


def test_init_from_copies_the_first_four_convs_and_the_fc_layers(tmp_path):
    train_set, val_set = _sets(tmp_path)
    a = _run(tmp_path, "A", train_set, val_set, epochs=1)
    state_a, meta = read_checkpoint(a.final)
    d = VGG("D", num_classes=3, width=TINY["width"])
    copied = init_from_checkpoint(d, state_a, meta, str(a.final))
    # Net-A conv1_1, conv2_1, conv3_1, conv3_2 -> Net-D's layers at the same block positions.
    pairs = {"features.0": "features.0", "features.5": "features.3",
             "features.10": "features.6", "features.12": "features.8"}  # fmt: skip
    pairs.update({f"classifier.{i}": f"classifier.{i}" for i in (0, 3, 6)})
    own = d.state_dict()
    for mine, theirs in pairs.items():
        for suffix in (".weight", ".bias"):
            assert torch.equal(own[mine + suffix], state_a[theirs + suffix])
    assert sorted(copied) == sorted(m + s for m in pairs for s in (".weight", ".bias"))
    result = _run(tmp_path, "D", train_set, val_set, net="D", init="auto", init_from=str(a.final),
                  epochs=1)  # fmt: skip
    assert result.record["init"].startswith("normal + 7 layers from")


def test_init_from_a_checkpoint_of_another_width_is_refused(tmp_path):
    train_set, val_set = _sets(tmp_path)
    a = _run(tmp_path, "A", train_set, val_set, epochs=1)
    with pytest.raises(VggfeatError, match="same --width"):
        _run(tmp_path, "D", train_set, val_set, net="D", width=1 / 8, init_from=str(a.final))


# ----------------------------------------------------------------------------- the result


def test_final_checkpoint_is_directly_usable_and_recorded(tmp_path, images):
    train_dir, val_dir = tiny_sets(tmp_path)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--train", str(train_dir), "--val", str(val_dir),
                                      "--net", "B", "--epochs", "2", "--final-dtype", "fp16",
                                      "--out", str(run), *CLI_TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("epoch ") >= 2  # a line per epoch
    for name in ("final.pth", "checkpoint.pth", "log.json", "curve.png"):
        assert (run / name).stat().st_size > 0
    ckpt = torch.load(run / "final.pth", weights_only=True)
    assert ckpt["storage_dtype"] == "float16" and "resume" not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values())
    w = load_weights(str(run / "final.pth"), "B")
    assert w.classes == CLASSES and w.width == 1 / 16 and w.num_classes == 3
    assert all(w.state_dict[k].dtype == torch.float32 for k in w.state_dict)
    assert all(torch.equal(w.state_dict[k], v.float()) for k, v in ckpt["state_dict"].items())
    record = json.loads((run / "log.json").read_text())
    assert len(record["epochs"]) == 2 and record["data"]["n_train"] == 24
    assert record["final_val"]["weights"] == "as stored (fp16)"
    # No --net: extract reads the net from the checkpoint.
    store = tmp_path / "f.h5"
    out = CliRunner().invoke(cli, ["extract", str(images[0].parent), "--weights",
                                   str(run / "final.pth"), "--scales", "224", "--workers", "0",
                                   "--out", str(store), "-q"])  # fmt: skip
    assert out.exit_code == 0, out.output
    from vggfeat.store import FeatureStore

    st = FeatureStore(store)
    assert st.settings["nets"] == ["B"] and st.descriptors("B", 224).shape == (len(images), 256)
    info = CliRunner().invoke(cli, ["weights", "info", str(run / "final.pth")])
    assert info.exit_code == 0, info.output
    assert "vggfeat training checkpoint" in info.output and "trained on  24 images" in info.output
    assert "val top-1 %" in info.output


# ----------------------------------------------------------------------------- bad input


def test_bad_images_are_skipped_and_counted(tmp_path):
    train_dir, val_dir = tiny_sets(tmp_path)
    (train_dir / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    result = _run(tmp_path, "run", read_labelled_images(train_dir),
                  read_labelled_images(val_dir), epochs=1, batch_size=5)  # fmt: skip
    assert list(result.record["bad_images"]) == ["red/broken.jpg"]
    assert result.record["epochs"][0]["train_bad"] == 1
    assert result.record["epochs"][0]["train_images"] == 24


def _one_line_error(args, code=1):
    """The one 'Error: ...' line of a failed command (usage errors also print click's usage)."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1, result.output
    return lines[0]


def test_empty_class_folder_is_a_one_line_error(tmp_path):
    train_dir, val_dir = tiny_sets(tmp_path)
    (train_dir / "empty").mkdir()
    line = _one_line_error(["train", "--train", str(train_dir), "--val", str(val_dir), "--out",
                            str(tmp_path / "run"), *CLI_TINY])  # fmt: skip
    assert "empty" in line and "holds no images" in line


def test_val_classes_the_train_set_lacks_are_a_one_line_error(tmp_path):
    train_dir, val_dir = tiny_sets(tmp_path)
    write_class_folders(tmp_path / "extra", 2)
    (tmp_path / "extra" / "red").rename(val_dir / "purple")
    line = _one_line_error(["train", "--train", str(train_dir), "--val", str(val_dir), "--out",
                            str(tmp_path / "run"), *CLI_TINY])  # fmt: skip
    assert "purple" in line and "lacks" in line


def test_a_checkpoint_of_another_net_is_a_one_line_error(tmp_path, images):
    train_set, val_set = _sets(tmp_path)
    a = _run(tmp_path, "A", train_set, val_set, epochs=1)
    line = _one_line_error(["extract", str(images[0]), "--net", "E", "--weights", str(a.final),
                            "--scales", "224", "--out", str(tmp_path / "x.h5"), "-q"])  # fmt: skip
    assert "net A, not net E" in line


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["--scale", "300:200"], 2, "Smin:Smax"),
        (["--crop", "64"], 1, "at most the smallest scale"),
        (["--batch-size", "6", "--accumulate", "4"], 1, "multiple of --accumulate"),
        (["--batch-size", "1000"], 1, "fewer than one batch"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, args, code, expected):
    train_dir, val_dir = tiny_sets(tmp_path)
    line = _one_line_error(["train", "--train", str(train_dir), "--val", str(val_dir), "--out",
                            str(tmp_path / "run"), *CLI_TINY, *args], code)  # fmt: skip
    assert expected in line
