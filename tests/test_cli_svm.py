"""``vggfeat svm fit/eval/predict`` end to end on small separable problems, and every refusal."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from _svm_data import DIM, make_store, store_settings
from click.testing import CliRunner

from vggfeat.cli import cli
from vggfeat.features import FeatureSpec, design_matrix
from vggfeat.labels import caltech_split, read_labels
from vggfeat.metrics import average_precision, mean_class_recall, top_k_error
from vggfeat.svm import load_svm

VOC_CLASSES = ("aeroplane", "bicycle", "bird")
N_VOC = 48  # 32 trainval + 16 test
CALTECH_SIGNAL = 0.6


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["svm", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, *fragments: str) -> str:
    """The error line of a failed run; checks exit code 1, one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def table_values(output: str) -> dict[str, str]:
    """First two columns of the printed result table: row name -> value."""
    rows = {}
    for line in output.splitlines():
        parts = line.rsplit(None, 4) if line.startswith(VOC_CLASSES + ("mAP",)) else None
        if parts:
            rows[parts[0].strip()] = parts[1]
    return rows


# ----------------------------------------------------------------------------- data


def voc_like(folder):
    """Two stores (D in order, E reversed) and a multi-label CSV with difficult pairs.

    Each class adds its own prototype to the descriptors of its positive images: an easy,
    nearly separable problem (test APs 0.8-1, not all 1, so comparisons mean something).
    """
    rng = np.random.default_rng(0)
    ids = [f"img_{i:03d}" for i in range(N_VOC)]
    y = -np.ones((N_VOC, 3), np.int8)
    for i in range(N_VOC):
        y[i, i % 3] = 1
        if i % 4 == 0:
            y[i, (i + 1) % 3] = 1
        if i % 5 == 0 and y[i, (i + 2) % 3] == -1:
            y[i, (i + 2) % 3] = 0  # difficult
    paths = {}
    for net, order in (("D", ids), ("E", ids[::-1])):
        settings = store_settings([net], [256, 384])
        protos = rng.gamma(1.0, 1.0, (3, DIM)) * 0.4
        data = {}
        for q in (256, 384):
            x = rng.gamma(1.0, 1.0, (N_VOC, DIM)) + (y == 1).astype(float) @ protos
            data[net, q] = x[[ids.index(i) for i in order]].astype(np.float32)
        paths[net] = folder / f"voc_{net}.h5"
        make_store(paths[net], order, settings, data=data)
    with open(folder / "voc.csv", "w") as f:
        f.write("id,class,label,split\n")
        for i, id_ in enumerate(ids):
            split = "trainval" if i < 32 else "test"
            for k, cls in enumerate(VOC_CLASSES):
                if y[i, k] != -1 or k == 2:  # missing pairs mean -1; write some explicitly
                    f.write(f"{id_},{cls},{y[i, k]},{split}\n")
    return paths, folder / "voc.csv", ids, y


@pytest.fixture(scope="module")
def voc_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voc")
    paths, labels, ids, y = voc_like(folder)
    return {"folder": folder, "paths": paths, "labels": labels, "ids": ids, "y": y}


@pytest.fixture(scope="module")
def voc(voc_data):
    """voc_data plus a model fitted with C chosen per class by 2-fold CV."""
    model = voc_data["folder"] / "model.h5"
    fit = run("fit", "--features", voc_data["paths"]["D"], "--features", voc_data["paths"]["E"],
              "--scales", "256,384", "--aggregate", "average", "--labels", voc_data["labels"],
              "--train-split", "trainval", "--Cs", "0.1,1,10", "--cv", "2", "--out", model)  # fmt: skip
    return {**voc_data, "model": model, "fit": fit}


