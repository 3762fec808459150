"""Import the original Oxford VGG releases (Caffe ``.caffemodel``, Keras ``.h5``) as weights.

Only the models Simonyan & Zisserman released reproduce the paper's numbers. They come as Caffe
protobufs, read here by a minimal wire-format reader (no Caffe or protobuf package), and as the
Keras port in HDF5. Both become torchvision's VGG state-dict layout, saved with the Caffe
preprocessing (BGR, 0..255 minus the mean pixel) by :func:`vggfeat.weights.save_weights`.

Layouts:
    Caffe: conv weights (out, in, kh, kw) and fc weights (out, in) already match torch, and fc6's
        inputs are pool5 flattened C x H x W, as ``torch.flatten`` does. Old files store 4-D
        legacy shapes such as (1, 1, 4096, 25088). conv1_1 acts on BGR input: no channel swap.
    Keras (``*_tf_dim_ordering_tf_kernels.h5``): conv kernels (kh, kw, in, out) for a true
        cross-correlation, like torch (the older Theano-ordered ``*_th_kernels`` files hold
        flipped kernels and are refused); dense kernels (in, out); fc6's 25088 inputs are pool5
        flattened H x W x C (channels-last), permuted here to C x H x W.
"""

from __future__ import annotations

import functools
import mmap
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vggfeat.errors import WeightsError
from vggfeat.nets import TORCHVISION_NAMES, VGG, canonical_net
from vggfeat.weights import PREPROCESS, save_weights, sha256_file

__all__ = [
    "CONVERTER_VERSION",
    "FORMATS",
    "OXFORD_FILES",
    "ImportResult",
    "LayerSpec",
    "OxfordFile",
    "SourceModel",
    "convert",
    "converted_name",
    "detect_format",
    "find_file",
    "guess_net",
    "import_weights",
    "inspect_source",
    "layer_specs",
    "oxford_dir",
    "read_caffe",
    "read_keras",
    "read_source",
    "search_dirs",
    "to_state_dict",
]

CONVERTER_VERSION = 1
FORMATS = ("caffe", "keras")


@dataclass(frozen=True)
class OxfordFile:
    """A released Oxford model file: which net it holds and where to get it."""

    net: str
    format: str
    filename: str
    url: str
    page: str


_CAFFE_URL = "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
_CAFFE_PAGE = "https://www.robots.ox.ac.uk/~vgg/research/very_deep/"
_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_KERAS_PAGE = "https://keras.io/api/applications/vgg/"

OXFORD_FILES: tuple[OxfordFile, ...] = (
    OxfordFile(
        "D",
        "caffe",
        "VGG_ILSVRC_16_layers.caffemodel",
        _CAFFE_URL + "VGG_ILSVRC_16_layers.caffemodel",
        _CAFFE_PAGE,
    ),
    OxfordFile(
        "E",
        "caffe",
        "VGG_ILSVRC_19_layers.caffemodel",
        _CAFFE_URL + "VGG_ILSVRC_19_layers.caffemodel",
        _CAFFE_PAGE,
    ),
    OxfordFile(
        "D",
        "keras",
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        _KERAS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        _KERAS_PAGE,
    ),
    OxfordFile(
        "E",
        "keras",
        "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        _KERAS_URL + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        _KERAS_PAGE,
    ),
)


def oxford_dir() -> Path:
    """Where vggfeat looks for Oxford files and writes imports: ``$TORCH_HOME/vggfeat``."""
    return Path(torch.hub.get_dir()).parent / "vggfeat"


