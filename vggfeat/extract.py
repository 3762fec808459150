"""The dense engine: decoded images -> flip-averaged, globally pooled fc7 descriptors per (net, Q).

Images are decoded once (in background workers, or on the GPU with ``decode='device'``) and
rescaled once per Q; every requested net then runs on the same pixels. Images of a window of
the input are grouped by shape (:func:`plan_batches`): equal shapes share a forward pass as
they are, and on a GPU near-equal shapes share a padded canvas (``DenseVGG`` masks the padding,
so results equal one-at-a-time evaluation) so that batches are large and distinct shapes few.
An out-of-memory error on one batch retries it in halves, and the run says so.
This module never opens HDF5: finished rows go to a callback (the CLI passes a StoreWriter).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vggfeat.datasets.samples import sample_box
from vggfeat.devices import PRECISION_CHOICES, PRECISIONS, resolve_device, resolve_precision
from vggfeat.errors import ImageError, VggfeatError
from vggfeat.images import (
    DEFAULT_MAX_SIDE,
    INTERPOLATION,
    check_scales,
    crop_box,
    failure_reason,
    load_image,
    rescale_all,
)
from vggfeat.nets import LAYERS, DenseVGG
from vggfeat.store import Row
from vggfeat.weights import Preprocess, Weights

__all__ = [
    "PRECISIONS",
    "DECODERS",
    "ExtractConfig",
    "ExtractSummary",
    "Extractor",
    "plan_batches",
]

# Where JPEGs are decoded and rescaled: 'cpu' (PIL, in the workers) or 'device' (nvJPEG and
# torch interpolation on the GPU; other formats PIL). They differ by a grey level here and
# there, so the store records which one ran.
DECODERS = ("cpu", "device")

Pixels = np.ndarray | torch.Tensor  # (H, W, 3) uint8 on the host, or (3, H, W) uint8 on device


@dataclass(frozen=True)
class ExtractConfig:
    """How descriptors are computed. The store records scales, flip, layer, the precision that
    ran, the decoder and max side; the rest changes speed only.

    Attributes:
        scales: Smallest-side sizes Q, each >= 224.
        flip: Average each descriptor with that of the horizontally flipped image.
        layer: 'fc7' (the paper's descriptor), 'fc6' or 'pool5', each after ReLU, then GAP.
        precision: 'fp32' (TF32 off), 'bf16' or 'fp16' autocast, or 'auto': bf16 where the
            device runs it natively (Ampere or later GPUs, AVX512-BF16/AMX CPUs), else fp32.
        device: 'cpu', 'cuda', 'cuda:N' or 'auto'.
        batch_size: Images per forward pass (each with its flip); 0 picks 4 on the CPU and 32
            on a GPU.
        workers: Background decoding processes (0 decodes in the main process).
        max_side: Longest side after rescaling; longer images are centre-cropped to it.
        decode: 'cpu' (PIL in the workers) or 'device' (JPEGs decoded by torchvision and
            rescaled by torch on the compute device: nvJPEG on a GPU, for when the CPU cannot
            keep up; on a CPU it only moves decoding into the main process).
        compile: Run equal-shape batches through ``torch.compile`` (pays on GPUs for long runs;
            the first batch of each shape compiles).
        bucket: Canvas sides are rounded up to a multiple of this many pixels, so near-equal
            shapes share a batch; 0 picks 1 (exact shapes) on the CPU and 32 on a GPU.
        max_waste: Largest fraction of a canvas that may be padding when leftover shapes are
            merged into one batch; below 0 picks 0 on the CPU and 0.15 on a GPU.
        window: Images grouped by shape together; 0 picks 8 batches' worth.
        streams: Batches run at once on the CPU, each on one core (0: one per torch thread);
            independent streams waste no time waiting for each other inside every layer.
        winograd: fp32 on the CPU: run the 3x3 convolutions where it pays (64+ input channels,
            large maps) as NNPACK's Winograd F(6x6, 3x3), up to 2.4x faster than direct;
            descriptors move by 1e-6 to 1e-5 of their norm. The store records it; False
            computes what earlier versions did.
    """

    scales: tuple[int, ...] = (256, 384, 512)
    flip: bool = True
    layer: str = "fc7"
    precision: str = "fp32"
    device: str = "auto"
    batch_size: int = 0
    workers: int = 2
    max_side: int = DEFAULT_MAX_SIDE
    decode: str = "cpu"
    compile: bool = False
    bucket: int = 0
    max_waste: float = -1.0
    window: int = 0
    streams: int = 0
    winograd: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", check_scales(self.scales))
        if self.layer not in LAYERS:
            raise VggfeatError(f"Unknown layer {self.layer!r}. Valid layers: {', '.join(LAYERS)}.")
        if self.precision not in PRECISION_CHOICES:
            raise VggfeatError(
                f"Unknown precision {self.precision!r}. Valid: {', '.join(PRECISION_CHOICES)}."
            )
        if self.decode not in DECODERS:
            raise VggfeatError(f"Unknown decoder {self.decode!r}. Valid: {', '.join(DECODERS)}.")
        if min(self.batch_size, self.workers, self.bucket, self.window, self.streams) < 0:
            raise VggfeatError("--batch-size and --workers must be >= 0 (0: the default).")
        if self.max_side < max(self.scales):
            raise VggfeatError(
                f"--max-side {self.max_side} is smaller than the largest scale {max(self.scales)}."
            )


@dataclass
class ExtractSummary:
    """What a run did: counts, failures, changes, notices (e.g. out-of-memory retries), speed."""

    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Pool5:
    """A packed CPU batch's (n * copies, C, h, w) pool5 maps, whose fc6/fc7 run later with the
    window's other batches (``Extractor._heads``)."""

    maps: torch.Tensor
    copies: int


@dataclass
class _Decoded:
    """One sample after decoding: per-Q pixels or the reason it failed."""

    index: int
    id: str
    scaled: list[np.ndarray] | None
    image_size: tuple[int, int] = (0, 0)
    note: str = ""
    reason: str = ""


class _DecodeDataset(Dataset):
    """Decodes and rescales samples; runs inside DataLoader workers."""

    def __init__(self, samples: Sequence[Sequence], scales: Sequence[int], max_side: int):
        self.samples, self.scales, self.max_side = samples, scales, max_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> _Decoded:
        sample = self.samples[index]
        id_, path, box = sample[0], sample[1], sample_box(sample)
        try:
            image = load_image(path, self.scales)
            if box is not None:  # a region: cut out before rescaling, then as any image
                image = crop_box(image, box)
            scaled, note = rescale_all(image.pixels, self.scales, self.max_side)
        except Exception as exc:  # whatever one image raises is its failed row; the run goes on
            return _Decoded(index, id_, None, reason=failure_reason(exc))
        notes = "; ".join(n for n in (image.note, note) if n)
        return _Decoded(index, id_, scaled, image.size, notes)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _hw(pixels: Pixels) -> tuple[int, int]:
    """(H, W) of host (H, W, 3) or device (3, H, W) pixels."""
    shape = pixels.shape
    return (int(shape[1]), int(shape[2])) if isinstance(pixels, torch.Tensor) else shape[:2]


def _canvas(shapes: Sequence[tuple[int, int]], step: int) -> tuple[int, int]:
    return (
        _round_up(max(h for h, _ in shapes), step),
        _round_up(max(w for _, w in shapes), step),
    )


def _waste(shapes: Sequence[tuple[int, int]], step: int) -> float:
    """Fraction of the shared canvas of ``shapes`` that is padding."""
    height, width = _canvas(shapes, step)
    return 1.0 - sum(h * w for h, w in shapes) / (len(shapes) * height * width)


def plan_batches(
    shapes: Sequence[tuple[int, int]], batch_size: int, step: int = 1, max_waste: float = 0.0
) -> list[tuple[list[int], tuple[int, int]]]:
    """Group images into batches that share a canvas, keeping padding small and shapes few.

    Images whose (H, W), rounded up to ``step``, are equal form buckets, cut into full batches.
    What is left of every bucket is sorted by orientation and size and merged into batches
    while the padding stays at most ``max_waste`` of the canvas. With ``step=1`` and
    ``max_waste=0`` every batch holds images of one exact shape (no padding at all).

    Args:
        shapes: (H, W) of each image.
        batch_size: Most images per batch.
        step: Canvas sides are multiples of this (fewer distinct shapes for cuDNN autotuning).
        max_waste: Largest padded fraction of a canvas when merging leftovers.

    Returns:
        (positions into ``shapes``, canvas (H, W)) per batch; every position exactly once.
    """
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(shapes):
        buckets.setdefault((_round_up(h, step), _round_up(w, step)), []).append(i)
    batches: list[tuple[list[int], tuple[int, int]]] = []
    rest: list[int] = []
    for canvas, members in sorted(buckets.items()):
        full = len(members) - len(members) % batch_size
        batches += [(members[k : k + batch_size], canvas) for k in range(0, full, batch_size)]
        rest += members[full:]
    rest.sort(key=lambda i: (shapes[i][0] > shapes[i][1], shapes[i]))
    group: list[int] = []
    for i in rest:
        trial = group + [i]
        if group and (
            len(trial) > batch_size or _waste([shapes[j] for j in trial], step) > max_waste
        ):
            batches.append((group, _canvas([shapes[j] for j in group], step)))
            trial = [i]
        group = trial
    if group:
        batches.append((group, _canvas([shapes[j] for j in group], step)))
    return batches


# What the store records where Winograd may run (direct convolution records nothing, as before).
WINOGRAD = "NNPACK Winograd F(6x6,3x3) where it pays (64+ input channels, large maps)"


def _winograd_pays(in_channels: int, positions: int) -> bool:
    """Whether NNPACK's Winograd F(6x6, 3x3) beats oneDNN's direct 3x3 convolution (one thread
    each, measured on a 2-core AVX2 EPYC). NNPACK transforms the kernel on every call, which
    small maps do not amortise: with 128+ input channels it is 0.5x at 336 positions, 0.95x at
    638, 1.06x at 768, 1.4-2.4x from 1,344; with 64, 0.9x at 1,344, 1.3x at 5,440, 1.9x at
    87,000; with 32 or fewer it loses everywhere (0.4-0.7x). Full-width VGGs: every layer but
    the first on large enough maps."""
    return positions >= (768 if in_channels >= 128 else 4096) and in_channels >= 64


class _PackedFeatures:
    """A VGG's conv stack for unpadded fp32 batches on the CPU: oneDNN convolutions with their
    weights laid out once in its blocked format, and (``winograd``) NNPACK's Winograd F(6x6, 3x3)
    convolutions where they are faster (:func:`_winograd_pays`).

    A plain convolution call re-lays out its weights (and its input) on every call; doing it
    once saves about 15% of the CPU time. Winograd computes the same convolution with a quarter
    of the multiplications; in fp32 its rounding differs from the direct method's by ~5e-6 of
    each layer's output norm (1e-6 for oneDNN), about 1e-5 in the descriptors.
    """

    def __init__(self, features: torch.nn.Sequential, winograd: bool = False) -> None:
        reorder = getattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", None)
        self.winograd = winograd
        self.ops: list[tuple[str, Any]] = []
        for m in features:
            if isinstance(m, torch.nn.Conv2d):
                geometry = (list(m.padding), list(m.stride), list(m.dilation), m.groups)
                weight = m.weight.detach().contiguous().to_mkldnn()
                if reorder is not None:
                    weight = reorder(weight, *geometry)
                direct = (weight, m.bias.detach().to_mkldnn(), *geometry)
                self.ops.append(("conv", (direct, self._winograd_args(m))))
            elif isinstance(m, torch.nn.ReLU):
                self.ops.append(("relu", None))
            elif isinstance(m, torch.nn.MaxPool2d):
                self.ops.append(("pool", (m.kernel_size, m.stride)))
            else:  # e.g. LRN (config A-LRN): not a oneDNN op here
                raise TypeError(f"cannot lay out {type(m).__name__}")

    def _winograd_args(self, m: torch.nn.Conv2d) -> tuple[Any, ...] | None:
        """NNPACK arguments of conv ``m``, or None where it runs direct only."""
        usable = (
            self.winograd
            and m.kernel_size == (3, 3)
            and m.stride == (1, 1)
            and m.dilation == (1, 1)
            and m.groups == 1
            and _winograd_pays(m.in_channels, positions=1 << 62)  # on some map size
        )
        if not usable:
            return None
        weight, bias = m.weight.detach().contiguous(), m.bias.detach().contiguous()
        return (m.in_channels, weight, bias, list(m.padding))

    @classmethod
    def build(cls, model: DenseVGG, winograd: bool = False) -> _PackedFeatures | None:
        """The packed stack of ``model``, with Winograd where NNPACK runs it (x86-64 and ARM
        CPUs); None where oneDNN cannot run it either."""
        if not torch.backends.mkldnn.is_available():
            return None
        threads = torch.get_num_threads()
        # NNPACK sizes its thread pool once, at its first call (here): one thread, like each
        # stream; a shared pool would serialise the streams.
        torch.set_num_threads(1)
        try:
            for attempt in (True, False) if winograd and torch._nnpack_available() else (False,):
                packed = cls._checked(model, attempt)
                if packed is not None:
                    return packed
            return None
        finally:
            torch.set_num_threads(threads)

    @classmethod
    def _checked(cls, model: DenseVGG, winograd: bool) -> _PackedFeatures | None:
        """The packed stack if it computes what ``model`` does on a probe image, else None."""
        try:
            packed = cls(model.vgg.features, winograd)
            with torch.inference_mode():
                probe = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
                expected = model.vgg.features(probe)
                if torch.allclose(packed(probe), expected, rtol=1e-4, atol=1e-5):
                    return packed
        except (RuntimeError, TypeError):
            pass
        return None

    @property
    def runs_winograd(self) -> bool:
        """Whether some conv may run Winograd (on large enough maps)."""
        return any(kind == "conv" and arg[1] is not None for kind, arg in self.ops)

    def _plan(self, height: int, width: int) -> list[bool]:
        """For an (height, width) input, whether each conv runs Winograd."""
        plan = []
        for kind, arg in self.ops:
            if kind == "conv":
                winograd = arg[1]
                plan.append(winograd is not None and _winograd_pays(winograd[0], height * width))
            elif kind == "pool":
                height, width = height // 2, width // 2
        return plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) fp32 -> (N, C, H/32, W/32) dense pool5 maps.

        Winograd takes and gives dense NCHW maps, oneDNN its own layout; where any layer runs
        Winograd, every map is kept dense (ReLU in place and pooling are far faster on dense
        maps), else in oneDNN's layout throughout (no conversions)."""
        plan = self._plan(*x.shape[-2:])
        dense, use_winograd = any(plan), iter(plan)
        for kind, arg in self.ops:
            if kind == "conv":
                direct, nnpack = arg
                if next(use_winograd):
                    _, weight, bias, padding = nnpack
                    # One image per call: NNPACK's batched path is its slow training algorithm.
                    x = torch.cat(
                        [
                            torch._nnpack_spatial_convolution(i, weight, bias, padding)
                            for i in x.split(1)
                        ]
                    )
                else:
                    x = torch.mkldnn_convolution(x if x.is_mkldnn else x.to_mkldnn(), *direct)
                    x = x.to_dense() if dense else x
            elif kind == "relu":
                x = torch.relu(x) if x.is_mkldnn else x.relu_()
            elif x.is_mkldnn:
                x = torch.nn.functional.max_pool2d(x, *arg)
            else:
                x = _max_pool(x, *arg)
        return x.to_dense() if x.is_mkldnn else x


