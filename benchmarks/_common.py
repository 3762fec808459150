"""Shared pieces of the extraction benchmarks: workloads, baselines, FLOP counts, peaks, records.

Not a benchmark itself; ``bench_extract.py``, ``bench_gpu.py`` and ``bench_memory.py`` import it.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from vggfeat.devices import describe_device
from vggfeat.images import rescale_all, scaled_size
from vggfeat.nets import TORCHVISION_NAMES, VGG, DenseVGG
from vggfeat.versions import software_versions

# The project's shared data sit in ../shared beside the checkout (or a folder above it).
CALTECH = next(
    (
        p / "shared" / "data" / "caltech101"
        for p in Path(__file__).resolve().parents[1:]
        if (p / "shared" / "data" / "caltech101").is_dir()
    ),
    Path("../shared/data/caltech101"),
)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# --- workloads -------------------------------------------------------------------------------


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (375, 500)) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields plus fine noise, 500x375 like most of VOC."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (size[0] // 25, size[1] // 25, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize(size[::-1], Image.Resampling.BICUBIC))
        noisy = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


def caltech_images(n: int, root: Path | None = None, seed: int = 0) -> list[Path]:
    """``n`` real Caltech-101 images of mixed sizes, drawn at random over all classes."""
    root = Path(root or CALTECH / "101_ObjectCategories")
    if not root.is_dir():
        sys.exit(f"No Caltech-101 folder at {root}: pass --caltech-root or use --sets uniform.")
    files = sorted(p for p in root.rglob("*.jpg"))
    return sorted(random.Random(seed).sample(files, min(n, len(files))))


def image_set(name: str, n: int, tmp: Path, caltech_root: Path | None) -> list[Path]:
    """The benchmark set ``name``: "uniform" (generated 500x375 JPEGs) or "caltech"."""
    return make_jpegs(tmp / name, n) if name == "uniform" else caltech_images(n, caltech_root)


def samples(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """(id, path) per file; the id keeps the folder, as Caltech's file names repeat across
    class folders."""
    return [(f"{p.parent.name}/{p.name}", str(p)) for p in paths]


def image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(H, W) of each file, from its header."""
    sizes = []
    for p in paths:
        with Image.open(p) as img:
            sizes.append(img.size[::-1])
    return sizes


def rescaled(paths: Sequence[Path], scales: Sequence[int], max_side: int) -> list[list[np.ndarray]]:
    """Every image decoded (PIL) and rescaled to every Q: the engine's input, pre-made."""
    out = []
    for p in paths:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("RGB"))
        out.append(rescale_all(arr, scales, max_side)[0])
    return out


# --- FLOPs and peaks -------------------------------------------------------------------------


def dense_flops(net: str, width: float, height: int, width_px: int, layer: str = "fc7") -> int:
    """FLOPs (2 per multiply-add) of one dense forward of an (height, width_px) image:
    every convolution at its map size, then fc6 (7x7) and fc7 (1x1) over the valid map."""
    vgg = VGG(net, width=width, num_classes=1).to("meta")
    h, w, flops = height, width_px, 0
    for module in vgg.features:
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops += 2 * module.in_channels * module.out_channels * k * h * w
        elif isinstance(module, torch.nn.MaxPool2d):
            h, w = h // 2, w // 2
    if layer == "pool5":
        return flops
    positions = (h - 6) * (w - 6)
    fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
    flops += 2 * fc6.in_features * fc6.out_features * positions
    if layer == "fc7":
        flops += 2 * fc7.in_features * fc7.out_features * positions
    return flops


def workload_flops(
    sizes: Sequence[tuple[int, int]],
    nets: Sequence[str],
    width: float,
    scales: Sequence[int],
    flip: bool,
    max_side: int,
) -> int:
    """Total FLOPs of describing images of the given original (H, W) sizes."""
    cache: dict[tuple[str, int, int], int] = {}
    total = 0
    for h, w in sizes:
        for q in scales:
            sh, sw = (min(s, max_side) for s in scaled_size(h, w, q))
            for net in nets:
                key = (net, sh, sw)
                if key not in cache:
                    cache[key] = dense_flops(net, width, sh, sw)
                total += cache[key] * (2 if flip else 1)
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    """Measured dense matmul rate in TFLOP/s (best of several timed runs of size^3 products)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        a @ b
        sync(device)
        best, spent = float("inf"), 0.0
        reps = 1
        while spent < seconds:
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            took = (time.perf_counter() - start) / reps
            best, spent = min(best, took), spent + took * reps
            reps = max(1, min(50, int(0.2 / max(took, 1e-6))))
    return 2 * size**3 / best / 1e12


def peak_host_memory_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children (decode workers)."""
    to_mib = 1 / 1024 if platform.system() != "Darwin" else 1 / 2**20
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mib,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mib,
    }