def search_dirs(extra: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Folders searched for Oxford files: ``extra``, ``$TORCH_HOME/vggfeat``, the current folder
    and Keras' download cache (``$KERAS_HOME/models``, default ``~/.keras/models``)."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs = [Path(d).expanduser() for d in extra]
    dirs += [oxford_dir(), Path.cwd(), keras_home / "models"]
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in {u.resolve() for u in unique}:
            unique.append(d)
    return unique


def find_file(name: str, dirs: Sequence[Path]) -> Path | None:
    """First ``dir/name`` that exists, or None."""
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def converted_name(net: str) -> str:
    """Default name of an imported Oxford model, e.g. ``oxford_vgg16.safetensors``."""
    net = canonical_net(net)
    return f"oxford_{TORCHVISION_NAMES.get(net, 'vgg' + net.lower())}.safetensors"


# ---------------------------------------------------------------------------------------------
# Layer names: derived from the net itself, so nets.py stays the one table.


@dataclass(frozen=True)
class LayerSpec:
    """One weight layer: its name in the Caffe and Keras releases and its state-dict prefix.

    Attributes:
        caffe: Caffe name, e.g. 'conv3_2' or 'fc6'.
        keras: Keras name, e.g. 'block3_conv2' or 'fc1'.
        key: torchvision state-dict prefix, e.g. 'features.12' or 'classifier.0'.
        kind: 'conv', 'fc6' (whose input is pool5 flattened) or 'fc'.
    """

    caffe: str
    keras: str
    key: str
    kind: str

    def name(self, style: str) -> str:
        """The layer's name in a 'caffe' or 'keras' file."""
        return self.caffe if style == "caffe" else self.keras


@functools.cache
def _layer_specs(net: str) -> tuple[LayerSpec, ...]:
    with torch.device("meta"):
        model = VGG(net)
    specs: list[LayerSpec] = []
    block, index = 1, 0
    for position, module in enumerate(model.features):
        if isinstance(module, nn.MaxPool2d):
            block, index = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            index += 1
            specs.append(
                LayerSpec(
                    f"conv{block}_{index}",
                    f"block{block}_conv{index}",
                    f"features.{position}",
                    "conv",
                )
            )
    linear = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    names = (("fc6", "fc1", "fc6"), ("fc7", "fc2", "fc"), ("fc8", "predictions", "fc"))
    for (caffe, keras, kind), position in zip(names, linear, strict=True):
        specs.append(LayerSpec(caffe, keras, f"classifier.{position}", kind))
    return tuple(specs)


def layer_specs(net: str) -> list[LayerSpec]:
    """The weight layers of ``net`` in order (conv1_1 ... fc8), read off ``nets.VGG``."""
    return list(_layer_specs(canonical_net(net)))


_CONV_NAME = {"caffe": re.compile(r"conv\d+_\d+$"), "keras": re.compile(r"block\d+_conv\d+$")}


# ---------------------------------------------------------------------------------------------
# What the readers return.


@dataclass(frozen=True)
class SourceModel:
    """Weight arrays as a released file stores them, before any conversion.

    Attributes:
        path: The file read.
        format: 'caffe V0', 'caffe V1', 'caffe V2' or 'keras'.
        layers: Layer name in the file -> its arrays, in the file's layout and order.
        attrs: Facts about the file worth recording, e.g. ``keras_version``.
    """

    path: Path
    format: str
    layers: dict[str, list[np.ndarray]] = field(repr=False)
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def style(self) -> str:
        """'caffe' or 'keras'."""
        return self.format.split()[0]


# ---------------------------------------------------------------------------------------------
# Caffe: a minimal protobuf wire-format reader. Field numbers from caffe.proto:
#   NetParameter: name=1, layers=2 (V1LayerParameter), layer=100 (LayerParameter)
#   LayerParameter: name=1, blobs=7     V1LayerParameter: name=4, blobs=6, layer=1 (V0)
#   V0LayerParameter: name=1, blobs=50
#   BlobProto: num=1, channels=2, height=3, width=4, data=5 (float), shape=7, double_data=8
#   BlobShape: dim=1 (int64)

_LAYER_FIELDS = {"V2": (1, 7), "V1": (4, 6), "V0": (1, 50)}  # (name, blobs)
_FLOAT_RECORD = np.dtype([("tag", "u1"), ("value", "<f4")])  # unpacked float: key byte + 4
_DOUBLE_RECORD = np.dtype([("tag", "u1"), ("value", "<f8")])
_RUN_CHUNK = 1 << 20


class _Malformed(Exception):
    """Internal: the bytes are not valid protobuf; ``truncated`` when a field runs past the end."""

    def __init__(self, what: str, pos: int, truncated: bool = False) -> None:
        super().__init__(what)
        self.what, self.pos, self.truncated = what, pos, truncated


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("a varint runs past the end", pos, truncated=True)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("a varint longer than 10 bytes", pos)


def _field(buf: Any, pos: int, end: int) -> tuple[int, int, int, int]:
    """Read the field at ``pos``: (number, wire type, value or payload start, next position).

    Varints give their value; other wire types their payload start, the payload being
    ``buf[start:next]``. Groups (proto2, unused by Caffe) are skipped whole.
    """
    at = pos
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise _Malformed("field number 0", at)
    if wire == 0:
        value, pos = _varint(buf, pos, end)
        return number, wire, value, pos
    if wire == 2:
        length, start = _varint(buf, pos, end)
        stop = start + length
    elif wire == 1:
        start, stop = pos, pos + 8
    elif wire == 5:
        start, stop = pos, pos + 4
    elif wire == 3:
        return number, wire, pos, _skip_group(buf, pos, end, number)
    else:
        raise _Malformed(f"wire type {wire} in field {number}", at)
    if stop > end:
        raise _Malformed(f"field {number} of {stop - start} bytes runs past the end", at, True)
    return number, wire, start, stop


def _skip_group(buf: Any, pos: int, end: int, number: int) -> int:
    while True:
        key, after = _varint(buf, pos, end)
        if key & 7 == 4:
            if key >> 3 != number:
                raise _Malformed(f"group {number} closed as {key >> 3}", pos)
            return after
        pos = _field(buf, pos, end)[3]


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    pos = start
    while pos < end:
        number, wire, value, pos = _field(buf, pos, end)
        yield number, wire, value, pos


def _text(buf: Any, start: int, stop: int) -> str:
    return bytes(buf[start:stop]).decode("utf-8", "replace")


def _packed(buf: Any, start: int, stop: int, dtype: str) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    if (stop - start) % itemsize:
        raise _Malformed(f"packed {dtype} data of {stop - start} bytes", start)
    count = (stop - start) // itemsize
    if count == 0:
        return np.zeros(0, np.float32)
    # One copy straight out of the (memory-mapped) file: no per-value Python work.
    return np.frombuffer(buf, dtype=dtype, count=count, offset=start).astype(np.float32)


def _unpacked_run(buf: Any, pos: int, end: int, record: np.dtype) -> tuple[np.ndarray, int]:
    """Read consecutive unpacked values of one field as a strided view: (values, next position).

    Each value is a one-byte key followed by its bytes; the run ends at the first other key.
    """
    tag = buf[pos]
    records = np.frombuffer(buf, dtype=record, count=(end - pos) // record.itemsize, offset=pos)
    count = 0
    while count < len(records):
        tags = records["tag"][count : count + _RUN_CHUNK]
        other = np.flatnonzero(tags != tag)
        if other.size:
            count += int(other[0])
            break
        count += len(tags)
    values = records["value"][:count].astype(np.float32)
    return values, pos + count * record.itemsize


def _read_shape(buf: Any, start: int, stop: int) -> list[int]:
    dims: list[int] = []
    for number, wire, value, end in _fields(buf, start, stop):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:
            pos = value
            while pos < end:
                dim, pos = _varint(buf, pos, end)
                dims.append(dim)
    return dims


def _read_blob(buf: Any, start: int, stop: int) -> np.ndarray:
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    legacy: dict[int, int] = {}
    shape: list[int] | None = None
    pos = start
    while pos < stop:
        at = pos
        number, wire, value, pos = _field(buf, pos, stop)
        if number == 5 and wire == 2:
            floats.append(_packed(buf, value, pos, "<f4"))
        elif number == 5 and wire == 5:
            run, pos = _unpacked_run(buf, at, stop, _FLOAT_RECORD)
            floats.append(run)
        elif number == 8 and wire == 2:
            doubles.append(_packed(buf, value, pos, "<f8"))
        elif number == 8 and wire == 1:
            run, pos = _unpacked_run(buf, at, stop, _DOUBLE_RECORD)
            doubles.append(run)
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
        elif number == 7 and wire == 2:
            shape = _read_shape(buf, value, pos)
    parts = floats or doubles
    data = parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, np.float32)])
    if shape is None:
        # Legacy (num, channels, height, width); Caffe wrote all four.
        shape = [legacy.get(n, 1) for n in (1, 2, 3, 4)] if legacy else [data.size]
    if int(np.prod(shape)) != data.size:
        raise _Malformed(f"a blob of shape {tuple(shape)} holding {data.size} values", start, True)
    return data.reshape(shape)