def _max_pool(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """``max_pool2d(x, 2, 2)`` (VGG's only pooling) as three elementwise maxima of strided views:
    the same numbers, 4x faster than max_pool2d's NCHW kernel on one thread."""
    if (kernel_size, stride) != (2, 2):
        return torch.nn.functional.max_pool2d(x, kernel_size, stride)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    top = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
    return torch.maximum(top, torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))


class Extractor:
    """Runs one or more nets densely over images at several scales.

    Args:
        weights: One ``Weights`` per net (e.g. D and E); each carries its preprocessing.
        config: Scales, flip, layer, precision, device, batching and decoding.
    """

    def __init__(self, weights: Sequence[Weights], config: ExtractConfig) -> None:
        nets = [w.net for w in weights]
        if not weights or len(set(nets)) != len(nets):
            raise VggfeatError(f"Give each net once; got nets {nets}.")
        self.config = config
        self.weights = list(weights)
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.dtype = PRECISIONS[self.precision]
        cuda = self.device.type == "cuda"
        # On the CPU, batches of 4 leave enough of them in a window for every stream.
        self.batch_size = config.batch_size or (32 if cuda else 4)
        self.bucket = config.bucket or (32 if cuda else 1)
        self.max_waste = config.max_waste if config.max_waste >= 0 else (0.15 if cuda else 0.0)
        self.window = config.window or 8 * self.batch_size
        self.streams = 1 if cuda else config.streams or torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None
        if cuda:
            # Few distinct shapes (bucketing), so autotuning each one once pays.
            torch.backends.cudnn.benchmark = True
            self._copy_stream = torch.cuda.Stream(self.device)
            if self.precision == "fp32":
                # fp32 means fp32: TF32 convs would move descriptors by ~1e-3.
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        # channels_last: oneDNN and cuDNN convolutions run ~1.5x faster in NHWC.
        self.models: dict[str, tuple[DenseVGG, Preprocess]] = {
            w.net: (
                DenseVGG(w.build().to(self.device, memory_format=torch.channels_last)).eval(),
                w.preprocess,
            )
            for w in weights
        }
        self._compiled = (
            {net: torch.compile(model) for net, (model, _) in self.models.items()}
            if config.compile
            else {}
        )
        self._packed: dict[str, _PackedFeatures | None] = {}
        if self.device.type == "cpu" and self.precision == "fp32" and not config.compile:
            self._packed = {
                net: _PackedFeatures.build(m, config.winograd)
                for net, (m, _) in self.models.items()
            }
        dims = {net: self._dim(model) for net, (model, _) in self.models.items()}
        if len(set(dims.values())) != 1:
            raise VggfeatError(f"Nets give descriptors of different sizes: {dims}.")
        self.dim = next(iter(dims.values()))
        self._notices: list[str] = []

    def _dim(self, model: DenseVGG) -> int:
        if self.config.layer == "pool5":
            return model.vgg.pool5_channels
        return model.vgg.classifier[0 if self.config.layer == "fc6" else 3].out_features

    @property
    def nets(self) -> list[str]:
        return list(self.models)

    def settings(self) -> dict[str, Any]:
        """Everything that determines the numbers; stores refuse to mix different settings."""
        c = self.config
        settings = {
            "nets": self.nets,
            "weights": {w.net: w.provenance() for w in self.weights},
            "scales": list(c.scales),
            "flip": c.flip,
            "layer": c.layer,
            "pooling": "global average over the dense map, after ReLU",
            "precision": self.precision,
            "interpolation": INTERPOLATION,
            "max_side": c.max_side,
            "dim": self.dim,
        }
        if any(p is not None and p.runs_winograd for p in self._packed.values()):
            settings["convolution"] = WINOGRAD
        if c.decode == "device":
            from vggfeat.devdecode import DECODER, INTERPOLATION_DEVICE

            settings.update(decoder=DECODER, interpolation=INTERPOLATION_DEVICE)
        return settings

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _upload(self, images: Sequence[Pixels], canvas: tuple[int, int]) -> torch.Tensor:
        """(n, 3, H, W) uint8 on the device: images top-left on a canvas, padding zero."""
        height, width = canvas
        if isinstance(images[0], torch.Tensor):
            x = torch.zeros((len(images), 3, height, width), dtype=torch.uint8, device=self.device)
            for i, im in enumerate(images):
                x[i, :, : im.shape[1], : im.shape[2]] = im
            return x
        cuda = self.device.type == "cuda"
        # Pinned host memory: the copy runs on a side stream while the GPU computes.
        host = torch.empty((len(images), height, width, 3), dtype=torch.uint8, pin_memory=cuda)
        arr = host.numpy()
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            arr[i, :h, :w] = im
            arr[i, h:] = 0
            arr[i, :h, w:] = 0
        if not cuda:
            return host.permute(0, 3, 1, 2)
        with torch.cuda.stream(self._copy_stream):
            x = host.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
        x.record_stream(torch.cuda.current_stream(self.device))
        return x.permute(0, 3, 1, 2)

    def _with_flips(self, x: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(n, 3, H, W) -> (2n, 3, H, W): each image followed by its mirror, flipped within the
        image's own extent so that padding stays bottom-right."""
        out = torch.empty(
            (2 * len(x), *x.shape[1:]),
            dtype=x.dtype,
            device=x.device,
            memory_format=torch.channels_last,
        )
        out[0::2] = x
        height, width = x.shape[-2:]
        if all(s == (height, width) for s in sizes):
            out[1::2] = x.flip(-1)
            return out
        out[1::2] = 0
        for i, (h, w) in enumerate(sizes):
            out[2 * i + 1, :, :h, :w] = x[i, :, :h, :w].flip(-1)
        return out

    @torch.inference_mode()
    def _describe_batch(
        self, images: Sequence[Pixels], canvas: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """net -> (n, dim) float32 descriptors (on the device) of images sharing one canvas."""
        sizes = [_hw(im) for im in images]
        copies = 2 if self.config.flip else 1
        x = self._upload(images, canvas)
        if copies == 2:
            x = self._with_flips(x, sizes)
        padded = any(s != tuple(canvas) for s in sizes)
        valid = torch.tensor(np.repeat(sizes, copies, 0)) if padded else None
        out = {}
        for net, (model, preprocess) in self.models.items():
            inp = preprocess.normalize(x).contiguous(memory_format=torch.channels_last)
            packed = None if padded else self._packed.get(net)
            if packed is not None:
                out[net] = _Pool5(packed(inp), copies)
                continue
            run = model if padded else self._compiled.get(net, model)
            with self._autocast():
                pooled = run(inp, layer=self.config.layer, sizes=valid)
            out[net] = pooled.float().view(len(images), copies, -1).mean(dim=1)
        return out

    def _describe_or_split(
        self, images: Sequence[Pixels], canvas: tuple[int, int], q: int
    ) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
        """Like ``_describe_batch``, but a batch that runs out of memory is retried in halves;
        an image that does not fit alone is failed (NaN rows) with the reason."""
        try:
            return self._describe_batch(images, canvas), {}
        except torch.OutOfMemoryError:
            self._release_memory()
        where = f"{self.device.type.upper()} memory at Q={q}"
        if len(images) == 1:
            h, w = _hw(images[0])
            nan = torch.full((1, self.dim), float("nan"), device=self.device)
            reason = f"out of {where} ({h}x{w} px alone); lower --max-side or use a larger device"
            return {net: nan for net in self.models}, {0: reason}
        half = len(images) // 2
        self._notice(
            f"out of {where} on a batch of {len(images)} images ({canvas[0]}x{canvas[1]} "
            f"canvas); retried as {half} + {len(images) - half} (lower --batch-size to avoid)"
        )
        outs, failed = {}, {}
        for start, part in ((0, images[:half]), (half, images[half:])):
            got, bad = self._describe_or_split(
                part, _canvas([_hw(im) for im in part], self.bucket), q
            )
            for net, vectors in got.items():
                outs.setdefault(net, []).append(vectors)
            failed.update({start + k: reason for k, reason in bad.items()})
        return {net: torch.cat(self._heads(net, parts)) for net, parts in outs.items()}, failed

    @torch.inference_mode()
    def _heads(self, net: str, batches: Sequence[torch.Tensor | _Pool5]) -> list[torch.Tensor]:
        """(n, dim) descriptors of each batch: those still ``_Pool5`` get fc6/fc7 here, all in
        one pass (one fc6 weight read for a window's worth of small batches)."""
        waiting = [b for b in batches if isinstance(b, _Pool5)]
        if not waiting:
            return list(batches)
        model = self.models[net][0]
        pooled = iter(model.pool5_descriptors([b.maps for b in waiting], self.config.layer))
        return [
            next(pooled).view(-1, b.copies, self.dim).mean(dim=1) if isinstance(b, _Pool5) else b
            for b in batches
        ]

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _notice(self, message: str) -> None:
        self._notices.append(message)

    def _describe(
        self, per_image: Sequence[Sequence[Pixels]]
    ) -> tuple[dict[tuple[str, int], np.ndarray], dict[int, str]]:
        """(net, Q) -> (n, dim) float32 for images already rescaled to every Q, and the
        positions of images that failed (out of memory alone) with the reason."""
        n = len(per_image)
        # Smaller batches where a few images would leave CPU streams idle.
        batch_size = min(self.batch_size, -(-n // self.streams))
        work = [
            (s, q, members, canvas)
            for s, q in enumerate(self.config.scales)
            for members, canvas in plan_batches(
                [_hw(pixels[s]) for pixels in per_image],
                batch_size,
                self.bucket,
                self.max_waste,
            )
        ]

        def run(item: tuple[int, int, list[int], tuple[int, int]]) -> Any:
            s, q, members, canvas = item
            return self._describe_or_split([per_image[i][s] for i in members], canvas, q)

        pending: list[tuple[str, int, list[int], torch.Tensor]] = []
        failed: dict[int, str] = {}
        done = self._map(run, work)
        for net in self.nets:  # the packed CPU path's heads, one pass per net and window
            for (outs, _), vectors in zip(done, self._heads(net, [o[net] for o, _ in done])):
                outs[net] = vectors
        for (_, q, members, _), (outs, bad) in zip(work, done):
            pending += [(net, q, members, vectors) for net, vectors in outs.items()]
            for k, reason in bad.items():
                failed.setdefault(members[k], reason)
        out = {
            (net, q): np.empty((n, self.dim), dtype=np.float32)
            for q in self.config.scales
            for net in self.nets
        }
        if pending:
            # One device-to-host copy per window, so the GPU is never stalled batch by batch.
            host = torch.cat([vectors for *_, vectors in pending]).cpu().numpy()
            start = 0
            for net, q, members, _ in pending:
                out[(net, q)][members] = host[start : start + len(members)]
                start += len(members)
        return out, failed

    def _map(self, fn: Callable[[Any], Any], work: Sequence[Any]) -> list[Any]:
        """``fn`` over ``work`` in order: on the CPU in independent single-threaded streams
        when there is enough work to keep them busy, else here with every thread."""
        if self.streams < 2 or len(work) < self.streams:
            return [fn(item) for item in work]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.streams, initializer=torch.set_num_threads, initargs=(1,)
            )
        return list(self._pool.map(fn, work))

    def describe_scaled(
        self, per_image: Sequence[Sequence[np.ndarray]]
    ) -> dict[tuple[str, int], np.ndarray]:
        """Descriptors of images already rescaled to every Q: (net, Q) -> (n, dim) float32.

        Args:
            per_image: For each image, its (H, W, 3) uint8 pixels at each of ``config.scales``.

        Raises:
            ImageError: an image does not fit in the device's memory even alone.
        """
        out, failed = self._describe(per_image)
        if failed:
            position, reason = next(iter(failed.items()))
            raise ImageError(f"image {position}: {reason}")
        return out

    def forward(self, net: str, images: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors (n, dim) float32 of n already-rescaled (H, W, 3) uint8 images, in one
        pass over a shared canvas (padding masked, so equal to one image at a time)."""
        canvas = _canvas([_hw(im) for im in images], 1)
        (vectors,) = self._heads(net, [self._describe_batch(images, canvas)[net]])
        return vectors.cpu().numpy()

    def describe(self, images: Sequence[np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
        """Descriptors of decoded (H, W, 3) uint8 RGB images: (net, Q) -> (n, dim) float32."""
        scaled = [rescale_all(im, self.config.scales, self.config.max_side)[0] for im in images]
        return self.describe_scaled(scaled)

    def _loader(self, samples: Sequence[tuple[str, str]], on_device: bool) -> DataLoader:
        if on_device:
            from vggfeat.devdecode import ReadDataset

            dataset: Dataset = ReadDataset(samples)
        else:
            dataset = _DecodeDataset(samples, self.config.scales, self.config.max_side)
        # Small loader batches keep prefetched memory small; the window does the grouping.
        return DataLoader(
            dataset,
            batch_size=4,
            num_workers=self.config.workers,
            collate_fn=list,
            prefetch_factor=2 if self.config.workers else None,
        )

    def _decoded_on_device(self, items: Sequence[Any]) -> list[_Decoded]:
        from vggfeat.devdecode import decode_on_device, rescale_on_device

        out = []
        for item, image in zip(items, decode_on_device(items, self.device)):
            if isinstance(image, str):
                out.append(_Decoded(item.index, item.id, None, reason=image))
                continue
            scaled, notes = [], []
            for q in self.config.scales:
                pixels, note = rescale_on_device(image, q, self.config.max_side)
                scaled.append(pixels)
                notes += [note] if note else []
            out.append(_Decoded(item.index, item.id, scaled, _hw(image), "; ".join(notes)))
        return out

    def run(
        self,
        samples: Sequence[tuple[str, str]],
        sink: Callable[[Row], None],
        progress: bool = True,
    ) -> ExtractSummary:
        """Extract ``samples`` (id, path[, box]); hand every finished image to ``sink`` in input
        order. A sample with a box is that region of its image (see ``Sample``).

        A bad image (or box) becomes a failed row with its reason; the run goes on. Memory
        stays bounded by the window and the loader's prefetch, whatever the number of images.
        Regions are cropped on the host, so a run with boxes decodes on the host whatever
        ``decode`` says.
        """
        from tqdm import tqdm

        summary = ExtractSummary()
        on_device = self.config.decode == "device" and all(sample_box(s) is None for s in samples)
        start = time.perf_counter()
        window: list[Any] = []
        with tqdm(total=len(samples), unit="img", disable=not progress, dynamic_ncols=True) as bar:

            def finish(items: list[Any]) -> None:
                if on_device:
                    items = self._decoded_on_device(items)
                self._finish(items, sink, summary)
                for message in self._notices:
                    if progress:
                        bar.write(message)
                summary.notices += self._notices
                self._notices = []
                bar.update(len(items))
                bar.set_postfix(failed=len(summary.failed), refresh=False)

            for chunk in self._loader(samples, on_device):
                window += chunk
                if len(window) >= self.window:
                    finish(window)
                    window = []
            if window:
                finish(window)
        summary.seconds = time.perf_counter() - start
        return summary

    def _finish(
        self, items: Sequence[_Decoded], sink: Callable[[Row], None], summary: ExtractSummary
    ) -> None:
        good = [d for d in items if d.scaled is not None]
        vectors, failed = self._describe([d.scaled for d in good])
        position = {d.index: i for i, d in enumerate(good)}
        for d in items:
            i = position.get(d.index)
            if i is not None and i in failed:
                d = _Decoded(d.index, d.id, None, reason=failed[i])
                i = None
            sink(self._row(d, vectors, i))
            if d.scaled is None:
                summary.failed.append((d.id, d.reason))
            elif d.note:
                summary.changed.append((d.id, d.note))
        summary.done += len(items)

    def _row(
        self, d: _Decoded, vectors: dict[tuple[str, int], np.ndarray], position: int | None
    ) -> Row:
        if position is None:
            return Row(d.id, ok=False, reason=d.reason)
        descriptors = {key: block[position] for key, block in vectors.items()}
        return Row(d.id, ok=True, note=d.note, image_size=d.image_size, descriptors=descriptors)
