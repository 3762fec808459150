"""Weight sources -> a validated state dict plus the preprocessing spec those weights expect.

Sources: ``imagenet`` (torchvision's IMAGENET1K_V1 through the torch hub cache), a local file
(torchvision-style ``.pth``/``.pt`` state dict, a vggfeat training checkpoint, or vggfeat's own
``.safetensors`` weight file, which carries its preprocessing), and ``random`` for tests.
Every load is safe: no arbitrary unpickling (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vggfeat.errors import WeightsError
from vggfeat.files import publish, resolve_output
from vggfeat.nets import TORCHVISION_NAMES, VGG, canonical_net

__all__ = [
    "Preprocess",
    "PREPROCESS",
    "Weights",
    "load_weights",
    "save_weights",
    "read_weights_metadata",
    "check_state_dict",
    "imagenet_file",
    "infer_net",
    "sha256_file",
    "WEIGHTS_FORMAT",
    "DEMO_WEIGHTS",
    "demo_weights_file",
    "read_checkpoint",
    "infer_net_from_state",
]

WEIGHTS_FORMAT = "vggfeat-weights"
WEIGHTS_FORMAT_VERSION = 1
# Training checkpoints (vggfeat.train) that this module reads; kept here so reading weights
# never imports the trainer.
CHECKPOINT_FORMAT = "vggfeat-checkpoint"
CHECKPOINT_VERSION = 1
# The trained demo net shipped inside the package: `--weights demo`.
DEMO_WEIGHTS = "demo"


@dataclass(frozen=True)
class Preprocess:
    """How uint8 RGB pixels become network input: ``(x * scale)[order] - mean) / std``.

    Attributes:
        name: 'torchvision' or 'caffe'.
        channel_order: 'RGB' or 'BGR', the order the net expects.
        scale: Multiplier applied to 0..255 pixels (1/255 for torchvision, 1 for caffe).
        mean: Per-channel mean, in ``channel_order`` and scaled units.
        std: Per-channel std, likewise.
    """

    name: str
    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise WeightsError(f"Unknown channel order {self.channel_order!r}: use RGB or BGR.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise WeightsError(f"Preprocess {self.name!r} needs 3 means and 3 positive stds.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        return cls(
            name=str(d["name"]),
            channel_order=str(d["channel_order"]),
            scale=float(d["scale"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, 3, H, W) uint8 RGB -> normalised float input in the net's channel order."""
        if self.channel_order == "BGR":
            images = images[:, [2, 1, 0]]  # reorder the 1-byte pixels, before widening
        # One fused pass: x * scale / std - mean / std.
        std = torch.tensor(self.std, dtype=torch.float64)
        gain = (self.scale / std).to(dtype=dtype, device=images.device).view(1, 3, 1, 1)
        shift = (-torch.tensor(self.mean, dtype=torch.float64) / std).to(images.device, dtype)
        return torch.addcmul(shift.view(1, 3, 1, 1), images.to(dtype), gain)


