"""The design matrix: SVM input rows built from feature stores (nets, scales, stack|average, L2).

How a row is made, for one image (Appendix B, with the paper's open choices made explicit):

1. For each net, read its flip-averaged descriptor at each chosen scale Q from the store that
   holds the net; with ``block_norm``, L2-normalise each of these (net, Q) blocks.
2. Aggregate the scales of each net: ``stack`` concatenates them in the order given
   (dim x |Q| values), ``average`` takes their mean (dim values); with ``block_norm``,
   L2-normalise each net's aggregated block.
3. Late-fuse the nets by concatenating their blocks in the order given.
4. L2-normalise the whole row (always).

Rows are aligned by image id across stores, so stores may list images in any order. Stores that
are fused must agree on every setting except their nets, weights and scales; a model's features
must match the stores it was fit on (:func:`check_provenance`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vggfeat.errors import SettingsMismatch, VggfeatError
from vggfeat.store import FeatureStore, first_difference, weights_identity

__all__ = [
    "AGGREGATES",
    "FeatureError",
    "FeatureSpec",
    "check_provenance",
    "design_matrix",
    "feature_provenance",
    "feature_record",
    "model_matrix",
    "net_sources",
    "open_stores",
    "predict_store",
    "resolve_spec",
    "store_ids",
    "usable_ids",
]

AGGREGATES = ("stack", "average")
# Settings that may differ between fused stores: each store has its own nets, their weights
# and the scales it was extracted at. Everything else determines the numbers and must agree.
_PER_STORE = ("nets", "weights", "scales")


class FeatureError(VggfeatError):
    """Features cannot be built: missing, failed or non-finite rows, or a bad request."""


@dataclass(frozen=True)
class FeatureSpec:
    """How stored descriptors become one design-matrix row (see the module docstring).

    Attributes:
        nets: Nets to late-fuse, in stacking order, e.g. ('D', 'E').
        scales: Smallest sides Q to use, in stacking order, e.g. (256, 384, 512).
        aggregate: 'stack' (Caltech) or 'average' (VOC) across scales.
        block_norm: Also L2-normalise each (net, Q) block and each net's block before they are
            combined; the final row is L2-normalised either way.
    """

    nets: tuple[str, ...]
    scales: tuple[int, ...]
    aggregate: str = "stack"
    block_norm: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.nets, str) or isinstance(self.scales, (str, int)):
            raise FeatureError(
                "FeatureSpec nets and scales must be sequences, e.g. ('D',), (384,)."
            )
        try:
            scales = tuple(int(q) for q in self.scales)
        except (TypeError, ValueError):
            raise FeatureError(f"Scales must be integers (pixels), got {self.scales!r}.") from None
        object.__setattr__(self, "nets", tuple(str(n) for n in self.nets))
        object.__setattr__(self, "scales", scales)
        if not self.nets or not all(self.nets):
            raise FeatureError("No nets chosen: give at least one, e.g. --nets D.")
        if len(set(self.nets)) != len(self.nets):
            raise FeatureError(f"Nets {', '.join(self.nets)} repeat a net; give each once.")
        if not scales:
            raise FeatureError("No scales chosen: give at least one, e.g. --scales 384.")
        if len(set(scales)) != len(scales) or min(scales) <= 0:
            raise FeatureError(
                f"Scales {', '.join(map(str, scales))} must be distinct positive sizes."
            )
        if self.aggregate not in AGGREGATES:
            raise FeatureError(
                f"Unknown aggregate {self.aggregate!r}. Valid: {', '.join(AGGREGATES)}."
            )
        if not isinstance(self.block_norm, (bool, np.bool_)):
            raise FeatureError(f"block_norm must be true or false, got {self.block_norm!r}.")
        object.__setattr__(self, "block_norm", bool(self.block_norm))

    def dim(self, block_dim: int) -> int:
        """Row length for stores of descriptor size ``block_dim``."""
        per_net = block_dim * (len(self.scales) if self.aggregate == "stack" else 1)
        return per_net * len(self.nets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the normalisation order spelled out."""
        return {
            "nets": list(self.nets),
            "scales": list(self.scales),
            "aggregate": self.aggregate,
            "block_norm": self.block_norm,
            "normalization": (
                "l2 per (net, Q) block and per net block, then l2 of the row"
                if self.block_norm
                else "l2 of the row"
            ),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        try:
            return cls(
                nets=tuple(d["nets"]),
                scales=tuple(d["scales"]),
                aggregate=str(d.get("aggregate", "stack")),
                block_norm=bool(d.get("block_norm", False)),
            )
        except KeyError as exc:
            raise FeatureError(f"Feature spec lacks {exc.args[0]!r}: {dict(d)}.") from None


# --------------------------------------------------------------------------- stores and spec


def open_stores(paths: Sequence[str | os.PathLike | FeatureStore]) -> list[FeatureStore]:
    """Open feature stores (already open ones pass through); refuses none or the same file twice."""
    stores = [p if isinstance(p, FeatureStore) else FeatureStore(p) for p in paths]
    if not stores:
        raise FeatureError("No feature stores given: pass --features STORE.h5 (once per store).")
    seen: dict[str, FeatureStore] = {}
    for store in stores:
        key = str(store.path.resolve())
        if key in seen:
            raise FeatureError(f"Feature store {store.path} is given twice; give each store once.")
        seen[key] = store
    return stores


def _canonical(name: str, stores: Sequence[FeatureStore]) -> str:
    """The net name the stores use for ``name`` (accepts aliases such as 'vgg16' for 'D')."""
    available = [n for s in stores for n in s.nets]
    if name in available:
        return name
    try:
        from vggfeat.nets import canonical_net  # imports torch: only for aliases

        canon = canonical_net(name)
    except VggfeatError:
        canon = name
    if canon in available:
        return canon
    raise _no_such_net(name, stores)


def _no_such_net(name: str, stores: Sequence[FeatureStore]) -> FeatureError:
    held = "; ".join(f"{s.path.name}: {', '.join(s.nets)}" for s in stores)
    return FeatureError(f"Net {name!r} is in none of the stores ({held}); extract it or drop it.")


def net_sources(stores: Sequence[FeatureStore], nets: Sequence[str]) -> dict[str, FeatureStore]:
    """The store holding each net; refuses a net in no store or in several, and a store that
    holds none of ``nets``."""
    holders: dict[str, list[FeatureStore]] = {}
    for store in stores:
        for net in store.nets:
            holders.setdefault(net, []).append(store)
    for net, found in holders.items():
        if len(found) > 1:
            raise FeatureError(
                f"Net {net} is in several stores ({', '.join(s.path.name for s in found)}); "
                "give only one store per net."
            )
    for net in nets:
        if net not in holders:
            raise _no_such_net(net, stores)
    used = {id(holders[n][0]) for n in nets}
    for store in stores:
        if id(store) not in used:
            raise FeatureError(
                f"{store.path.name} holds none of the nets used ({', '.join(nets)}); leave it out."
            )
    return {net: holders[net][0] for net in nets}


def _shared_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _PER_STORE}