@pytest.fixture(scope="module")
def caltech(tmp_path_factory):
    """4 class folders x 10 images, one store (Net-D at 3 scales) and a fitted model."""
    folder = tmp_path_factory.mktemp("caltech")
    root = folder / "101_ObjectCategories"
    classes = ["Faces", "ant", "bass", "yin_yang"]
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(10):
            (root / cls / f"image_{i + 1:04d}.jpg").write_bytes(b"")
    labels = read_labels(root)
    rng = np.random.default_rng(1)
    settings = store_settings(["D"], [256, 384, 512])
    protos = rng.gamma(1.0, 1.0, (4, DIM)) * CALTECH_SIGNAL
    data = {("D", q): (rng.gamma(1.0, 1.0, (40, DIM)) + protos[labels.y]).astype(np.float32)
            for q in (256, 384, 512)}  # fmt: skip
    store = folder / "caltech_D.h5"
    make_store(store, list(labels.ids), settings, data=data)
    model = folder / "model.h5"
    fit = run("fit", "--features", store, "--aggregate", "stack", "--labels", root,
              "--train-split", "caltech:5:5:0", "--Cs", "0.1,1,10", "--holdout", "0.2",
              "--out", model)  # fmt: skip
    return {"folder": folder, "root": root, "store": store, "labels": labels, "model": model,
            "fit": fit}  # fmt: skip


# ----------------------------------------------------------------------------- multi-label


def test_fit_prints_chosen_c_and_records_spec(voc):
    clf, spec = load_svm(voc["model"])
    lines = [line.split() for line in voc["fit"].stdout.splitlines()]
    header = next(line for line in lines if line[:1] == ["class"])
    rows = {
        line[0]: dict(zip(header, line)) for line in lines if line[:1] and line[0] in VOC_CLASSES
    }
    y_train = voc["y"][:32]
    for k, cls in enumerate(VOC_CLASSES):
        assert float(rows[cls]["C"]) == pytest.approx(clf.C_[k], rel=1e-3)
        assert clf.C_[k] in (0.1, 1.0, 10.0)
        assert int(rows[cls]["difficult"]) == int((y_train[:, k] == 0).sum())
        assert int(rows[cls]["pos"]) == int((y_train[:, k] == 1).sum())
    assert spec["features"] == FeatureSpec(("D", "E"), (256, 384), "average").to_dict()
    assert [s["path"] for s in spec["provenance"]["stores"]] == [
        str(voc["paths"]["D"]), str(voc["paths"]["E"])]  # fmt: skip
    info = spec["labels"]
    assert info["classes"] == list(VOC_CLASSES) and info["multilabel"] is True
    assert info["difficult"] == "exclude" and info["train_split"] == "trainval"
    assert info["n_train"] == 32
    assert info["counts"]["bird"]["difficult"] == int((voc["y"][:32, 2] == 0).sum()) > 0
    assert spec["selection"] == {"Cs": [0.1, 1.0, 10.0], "method": "cv", "cv": 2, "holdout": None}


