"""`vggfeat demo`: the embedded end-to-end job (tiny net so it runs in seconds)."""

import json

import numpy as np
from click.testing import CliRunner

from vggfeat.cli import cli
from vggfeat.demo import DEMO_CLASSES, make_demo_dataset
from vggfeat.labels import read_labels
from vggfeat.store import FeatureStore


def test_demo_dataset_is_balanced_and_labelled(tmp_path):
    images, labels_csv = make_demo_dataset(tmp_path, per_class=4, seed=1)
    labels = read_labels(labels_csv)
    assert sorted(labels.classes) == sorted(DEMO_CLASSES) and len(labels) == 16
    assert all((images / id_).is_file() for id_ in labels.ids)
    again, _ = make_demo_dataset(tmp_path / "again", per_class=4, seed=1)
    first = sorted(p.read_bytes() for p in images.rglob("*.jpg"))
    assert first == sorted(p.read_bytes() for p in again.rglob("*.jpg"))  # seeded


def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights -> random
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out-dir", str(out), "--width", "0.0625",
                                      "--per-class", "6"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output and "mean class recall" in result.output
    store = FeatureStore(out / "demo_D.h5")
    assert len(store) == 24 and store.ok.all()
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["mean_class_recall"] <= 1.0
    assert f"{100 * results['mean_class_recall']:.1f}" in result.output
    assert (out / "plots" / "confusion.png").stat().st_size > 1000
    assert np.isfinite(store.descriptors("D", 256)).all()
