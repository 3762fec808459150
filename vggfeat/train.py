"""Training a Table 1 net as in Sect. 3.1 of the paper, with resumable checkpoints and DDP.

Multinomial logistic regression by mini-batch SGD with momentum 0.9, weight decay 5e-4, dropout
0.5 on fc6/fc7, and a learning rate of 1e-2 divided by 10 when the validation accuracy stops
improving. Each training image is rescaled so its smallest side is S (fixed, or jittered per
image in [Smin, Smax]), randomly cropped, randomly flipped and colour-shifted along the
principal components of the training pixels (Krizhevsky et al., 2012).

Every random draw of the data pipeline comes from a generator seeded by (seed, epoch, image
index), and the epoch's order from DistributedSampler's (seed + epoch), so the data a step sees
does not depend on workers, on processes or on where a run was interrupted. Dropout draws from
torch's generator, whose state is checkpointed. A killed run resumed from its last checkpoint
therefore ends where an uninterrupted one does, and a torchrun run on N processes sees exactly
the global batches of a one-process run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vggfeat.datasets.classes import LabelledImages, align_classes
from vggfeat.devices import PRECISIONS, resolve_device
from vggfeat.errors import ImageError, VggfeatError
from vggfeat.files import publish, publish_bytes
from vggfeat.images import decode_image, rescale
from vggfeat.nets import NETS, VGG, canonical_net
from vggfeat.versions import software_versions
from vggfeat.weights import PREPROCESS, Preprocess

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "INITS",
    "PlateauSchedule",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "Trainer",
    "colour_pca",
    "init_weights",
    "init_from_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "vggfeat-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pth"
FINAL_NAME = "final.pth"
INITS = ("auto", "normal", "glorot", "kaiming")
FINAL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Options that may change between a run and its resumption: they do not change the numbers.
_RESUMABLE = ("epochs", "max_steps", "device", "workers", "checkpoint_every")


class TrainError(VggfeatError):
    """A training run cannot start or continue as asked."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (Sect. 3.1), validated on construction.

    Attributes:
        net: Table 1 config ('A', 'A-LRN', 'B', 'C', 'D', 'E').
        width: Channel multiplier of convs and fc6/fc7 (1.0 is the paper's net).
        scale: (Smin, Smax): smallest side of each training image, drawn uniformly per image
            (Smin == Smax: fixed S).
        crop: Side of the random square crop (224 in the paper; smaller for small nets).
        batch_size: Global batch, over all processes and accumulated micro-batches.
        accumulate: Micro-batches per step (gradient accumulation) on each process.
        lr: Initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty multiplier.
        decay_biases: Whether biases are decayed too (the default leaves them out).
        dropout: Dropout ratio of fc6 and fc7.
        lr_drops: How many times the learning rate is divided by 10; the next plateau stops.
        patience: Epochs without a better validation accuracy that make a plateau.
        epochs: The most epochs to run.
        max_steps: Stop (resumably) after this many steps in all; None runs to the end.
        init: 'normal' N(0, 1e-2) weights and zero biases (the paper's Net-A), 'glorot',
            'kaiming' (He et al.), or 'auto': normal for A/A-LRN or with ``init_from``, else
            glorot. See :func:`init_weights`.
        init_from: A trained checkpoint whose first four conv layers and three FC layers
            initialise this net (the paper's deeper nets, from Net-A).
        colour_shift: Std of the PCA colour-shift coefficients (0.1 in AlexNet; 0 turns it off).
        flip: Random horizontal flips.
        preprocess: Input normalisation ('torchvision' or 'caffe'), recorded in the checkpoint.
        seed: Seed of initialisation, data order, augmentation and dropout.
        precision: 'fp32', 'bf16' or 'fp16' autocast.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N' (under torchrun: each process's local GPU).
        channels_last: NHWC memory format (faster convolutions on CPU and GPU).
        workers: DataLoader processes that decode and augment.
        checkpoint_every: Also checkpoint every this many steps (0: at epoch ends only).
        final_dtype: Storage of the final weights: 'fp32', or 'fp16' (half the file; the
            final validation is rerun on the rounded weights and recorded).
    """

    net: str = "D"
    width: float = 1.0
    scale: tuple[int, int] = (256, 256)
    crop: int = 224
    batch_size: int = 256
    accumulate: int = 1
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_biases: bool = False
    dropout: float = 0.5
    lr_drops: int = 3
    patience: int = 1
    epochs: int = 74
    max_steps: int | None = None
    init: str = "auto"
    init_from: str | None = None
    colour_shift: float = 0.1
    flip: bool = True
    preprocess: str = "torchvision"
    seed: int = 0
    precision: str = "fp32"
    device: str = "auto"
    channels_last: bool = True
    workers: int = 2
    checkpoint_every: int = 0
    final_dtype: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "net", canonical_net(self.net))
        smin, smax = (int(s) for s in self.scale)
        object.__setattr__(self, "scale", (smin, smax))
        if not 0 < smin <= smax:
            raise TrainError(f"--scale {smin}:{smax}: give S or Smin:Smax with 0 < Smin <= Smax.")
        if not 0 < self.crop <= smin:
            raise TrainError(
                f"--crop {self.crop} must be positive and at most the smallest scale {smin}."
            )
        if self.batch_size < 1 or self.accumulate < 1:
            raise TrainError("--batch-size and --accumulate must be at least 1.")
        if self.batch_size % self.accumulate:
            raise TrainError(
                f"--batch-size {self.batch_size} is not a multiple of --accumulate "
                f"{self.accumulate}: each step must split into equal micro-batches."
            )
        if not self.width > 0 or not self.lr > 0 or not 0 <= self.momentum < 1:
            raise TrainError("--width and --lr must be positive and --momentum in [0, 1).")
        if self.weight_decay < 0 or not 0 <= self.dropout < 1 or self.colour_shift < 0:
            raise TrainError("--weight-decay and --colour-shift must be >= 0, --dropout in [0, 1).")
        if self.lr_drops < 0 or self.patience < 1 or self.epochs < 1:
            raise TrainError("--lr-drops must be >= 0, --patience and --epochs >= 1.")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainError("--max-steps must be at least 1.")
        if self.init not in INITS:
            raise TrainError(f"Unknown --init {self.init!r}. Valid: {', '.join(INITS)}.")
        if self.preprocess not in PREPROCESS:
            raise TrainError(
                f"Unknown --preprocess {self.preprocess!r}. Valid: {', '.join(PREPROCESS)}."
            )
        if self.precision not in PRECISIONS:
            raise TrainError(
                f"Unknown --precision {self.precision!r}. Valid: {', '.join(PRECISIONS)}."
            )
        if self.final_dtype not in FINAL_DTYPES:
            raise TrainError(
                f"Unknown --final-dtype {self.final_dtype!r}. Valid: {', '.join(FINAL_DTYPES)}."
            )
        if self.workers < 0 or self.checkpoint_every < 0:
            raise TrainError("--workers and --checkpoint-every must be >= 0.")

    @property
    def val_scale(self) -> int:
        """Smallest side of validation images (centre crop of ``crop``): the middle of S."""
        return (self.scale[0] + self.scale[1]) // 2

    @property
    def resolved_init(self) -> str:
        if self.init != "auto":
            return self.init
        return "normal" if self.net in ("A", "A-LRN") or self.init_from else "glorot"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["scale"] = tuple(values.get("scale", (256, 256)))
        return cls(**values)


# ----------------------------------------------------------------------------- initialisation


def init_weights(model: VGG, method: str) -> None:
    """Initialise every conv/FC layer; biases zero.

    'normal': N(0, 1e-2), the paper's Net-A. 'glorot': Glorot & Bengio's uniform. 'kaiming':
    He et al.'s N(0, 2 / fan_in) for every layer followed by a ReLU and N(0, 1 / fan_in) for
    fc8, so the signal keeps its scale through any depth and width (N(0, 1e-2) FC layers,
    torchvision's choice, shrink it in narrow nets).
    """
    fc8 = model.classifier[6]
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if method == "normal":
            nn.init.normal_(m.weight, 0.0, 1e-2)
        elif method == "glorot":
            nn.init.xavier_uniform_(m.weight)
        elif method == "kaiming":
            gain = "linear" if m is fc8 else "relu"
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=gain)
        else:
            raise TrainError(f"Unknown --init {method!r}. Valid: {', '.join(INITS[1:])}.")
        nn.init.zeros_(m.bias)


def _conv_positions(model: VGG) -> list[tuple[tuple[int, int], str]]:
    """((block, position in block), state-dict prefix) of each conv, in order."""
    out, block, position = [], 0, 0
    for index, module in enumerate(model.features):
        if isinstance(module, nn.MaxPool2d):
            block, position = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            out.append(((block, position), f"features.{index}"))
            position += 1
    return out


def init_from_checkpoint(
    model: VGG, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: str
) -> list[str]:
    """Copy the first four conv layers and the three FC layers of a trained net into ``model``.

    As in the paper (deeper nets from Net-A), a conv goes to the layer at the same (block,
    position in block), which has the same shape: Net-A's conv1_1, conv2_1, conv3_1 and
    conv3_2. The other layers keep their random initialisation.

    Args:
        model: The net to initialise (its other layers already initialised).
        state: The trained net's state dict; ``meta`` its checkpoint metadata (may be empty).
        source: The file, for messages.

    Returns:
        The state-dict keys copied.
    """
    from vggfeat.weights import infer_net_from_state

    donor_net = canonical_net(str(meta["net"])) if "net" in meta else infer_net_from_state(state)
    donor_width = float(meta.get("width", state["features.0.weight"].shape[0] / 64))
    with torch.device("meta"):
        donor = VGG(donor_net, int(state["classifier.6.weight"].shape[0]), donor_width)
    target = dict(_conv_positions(model))
    pairs = [(target.get(pos), prefix) for pos, prefix in _conv_positions(donor)[:4]]
    pairs += [(f"classifier.{i}", f"classifier.{i}") for i in (0, 3, 6)]
    own = model.state_dict()
    copied: list[str] = []
    for mine, theirs in pairs:
        for suffix in (".weight", ".bias"):
            have = tuple(state[theirs + suffix].shape)
            need = None if mine is None else tuple(own[mine + suffix].shape)
            if have != need:
                raise TrainError(
                    f"--init-from {source}: its {theirs}{suffix} has shape {have}, this net "
                    f"needs {need}: give a checkpoint trained with the same --width and classes."
                )
            with torch.no_grad():
                own[mine + suffix].copy_(state[theirs + suffix])
            copied.append(mine + suffix)
    return copied


# ----------------------------------------------------------------------------- schedule


@dataclass
class PlateauSchedule:
    """The paper's schedule: divide the learning rate by ``factor`` when the validation accuracy
    has not improved for ``patience`` epochs; after ``max_drops`` drops the next plateau stops.
    """

    lr: float
    max_drops: int = 3
    patience: int = 1
    factor: float = 0.1
    best: float = -math.inf
    bad_epochs: int = 0
    drops: int = 0
    stopped: bool = False

    def step(self, accuracy: float) -> str:
        """Record one epoch's validation accuracy; returns 'keep', 'drop' or 'stop'."""
        if accuracy > self.best:
            self.best, self.bad_epochs = accuracy, 0
            return "keep"
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return "keep"
        self.bad_epochs = 0
        if self.drops >= self.max_drops:
            self.stopped = True
            return "stop"
        self.drops += 1
        self.lr *= self.factor
        return "drop"

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ----------------------------------------------------------------------------- data


def _sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    # Augmentation of image ``index`` in ``epoch``: independent of workers, ranks and resumes.
    return np.random.default_rng([seed, epoch, index])


def _centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[top : top + size, left : left + size]


@dataclass
class _Item:
    index: int
    target: int
    pixels: np.ndarray | None  # (crop, crop, 3) uint8
    shift: np.ndarray  # (3,) RGB colour shift in 0..255 units
    reason: str = ""


class _TrainDataset(Dataset):
    """Decode, rescale to a random S, random crop, flip, PCA colour shift (in workers)."""

    def __init__(self, images: LabelledImages, config: TrainConfig, pca: Mapping[str, Any]):
        self.images, self.config = images, config
        self.eigvec = np.asarray(pca["eigvec"], dtype=np.float64)  # (3, 3) columns
        self.sigma = np.asarray(pca["sigma"], dtype=np.float64)  # (3,)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> _Item:
        c = self.config
        _, path = self.images.samples[index]
        target = self.images.targets[index]
        rng = _sample_rng(c.seed, self.epoch, index)
        s = int(rng.integers(c.scale[0], c.scale[1] + 1))
        top_frac, left_frac, flip = rng.random(), rng.random(), rng.random() < 0.5
        alpha = rng.normal(0.0, c.colour_shift, 3) if c.colour_shift > 0 else np.zeros(3)
        shift = (self.eigvec @ (alpha * self.sigma) * 255.0).astype(np.float32)
        try:
            pixels = rescale(decode_image(path), s, max_side=max(4 * s, 2048)).pixels
        except ImageError as exc:
            return _Item(index, target, None, shift, str(exc))
        h, w = pixels.shape[:2]
        top = int(top_frac * (h - c.crop + 1))
        left = int(left_frac * (w - c.crop + 1))
        crop = pixels[top : top + c.crop, left : left + c.crop]
        if c.flip and flip:
            crop = crop[:, ::-1]
        return _Item(index, target, np.ascontiguousarray(crop), shift)


class _ValDataset(Dataset):
    """Decode, rescale to the validation scale, centre crop."""

    def __init__(self, images: LabelledImages, scale: int, crop: int):
        self.images, self.scale, self.crop = images, scale, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> _Item:
        _, path = self.images.samples[index]
        target = self.images.targets[index]
        try:
            pixels = rescale(decode_image(path), self.scale, max_side=max(4 * self.scale, 2048))
        except ImageError as exc:
            return _Item(index, target, None, np.zeros(3, np.float32), str(exc))
        crop = _centre_crop(pixels.pixels, self.crop)
        return _Item(index, target, np.ascontiguousarray(crop), np.zeros(3, np.float32))


def colour_pca(images: LabelledImages, n_images: int = 256, seed: int = 0) -> dict[str, Any]:
    """Principal components of RGB pixel values (in [0, 1]) over a seeded sample of images.

    Returns:
        {'eigvec': (3, 3) columns, 'sigma': (3,) std along each, 'images': n used}: the
        AlexNet colour shift adds ``eigvec @ (alpha * sigma)``, alpha ~ N(0, 0.1).
    """
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(images))[: min(n_images, len(images))]
    pixels, used = [], 0
    for i in chosen:
        try:
            image = decode_image(images.samples[int(i)][1])
        except ImageError:
            continue
        flat = image.reshape(-1, 3)
        take = rng.choice(len(flat), size=min(4096, len(flat)), replace=False)
        pixels.append(flat[take].astype(np.float64) / 255.0)
        used += 1
    if not pixels:
        raise TrainError(f"No image of {images.source} could be decoded: check the training set.")
    values, vectors = np.linalg.eigh(np.cov(np.concatenate(pixels), rowvar=False))
    order = np.argsort(values)[::-1]
    sigma = np.sqrt(np.clip(values[order], 0.0, None))
    return {"eigvec": vectors[:, order].tolist(), "sigma": sigma.tolist(), "images": used}


def _to_input(
    items: Sequence[_Item], preprocess: Preprocess, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """(N, 3, crop, crop) normalised net input of decoded items (colour shift added)."""
    pixels = torch.from_numpy(np.stack([it.pixels for it in items])).to(device)
    x = pixels.permute(0, 3, 1, 2).float()
    shift = torch.from_numpy(np.stack([it.shift for it in items])).to(device)
    x = preprocess.normalize(x + shift[:, :, None, None])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the process group (NCCL on GPUs, gloo on
    CPUs); otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device_name)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local), device


# ----------------------------------------------------------------------------- checkpoints


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equals NaN): what a read-back check needs."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _atomic_torch_save(path: Path, obj: Mapping[str, Any]) -> None:
    """torch.save through files.publish; verified by reading the model tensors back."""

    def verify(tmp: Path) -> None:
        back = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        want = obj["state_dict"]
        if back.get("format") != CHECKPOINT_FORMAT or back["state_dict"].keys() != want.keys():
            raise OSError(errno.EIO, "checkpoint read back differs from what was written")
        if not all(_same_bits(back["state_dict"][k], want[k]) for k in want):
            raise OSError(errno.EIO, "checkpoint tensors read back differ from what was written")

    with publish(path, verify=verify, hint="free space or choose another --out") as tmp:
        torch.save(dict(obj), tmp)