def peak_device_memory_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def environment(device: torch.device, settings: dict[str, Any]) -> dict[str, Any]:
    """Device, versions and settings recorded with every result."""
    return {
        "device": describe_device(device),
        "versions": software_versions(),
        "platform": platform.platform(),
        "settings": settings,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --- baselines ---------------------------------------------------------------------------------


def torchvision_model(weights, device: torch.device) -> torch.nn.Module:
    """torchvision's vgg16/vgg19 with the same weights, fp32, NCHW: the naive loop's net
    (a narrowed net, which torchvision cannot build, is vggfeat's VGG: the same layers)."""
    if weights.width != 1:
        return weights.build().eval().to(device)
    tv = getattr(torchvision.models, TORCHVISION_NAMES[weights.net])()
    tv.load_state_dict(weights.state_dict)
    return tv.eval().to(device)


def naive_forward(tv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hand-written dense forward of one normalised image (1, 3, H, W) and its flip -> (dim,)."""
    fc6, fc7 = tv.classifier[0], tv.classifier[3]
    vecs = []
    for inp in (x, x.flip(-1)):
        feat = tv.features(inp)
        y = F.relu(F.conv2d(feat, fc6.weight.view(fc6.out_features, -1, 7, 7), fc6.bias))
        y = F.relu(F.conv2d(y, fc7.weight[:, :, None, None], fc7.bias))
        vecs.append(y.mean(dim=(2, 3)))
    return ((vecs[0] + vecs[1]) / 2)[0]


def naive_input(img: Image.Image, q: int, device: torch.device) -> torch.Tensor:
    """PIL resize so the smallest side is q, torchvision normalisation, one image."""
    w, h = img.size
    size = (q, round(w * q / h)) if h <= w else (round(h * q / w), q)
    img = img.resize(size[::-1], Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div(255)
    return ((x - MEAN) / STD).to(device)


def run_naive(
    tv: torch.nn.Module, paths: Sequence[Path], scales: Sequence[int], device: torch.device
) -> dict[int, np.ndarray]:
    """The naive loop end to end: PIL decode, one image at a time, fp32, per Q."""
    out = {}
    with torch.inference_mode():
        for q in scales:
            rows = []
            for p in paths:
                img = Image.open(p).convert("RGB")
                rows.append(naive_forward(tv, naive_input(img, q, device)).cpu().numpy())
            out[q] = np.stack(rows)
    sync(device)
    return out


def run_naive_engine(
    tv: torch.nn.Module, per_image: Sequence[Sequence[np.ndarray]], device: torch.device
) -> None:
    """The naive loop's forward alone, on pre-rescaled images."""
    with torch.inference_mode():
        for pixels in per_image:
            for arr in pixels:
                x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div(255)
                naive_forward(tv, ((x - MEAN) / STD).to(device)).cpu()
    sync(device)


class FixedShape:
    """Per-scale fixed-shape forward: every image warped to one (Q, 4Q/3) shape per scale and
    batched without padding or masks, on the engine's own model and precision. Not the paper's
    protocol (it distorts mixed aspect ratios): the speed of ideal batching, for reference."""

    def __init__(self, extractor) -> None:
        self.ex = extractor

    def inputs(self, paths: Sequence[Path], scales: Sequence[int]) -> dict[int, np.ndarray]:
        out = {}
        for q in scales:
            size = (round(q * 4 / 3), q)  # PIL (W, H)
            out[q] = np.stack(
                [np.asarray(Image.open(p).convert("RGB").resize(size)) for p in paths]
            )
        return out

    @torch.inference_mode()
    def run(self, inputs: dict[int, np.ndarray]) -> None:
        ex = self.ex
        for arr in inputs.values():
            for start in range(0, len(arr), ex.batch_size):
                images = list(arr[start : start + ex.batch_size])
                for net, vectors in ex._describe_batch(images, images[0].shape[:2]).items():
                    ex._heads(net, [vectors])  # fc6/fc7, where the packed CPU path defers it
        sync(ex.device)


# --- timing --------------------------------------------------------------------------------


def interleaved(
    runs: dict[str, Callable[[int], Any]], parts: int = 2
) -> dict[str, dict[str, float]]:
    """Time each candidate on each part of the work, alternating their order (ABBA...), so that
    a noisy machine's load falls on all of them alike. ``runs[name](part)`` does part ``part``.

    Besides wall-clock seconds, the CPU seconds of this process and its finished children
    (decode workers) are recorded: on a machine shared with other work they measure the work
    done, where wall-clock time also measures the others' load.

    Returns:
        name -> {"seconds": total wall, "cpu_seconds": total CPU, "parts": [wall per part]}.
    """
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, float] = {n: 0.0 for n in names}
    for part in range(parts):
        for name in names if part % 2 == 0 else names[::-1]:
            start, t0 = time.perf_counter(), os.times()
            runs[name](part)
            t1 = os.times()
            times[name].append(time.perf_counter() - start)
            cpu[name] += sum(t1[:4]) - sum(t0[:4])
    return {n: {"seconds": sum(t), "cpu_seconds": cpu[n], "parts": t} for n, t in times.items()}


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous, near-equal pieces."""
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def write_json(path: str | None, record: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def max_relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def dense_model(weights, device: torch.device) -> DenseVGG:
    return DenseVGG(weights.build().to(device, memory_format=torch.channels_last)).eval()
