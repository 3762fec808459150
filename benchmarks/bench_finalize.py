"""Memory and time of a resume that adds one image to a big store: vggfeat's streamed finalize
against the whole-block combine it replaced, each in a fresh process, on the same files.

The store has N rows of 4 (net, Q) blocks of 4096-d float32 (default 12,800 rows: 800 MB, the
size the issue measured). One new part holds one more image. Each method turns store + part
into a new store; peak memory is the process's max RSS (``ru_maxrss``), shown beside that of a
process that only imports the same modules.

- ``streamed``: what ``vggfeat extract`` does now: ``StoreWriter.plan`` (which reads and
  verifies the store, since it will be rewritten) and ``finalize`` (a chunked copy with
  fletcher32 and crc32, read back and compared before the rename).
- ``finalize only``: the same finalize without the up-front verification of the store.
- ``whole block (before)``: the previous combine: each (net, Q) block read whole from every
  source, gathered, and written as one dataset, without checksums or read-back.

    python benchmarks/bench_finalize.py               # 800 MB store
    python benchmarks/bench_finalize.py --rows 2000   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from vggfeat.files import publish
from vggfeat.store import (
    FeatureStore,
    Row,
    StoreWriter,
    _descriptor_keys,
    _empty_meta,
    _key,
    _write_store,
    parts_dir,
)

SETTINGS = {"nets": ["D", "E"], "scales": [256, 384], "dim": 4096, "flip": True, "layer": "fc7",
            "precision": "fp32", "weights": {}}  # fmt: skip


def build(folder: Path, rows: int) -> Path:
    """The big store (written a chunk at a time) and one pending part with one new row."""
    path = folder / "store.h5"
    rng = np.random.default_rng(0)
    meta_ids = np.empty(rows, dtype=object)
    meta_ids[:] = [f"img{i:07d}.jpg" for i in range(rows)]
    meta = _empty_meta(rows)
    meta["ids"], meta["status"][:] = meta_ids, 0
    block = rng.random((64, SETTINGS["dim"]), dtype=np.float32)
    blocks = {key: (lambda a, b: block[: b - a]) for key in _descriptor_keys(SETTINGS)}
    _write_store(path, SETTINGS, {}, meta, blocks)
    with StoreWriter(path, SETTINGS) as writer:
        vecs = {key: block[0] for key in _descriptor_keys(SETTINGS)}
        writer.add(Row("new.jpg", ok=True, descriptors=vecs))
        writer.flush()
    return path


def whole_block(path: Path) -> None:
    """The combine before streaming (vggfeat 0.1): whole (N, dim) blocks in memory."""
    sources = [FeatureStore(path)] + [FeatureStore(p) for p in sorted(parts_dir(path).iterdir())]
    picks = [(s, r) for s, store in enumerate(sources) for r in range(len(store))]
    dim = SETTINGS["dim"]
    with publish(path) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            ids = [sources[s].ids[r] for s, r in picks]
            f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
            for net, q in _descriptor_keys(SETTINGS):
                out = np.empty((len(picks), dim), dtype=np.float32)
                src = np.array([s for s, _ in picks])
                row = np.array([r for _, r in picks])
                for s, store in enumerate(sources):
                    where = np.flatnonzero(src == s)
                    with h5py.File(store.path, "r") as g:
                        out[where] = g[_key(net, q)][()][row[where]]
                n = len(picks)
                f.create_dataset(_key(net, q), data=out, chunks=(min(n, 256), dim))
    shutil.rmtree(parts_dir(path))


def child(method: str, path: Path) -> None:
    start = time.perf_counter()
    if method == "streamed":
        with StoreWriter(path, SETTINGS) as writer:
            ids = FeatureStore(path).ids + ["new.jpg"]
            writer.plan([(i, f"/nowhere/{i}") for i in ids], verify=True)
            writer.finalize()
    elif method == "finalize only":
        with StoreWriter(path, SETTINGS) as writer:
            writer.finalize()
    elif method == "whole block (before)":
        whole_block(path)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "rss": rss}))


def run_child(method: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--path", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_800)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.path))
        return
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        master = build(folder / "master", args.rows)
        size = master.stat().st_size
        block = args.rows * 4 * SETTINGS["dim"]
        print(f"store: {args.rows} rows x {len(_descriptor_keys(SETTINGS))} blocks x "
              f"{SETTINGS['dim']}-d = {size / 1e6:.0f} MB (one block {block / 1e6:.0f} MB), "
              "+1 image in a part")  # fmt: skip
        idle = run_child("idle", master)
        print(f"{'method':<24}{'seconds':>10}{'peak RSS MB':>14}{'above idle MB':>15}")
        results = {}
        for method in ("whole block (before)", "finalize only", "streamed"):
            work = folder / method.split()[0]
            shutil.copytree(master.parent, work)
            r = results[method] = run_child(method, work / "store.h5")
            with h5py.File(work / "store.h5", "r") as f:  # all rows there, the new one last
                assert f["ids"].shape == (args.rows + 1,)
                assert np.array_equal(f["descriptors/E/384"][-1], f["descriptors/E/384"][0])
            print(f"{method:<24}{r['seconds']:>10.2f}{r['rss'] / 1e6:>14.0f}"
                  f"{(r['rss'] - idle['rss']) / 1e6:>15.0f}")  # fmt: skip
            shutil.rmtree(work)
        before, now = results["whole block (before)"], results["streamed"]
        print(f"memory above idle: {(before['rss'] - idle['rss']) / 1e6:.0f} MB -> "
              f"{(now['rss'] - idle['rss']) / 1e6:.0f} MB; time {before['seconds']:.2f} s -> "
              f"{now['seconds']:.2f} s (streamed includes verifying the store and reading the "
              "new one back)")  # fmt: skip


if __name__ == "__main__":
    main()
