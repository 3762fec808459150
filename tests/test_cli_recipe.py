"""``vggfeat recipe``: list, and runs end to end on tiny VOC and Caltech trees (narrow random
nets, one small scale), splits written and reused, server files, wrong roots."""

import json
import math
import shutil

import pytest
from _voc_data import CLASSES, write_caltech, write_voc
from click.testing import CliRunner
from conftest import TEST_WIDTH

from vggfeat.cli import cli
from vggfeat.datasets.voc import VOC_ACTIONS
from vggfeat.labels import read_id_list
from vggfeat.recipes import RECIPES, variants

FAST = ["--weights", "random", "--width", str(TEST_WIDTH), "--scales", "224", "--workers", "0",
        "--device", "cpu", "-q"]  # fmt: skip


def run(*args, ok=True):
    result = CliRunner().invoke(cli, ["recipe", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_variants_and_the_papers_table_12():
    action = RECIPES["voc2012-action"]
    names = [v.name for v in variants(action, ["D", "E"])]
    assert names == ["D image", "D image+box", "E image", "E image+box", "D&E image",
                     "D&E image+box"]  # fmt: skip
    assert [action.paper.get(n, "-") for n in names][-2:] == ["79.2", "84.0"]
    assert [v.name for v in variants(RECIPES["voc2007"], ["D", "E"])] == ["D", "E", "D&E"]


def test_list_names_every_recipe_with_its_protocol_in_one_line():
    lines = run("list").output.splitlines()
    assert [line.split()[0] for line in lines] == [
        "voc2007", "voc2012", "caltech101", "caltech256", "voc2012-action",
    ]  # fmt: skip
    assert "30 train / up to 50 test" in lines[2] and "stacked" in lines[2]
    assert "comp10" in lines[4] and "comp2" in lines[1]


@pytest.fixture(scope="module")
def caltech_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caltech")
    root = write_caltech(tmp / "101_ObjectCategories")
    work = tmp / "work"
    out = run("run", "caltech101", "--root", root, "--workdir", work, "--nets", "D", *FAST)
    return root, work, out.output


def test_caltech_run_end_to_end(caltech_run):
    root, work, output = caltech_run
    results = json.loads((work / "results.json").read_text())
    assert [v["variant"] for v in results["variants"]] == ["D"]
    assert results["variants"][0]["paper"] == RECIPES["caltech101"].paper["D"]
    for v in results["variants"]:
        assert len(v["splits"]) == 3 and all(0 <= x <= 100 for x in v["values"])
        assert [s["n_train"] for s in v["splits"]] == [90, 90, 90]
        assert [s["n_test"] for s in v["splits"]] == [6, 6, 6]
        assert v["ours"] == f"{sum(v['values']) / 3:.1f} ± " + v["ours"].split(" ± ")[1]
    assert set(results["seconds"]) == {"index", "extract", "svm D"}
    assert results["extracted"] == 96 and results["kept_from_store"] == 0
    # the table says plainly how the run differs from the paper
    assert "NOT A REPRODUCTION" in output and "91.8 ± 1.0" in output
    assert "random weights" in output and "3 classes, not the paper's 102" in output
    assert "scales: Q 224" in output and "stage times: index" in output
    assert (work / "table.txt").read_text().strip() in output
    assert (work / "plots" / "D_seed2" / "confusion.png").is_file()
    for seed in range(3):
        train = read_id_list(work / "splits" / f"train_seed{seed}.txt")
        test = read_id_list(work / "splits" / f"test_seed{seed}.txt")
        assert len(train) == 90 and len(test) == 6 and not set(train) & set(test)
        assert all((root / i).is_file() for i in train + test)


def test_splits_are_reused_exactly(caltech_run, tmp_path):
    root, work, _ = caltech_run
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(work / "features_D.h5", again)  # its store is reused
    fast = [*FAST, "--nets", "D", "--Cs", "1"]  # one C: no selection, quick fits
    run("run", "caltech101", "--root", root, "--workdir", again, *fast)
    before = json.loads((again / "results.json").read_text())
    assert before["extracted"] == 0 and before["kept_from_store"] == 96  # resumed, not redone
    assert "C chosen from 1, not the full grid" in (again / "table.txt").read_text()
    splits = tmp_path / "splits"
    shutil.copytree(again / "splits", splits)
    for seed in range(3):  # the draw is deterministic: the same as the first run's
        for part in ("train", "test"):
            name = f"{part}_seed{seed}.txt"
            assert (splits / name).read_text() == (work / "splits" / name).read_text()
    run("run", "caltech101", "--root", root, "--workdir", again, "--splits", splits, *fast)
    after = json.loads((again / "results.json").read_text())
    assert after["variants"][0]["values"] == before["variants"][0]["values"]
    # the files are what is used: a training image taken out is left out of that split
    ids = read_id_list(splits / "train_seed1.txt")
    (splits / "train_seed1.txt").write_text("".join(f"{i}\n" for i in ids[1:]))
    run("run", "caltech101", "--root", root, "--workdir", again, "--splits", splits, *fast)
    changed = json.loads((again / "results.json").read_text())
    assert [s["n_train"] for s in changed["variants"][0]["splits"]] == [90, 89, 90]
    assert read_id_list(again / "splits" / "train_seed1.txt") == ids[1:]
    (splits / "test_seed2.txt").unlink()
    bad = run("run", "caltech101", "--root", root, "--workdir", again, "--splits", splits,
              *fast, ok=False)  # fmt: skip
    assert bad.exit_code == 1 and "lacks test_seed2.txt" in bad.output
    other = run("run", "caltech101", "--root", root, "--workdir", again, "--nets", "D",
                *FAST[:4], "--scales", "256", *FAST[6:], ok=False)  # fmt: skip
    assert "was made with other settings" in other.output
    assert "another --workdir" in other.output


def test_wrong_root_says_what_it_expected(tmp_path):
    (tmp_path / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    result = run("run", "voc2007", "--root", tmp_path / "VOCdevkit", *FAST, ok=False)
    assert result.exit_code == 1
    assert "no JPEGImages/ under" in result.output and "VOC2007: give that folder" in result.output
    (tmp_path / "c" / "101_ObjectCategories" / "x").mkdir(parents=True)
    result = run("run", "caltech101", "--root", tmp_path / "c", *FAST, ok=False)
    assert "no class folders under" in result.output and "101_ObjectCategories" in result.output
    assert "Unknown recipe" in run("run", "voc2099", "--root", tmp_path, ok=False).output


def test_voc2012_scores_val_and_writes_comp2_files(tmp_path):
    root = write_voc(tmp_path / "VOC2012")
    work = tmp_path / "work"
    output = run("run", "voc2012", "--root", root, "--workdir", work, "--nets", "D", *FAST).output
    results = json.loads((work / "results.json").read_text())
    (variant,) = results["variants"]
    assert variant["paper"] == "89.0" and variant["splits"][0]["split"] == "val"
    assert variant["splits"][0]["ap_method"] == "area"
    assert variant["splits"][0]["per_class"][0]["difficult"] == 1  # ignored at test
    assert "scored on val" in output
    test_ids = (root / "ImageSets/Main/test.txt").read_text().split()
    assert read_id_list(work / "splits" / "test_submission.txt") == test_ids
    assert len(read_id_list(work / "splits" / "train_submission.txt")) == 32  # trainval
    assert len(results["server_files"]) == len(CLASSES)
    for cls in CLASSES:
        lines = (work / f"results/VOC2012/Main/comp2_cls_test_{cls}.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == test_ids
        assert all(len(line.split()) == 2 and math.isfinite(float(line.split()[1]))
                   for line in lines)  # fmt: skip


def test_action_recipe_stacks_box_and_writes_comp10_files(tmp_path):
    root = write_voc(tmp_path / "VOC2012", degenerate="2012_train_004")
    work = tmp_path / "work"
    output = run("run", "voc2012-action", "--root", root, "--workdir", work, "--nets", "D",
                 *FAST).output  # fmt: skip
    results = json.loads((work / "results.json").read_text())
    assert [v["variant"] for v in results["variants"]] == ["D image", "D image+box"]
    assert "scored on val" in output and "D image+box" in output
    # the degenerate box is a failed region entry, left out of training with its reason
    (failed,) = results["failed"]
    assert failed["id"] == "2012_train_004.jpg#2" and "degenerate box" in failed["reason"]
    split = results["variants"][1]["splits"][0]
    assert split["n_train"] == 19 and split["left_out"] == 1 and split["n_test"] == 12
    assert [c["class"] for c in split["per_class"]] == list(VOC_ACTIONS)
    # the box descriptor is stacked after the image's: twice the width
    assert results["samples"] == 38 + 38  # every image and every person box
    lines = (work / "results/VOC2012/Action/comp10_action_test_running.txt").read_text()
    rows = [line.split() for line in lines.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [(f"2012_test_{i:03d}", "2") for i in range(6)]
    assert len(results["server_files"]) == len(VOC_ACTIONS)
