"""Options and value parsers shared by several subcommands (defined once, rasterio-style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

__all__ = [
    "split_csv",
    "parse_scales",
    "scales_option",
    "json_option",
    "device_option",
    "extraction_options",
]


def split_csv(values: Sequence[str] | str | None) -> list[str]:
    """'D,E' or ('D', 'E') or ('D,E',) -> ['D', 'E']."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def parse_scales(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...] | None:
    """Click callback: '256,384,512' -> (256, 384, 512)."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in split_csv(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers.") from None


def scales_option(default: str | None = "256,384,512", **kwargs: Any):
    return click.option(
        "--scales",
        default=default,
        callback=parse_scales,
        show_default=default is not None,
        help="Smallest-side sizes Q in pixels, comma-separated; each >= 224.",
        **kwargs,
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, cuda:N or auto (cuda when available).",
)


def extraction_options(f: Any) -> Any:
    """The engine and store options of every command that extracts (``extract``, ``recipe
    run``), so that they cannot drift apart: --preprocess, --seed, --batch-size, --workers,
    --device, --precision, --winograd, --max-side, --checkpoint-every."""
    options = [
        click.option(
            "--preprocess",
            type=click.Choice(["torchvision", "caffe"]),
            help="Override the preprocessing the weights carry.",
        ),
        click.option("--seed", default=0, show_default=True, help="Seed for --weights random."),
        click.option(
            "--batch-size",
            default=0,
            help="Images per forward pass [default: 4 on the CPU, 32 on a GPU].",
        ),
        click.option(
            "--workers", default=2, show_default=True, help="Background decoding processes."
        ),
        device_option,
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            default="auto",
            show_default=True,
            help="auto: bf16 where the device runs it natively (Ampere+ GPUs, AVX512-BF16/AMX "
            "CPUs), else fp32; the store records the one that ran.",
        ),
        click.option(
            "--winograd/--no-winograd",
            default=True,
            show_default=True,
            help="fp32 on the CPU: 3x3 convolutions as NNPACK's Winograd where it pays (64+ "
            "channels, large maps), up to 2.4x faster than direct; descriptors move by 1e-6 to "
            "1e-5 of their norm. The store records it.",
        ),
        click.option(
            "--max-side",
            default=2048,
            show_default=True,
            help="Longest side after rescaling; longer images are centre-cropped (reported).",
        ),
        click.option(
            "--checkpoint-every",
            default=256,
            show_default=True,
            help="Images per crash-safe part file.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
