"""Host memory stays flat in the number of images: `vggfeat extract` on N and on 10N images.

Each run is its own process (peak RSS is per process); the peak of the decode workers is
reported beside it. Rows stream to the crash-safe store in parts, decoded images live only for
one window, so the peak should not grow with N.

    python benchmarks/bench_memory.py                       # N = 48 and 480, narrowed Net-D
    python benchmarks/bench_memory.py --n 100 --width 1.0 --scales 256,384,512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def child(folder: Path, n: int, args: argparse.Namespace) -> None:
    """Extract the first ``n`` images of ``folder`` and print peak memory as JSON."""
    import torch

    from vggfeat.extract import ExtractConfig
    from vggfeat.pipeline import extract_to_store
    from vggfeat.weights import load_weights

    paths = sorted(folder.glob("*.jpg"))[:n]
    weights = load_weights("random", args.net, width=args.width)
    config = ExtractConfig(scales=tuple(int(s) for s in args.scales.split(",")),
                           device=args.device, workers=args.workers)  # fmt: skip
    start = time.perf_counter()
    result = extract_to_store(C.samples(paths), folder / f"out_{n}.h5",
                              [weights], config, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    print(json.dumps({
        "images": len(result.store),
        "seconds": seconds,
        "peak_host_memory_mib": C.peak_host_memory_mib(),
        "peak_device_memory_mib": C.peak_device_memory_mib(torch.device(args.device)),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--net", default="D")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--scales", default="256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), args)
        return
    import torch

    record = C.environment(torch.device(args.device), vars(args))
    record["runs"] = []
    with tempfile.TemporaryDirectory() as tmp:
        C.make_jpegs(Path(tmp), args.n * args.factor)
        print(f"{'images':>8}{'seconds':>10}{'peak RSS MiB':>14}{'workers MiB':>13}")
        for n in (args.n, args.n * args.factor):
            argv = [f"--{k}={getattr(args, k)}" for k in ("net", "width", "scales", "device",
                                                          "workers")]  # fmt: skip
            done = subprocess.run(
                [sys.executable, __file__, *argv, "--child", tmp, str(n)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            run = json.loads(done.stdout.strip().splitlines()[-1])
            record["runs"].append(run)
            mem = run["peak_host_memory_mib"]
            print(f"{run['images']:>8}{run['seconds']:>10.1f}{mem['self']:>14.0f}"
                  f"{mem['children']:>13.0f}")  # fmt: skip
    small, large = (r["peak_host_memory_mib"]["self"] for r in record["runs"])
    print(f"peak host memory at {args.factor}x the images: {large / small:.2f}x")
    C.write_json(args.json, record)


if __name__ == "__main__":
    main()
