"""Images/s of `vggfeat extract` against a naive dense loop, measured in the same process.

Default (the issue's CPU target): full-width Net-D at Q=256 with flips on 500x375 JPEGs.
The baseline is what one would write by hand: torchvision's vgg16 with the same weights, a
hand-written dense forward (fc6 as a 7x7 conv, fc7 as 1x1), PIL decode, one image at a time,
the flipped copy as a second forward.

    python benchmarks/bench_extract.py                      # CPU, Net-D, Q=256, 16 images
    python benchmarks/bench_extract.py --net E --scales 256,384,512 --device cuda --n 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from vggfeat.extract import ExtractConfig
from vggfeat.nets import TORCHVISION_NAMES
from vggfeat.pipeline import extract_to_store
from vggfeat.weights import load_weights

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (375, 500)) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields plus fine noise, 500x375 like most of VOC."""
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


def naive_descriptor(tv: torch.nn.Module, path: Path, q: int, device: torch.device) -> np.ndarray:
    """One image: PIL decode and resize, dense forward of the image and of its flip, GAP."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (q, round(w * q / h)) if h <= w else (round(h * q / w), q)
    img = img.resize(size[::-1], Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div(255)
    x = ((x - MEAN) / STD).to(device)
    fc6, fc7 = tv.classifier[0], tv.classifier[3]
    vecs = []
    for inp in (x, x.flip(-1)):
        feat = tv.features(inp)
        y = F.relu(F.conv2d(feat, fc6.weight.view(fc6.out_features, -1, 7, 7), fc6.bias))
        y = F.relu(F.conv2d(y, fc7.weight[:, :, None, None], fc7.bias))
        vecs.append(y.mean(dim=(2, 3)))
    return ((vecs[0] + vecs[1]) / 2)[0].cpu().numpy()


def run_naive(weights, paths, scales, device) -> tuple[float, dict[int, np.ndarray]]:
    tv = getattr(torchvision.models, TORCHVISION_NAMES[weights.net])()
    tv.load_state_dict(weights.state_dict)
    tv = tv.eval().to(device)
    out = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for q in scales:
            out[q] = np.stack([naive_descriptor(tv, p, q, device) for p in paths])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_ours(weights, paths, config, out_path) -> tuple[float, object]:
    samples = [(p.name, str(p)) for p in paths]
    start = time.perf_counter()
    result = extract_to_store(samples, out_path, [weights], config, progress=False)
    return time.perf_counter() - start, result.store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of 500x375 JPEGs")
    parser.add_argument("--net", default="D")
    parser.add_argument("--scales", default="256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=None,
        help="images for the naive loop (default: --n); rates are per image",
    )
    args = parser.parse_args()
    scales = tuple(int(s) for s in args.scales.split(","))
    device = torch.device(args.device)
    torch.manual_seed(0)
    weights = load_weights("random", args.net)
    config = ExtractConfig(scales=scales, flip=True, device=args.device, batch_size=args.batch_size,
                           workers=args.workers, precision=args.precision)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.n)
        # Warm up both paths (allocator, oneDNN/cuDNN kernel choice) on two images.
        run_ours(weights, paths[:2], config, Path(tmp) / "warm.h5")
        run_naive(weights, paths[:1], scales, device)
        t_ours, store = run_ours(weights, paths, config, Path(tmp) / "ours.h5")
        n_base = args.baseline_n or args.n
        t_naive, naive = run_naive(weights, paths[:n_base], scales, device)
        diff = max(
            float(np.abs(store.descriptors(weights.net, q)[:n_base] - naive[q]).max()
                  / np.abs(naive[q]).max())
            for q in scales
        )  # fmt: skip

    rate_ours, rate_naive = args.n / t_ours, n_base / t_naive
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, threads {torch.get_num_threads()}; net {args.net} "
          f"({TORCHVISION_NAMES[args.net]}), scales {list(scales)}, flips on, "
          f"{args.precision}, 500x375 JPEGs")  # fmt: skip
    print(f"{'run':<40}{'images':>8}{'seconds':>10}{'img/s':>10}")
    print(f"{'vggfeat extract (store included)':<40}{args.n:>8}{t_ours:>10.2f}{rate_ours:>10.3f}")
    print(f"{'naive loop (torchvision, 1 at a time)':<40}{n_base:>8}{t_naive:>10.2f}"
          f"{rate_naive:>10.3f}")  # fmt: skip
    print(
        f"speed-up: {rate_ours / rate_naive:.2f}x   max relative descriptor difference: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
