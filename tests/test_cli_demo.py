"""`vggfeat demo`: the embedded transfer job with the shipped demo net and bundled photos."""

import fnmatch
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vggfeat.cli import cli
from vggfeat.demo import DATA_DIR, DEMO_IMAGES, DEMO_WEIGHTS_FILE, demo_classes, write_demo_labels
from vggfeat.labels import read_labels
from vggfeat.store import FeatureStore
from vggfeat.weights import load_weights, read_checkpoint


def test_demo_weights_are_a_trained_net_d_with_its_record():
    assert DEMO_WEIGHTS_FILE.stat().st_size <= 10 * 2**20
    state, meta = read_checkpoint("demo")
    assert meta["net"] == "D" and meta["storage_dtype"] == "float16"
    record = meta["training"]
    source = (DATA_DIR / "source_classes.txt").read_text().split()
    assert meta["classes"] == source == record["classes"]
    assert not set(source) & set(demo_classes())  # the bundled classes were held out
    assert set(demo_classes()) <= set((DATA_DIR / "target_classes.txt").read_text().split())
    assert record["epochs"] and record["final_val"]["weights"] == "as stored (fp16)"
    raw = torch.load(DEMO_WEIGHTS_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v.float()) for k, v in raw.items())  # exact widening
    w = load_weights("demo", "D")
    assert w.width == meta["width"] and w.classes == tuple(source) and w.label.startswith("demo")


def test_extract_takes_the_demo_weights_without_a_net(tmp_path):
    first = sorted((DEMO_IMAGES / demo_classes()[0]).glob("*.jpg"))[:2]
    out = tmp_path / "f.h5"
    result = CliRunner().invoke(cli, ["extract", *map(str, first), "--weights", "demo",
                                      "--scales", "224", "--workers", "0", "--out", str(out),
                                      "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    store = FeatureStore(out)
    assert store.settings["weights"]["D"]["source"] == "demo"
    assert store.descriptors("D", 224).shape == (2, 512)


def test_bundled_images_are_package_data_with_their_attribution():
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["vggfeat"]
    files = [p for p in DATA_DIR.rglob("*") if p.is_file()]
    package = DATA_DIR.parent
    for f in files:
        rel = f.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel
    images = list(DEMO_IMAGES.rglob("*.jpg"))
    assert len(demo_classes()) == 8 and len(images) == 8 * 40
    assert sum(p.stat().st_size for p in images) < 8 * 2**20
    readme = (DATA_DIR / "README.md").read_text()
    assert "Caltech-101" in readme and "CC BY 4.0" in readme and "Fei-Fei" in readme


def test_demo_labels_alternate_train_and_test(tmp_path):
    n_train, n_test = write_demo_labels(tmp_path / "labels.csv", per_class=5)
    labels = read_labels(tmp_path / "labels.csv")
    assert (n_train, n_test) == (8 * 3, 8 * 2)
    assert sorted(labels.classes) == demo_classes()
    assert all((DEMO_IMAGES / id_).is_file() for id_ in labels.ids)


@pytest.mark.parametrize("weights", ["demo", "random"])
def test_demo_runs_end_to_end(tmp_path, weights):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out-dir", str(out), "--per-class", "4",
                                      "--scales", "256", "--weights", weights, "--workers", "0"],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mean class recall" in result.output and "CC BY 4.0" in result.output
    assert ("RANDOM weights" in result.output) == (weights == "random")
    store = FeatureStore(out / f"features_{weights}_Q256.h5")
    assert len(store) == 32 and store.ok.all()
    demo_width = read_checkpoint("demo")[1]["width"]
    assert store.settings["weights"]["D"]["width"] == demo_width  # the same net, trained or not
    results = json.loads((out / f"results_{weights}_Q256.json").read_text())
    assert 0.0 <= results["mean_class_recall"] <= 1.0 and results["n_images"] == 16
    assert f"{100 * results['mean_class_recall']:.1f}" in result.output
    assert (out / f"plots_{weights}_Q256" / "confusion.png").stat().st_size > 1000
    assert np.isfinite(store.descriptors("D", 256)).all()
