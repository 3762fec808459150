"""``vggfeat weights list/info/import`` through click's CliRunner (and one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from test_oxford import caffe_release, keras_release, write_caffemodel, write_keras

from vggfeat.cli import cli
from vggfeat.nets import VGG
from vggfeat.weights import imagenet_file, sha256_file


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Empty TORCH_HOME and KERAS_HOME, and a clean current folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # Progress goes to stderr too; the error itself is the one last line.
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error") for line in lines) == 1, result.output
    return lines[-1]


def test_import_caffe_then_info(home):
    src = write_caffemodel(home / "VGG_ILSVRC_16_layers.caffemodel", caffe_release("D"))
    out = home / "oxford_vgg16.safetensors"
    result = invoke("weights", "import", src, "--net", "D", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"Wrote {out}" in result.output
    assert f"sha256 {sha256_file(out)}" in result.output

    result = invoke("weights", "info", out, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["net"] == "D" and info["torchvision_name"] == "vgg16"
    assert info["sha256"] == sha256_file(out) and info["width"] == pytest.approx(1 / 16)
    assert info["preprocess"]["name"] == "caffe"
    assert info["preprocess"]["channel_order"] == "BGR"
    assert info["preprocess"]["mean"] == [103.939, 116.779, 123.68]
    origin = info["origin"]
    assert origin["file"] == src.name and origin["sha256"] == sha256_file(src)
    assert origin["format"] == "caffe V1" and origin["converter_version"] == 1

    text = invoke("weights", "info", out).output
    assert "D (vgg16), width 0.0625, 10 classes" in text
    assert "caffe: BGR" in text and "format=caffe V1" in text


def test_import_keras_default_out_and_list(home):
    src = write_keras(home / "vgg19_weights_tf_dim_ordering_tf_kernels.h5", keras_release("E"))
    result = invoke("weights", "import", src, "--net", "vgg19")
    assert result.exit_code == 0, result.output
    target = home / "torch" / "vggfeat" / "oxford_vgg19.safetensors"
    assert target.is_file()

    rows = {r["name"]: r for r in json.loads(invoke("weights", "list", "--json").output)}
    assert rows["oxford-vgg19"]["present"] and rows["oxford-vgg19"]["path"] == str(target)
    assert not rows["oxford-vgg16"]["present"]
    # The source file sits outside the searched folders until pointed at with --dir.
    assert not rows["oxford-keras-vgg19"]["present"]
    rows = {
        r["name"]: r for r in json.loads(invoke("weights", "list", "--dir", home, "--json").output)
    }
    assert rows["oxford-keras-vgg19"]["present"]
    assert f"weights import {src} --net E" in rows["oxford-keras-vgg19"]["use"]

    again = invoke("weights", "import", src, "--net", "E")
    assert "exists: pass --force" in one_line_error(again)
    assert invoke("weights", "import", src, "--net", "E", "--force").exit_code == 0


def test_list_reports_cache_and_where_to_get_files(home):
    rows = json.loads(invoke("weights", "list", "--json").output)
    names = [r["name"] for r in rows]
    assert names[:2] == ["imagenet-vgg16", "imagenet-vgg19"]
    assert {"oxford-caffe-vgg16", "oxford-caffe-vgg19", "oxford-keras-vgg16"} <= set(names)
    assert not any(r["present"] for r in rows)

    _, cached = imagenet_file("D")
    assert str(cached).startswith(str(home / "torch"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    (home / "work" / "VGG_ILSVRC_16_layers.caffemodel").write_bytes(b"x")  # the current folder
    keras_models = home / "keras" / "models"
    keras_models.mkdir(parents=True)
    (keras_models / "vgg16_weights_tf_dim_ordering_tf_kernels.h5").write_bytes(b"x")
    rows = {r["name"]: r for r in json.loads(invoke("weights", "list", "--json").output)}
    assert rows["imagenet-vgg16"]["present"] and not rows["imagenet-vgg19"]["present"]
    assert rows["oxford-caffe-vgg16"]["present"] and not rows["oxford-caffe-vgg19"]["present"]
    assert rows["oxford-keras-vgg16"]["present"]

    text = invoke("weights", "list").output
    assert "VGG_ILSVRC_19_layers.caffemodel  [missing]" in text
    assert "get it from http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/" in text
    assert "vggfeat weights import" in text


def test_import_errors_are_one_line(home):
    src = write_caffemodel(home / "VGG_ILSVRC_19_layers.caffemodel", caffe_release("E"))
    line = one_line_error(
        invoke("weights", "import", src, "--net", "D", "--out", home / "o.safetensors")
    )
    assert "looks like net E (vgg19" in line and "pass --net E" in line
    assert not (home / "o.safetensors").exists()

    release = {k: v for k, v in keras_release("D").items() if k.startswith("block")}
    notop = write_keras(home / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", release)
    line = one_line_error(
        invoke("weights", "import", notop, "--net", "D", "--out", home / "n.safetensors")
    )
    assert "no fc layers" in line

    data = src.read_bytes()
    cut = home / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    line = one_line_error(
        invoke("weights", "import", cut, "--net", "E", "--out", home / "c.safetensors")
    )
    assert "truncated" in line

    result = invoke("weights", "import", src, "--net", "F", "--out", home / "f.safetensors")
    assert result.exit_code == 1 and "Unknown net 'F'" in result.output
    result = invoke("weights", "import", src, "--net", "A", "--out", home / "f.safetensors")
    assert result.exit_code == 1 and "nets D (vgg16) and E (vgg19) only" in result.output


def test_info_on_state_dict_and_on_oxford_release(home):
    torch.manual_seed(0)
    pth = home / "vgg19-random.pth"
    torch.save(VGG("E", width=1 / 16, num_classes=10).state_dict(), pth)
    info = json.loads(invoke("weights", "info", pth, "--json").output)
    assert info["net"] == "E" and info["kind"] == "torch state dict"
    assert info["preprocess"]["name"] == "torchvision" and info["sha256"] == sha256_file(pth)

    src = write_caffemodel(home / "VGG_ILSVRC_16_layers.caffemodel", caffe_release("D"))
    text = invoke("weights", "info", src).output
    assert "Oxford release (caffe V1): import it before use" in text
    assert f"vggfeat weights import {src} --net D" in text and "net         D (vgg16)" in text
    renamed = home / "weights.bin"
    renamed.write_bytes(src.read_bytes())
    assert "pass --format caffe" in one_line_error(invoke("weights", "info", renamed))
    found = json.loads(invoke("weights", "info", renamed, "--format", "caffe", "--json").output)
    assert found["net"] == "D" and found["has_fc"] and found["format"] == "caffe V1"

    junk = home / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert "Cannot read weights file" in one_line_error(invoke("weights", "info", junk))


def test_weights_info_subprocess(home):
    src = write_caffemodel(home / "VGG_ILSVRC_16_layers.caffemodel", caffe_release("D"))
    out = home / "oxford_vgg16.safetensors"
    assert invoke("weights", "import", src, "--net", "D", "--out", out).exit_code == 0
    proc = subprocess.run(
        [sys.executable, "-m", "vggfeat", "weights", "info", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"sha256      {sha256_file(out)}" in proc.stdout
    assert "caffe: BGR" in proc.stdout
