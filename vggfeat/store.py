"""The HDF5 feature store: per-image ids and status, per (net, Q) raw descriptors, provenance.

Layout (format ``vggfeat-store`` version 1; readable with plain h5py):

    /                       attrs: format, format_version, settings (JSON), versions (JSON), created
    /ids                    (N,) utf-8 strings: image ids, in store order
    /status                 (N,) int8: 0 ok, 1 failed (attrs: codes, JSON)
    /reason                 (N,) utf-8: why an image failed ('' when ok)
    /note                   (N,) utf-8: what was changed (e.g. a crop of an extreme panorama)
    /image_size             (N, 2) int32: decoded (height, width) after EXIF orientation
    /descriptors/<net>/<Q>  (N, dim) float32: flip-averaged descriptor; NaN rows for failed images

Crash safety: a writer never modifies a store in place. Finished rows go to small part files in
``<store>.parts/``, each written under a temporary name and renamed; at the end the store and
its parts are combined into a new file that replaces the old one by an atomic rename. A SIGKILL
at any moment therefore leaves the old store, complete parts and at most a temporary file,
never an unreadable store, and the next run resumes from them.

Many writers: each process writes its own store (a shard); :func:`combine_stores` joins shards
into one store whose descriptors are HDF5 virtual datasets pointing into the shards, so no
descriptor is copied.

This module never imports torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vggfeat.errors import SettingsMismatch, StoreError
from vggfeat.files import publish

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FeatureStore",
    "check_format",
    "StoreWriter",
    "Row",
    "combine_stores",
    "diff_settings",
    "first_difference",
    "weights_identity",
    "comparable_settings",
    "parts_dir",
]

FORMAT = "vggfeat-store"
FORMAT_VERSION = 1
STATUS_CODES = {0: "ok", 1: "failed"}
_STR = h5py.string_dtype("utf-8")
_PER_IMAGE = ("ids", "status", "reason", "note", "image_size")


def check_format(
    attrs: Mapping[str, Any], path: os.PathLike | str, fmt: str, version: int, what: str
) -> None:
    """Refuse an HDF5 file whose root ``format`` attr is not ``fmt`` or whose
    ``format_version`` is newer than ``version`` (``what`` names the kind of file)."""
    if attrs.get("format") != fmt:
        raise StoreError(f"{path} is not a vggfeat {what} (no format={fmt}).")
    found = int(attrs.get("format_version", 0))
    if found > version:
        raise StoreError(
            f"{path} has {what} format version {found}; this vggfeat reads up to {version}: "
            "upgrade vggfeat."
        )


def parts_dir(path: str | os.PathLike) -> Path:
    """Folder holding the not-yet-combined part files of the store at ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


def first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """First differing leaf of two settings trees, as (dotted key, value in a, value in b)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                return sub, a.get(key), b.get(key)
            found = first_difference(a[key], b[key], sub)
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return None if a == b else (where or "settings", a, b)


def weights_identity(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """What identifies a net's weights: the file hash (or the label of hash-less random
    weights), its preprocessing and width; not the path it was loaded from."""
    prov = dict(provenance or {})
    ident = {k: prov.get(k) for k in ("net", "preprocess", "width")}
    if prov.get("sha256"):
        ident["sha256"] = prov["sha256"]
    else:
        ident["label"] = prov.get("label")
    return ident


def comparable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with each net's weights reduced to their identity, for equality checks."""
    weights = settings.get("weights", {})
    return {**settings, "weights": {net: weights_identity(p) for net, p in weights.items()}}


