"""Peak host memory and time to decode and rescale extreme images, against a plain PIL path.

Each case runs in its own process (peak RSS is per process), on a file written beforehand:

- a 20000x15000 JPEG (300 Mpx, over twice PIL's 89.5 Mpx decompression-bomb limit): vggfeat
  decodes it at 1/8 size (JPEG draft mode); the baseline is a full decode with the guard off;
- a 12000x7500 PNG (90 Mpx, just over the limit): vggfeat decodes it and reduces it (1/8);
- a 3000x1 PNG strip: vggfeat resamples only the kept 2048 px of each Q; the baseline
  rescales the whole strip (1,536,000 px long at Q=512) and then crops.

The baseline is "today's path" with PIL's guard off: decode, RGB, bilinear antialiased resize
so the smallest side is Q, centre crop to --max-side.

    python benchmarks/bench_huge_images.py                   # Q 256,384,512, max side 2048
    python benchmarks/bench_huge_images.py --cases thin       # the cheap case only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

_WRITE = """
import sys
import numpy as np
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
path, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
low = np.random.default_rng(0).integers(0, 256, (max(1, h // 100), max(1, w // 100), 3), np.uint8)
img = Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR)
img.save(path, quality=90) if path.endswith(".jpg") else img.save(path, compress_level=1)
"""

_MEASURE = """
import json, resource, sys, time
import numpy as np
from PIL import Image
from vggfeat.images import load_image, rescale_all, scaled_size
path, how, scales, max_side = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = peak_mb()
start = time.perf_counter()
note = ""
if how == "vggfeat":
    decoded = load_image(path, scales)
    out, crop = rescale_all(decoded.pixels, scales, max_side)
    note = "; ".join(n for n in (decoded.note, crop) if n)
else:
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    out = []
    for q in scales:
        h, w = scaled_size(arr.shape[0], arr.shape[1], q)
        full = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
        lo = max(0, (max(h, w) - max_side) // 2)
        out.append(full[lo:lo + max_side] if h > w else full[:, lo:lo + max_side])
seconds = time.perf_counter() - start
print(json.dumps({"peak_mb": peak_mb() - base, "seconds": seconds, "note": note,
                  "shapes": [list(o.shape) for o in out]}))
"""

CASES = {
    "jpeg": ("huge.jpg", 20000, 15000),
    "png": ("panorama.png", 12000, 7500),
    "thin": ("thin.png", 3000, 1),
}


def _measure(path: Path, how: str, scales: list[int], max_side: int) -> dict:
    args = [sys.executable, "-c", _MEASURE, str(path), how, json.dumps(scales), str(max_side)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1][:120]}
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="jpeg,png,thin")
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--max-side", type=int, default=2048)
    args = parser.parse_args()
    scales = [int(q) for q in args.scales.split(",")]
    print(f"# {platform.node()} {platform.machine()}, Python {platform.python_version()}, "
          f"Q {scales}, max side {args.max_side}")  # fmt: skip
    print("| case | path | peak host memory (MB) | seconds | result |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            name, w, h = CASES[case]
            path = Path(tmp) / name
            subprocess.run([sys.executable, "-c", _WRITE, str(path), str(w), str(h)], check=True)
            for how in ("vggfeat", "baseline"):
                r = _measure(path, how, scales, args.max_side)
                label = f"{w}x{h} {path.suffix[1:].upper()}"
                if "error" in r:
                    print(f"| {label} | {how} | - | - | failed: {r['error']} |")
                    continue
                result = f"{r['shapes'][-1]} {r['note']}".strip()
                print(f"| {label} | {how} | {r['peak_mb']:.0f} | {r['seconds']:.2f} | {result} |")
            path.unlink()


if __name__ == "__main__":
    main()
