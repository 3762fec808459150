"""fp32 against bf16 where it matters: descriptor differences and SVM mean class recall on real
Caltech-101 images (the 97 classes of ../shared/data), over 3 random splits.

Per class a fixed pool of images is drawn (--pool, seed 99); each split takes --train of them
for training (C on a 20% holdout, the paper's protocol) and --test of the rest for test. The
pool is extracted once per precision, scales stacked, L2-normalised, as the Caltech recipe does.

bf16 is run for real (autocast) where the device has native bf16. On a CPU without it (AVX2
only: bf16 convolutions fall back to reference code, ~10x slower than fp32) the full set is run
with bf16 *rounding emulated* on fast fp32 kernels: every convolution's input, weights and bias
rounded to bf16, its fp32-accumulated output rounded to bf16, as autocast does; a --check
subset is also run for real, and the emulation's distance to the real bf16 descriptors is
printed beside the bf16-fp32 distance, so the emulation can be trusted (or not).

    python benchmarks/bench_precision.py --width 0.125 --out-dir /tmp/precision --json p.json
    python benchmarks/bench_precision.py --weights demo.pth      # trained weights, if at hand
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from vggfeat.devices import native_bf16, resolve_device  # noqa: E402
from vggfeat.extract import ExtractConfig, _PackedFeatures  # noqa: E402
from vggfeat.features import FeatureSpec, design_matrix  # noqa: E402
from vggfeat.labels import read_class_folders  # noqa: E402
from vggfeat.metrics import mean_class_recall  # noqa: E402
from vggfeat.pipeline import extract_to_store  # noqa: E402
from vggfeat.store import FeatureStore  # noqa: E402
from vggfeat.svm import DEFAULT_CS, SVMClassifier  # noqa: E402
from vggfeat.weights import load_weights  # noqa: E402


def _bf16(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.bfloat16).to(t.dtype)


class Bf16Rounding(TorchFunctionMode):
    """Every convolution and matrix product (fc6, fc7) as bf16 autocast computes it, on fp32
    kernels: inputs, weights and bias rounded to bf16, accumulation in fp32, the output
    rounded to bf16. (The engine's prepacked oneDNN conv stack is switched off meanwhile, so
    that every convolution goes through here.)"""

    def __enter__(self):
        self._build = _PackedFeatures.__dict__["build"]
        _PackedFeatures.build = staticmethod(lambda *args: None)
        return super().__enter__()

    def __exit__(self, *exc):
        _PackedFeatures.build = self._build
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.conv2d, F.conv2d, F.linear):
            args = list(args)
            for i in range(min(3, len(args))):
                args[i] = _bf16(args[i])
            if "bias" in kwargs:
                kwargs["bias"] = _bf16(kwargs["bias"])
            return _bf16(func(*args, **kwargs))
        return func(*args, **kwargs)


def pool_ids(labels, per_class: int, seed: int = 99) -> list[str]:
    """A fixed pool of up to ``per_class`` ids of each class (all of a smaller class)."""
    rng = np.random.default_rng(seed)
    ids = np.array(labels.ids, dtype=object)
    out = []
    for k in range(len(labels.classes)):
        members = sorted(ids[labels.y == k])
        out += [members[i] for i in sorted(rng.permutation(len(members))[:per_class])]
    return out


def split(labels, pool: list[str], n_train: int, n_test: int, seed: int):
    """Per class ``n_train`` training ids and up to ``n_test`` of the rest, from the pool."""
    rng = np.random.default_rng(seed)
    label_of = dict(zip(labels.ids, labels.y))
    train, test = [], []
    for k in range(len(labels.classes)):
        members = [i for i in pool if label_of[i] == k]
        order = [members[j] for j in rng.permutation(len(members))]
        train += order[:n_train]
        test += order[n_train : n_train + n_test]
    return train, test, label_of


def descriptor_differences(a: FeatureStore, b: FeatureStore, net: str) -> dict[str, float]:
    """max |a-b| / max |b| and the mean and max of per-row ||a-b|| / ||b||, over all scales,
    on the images both stores hold."""
    ids = [i for i in a.ids if i in set(b.ids)]
    rows = [(a.descriptors(net, q, ids), b.descriptors(net, q, ids)) for q in a.scales]
    rel = np.concatenate(
        [np.linalg.norm(x - y, axis=1) / np.linalg.norm(y, axis=1) for x, y in rows]
    )
    return {
        "max_abs_over_max": max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in rows),
        "row_relative_mean": float(rel.mean()),
        "row_relative_max": float(rel.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caltech-root", default=str(C.CALTECH / "101_ObjectCategories"))
    parser.add_argument("--weights", default="random")
    parser.add_argument("--net", default="D")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--pool", type=int, default=40, help="images per class extracted")
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--check", type=int, default=24, help="images run in real bf16 too")
    parser.add_argument(
        "--real-bf16", action="store_true", help="run bf16 for real even where it is not native"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default="precision-stores")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scales = tuple(int(s) for s in args.scales.split(","))
    labels = read_class_folders(args.caltech_root)
    pool = pool_ids(labels, args.pool)
    root = Path(args.caltech_root)
    samples = [(i, str(root / i)) for i in pool]
    weights = load_weights(args.weights, args.net, width=args.width)
    real_bf16 = native_bf16(device) or args.real_bf16
    record = C.environment(device, vars(args))
    print(f"device: {record['device']}\n{len(labels.classes)} classes, pool {len(pool)} images, "
          f"net {args.net} width {args.width} ({weights.label}), Q {list(scales)}; bf16 "
          f"{'run for real' if real_bf16 else 'emulated (no native bf16 here)'}")  # fmt: skip

    def extract(name, precision, items, emulate=False):
        # The rounding mode is thread-local: emulated runs keep every batch on this thread.
        config = ExtractConfig(scales=scales, device=str(device), precision=precision,
                               streams=1 if emulate else 0)  # fmt: skip
        start = time.perf_counter()
        with Bf16Rounding() if emulate else contextlib.nullcontext():
            store = extract_to_store(items, out / f"{name}.h5", [weights], config).store
        took = time.perf_counter() - start
        print(f"{name}: {len(items)} images in {took:.0f} s")
        return store, took

    fp32, t32 = extract("fp32", "fp32", samples)
    if real_bf16:
        bf16, t16 = extract("bf16", "bf16", samples)
        check = {}
    else:
        bf16, t16 = extract("bf16-emulated", "fp32", samples, emulate=True)
        few = samples[: args.check]
        real, t_real = extract("bf16-real-check", "bf16", few)
        _, t_few = extract("fp32-check", "fp32", few)
        check = {
            "images": len(few),
            "emulated_vs_real_bf16": descriptor_differences(bf16, real, args.net),
            "fp32_vs_real_bf16": descriptor_differences(fp32, real, args.net),
            "real_bf16_seconds": t_real,
            "fp32_seconds": t_few,
        }
        print(f"check on {len(few)} images: emulated vs real bf16 "
              f"{check['emulated_vs_real_bf16']['row_relative_mean']:.2e} (row-relative mean), "
              f"fp32 vs real bf16 {check['fp32_vs_real_bf16']['row_relative_mean']:.2e}; "
              f"real bf16 took {t_real / t_few:.1f}x the fp32 time here")  # fmt: skip
    diff = descriptor_differences(bf16, fp32, args.net)
    print(f"bf16 vs fp32 descriptors: {diff}")

    spec = FeatureSpec(nets=(args.net,), scales=scales, aggregate="stack")
    recalls = {"fp32": [], "bf16": []}
    for s in range(args.splits):
        train, test, label_of = split(labels, pool, args.train, args.test, s)
        y_train = np.array([label_of[i] for i in train])
        y_test = np.array([label_of[i] for i in test])
        for name, store in (("fp32", fp32), ("bf16", bf16)):
            X_train = design_matrix([store], train, spec)
            X_test = design_matrix([store], test, spec)
            clf = SVMClassifier(Cs=DEFAULT_CS, holdout=0.2, device="cpu").fit(X_train, y_train)
            recalls[name].append(mean_class_recall(y_test, clf.predict(X_test)))
        print(f"split {s}: mean class recall fp32 {recalls['fp32'][-1]:.4f}, "
              f"bf16 {recalls['bf16'][-1]:.4f}")  # fmt: skip
    a, b = np.array(recalls["fp32"]), np.array(recalls["bf16"])
    paired = b - a
    summary = {
        "fp32_mean": a.mean(),
        "fp32_std": a.std(ddof=1) if len(a) > 1 else 0.0,
        "bf16_mean": b.mean(),
        "bf16_std": b.std(ddof=1) if len(b) > 1 else 0.0,
        "difference_mean": paired.mean(),
        "difference_max_abs": np.abs(paired).max(),
    }
    within = summary["difference_max_abs"] <= summary["fp32_std"]
    print(f"mean class recall over {args.splits} splits: fp32 {a.mean():.4f} +- "
          f"{summary['fp32_std']:.4f}, bf16 {b.mean():.4f} +- {summary['bf16_std']:.4f}; "
          f"bf16 - fp32 per split {np.round(paired, 4).tolist()} -> "
          f"{'within' if within else 'NOT within'} split noise")  # fmt: skip
    record.update(
        descriptor_difference=diff,
        emulation_check=check,
        recalls=recalls,
        summary=summary,
        within_split_noise=bool(within),
        seconds={"fp32": t32, "bf16": t16},
    )
    C.write_json(args.json, record)


if __name__ == "__main__":
    main()