def diff_settings(have: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """First difference that matters between two stores' settings, as 'key: store has X,
    this run Y'; None when they agree."""
    found = first_difference(comparable_settings(have), comparable_settings(want))
    return None if found is None else f"{found[0]}: store has {found[1]!r}, this run {found[2]!r}"


@dataclass
class Row:
    """One image's result, as the extractor hands it to a writer.

    ``descriptors`` maps (net, Q) to a (dim,) float32 vector; empty for failed images.
    """

    id: str
    ok: bool
    reason: str = ""
    note: str = ""
    image_size: tuple[int, int] = (0, 0)
    descriptors: Mapping[tuple[str, int], np.ndarray] | None = None


def _descriptor_keys(settings: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(net, int(q)) for net in settings["nets"] for q in settings["scales"]]


def _key(net: str, q: int) -> str:
    return f"descriptors/{net}/{q}"


class FeatureStore:
    """Read-only view of a feature store.

    Example:
        >>> st = FeatureStore("voc07_E.h5")
        >>> st.ids[:2], st.descriptors("E", 384).shape
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"Feature store {self.path} does not exist.")
        try:
            with h5py.File(self.path, "r") as f:
                self._check_format(f)
                self.settings: dict[str, Any] = json.loads(f.attrs["settings"])
                self.versions: dict[str, Any] = json.loads(f.attrs.get("versions", "{}"))
                self.created: str = str(f.attrs.get("created", ""))
                self.ids: list[str] = [s.decode() for s in f["ids"][()]]
                self.status: np.ndarray = f["status"][()]
                self.reasons: list[str] = [s.decode() for s in f["reason"][()]]
                self.notes: list[str] = [s.decode() for s in f["note"][()]]
                self.image_size: np.ndarray = f["image_size"][()]
        except (OSError, KeyError) as exc:
            raise StoreError(f"Cannot read feature store {self.path}: {exc}") from None
        self._row = {id_: i for i, id_ in enumerate(self.ids)}

    def _check_format(self, f: h5py.File) -> None:
        check_format(f.attrs, self.path, FORMAT, FORMAT_VERSION, "feature store")
        for key in _PER_IMAGE:
            if key not in f:
                raise StoreError(f"{self.path}: missing HDF5 key /{key}.")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, n={len(self)}, nets={self.nets}, "
            f"scales={self.scales})"
        )

    @property
    def nets(self) -> list[str]:
        return list(self.settings["nets"])

    @property
    def scales(self) -> list[int]:
        return [int(q) for q in self.settings["scales"]]

    @property
    def dim(self) -> int:
        return int(self.settings["dim"])

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: images whose descriptors are valid."""
        return self.status == 0

    def failed(self) -> list[tuple[str, str]]:
        """(id, reason) of every failed image."""
        return [(self.ids[i], self.reasons[i]) for i in np.flatnonzero(~self.ok)]

    def changed(self) -> list[tuple[str, str]]:
        """(id, note) of every image that was altered (e.g. cropped) before extraction."""
        return [(i, n) for i, n in zip(self.ids, self.notes) if n]

    def _stem_rows(self) -> dict[str, int]:
        """Row of each id without its file extension, where that is unambiguous."""
        if not hasattr(self, "_stems"):
            counts: dict[str, list[int]] = {}
            for i, id_ in enumerate(self.ids):
                counts.setdefault(os.path.splitext(id_)[0], []).append(i)
            self._stems = {k: v[0] for k, v in counts.items() if len(v) == 1}
        return self._stems

    def find(self, ids: Sequence[str]) -> np.ndarray:
        """(N,) store row of each id, -1 where absent.

        An id may omit the file extension ('000005' finds '000005.jpg'), as dataset label
        files (VOC's ImageSets) name images without it.
        """
        stems = None
        out = np.empty(len(ids), dtype=np.int64)
        for k, id_ in enumerate(ids):
            row = self._row.get(id_)
            if row is None:
                stems = stems if stems is not None else self._stem_rows()
                row = stems.get(id_, -1)
            out[k] = row
        return out

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Store row of each id (see :meth:`find`); raises StoreError naming unknown ids."""
        rows = self.find(ids)
        if (rows < 0).any():
            missing = [ids[k] for k in np.flatnonzero(rows < 0)]
            raise StoreError(
                f"{len(missing)} of {len(ids)} ids are not in {self.path} "
                f"(e.g. {', '.join(missing[:3])})."
            )
        return rows

    def descriptors(self, net: str, scale: int, ids: Sequence[str] | None = None) -> np.ndarray:
        """(N, dim) float32 flip-averaged descriptors of ``net`` at smallest side ``scale``.

        Rows follow ``ids`` if given, else store order; failed images are NaN rows.
        """
        key = _key(net, int(scale))
        with h5py.File(self.path, "r") as f:
            if key not in f:
                raise StoreError(
                    f"{self.path} has no /{key}: it holds nets {self.nets} at scales {self.scales}."
                )
            data = f[key][()]
        return data if ids is None else data[self.rows(ids)]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description for ``vggfeat info``."""
        pending = sorted(parts_dir(self.path).glob("part-*.h5"))
        return {
            "path": str(self.path),
            "format": f"{FORMAT} v{FORMAT_VERSION}",
            "created": self.created,
            "images": len(self),
            "ok": int(self.ok.sum()),
            "failed": [{"id": i, "reason": r} for i, r in self.failed()],
            "changed": [{"id": i, "note": n} for i, n in self.changed()],
            "pending_parts": len(pending),
            "settings": self.settings,
            "versions": self.versions,
        }


def _write_store(
    path: Path,
    settings: Mapping[str, Any],
    versions: Mapping[str, Any],
    per_image: Mapping[str, np.ndarray],
    descriptors: Mapping[tuple[str, int], np.ndarray | h5py.VirtualLayout],
) -> None:
    """Write a complete store to ``path`` atomically (temporary file, fsync, rename)."""
    with publish(path) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["settings"] = json.dumps(settings, sort_keys=True)
            f.attrs["versions"] = json.dumps(versions, sort_keys=True)
            f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            n = len(per_image["ids"])
            f.create_dataset("ids", data=per_image["ids"], dtype=_STR)
            f.create_dataset("status", data=per_image["status"].astype(np.int8))
            f["status"].attrs["codes"] = json.dumps(STATUS_CODES)
            f.create_dataset("reason", data=per_image["reason"], dtype=_STR)
            f.create_dataset("note", data=per_image["note"], dtype=_STR)
            f.create_dataset("image_size", data=per_image["image_size"].astype(np.int32))
            group = f.create_group("descriptors")
            group.attrs["encoding"] = "descriptors/<net>/<Q>: (N, dim) float32"
            for (net, q), data in descriptors.items():
                if isinstance(data, h5py.VirtualLayout):
                    f.create_virtual_dataset(_key(net, q), data, fillvalue=np.nan)
                else:
                    chunks = (max(1, min(n, 256)), data.shape[1]) if n else None
                    f.create_dataset(_key(net, q), data=data, chunks=chunks)


def _empty_per_image() -> dict[str, np.ndarray]:
    return {
        "ids": np.array([], dtype=object),
        "status": np.zeros(0, np.int8),
        "reason": np.array([], dtype=object),
        "note": np.array([], dtype=object),
        "image_size": np.zeros((0, 2), np.int32),
    }


def _select(
    sources: Sequence[FeatureStore], order: Iterable[str] | None
) -> tuple[list[tuple[int, int]], list[str]]:
    """Choose one (source, row) per id: first source wins; canonical order.

    Order: ids of the first source as they are, then the rest in ``order``'s order, then any
    others in source order.
    """
    chosen: dict[str, tuple[int, int]] = {}
    for s, store in enumerate(sources):
        for r, id_ in enumerate(store.ids):
            chosen.setdefault(id_, (s, r))
    head = list(sources[0].ids) if sources else []
    seen = set(head)
    rank = {id_: i for i, id_ in enumerate(order or [])}
    rest = sorted((i for i in chosen if i not in seen), key=lambda i: (rank.get(i, len(rank)),))
    ids = head + rest
    return [chosen[i] for i in ids], ids


def combine_stores(
    out: str | os.PathLike,
    stores: Sequence[str | os.PathLike],
    order: Iterable[str] | None = None,
    virtual: bool = False,
) -> FeatureStore:
    """Combine stores (shards or parts) with equal settings into one store at ``out``.

    Args:
        out: Destination path; replaced atomically.
        stores: Source stores; an id found in several keeps its first occurrence.
        order: Preferred order of ids after those of the first store.
        virtual: Map descriptors as HDF5 virtual datasets into the sources (no copy; the
            sources must stay beside ``out``) instead of copying them.
    """
    out = Path(out)
    sources = [FeatureStore(p) for p in stores]
    if not sources:
        raise StoreError("No stores to combine.")
    for other in sources[1:]:
        found = diff_settings(sources[0].settings, other.settings)
        if found:
            raise SettingsMismatch(f"Cannot combine {other.path} with {sources[0].path}: {found}.")
    picks, ids = _select(sources, order)
    per_image = _gather_per_image(sources, picks)
    per_image["ids"] = np.array(ids, dtype=object)
    settings = sources[0].settings
    dim = int(settings["dim"])
    descriptors: dict[tuple[str, int], Any] = {}
    for net, q in _descriptor_keys(settings):
        if virtual:
            descriptors[(net, q)] = _virtual_layout(out, sources, picks, _key(net, q), dim)
        else:
            descriptors[(net, q)] = _gather_rows(sources, picks, _key(net, q), dim)
    _write_store(out, settings, sources[0].versions, per_image, descriptors)
    return FeatureStore(out)


def _gather_per_image(
    sources: Sequence[FeatureStore], picks: Sequence[tuple[int, int]]
) -> dict[str, np.ndarray]:
    return {
        "ids": np.array([sources[s].ids[r] for s, r in picks], dtype=object),
        "status": np.array([sources[s].status[r] for s, r in picks], dtype=np.int8),
        "reason": np.array([sources[s].reasons[r] for s, r in picks], dtype=object),
        "note": np.array([sources[s].notes[r] for s, r in picks], dtype=object),
        "image_size": np.array(
            [sources[s].image_size[r] for s, r in picks], dtype=np.int32
        ).reshape(-1, 2),
    }


def _gather_rows(
    sources: Sequence[FeatureStore], picks: Sequence[tuple[int, int]], key: str, dim: int
) -> np.ndarray:
    out = np.empty((len(picks), dim), dtype=np.float32)
    src = np.array([s for s, _ in picks], dtype=np.int64)
    row = np.array([r for _, r in picks], dtype=np.int64)
    for s, store in enumerate(sources):
        where = np.flatnonzero(src == s)
        if len(where):
            with h5py.File(store.path, "r") as f:
                out[where] = f[key][()][row[where]]
    return out


def _runs(picks: Sequence[tuple[int, int]]) -> Iterable[tuple[int, int, int, int]]:
    """Maximal runs (dst_start, source, src_start, length) of consecutive rows of one source."""
    start = 0
    for i in range(1, len(picks) + 1):
        if (
            i == len(picks)
            or picks[i][0] != picks[start][0]
            or picks[i][1] != picks[start][1] + (i - start)
        ):
            yield start, picks[start][0], picks[start][1], i - start
            start = i


def _virtual_layout(
    out: Path, sources: Sequence[FeatureStore], picks: Sequence[tuple[int, int]], key: str, dim: int
) -> h5py.VirtualLayout:
    layout = h5py.VirtualLayout(shape=(len(picks), dim), dtype=np.float32)
    for dst, s, src, length in _runs(picks):
        # Relative names resolve against the combined file's folder, so the set can move.
        name = os.path.relpath(sources[s].path.resolve(), out.resolve().parent)
        vsource = h5py.VirtualSource(name, key, shape=(len(sources[s]), dim), dtype=np.float32)
        layout[dst : dst + length] = vsource[src : src + length]
    return layout


class StoreWriter:
    """Appends rows to a store, crash-safely, and resumes from what earlier runs left.

    Args:
        path: The store to create or extend.
        settings: Everything that determines the numbers (nets, weights, scales, flip, layer,
            precision, preprocessing, interpolation, ...); must equal an existing store's.
        versions: Software versions, recorded but not compared.
        rows_per_part: Finished rows buffered before a part file is written.
        seconds_per_part: Also write a part when this much time has passed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        settings: Mapping[str, Any],
        versions: Mapping[str, Any] | None = None,
        rows_per_part: int = 256,
        seconds_per_part: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # normalise tuples etc. to JSON types
        self.versions = dict(versions or {})
        self.rows_per_part = max(1, rows_per_part)
        self.seconds_per_part = seconds_per_part
        self.parts = parts_dir(self.path)
        self._buffer: list[Row] = []
        self._last_flush = time.monotonic()
        self._sources = self._existing()
        self.done: set[str] = {i for s in self._sources for i in s.ids}

    def _existing(self) -> list[FeatureStore]:
        # A killed writer's half-written store or part: never renamed, so never read.
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
        sources = []
        if self.path.exists():
            sources.append(FeatureStore(self.path))
        if self.parts.is_dir():
            for tmp in self.parts.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            sources += [FeatureStore(p) for p in sorted(self.parts.glob("part-*.h5"))]
        for store in sources:
            found = diff_settings(store.settings, self.settings)
            if found:
                raise SettingsMismatch(
                    f"{store.path} was made with other settings ({found}). Re-run with the "
                    "store's settings, or write to a new --out."
                )
        return sources

    def add(self, row: Row) -> None:
        """Buffer one finished image; writes a part when the buffer is full or old."""
        self._buffer.append(row)
        self.done.add(row.id)
        if (
            len(self._buffer) >= self.rows_per_part
            or time.monotonic() - self._last_flush >= self.seconds_per_part
        ):
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one new part file (atomically)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        rows, self._buffer = self._buffer, []
        dim = int(self.settings["dim"])
        per_image = {
            "ids": np.array([r.id for r in rows], dtype=object),
            "status": np.array([0 if r.ok else 1 for r in rows], dtype=np.int8),
            "reason": np.array([r.reason for r in rows], dtype=object),
            "note": np.array([r.note for r in rows], dtype=object),
            "image_size": np.array([r.image_size for r in rows], dtype=np.int32).reshape(-1, 2),
        }
        descriptors = {}
        for key in _descriptor_keys(self.settings):
            block = np.full((len(rows), dim), np.nan, dtype=np.float32)
            for i, r in enumerate(rows):
                if r.ok and r.descriptors is not None:
                    block[i] = r.descriptors[key]
            descriptors[key] = block
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.h5"
        _write_store(self.parts / name, self.settings, self.versions, per_image, descriptors)
        self._sources.append(FeatureStore(self.parts / name))

    def finalize(self, order: Iterable[str] | None = None) -> FeatureStore:
        """Flush, combine the store and its parts into one file, and remove the parts.

        Args:
            order: Canonical order for new ids (the input list), so a resumed run ends with
                the same store as an uninterrupted one.
        """
        self.flush()
        if not self._sources:
            _write_store(
                self.path, self.settings, self.versions, _empty_per_image(),
                {k: np.zeros((0, int(self.settings["dim"])), np.float32)
                 for k in _descriptor_keys(self.settings)},
            )  # fmt: skip
        elif len(self._sources) > 1 or self._sources[0].path != self.path:
            combine_stores(self.path, [s.path for s in self._sources], order=order)
        if self.parts.is_dir():
            for part in self.parts.glob("part-*.h5"):
                part.unlink()
            try:
                self.parts.rmdir()
            except OSError:
                pass
        self._sources = [FeatureStore(self.path)]
        return self._sources[0]
