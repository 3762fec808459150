"""Images/s of `vggfeat extract` against the naive loop and a per-scale fixed-shape forward,
measured in the same process with the candidates interleaved (ABBA), so a noisy machine's load
falls on all of them alike.

Workloads: 500x375 JPEGs (generated) and real mixed-size Caltech-101 images (--sets). For each:

- end to end: decode workers, engine and crash-safe store (what ``vggfeat extract`` runs; the
  nets are built once, as the naive loop's is) per precision;
- the naive loop: torchvision's vgg16/vgg19 with the same weights, fp32, NCHW, PIL decode,
  one image at a time, the flip as a second forward, a hand-written dense fc6/fc7;
- engine alone on pre-decoded, pre-rescaled images, beside the naive forward alone and a
  per-scale fixed-shape forward (every image warped to one (Q, 4Q/3) shape: ideal batching);
- decode alone (the workers' PIL decode and rescale);
- achieved TFLOP/s (FLOPs counted from the network shapes: convolutions, then fc6/fc7 over the
  valid map) and its fraction of a matmul peak measured in the same run; Winograd convolutions
  do fewer multiplications than counted, so theirs is an effective rate and can pass the peak;
- peak host (and device) memory; device, versions and settings (with --json).

    python benchmarks/bench_extract.py                           # CPU: Net-D, Q=256, 16 images/set
                                                # (the default, and the same without Winograd)
    python benchmarks/bench_extract.py --net E --scales 256,384,512 --n 32 --json out.json
    python benchmarks/bench_extract.py --width 0.25 --n 48       # narrowed net, quicker
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from vggfeat.extract import ExtractConfig, Extractor, _DecodeDataset  # noqa: E402
from vggfeat.pipeline import extract_to_store  # noqa: E402
from vggfeat.store import StoreWriter  # noqa: E402
from vggfeat.versions import software_versions  # noqa: E402
from vggfeat.weights import load_weights  # noqa: E402


def decode_alone(samples, config: ExtractConfig) -> float:
    """Seconds for the loader's workers to decode and rescale ``samples``."""
    import time

    loader = DataLoader(
        _DecodeDataset(samples, config.scales, config.max_side),
        batch_size=4,
        num_workers=config.workers,
        collate_fn=list,
        prefetch_factor=2 if config.workers else None,
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def bench_set(name, paths, weights, args, tmp: Path) -> dict:
    device = torch.device(args.device)
    scales = tuple(int(s) for s in args.scales.split(","))
    precisions = args.precision.split(",")
    configs = {
        p: ExtractConfig(
            scales=scales,
            flip=True,
            device=args.device,
            precision=p.removesuffix("-direct"),
            batch_size=args.batch_size,
            workers=args.workers,
            winograd=not p.endswith("-direct"),
        )  # fmt: skip
        for p in precisions
    }
    extractors = {p: Extractor([weights], c) for p, c in configs.items()}
    resolved = {p: ex.precision for p, ex in extractors.items()}
    tv = C.torchvision_model(weights, device)
    parts = C.split(paths, args.parts)
    samples = [C.samples(part) for part in parts]
    n = len(paths)
    sizes = C.image_sizes(paths)
    flops = C.workload_flops(sizes, [weights.net], args.width, scales, True, 2048)

    # Warm up every path (allocator, oneDNN/cuDNN kernel choice) on two images.
    warm = C.samples(paths[:2])
    for p, c in configs.items():
        extract_to_store(warm, tmp / f"warm_{p}.h5", [weights], c, progress=False)
    C.run_naive(tv, paths[:1], scales, device)

    stores = {}

    def ours(p: str, part: int) -> None:
        # The engine is built once, as in one long run (the naive loop's net is, too); the
        # decode workers, the engine and the crash-safe store run for every part.
        ex = extractors[p]
        writer = StoreWriter(tmp / f"{name}_{p}_{part}.h5", ex.settings(), software_versions())
        ex.run(samples[part], writer.add, progress=False)
        stores[(p, part)] = writer.finalize(order=[i for i, _ in samples[part]])

    naive = {}

    def naive_run(part):
        naive[part] = C.run_naive(tv, parts[part], scales, device)

    runs = {f"vggfeat {p} ({resolved[p]})": functools.partial(ours, p) for p in precisions}
    runs["naive loop"] = naive_run
    e2e = C.interleaved(runs, args.parts)

    # Agreement with the naive loop (fp32 runs only).
    diffs = {}
    for p in precisions:
        diffs[p] = max(
            C.max_relative(
                np.concatenate(
                    [stores[(p, k)].descriptors(weights.net, q) for k in range(args.parts)]
                ),
                np.concatenate([naive[k][q] for k in range(args.parts)]),
            )
            for q in scales
        )

    # Engine alone, on pre-rescaled pixels, interleaved with the naive and fixed-shape forwards.
    pre = [C.rescaled(part, scales, 2048) for part in parts]
    fixed = C.FixedShape(extractors[precisions[0]])
    fixed_inputs = [fixed.inputs(part, scales) for part in parts]

    def engine_part(ex: Extractor, k: int) -> None:
        ex.describe_scaled(pre[k])

    engine_runs = {
        f"engine {p} ({resolved[p]})": functools.partial(engine_part, ex)
        for p, ex in extractors.items()
    }
    engine_runs["naive forward"] = lambda k: C.run_naive_engine(tv, pre[k], device)
    engine_runs[f"fixed-shape forward ({resolved[precisions[0]]})"] = lambda k: fixed.run(
        fixed_inputs[k]
    )
    engine = C.interleaved(engine_runs, args.parts)
    decode_s = decode_alone([s for part in samples for s in part], configs[precisions[0]])

    rows = {**e2e, **engine}
    naive_e2e, naive_engine = e2e["naive loop"], engine["naive forward"]
    result = {
        "set": name,
        "images": n,
        "gflop_per_image": flops / n / 1e9,
        "decode_images_per_s": n / decode_s,
        "max_relative_difference_vs_naive": diffs,
        "runs": {},
    }
    print(f"\n{name}: {n} images, {flops / n / 1e9:.1f} GFLOP/image (Q {list(scales)}, flips), "
          f"decode alone {n / decode_s:.1f} img/s ({args.workers} workers)")  # fmt: skip
    print(f"{'run':<40}{'seconds':>9}{'img/s':>8}{'TFLOP/s':>9}{'vs naive':>9}"
          f"{'CPU s':>9}{'vs naive':>9}")  # fmt: skip
    for key, t in rows.items():
        base = naive_e2e if key in e2e else naive_engine
        seconds = t["seconds"]
        tflops = flops / seconds / 1e12
        if key.startswith("fixed"):
            tflops = float("nan")  # other pixel counts; the img/s compare
        result["runs"][key] = {
            **t,
            "images_per_s": n / seconds,
            "tflop_per_s": tflops,
            "speedup_vs_naive": base["seconds"] / seconds,
            "cpu_speedup_vs_naive": base["cpu_seconds"] / t["cpu_seconds"],
        }
        print(f"{key:<40}{seconds:>9.2f}{n / seconds:>8.3f}{tflops:>9.4f}"
              f"{base['seconds'] / seconds:>8.2f}x{t['cpu_seconds']:>9.1f}"
              f"{base['cpu_seconds'] / t['cpu_seconds']:>8.2f}x")  # fmt: skip
    for p, d in diffs.items():
        print(f"max relative descriptor difference, vggfeat {p} vs naive fp32: {d:.2e}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="images per set")
    parser.add_argument("--sets", default="uniform,caltech", help="uniform (500x375), caltech")
    parser.add_argument("--caltech-root", default=None)
    parser.add_argument("--net", default="D")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (< 1: quick)")
    parser.add_argument("--scales", default="256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--precision",
        default="auto,auto-direct",
        help="comma-separated: auto (the default), fp32, bf16; '-direct': no Winograd",
    )
    parser.add_argument("--parts", type=int, default=4, help="interleaved parts (ABBA...)")
    parser.add_argument("--json", default=None, help="write the results as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    weights = load_weights("random", args.net, width=args.width)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = C.matmul_peak(device, peak_dtype, 8192 if device.type == "cuda" else 2048)
    record = C.environment(device, vars(args))
    record["matmul_peak_tflop_per_s"] = {str(peak_dtype): peak}
    print(f"device: {record['device']}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; net {args.net} "
          f"width {args.width}, scales {args.scales}, flips on; matmul peak ({peak_dtype}) "
          f"{peak:.3f} TFLOP/s")  # fmt: skip
    record["sets"] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.sets.split(","):
            paths = C.image_set(name, args.n, tmp, args.caltech_root)
            result = bench_set(name, paths, weights, args, tmp)
            for run in result["runs"].values():
                run["fraction_of_matmul_peak"] = run["tflop_per_s"] / peak
            record["sets"].append(result)
    record["peak_host_memory_mib"] = C.peak_host_memory_mib()
    record["peak_device_memory_mib"] = C.peak_device_memory_mib(device)
    print(f"peak host memory: {record['peak_host_memory_mib']}")
    C.write_json(args.json, record)


if __name__ == "__main__":
    main()
