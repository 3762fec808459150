"""vggfeat.evaluate and `vggfeat evaluate`: dense, multi-crop, both, fusion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _train_data import CLASSES, tiny_sets, write_class_folders
from click.testing import CliRunner
from conftest import TEST_WIDTH

from vggfeat.cli import cli
from vggfeat.datasets.classes import read_labelled_images
from vggfeat.errors import VggfeatError
from vggfeat.evaluate import (
    EvalConfig,
    crop_grid,
    crop_posteriors,
    dense_posteriors,
    evaluate_models,
    top_k_errors,
)
from vggfeat.nets import DenseVGG
from vggfeat.weights import load_weights


@pytest.fixture
def classifier():
    """A random narrow Net-D with a 3-way fc8 and the three colour class names."""
    from dataclasses import replace

    torch.manual_seed(0)
    w = load_weights("random", "D", seed=0, width=TEST_WIDTH)
    state = dict(w.state_dict)
    state["classifier.6.weight"] = torch.randn(3, state["classifier.6.weight"].shape[1]) * 0.3
    state["classifier.6.bias"] = torch.randn(3) * 0.3
    return replace(w, num_classes=3, state_dict=state, classes=CLASSES)


def test_dense_at_224_equals_the_single_crop_forward(classifier):
    vgg = classifier.build()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        dense = dense_posteriors(DenseVGG(vgg), x, flip=False)
        plain = F.softmax(vgg(x), dim=1)
        flipped = dense_posteriors(DenseVGG(vgg), x, flip=True)
        both = (plain + F.softmax(vgg(x.flip(-1)), dim=1)) / 2
    torch.testing.assert_close(dense, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flipped, both, rtol=1e-5, atol=1e-6)


def test_dense_averages_the_class_score_map_before_the_softmax(classifier):
    dense = DenseVGG(classifier.build())
    x = torch.randn(1, 3, 256, 320)  # pool5 8x10 -> a 2x4 map of class scores
    with torch.no_grad():
        scores, _ = dense.forward_maps(x, "fc8")
        assert scores.shape[-2:] == (2, 4)
        expected = F.softmax(scores.mean(dim=(-2, -1)), dim=1)
        torch.testing.assert_close(dense_posteriors(dense, x, flip=False), expected)


def test_crop_grid_spans_the_image_regularly():
    pixels = np.arange(300 * 260 * 3, dtype=np.int64).reshape(300, 260, 3)
    crops = crop_grid(pixels, 224, grid=5)
    assert crops.shape == (25, 224, 224, 3)
    np.testing.assert_array_equal(crops[0], pixels[:224, :224])  # top-left
    np.testing.assert_array_equal(crops[24], pixels[-224:, -224:])  # bottom-right
    np.testing.assert_array_equal(crops[12], pixels[38:262, 18:242])  # centre
    np.testing.assert_array_equal(crops[4], pixels[:224, -224:])  # top-right
    with pytest.raises(VggfeatError, match="smaller than"):
        crop_grid(pixels[:200], 224)


def test_multi_crop_on_a_224_image_equals_dense_with_flips(classifier):
    vgg = classifier.build()
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = classifier.preprocess.normalize(torch.from_numpy(crop_grid(image, 224)).permute(0, 3, 1, 2))
    with torch.no_grad():
        crops = crop_posteriors(vgg, x)  # 25 identical crops and their flips
        dense = dense_posteriors(DenseVGG(vgg), x[:1])[0]
    torch.testing.assert_close(crops, dense, rtol=1e-5, atol=1e-6)


def _val(tmp_path, per_class=2, size=(230, 250)):
    return read_labelled_images(write_class_folders(tmp_path / "val", per_class, size=size))


def test_modes_and_fusion_agree_where_they_must(tmp_path, classifier):
    images = _val(tmp_path)
    config = EvalConfig(scales=(224, 256), modes=("dense", "multi-crop", "dense+multi-crop"),
                        grid=2, workers=0, device="cpu")  # fmt: skip
    one = evaluate_models([classifier], images, config, progress=False)
    two = evaluate_models([classifier, classifier], images, config, progress=False)
    label = classifier.label
    for mode in config.modes:
        p = one.posteriors[(label, mode)]
        assert p.shape == (6, 3)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(
            two.posteriors[("fusion", mode)], p, rtol=1e-6
        )  # fusion = itself
    both = (one.posteriors[(label, "dense")] + one.posteriors[(label, "multi-crop")]) / 2
    np.testing.assert_allclose(one.posteriors[(label, "dense+multi-crop")], both, rtol=1e-6)
    # Errors follow from the posteriors: top-1 by argmax, top-3 of 3 classes is always right.
    for row in one.errors:
        p = one.posteriors[(row["model"], row["mode"])]
        assert row["top1_error"] == pytest.approx(np.mean(p.argmax(1) != one.targets))
        assert row["top5_error"] == 0.0
    assert len(two.errors) == 3 * 3  # two models and their fusion, three modes each


def test_fusion_averages_the_posteriors_of_different_models(tmp_path, classifier):
    from dataclasses import replace

    images = _val(tmp_path)
    state = {k: v * 1.5 if k.startswith("classifier.6") else v
             for k, v in classifier.state_dict.items()}  # fmt: skip
    other = replace(classifier, label="other", state_dict=state)
    config = EvalConfig(scales=(224,), workers=0, device="cpu")
    result = evaluate_models([classifier, other], images, config, progress=False)
    a, b = result.posteriors[(classifier.label, "dense")], result.posteriors[("other", "dense")]
    assert not np.allclose(a, b)
    np.testing.assert_allclose(result.posteriors[("fusion", "dense")], (a + b) / 2, rtol=1e-6)


def test_scales_below_224_only_for_crops(tmp_path, classifier):
    with pytest.raises(VggfeatError, match=">= 224"):
        EvalConfig(scales=(128,), modes=("dense",))
    images = _val(tmp_path, per_class=1, size=(60, 80))
    config = EvalConfig(scales=(40,), modes=("multi-crop",), crop=32, grid=1, flip=False,
                        workers=0, device="cpu")  # fmt: skip
    result = evaluate_models([classifier], images, config, progress=False)
    assert result.posteriors[(classifier.label, "multi-crop")].shape == (3, 3)


def test_top_k_errors_with_fewer_than_five_classes():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    assert top_k_errors(p, np.array([0, 0, 2])) == (pytest.approx(2 / 3), 0.0)


def test_cli_evaluates_a_trained_checkpoint_and_refuses_unknown_classes(tmp_path):
    train_dir, _ = tiny_sets(tmp_path, val=1)
    run = tmp_path / "run"
    trained = CliRunner().invoke(cli, ["train", "--train", str(train_dir), "--val",
                                       str(train_dir), "--net", "A", "--width", "0.0625",
                                       "--scale", "36:44", "--crop", "32", "--batch-size", "8",
                                       "--epochs", "1", "--workers", "0", "--out", str(run),
                                       "-q"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    val = write_class_folders(tmp_path / "big", 1, size=(230, 240))
    out = tmp_path / "errors.json"
    result = CliRunner().invoke(cli, ["evaluate", "--val", str(val), "--weights",
                                      str(run / "final.pth"), "--mode", "all", "--scales",
                                      "224", "--grid", "2", "--workers", "0", "--json", str(out),
                                      "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dense+multi-crop" in result.output and "top-1 err %" in result.output
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["errors"]] == ["dense", "multi-crop", "dense+multi-crop"]
    assert data["n_images"] == 3 and data["models"][0]["net"] == "A"
    (val / "purple").mkdir()
    write_class_folders(tmp_path / "more", 1, size=(230, 240))
    (tmp_path / "more" / "red" / "img_000.jpg").rename(val / "purple" / "x.jpg")
    bad = CliRunner().invoke(cli, ["evaluate", "--val", str(val), "--weights",
                                   str(run / "final.pth"), "--scales", "224"])  # fmt: skip
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    errors = [line for line in bad.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "purple" in errors[0] and "not trained on" in errors[0]