def _read_layer(buf: Any, start: int, stop: int, version: str) -> tuple[str, list[np.ndarray], str]:
    """(name, blobs, version actually used) of one layer message."""
    name_field, blobs_field = _LAYER_FIELDS[version]
    name, blobs, used = "", [], version
    for number, wire, value, end in _fields(buf, start, stop):
        if wire != 2:
            continue
        if number == name_field:
            name = _text(buf, value, end)
        elif number == blobs_field:
            blobs.append(_read_blob(buf, value, end))
        elif version == "V1" and number == 1:  # a V0 layer wrapped in a V1 one
            name0, blobs0, _ = _read_layer(buf, value, end, "V0")
            name, blobs, used = name or name0, blobs or blobs0, "V0"
    return name, blobs, used


def _read_net(buf: Any, size: int) -> tuple[str, dict[str, list[np.ndarray]]]:
    layers: dict[str, list[np.ndarray]] = {}
    versions: set[str] = set()
    for number, wire, value, end in _fields(buf, 0, size):
        if wire == 2 and number in (2, 100):
            name, blobs, used = _read_layer(buf, value, end, "V2" if number == 100 else "V1")
            versions.add(used)
            if blobs and name not in layers:
                layers[name] = blobs
    version = "V2" if "V2" in versions else ("V0" if "V0" in versions else "V1")
    return f"caffe {version}", layers