def _net_settings(settings: Mapping[str, Any], net: str) -> dict[str, Any]:
    """Everything that determines ``net``'s numbers in a store, except the scales."""
    return {
        **_shared_settings(settings),
        "weights": weights_identity(settings.get("weights", {}).get(net)),
    }


def _check_fusion(stores: Sequence[FeatureStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        found = first_difference(_shared_settings(first.settings), _shared_settings(other.settings))
        if found:
            key, a, b = found
            raise SettingsMismatch(
                f"Cannot fuse {other.path.name} with {first.path.name}: {key} differs "
                f"({first.path.name}: {a!r}, {other.path.name}: {b!r}); fuse stores extracted "
                "with the same settings."
            )


def _check_scales(store: FeatureStore, scales: Sequence[int]) -> None:
    missing = [q for q in scales if q not in store.scales]
    if missing:
        raise FeatureError(
            f"Scale {', '.join(map(str, missing))} is not in {store.path.name} (it has "
            f"{', '.join(map(str, store.scales))}); choose --scales it holds or extract them."
        )


def resolve_spec(
    stores: Sequence[FeatureStore],
    nets: Sequence[str] | None = None,
    scales: Sequence[int] | None = None,
    aggregate: str = "stack",
    block_norm: bool = False,
) -> FeatureSpec:
    """A FeatureSpec with defaults filled from the stores, checked against them.

    Args:
        stores: Open stores.
        nets: Nets to fuse (aliases like 'vgg16' allowed); default all nets, in store order.
        scales: Scales to use; default the scales held by every store, ascending.
        aggregate: 'stack' or 'average'.
        block_norm: See :class:`FeatureSpec`.
    """
    if nets is None:
        nets = [n for s in stores for n in s.nets]
    else:
        nets = [_canonical(n, stores) for n in nets]
    net_sources(stores, nets)  # every store holds one of the nets, each net is in one store
    if scales is None:
        common = set.intersection(*(set(s.scales) for s in stores))
        if not common:
            held = "; ".join(f"{s.path.name}: {', '.join(map(str, s.scales))}" for s in stores)
            raise FeatureError(f"The stores share no scale ({held}); extract a common scale.")
        scales = sorted(common)
    spec = FeatureSpec(tuple(nets), tuple(scales), aggregate, block_norm)
    _check_fusion(stores)
    for store in stores:
        _check_scales(store, spec.scales)
    return spec


# --------------------------------------------------------------------------- the matrix


def _row_norms(x: np.ndarray) -> np.ndarray:
    """(N,) float64 L2 norms of the rows of ``x``, with 1 for all-zero rows (they stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    norms[norms == 0] = 1.0
    return norms


def _ambiguous(store: FeatureStore, ids: Sequence[str]) -> dict[str, list[str]]:
    """The ids among ``ids`` that name, without an extension, several images of ``store``."""
    by_stem: dict[str, list[str]] = {}
    for id_ in store.ids:
        by_stem.setdefault(os.path.splitext(id_)[0], []).append(id_)
    return {i: by_stem[i] for i in ids if len(by_stem.get(i, ())) > 1}


def _check_rows(store: FeatureStore, ids: Sequence[str], role: str) -> np.ndarray:
    """Store rows of ``ids`` (which may omit file extensions); refuses ids the store lacks, ids
    that match several images, and ids whose extraction failed."""
    what = f"{role} ids" if role else "ids"
    rows = store.find(ids)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        ambiguous = _ambiguous(store, [ids[k] for k in missing])
        if ambiguous:
            id_, names = next(iter(ambiguous.items()))
            raise FeatureError(
                f"{len(ambiguous)} of {len(ids)} {what} match several images in "
                f"{store.path.name} (e.g. {id_}: {', '.join(names[:3])}); give those ids with "
                "their file extension."
            )
        raise FeatureError(
            f"{len(missing)} of {len(ids)} {what} are missing from {store.path.name} "
            f"(e.g. {', '.join(ids[k] for k in missing[:3])}); extract them or use a split the "
            "store covers."
        )
    failed = rows[~store.ok[rows]]
    if len(failed):
        examples = "; ".join(f"{store.ids[r]}: {store.reasons[r] or 'failed'}" for r in failed[:3])
        raise FeatureError(
            f"{len(failed)} of {len(ids)} {what} failed extraction in {store.path.name} "
            f"(e.g. {examples}); fix or re-extract those images, or leave them out of the split."
        )
    return rows


def _read_block(
    store: FeatureStore, net: str, q: int, rows: np.ndarray, ids: Sequence[str], role: str
) -> np.ndarray:
    block = store.descriptors(net, q)[rows].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
    if len(bad):
        what = f"{role} images" if role else "images"
        raise FeatureError(
            f"{len(bad)} of {len(ids)} {what} have NaN or inf descriptors in {store.path.name} "
            f"(net {net}, Q {q}) (e.g. {', '.join(ids[i] for i in bad[:3])}); re-extract them "
            "or leave them out of the split."
        )
    return block


def design_matrix(
    stores: Sequence[FeatureStore | str | os.PathLike],
    ids: Sequence[str],
    spec: FeatureSpec,
    role: str = "",
) -> np.ndarray:
    """(N, spec.dim(dim)) float32 design matrix for ``ids`` (rows in that order).

    Args:
        stores: Stores (or paths) holding ``spec.nets``, one store per net.
        ids: Image ids; each must be in every store and have extracted successfully.
        spec: Nets, scales, aggregation and normalisation.
        role: Word for error messages, e.g. 'training'.

    Raises:
        FeatureError: Missing, failed or non-finite rows; nets or scales the stores lack.
        SettingsMismatch: Stores that cannot be fused.
    """
    stores = open_stores(stores)
    if not len(ids):
        raise FeatureError(f"No {role + ' ' if role else ''}images to build features for.")
    sources = net_sources(stores, spec.nets)
    _check_fusion(stores)
    rows = {}
    for store in stores:
        _check_scales(store, spec.scales)
        rows[id(store)] = _check_rows(store, ids, role)
    widths = [sources[n].dim * (len(spec.scales) if spec.aggregate == "stack" else 1)
              for n in spec.nets]  # fmt: skip
    out = np.empty((len(ids), sum(widths)), dtype=np.float32)
    start = 0
    for net, width in zip(spec.nets, widths):
        store = sources[net]
        net_block = out[:, start : start + width]  # a view: filled in place
        start += width
        total = None
        for j, q in enumerate(spec.scales):
            block = _read_block(store, net, q, rows[id(store)], ids, role)
            if spec.block_norm:
                block /= _row_norms(block)[:, None]
            if spec.aggregate == "stack":
                net_block[:, j * store.dim : (j + 1) * store.dim] = block
            elif total is None:
                total = block
            else:
                total += block
        if total is not None:
            net_block[:] = total / len(spec.scales)
        if spec.block_norm:
            net_block /= _row_norms(net_block)[:, None]
    out /= _row_norms(out)[:, None]
    return out


# --------------------------------------------------------------------------- provenance


def feature_provenance(stores: Sequence[FeatureStore]) -> dict[str, Any]:
    """JSON-serialisable record of the stores a model is fit on: paths, settings, weight hashes."""
    return {
        "stores": [
            {
                "path": str(store.path),
                "nets": store.nets,
                "scales": store.scales,
                "weights_sha256": {
                    net: (store.settings.get("weights", {}).get(net) or {}).get("sha256")
                    for net in store.nets
                },
                "settings": store.settings,
                "versions": store.versions,
                "created": store.created,
            }
            for store in stores
        ]
    }


def check_provenance(
    provenance: Mapping[str, Any],
    stores: Sequence[FeatureStore],
    spec: FeatureSpec,
    model: str = "the model",
) -> None:
    """Refuse stores whose features differ from those a model was fit on.

    For each net of ``spec``, compares the settings of the store recorded in ``provenance``
    (weights hash or label, preprocessing, flip, layer, precision, interpolation, dim, ...) with
    those of the given store holding that net, and checks the given store has ``spec.scales``.

    Raises:
        SettingsMismatch: Naming the net, the setting and both values.
    """
    recorded: dict[str, Mapping[str, Any]] = {}
    for entry in provenance.get("stores", []):
        for net in entry.get("nets", []):
            recorded[net] = entry.get("settings", {})
    sources = net_sources(stores, spec.nets)
    for net in spec.nets:
        store = sources[net]
        if net not in recorded:
            raise SettingsMismatch(f"{model} records no store for net {net}; refit the model.")
        found = first_difference(
            _net_settings(recorded[net], net), _net_settings(store.settings, net)
        )
        if found:
            key, fit, given = found
            raise SettingsMismatch(
                f"{store.path.name} does not match the features {model} was fit on: net {net} "
                f"{key} is {given!r} there but {fit!r} in the model; use stores extracted with "
                "the model's settings, or refit."
            )
        _check_scales(store, spec.scales)
    _check_fusion(stores)


# --------------------------------------------------------------------------- models


def feature_record(stores: Sequence[FeatureStore], spec: FeatureSpec) -> dict[str, Any]:
    """What a model needs to rebuild and check its features: ``{"features": spec.to_dict(),
    "provenance": feature_provenance(stores)}``.

    Put it in the spec given to :func:`vggfeat.svm.save_svm` (``vggfeat svm fit`` does), so
    that :func:`model_matrix` and :func:`predict_store` can build a model's input safely.
    """
    return {"features": spec.to_dict(), "provenance": feature_provenance(stores)}


def usable_ids(
    stores: Sequence[FeatureStore | str | os.PathLike], nets: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Ids of the images that every store holding ``nets`` extracted successfully.

    Args:
        stores: Stores (or paths).
        nets: Nets used (default every net of the stores); only their stores are consulted.

    Returns:
        The ids, in the order of the store holding the first net, and notes (one line each)
        on the images left out: failed in, or missing from, some store.
    """
    stores = open_stores(stores)
    nets = [n for s in stores for n in s.nets] if nets is None else list(nets)
    sources = list({id(s): s for s in net_sources(stores, nets).values()}.values())
    first = sources[0]
    keep = first.ok.copy()
    notes = []
    if (~first.ok).any():
        notes.append(f"{int((~first.ok).sum())} images failed extraction in {first.path.name}")
    for other in sources[1:]:
        rows = other.find(first.ids)
        absent = (rows < 0) & keep
        failed = (rows >= 0) & keep & ~other.ok[np.maximum(rows, 0)]
        if absent.any():
            notes.append(f"{int(absent.sum())} images are missing from {other.path.name}")
        if failed.any():
            notes.append(f"{int(failed.sum())} images failed extraction in {other.path.name}")
        keep &= ~absent & ~failed
    return [i for i, k in zip(first.ids, keep) if k], notes


def store_ids(
    stores: Sequence[FeatureStore | str | os.PathLike],
    ids: Sequence[str],
    spec: FeatureSpec,
    role: str = "",
) -> list[str]:
    """``ids`` as the store holding ``spec.nets[0]`` names them (with their file extension),
    so that ids from different label files can be compared; refuses ids it lacks."""
    stores = open_stores(stores)
    store = net_sources(stores, spec.nets)[spec.nets[0]]
    rows = _check_rows(store, list(ids), role)
    return [store.ids[r] for r in rows]


def model_matrix(
    record: Mapping[str, Any],
    stores: Sequence[FeatureStore | str | os.PathLike],
    ids: Sequence[str],
    model: str = "the model",
    role: str = "",
) -> np.ndarray:
    """A model's design matrix for ``ids``: built with the feature spec the model records,
    after checking that the stores hold the features it was fit on.

    Args:
        record: The model's spec, holding ``features`` and ``provenance`` (see
            :func:`feature_record`), as :func:`vggfeat.svm.load_svm` returns it.
        stores: Stores (or paths) holding the model's nets.
        ids: Image ids.
        model: Name of the model for messages.
        role: Word for messages, e.g. 'test'.

    Raises:
        FeatureError: The record lacks the feature spec, or rows are missing or failed.
        SettingsMismatch: The stores' features differ from the model's.
    """
    if "features" not in record or "provenance" not in record:
        raise FeatureError(
            f"{model} records no feature spec and provenance; save it with "
            "vggfeat.features.feature_record(stores, spec) in its spec (vggfeat svm fit does)."
        )
    spec = FeatureSpec.from_dict(record["features"])
    stores = open_stores(stores)
    check_provenance(record["provenance"], stores, spec, model=model)
    return design_matrix(stores, ids, spec, role=role)


def predict_store(
    model: str | os.PathLike | tuple[Any, Mapping[str, Any]],
    stores: Sequence[FeatureStore | str | os.PathLike],
    ids: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Per-class scores of images in feature stores, with the features a model was fit on.

    The safe way to apply a model from Python: unlike ``clf.decision_function(X)``, which
    cannot know what the columns of a raw matrix mean, this builds X with the model's own
    feature spec and refuses stores whose settings differ from those it was fit on.

    Args:
        model: A model file (``vggfeat svm fit`` or :func:`vggfeat.svm.save_svm` with a
            :func:`feature_record` in its spec), or the (classifier, spec) pair
            :func:`vggfeat.svm.load_svm` returns.
        stores: Stores (or paths) holding the model's nets.
        ids: Images to score; default every image all the stores extracted successfully.

    Returns:
        (ids, scores): scores (N, K) float64, column k for ``classifier.classes_[k]``.

    Example:
        >>> ids, scores = predict_store("voc07.h5", ["voc07_D.h5", "voc07_E.h5"])
    """
    from vggfeat.svm import load_svm

    if isinstance(model, tuple):
        clf, record = model
        name = "the model"
    else:
        clf, record = load_svm(model)
        name = os.path.basename(os.fspath(model))
    stores = open_stores(stores)
    if ids is None:
        nets = FeatureSpec.from_dict(record["features"]).nets if "features" in record else None
        ids = usable_ids(stores, nets)[0]
    ids = list(ids)
    x = model_matrix(record, stores, ids, model=name, role="requested")
    return ids, clf.class_scores(x)
