#!/usr/bin/env python
"""Transfer study: what the demo net's training buys on classes it never saw.

On every held-out "target" class of Caltech-101 (vggfeat/data/target_classes.txt), with the
demo net (--weights demo), the Caltech protocol: 30 training and up to 50 test images per class,
3 random splits, C chosen per class on a 20% holdout of the training images, mean class recall
(mean ± std over the splits) for

  (a) a single 224 centre crop (smallest side 256, no flip), fc7;
  (b) dense, Q = 256, with flips;
  (c) dense, Q in {256, 384, 512}, stacked, with flips;
  (d) the same three scales, averaged;
  (e) (c) with random weights of the same net.

Everything goes through the library: descriptors into feature stores (extract_to_store), design
matrices (features.design_matrix), SVMClassifier, the Caltech split (labels.caltech_split).

    python benchmarks/transfer_caltech.py CALTECH_101_DIR [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vggfeat.demo import DATA_DIR
from vggfeat.extract import ExtractConfig
from vggfeat.features import FeatureSpec, design_matrix
from vggfeat.images import decode_image, rescale
from vggfeat.labels import caltech_split, read_class_folders
from vggfeat.metrics import mean_class_recall
from vggfeat.pipeline import extract_to_store
from vggfeat.store import combine_stores
from vggfeat.svm import DEFAULT_CS, SVMClassifier
from vggfeat.weights import load_weights, read_checkpoint

SCALES = (256, 384, 512)
SPLITS = (0, 1, 2)


def centre_crops(root: Path, ids: list[str], out: Path) -> list[tuple[str, str]]:
    """Lossless 224x224 centre crops of the images rescaled to smallest side 256."""
    samples = []
    for id_ in ids:
        dst = out / (id_ + ".png")
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            pixels = rescale(decode_image(root / id_), 256).pixels
            h, w = pixels.shape[:2]
            top, left = (h - 224) // 2, (w - 224) // 2
            Image.fromarray(pixels[top : top + 224, left : left + 224]).save(dst)
        samples.append((id_, str(dst)))
    return samples


def combine_shards(path: Path) -> None:
    """Copy the shard stores of ``path`` (and ``path`` itself, if any) into ``path``."""
    shards = sorted(path.parent.glob(f"{path.stem}-*of*.h5"))
    if not shards:
        return
    sources = ([path] if path.exists() else []) + shards
    combined = path.with_suffix(".combined.h5")
    combine_stores(combined, sources)
    combined.replace(path)
    for shard in shards:
        shard.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caltech", type=Path, help="101_ObjectCategories folder")
    parser.add_argument("--work", type=Path, default=Path("transfer_work"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--only",
        choices=["demo_dense", "random_dense", "demo_crop"],
        help="Only run this extraction (to run them in parallel), then stop.",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="With --only: extract every N-th image from the I-th (0-based) into its own "
        "store; a full run combines the shards first.",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    target = (DATA_DIR / "target_classes.txt").read_text().split()
    labels = read_class_folders(args.caltech, classes=target)
    draws = {s: caltech_split(labels, 30, 50, seed=s) for s in SPLITS}
    needed = sorted({i for train, test in draws.values() for i in train + test})
    samples = [(i, str(args.caltech / i)) for i in needed]
    print(f"{len(labels.classes)} target classes, {len(needed)} images in the 3 splits", flush=True)

    demo = load_weights("demo", "D")
    width = float(read_checkpoint("demo")[1]["width"])
    random = load_weights("random", "D", seed=0, width=width)
    dense = ExtractConfig(scales=SCALES, flip=True, workers=args.workers, device="cpu")
    single = ExtractConfig(scales=(224,), flip=False, workers=args.workers, device="cpu")
    stores, seconds = {}, {}
    jobs = [
        ("demo_dense", lambda: samples, demo, dense),
        ("random_dense", lambda: samples, random, dense),
        (
            "demo_crop",
            lambda: centre_crops(args.caltech, needed, args.work / "crops"),
            demo,
            single,
        ),
    ]
    for name, items, weights, config in jobs:
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        path = args.work / f"{name}.h5"
        todo = items()
        if args.shard:
            i, n = (int(v) for v in args.shard.split("/"))
            path, todo = args.work / f"{name}-{i}of{n}.h5", todo[i::n]
        else:
            combine_shards(path)
        result = extract_to_store(todo, path, [weights], config)
        stores[name], seconds[name] = result.store, time.perf_counter() - start
        print(f"{name}: {len(result.store)} images, {seconds[name]:.0f} s", flush=True)
    if args.only:
        return

    variants = {
        "(a) single 224 centre crop, fc7": ("demo_crop", FeatureSpec(("D",), (224,))),
        "(b) dense Q=256, flips": ("demo_dense", FeatureSpec(("D",), (256,))),
        "(c) dense Q=256,384,512 stacked, flips": ("demo_dense", FeatureSpec(("D",), SCALES)),
        "(d) dense Q=256,384,512 averaged, flips": (
            "demo_dense",
            FeatureSpec(("D",), SCALES, aggregate="average"),
        ),
        "(e) as (c), random weights": ("random_dense", FeatureSpec(("D",), SCALES)),
    }
    index = {c: k for k, c in enumerate(labels.classes)}
    by_id = dict(zip(labels.ids, labels.y))
    rows = []
    for name, (store, spec) in variants.items():
        recalls = []
        for s, (train, test) in draws.items():
            x_train = design_matrix([stores[store]], train, spec, role="training")
            x_test = design_matrix([stores[store]], test, spec, role="test")
            y_train = np.array([by_id[i] for i in train])
            y_test = np.array([by_id[i] for i in test])
            clf = SVMClassifier(Cs=DEFAULT_CS, holdout=0.2, random_state=s, device="cpu")
            clf.fit(x_train, y_train)
            recalls.append(mean_class_recall(y_test, clf.predict(x_test)))
        mean, std = 100 * float(np.mean(recalls)), 100 * float(np.std(recalls))
        rows.append(
            {
                "variant": name,
                "mean_class_recall": mean,
                "std": std,
                "per_split": [100 * float(r) for r in recalls],
                "dim": x_train.shape[1],
            }
        )
        print(f"{name:<42} {mean:5.1f} ± {std:.1f} %  ({x_train.shape[1]}-d)", flush=True)
    record = read_checkpoint("demo")[1]["training"]
    summary = {
        "classes": len(index),
        "images": len(needed),
        "protocol": "caltech:30:50, splits 0,1,2, C on a 20% holdout (DEFAULT_CS)",
        "demo_net": {
            "width": width,
            "source_classes": len(record["classes"]),
            "val_top1_error": record["final_val"]["val_top1_error"],
        },
        "extract_seconds": seconds,
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        json.dumps(
            {r["variant"]: f"{r['mean_class_recall']:.1f}±{r['std']:.1f}" for r in rows}, indent=1
        )
    )


if __name__ == "__main__":
    sys.exit(main())