def read_caffe(path: str | os.PathLike) -> SourceModel:
    """Read the named weight layers of a ``.caffemodel`` (NetParameter, V0/V1/V2 layers).

    The file is memory-mapped and each blob is copied once with ``np.frombuffer``, so the
    528 MB VGG16 file reads in a second or two and never sits in memory twice.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{path.name} is empty: download it again.")
    error: _Malformed | None = None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            fmt, layers = _read_net(buf, size)
        except _Malformed as exc:
            error = exc
    if error is not None:
        where = f"{error.what} at byte {error.pos} of {size}"
        if error.truncated:
            raise WeightsError(
                f"{path.name} ends early ({where}): it is truncated or not a Caffe model; "
                "download it again."
            )
        raise WeightsError(
            f"{path.name} is not a Caffe model ({where}); pass an Oxford .caffemodel file."
        )
    if not layers:
        raise WeightsError(
            f"{path.name} holds no Caffe layers with weights: it is not a .caffemodel "
            "(a deploy .prototxt, say); pass the Oxford .caffemodel file."
        )
    return SourceModel(path, fmt, layers)


# ---------------------------------------------------------------------------------------------
# Keras HDF5.


def _h5_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _h5_datasets(group: Any) -> list[str]:
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(name)

    group.visititems(visit)
    return found


def _keras_layer_of(dataset_path: str) -> str | None:
    # 'block1_conv1/block1_conv1_W_1:0', 'block1_conv1/block1_conv1/kernel:0' and Keras 3's
    # 'layers/block1_conv1/vars/0' all belong to the innermost group that is not 'vars'.
    groups = [part for part in dataset_path.split("/")[:-1] if part and part != "vars"]
    return groups[-1] if groups else None


def _keras_dataset_paths(root: Any) -> list[str]:
    """Dataset paths under ``root`` in saved order: via ``layer_names``/``weight_names`` when
    the file has them (Keras 1/2), else by walking the file (Keras 3, hand-made files)."""
    if "layer_names" not in root.attrs:
        return _h5_datasets(root)
    paths: list[str] = []
    for layer in map(_h5_text, root.attrs["layer_names"]):
        if layer not in root:
            raise KeyError(f"/{layer}")
        group = root[layer]
        if "weight_names" in group.attrs:
            paths += [f"{layer}/{_h5_text(w)}" for w in group.attrs["weight_names"]]
        else:
            paths += [f"{layer}/{p}" for p in _h5_datasets(group)]
    return paths


def read_keras(path: str | os.PathLike) -> SourceModel:
    """Read the weight layers of a Keras ``.h5`` file (weights-only or full-model save)."""
    import h5py

    path = Path(path)
    key = "/"
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            layers: dict[str, list[np.ndarray]] = {}
            for key in _keras_dataset_paths(root):
                layer = _keras_layer_of(key)
                if layer is not None:
                    layers.setdefault(layer, []).append(np.asarray(root[key][()]))
            attrs = {
                k: _h5_text(source.attrs[k])
                for source in (f, root)
                for k in ("keras_version", "backend")
                if k in source.attrs
            }
    except KeyError as exc:
        # A layer named in layer_names but absent is raised before any dataset key is read.
        missing = f"layer {exc.args[0]!r}" if key == "/" and exc.args else f"HDF5 key {key!r}"
        raise WeightsError(
            f"{path.name}: {missing} is listed in the file but missing: the file is "
            "truncated or damaged; download it again."
        ) from None
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"Cannot read {path.name} as a Keras HDF5 file at key {key!r} ({reason}): it is "
            "truncated or damaged; download it again."
        ) from None
    if not layers:
        raise WeightsError(f"{path.name} holds no weight arrays: pass an Oxford Keras .h5 file.")
    return SourceModel(path, "keras", layers, attrs)


# ---------------------------------------------------------------------------------------------
# Which reader.

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    # The superblock sits at 0 or, after a user block, at 512, 1024, 2048...
    with open(path, "rb") as f:
        for offset in (0, 512, 1024, 2048, 4096):
            f.seek(offset)
            if f.read(8) == _HDF5_MAGIC:
                return True
    return False


def detect_format(path: str | os.PathLike) -> str:
    """'caffe' or 'keras', from the file's contents and extension; a clear error otherwise."""
    path = Path(path)
    if _is_hdf5(path):
        return "keras"
    with open(path, "rb") as f:
        head = f.read(4)
    suffix = path.suffix.lower()
    if head.startswith(b"PK"):
        raise WeightsError(
            f"{path.name} is a zip archive (a Keras 3 .keras file?): unzip it and import the "
            "model.weights.h5 inside."
        )
    if suffix == ".caffemodel":
        return "caffe"
    if suffix in (".h5", ".hdf5"):
        raise WeightsError(
            f"{path.name} is not an HDF5 file despite its extension: it is damaged or "
            "mislabelled; download it again."
        )
    if suffix == ".prototxt":
        raise WeightsError(
            f"{path.name} is a Caffe network definition (text), not weights: import the "
            ".caffemodel file."
        )
    if suffix in (".pth", ".pt", ".safetensors"):
        raise WeightsError(
            f"{path.name} is already a torch/vggfeat weight file: pass it to --weights as it is "
            "(`vggfeat weights info` shows what it holds)."
        )
    raise WeightsError(
        f"Cannot tell the format of {path.name} (extension {suffix or 'none'!r}): pass "
        "--format caffe or --format keras."
    )