PREPROCESS: dict[str, Preprocess] = {
    # torchvision's retrained weights: RGB in [0, 1], ImageNet mean and std.
    "torchvision": Preprocess(
        "torchvision", "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
    # The original Oxford (Caffe) models: BGR in 0..255 minus the mean pixel.
    "caffe": Preprocess("caffe", "BGR", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
}


def _preprocess(spec: str | Preprocess | None, default: str) -> Preprocess:
    if isinstance(spec, Preprocess):
        return spec
    name = default if spec is None else spec
    if name not in PREPROCESS:
        raise WeightsError(f"Unknown preprocessing {name!r}. Valid: {', '.join(PREPROCESS)}.")
    return PREPROCESS[name]


@dataclass(frozen=True)
class Weights:
    """A validated state dict for one net, with what it needs to be used and recorded.

    Attributes:
        net: Table 1 config letter.
        source: 'imagenet', 'random' or the file path as given.
        label: Human-readable origin, e.g. 'random (seed 0)'; 'random' always says so.
        sha256: Hex digest of the weights file, or None for random weights.
        preprocess: The preprocessing these weights expect.
        width: Channel multiplier of the net (1.0 except for test nets).
        num_classes: Width of fc8.
        origin: Free-form provenance (e.g. the converted Caffe file and its hash).
        classes: fc8's class names, when the file records them (vggfeat training checkpoints).
    """

    net: str
    source: str
    label: str
    sha256: str | None
    preprocess: Preprocess
    width: float
    num_classes: int
    state_dict: dict[str, torch.Tensor] = field(repr=False, compare=False)
    origin: dict[str, Any] = field(default_factory=dict, compare=False)
    classes: tuple[str, ...] | None = field(default=None, compare=False)

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable record for stores and model files (no tensors)."""
        return {
            "net": self.net,
            "source": self.source,
            "label": self.label,
            "sha256": self.sha256,
            "preprocess": self.preprocess.to_dict(),
            "width": self.width,
            "origin": self.origin,
        }

    def build(self) -> VGG:
        """Instantiate the net with these weights, in eval mode, without a second copy."""
        with torch.device("meta"):
            model = VGG(self.net, num_classes=self.num_classes, width=self.width)
        model.load_state_dict(self.state_dict, strict=True, assign=True)
        return model.eval()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _reference_shapes(net: str, width: float, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = VGG(net, num_classes=num_classes, width=width)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _infer_width(state_dict: Mapping[str, torch.Tensor]) -> float:
    first = state_dict.get("features.0.weight")
    return 1.0 if first is None else first.shape[0] / 64


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    net: str,
    what: str = "weights",
    width: float | None = None,
) -> tuple[float, int]:
    """Refuse a state dict that does not fit config ``net``: missing/unexpected keys, bad shapes,
    a missing or non-finite classifier.

    Args:
        width: The net's channel multiplier when the file records it; by default inferred from
            conv1_1 (exact for multiples of 1/64).

    Returns:
        (width, num_classes) of the net these weights describe.
    """
    net = canonical_net(net)
    if not any(k.startswith("classifier.") for k in state_dict):
        raise WeightsError(
            f"{what} have no classifier (fc6/fc7), so they cannot give fc7 descriptors "
            "(torchvision's IMAGENET1K_FEATURES is such a file); use IMAGENET1K_V1 weights."
        )
    fc8 = state_dict.get("classifier.6.weight")
    num_classes = int(fc8.shape[0]) if fc8 is not None else 1000
    width = _infer_width(state_dict) if width is None else float(width)
    expected = _reference_shapes(net, width, num_classes)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise WeightsError(
            f"{what} do not match net {net} ({'; '.join(parts)}): check --net matches the file."
        )
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise WeightsError(
                f"{what}: {key} has shape {tuple(state_dict[key].shape)}, net {net} needs {shape}"
                ": check --net matches the file."
            )
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            hint = (
                " (torchvision's IMAGENET1K_FEATURES classifier is NaN: it cannot give fc7)"
                if key.startswith("classifier.")
                else ""
            )
            raise WeightsError(f"{what}: {key} holds NaN or inf values{hint}.")
    return width, num_classes


def imagenet_file(net: str) -> tuple[str, Path]:
    """(download URL, torch hub cache path) of torchvision's IMAGENET1K_V1 file for ``net``."""
    import torchvision.models as tvm

    net = canonical_net(net)
    if net not in TORCHVISION_NAMES:
        raise WeightsError(
            f"torchvision has no ImageNet weights for net {net}; use D (vgg16) or E (vgg19), "
            "or pass --weights PATH."
        )
    enum = tvm.get_model_weights(TORCHVISION_NAMES[net])
    url = enum.IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _download(url: str, dst: Path) -> None:
    # torchvision file names embed the first 8 hex digits of their sha256.
    hash_prefix = dst.stem.rsplit("-", 1)[-1]
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=True)


def _load_imagenet(net: str) -> tuple[dict[str, torch.Tensor], Path]:
    url, path = imagenet_file(net)
    if not path.exists():
        try:
            _download(url, path)
        except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
            raise WeightsError(
                f"{path.name} is not in the torch hub cache and could not be downloaded "
                f"({type(exc).__name__}). Fetch {url} elsewhere and put it at {path}, "
                "or pass --weights PATH."
            ) from None
    return _torch_load(path), path


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(
            f"Cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            " (only plain tensors are loaded; pickled code is refused)."
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(obj).__name__}).")
    return obj