def test_eval_matches_metrics_and_writes_json_and_plots(voc):
    out = voc["folder"] / "eval.json"
    plots = voc["folder"] / "plots"
    result = run("eval", "--model", voc["model"], "--features", voc["paths"]["E"],
                 "--features", voc["paths"]["D"], "--labels", voc["labels"],
                 "--test-split", "test", "--json", out, "--plots", plots)  # fmt: skip
    # The reference: scores straight from the model, AP straight from vggfeat.metrics.
    clf, spec = load_svm(voc["model"])
    test_ids = voc["ids"][32:]
    x = design_matrix(list(voc["paths"].values()), test_ids,
                      FeatureSpec.from_dict(spec["features"]))  # fmt: skip
    scores = clf.decision_function(x)
    y = voc["y"][32:]
    aps = [average_precision(scores[:, k], y[:, k], method="11point") for k in range(3)]

    results = json.loads(out.read_text())
    assert results["ap_method"] == "11point" and results["n_images"] == 16
    assert [c["ap"] for c in results["per_class"]] == pytest.approx(aps, abs=1e-12)
    assert results["mAP"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert results["mAP"] > 0.8  # an easy problem
    assert [c["difficult"] for c in results["per_class"]] == (y == 0).sum(axis=0).tolist()
    # Difficult images are ignored: dropping them by hand gives the same APs.
    for k in range(3):
        keep = y[:, k] != 0
        assert average_precision(scores[keep, k], y[keep, k]) == pytest.approx(aps[k])

    printed = table_values(result.stdout)
    for cls, ap in zip(VOC_CLASSES, aps):
        assert printed[cls] == f"{100 * ap:.1f}"
    assert printed["mAP"] == f"{100 * np.mean(aps):.1f}"
    assert "AP % (11point)" in result.stdout

    from matplotlib.image import imread

    for cls in VOC_CLASSES:
        png = plots / f"pr_{cls}.png"
        assert png.stat().st_size > 5_000
        pixels = imread(png)
        assert pixels.shape[0] > 300 and pixels[..., :3].std() > 0.05

    run("eval", "--model", voc["model"], "--features", voc["paths"]["D"], "--features",
        voc["paths"]["E"], "--labels", voc["labels"], "--test-split", "test", "--ap", "area",
        "--json", out)  # fmt: skip
    results = json.loads(out.read_text())
    assert results["ap_method"] == "area"
    assert [c["ap"] for c in results["per_class"]] == pytest.approx(
        [average_precision(scores[:, k], y[:, k], method="area") for k in range(3)], abs=1e-12
    )


def test_predict_writes_scores_and_labels(voc):
    out = voc["folder"] / "scores.csv"
    ids_file = voc["folder"] / "some_ids.txt"
    ids_file.write_text("img_040\nimg_003\n")
    run("predict", "--model", voc["model"], "--features", voc["paths"]["D"], "--features",
        voc["paths"]["E"], "--ids", ids_file, "--out", out)  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["img_040", "img_003"]
    assert list(rows[0]) == ["id", "score_aeroplane", "score_bicycle", "score_bird", "predicted"]
    clf, spec = load_svm(voc["model"])
    x = design_matrix(list(voc["paths"].values()), ["img_040", "img_003"],
                      FeatureSpec.from_dict(spec["features"]))  # fmt: skip
    scores = clf.decision_function(x)
    for row, s in zip(rows, scores):
        got = [float(row[f"score_{c}"]) for c in VOC_CLASSES]
        np.testing.assert_allclose(got, s, rtol=1e-5, atol=1e-6)
        assert row["predicted"] == ";".join(c for c, v in zip(VOC_CLASSES, s) if v > 0)
    # img_040: 40 % 3 = 1 (bicycle) and 40 % 4 = 0 adds bird.
    assert rows[0]["predicted"] == "bicycle;bird"
    run("predict", "--model", voc["model"], "--features", voc["paths"]["D"], "--features",
        voc["paths"]["E"], "--out", out)  # fmt: skip
    assert len(list(csv.DictReader(out.open()))) == N_VOC  # default: every image


def test_difficult_as_negative_is_recorded_and_changes_training(voc_data):
    model = voc_data["folder"] / "neg.h5"
    run("fit", "--features", voc_data["paths"]["D"], "--features", voc_data["paths"]["E"], "--aggregate",
        "average", "--labels", voc_data["labels"], "--train-split", "trainval", "--difficult",
        "negative", "--C", "1", "--out", model)  # fmt: skip
    clf, spec = load_svm(model)
    assert spec["labels"]["difficult"] == "negative" and spec["selection"]["Cs"] is None
    assert clf.C_.tolist() == [1.0, 1.0, 1.0]
    excluded = voc_data["folder"] / "excl.h5"
    run("fit", "--features", voc_data["paths"]["D"], "--features", voc_data["paths"]["E"], "--aggregate",
        "average", "--labels", voc_data["labels"], "--train-split", "trainval", "--C", "1",
        "--out", excluded)  # fmt: skip
    assert not np.allclose(load_svm(excluded)[0].coef_, clf.coef_)


# ----------------------------------------------------------------------------- multi-class


def test_caltech_fit_eval_confusion(caltech):
    clf, spec = load_svm(caltech["model"])
    assert spec["features"]["aggregate"] == "stack" and spec["features"]["scales"] == [
        256,
        384,
        512,
    ]
    assert spec["selection"]["method"] == "holdout" and spec["selection"]["holdout"] == 0.2
    assert spec["labels"]["n_train"] == 20 and spec["labels"]["multilabel"] is False
    out = caltech["folder"] / "eval.json"
    plots = caltech["folder"] / "plots"
    result = run("eval", "--model", caltech["model"], "--features", caltech["store"], "--labels",
                 caltech["root"], "--test-split", "caltech:5:5:0", "--json", out, "--plots", plots)  # fmt: skip

    labels = caltech["labels"]
    _, test_ids = caltech_split(labels, 5, 5, 0)
    y_true = labels.select(test_ids).y
    x = design_matrix([caltech["store"]], test_ids, FeatureSpec.from_dict(spec["features"]))
    scores = clf.decision_function(x)
    y_pred = np.argmax(scores, axis=1)
    results = json.loads(out.read_text())
    assert results["n_images"] == 20
    assert results["mean_class_recall"] == pytest.approx(mean_class_recall(y_true, y_pred))
    assert results["top1_error"] == pytest.approx(top_k_error(scores, y_true, 1))
    # The key stays top5_error with 4 classes (scripts rely on it): every class is in the top 5.
    assert results["top5_error"] == pytest.approx(top_k_error(scores, y_true, 4)) == 0.0
    assert results["top_k"] == 5 and "top4_error" not in results
    recalls = [c["recall"] for c in results["per_class"]]
    assert np.mean(recalls) == pytest.approx(results["mean_class_recall"])
    assert results["mean_class_recall"] > 0.7
    mcr = f"{100 * results['mean_class_recall']:.1f}"
    assert re.search(rf"^mean class recall +{re.escape(mcr)}$", result.stdout, re.MULTILINE)
    assert "top-1 error" in result.stdout and "top-5 error" in result.stdout
    # C was chosen on a holdout, and the fit table says so.
    assert "holdout AP" in caltech["fit"].stdout and "cv AP" not in caltech["fit"].stdout

    from matplotlib.image import imread

    png = plots / "confusion.png"
    assert png.stat().st_size > 5_000 and imread(png)[..., :3].std() > 0.05

    # Another draw overlaps the training images: refused by id, whatever the split syntax.
    other = run("eval", "--model", caltech["model"], "--features", caltech["store"], "--labels",
                caltech["root"], "--test-split", "caltech:5:5:1", ok=False)  # fmt: skip
    one_line_error(other, "test images were training images of model.h5",
                   "--drop-training-images")  # fmt: skip


# ----------------------------------------------------------------------------- refusals


def fit_args(voc, *extra, labels=None, split="trainval"):
    return ("fit", "--features", voc["paths"]["D"], "--labels", labels or voc["labels"],
            "--train-split", split, "--out", voc["folder"] / "bad.h5", *extra)  # fmt: skip


def test_nan_rows_are_refused(voc_data, tmp_path):
    ids = voc_data["ids"]
    data = {("D", q): np.ones((N_VOC, DIM), np.float32) for q in (256, 384)}
    data["D", 384][5, 0] = np.nan
    make_store(tmp_path / "nan.h5", ids, store_settings(["D"], [256, 384]), data=data)
    result = run("fit", "--features", tmp_path / "nan.h5", "--labels", voc_data["labels"],
                 "--train-split", "trainval", "--out", tmp_path / "m.h5", ok=False)  # fmt: skip
    one_line_error(result, "1 of 32 training images have NaN or inf descriptors in nan.h5",
                   "(net D, Q 384)", "img_005")  # fmt: skip
    assert not (tmp_path / "m.h5").exists()


def test_class_without_positive_is_refused(voc_data, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("id,class,label\nimg_000,cat,1\nimg_001,cat,-1\nimg_001,dog,-1\n"
                      "img_002,dog,0\n")  # fmt: skip
    ids = tmp_path / "ids.txt"
    ids.write_text("img_000\nimg_001\nimg_002\n")
    one_line_error(run(*fit_args(voc_data, labels=labels, split=ids), ok=False),
                   "Class 'dog' has no positive training example")  # fmt: skip


def test_empty_split_is_refused(voc_data, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    one_line_error(run(*fit_args(voc_data, split=empty), ok=False), "train split", "has no images")
    one_line_error(run(*fit_args(voc_data, split="val"), ok=False), "Unknown split 'val'",
                   "splits: test, trainval")  # fmt: skip


def test_unknown_ids_are_refused(voc_data, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("img_000\nimg_999\n")
    one_line_error(run(*fit_args(voc_data, split=ids), ok=False), "1 of 2", "have no labels",
                   "img_999")  # fmt: skip
    make_store(tmp_path / "half.h5", voc_data["ids"][:20], store_settings(["D"], [256, 384]))
    result = run("fit", "--features", tmp_path / "half.h5", "--labels", voc_data["labels"],
                 "--train-split", "trainval", "--out", tmp_path / "m.h5", ok=False)  # fmt: skip
    one_line_error(result, "12 of 32 training ids are missing from half.h5",
                   "(e.g. img_020, img_021, img_022)")  # fmt: skip


def test_mismatched_stores_are_refused(voc_data, tmp_path):
    voc = voc_data
    make_store(tmp_path / "e_noflip.h5", voc["ids"], store_settings(["E"], [256, 384], flip=False))
    result = run("fit", "--features", voc["paths"]["D"], "--features", tmp_path / "e_noflip.h5",
                 "--labels", voc["labels"], "--train-split", "trainval", "--out",
                 tmp_path / "m.h5", ok=False)  # fmt: skip
    one_line_error(result, "Cannot fuse e_noflip.h5 with voc_D.h5: flip differs")


def test_stores_unlike_the_model_are_refused(voc, tmp_path):
    """At eval/predict time: stores whose settings differ from the model's are refused."""
    make_store(tmp_path / "voc_E.h5", voc["ids"], store_settings(["E"], [256, 384], layer="fc6"))
    result = run("eval", "--model", voc["model"], "--features", voc["paths"]["D"], "--features",
                 tmp_path / "voc_E.h5", "--labels", voc["labels"], "--test-split", "test",
                 ok=False)  # fmt: skip
    one_line_error(result, "voc_E.h5 does not match the features model.h5 was fit on",
                   "net E layer is 'fc6' there but 'fc7' in the model")  # fmt: skip
    result = run("predict", "--model", voc["model"], "--features", voc["paths"]["D"],
                 "--out", tmp_path / "s.csv", ok=False)  # fmt: skip
    one_line_error(result, "Net 'E' is in none of the stores")


def test_option_conflicts_are_usage_errors(voc_data):
    for extra in (["--C", "1", "--Cs", "1,2"], ["--Cs", "1", "--cv", "3", "--holdout", "0.2"],
                  ["--cv", "3"], ["--Cs", "0,1"]):  # fmt: skip
        result = run(*fit_args(voc_data, *extra), ok=False)
        one_line_error(result, "svm fit --help'")


def test_real_entry_point_gives_one_line_error(voc_data, tmp_path):
    """The installed CLI path (python -m vggfeat) prints a one-line error, exit status 1."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "vggfeat", "svm", *map(str, fit_args(voc_data, split=empty))],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("Error: The train split")
    assert "Traceback" not in proc.stderr


def test_command_module_imports_nothing_heavy():
    """`vggfeat --help` stays instant: the svm command module imports no numeric library."""
    code = (
        "import sys, vggfeat.commands.svm; "
        "print([m for m in ('numpy', 'h5py', 'sklearn', 'torch', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- issue 11 regressions


def class_folders(root, classes, per_class=8, skip=()):
    """Empty image files in class folders (the labels only need the names); ids as extracted."""
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if (cls, i) not in skip:
                (root / cls / f"image_{i + 1:04d}.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """Class folders 1, 2, 10, cat, dog (8 images each), a store with a prototype per class,
    and a model fit on caltech:5:3:0 with the class names as labels."""
    folder = tmp_path_factory.mktemp("five")
    classes = ["1", "2", "10", "cat", "dog"]
    root = class_folders(folder / "full", classes)
    labels = read_labels(root)
    rng = np.random.default_rng(5)
    protos = rng.gamma(1.0, 1.0, (5, DIM)) * 2.0
    data = {("D", 256): (rng.gamma(1.0, 1.0, (40, DIM)) + protos[labels.y]).astype(np.float32)}
    store = folder / "five_D.h5"
    make_store(store, list(labels.ids), store_settings(["D"], [256]), data=data)
    model = folder / "model.h5"
    run("fit", "--features", store, "--labels", root, "--train-split", "caltech:5:3:0",
        "--C", "1", "--out", model)  # fmt: skip
    return {"folder": folder, "root": root, "labels": labels, "store": store, "model": model}


def eval_json(model, store, labels, split, out, *extra):
    run("eval", "--model", model, "--features", store, "--labels", labels, "--test-split", split,
        "--json", out, *extra)  # fmt: skip
    return json.loads(out.read_text())


def test_caltech_splits_do_not_leak_when_the_label_set_changes(five, tmp_path):
    """Issue 11.1: evaluating on the same folder minus class '1' used to test on 9 training ids."""
    clf, spec = load_svm(five["model"])
    train, test = caltech_split(five["labels"], 5, 3, 0)
    assert sorted(spec["labels"]["train_ids"]) == sorted(train)  # recorded as the store names them
    reduced = class_folders(tmp_path / "reduced", ["2", "10", "cat", "dog"])
    # One image less in class 'cat': its own draw may change, no other class's does.
    (reduced / "cat" / "image_0008.jpg").unlink()
    for cls in ("2", "10", "dog"):
        draw = caltech_split(read_labels(reduced), 5, 3, 0)
        assert [i for i in draw[1] if i.startswith(cls + "/")] == [
            i for i in test if i.startswith(cls + "/")]  # fmt: skip
    # No leak, so no refusal: the per-image ranks keep the old training images out of the test.
    results = eval_json(five["model"], five["store"], reduced, "caltech:5:3:0",
                        tmp_path / "r.json")  # fmt: skip
    reduced_test = caltech_split(read_labels(reduced), 5, 3, 0)[1]
    assert not set(reduced_test) & set(train)
    assert results["n_images"] == len(reduced_test) == 3 + 3 + 3 + 2  # cat has 7 images now
    assert results["per_class"][0] == {"class": "1", "recall": None, "n": 0}


def test_eval_accepts_another_test_size_of_the_same_draw_and_refuses_training_ids(five, tmp_path):
    all_rest = eval_json(five["model"], five["store"], five["root"], "caltech:5:all:0",
                         tmp_path / "a.json")  # fmt: skip
    assert all_rest["n_images"] == 5 * 3  # 8 - 5 per class
    train, _ = caltech_split(five["labels"], 5, 3, 0)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join([train[0], "cat/image_0001.jpg", train[7]]) + "\n")
    result = run("eval", "--model", five["model"], "--features", five["store"], "--labels",
                 five["root"], "--test-split", ids, ok=False)  # fmt: skip
    expected = len({train[0], train[7], "cat/image_0001.jpg"} & set(train))
    one_line_error(result, f"{expected} of 3 test images were training images of model.h5")
    dropped = run("eval", "--model", five["model"], "--features", five["store"], "--labels",
                  five["root"], "--test-split", "caltech:5:3:1", "--drop-training-images")  # fmt: skip
    other_test = caltech_split(five["labels"], 5, 3, 1)[1]
    overlap = len(set(other_test) & set(train))
    assert overlap > 0
    assert f"left out {overlap} test images that were training images" in dropped.stderr


def test_model_files_keep_class_names(five):
    """Issue 11.3: /classes held 0..K-1, so predict returned 1 for an image of class 10."""
    clf, spec = load_svm(five["model"])
    assert clf.classes_.tolist() == ["1", "10", "2", "cat", "dog"] == spec["labels"]["classes"]
    train, _ = caltech_split(five["labels"], 5, 3, 0)
    tens = [i for i in train if i.startswith("10/")]
    x = design_matrix([five["store"]], tens, FeatureSpec.from_dict(spec["features"]))
    assert clf.predict(x).tolist() == ["10"] * len(tens)


def voc_folder(folder, ids, y, cut=None, drop=None):
    """VOC ImageSets/Main files for voc_like's labels: trainval = first 32 ids, test = the rest."""
    main = folder / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for k, cls in enumerate(VOC_CLASSES):
        for split, rows in (("trainval", range(32)), ("test", range(32, N_VOC))):
            if (cls, split) == drop:
                continue
            lines = [f"{ids[i]} {y[i, k]:2d}\n" for i in rows]
            if (cls, split) == cut:
                lines = lines[:11]
            (main / f"{cls}_{split}.txt").write_text("".join(lines))
    return main


def test_voc_folders_score_like_the_csv_and_refuse_partial_class_files(voc, tmp_path):
    """Issue 11.2: a truncated class file read the missing pairs as negatives (AP 93 -> 27)."""
    feats = ["--features", voc["paths"]["D"], "--features", voc["paths"]["E"]]
    main = voc_folder(tmp_path / "full", voc["ids"], voc["y"])
    from_csv = eval_json(voc["model"], voc["paths"]["D"], voc["labels"], "test",
                         tmp_path / "c.json", *feats[2:])  # fmt: skip
    from_voc = eval_json(voc["model"], voc["paths"]["D"], main, "test", tmp_path / "v.json",
                         *feats[2:])  # fmt: skip
    assert from_voc["per_class"] == from_csv["per_class"]
    cut = voc_folder(tmp_path / "cut", voc["ids"], voc["y"], cut=("bird", "test"))
    result = run("eval", "--model", voc["model"], *feats, "--labels", cut, "--test-split", "test",
                 ok=False)  # fmt: skip
    one_line_error(result, "bird_test.txt lists 11 images but the 'test' class files together "
                   "list 16: 5 are missing from it")  # fmt: skip
    gone = voc_folder(tmp_path / "gone", voc["ids"], voc["y"], drop=("bird", "test"))
    result = run("eval", "--model", voc["model"], *feats, "--labels", gone, "--test-split", "test",
                 ok=False)  # fmt: skip
    one_line_error(result, "No labels for class bird for 16 of 16 test images")


def test_ids_with_spaces_are_whole_lines(tmp_path):
    """Issue 11.4: predict --ids scored 'x/photo.png' for 'x/photo - Copy.png'."""
    ids = [f"golden retriever/img {i}.png" for i in range(6)] + [
        f"x/photo{s}.png" for s in ("", " - Copy", " 2", " 3", " 4", " 5")]  # fmt: skip
    rng = np.random.default_rng(7)
    data = {("D", 256): rng.gamma(1.0, 1.0, (12, DIM)).astype(np.float32)}
    data["D", 256][6:] += 3 * rng.random(DIM).astype(np.float32)
    make_store(tmp_path / "s.h5", ids, store_settings(["D"], [256]), data=data)
    labels = tmp_path / "labels.csv"  # a filename,label header (was read as a data row)
    labels.write_text("filename,label\n" + "".join(
        f"{i},{'dog' if i.startswith('golden') else 'photo'}\n" for i in ids))  # fmt: skip
    run("fit", "--features", tmp_path / "s.h5", "--labels", labels, "--train-split",
        write_ids(tmp_path / "train.txt", ids), "--C", "1", "--out", tmp_path / "m.h5")  # fmt: skip
    wanted = write_ids(tmp_path / "want.txt", ["x/photo - Copy.png", "golden retriever/img 0.png"])
    run("predict", "--model", tmp_path / "m.h5", "--features", tmp_path / "s.h5", "--ids", wanted,
        "--out", tmp_path / "p.csv")  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["id"] for r in rows] == ["x/photo - Copy.png", "golden retriever/img 0.png"]
    clf, spec = load_svm(tmp_path / "m.h5")
    x = design_matrix([tmp_path / "s.h5"], [r["id"] for r in rows],
                      FeatureSpec.from_dict(spec["features"]))  # fmt: skip
    scores = clf.class_scores(x)
    got = [[float(r["score_dog"]), float(r["score_photo"])] for r in rows]
    np.testing.assert_allclose(got, scores, rtol=1e-5, atol=1e-6)
    assert [r["predicted"] for r in rows] == ["photo", "dog"]


def write_ids(path, ids):
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def test_one_value_grid_records_no_selection(voc_data, tmp_path):
    result = run(*fit_args(voc_data, "--Cs", "1,1,1", "--cv", "2"))
    clf, spec = load_svm(voc_data["folder"] / "bad.h5")
    assert spec["selection"] == {"Cs": [1.0, 1.0, 1.0], "method": None, "cv": None,
                                 "holdout": None}  # fmt: skip
    assert clf.C_.tolist() == [1.0] * 3 and np.isnan(clf.cv_scores_).all()
    assert "AP" not in result.stdout and "nan" not in result.stdout
    assert "no validation runs" in result.stderr


def test_predict_skips_failed_images_the_same_in_any_store_order(voc_data, tmp_path):
    """An image failed in one of two stores used to be skipped or fatal by store order."""
    model = tmp_path / "m.h5"
    run("fit", "--features", voc_data["paths"]["D"], "--features", voc_data["paths"]["E"],
        "--labels", voc_data["labels"], "--train-split", "trainval", "--C", "1", "--out", model)  # fmt: skip
    ids = voc_data["ids"]
    make_store(tmp_path / "E.h5", ids, store_settings(["E"], [256, 384]),
               failed={"img_007": "truncated"})  # fmt: skip
    outputs = []
    for order in ([voc_data["paths"]["D"], tmp_path / "E.h5"],
                  [tmp_path / "E.h5", voc_data["paths"]["D"]]):  # fmt: skip
        out = tmp_path / "p.csv"
        result = run("predict", "--model", model, "--features", order[0], "--features", order[1],
                     "--out", out)  # fmt: skip
        assert "skipped 1 images failed extraction in E.h5" in result.stderr
        outputs.append(sorted(r["id"] for r in csv.DictReader(out.open())))
    assert outputs[0] == outputs[1] == sorted(set(ids) - {"img_007"})


def test_difficult_as_negative_is_counted_as_negative(voc_data, tmp_path):
    base = ["fit", "--features", voc_data["paths"]["D"], "--labels", voc_data["labels"],
            "--train-split", "trainval", "--C", "1"]  # fmt: skip
    shown = run(*base, "--out", tmp_path / "a.h5").stdout
    negative = run(*base, "--difficult", "negative", "--out", tmp_path / "b.h5").stdout
    y = voc_data["y"][:32]
    assert "difficult" in shown.splitlines()[0] and "difficult" not in negative.splitlines()[0]
    for k, cls in enumerate(VOC_CLASSES):
        row = next(line.split() for line in negative.splitlines() if line.startswith(cls))
        assert row[1:3] == [str(int((y[:, k] == 1).sum())), str(int((y[:, k] != 1).sum()))]
    assert load_svm(tmp_path / "b.h5")[1]["labels"]["counts"]["bird"]["difficult"] == 0


def test_out_folder_is_made_and_a_folder_out_refused_before_fitting(voc_data, tmp_path):
    out = tmp_path / "new" / "deeper" / "m.h5"
    run(*fit_args(voc_data, "--C", "1")[:-2], "--out", out)  # fit_args ends with --out bad.h5
    assert load_svm(out)[0].coef_.shape[0] == 3
    (tmp_path / "dir.h5").mkdir()
    result = run(*fit_args(voc_data, "--C", "1")[:-2], "--out", tmp_path / "dir.h5", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "fitting SVMs" not in result.output


def test_convergence_is_one_warning_line_even_quiet(voc_data, tmp_path):
    """ConvergenceWarning leaked raw to stderr (source lines of commands/svm.py and click)."""
    args = ["svm", "fit", "--features", str(voc_data["paths"]["D"]), "--labels",
            str(voc_data["labels"]), "--train-split", "trainval", "--Cs", "10,100", "--cv", "2",
            "--max-iter", "1", "-q", "--out", str(tmp_path / "m.h5")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "vggfeat", *args], check=False,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: ") and "--max-iter" in lines[0] and "--tol" in lines[0]
    assert "did not converge" in lines[0]
    assert (tmp_path / "m.h5").is_file()


def test_version_1_models_still_evaluate(voc, tmp_path):
    """A model of spec/format version 1 (class indices, no training ids) evaluates, saying so."""
    import shutil

    import h5py

    old = tmp_path / "old.h5"
    shutil.copy(voc["model"], old)
    with h5py.File(old, "a") as f:
        spec = json.loads(f.attrs["spec"])
        del spec["labels"]["train_ids"]
        spec["format_version"] = 1
        f.attrs["spec"] = json.dumps(spec)
        f.attrs["format_version"] = 1
        del f.attrs["label_format"], f.attrs["target_dtype"], f["classes"]
        ds = f.create_dataset("classes", data=["0", "1", "2"], dtype=h5py.string_dtype("utf-8"))
        ds.attrs["kind"], ds.attrs["dtype"] = "int", "<i8"
    args = ["--features", voc["paths"]["D"], "--features", voc["paths"]["E"], "--labels",
            voc["labels"], "--test-split", "test"]  # fmt: skip
    new = run("eval", "--model", voc["model"], *args)
    result = run("eval", "--model", old, *args)
    assert result.stdout == new.stdout
    assert "warning: old.h5 is a version-1 SVM model file" in result.stderr
    assert "warning: old.h5 records no training images" in result.stderr
    with h5py.File(old, "a") as f:  # a Caltech draw of version 1 cannot be reproduced
        spec["labels"]["train_split"] = "caltech:5:5:0"
        f.attrs["spec"] = json.dumps(spec)
    one_line_error(run("eval", "--model", old, *args, ok=False), "former Caltech split")