def read_source(path: str | os.PathLike, format: str = "auto") -> SourceModel:
    """Read an Oxford release in ``format`` ('caffe', 'keras' or 'auto')."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: download it first (`vggfeat weights list`).")
    if format not in ("auto", *FORMATS):
        raise WeightsError(f"Unknown format {format!r}. Valid formats: auto, caffe, keras.")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "caffe" and _is_hdf5(path):
        raise WeightsError(f"{path.name} is an HDF5 (Keras) file: use --format keras or auto.")
    return read_caffe(path) if fmt == "caffe" else read_keras(path)


# ---------------------------------------------------------------------------------------------
# Conversion to torchvision's layout.


def guess_net(source: SourceModel) -> str | None:
    """The Table 1 config whose conv layer names the file holds exactly (A, B, D or E), or None."""
    convs = {n for n in source.layers if _CONV_NAME[source.style].match(n)}
    for net in TORCHVISION_NAMES:
        if convs == {s.name(source.style) for s in _layer_specs(net) if s.kind == "conv"}:
            return net
    return None


def _full_file(net: str, style: str) -> str:
    for entry in OXFORD_FILES:
        if entry.net == net and entry.format == style:
            return entry.filename
    return f"the full {style} file"


def _check_layers(source: SourceModel, net: str, specs: Sequence[LayerSpec]) -> None:
    """Refuse a file that is not ``net``: another VGG, a non-VGG, a notop or a cut-short file."""
    name, style = source.path.name, source.style
    guess = guess_net(source)
    if guess is not None and guess != net:
        count = sum(s.kind == "conv" for s in _layer_specs(guess))
        raise WeightsError(
            f"{name} looks like net {guess} ({TORCHVISION_NAMES[guess]}: {count} conv layers), "
            f"not net {net}: pass --net {guess}."
        )
    present = set(source.layers)
    missing_conv = [
        s.name(style) for s in specs if s.kind == "conv" and s.name(style) not in present
    ]
    if missing_conv:
        if not any(_CONV_NAME[style].match(n) for n in present):
            found = ", ".join(sorted(present)[:6]) + (" ..." if len(present) > 6 else "")
            raise WeightsError(
                f"{name} is not a VGG {style} model (its weight layers are {found}): pass an "
                "Oxford VGG16/VGG19 release."
            )
        raise WeightsError(
            f"{name} lacks layers {', '.join(missing_conv[:4])} of net {net}: it is truncated "
            "or not an Oxford VGG file; download it again."
        )
    missing_fc = [s.name(style) for s in specs if s.kind != "conv" and s.name(style) not in present]
    if len(missing_fc) == 3:
        raise WeightsError(
            f"{name} has no fc layers (a 'notop' file, saved without the classifier), so it "
            f"cannot give fc7 descriptors: use {_full_file(net, style)} instead."
        )
    if missing_fc:
        raise WeightsError(
            f"{name} lacks layers {', '.join(missing_fc)} of net {net}: it is truncated; "
            "download it again."
        )


def _weight_and_bias(source: SourceModel, layer: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = source.layers[layer]
    if source.style == "caffe":
        ordered = arrays  # Caffe stores [weight, bias]; legacy biases are 4-D, so go by order.
    else:
        # Keras names vary ('_W_1:0', 'kernel:0', 'vars/0'): tell kernel from bias by rank.
        ordered = sorted(arrays, key=lambda a: -a.ndim)
    if len(ordered) != 2 or (source.style == "keras" and ordered[1].ndim != 1):
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise WeightsError(
            f"{source.path.name}: layer {layer} holds arrays of shapes [{shapes}], not a weight "
            "and a bias: the file is not an Oxford VGG release."
        )
    return ordered[0], ordered[1]


def _strip_ones(array: np.ndarray, ndim: int) -> np.ndarray:
    # Caffe's legacy blobs are always 4-D: (1, 1, 4096, 25088) is a (4096, 25088) matrix.
    shape = array.shape
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return array.reshape(shape)


def _shape_error(
    source: SourceModel, layer: str, what: str, got: tuple, want: tuple, net: str
) -> WeightsError:
    return WeightsError(
        f"{source.path.name}: layer {layer} {what} has shape {tuple(got)}, but net {net} needs "
        f"{tuple(want)} in the {source.style} layout: check --net, and that the file is an "
        "original Oxford VGG release."
    )


def _caffe_weight(w: np.ndarray, spec: LayerSpec, want: tuple[int, ...]) -> np.ndarray | None:
    w = _strip_ones(w, len(want))
    if spec.kind != "conv" and w.ndim == 4 and w.shape[0] == want[0]:
        w = w.reshape(w.shape[0], -1)  # (out, C, H, W) is fc6 flattened C x H x W already
    return w if w.shape == want else None


def _keras_weight(
    source: SourceModel, spec: LayerSpec, w: np.ndarray, want: tuple[int, ...], net: str
) -> np.ndarray | None:
    if spec.kind == "conv":
        out, inp, kh, kw = want
        if w.shape == (kh, kw, inp, out):
            return w.transpose(3, 2, 0, 1)
        if w.shape == want:
            raise WeightsError(
                f"{source.path.name} is a Theano-ordered Keras file (kernels (out, in, kh, kw), "
                "flipped for true convolution): use the "
                f"{_full_file(net, 'keras')} file instead."
            )
        return None
    out, inp = want
    if w.shape != (inp, out):
        return None
    if spec.kind == "fc6":
        # Keras flattened pool5 channels-last: input row (h * 7 + w) * C + c. torch wants
        # column c * 49 + h * 7 + w.
        channels = inp // 49
        return w.reshape(7, 7, channels, out).transpose(3, 2, 0, 1).reshape(out, inp)
    return w.T


def _expected_shapes(net: str, width: float, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = VGG(net, num_classes=num_classes, width=width)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _infer_size(source: SourceModel, specs: Sequence[LayerSpec]) -> tuple[float, int]:
    """(width, num_classes) from conv1_1's output channels and fc8's bias."""
    first, last = specs[0].name(source.style), specs[-1].name(source.style)
    kernel, _ = _weight_and_bias(source, first)
    _, bias = _weight_and_bias(source, last)
    if source.style == "caffe":
        channels = _strip_ones(kernel, 4).shape[0]
    else:
        channels = kernel.shape[-1] if kernel.shape[:2] == (3, 3) else kernel.shape[0]
    return channels / 64, int(bias.size)


def to_state_dict(source: SourceModel, net: str) -> dict[str, torch.Tensor]:
    """Convert a read release into torchvision VGG keys and layouts (float32, contiguous).

    Raises:
        WeightsError: the file is another net, not a VGG, has no fc layers, or a shape is off.
    """
    net = canonical_net(net)
    specs = _layer_specs(net)
    _check_layers(source, net, specs)
    width, num_classes = _infer_size(source, specs)
    expected = _expected_shapes(net, width, num_classes)
    state: dict[str, torch.Tensor] = {}
    for spec in specs:
        layer = spec.name(source.style)
        weight, bias = _weight_and_bias(source, layer)
        want_w, want_b = expected[f"{spec.key}.weight"], expected[f"{spec.key}.bias"]
        if source.style == "caffe":
            w = _caffe_weight(weight, spec, want_w)
        else:
            w = _keras_weight(source, spec, weight, want_w, net)
        if w is None:
            if source.style == "keras" and spec.kind == "conv":
                want_w = (want_w[2], want_w[3], want_w[1], want_w[0])
            elif source.style == "keras":
                want_w = want_w[::-1]
            raise _shape_error(source, layer, "weight", weight.shape, want_w, net)
        if bias.size != want_b[0] or max(bias.shape) != bias.size:
            raise _shape_error(source, layer, "bias", bias.shape, want_b, net)
        state[f"{spec.key}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        state[f"{spec.key}.bias"] = torch.from_numpy(
            np.ascontiguousarray(bias.reshape(-1), dtype=np.float32)
        )
    return state


@dataclass(frozen=True)
class ImportResult:
    """What ``import_weights`` wrote."""

    path: Path
    net: str
    sha256: str
    origin: dict[str, Any]


def convert(
    path: str | os.PathLike, net: str, format: str = "auto"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and convert an Oxford release: (torchvision state dict, origin record)."""
    from vggfeat import __version__

    net = canonical_net(net)
    source = read_source(path, format)
    state = to_state_dict(source, net)
    origin: dict[str, Any] = {
        "file": source.path.name,
        "sha256": sha256_file(source.path),
        "format": source.format,
        "converter": "vggfeat.oxford",
        "converter_version": CONVERTER_VERSION,
        "vggfeat_version": __version__,
        **source.attrs,
    }
    return state, origin


