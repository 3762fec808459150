"""The GPU benchmark, in one command: Net-E, Q in {256, 384, 512}, flips, 500x375 JPEGs.

    python benchmarks/bench_gpu.py                       # on the GPU; writes bench_gpu.json
    python benchmarks/bench_gpu.py --sets uniform,caltech --n 1024
    python benchmarks/bench_gpu.py --smoke               # every path on the CPU, tiny net, 1 min

It prints and records (JSON, with device, versions and settings):

- the measured dense bf16 matmul peak (and TF32/fp32 for reference);
- end to end (decode workers, engine, crash-safe store): images/s, achieved TFLOP/s (FLOPs
  counted from the network shapes: convolutions, then fc6/fc7 over the valid map) and its
  fraction of the bf16 peak, for the default settings, with --decode device and with
  --compile; the goal is >= 50% of the peak and >= 10x the naive loop;
- the engine alone on pre-decoded images in host memory, and decode alone (CPU workers, and
  nvJPEG on the device), so that one can see whether the GPU waits on the CPU;
- each step of the fast path on a fixed-shape batch: fp32 NCHW -> bf16 autocast ->
  channels_last -> cuDNN autotuning -> torch.compile;
- the baselines: the naive loop (torchvision weights, fp32, NCHW, PIL decode, one image at a
  time, the flip a second forward; on --naive-n images) and the per-scale fixed-shape forward;
- peak host memory (this process and its decode workers) and peak device memory.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_extract import decode_alone  # noqa: E402

from vggfeat.devices import native_bf16, resolve_device  # noqa: E402
from vggfeat.extract import ExtractConfig, Extractor  # noqa: E402
from vggfeat.pipeline import extract_to_store  # noqa: E402
from vggfeat.weights import load_weights  # noqa: E402


def timed(fn, device: torch.device) -> float:
    C.sync(device)
    start = time.perf_counter()
    fn()
    C.sync(device)
    return time.perf_counter() - start


def decode_on_device_alone(paths, config: ExtractConfig, device: torch.device) -> float:
    """Seconds to read, decode (nvJPEG) and rescale ``paths`` on the device, in windows."""
    from vggfeat.devdecode import decode_on_device, read_encoded, rescale_on_device

    def run():
        for start in range(0, len(paths), 256):
            items = [read_encoded(i, p.name, str(p)) for i, p in
                     enumerate(paths[start : start + 256])]  # fmt: skip
            for image in decode_on_device(items, device):
                for q in config.scales:
                    rescale_on_device(image, q, config.max_side)

    return timed(run, device)


def fast_path_steps(weights, device, batch: int, shape: tuple[int, int], reps: int) -> dict:
    """Images/s of the dense forward on one fixed-shape batch (image + flip per image), adding
    one step of the fast path at a time."""
    results = {}
    x8 = torch.randint(0, 256, (2 * batch, 3, *shape), dtype=torch.uint8, device=device)
    preprocess = weights.preprocess
    steps = [
        ("fp32 (TF32 off), NCHW", torch.float32, False, False, False),
        ("+ bf16 autocast", torch.bfloat16, False, False, False),
        ("+ channels_last", torch.bfloat16, True, False, False),
        ("+ cuDNN autotuning (cudnn.benchmark)", torch.bfloat16, True, True, False),
        ("+ torch.compile", torch.bfloat16, True, True, True),
    ]
    cuda = device.type == "cuda"

    def forward(run, dtype, fmt) -> None:
        amp = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.inference_mode(), amp:
            for _ in range(reps):
                run(preprocess.normalize(x8).contiguous(memory_format=fmt), layer="fc7")

    for name, dtype, channels_last, autotune, compiled in steps:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = C.dense_model(weights, device).to(memory_format=fmt)
        run = torch.compile(model) if compiled else model
        if cuda:
            torch.backends.cudnn.benchmark = autotune
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        forward(run, dtype, fmt)  # warm-up: autotuning, compilation
        seconds = timed(functools.partial(forward, run, dtype, fmt), device)
        results[name] = batch * reps / seconds
        print(f"  {name:<44}{batch * reps / seconds:>10.1f} img/s")
        del model, run
    if cuda:
        torch.backends.cudnn.benchmark = True
    return results


def bench_set(name, paths, weights, args, device, peak: float, tmp: Path) -> dict:
    """Every measurement of one image set; prints as it goes."""
    scales = tuple(int(s) for s in args.scales.split(","))
    samples = C.samples(paths)
    n = len(paths)
    flops = C.workload_flops(C.image_sizes(paths), [args.net], args.width, scales, True, 2048)
    print(f"\n{name}: {n} images, {flops / n / 1e9:.0f} GFLOP/image (Net-{args.net}, "
          f"Q {list(scales)}, flips)")  # fmt: skip
    result = {"set": name, "images": n, "gflop_per_image": flops / n / 1e9, "runs": {}}

    def report(key: str, seconds: float, images: int = n, work: int = flops) -> None:
        tflops = work / seconds / 1e12
        result["runs"][key] = {
            "seconds": seconds,
            "images_per_s": images / seconds,
            "tflop_per_s": tflops,
            "fraction_of_matmul_peak": tflops / peak,
        }
        print(f"  {key:<44}{images / seconds:>10.1f} img/s{tflops:>9.2f} TFLOP/s"
              f"{tflops / peak:>8.1%} of peak")  # fmt: skip

    def config(**over) -> ExtractConfig:
        base = dict(scales=scales, device=str(device), precision=args.precision,
                    batch_size=args.batch_size, workers=args.workers)  # fmt: skip
        return ExtractConfig(**{**base, **over})

    # Decode alone: can the CPU feed the GPU?
    seconds = decode_alone(samples, config())
    result["decode_cpu_workers_images_per_s"] = n / seconds
    label = f"decode alone, {args.workers} CPU workers (PIL)"
    print(f"  {label:<44}{n / seconds:>10.1f} img/s")
    if device.type == "cuda":
        seconds = decode_on_device_alone(paths, config(), device)
        result["decode_device_images_per_s"] = n / seconds
        print(f"  {'decode alone, on the device (nvJPEG)':<44}{n / seconds:>10.1f} img/s")

    # End to end, store included.
    variants = {"end to end, default settings": config()}
    if device.type == "cuda":
        variants["end to end, --decode device"] = config(decode="device")
        variants["end to end, --compile"] = config(compile=True)
    for key, cfg in variants.items():
        extract_to_store(samples[:8], tmp / f"warm_{name}_{len(result['runs'])}.h5", [weights],
                         cfg, progress=False)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = tmp / f"{name}_{len(result['runs'])}.h5"
        run = functools.partial(extract_to_store, samples, out, [weights], cfg, progress=False)
        report(key, timed(run, device))
        result["runs"][key]["peak_device_memory_mib"] = C.peak_device_memory_mib(device)

    # Engine alone on pre-decoded images, and the fixed-shape forward.
    ex = Extractor([weights], config())
    result["precision_ran"] = ex.precision
    pre = C.rescaled(paths, scales, 2048)
    ex.describe_scaled(pre[:8])
    report("engine alone (pre-decoded, host memory)",
           timed(functools.partial(ex.describe_scaled, pre), device))  # fmt: skip
    fixed = C.FixedShape(ex)
    fixed_inputs = fixed.inputs(paths, scales)
    fixed.run({q: a[:8] for q, a in fixed_inputs.items()})
    fixed_flops = sum(
        C.dense_flops(args.net, args.width, q, round(q * 4 / 3)) * 2 * n for q in scales
    )
    report("per-scale fixed-shape forward",
           timed(functools.partial(fixed.run, fixed_inputs), device), work=fixed_flops)  # fmt: skip

    # The naive loop, on a few images.
    tv = C.torchvision_model(weights, device)
    few = paths[: args.naive_n]
    few_flops = C.workload_flops(C.image_sizes(few), [args.net], args.width, scales, True, 2048)
    C.run_naive(tv, few[:1], scales, device)
    report("naive loop (fp32, 1 at a time)",
           timed(functools.partial(C.run_naive, tv, few, scales, device), device),
           images=len(few), work=few_flops)  # fmt: skip
    del tv
    naive = result["runs"]["naive loop (fp32, 1 at a time)"]["images_per_s"]
    best = result["runs"]["end to end, default settings"]
    best["speedup_vs_naive"] = best["images_per_s"] / naive
    print(f"  default end to end: {best['speedup_vs_naive']:.1f}x the naive loop, "
          f"{best['fraction_of_matmul_peak']:.1%} of the matmul peak "
          f"(goal: >= 10x and >= 50%)")  # fmt: skip

    print("  fast-path steps (engine, fixed 500x375 shape at each Q, image + flip):")
    result["steps_images_per_s"] = {}
    cuda = device.type == "cuda"
    for q in scales:
        shape = (q, round(q * 4 / 3))
        print(f"  Q={q} ({shape[0]}x{shape[1]}):")
        result["steps_images_per_s"][q] = fast_path_steps(
            weights, device, 16 if cuda else 1, shape, reps=4 if cuda else 1
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--net", default="E")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--n", type=int, default=512, help="images per set")
    parser.add_argument("--naive-n", type=int, default=16, help="images for the naive loop")
    parser.add_argument("--sets", default="uniform", help="uniform (500x375), caltech")
    parser.add_argument("--caltech-root", default=None)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default="bench_gpu.json")
    parser.add_argument(
        "--smoke", action="store_true", help="check every path here: CPU, width 1/16, 8 images"
    )
    args = parser.parse_args()
    if args.smoke:
        args.device, args.width, args.n, args.naive_n, args.scales = "cpu", 0.0625, 8, 2, "224"
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU is visible; run it on the GPU machine (--smoke checks it "
                 "here on the CPU).")  # fmt: skip
    device = resolve_device(args.device)
    torch.manual_seed(0)
    weights = load_weights("random", args.net, width=args.width)
    record = C.environment(device, vars(args))
    print(f"device: {record['device']}\nversions: {record['versions']}")

    peaks = {}
    size = 8192 if device.type == "cuda" else 2048
    if native_bf16(device):  # elsewhere a bf16 product is reference code, no peak to speak of
        peaks["bf16"] = C.matmul_peak(device, torch.bfloat16, size)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = C.matmul_peak(device, torch.float32, size)
        torch.backends.cuda.matmul.allow_tf32 = False
    peaks["fp32"] = C.matmul_peak(device, torch.float32, size)
    peak = peaks.get("bf16", peaks["fp32"])
    record["matmul_peak_tflop_per_s"] = peaks
    record["peak_used"] = "bf16" if "bf16" in peaks else "fp32"
    print("matmul peak (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))

    record["sets"] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.sets.split(","):
            paths = C.image_set(name, args.n, tmp, args.caltech_root)
            record["sets"].append(bench_set(name, paths, weights, args, device, peak, tmp))
    record["peak_host_memory_mib"] = C.peak_host_memory_mib()
    record["peak_device_memory_mib"] = C.peak_device_memory_mib(device)
    print(f"\npeak host memory (MiB): {record['peak_host_memory_mib']}; peak device memory "
          f"(MiB): {record['peak_device_memory_mib']}")  # fmt: skip
    C.write_json(args.json, record)


if __name__ == "__main__":
    main()