def _first_difference(have: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    for key in sorted(set(have) | set(want)):
        if key in _RESUMABLE:
            continue
        if have.get(key) != want.get(key):
            return f"{key}={have.get(key)!r} (this command: {want.get(key)!r})"
    return None


# ----------------------------------------------------------------------------- the trainer


@dataclass
class TrainResult:
    """What a call to :func:`train` left: the record and where the files are."""

    record: dict[str, Any]
    out_dir: Path
    final: Path | None
    finished: bool


@dataclass
class _EpochStats:
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    bad: float = 0.0
    seconds: float = 0.0

    def state_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class _State:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    stats: _EpochStats = field(default_factory=_EpochStats)


class Trainer:
    """One training run: model, optimiser, schedule, data, and their checkpointed state.

    Args:
        config: The run's settings.
        train_set: Training images (class folders or a list).
        val_set: Validation images; their classes must be among the training classes.
        out_dir: Folder for ``checkpoint.pth``, ``final.pth``, ``log.json``, ``curve.png``.
        resume: Continue the run in ``out_dir`` from its checkpoint.
        progress: Show a progress bar (main process only).
        echo: Where the per-epoch lines go.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_set: LabelledImages,
        val_set: LabelledImages,
        out_dir: str | os.PathLike,
        resume: bool = False,
        progress: bool = True,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.config, self.out_dir = config, Path(out_dir)
        self.train_set = train_set
        self.val_set = align_classes(val_set, train_set.classes, "val set", "the training set")
        self.progress, self._echo = progress, echo
        self.dist, self.device = _init_distributed(config.device)
        self._check_batch()
        self.preprocess = PREPROCESS[config.preprocess]
        self.autocast_dtype = PRECISIONS[config.precision]
        checkpoint = self._existing_checkpoint(resume)

        torch.manual_seed(config.seed)
        self.model = VGG(config.net, len(train_set.classes), config.width, config.dropout)
        init_weights(self.model, config.resolved_init)
        self.copied: list[str] = []
        if config.init_from and checkpoint is None:
            from vggfeat.weights import read_checkpoint

            state, meta = read_checkpoint(config.init_from)
            self.copied = init_from_checkpoint(self.model, state, meta, config.init_from)
        memory = torch.channels_last if config.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory)
        self.optimizer = torch.optim.SGD(
            self._param_groups(), lr=config.lr, momentum=config.momentum
        )
        self.schedule = PlateauSchedule(config.lr, config.lr_drops, config.patience)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.state = _State()
        self.epochs: list[dict[str, Any]] = []
        self.bad_images: dict[str, str] = {}
        if checkpoint is None:
            self.pca = colour_pca(train_set, seed=config.seed)
            # Dropout differs per process; initialisation above was the same on all.
            torch.manual_seed(config.seed * 1000 + self.dist.rank)
        else:
            self._restore(checkpoint)
        self.net = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.train_data = _TrainDataset(train_set, config, self.pca)

    # -- setup

    def echo(self, line: str) -> None:
        """Print from the main process only (torchrun runs several)."""
        if self.dist.main:
            self._echo(line)

    def _check_batch(self) -> None:
        c, world = self.config, self.dist.world
        if c.batch_size % (world * c.accumulate):
            raise TrainError(
                f"--batch-size {c.batch_size} does not split over {world} processes x "
                f"--accumulate {c.accumulate}: make it a multiple of {world * c.accumulate}."
            )
        if len(self.train_set) < c.batch_size:
            raise TrainError(
                f"The training set has {len(self.train_set)} images, fewer than one batch of "
                f"{c.batch_size}: lower --batch-size."
            )

    @property
    def micro_batch(self) -> int:
        return self.config.batch_size // (self.dist.world * self.config.accumulate)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_set) // self.config.batch_size

    def _param_groups(self) -> list[dict[str, Any]]:
        decay, plain = [], []
        for name, p in self.model.named_parameters():
            (decay if name.endswith("weight") or self.config.decay_biases else plain).append(p)
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}]
        if plain:
            groups.append({"params": plain, "weight_decay": 0.0})
        return groups

    def _existing_checkpoint(self, resume: bool) -> dict[str, Any] | None:
        path = self.out_dir / CHECKPOINT_NAME
        if not resume:
            if path.exists():
                raise TrainError(
                    f"{self.out_dir} already holds a training run ({CHECKPOINT_NAME}): pass "
                    "--resume to continue it, or choose another --out."
                )
            return None
        if not path.exists():
            raise TrainError(f"--resume: {path} does not exist; start without --resume.")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainError(f"Cannot read {path}: {type(exc).__name__}: {exc}") from None
        if ckpt.get("format") != CHECKPOINT_FORMAT or "resume" not in ckpt:
            raise TrainError(f"{path} is not a resumable vggfeat training checkpoint.")
        diff = _first_difference(ckpt["training"]["config"], self.config.to_dict())
        if diff is None and list(ckpt["classes"]) != list(self.train_set.classes):
            diff = "the training classes"
        if diff is None and ckpt["training"]["data"]["n_train"] != len(self.train_set):
            diff = f"n_train={ckpt['training']['data']['n_train']} ({len(self.train_set)} now)"
        if diff:
            raise TrainError(
                f"{path} is a run with other settings: {diff}; resume with the run's own "
                "options, or choose another --out."
            )
        return ckpt

    def _restore(self, ckpt: Mapping[str, Any]) -> None:
        r = ckpt["resume"]
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(r["optimizer"])
        self.schedule.load_state_dict(r["schedule"])
        self.scaler.load_state_dict(r["scaler"])
        self.state = _State(
            r["epoch"], r["step_in_epoch"], r["global_step"], _EpochStats(**r["stats"])
        )
        self.pca = r["colour_pca"]
        self.epochs = list(ckpt["training"]["epochs"])
        self.bad_images = dict(ckpt["training"].get("bad_images", {}))
        self.copied = list(ckpt["training"].get("init_copied", []))
        rng = r["rng"]
        if len(rng) == self.dist.world:
            torch.set_rng_state(rng[self.dist.rank]["cpu"])
            if self.device.type == "cuda" and rng[self.dist.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[self.dist.rank]["cuda"], self.device)
        else:
            self.echo(
                f"note: the checkpoint was made by {len(rng)} processes, not "
                f"{self.dist.world}; dropout draws will differ from the original run."
            )
            torch.manual_seed(self.config.seed * 1000 + self.dist.rank + 7919 * r["global_step"])

    # -- records

    def record(self) -> dict[str, Any]:
        """The training record: data, settings, per-epoch results (JSON-serialisable)."""
        c = self.config
        return {
            "net": c.net,
            "width": c.width,
            "classes": list(self.train_set.classes),
            "config": c.to_dict(),
            "init": c.resolved_init
            + (f" + {len(self.copied) // 2} layers from {c.init_from}" if self.copied else ""),
            "init_copied": self.copied,
            "weight_decay": (
                f"{c.weight_decay:g} on weights"
                + (" and biases" if c.decay_biases else ", none on biases")
            ),
            "data": {
                "train": self.train_set.source,
                "n_train": len(self.train_set),
                "val": self.val_set.source,
                "n_val": len(self.val_set),
                "train_counts": self.train_set.counts(),
            },
            "augmentation": {
                "scale": list(c.scale),
                "crop": c.crop,
                "flip": c.flip,
                "colour_shift": c.colour_shift,
                "colour_pca": self.pca,
            },
            "validation": f"centre {c.crop} crop of the image rescaled to smallest side "
            f"{c.val_scale}",
            "world_size": self.dist.world,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.state.global_step,
            "epochs": self.epochs,
            "lr_drops": self.schedule.drops,
            "stopped": self.schedule.stopped,
            "bad_images": self.bad_images,
            "versions": software_versions(),
        }

    def _rng_states(self) -> list[dict[str, Any]]:
        mine = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        return self.dist.gather(mine)

    def _checkpoint_dict(self, with_resume: bool, dtype: torch.dtype) -> dict[str, Any]:
        state = {
            k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype)
            for k, v in self.model.state_dict().items()
        }
        ckpt: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "net": self.config.net,
            "width": self.config.width,
            "num_classes": len(self.train_set.classes),
            "classes": list(self.train_set.classes),
            "preprocess": self.preprocess.to_dict(),
            "storage_dtype": str(dtype).removeprefix("torch."),
            "state_dict": state,
            "training": self.record(),
        }
        if with_resume:
            ckpt["resume"] = {
                "epoch": self.state.epoch,
                "step_in_epoch": self.state.step_in_epoch,
                "global_step": self.state.global_step,
                "stats": self.state.stats.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": self._rng_states(),
                "colour_pca": self.pca,
            }
        return ckpt

    def save_checkpoint(self) -> None:
        """Write the resumable checkpoint (all processes join; the main one writes)."""
        ckpt = self._checkpoint_dict(True, torch.float32)
        if self.dist.main:
            _atomic_torch_save(self.out_dir / CHECKPOINT_NAME, ckpt)

    def _write_log(self) -> None:
        if not self.dist.main:
            return
        publish_bytes(self.out_dir / "log.json", json.dumps(self.record(), indent=2) + "\n")
        if self.epochs:
            plot_curves(self.out_dir / "curve.png", self.epochs, self.config.net)

    # -- one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _step(self, micro_batches: Sequence[Sequence[_Item]]) -> tuple[float, float, float]:
        """One SGD step on a global batch; returns (loss sum, correct, valid images) here."""
        valid_here = sum(1 for mb in micro_batches for it in mb if it.pixels is not None)
        (valid_all,) = self.dist.all_sum([valid_here], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = correct = 0.0
        for i, mb in enumerate(micro_batches):
            good = [it for it in mb if it.pixels is not None]
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.net.no_sync()
            with sync:
                if good:
                    x = _to_input(good, self.preprocess, self.device, self.config.channels_last)
                    y = torch.tensor([it.target for it in good], device=self.device)
                    weight = 1.0
                else:  # every process must join the gradient all-reduce: a zero-weight pass
                    c = self.config.crop
                    x = torch.zeros(1, 3, c, c, device=self.device)
                    y = torch.zeros(1, dtype=torch.long, device=self.device)
                    weight = 0.0
                with self._autocast():
                    logits = self.net(x)
                losses = F.cross_entropy(logits.float(), y, reduction="none") * weight
                # DDP averages gradients over processes: scale so the sum over the global batch
                # is divided by its number of valid images.
                total = losses.sum() * (self.dist.world / max(valid_all, 1.0))
                self.scaler.scale(total).backward()
                if good:
                    loss_sum += float(losses.detach().sum())
                    correct += float((logits.detach().argmax(1) == y).sum())
        if not math.isfinite(loss_sum) and not self.scaler.is_enabled():  # fp16: scaler skips
            raise TrainError(
                f"The training loss became {loss_sum} at step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch + 1}): the run diverged; lower --lr and start again "
                "(or --resume from an earlier checkpoint)."
            )
        if valid_all > 0:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss_sum, correct, float(valid_here)

    # -- epochs

    def _epoch_indices(self, epoch: int) -> list[int]:
        """This process's sample order for ``epoch``: DistributedSampler's (seed + epoch)
        permutation, strided over processes, cut to whole global batches."""
        sampler = DistributedSampler(
            range(len(self.train_set)),
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        per_process = self.config.batch_size // self.dist.world
        return list(sampler)[: self.steps_per_epoch * per_process]

    def _loader(self, dataset: Dataset, indices: Sequence[int], batch: int) -> DataLoader:
        from torch.utils.data import Subset

        workers = self.config.workers
        return DataLoader(
            Subset(dataset, list(indices)),
            batch_size=batch,
            shuffle=False,
            num_workers=workers,
            collate_fn=list,
            # An own generator: creating the loader must not draw from torch's global one,
            # which dropout uses and checkpoints restore.
            generator=torch.Generator().manual_seed(0),
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )

    def _micro_batches(self, epoch: int) -> Iterator[list[list[_Item]]]:
        per_process = self.config.batch_size // self.dist.world
        indices = self._epoch_indices(epoch)[self.state.step_in_epoch * per_process :]
        self.train_data.epoch = epoch
        group: list[list[_Item]] = []
        for mb in self._loader(self.train_data, indices, self.micro_batch):
            group.append(mb)
            if len(group) == self.config.accumulate:
                yield group
                group = []

    def _bad(self, items: Sequence[_Item], images: LabelledImages) -> None:
        for it in items:
            if it.pixels is None:
                self.bad_images[images.samples[it.index][0]] = it.reason

    def run_epoch(self) -> bool:
        """Train the rest of the current epoch; False if ``max_steps`` paused the run."""
        from tqdm import tqdm

        c, s = self.config, self.state
        steps = self.steps_per_epoch
        self.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr
        bar = tqdm(
            total=steps,
            initial=s.step_in_epoch,
            desc=f"epoch {s.epoch + 1}",
            unit="step",
            disable=not (self.progress and self.dist.main),
            dynamic_ncols=True,
            leave=False,
        )
        start = time.perf_counter()
        seconds0, seen0 = s.stats.seconds, s.stats.seen
        try:
            for group in self._micro_batches(s.epoch):
                loss, correct, valid = self._step(group)
                flat = [it for mb in group for it in mb]
                self._bad(flat, self.train_set)
                s.stats.loss_sum += loss
                s.stats.correct += correct
                s.stats.seen += valid
                s.stats.bad += len(flat) - valid
                s.step_in_epoch += 1
                s.global_step += 1
                s.stats.seconds = seconds0 + time.perf_counter() - start
                rate = (
                    (s.stats.seen - seen0) * self.dist.world / max(s.stats.seconds - seconds0, 1e-9)
                )
                bar.update(1)
                bar.set_postfix(
                    loss=f"{s.stats.loss_sum / max(s.stats.seen, 1):.3f}",
                    acc=f"{s.stats.correct / max(s.stats.seen, 1):.3f}",
                    img_s=f"{rate:.1f}",
                    refresh=False,
                )
                if c.max_steps is not None and s.global_step >= c.max_steps:
                    self.save_checkpoint()
                    return False
                if c.checkpoint_every and s.global_step % c.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        return True

    @torch.no_grad()
    def validate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Top-1/top-5 error and loss on centre crops of the val set (all processes)."""
        model = model if model is not None else self.model
        model.eval()
        data = _ValDataset(self.val_set, self.config.val_scale, self.config.crop)
        mine = list(range(self.dist.rank, len(self.val_set), self.dist.world))
        loss = top1 = top5 = seen = 0.0
        k = min(5, len(self.train_set.classes))
        for items in self._loader(data, mine, max(1, self.micro_batch)):
            self._bad(items, self.val_set)
            good = [it for it in items if it.pixels is not None]
            if not good:
                continue
            x = _to_input(good, self.preprocess, self.device, self.config.channels_last)
            y = torch.tensor([it.target for it in good], device=self.device)
            with self._autocast():
                logits = model(x).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            ranked = logits.topk(k, dim=1).indices
            top1 += float((ranked[:, 0] == y).sum())
            top5 += float((ranked == y[:, None]).any(dim=1).sum())
            seen += len(good)
        loss, top1, top5, seen = self.dist.all_sum([loss, top1, top5, seen], self.device)
        if seen == 0:
            raise TrainError(f"No image of the val set {self.val_set.source} could be decoded.")
        return {
            "val_loss": loss / seen,
            "val_top1_error": 1 - top1 / seen,
            # top-5, or top-K with fewer than 5 classes
            "val_top5_error": 1 - top5 / seen,
            "val_images": seen,
            "val_bad": len(self.val_set) - seen,
        }

    def _finish_epoch(self) -> str:
        s = self.state
        stats = s.stats
        loss_sum, correct, seen, bad = self.dist.all_sum(
            [stats.loss_sum, stats.correct, stats.seen, stats.bad], self.device
        )
        merged: dict[str, str] = {}
        for part in self.dist.gather(self.bad_images):
            merged.update(part)
        self.bad_images = merged
        val = self.validate()
        lr = self.schedule.lr
        action = self.schedule.step(1 - val["val_top1_error"])
        entry = {
            "epoch": s.epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / max(seen, 1),
            "train_top1_error": 1 - correct / max(seen, 1),
            **val,
            "train_images": seen,
            "train_bad": bad,
            "seconds": stats.seconds,
            "images_per_second": seen / max(stats.seconds, 1e-9),
            "steps": s.global_step,
            "action": action,
        }
        self.epochs.append(entry)
        s.epoch += 1
        s.step_in_epoch = 0
        s.stats = _EpochStats()
        self.echo(
            f"epoch {entry['epoch']:>3}  lr {lr:.0e}  train loss {entry['train_loss']:.4f}  "
            f"top-1 err {100 * entry['train_top1_error']:.1f}%  |  val loss "
            f"{entry['val_loss']:.4f}  top-1 err {100 * entry['val_top1_error']:.1f}%  "
            f"top-5 err {100 * entry['val_top5_error']:.1f}%  |  "
            f"{entry['images_per_second']:.1f} img/s  {entry['seconds']:.0f} s"
            + (f"  bad {int(bad)}" if bad else "")
            + {"keep": "", "drop": f"  -> lr {self.schedule.lr:.0e}", "stop": "  -> stop"}[action]
        )
        return action

    def fit(self) -> TrainResult:
        """Run (or continue) training to the end, or until ``max_steps``."""
        c = self.config
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        while self.state.epoch < c.epochs and not self.schedule.stopped:
            if not self.run_epoch():
                self._write_log()
                self.echo(
                    f"paused after step {self.state.global_step} (--max-steps); "
                    "continue with --resume"
                )
                return TrainResult(self.record(), self.out_dir, None, False)
            self._finish_epoch()
            self.save_checkpoint()
            self._write_log()
        return TrainResult(self.record(), self.out_dir, self._save_final(), True)

    def _save_final(self) -> Path:
        dtype = FINAL_DTYPES[self.config.final_dtype]
        final = self._checkpoint_dict(False, dtype)
        if dtype != torch.float32:
            # Record the accuracy of the weights as stored, not of the fp32 originals.
            rounded = VGG(self.config.net, len(self.train_set.classes), self.config.width)
            rounded.load_state_dict({k: v.float() for k, v in final["state_dict"].items()})
            rounded.to(self.device)
            final["training"]["final_val"] = {
                **self.validate(rounded),
                "weights": f"as stored ({self.config.final_dtype})",
            }
        elif self.epochs:
            last = {k: v for k, v in self.epochs[-1].items() if k.startswith("val_")}
            final["training"]["final_val"] = {**last, "weights": "as stored (fp32)"}
        path = self.out_dir / FINAL_NAME
        if self.dist.main:
            _atomic_torch_save(path, final)
            publish_bytes(self.out_dir / "log.json", json.dumps(final["training"], indent=2))
        return path


def plot_curves(path: str | os.PathLike, epochs: Sequence[Mapping[str, Any]], net: str) -> Path:
    """Training-curve PNG: loss (train, val) and top-1/top-5 error (train, val) per epoch."""
    from matplotlib.figure import Figure

    x = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(10, 4))
    loss_ax, err_ax = fig.subplots(1, 2)
    loss_ax.plot(x, [e["train_loss"] for e in epochs], "o-", label="train")
    loss_ax.plot(x, [e["val_loss"] for e in epochs], "s-", label="val")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=f"Net-{net}: loss")
    err_ax.plot(x, [100 * e["train_top1_error"] for e in epochs], "o-", label="train top-1")
    err_ax.plot(x, [100 * e["val_top1_error"] for e in epochs], "s-", label="val top-1")
    err_ax.plot(x, [100 * e["val_top5_error"] for e in epochs], "^-", label="val top-5")
    err_ax.set(xlabel="epoch", ylabel="error %", title=f"Net-{net}: error")
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    for e in epochs:
        if e.get("action") == "drop":
            for ax in (loss_ax, err_ax):
                ax.axvline(e["epoch"], color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    with publish(path, hint="free space or choose another --out") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def train(
    config: TrainConfig,
    train_set: LabelledImages,
    val_set: LabelledImages,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config.net`` on ``train_set``, validating on ``val_set``; see :class:`Trainer`."""
    if config.net not in NETS:  # pragma: no cover - TrainConfig already canonicalised it
        raise TrainError(f"Unknown net {config.net!r}.")
    return Trainer(config, train_set, val_set, out_dir, resume, progress, echo).fit()