def _unwrap_checkpoint(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a vggfeat/torchvision checkpoint into (state dict, extra metadata)."""
    meta: dict[str, Any] = {}
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            meta = {k: v for k, v in obj.items() if k != key}
            obj = obj[key]
            break
    # DistributedDataParallel prefixes every key with 'module.'.
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, meta


def demo_weights_file() -> Path:
    """The trained demo net shipped in the package (``--weights demo``)."""
    from vggfeat.demo import DEMO_WEIGHTS_FILE

    if not DEMO_WEIGHTS_FILE.is_file():
        raise WeightsError(
            f"The demo weights {DEMO_WEIGHTS_FILE} are missing from this install: reinstall "
            "vggfeat, or retrain them with recipes/demo_weights.sh."
        )
    return DEMO_WEIGHTS_FILE


def _source_path(source: str | os.PathLike) -> Path:
    """'demo' or a path -> an existing weights file (else a one-line error)."""
    if str(source) == DEMO_WEIGHTS:
        return demo_weights_file()
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist. Use --weights imagenet, demo, random, or a "
            "path to .pth/.pt/.safetensors weights."
        )
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A .pth/.pt file's state dict (floating tensors as float32) and its metadata.

    A vggfeat training checkpoint carries net, width, classes, preprocess (a dict), its storage
    dtype (fp16 weights widen exactly to fp32) and the training record; a plain state dict has
    no metadata. ``path`` may be 'demo'.
    """
    path = _source_path(path)
    state, meta = _unwrap_checkpoint(_torch_load(path))
    if meta.get("format") == CHECKPOINT_FORMAT:
        version = int(meta.get("format_version", 0))
        if version > CHECKPOINT_VERSION:
            raise WeightsError(
                f"{path} is a version {version} checkpoint; this vggfeat reads up to "
                f"{CHECKPOINT_VERSION}: upgrade vggfeat."
            )
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, meta


def infer_net_from_state(state: Mapping[str, torch.Tensor], what: str = "weights") -> str:
    """The Table 1 config whose keys and shapes ``state`` fits (raises naming what is off)."""
    from vggfeat.nets import NETS

    for net in NETS:
        try:
            check_state_dict(state, net, what=what)
            return net
        except WeightsError:
            continue
    check_state_dict(state, "D", what=what)  # raises, naming what is off for vgg16
    raise AssertionError("unreachable")


def infer_net(path: str | os.PathLike) -> str:
    """The Table 1 config a .pth/.pt/.safetensors file (or 'demo') holds: as recorded, else the
    one its keys and shapes fit."""
    path = _source_path(path)
    if path.suffix == ".safetensors":
        return canonical_net(read_weights_metadata(path)["net"])
    state, extra = read_checkpoint(path)
    if "net" in extra:
        return canonical_net(str(extra["net"]))
    return infer_net_from_state(state, what=path.name)


def save_weights(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    net: str,
    preprocess: Preprocess,
    origin: Mapping[str, Any] | None = None,
) -> str:
    """Write vggfeat's own weight file (safetensors, spec in its metadata); returns its sha256.

    The file is published only after it reads back equal (see :func:`vggfeat.files.publish`).
    """
    from safetensors.torch import save_file

    net = canonical_net(net)
    check_state_dict(state_dict, net, what=f"weights for {path}")
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": str(WEIGHTS_FORMAT_VERSION),
        "net": net,
        "preprocess": json.dumps(preprocess.to_dict()),
        "origin": json.dumps(dict(origin or {})),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}

    def verify(tmp: Path) -> None:
        from safetensors.torch import load_file

        back = load_file(str(tmp))
        if back.keys() != tensors.keys() or not all(torch.equal(back[k], tensors[k]) for k in back):
            raise OSError(errno.EIO, "weights read back differ from what was written")

    with publish(path, verify=verify, hint="free space or choose another output") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return sha256_file(resolve_output(path))


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a vggfeat ``.safetensors`` weight file: net, preprocess, origin."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise WeightsError(f"Cannot read safetensors file {path}: {exc}") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(
            f"{path} is a safetensors file but not a vggfeat weight file (no "
            f"format={WEIGHTS_FORMAT} metadata); convert it with `vggfeat weights import`."
        )
    return {
        "net": meta["net"],
        "preprocess": Preprocess.from_dict(json.loads(meta["preprocess"])),
        "origin": json.loads(meta.get("origin", "{}")),
        "format_version": int(meta.get("format_version", "1")),
    }


