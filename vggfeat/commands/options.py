"""Options and value parsers shared by several subcommands (defined once, rasterio-style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

__all__ = ["split_csv", "parse_scales", "scales_option", "json_option", "device_option"]


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
