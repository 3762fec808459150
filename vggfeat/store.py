"""The HDF5 feature store: per-image ids, status and fingerprints, per (net, Q) raw descriptors.

Layout (format ``vggfeat-store`` version 2; readable with plain h5py):

    /                       attrs: format, format_version, settings (JSON), versions (JSON), created
    /ids                    (N,) utf-8 strings: image ids, in store order
    /status                 (N,) int8: 0 ok, 1 failed (attrs: codes, JSON)
    /reason                 (N,) utf-8: why an image failed ('' when ok)
    /note                   (N,) utf-8: what was changed (e.g. a crop of an extreme panorama)
    /image_size             (N, 2) int32: decoded (height, width) after EXIF orientation
    /source                 (N,) utf-8: absolute path the row was extracted from
    /file_size              (N,) int64: the file's size in bytes when it was read (-1 unknown)
    /file_mtime_ns          (N,) int64: its modification time, ns since the epoch
    /file_sha256            (N,) utf-8: its SHA-256 ('' unless asked for)
    /box                    (N, 4) float32: a region row's box (xmin, ymin, xmax, ymax; VOC's
                            1-based inclusive pixels of the image); NaN for whole images
    /descriptors/<net>/<Q>  (N, dim) float32: flip-averaged descriptor; NaN rows for failed images

Strings are UTF-8; a file name that is not (bytes a folder scan had to escape) is stored as
its original bytes, and read back with ``surrogateescape`` (attr ``errors`` on each string
dataset), so every id round-trips. Every dataset carries a ``crc32`` attr of its content;
numeric datasets also carry HDF5's fletcher32 filter, so a damaged chunk fails to read
wherever the file is copied. Version-1 stores (no fingerprints, no checksums) and version-2
stores written before regions existed (no ``/box``: every row a whole image) still open.

Integrity: a store or part is written through :func:`vggfeat.files.publish_stream` (HDF5 never
sees an I/O error), read back and compared with checksums taken while writing, and only then
renamed into place. Crash safety: a writer never modifies a store in place. Finished rows go to
small part files in ``<store>.parts/``; at the end the store and its parts are streamed, a chunk
at a time, into a new file that replaces the old one by an atomic rename. A SIGKILL at any
moment leaves the old store, complete parts and at most a temporary file. A resume verifies
the parts (and, before rewriting it, the store) and extracts again the images of damaged rows.

Many writers: each process writes its own store (a shard); :func:`combine_stores` joins shards
into one store whose descriptors are copied or are HDF5 virtual datasets pointing into the
shards. One process at a time may write a store (:class:`vggfeat.files.OutputLock`).

This module never imports torch.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vggfeat.errors import SettingsMismatch, StoreError
from vggfeat.files import (
    OutputLock,
    check_free_space,
    output_error,
    publish_stream,
    resolve_output,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FeatureStore",
    "Fingerprint",
    "Plan",
    "Problem",
    "check_format",
    "StoreWriter",
    "Row",
    "combine_stores",
    "diff_settings",
    "first_difference",
    "fingerprint_files",
    "weights_identity",
    "comparable_settings",
    "parts_dir",
    "pending_parts",
    "pending_summary",
    "printable",
]

FORMAT = "vggfeat-store"
FORMAT_VERSION = 2
STATUS_CODES = {0: "ok", 1: "failed"}
_STR = h5py.string_dtype("utf-8")
_ERRORS = "surrogateescape"  # how undecodable file-name bytes live in str and come back
_PER_IMAGE_V1 = ("ids", "status", "reason", "note", "image_size")
_FINGERPRINT = ("source", "file_size", "file_mtime_ns", "file_sha256")
_PER_IMAGE = _PER_IMAGE_V1 + _FINGERPRINT + ("box",)
_OPTIONAL = frozenset({"box"})  # absent from stores written before regions: all whole images
_STRINGS = frozenset({"ids", "reason", "note", "source", "file_sha256"})
_NUMBERS = {"status": np.int8, "image_size": np.int32, "file_size": np.int64,
            "file_mtime_ns": np.int64, "box": np.float32}  # fmt: skip
_UNKNOWN = {"source": "", "file_size": -1, "file_mtime_ns": 0, "file_sha256": ""}
_CHUNK_BYTES = 1 << 20  # descriptor chunk: 64 rows of 4096 floats; the finalize's memory unit
_OPEN_FILES = 32  # source files a combine keeps open at once

Meta = dict[str, np.ndarray]  # per-image arrays keyed by dataset name (strings as objects)


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


def pending_parts(path: str | os.PathLike) -> list[Path]:
    """Part files an unfinished run left for the store at ``path``, oldest first."""
    folder = parts_dir(resolve_output(path))
    return sorted(folder.glob("part-*.h5")) if folder.is_dir() else []


def printable(text: str) -> str:
    """``text`` safe to print: undecodable file-name bytes shown as ``\\xe9`` escapes."""
    return text.encode("utf-8", _ERRORS).decode("utf-8", "backslashreplace")


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


# --- fingerprints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """What a file was when it was read: size and mtime, and optionally its SHA-256.

    ``size == -1`` means unknown (a version-1 row, or a file that could not be stat'ed).
    """

    size: int = -1
    mtime_ns: int = 0
    sha256: str = ""

    @property
    def known(self) -> bool:
        return self.size >= 0

    def matches(self, other: Fingerprint) -> bool | None:
        """Same file content? By hash when both have one, else size and mtime; None when
        either is unknown."""
        if not (self.known and other.known):
            return None
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        return self.size == other.size and self.mtime_ns == other.mtime_ns


def _fingerprint(path: str, content_hash: bool) -> Fingerprint:
    try:
        st = os.stat(path)
        digest = ""
        if content_hash:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            digest = h.hexdigest()
    except OSError:
        return Fingerprint()  # the decode will fail and record why
    return Fingerprint(st.st_size, st.st_mtime_ns, digest)


def fingerprint_files(paths: Sequence[str], content_hash: bool = False) -> list[Fingerprint]:
    """Fingerprint of each file (size, mtime; SHA-256 too with ``content_hash``)."""
    if not content_hash:
        return [_fingerprint(p, False) for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashing is I/O bound, hashlib frees the GIL
        return list(pool.map(lambda p: _fingerprint(p, True), paths))


@dataclass
class Row:
    """One image's result, as the extractor hands it to a writer.

    ``descriptors`` maps (net, Q) to a (dim,) float32 vector; empty for failed images.
    ``source``, ``fingerprint`` and ``box`` (a region's box) default to what
    :meth:`StoreWriter.plan` recorded for the id.
    """

    id: str
    ok: bool
    reason: str = ""
    note: str = ""
    image_size: tuple[int, int] = (0, 0)
    descriptors: Mapping[tuple[str, int], np.ndarray] | None = None
    source: str | None = None
    fingerprint: Fingerprint | None = None
    box: Sequence[float] | None = None


def _descriptor_keys(settings: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(net, int(q)) for net in settings["nets"] for q in settings["scales"]]


def _key(net: str, q: int) -> str:
    return f"descriptors/{net}/{q}"


# --- per-image data and checksums ------------------------------------------------------------


def _empty_meta(n: int = 0) -> Meta:
    meta: Meta = {name: np.full(n, "", dtype=object) for name in _STRINGS}
    meta["status"] = np.ones(n, np.int8)
    meta["image_size"] = np.zeros((n, 2), np.int32)
    meta["file_size"] = np.full(n, -1, np.int64)
    meta["file_mtime_ns"] = np.zeros(n, np.int64)
    meta["box"] = np.full((n, 4), np.nan, np.float32)
    return meta


Inputs = Mapping[str, tuple[str, Fingerprint, Any]]  # id -> (source, fingerprint, box)


def _box_array(box: Sequence[float] | None) -> np.ndarray:
    """(4,) float32 of a region's box; NaN for a whole image."""
    return np.full(4, np.nan, np.float32) if box is None else np.asarray(box, np.float32)


def _same_box(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def _meta_of_rows(rows: Sequence[Row], inputs: Inputs) -> Meta:
    meta = _empty_meta(len(rows))
    for i, r in enumerate(rows):
        source, fp, box = inputs.get(r.id, ("", Fingerprint(), None))
        source = r.source if r.source is not None else source
        fp = r.fingerprint if r.fingerprint is not None else fp
        meta["box"][i] = _box_array(r.box if r.box is not None else box)
        meta["ids"][i], meta["reason"][i], meta["note"][i] = r.id, r.reason, r.note
        meta["status"][i] = 0 if r.ok else 1
        meta["image_size"][i] = r.image_size
        meta["source"][i], meta["file_sha256"][i] = source, fp.sha256
        meta["file_size"][i], meta["file_mtime_ns"][i] = fp.size, fp.mtime_ns
    return meta


def _take(meta: Meta, index: np.ndarray) -> Meta:
    return {name: values[index] for name, values in meta.items()}


def _encode(values: Iterable[str]) -> list[bytes]:
    return [v.encode("utf-8", _ERRORS) for v in values]


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _read_strings(ds: h5py.Dataset) -> np.ndarray:
    return _objects([v.decode("utf-8", _ERRORS) for v in ds[()]])


def _cause(exc: BaseException) -> str:
    """The innermost reason of an h5py error ('Can't read data (... fletcher32 ...)')."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.rsplit("(", 1)[-1].rstrip(")") if "(" in text else text


def _crc(values: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of a dataset's content (strings as NUL-separated UTF-8), continuing ``crc``."""
    if values.dtype == object:
        return zlib.crc32(b"\0".join(_encode(values)), crc)
    return zlib.crc32(np.ascontiguousarray(values), crc)


def _fingerprint_at(meta: Meta, i: int) -> Fingerprint:
    return Fingerprint(
        int(meta["file_size"][i]), int(meta["file_mtime_ns"][i]), str(meta["file_sha256"][i])
    )


@dataclass
class Problem:
    """A damaged part of a store: file, HDF5 key, rows [start, stop) (None: all) and cause."""

    path: Path
    key: str
    rows: tuple[int, int] | None
    cause: str

    def __str__(self) -> str:
        where = f" rows {self.rows[0]}-{self.rows[1] - 1}" if self.rows else ""
        return f"{self.path}: /{self.key}{where}: {self.cause}"


def _chunk_rows(dim: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * max(1, dim)))


def _check_dataset(path: Path, ds: h5py.Dataset, key: str) -> list[Problem]:
    """Read ``ds`` chunk by chunk (fletcher32 checks each) and compare its crc32 attr."""
    if ds.is_virtual:
        return []  # its sources are stores of their own, verified one by one
    n = ds.shape[0] if ds.shape else 0
    step = ds.chunks[0] if ds.chunks else max(n, 1)
    if ds.dtype.kind == "O":  # strings: contiguous, no filter; the crc32 attr guards them
        try:
            values = _read_strings(ds)
        except (OSError, UnicodeDecodeError) as exc:
            return [Problem(path, key, None, f"unreadable ({_cause(exc)})")]
        if "crc32" in ds.attrs and int(ds.attrs["crc32"]) != _crc(values):
            return [Problem(path, key, None, "checksum differs from the recorded one")]
        return []
    problems, crc, readable = [], 0, True
    buffer = np.empty((min(step, n),) + ds.shape[1:], dtype=ds.dtype)
    for start in range(0, n, step):
        stop = min(n, start + step)
        if ds.chunks and ds.id.get_chunk_info_by_coord((start,) + (0,) * (ds.ndim - 1)).size == 0:
            problems.append(Problem(path, key, (start, stop), "chunk missing (never written)"))
            readable = False
            continue
        block = buffer[: stop - start]
        try:
            ds.read_direct(block, np.s_[start:stop], np.s_[: stop - start])
        except OSError as exc:
            problems.append(Problem(path, key, (start, stop), f"unreadable ({_cause(exc)})"))
            readable = False
            continue
        crc = _crc(block, crc)
    if readable and "crc32" in ds.attrs and int(ds.attrs["crc32"]) != crc:
        problems.append(Problem(path, key, None, "checksum differs from the recorded one"))
    return problems


# --- reading --------------------------------------------------------------------------------


def _virtual_files(f: h5py.File, folder: Path) -> set[Path]:
    """Files the virtual datasets of an open store read from, resolved against ``folder``."""
    files = set()
    for net_group in f.get("descriptors", {}).values():
        for ds in net_group.values():
            if ds.is_virtual:
                for vs in ds.virtual_sources():
                    files.add(Path(os.path.normpath(folder / vs.file_name)))
    return files


class FeatureStore:
    """Read-only view of a feature store.

    Opening checks the per-image data against its checksums and that the shards a merged
    (virtual) store points into are all there; :meth:`verify` reads everything.

    Example:
        >>> st = FeatureStore("voc07_E.h5")
        >>> st.ids[:2], st.descriptors("E", 384).shape
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            hint = ""
            if pending_parts(self.path):
                hint = (
                    f" (parts of an interrupted run wait in {parts_dir(self.path)}: run the same "
                    "`vggfeat extract` command to finish it)"
                )
            raise StoreError(f"Feature store {self.path} does not exist{hint}.")
        try:
            with h5py.File(self.path, "r") as f:
                self._check_format(f)
                self.format_version = int(f.attrs.get("format_version", 0))
                self.settings: dict[str, Any] = json.loads(f.attrs["settings"])
                self.versions: dict[str, Any] = json.loads(f.attrs.get("versions", "{}"))
                self.created: str = str(f.attrs.get("created", ""))
                self.meta = self._read_meta(f)
                self.shards = sorted(_virtual_files(f, self.path.resolve().parent))
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"Cannot read feature store {self.path}: {_cause(exc)}") from None
        self._check_sources()
        self.ids: list[str] = list(self.meta["ids"])
        self.status: np.ndarray = self.meta["status"]
        self.reasons: list[str] = list(self.meta["reason"])
        self.notes: list[str] = list(self.meta["note"])
        self.image_size: np.ndarray = self.meta["image_size"]
        self._row = {id_: i for i, id_ in enumerate(self.ids)}

    def _check_format(self, f: h5py.File) -> None:
        check_format(f.attrs, self.path, FORMAT, FORMAT_VERSION, "feature store")
        needed = _PER_IMAGE if int(f.attrs.get("format_version", 0)) >= 2 else _PER_IMAGE_V1
        needed = [key for key in needed if key not in _OPTIONAL]
        for key in needed:
            if key not in f:
                raise StoreError(f"{self.path}: missing HDF5 key /{key}.")

    def _read_meta(self, f: h5py.File) -> Meta:
        n = f["ids"].shape[0]
        meta = _empty_meta(n)
        for name in _PER_IMAGE:
            if name not in f:
                continue  # a version-1 store (fingerprints unknown) or one without regions
            ds = f[name]
            values = _read_strings(ds) if name in _STRINGS else ds[()]
            if "crc32" in ds.attrs and _crc(values) != int(ds.attrs["crc32"]):
                raise StoreError(
                    f"{self.path}: /{name} is damaged (checksum mismatch): move the file "
                    "away and extract again (`vggfeat info --verify` lists what is damaged)."
                )
            meta[name] = values.astype(_NUMBERS[name]) if name in _NUMBERS else values
        meta["image_size"] = meta["image_size"].reshape(-1, 2)
        meta["box"] = meta["box"].reshape(-1, 4)
        return meta

    def _check_sources(self) -> None:
        missing = [p for p in self.shards if not p.is_file()]
        if missing:
            raise StoreError(
                f"{self.path} is a merged store whose shard {missing[0]} is missing"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: put the "
                "shards back beside it, or merge again with --copy."
            )

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

    @property
    def sources(self) -> list[str]:
        """(N,) absolute path each row was extracted from ('' when unknown)."""
        return list(self.meta["source"])

    def fingerprint(self, row: int) -> Fingerprint:
        """The recorded fingerprint of the file behind ``row``."""
        return _fingerprint_at(self.meta, row)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 box of each region row (xmin, ymin, xmax, ymax; VOC's 1-based
        inclusive pixels); NaN rows for whole images."""
        return self.meta["box"]

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
            missing = [printable(ids[k]) for k in np.flatnonzero(rows < 0)]
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
        self._check_sources()  # a missing shard would read as NaN rows, silently
        with h5py.File(self.path, "r") as f:
            if key not in f:
                raise StoreError(
                    f"{self.path} has no /{key}: it holds nets {self.nets} at scales {self.scales}."
                )
            try:
                data = f[key][()]
            except OSError as exc:
                raise StoreError(
                    f"{self.path}: /{key} is damaged ({_cause(exc)}): "
                    f"`vggfeat info --verify {self.path}` lists what is damaged."
                ) from None
        return data if ids is None else data[self.rows(ids)]

    def verify(self) -> list[Problem]:
        """Read every dataset, checking HDF5's fletcher32 and the recorded crc32 of each, and
        the shards of a merged store; returns what is damaged (empty when all is well)."""
        problems: list[Problem] = []
        keys = list(_PER_IMAGE) + [_key(n, q) for n, q in _descriptor_keys(self.settings)]
        try:
            with h5py.File(self.path, "r", rdcc_nbytes=0) as f:
                for key in keys:
                    if key in f:
                        problems += _check_dataset(self.path, f[key], key)
                    elif key in _OPTIONAL:
                        continue
                    elif key.startswith("descriptors/") or self.format_version >= 2:
                        problems.append(Problem(self.path, key, None, "missing"))
        except OSError as exc:
            problems.append(Problem(self.path, "", None, f"unreadable ({_cause(exc)})"))
        for shard in self.shards:
            try:
                problems += FeatureStore(shard).verify()
            except StoreError as exc:
                problems.append(Problem(shard, "", None, str(exc)))
        return problems

    def bad_rows(self, problems: Sequence[Problem]) -> np.ndarray:
        """(N,) bool: rows that ``problems`` (from :meth:`verify`) make untrustworthy."""
        bad = np.zeros(len(self), dtype=bool)
        for p in problems:
            if p.rows is None:
                bad[:] = True
            else:
                bad[p.rows[0] : p.rows[1]] = True
        return bad

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description for ``vggfeat info``."""
        return {
            "path": str(self.path),
            "format": f"{FORMAT} v{self.format_version}",
            "created": self.created,
            "images": len(self),
            "ok": int(self.ok.sum()),
            "regions": int((~np.isnan(self.boxes).any(axis=1)).sum()),
            "failed": [{"id": i, "reason": r} for i, r in self.failed()],
            "changed": [{"id": i, "note": n} for i, n in self.changed()],
            "pending_parts": len(pending_parts(self.path)),
            "shards": [str(p) for p in self.shards],
            "settings": self.settings,
            "versions": self.versions,
        }


def pending_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What an interrupted first run left for a store that does not exist yet: its parts."""
    parts = pending_parts(path)
    readable = []
    for p in parts:
        try:
            readable.append(FeatureStore(p))
        except StoreError:
            pass
    return {
        "path": str(path),
        "pending_parts": len(parts),
        "images_in_parts": sum(len(s) for s in readable),
        "unreadable_parts": len(parts) - len(readable),
        "settings": readable[0].settings if readable else None,
    }


# --- writing --------------------------------------------------------------------------------

BlockReader = Callable[[int, int], np.ndarray]  # rows [start, stop) -> (stop - start, dim)


def _write_store(
    path: Path,
    settings: Mapping[str, Any],
    versions: Mapping[str, Any],
    meta: Meta,
    descriptors: Mapping[tuple[str, int], np.ndarray | BlockReader | h5py.VirtualLayout],
) -> None:
    """Write a complete store to ``path``: streamed a chunk at a time, checksummed, read back
    and compared, then renamed into place (see :func:`vggfeat.files.publish_stream`)."""
    n = len(meta["ids"])
    dim = int(settings["dim"])
    rows = min(_chunk_rows(dim), max(n, 1))
    digests: dict[str, int] = {}
    with publish_stream(path, verify=lambda tmp: _check_written(tmp, digests)) as fh:
        # No chunk cache: whole chunks are written once, in order.
        with h5py.File(fh, "w", libver="latest", rdcc_nbytes=0) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["settings"] = json.dumps(settings, sort_keys=True)
            f.attrs["versions"] = json.dumps(versions, sort_keys=True)
            f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            for name in _PER_IMAGE:
                values = meta[name]
                if name in _STRINGS:
                    ds = f.create_dataset(name, data=_encode(values), dtype=_STR, shape=(n,))
                    ds.attrs["errors"] = _ERRORS
                else:
                    values = values.astype(_NUMBERS[name])
                    ds = f.create_dataset(name, data=values, fletcher32=n > 0)
                digests[name] = _crc(values)
                ds.attrs["crc32"] = digests[name]
            f["status"].attrs["codes"] = json.dumps(STATUS_CODES)
            group = f.create_group("descriptors")
            group.attrs["encoding"] = "descriptors/<net>/<Q>: (N, dim) float32"
            for (net, q), data in descriptors.items():
                key = _key(net, q)
                if isinstance(data, h5py.VirtualLayout):
                    f.create_virtual_dataset(key, data, fillvalue=np.nan)
                    continue
                read = data if callable(data) else (lambda a, b, data=data: data[a:b])
                chunks = (rows, dim) if n else None
                ds = f.create_dataset(
                    key, shape=(n, dim), dtype=np.float32, chunks=chunks, fletcher32=n > 0
                )
                crc = 0
                for start in range(0, n, rows):
                    block = np.ascontiguousarray(read(start, min(n, start + rows)), np.float32)
                    ds[start : start + len(block)] = block
                    crc = _crc(block, crc)
                    fh.check()  # a full disk: stop now, not after the whole store
                digests[key] = crc
                ds.attrs["crc32"] = crc
            f.flush()


def _check_written(path: Path, digests: Mapping[str, int]) -> None:
    """Publish-time check: every dataset reads back (fletcher32) with the crc32 computed while
    it was written; otherwise an OSError, so nothing is renamed into place."""
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        for key, want in digests.items():
            if key not in f:
                raise OSError(errno.EIO, f"/{key} is missing from the file read back")
            problems = _check_dataset(path, f[key], key)
            if problems or int(f[key].attrs["crc32"]) != want:
                cause = problems[0].cause if problems else "checksum differs from what was written"
                raise OSError(errno.EIO, f"read back: /{key}: {cause}")


# --- combining ------------------------------------------------------------------------------


class _OpenFiles:
    """Source datasets opened on demand, in at most ``_OPEN_FILES`` files at once (the least
    recently used is closed)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths
        self._open: dict[int, tuple[h5py.File, dict[str, h5py.Dataset]]] = {}

    def dataset(self, s: int, key: str) -> h5py.Dataset:
        entry = self._open.pop(s, None)
        if entry is None:
            if len(self._open) >= _OPEN_FILES:
                self._open.pop(next(iter(self._open)))[0].close()
            entry = (h5py.File(self.paths[s], "r", rdcc_nbytes=0), {})
        self._open[s] = entry  # most recent last
        if key not in entry[1]:
            entry[1][key] = entry[0][key]
        return entry[1][key]

    def close(self) -> None:
        for f, _ in self._open.values():
            f.close()
        self._open.clear()


def _runs(src: np.ndarray, row: np.ndarray) -> Iterable[tuple[int, int, int, int]]:
    """Maximal runs (dst_start, source, src_start, length) of consecutive rows of one source."""
    if not len(src):
        return
    breaks = np.flatnonzero((np.diff(src) != 0) | (np.diff(row) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(src)]])
    for a, b in zip(starts.tolist(), stops.tolist()):
        yield a, int(src[a]), int(row[a]), b - a


def _row_reader(
    sources: Sequence[FeatureStore], src: np.ndarray, row: np.ndarray, key: str, files: _OpenFiles
) -> BlockReader:
    """Reads output rows [a, b) from their sources; memory is the block asked for."""
    dim = sources[0].dim

    def read(a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, dim), dtype=np.float32)
        for dst, s, start, length in _runs(src[a:b], row[a:b]):
            try:
                files.dataset(s, key).read_direct(
                    out, np.s_[start : start + length], np.s_[dst : dst + length]
                )
            except OSError as exc:
                raise StoreError(
                    f"{sources[s].path}: /{key} rows {start}-{start + length - 1} are damaged "
                    f"({_cause(exc)}); nothing was changed: move that "
                    "file away and extract its images again."
                ) from None
        return out

    return read


def _select(
    sources: Sequence[FeatureStore],
    order: Iterable[str] | None,
    newest_wins: bool,
    exclude: Mapping[int, np.ndarray] | None = None,
    keep_first: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One (source, row) per id, as arrays, in canonical order.

    The row of an id is its last occurrence with ``newest_wins`` (a resumed writer's newer
    parts), else its first ok occurrence (shards; the caller refuses conflicts). Rows marked in
    ``exclude`` (source -> (N,) bool) are never chosen. Order: with ``keep_first``, the ids of
    the first source as they are; then the rest in ``order``'s order, then any others in
    source order.
    """
    chosen: dict[str, tuple[int, int]] = {}
    for s, store in enumerate(sources):
        skip = exclude.get(s) if exclude else None
        for r, id_ in enumerate(store.ids):
            if skip is not None and skip[r]:
                continue
            old = chosen.get(id_)
            if old is None or newest_wins or (not sources[old[0]].ok[old[1]] and store.ok[r]):
                chosen[id_] = (s, r)
    head = [i for i in sources[0].ids if i in chosen] if sources and keep_first else []
    seen = set(head)
    rank = {id_: i for i, id_ in enumerate(order or [])}
    rest = sorted((i for i in chosen if i not in seen), key=lambda i: rank.get(i, len(rank)))
    picks = np.array([chosen[i] for i in head + rest], dtype=np.int64).reshape(-1, 2)
    return picks[:, 0], picks[:, 1]


def _conflicts(sources: Sequence[FeatureStore]) -> list[str]:
    """Ids that two sources hold from different files (fingerprints known and different)."""
    first: dict[str, tuple[int, int]] = {}
    found = []
    for s, store in enumerate(sources):
        for r, id_ in enumerate(store.ids):
            if id_ not in first:
                first[id_] = (s, r)
                continue
            s0, r0 = first[id_]
            if sources[s0].fingerprint(r0).matches(store.fingerprint(r)) is False:
                found.append(f"{printable(id_)} ({sources[s0].path} vs {store.path})")
    return found


def _store_bytes(n: int, settings: Mapping[str, Any]) -> int:
    """About how many bytes a store of ``n`` rows takes on disk."""
    return n * (len(_descriptor_keys(settings)) * 4 * int(settings["dim"]) + 256) + (1 << 20)


def _combine(
    out: Path,
    sources: Sequence[FeatureStore],
    order: Iterable[str] | None,
    virtual: bool,
    newest_wins: bool,
    exclude: Mapping[int, np.ndarray] | None = None,
    keep_first: bool = True,
) -> None:
    """Write the combination of ``sources`` to ``out`` (streamed; see :func:`_select`)."""
    src, row = _select(sources, order, newest_wins, exclude, keep_first)
    meta = _empty_meta(len(src))
    for s, store in enumerate(sources):
        where = np.flatnonzero(src == s)
        if len(where):
            for name, values in _take(store.meta, row[where]).items():
                meta[name][where] = values
    settings = sources[0].settings
    if not virtual:
        check_free_space(out, _store_bytes(len(src), settings))
    files = _OpenFiles([s.path for s in sources])
    try:
        descriptors: dict[tuple[str, int], Any] = {}
        for net, q in _descriptor_keys(settings):
            if virtual:
                descriptors[(net, q)] = _virtual_layout(out, sources, src, row, _key(net, q))
            else:
                descriptors[(net, q)] = _row_reader(sources, src, row, _key(net, q), files)
        _write_store(out, settings, sources[0].versions, meta, descriptors)
    finally:
        files.close()


def _virtual_layout(
    out: Path, sources: Sequence[FeatureStore], src: np.ndarray, row: np.ndarray, key: str
) -> h5py.VirtualLayout:
    dim = sources[0].dim
    layout = h5py.VirtualLayout(shape=(len(src), dim), dtype=np.float32)
    folder = resolve_output(out).resolve().parent
    for dst, s, start, length in _runs(src, row):
        # Relative names resolve against the combined file's folder, so the set can move.
        name = os.path.relpath(sources[s].path.resolve(), folder)
        vsource = h5py.VirtualSource(name, key, shape=(len(sources[s]), dim), dtype=np.float32)
        layout[dst : dst + length] = vsource[start : start + length]
    return layout


def _reachable(store: FeatureStore, seen: set[Path] | None = None) -> set[Path]:
    """Every file ``store`` reads descriptors from, through merged stores of merged stores."""
    seen = set() if seen is None else seen
    for shard in store.shards:
        shard = shard.resolve()
        if shard not in seen:
            seen.add(shard)
            try:
                _reachable(FeatureStore(shard), seen)
            except StoreError:
                pass
    return seen


def _refuse_self_reference(
    out: str | os.PathLike, target: Path, store: FeatureStore, virtual: bool
) -> None:
    """Refuse an OUT that the merge would make point at itself or that an input reads from.

    Copying into one of the inputs is fine (it is read before it is replaced); replacing a
    file another input points into would silently change that input.
    """
    if target == store.path.resolve():
        if virtual:
            raise StoreError(
                f"{out} is also an input: a merged store would point into itself. Merge into "
                "a new file, or add --copy."
            )
    elif target in _reachable(store):
        raise StoreError(
            f"{out} is a shard that the input {store.path} points into: replacing it would "
            "change that input. Merge into a new file."
        )


def combine_stores(
    out: str | os.PathLike,
    stores: Sequence[str | os.PathLike],
    order: Iterable[str] | None = None,
    virtual: bool = False,
) -> FeatureStore:
    """Combine stores (shards) with equal settings into one store at ``out``.

    Args:
        out: Destination path; replaced atomically (through a symlink). With ``virtual`` it
            must not be one of the inputs nor a file they point into; copying may replace an
            input (``merge --copy all.h5 all.h5 new.h5`` appends a shard).
        stores: Source stores; an id found in several keeps its first ok occurrence. Two
            stores holding one id from different files (fingerprints differ) are refused, as
            are stores with parts an interrupted run left.
        order: Preferred order of ids after those of the first store.
        virtual: Map descriptors as HDF5 virtual datasets into the sources (no copy; the
            sources must stay beside ``out``) instead of copying them.
    """
    if not stores:
        raise StoreError("No stores to combine.")
    target = resolve_output(out).resolve()
    with OutputLock(target):
        locks = [
            OutputLock(p, shared=True).acquire()
            for p in dict.fromkeys(Path(p).resolve() for p in stores)
            if p != target
        ]
        try:
            sources = [FeatureStore(p) for p in stores]
            for store in sources:
                if pending_parts(store.path):
                    raise StoreError(
                        f"{store.path} has {len(pending_parts(store.path))} parts from an "
                        "interrupted run: run its `vggfeat extract` command again to finish it, "
                        "then merge."
                    )
                _refuse_self_reference(out, target, store, virtual)
            for other in sources[1:]:
                found = diff_settings(sources[0].settings, other.settings)
                if found:
                    raise SettingsMismatch(
                        f"Cannot combine {other.path} with {sources[0].path}: {found}."
                    )
            clashes = _conflicts(sources)
            if clashes:
                raise StoreError(
                    f"{len(clashes)} ids are in two stores from different files (e.g. "
                    f"{clashes[0]}): extract with a --root that makes ids unique, or merge "
                    "fewer stores."
                )
            _combine(Path(out), sources, order, virtual, newest_wins=False)
        finally:
            for lock in locks:
                lock.release()
    return FeatureStore(out)


# --- resumable writing ----------------------------------------------------------------------


def _remove(path: Path) -> None:
    """Remove a temporary, a damaged part or an empty folder; one that cannot be removed is
    harmless (a temporary is never read, a damaged part is found damaged again)."""
    try:
        path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
    except OSError:
        pass


@dataclass
class Plan:
    """What a resumed run must do with its inputs (see :meth:`StoreWriter.plan`).

    Attributes:
        todo: (id, path) to extract, in input order.
        kept: Images whose rows are kept as they are.
        new: Ids not in the store yet.
        changed: Ids whose file (or, for a region, box) changed since their row was written
            (extracted again).
        retried: Ids that failed before (extracted again).
        repaired: Ids whose rows are damaged (extracted again).
        unverifiable: Kept rows without a fingerprint (version-1 stores): a change to their
            files cannot be seen.
    """

    todo: list[tuple[str, str]]
    kept: int = 0
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unverifiable: int = 0


class StoreWriter:
    """Appends rows to a store, crash-safely, and resumes from what earlier runs left.

    Holds the store's lock (:class:`vggfeat.files.OutputLock`) from creation to
    :meth:`finalize` or :meth:`close`; use it as a context manager so an error releases it.
    Damaged part files are removed (their images are extracted again) on creation.

    Args:
        path: The store to create or extend (a symlink is written through).
        settings: Everything that determines the numbers (nets, weights, scales, flip, layer,
            precision, preprocessing, interpolation, ...); must equal an existing store's.
        versions: Software versions, recorded but not compared.
        rows_per_part: Finished rows buffered before a part file is written.
        seconds_per_part: Also write a part when this much time has passed.
        log: Called with one line for each thing the user should know (damaged parts).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        settings: Mapping[str, Any],
        versions: Mapping[str, Any] | None = None,
        rows_per_part: int = 256,
        seconds_per_part: float = 60.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.path = resolve_output(path)
        self.settings = json.loads(json.dumps(settings))  # normalise tuples etc. to JSON types
        self.versions = dict(versions or {})
        self.rows_per_part = max(1, rows_per_part)
        self.seconds_per_part = seconds_per_part
        self.parts = parts_dir(self.path)
        self.log = log or (lambda message: None)
        self._buffer: list[Row] = []
        self._last_flush = time.monotonic()
        self._inputs: dict[str, tuple[str, Fingerprint, Any]] = {}
        self._exclude: dict[int, np.ndarray] = {}
        self._lock = OutputLock(self.path).acquire()
        try:
            self._sources = self._existing()
        except BaseException:
            self._lock.release()
            raise
        self._index = self._newest_rows()
        self.done: set[str] = set(self._index)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's lock; buffered rows not yet in a part are dropped (as in a kill)."""
        self._lock.release()

    def _existing(self) -> list[FeatureStore]:
        # A killed writer's half-written store or part: never renamed, so never read. (We hold
        # the lock: no other writer's temporary can be here.)
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            _remove(tmp)
        sources = []
        if self.path.exists():
            sources.append(FeatureStore(self.path))
        if self.parts.is_dir():
            for tmp in self.parts.glob(".*.tmp"):
                _remove(tmp)
            for part in sorted(self.parts.glob("part-*.h5")):
                store = self._checked_part(part)
                if store is not None:
                    sources.append(store)
        for store in sources:
            found = diff_settings(store.settings, self.settings)
            if found:
                raise SettingsMismatch(
                    f"{store.path} was made with other settings ({found}). Re-run with the "
                    "store's settings, or write to a new --out."
                )
        return sources

    def _checked_part(self, part: Path) -> FeatureStore | None:
        """The part if it reads back whole; else it is removed (its images are redone)."""
        try:
            store = FeatureStore(part)
            problems = store.verify()
            cause, n = (str(problems[0]), len(store)) if problems else ("", 0)
        except StoreError as exc:
            store, cause, n = None, str(exc), 0
        if not cause:
            return store
        _remove(part)
        self.log(
            f"damaged part {part.name} removed ({cause}); its "
            f"{n or 'unknown number of'} images will be extracted again"
        )
        return None

    def _newest_rows(self) -> dict[str, tuple[int, int]]:
        index: dict[str, tuple[int, int]] = {}
        for s, store in enumerate(self._sources):
            skip = self._exclude.get(s)
            for r, id_ in enumerate(store.ids):
                if skip is None or not skip[r]:
                    index[id_] = (s, r)
        return index

    def plan(
        self,
        samples: Sequence[Sequence],
        fingerprints: Sequence[Fingerprint] | None = None,
        retry_failed: bool = True,
        verify: bool = False,
    ) -> Plan:
        """Decide which of ``samples`` (id, path[, box]) to extract, and remember their
        sources, fingerprints and boxes for the rows to come.

        An id is extracted when it is new, when its file's fingerprint (or a region's box)
        changed, when it
        failed before (unless ``retry_failed`` is False), or when its row is damaged. The
        store itself is read and verified before a run that will rewrite it, or with
        ``verify`` (a full read: a store with nothing new to do is otherwise left unread).

        Raises:
            StoreError: an id the store holds from another file (another path, and another
                fingerprint): e.g. ``cats/`` then ``dogs/`` extracted into one store without
                ``--root``.
        """
        fingerprints = fingerprints or [Fingerprint()] * len(samples)
        self._inputs = {
            s[0]: (os.path.abspath(s[1]), fp, s[2] if len(s) > 2 else None)
            for s, fp in zip(samples, fingerprints)
        }
        plan = self._decide(samples, retry_failed)
        has_store = bool(self._sources) and self._sources[0].path == self.path
        if has_store and (verify or plan.todo or len(self._sources) > 1):
            damaged = self._verify_store()
            if damaged:
                plan = self._decide(samples, retry_failed)
                plan.repaired = [i for i in plan.new if i in damaged]
                plan.new = [i for i in plan.new if i not in damaged]
        return plan

    def _decide(self, samples: Sequence[Sequence], retry_failed: bool) -> Plan:
        plan = Plan(todo=[])
        redo: set[str] = set()
        elsewhere = []
        for id_, (source, fp, box) in self._inputs.items():
            hit = self._index.get(id_)
            if hit is None:
                plan.new.append(id_)
                redo.add(id_)
                continue
            store, r = self._sources[hit[0]], hit[1]
            same = fp.matches(store.fingerprint(r))
            was = store.meta["source"][r]
            if same is False and was and was != source:
                elsewhere.append((id_, was, source))
            elif same is False or not _same_box(store.boxes[r], _box_array(box)):
                plan.changed.append(id_)
                redo.add(id_)
            elif not store.ok[r] and retry_failed:
                plan.retried.append(id_)
                redo.add(id_)
            else:
                plan.kept += 1
                plan.unverifiable += same is None
        if elsewhere:
            id_, was, now = elsewhere[0]
            raise StoreError(
                f"{len(elsewhere)} ids in {self.path} come from other files (e.g. "
                f"{printable(id_)}: stored from {printable(was)}, this run reads "
                f"{printable(now)}): give --root a folder above both so ids differ, or write "
                "to a new --out."
            )
        plan.todo = [s for s in samples if s[0] in redo]
        return plan

    def _verify_store(self) -> set[str]:
        """Verify the existing store before it is rewritten. Its damaged rows are dropped
        (those of this run's inputs are extracted again); returns the ids of those rows."""
        store = self._sources[0]
        problems = store.verify()
        if not problems:
            return set()
        bad = store.bad_rows(problems)
        self._exclude[0] = bad
        self._index = self._newest_rows()
        self.done = set(self._index)
        ids = {store.ids[r] for r in np.flatnonzero(bad)}
        lost = [i for i in ids if i not in self._index and i not in self._inputs]
        dropped = f"; {len(lost)} of them are not among this run's inputs and are dropped"
        self.log(
            f"{store.path}: {int(bad.sum())} damaged rows ({problems[0].cause}, "
            f"/{problems[0].key}): their images will be extracted again{dropped if lost else ''}"
        )
        return ids

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
        """Write buffered rows as one new part file (atomically, verified).

        Raises:
            OutputError: the part could not be written (full disk, ...): one line; the
                buffered rows are dropped and will be extracted again by the next run.
        """
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        dim = int(self.settings["dim"])
        meta = _meta_of_rows(rows, self._inputs)
        descriptors = {}
        for key in _descriptor_keys(self.settings):
            block = np.full((len(rows), dim), np.nan, dtype=np.float32)
            for i, r in enumerate(rows):
                if r.ok and r.descriptors is not None:
                    block[i] = r.descriptors[key]
            descriptors[key] = block
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.h5"
        _write_store(self.parts / name, self.settings, self.versions, meta, descriptors)
        self._sources.append(FeatureStore(self.parts / name))

    def finalize(self, order: Iterable[str] | None = None) -> FeatureStore:
        """Flush, stream the store and its parts into one file, remove the parts, and release
        the lock.

        Args:
            order: Canonical order for new ids (the input list), so a resumed run ends with
                the same store as an uninterrupted one.
        """
        try:
            self.flush()
            if not self._sources:
                keys = _descriptor_keys(self.settings)
                empty = np.zeros((0, int(self.settings["dim"])), np.float32)
                _write_store(self.path, self.settings, self.versions, _empty_meta(),
                             dict.fromkeys(keys, empty))  # fmt: skip
            elif len(self._sources) > 1 or self._sources[0].path != self.path or self._exclude:
                # A store keeps its order; a first run's parts take the input order.
                keep = self._sources[0].path == self.path
                _combine(self.path, self._sources, order, virtual=False, newest_wins=True,
                         exclude=self._exclude, keep_first=keep)  # fmt: skip
            # Oldest first: a kill half-way leaves only parts newer than the rows they lost.
            for part in sorted(self.parts.glob("part-*.h5")) if self.parts.is_dir() else []:
                try:
                    part.unlink()
                except OSError as exc:  # left in place, it would later pass for newer rows
                    raise output_error(
                        exc, part, f"{self.path} is complete: remove {self.parts} by hand"
                    ) from None
            _remove(self.parts)
            store = FeatureStore(self.path)
        finally:
            self.close()
        self._sources, self._exclude = [store], {}
        return store