def _load_file(
    path: Path, net: str, preprocess: str | Preprocess | None
) -> tuple[dict[str, torch.Tensor], Preprocess, dict[str, Any], tuple[str, ...] | None]:
    path = _source_path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = read_weights_metadata(path)
        if canonical_net(meta["net"]) != net:
            raise WeightsError(f"{path} holds weights for net {meta['net']}, not net {net}.")
        spec = meta["preprocess"] if preprocess is None else _preprocess(preprocess, "torchvision")
        return load_file(str(path)), spec, meta["origin"], None
    state, extra = read_checkpoint(path)
    if "net" in extra and canonical_net(str(extra["net"])) != net:
        raise WeightsError(
            f"{path} is a checkpoint of net {extra['net']}, not net {net}: pass --net "
            f"{extra['net']} (or weights of net {net})."
        )
    recorded = extra.get("preprocess")
    if preprocess is None and isinstance(recorded, dict):
        spec = Preprocess.from_dict(recorded)
    else:
        spec = _preprocess(preprocess, recorded if isinstance(recorded, str) else "torchvision")
    origin = {k: v for k, v in extra.items() if isinstance(v, (str, int, float))}
    if "training" in extra:
        origin.update(_training_summary(extra))
    classes = tuple(str(c) for c in extra["classes"]) if "classes" in extra else None
    return state, spec, origin, classes


def _training_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A few provenance fields of a training checkpoint (stores record them)."""
    record = meta["training"]
    final = record.get("final_val") or (record["epochs"][-1] if record.get("epochs") else {})
    out: dict[str, Any] = {
        "trained_on": record["data"]["train"],
        "classes": len(meta.get("classes", [])),
        "epochs": len(record.get("epochs", [])),
        "crop": int(record["config"]["crop"]),
    }
    if "val_top1_error" in final:
        out["val_top1_error"] = round(float(final["val_top1_error"]), 4)
    return out


def load_weights(
    source: str,
    net: str,
    preprocess: str | Preprocess | None = None,
    seed: int = 0,
    width: float = 1.0,
) -> Weights:
    """Resolve ``source`` ('imagenet', 'random' or a path) into validated weights for ``net``.

    Args:
        source: 'imagenet' (torchvision IMAGENET1K_V1, cached or downloaded), 'random', 'demo'
            (the trained demo net in the package), or a path.
        net: Table 1 config letter or torchvision name.
        preprocess: Override the preprocessing ('torchvision' or 'caffe'); by default the one the
            source carries (plain state dicts mean torchvision).
        seed: Seed for random weights.
        width: Channel multiplier, for random test nets only.
    """
    net = canonical_net(net)
    origin: dict[str, Any] = {}
    classes = None
    if source == "random":
        torch.manual_seed(seed)
        state = VGG(net, width=width).state_dict()
        spec, label, sha = _preprocess(preprocess, "torchvision"), f"random (seed {seed})", None
        if width != 1.0:
            label += f", width {width:g}"
    elif source == "imagenet":
        state, path = _load_imagenet(net)
        spec = _preprocess(preprocess, "torchvision")
        label = f"imagenet (torchvision {TORCHVISION_NAMES[net]} IMAGENET1K_V1)"
        sha, origin = sha256_file(path), {"file": path.name}
    else:
        path = _source_path(source)
        state, spec, origin, classes = _load_file(path, net, preprocess)
        label, sha = f"file {path.name}", sha256_file(path)
        if source == DEMO_WEIGHTS:
            label = f"demo ({path.name}, trained by vggfeat train; see `vggfeat weights info demo`)"
    recorded = origin.get("width")
    recorded_width = float(recorded) if isinstance(recorded, (int, float)) else None
    width_found, num_classes = check_state_dict(
        state, net, what=f"weights '{source}'", width=recorded_width
    )
    return Weights(
        net=net,
        source=source,
        label=label,
        sha256=sha,
        preprocess=spec,
        width=width_found,
        num_classes=num_classes,
        state_dict=dict(state),
        origin=origin,
        classes=classes,
    )
