"""What the store's write path costs in an extraction: checksummed, verified writes (now) against
the plain writes of vggfeat 0.1, both timed in the same process on the same rows.

The workload is ``bench_extract.py``'s (full-width Net-D, Q=256, flips, 500x375 JPEGs). During
a real ``extract_to_store`` run, the time spent in the store (fingerprints, plan, part writes,
finalize) is measured; then the same rows are written the way vggfeat 0.1 did (h5py straight to
a temporary file, no checksum, no read-back; the whole-block combine) and timed. The difference,
as a share of the end-to-end extraction time, is what the integrity work costs.

    python benchmarks/bench_store_write.py                    # 16 images, a part every 4
    python benchmarks/bench_store_write.py --n 32 --scales 256,384,512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402

import vggfeat.pipeline as pipeline  # noqa: E402
from vggfeat.extract import ExtractConfig  # noqa: E402
from vggfeat.files import publish  # noqa: E402
from vggfeat.store import FeatureStore, StoreWriter  # noqa: E402
from vggfeat.weights import load_weights  # noqa: E402


@contextmanager
def timed_store_path(spent: list[float]):
    """Add the seconds spent in the store's methods (and fingerprinting) to ``spent[0]``."""
    originals = {
        (StoreWriter, name): getattr(StoreWriter, name)
        for name in ("__init__", "plan", "flush", "finalize")
    }
    originals[(pipeline, "fingerprint_files")] = pipeline.fingerprint_files

    depth = [0]  # finalize calls flush: count the outermost call only

    def wrap(fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[0] += time.perf_counter() - start

        return timed

    for (owner, name), fn in originals.items():
        setattr(owner, name, wrap(fn))
    try:
        yield
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


def write_like_v01(store: FeatureStore, out: Path, rows_per_part: int) -> None:
    """The same rows as parts written with plain h5py (no checksum, no read-back), then the
    whole-block combine: what vggfeat 0.1 did."""
    parts = []
    keys = [(net, q) for net in store.nets for q in store.scales]
    blocks = {k: store.descriptors(*k) for k in keys}
    for start in range(0, len(store), rows_per_part):
        part = out.with_name(f"part{start}.h5")
        with publish(part) as tmp:
            with h5py.File(tmp, "w", libver="latest") as f:
                stop = min(len(store), start + rows_per_part)
                f.create_dataset("ids", data=store.ids[start:stop], dtype=h5py.string_dtype())
                for net, q in keys:
                    f.create_dataset(f"descriptors/{net}/{q}", data=blocks[(net, q)][start:stop])
        parts.append(part)
    with publish(out) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.create_dataset("ids", data=store.ids, dtype=h5py.string_dtype())
            for net, q in keys:
                whole = np.concatenate([h5py.File(p, "r")[f"descriptors/{net}/{q}"][()]
                                        for p in parts])  # fmt: skip
                f.create_dataset(f"descriptors/{net}/{q}", data=whole,
                                 chunks=(min(len(whole), 256), whole.shape[1]))  # fmt: skip
    for part in parts:
        os.unlink(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--net", default="D")
    parser.add_argument("--scales", default="256")
    parser.add_argument("--rows-per-part", type=int, default=4)
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args()
    scales = tuple(int(s) for s in args.scales.split(","))
    weights = load_weights("random", args.net, width=args.width)
    config = ExtractConfig(scales=scales, device="cpu", batch_size=8, workers=2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = C.make_jpegs(folder, args.n)
        samples = C.samples(paths)
        pipeline.extract_to_store(samples[:2], folder / "warm.h5", [weights], config,
                                  progress=False)  # fmt: skip
        spent = [0.0]
        start = time.perf_counter()
        with timed_store_path(spent):
            result = pipeline.extract_to_store(
                samples, folder / "now.h5", [weights], config, progress=False,
                rows_per_part=args.rows_per_part,
            )  # fmt: skip
        total = time.perf_counter() - start
        start = time.perf_counter()
        write_like_v01(result.store, folder / "v01.h5", args.rows_per_part)
        before = time.perf_counter() - start
    now = spent[0]
    print(f"{args.n} images, net {args.net} width {args.width}, scales {list(scales)}, a part "
          f"every {args.rows_per_part} images; end-to-end extraction {total:.2f} s")  # fmt: skip
    print(f"{'store write path':<52}{'seconds':>9}{'share':>9}")
    print(f"{'now (fingerprints, checksums, read-back, lock)':<52}{now:>9.3f}{now / total:>9.2%}")
    print(f"{'vggfeat 0.1 (plain h5py, no verification)':<52}{before:>9.3f}{before / total:>9.2%}")
    print(f"extraction time added by the integrity work: {(now - before) / total:+.2%}")


if __name__ == "__main__":
    main()