def import_weights(
    path: str | os.PathLike, net: str, out: str | os.PathLike, format: str = "auto"
) -> ImportResult:
    """Convert an Oxford release into vggfeat's ``.safetensors`` weight file at ``out``.

    The file carries the Caffe preprocessing (BGR, 0..255 minus the mean pixel) and its origin
    (source file, its sha256, format, converter version), so ``load_weights(out, net)`` gives
    the paper's descriptors with no further options.
    """
    net = canonical_net(net)
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise WeightsError(
            f"Output {out.name} must end in .safetensors (vggfeat's weight file): e.g. "
            f"--out {converted_name(net)}."
        )
    if out.exists() and out.resolve() == Path(path).expanduser().resolve():
        raise WeightsError(f"Output {out} is the input file: choose another --out.")
    state, origin = convert(path, net, format)
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(out, state, net, PREPROCESS["caffe"], origin=origin)
    return ImportResult(out, net, sha, origin)


def inspect_source(path: str | os.PathLike, format: str = "auto") -> dict[str, Any]:
    """What an Oxford release holds, without converting it: format, net, layers, fc or not."""
    source = read_source(path, format)
    net = guess_net(source)
    fc_names = {s.name(source.style) for s in _layer_specs(net or "D") if s.kind != "conv"}
    return {
        "file": str(source.path),
        "format": source.format,
        "net": net,
        "layers": list(source.layers),
        "has_fc": bool(fc_names & set(source.layers)),
        "sha256": sha256_file(source.path),
        **source.attrs,
    }
