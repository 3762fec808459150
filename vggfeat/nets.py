"""The VGG nets of Table 1 (configs A..E) and their fully-convolutional view for dense evaluation.

The classifier path and the state-dict keys follow torchvision's ``VGG`` exactly, so torchvision
checkpoints load unchanged. ``DenseVGG`` re-reads fc6/fc7/fc8 as 7x7/1x1 convolutions through
views of the same parameters (no second copy of the 400 MB fc6).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vggfeat.errors import VggfeatError

__all__ = [
    "CONFIGS",
    "NETS",
    "TORCHVISION_NAMES",
    "VGG",
    "DenseVGG",
    "LAYERS",
    "canonical_net",
    "fc_width",
]

# Table 1. An int is a 3x3 conv with that many output channels, (c, 1) a 1x1 conv (config C),
# "M" a 2x2 max-pool and "LRN" Krizhevsky's local response normalisation (config A-LRN).
Layer = int | tuple[int, int] | str
# fmt: off
CONFIGS: dict[str, list[Layer]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M",
          512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# fmt: on
NETS = tuple(CONFIGS)
# Configs whose layer layout (and so state-dict keys) torchvision ships.
TORCHVISION_NAMES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
_ALIASES = {v: k for k, v in TORCHVISION_NAMES.items()}
FC_WIDTH = 4096
# Layers the dense engine can pool: the paper's descriptor is fc7 (after ReLU).
LAYERS = ("fc7", "fc6", "pool5")
# fc6 windows per matrix product: bounds the (rows, C*49) window copy (411 MB in fp32 at
# full width) whatever the image and batch size.
_ROWS_PER_PRODUCT = 4096


def canonical_net(name: str) -> str:
    """Map 'D', 'd', 'vgg16', 'A-LRN'... to the Table 1 config letter."""
    key = name.strip()
    if key.upper() in CONFIGS:
        return key.upper()
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    valid = ", ".join(
        f"{n} ({TORCHVISION_NAMES[n]})" if n in TORCHVISION_NAMES else n for n in NETS
    )
    raise VggfeatError(f"Unknown net {name!r}. Valid nets: {valid}.")


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def fc_width(width: float = 1.0) -> int:
    """Dimension of fc6/fc7 (4096 at full width): the descriptor length."""
    return _scaled(FC_WIDTH, width)


def _make_features(config: Sequence[Layer], width: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            # Krizhevsky et al. (2012): n=5, alpha=1e-4, beta=0.75, k=2.
            layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
        else:
            channels, kernel = item if isinstance(item, tuple) else (item, 3)
            out_channels = _scaled(channels, width)
            layers.append(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A Table 1 VGG with torchvision's module layout and state-dict keys.

    Args:
        config: Table 1 config letter ('A', 'A-LRN', 'B', 'C', 'D', 'E') or torchvision name.
        num_classes: Width of fc8.
        width: Channel multiplier for convs and fc6/fc7; < 1 makes tiny nets for tests.
        dropout: Dropout probability in the classifier (training only).
    """

    def __init__(
        self, config: str = "D", num_classes: int = 1000, width: float = 1.0, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if not width > 0:
            raise VggfeatError(f"Net width must be positive, got {width}.")
        self.config = canonical_net(config)
        self.width = width
        self.features = _make_features(CONFIGS[self.config], width)
        # torchvision pools pool5 to 7x7 adaptively; only the classifier path uses it.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        pool5_channels = _scaled(512, width)
        hidden = fc_width(width)
        self.classifier = nn.Sequential(
            nn.Linear(pool5_channels * 7 * 7, hidden),  # fc6
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),  # fc7
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),  # fc8
        )
        if self.classifier[0].weight.device.type != "meta":  # meta nets only describe shapes
            self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so random nets match its statistics.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    @property
    def pool5_channels(self) -> int:
        return self.classifier[0].in_features // 49

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier path on (N, 3, H, W): logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def _zero_padding_(x: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
    """Zero, in place, each sample's padding outside its valid top-left (h, w) region.

    Touches only the padded area, unlike a multiply by a mask, which reads the whole tensor.
    """
    height, width = x.shape[-2:]
    for i, (h, w) in enumerate(sizes):
        if h < height:
            x[i, :, h:, :] = 0
        if w < width:
            x[i, :, :h, w:] = 0
    return x


def _valid_mask(sizes: torch.Tensor, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) mask that is 1 inside each sample's valid top-left (h, w) region."""
    rows = torch.arange(shape[0], device=like.device)[None, :] < sizes[:, :1]
    cols = torch.arange(shape[1], device=like.device)[None, :] < sizes[:, 1:]
    return (rows[:, None, :, None] & cols[:, None, None, :]).to(like.dtype)


def _to_device(values: list, device: torch.device) -> torch.Tensor:
    """A small int64 tensor on ``device``, copied without making the host wait for a GPU."""
    t = torch.tensor(values, dtype=torch.int64)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _check_layer(layer: str) -> None:
    if layer not in LAYERS and layer != "fc8":
        raise VggfeatError(f"Unknown layer {layer!r}. Valid layers: {', '.join(LAYERS)}.")


def _check_pool5(x: torch.Tensor) -> None:
    if x.shape[-2] < 7 or x.shape[-1] < 7:
        raise VggfeatError(
            f"pool5 map is {tuple(x.shape[-2:])}, smaller than fc6's 7x7: the image's "
            "smallest side must be at least 224 pixels."
        )


class _Padding:
    """The valid (h, w) of each sample of a padded batch, as the maps shrink through the net.

    Padding is zeroed by slices on the CPU (touching only the padded area) and by one mask
    multiply per layer on a GPU (one kernel instead of two per sample, no host sync).

    Args:
        sizes: (N, 2) valid sizes of the input; read on the host once.
        device: Where the maps live.
        multiply: Zero by mask multiply instead of slices.
    """

    def __init__(self, sizes: torch.Tensor, device: torch.device, multiply: bool) -> None:
        self.hw = [(int(h), int(w)) for h, w in sizes.tolist()]
        self.multiply = multiply
        self._on_device = _to_device(self.hw, device) if multiply else None

    def zero_(self, x: torch.Tensor) -> torch.Tensor:
        """Zero, in place, everything outside each sample's valid region of ``x``."""
        if self.multiply:
            return x.mul_(_valid_mask(self._on_device, x.shape[-2:], x))
        return _zero_padding_(x, self.hw)

    def shrink(self, divide: int = 1, subtract: int = 0) -> None:
        """Follow a pooling (``divide``) or a valid convolution (``subtract``)."""
        self.hw = [(h // divide - subtract, w // divide - subtract) for h, w in self.hw]
        if self._on_device is not None:
            self._on_device = self._on_device // divide - subtract

    def tensor(self, device: torch.device) -> torch.Tensor:
        """(N, 2) valid sizes on ``device``."""
        if self._on_device is not None:
            return self._on_device
        return _to_device(self.hw, device)

    def positions(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sample, row, col) of every valid position, as index tensors on ``device`` (built
        on the host: a boolean mask would make the host wait for the GPU)."""
        index = [(n, i, j) for n, (h, w) in enumerate(self.hw) for i in range(h) for j in range(w)]
        return _to_device(index, device).reshape(-1, 3).unbind(1)


class DenseVGG(nn.Module):
    """Fully-convolutional view of a VGG: fc6 as a 7x7 conv, fc7 and fc8 as 1x1 convs.

    The conv kernels are views of the Linear weights of ``vgg`` (same storage), so loading,
    casting or moving ``vgg`` is seen here too.

    Mixed-size batches: images are placed top-left on a zero canvas and ``sizes`` gives each
    one's valid (h, w). Every conv input is re-zeroed outside the valid region, so each image
    sees exactly the zero padding it would see alone, and the global average pool only covers
    valid positions: the result equals one-image-at-a-time evaluation.
    """

    def __init__(self, vgg: VGG) -> None:
        super().__init__()
        self.vgg = vgg
        # How padding is zeroed: None picks slices on the CPU and a mask multiply elsewhere.
        self.mask_multiply: bool | None = None

    def fc_conv(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of classifier[index] as a conv: fc6 is 7x7, fc7 and fc8 are 1x1."""
        linear = self.vgg.classifier[index]
        out_features, in_features = linear.weight.shape
        if index == 0:
            kernel = linear.weight.view(out_features, in_features // 49, 7, 7)
        else:
            kernel = linear.weight.view(out_features, in_features, 1, 1)
        return kernel, linear.bias

    def _pool5(
        self, x: torch.Tensor, sizes: torch.Tensor | None
    ) -> tuple[torch.Tensor, _Padding | None]:
        multiply = x.device.type != "cpu" if self.mask_multiply is None else self.mask_multiply
        pad = None if sizes is None else _Padding(sizes, x.device, multiply)
        for module in self.vgg.features:
            if pad is not None and isinstance(module, nn.Conv2d):
                x = pad.zero_(x)
            x = module(x)
            if pad is not None and isinstance(module, nn.MaxPool2d):
                pad.shrink(divide=2)
        _check_pool5(x)
        return x, pad

    def _windows(self, x: torch.Tensor, keep: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """fc6 inputs: 7x7 pool5 windows as rows (M, C*49), C-major as the Linear expects;
        every window in (n, i, j) order, or those at the (n, i, j) indices ``keep``."""
        n, c = x.shape[:2]
        windows = x.unfold(2, 7, 1).unfold(3, 7, 1).permute(0, 2, 3, 1, 4, 5)
        return (windows if keep is None else windows[keep]).reshape(-1, c * 49)

    def _classify_rows(self, rows: torch.Tensor, layer: str) -> torch.Tensor:
        """fc6 (and fc7, fc8) of (M, C*49) pool5 windows: (M, out) after ReLU (none on fc8)."""
        for index, name in ((0, "fc6"), (3, "fc7"), (6, "fc8")):
            linear = self.vgg.classifier[index]
            rows = F.linear(rows, linear.weight, linear.bias)
            if name == layer == "fc8":
                return rows
            rows = F.relu(rows, inplace=True)
            if name == layer:
                return rows
        raise AssertionError("unreachable")

    def _maps(
        self, x: torch.Tensor, layer: str, sizes: torch.Tensor | None
    ) -> tuple[torch.Tensor, _Padding | None]:
        _check_layer(layer)
        x, pad = self._pool5(x, sizes)
        if layer == "pool5":
            return x, pad
        if pad is not None:
            x = pad.zero_(x)
            pad.shrink(subtract=6)
        n, _, h, w = x.shape
        rows = self._classify_rows(self._windows(x, None), layer)
        return rows.view(n, h - 6, w - 6, -1).permute(0, 3, 1, 2), pad

    def forward_maps(
        self, x: torch.Tensor, layer: str = "fc7", sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dense maps of ``layer`` (after ReLU) for (N, 3, H, W) input.

        Returns:
            The (N, C, h, w) map and the (N, 2) valid sizes of that map (None if ``sizes`` is).
        """
        maps, pad = self._maps(x, layer, sizes)
        return maps, None if pad is None else pad.tensor(maps.device)

    def forward(
        self, x: torch.Tensor, layer: str = "fc7", sizes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Global-average-pooled ``layer`` descriptors (N, C) of (N, 3, H, W) input.

        fc6, fc7 and fc8 run as matrix products over the 7x7 pool5 windows inside each image
        (the dense evaluation, without the work a 7x7 convolution would spend on padding, and
        without the weight re-layout a convolution library does on every call). The pool sums
        in float32 whatever the maps' dtype.
        """
        _check_layer(layer)
        x, pad = self._pool5(x, sizes)
        return self._head(x, layer, pad)

    def pool5_descriptors(
        self, maps: Sequence[torch.Tensor], layer: str = "fc7"
    ) -> list[torch.Tensor]:
        """:meth:`forward` from unpadded pool5 maps computed elsewhere (e.g. by a conv stack with
        pre-laid-out weights), several batches of any sizes at once: fc6 then reads its weights
        (411 MB in fp32) once per few thousand windows, not once per small batch.

        Args:
            maps: (N_i, C, h_i, w_i) pool5 maps.

        Returns:
            (N_i, C') pooled ``layer`` descriptors, one tensor per map.
        """
        _check_layer(layer)
        for m in maps:
            _check_pool5(m)
        if layer == "pool5":
            return [self._average(m.float(), None) for m in maps]
        images = [x for m in maps for x in m.split(1)]
        positions = torch.tensor([(x.shape[-2] - 6) * (x.shape[-1] - 6) for x in images])
        per_product = max(1, _ROWS_PER_PRODUCT // int(positions.max()))

        def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for begin in range(0, len(images), per_product):
                group = range(begin, min(begin + per_product, len(images)))
                rows = torch.cat([self._windows(images[i], None) for i in group])
                owner = torch.tensor(group).repeat_interleave(positions[begin : group.stop])
                yield rows, owner.to(rows.device)

        total = self._pooled_rows(chunks(), len(images), layer)
        mean = total / positions.to(total)[:, None]
        return list(mean.split([len(m) for m in maps]))

    def _head(self, x: torch.Tensor, layer: str, pad: _Padding | None) -> torch.Tensor:
        if layer == "pool5":
            return self._average(x.float(), pad)
        if pad is not None:
            pad.shrink(subtract=6)
            if min(min(hw) for hw in pad.hw) < 1:
                raise VggfeatError("An image in the batch is smaller than fc6's 7x7 pool5 window.")
        n, _, h, w = x.shape
        keep = None
        if pad is not None:
            keep = pad.positions(x.device)  # fc6 windows inside each image
            owner = keep[0]
            counts = pad.tensor(x.device).prod(dim=1).float()
        else:
            owner = torch.arange(n, device=x.device).repeat_interleave((h - 6) * (w - 6))
            counts = torch.full((n,), float((h - 6) * (w - 6)), device=x.device)
        rows = self._windows(x, keep)
        chunks = (
            (rows[start : start + _ROWS_PER_PRODUCT], owner[start : start + _ROWS_PER_PRODUCT])
            for start in range(0, len(rows), _ROWS_PER_PRODUCT)
        )
        return self._pooled_rows(chunks, n, layer) / counts[:, None]

    def _pooled_rows(
        self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, layer: str
    ) -> torch.Tensor:
        """(n, C') float32 sums of ``layer`` over (rows, owner image) chunks of fc6 windows."""
        total = None
        for rows, owner in chunks:
            out = self._classify_rows(rows, layer).float()
            if total is None:
                total = torch.zeros((n, out.shape[1]), device=out.device)
            total.index_add_(0, owner, out)
        return total

    def _average(self, maps: torch.Tensor, pad: _Padding | None) -> torch.Tensor:
        if pad is None:
            return maps.mean(dim=(-2, -1))
        valid = pad.tensor(maps.device)
        total = (maps * _valid_mask(valid, maps.shape[-2:], maps)).sum(dim=(-2, -1))
        return total / (valid[:, 0] * valid[:, 1]).to(maps.dtype)[:, None]
